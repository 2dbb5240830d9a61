"""The NumPy kernel set: every name of the kernel contract (see ``gpucnn.kernels``) on NumPy
arrays, with the heavy lifting in BLAS matrix products. Runs on any CPU.

Beyond the contract (its ``CAPABILITIES``): ``set_num_threads(n)`` / ``get_num_threads()`` /
``num_threads(n)`` (a context), the threads the heavy kernels split their batch over (default:
the CPUs, or ``GPUCNN_NUM_THREADS``; see ``_parallel``),
``data_parallel(fn, n)``, which runs parts of a batch on those threads (a whole training step
per part; ``gpucnn.models`` uses it), ``single_threaded_blas()`` (a context: BLAS on one thread
while the kernels' own threads work; ``fit``, ``evaluate`` and ``predict`` run inside it),
``serial_kernels()`` (a context: kernels on the calling thread only),
``conv_algorithm(...)`` (which conv algorithm a shape gets), ``conv2d_forward_keep`` /
``conv2d_backward_weight_kept`` (the forward's im2col blocks reused by the kernel gradient)
and ``allocator_note()``. ``tuning(**settings)`` (a context) changes the thresholds of
``tuning.FIELDS``, which pick algorithms and block sizes. Loading this set tunes glibc's allocator once for the process (freed
blocks are kept for the next step; ``_alloc`` explains, ``GPUCNN_MALLOPT=0`` opts out).
"""
from __future__ import annotations

from .. import CONTRACT

import numpy

from . import _alloc
from ._parallel import (data_parallel, get_num_threads, num_threads, serial_kernels,
                        set_num_threads, single_threaded_blas)
from .activation import act_backward, act_forward
from .conv import (bias_grad, conv2d_backward_input, conv2d_backward_weight,
                   conv2d_backward_weight_kept, conv2d_forward, conv2d_forward_keep,
                   conv_algorithm)
from .dropout import dropout_mask
from .tuning import tuning
from .optim import adam_update, rmsprop_update, sgd_update
from .pool import avg_pool_backward, avg_pool_forward, max_pool_backward, max_pool_forward
from .softmax import (log_softmax_backward, log_softmax_forward, softmax_backward,
                      softmax_forward, softmax_xent_backward, softmax_xent_forward)

xp = numpy
CAPABILITIES = ("threads", "split_steps", "conv_keep", "conv_algorithm", "allocator")
_alloc.tune()          # once, when the set loads: see _alloc (GPUCNN_MALLOPT=0 to opt out)
allocator_note = _alloc.note


def to_host(a):
    """``a`` as a NumPy array (a CuPy array is copied to the host; a NumPy array is returned as is)."""
    get = getattr(a, "get", None)
    if get is not None and not isinstance(a, numpy.ndarray) and hasattr(a, "__cuda_array_interface__"):
        return get()
    return numpy.asarray(a)


def asarray(a):
    """An array of this set (NumPy) from any array-like; no copy when ``a`` already is one."""
    return to_host(a)


__all__ = [
    *CONTRACT,
    "set_num_threads", "get_num_threads", "num_threads", "data_parallel", "single_threaded_blas",
    "serial_kernels", "tuning",
    "conv_algorithm", "allocator_note", "conv2d_forward_keep", "conv2d_backward_weight_kept",
]
