"""The cuda kernel set: hand-written Numba ``@cuda.jit`` kernels and their launchers.

On a GPU the arrays are CuPy arrays and every kernel launches on CuPy's current stream with no
host synchronisation (see ``_launch`` for the cheap launch path through CuPy). Under
``NUMBA_ENABLE_CUDASIM=1`` the same kernels run in Numba's simulator on NumPy arrays.

Dtypes: float32 and float64 (each kernel is compiled for both); any other dtype is a
TypeError. Layouts and signatures: the contract in ``gpucnn.kernels``.
"""
from __future__ import annotations

from ._launch import (all_kernels, asarray, launch_count, launch_path, set_launch_path, to_host,
                      xp)
from .activation import act_backward, act_forward
from .conv import bias_grad, conv2d_backward_input, conv2d_backward_weight, conv2d_forward
from .dropout import dropout_mask
from .optim import adam_update, rmsprop_update, sgd_update
from .pool import avg_pool_backward, avg_pool_forward, max_pool_backward, max_pool_forward
from .softmax import (log_softmax_backward, log_softmax_forward, softmax_backward, softmax_forward,
                      softmax_xent_backward, softmax_xent_forward)

__all__ = [
    "xp", "asarray", "to_host",
    "conv2d_forward", "conv2d_backward_input", "conv2d_backward_weight", "bias_grad",
    "max_pool_forward", "max_pool_backward", "avg_pool_forward", "avg_pool_backward",
    "act_forward", "act_backward",
    "softmax_forward", "softmax_backward", "log_softmax_forward", "log_softmax_backward",
    "softmax_xent_forward", "softmax_xent_backward",
    "dropout_mask",
    "sgd_update", "adam_update", "rmsprop_update",
    "all_kernels", "launch_count", "launch_path", "set_launch_path",
]
