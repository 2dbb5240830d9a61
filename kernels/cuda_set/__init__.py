"""The cuda kernel set: hand-written Numba ``@cuda.jit`` kernels and their launchers.

On a GPU the arrays are CuPy arrays and every kernel launches on CuPy's current stream with no
host synchronisation; under ``NUMBA_ENABLE_CUDASIM=1`` the same kernels run in Numba's simulator
on NumPy arrays (``simulate.small_launches()`` gives them simulator-sized tiles).

- ``conv``: the conv launchers and the baseline implicit-GEMM kernels (float64, and float32
  where ``GPUCNN_CONV_KERNELS=baseline``); ``gemm``: the float32 SIMT kernels generated from
  their tile parameters. Forward pass (bias and activation in the epilogue), input gradient
  (= transposed convolution) and weight gradient (split-K partials reduced by
  ``reduce.column_sum``, no atomics); small dense layers run on them as 1x1 convolutions.
- ``conv_tf32``: the same three GEMMs on TF32 tensor cores (``mma.sync`` through ``ptx``, the
  one module that builds LLVM IR), opt-in by ``gpucnn.kernels._precision``.
- ``pool`` (the max pool's backward a gather), ``activation``, ``softmax`` and ``loss`` (rows
  of at most ``softmax.SHORT_ROW`` columns a 32-thread group each, several to a block, longer
  ones a block each; shared-memory tree reductions), ``dropout`` (the ``_rng`` hash on the
  device, bit-identical masks), ``optim`` (fused SGD/Adam/RMSprop updates, one tensor or many a
  launch): grid-stride kernels.
- ``_registry``: every kernel made by a registered factory with explicit Numba signatures (the
  PTX test compiles them all); ``_launch``: the launch paths (on a GPU Numba's cubin loaded into
  CuPy once and launched through CuPy's launcher, the arguments flattened to Numba's kernel ABI:
  a few microseconds of host time a launch instead of Numba's ~200; ``GPUCNN_CUDA_LAUNCH=numba``:
  Numba's own launcher).

Dtypes: float32 and float64 (each kernel is compiled for both); any other dtype is a
TypeError. Layouts and signatures: the contract in ``gpucnn.kernels``.
"""
from __future__ import annotations

from .. import CONTRACT

from ._cache import cache_dir, cache_note, fill as fill_cache
from ._arrays import asarray, xp
from ._launch import device_cc, fell_back, launch_count, launch_path, set_launch_path
from ._probe import probe
from ._registry import all_kernels
from ._runtime import scatter_add
from .activation import act_backward, act_forward
from . import conv_tf32  # noqa: F401 (registers the TF32 kernels: the compile tests build them)
from .conv import (bias_grad, conv2d_backward_input, conv2d_backward_input_act,
                   conv2d_backward_weight, conv2d_backward_weight_bias, conv2d_forward)
from ._devices import devices
from .dropout import dropout_mask
from .loss import loss_backward, loss_forward
from .graphs import graph_engine
from .streams import streams, to_host
from .optim import (adam_update, adam_update_many, rmsprop_update, rmsprop_update_many,
                    sgd_update, sgd_update_many)
from .reduce import act_backward_bias
from .pool import avg_pool_backward, avg_pool_forward, max_pool_backward, max_pool_forward
from .softmax import log_softmax_backward, log_softmax_forward, softmax_backward, softmax_forward

CAPABILITIES = ("launches", "fused_backward", "multi_update", "graphs", "devices", "probe",
                "compile_cache", "scatter_add", "streams", "instruments")


def instruments():
    """What the measurement tools need beyond the contract (``_instruments``); imported when
    first asked for."""
    from . import _instruments

    return _instruments

__all__ = [
    *CONTRACT,
    "all_kernels", "fell_back", "launch_count", "launch_path", "set_launch_path",
    "conv2d_backward_input_act", "conv2d_backward_weight_bias", "act_backward_bias",
    "sgd_update_many", "adam_update_many", "rmsprop_update_many", "graph_engine", "devices",
    "probe", "cache_dir", "cache_note", "device_cc", "fill_cache", "scatter_add", "streams",
    "instruments",
]
