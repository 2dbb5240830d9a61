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
``tuning.FIELDS``, which pick algorithms and block sizes. ``allocator_tuned()`` (a context) tunes
glibc's allocator while ``fit`` trains and puts it back after (freed blocks are kept for the next
step; ``_alloc`` explains, ``GPUCNN_MALLOPT=0`` opts out); loading the set changes nothing.
"""
from __future__ import annotations

from .. import CONTRACT

import os
import warnings

import numpy

from . import _alloc, _parallel
from ._parallel import (data_parallel, get_num_threads, num_threads, serial_kernels,
                        set_num_threads, single_threaded_blas)
from .activation import act_backward, act_forward
from .conv import (bias_grad, conv2d_backward_input, conv2d_backward_weight,
                   conv2d_backward_weight_kept, conv2d_forward, conv2d_forward_keep,
                   conv_algorithm)
from .dropout import dropout_mask
from .loss import loss_backward, loss_forward
from .tuning import tuning
from .optim import adam_update, rmsprop_update, sgd_update
from .pool import avg_pool_backward, avg_pool_forward, max_pool_backward, max_pool_forward
from .softmax import log_softmax_backward, log_softmax_forward, softmax_backward, softmax_forward

xp = numpy
CAPABILITIES = ("threads", "split_steps", "conv_keep", "conv_algorithm", "allocator")
allocator_note = _alloc.note
allocator_tuned = _alloc.tuned      # fit trains inside it: see _alloc (GPUCNN_MALLOPT=0 to opt out)


def _clamp_env_threads() -> None:
    """``GPUCNN_NUM_THREADS`` above the CPUs this process may use is clamped to them, with a
    warning (64 on 2 CPUs would split every step over 64 threads and fork 63 workers)."""
    env = os.environ.get("GPUCNN_NUM_THREADS", "").strip()
    cpus = _parallel.cpus()
    if env and get_num_threads() > cpus:
        warnings.warn(f"GPUCNN_NUM_THREADS={env} is more than the {cpus} CPU"
                      f"{'s' if cpus != 1 else ''} this process may use; using {cpus}",
                      RuntimeWarning, stacklevel=2)
        set_num_threads(cpus)


_clamp_env_threads()


def to_host(a):
    """``a`` as a NumPy array (a CuPy array is copied to the host; a NumPy array is returned as is)."""
    get = getattr(a, "get", None)
    if get is not None and not isinstance(a, numpy.ndarray) and hasattr(a, "__cuda_array_interface__"):
        return get()
    return numpy.asarray(a)


asarray = to_host   # an array of this set (NumPy) from any array-like; no copy of a NumPy one


__all__ = [
    *CONTRACT,
    "set_num_threads", "get_num_threads", "num_threads", "data_parallel", "single_threaded_blas",
    "serial_kernels", "tuning",
    "conv_algorithm", "allocator_note", "allocator_tuned", "conv2d_forward_keep",
    "conv2d_backward_weight_kept",
]
