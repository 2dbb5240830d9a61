"""gpucnn: convolutional networks on NVIDIA GPUs with hand-written Numba CUDA kernels,
a NumPy fallback on any CPU, a small define-by-run autograd and a Keras-style API.

>>> import gpucnn
>>> gpucnn.set_backend("numpy")
'numpy'
"""

def _kernels_from_a_source_checkout():
    """An installed gpucnn has ``gpucnn.kernels`` (the top-level ``kernels/`` folder, mapped by
    setuptools). Run from a bare source checkout (the repository root on ``sys.path``, nothing
    installed), load that folder as ``gpucnn.kernels`` itself: one copy, under its one name."""
    import importlib.util
    import os
    import sys

    if "gpucnn.kernels" in sys.modules or importlib.util.find_spec("gpucnn.kernels") is not None:
        return
    folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "kernels")
    init = os.path.join(folder, "__init__.py")
    if not os.path.exists(init):
        return          # the ImportError that follows names the missing package
    spec = importlib.util.spec_from_file_location("gpucnn.kernels", init,
                                                  submodule_search_locations=[folder])
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpucnn.kernels"] = module
    spec.loader.exec_module(module)


_kernels_from_a_source_checkout()

from gpucnn.backend import backend_info, get_backend, set_backend  # noqa: E402
from gpucnn.autograd import Function, Tensor, is_grad_enabled, no_grad  # noqa: E402
from gpucnn import _math  # noqa: E402

_math.attach(Tensor)     # Tensor's operators, defined as differentiable ops on the engine
from gpucnn.random import manual_seed  # noqa: E402
from gpucnn import functional  # noqa: E402
from gpucnn import initializers, layers, losses, metrics, optimizers, callbacks, models, data  # noqa: E402
from gpucnn import datasets, zoo  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "Tensor", "Function", "no_grad", "is_grad_enabled",
    "set_backend", "get_backend", "backend_info", "manual_seed", "functional",
    "initializers", "layers", "losses", "metrics", "optimizers", "callbacks", "models", "data",
    "datasets", "zoo",
]
