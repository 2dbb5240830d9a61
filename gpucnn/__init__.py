"""gpucnn: convolutional networks on NVIDIA GPUs with hand-written Numba CUDA kernels,
a NumPy fallback on any CPU, a small define-by-run autograd and a Keras-style API.

>>> import gpucnn
>>> gpucnn.set_backend("numpy")
'numpy'
"""
from gpucnn.backend import backend_info, get_backend, set_backend
from gpucnn.autograd import Function, Tensor, is_grad_enabled, no_grad
from gpucnn.random import manual_seed
from gpucnn import functional
from gpucnn import initializers, layers, losses, metrics, optimizers, callbacks, models, data
from gpucnn import datasets, zoo

__version__ = "0.1.0"

__all__ = [
    "Tensor", "Function", "no_grad", "is_grad_enabled",
    "set_backend", "get_backend", "backend_info", "manual_seed", "functional",
    "initializers", "layers", "losses", "metrics", "optimizers", "callbacks", "models", "data",
    "datasets", "zoo",
]
