"""The layer and model classes a model file may name, by class name.

``gpucnn.layers`` registers its layer classes here and ``gpucnn.models`` its model classes, so
that reading a model file (``deserialize_layer`` here, ``gpucnn.models.saving``) needs neither
the layers' modules nor the models': every module registers into this one, and this one imports
none of them.
"""
from __future__ import annotations

import contextlib
import contextvars
import math

import numpy as np

_layers: dict = {}      # class name -> a class a file may name as a layer (models nest too)
_models: dict = {}      # class name -> a model class a file may name at its top
_model_bases: list = []  # what a model class of the user's own must subclass (``Model``)
_budget = contextvars.ContextVar("gpucnn_weight_budget", default=None)


class WeightBudgetError(ValueError):
    """A file's architecture asks for more weight bytes than the file can account for."""


@contextlib.contextmanager
def weight_budget(nbytes: int, where: str):
    """While a file's architecture is built, every weight a layer creates is charged against
    the ``nbytes`` its arrays hold; one past them is refused before it is allocated."""
    token = _budget.set([int(nbytes), where])
    try:
        yield
    finally:
        _budget.reset(token)


def charge(layer: str, name: str, shape: tuple, dtype) -> None:
    """Charge a new weight of ``layer`` to the ``weight_budget`` in force (none: no limit)."""
    budget = _budget.get()
    if budget is None:
        return
    need = math.prod(shape) * np.dtype(dtype).itemsize
    if need > budget[0]:
        raise WeightBudgetError(f"{budget[1]}: layer '{layer}' asks for a weight {name!r} of "
                                f"shape {shape} ({need} bytes), more than the file's arrays "
                                f"account for ({budget[0]} bytes left): its architecture does not "
                                "match its weights; nothing was allocated")
    budget[0] -= need


def register_layer(*classes):
    """Let files name each of ``classes`` (layer classes) as a layer; returns the first."""
    for cls in classes:
        _layers[cls.__name__] = cls
    return classes[0]


def register_model(cls, *, base: bool = False):
    """Let files name the model class ``cls`` at their top and as a nested layer; with ``base``,
    ``cls`` is only the class every model subclasses (``Model``), which a file cannot name."""
    if base:
        _model_bases.append(cls)
    else:
        _models[cls.__name__] = cls
        _layers[cls.__name__] = cls
    return cls


def layer_classes() -> dict:
    """``{class name: class}`` of the layer types a file may name."""
    return dict(_layers)


def model_class(name, custom_objects, where):
    """The model class a file's ``class_name`` names (``Sequential``, or a class of the user's
    own given in ``custom_objects``); a ValueError or TypeError saying what is missing."""
    cls = (custom_objects or {}).get(name) or _models.get(name)
    if cls is None:
        raise ValueError(f"{where}: unknown model type {name!r}; a model of your own Model class "
                         f"needs it in custom_objects={{{name!r}: {name}}}")
    if not (isinstance(cls, type) and issubclass(cls, tuple(_model_bases))):
        raise TypeError(f"{where}: custom_objects[{name!r}] must be a Model class, got {cls!r}")
    return cls


def deserialize_layer(d, custom_objects=None, where="load_model"):
    """The layer (or nested ``Sequential``) that ``{"class_name": ..., "config": ...}``
    describes; ``custom_objects`` maps class names of your own layers to their classes."""
    if not isinstance(d, dict) or "class_name" not in d:
        raise ValueError(f"{where}: a layer must be written as {{'class_name': ..., 'config': "
                         f"...}}, got {d!r}")
    name = d["class_name"]
    config = dict(d.get("config") or {})
    known = layer_classes()
    cls = (custom_objects or {}).get(name) or known.get(name)
    if cls is None:
        raise ValueError(f"{where}: unknown layer type {name!r} (layer {config.get('name')!r}); "
                         f"expected one of {sorted(known)}, or give the class in "
                         f"custom_objects={{{name!r}: {name}}}")
    try:
        if issubclass(cls, tuple(_models.values())):   # a nested model reads its own layers
            return cls.from_config(config, custom_objects)
        return cls.from_config(config)
    except (TypeError, ValueError) as e:
        if isinstance(e, WeightBudgetError):
            raise
        raise type(e)(f"{where}: cannot rebuild layer {config.get('name')!r} ({name}) from its "
                      f"config {config}: {e}") from None


__all__ = ["register_layer", "register_model", "layer_classes", "model_class",
           "deserialize_layer", "weight_budget", "charge", "WeightBudgetError"]
