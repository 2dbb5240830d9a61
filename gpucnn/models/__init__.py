"""Models: ``Sequential`` and the ``Model`` base class, with Keras' training API.

``from gpucnn import layers, models`` then ``models.Sequential([...])`` as in the guide.
"""
from gpucnn.models.model import Model
from gpucnn.models.saving import load_model
from gpucnn.models.sequential import Sequential
from gpucnn.models.training import NonFiniteLossError

__all__ = ["Model", "Sequential", "NonFiniteLossError", "load_model"]
