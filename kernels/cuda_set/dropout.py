"""Dropout masks from the counter-based hash of ``_rng.py``, generated on the device.

The device hash works on uint64 values holding 32-bit words and masks after every multiply,
exactly like ``_rng.random_u32_np``: the mask is bit-identical to the NumPy set's for the same
``seed`` and ``counter``. The keep test ``u * 2**-32 >= rate`` is done as ``u >= ceil(rate * 2**32)``
on the device (exact: both products are exact in float64), so the kernel has no float64.
"""
from __future__ import annotations

import math

import numpy as np
from numba import types

from .._rng import GOLDEN, M1, M2, M3, MASK32
from ._launch import (NB_FLOAT, arr, cdiv, empty, float_variants, kernel_factory, KernelSpec,
                      launch, dtname)
from ._runtime import numba_cuda as cuda
from .vector import aligned16, store4, stream_grid

#: Threads per block of the grid-stride mask kernel, and the blocks per SM it is compiled for
#: (at 8, 32 registers, the 64-bit hash spills).
DROPOUT_BLOCK = 256
DROPOUT_PER_SM = 6

u64 = types.uint64
_MASK, _GOLDEN, _M1, _M2, _M3 = (u64(v) for v in (MASK32, GOLDEN, M1, M2, M3))
_S16, _S13 = u64(16), u64(13)


@cuda.jit(device=True, inline="always")
def fmix32(h):
    """murmur3's finaliser of a 32-bit word held in a uint64."""
    h = h ^ (h >> _S16)
    h = (h * _M1) & _MASK
    h = h ^ (h >> _S13)
    h = (h * _M2) & _MASK
    h = h ^ (h >> _S16)
    return h


@cuda.jit(device=True, inline="always")
def random_u32(seed, counter, i):
    """The device twin of ``_rng.random_u32_np`` (all arguments uint64 holding 32-bit words)."""
    h = (i * _GOLDEN) & _MASK
    h = fmix32(h ^ seed)
    h = (h + counter * _M3) & _MASK
    return fmix32(h ^ seed)


@kernel_factory(float_variants)
def dropout_kernel(dtype):
    dt = NB_FLOAT[np.dtype(dtype)]

    @cuda.jit(device=True, inline="always")
    def keep_d(seed, counter, threshold, scale, i):
        u = random_u32(seed, counter, u64(i) & _MASK)
        return scale if u >= threshold else dt(0)

    def dropout_k(mask, seed, counter, threshold, scale):
        """mask[i] = scale if random_u32(seed, counter, i) >= threshold else 0, over a flat
        C-contiguous array; seed and counter are 32-bit words. One write per element, by
        128-bit stores of 4 when the mask is 16-byte aligned, then the rest one by one, in
        grid-stride loops."""
        chunks = mask.size // 4 if aligned16(mask) else 0
        for c in range(cuda.grid(1), chunks, cuda.gridsize(1)):
            i = 4 * c
            store4(mask, i, keep_d(seed, counter, threshold, scale, i),
                   keep_d(seed, counter, threshold, scale, i + 1),
                   keep_d(seed, counter, threshold, scale, i + 2),
                   keep_d(seed, counter, threshold, scale, i + 3))
        for i in range(4 * chunks + cuda.grid(1), mask.size, cuda.gridsize(1)):
            mask[i] = keep_d(seed, counter, threshold, scale, i)

    return KernelSpec(f"dropout[{dtype}]", dropout_k,
                      (arr(dtype, 1), u64, u64, u64, NB_FLOAT[np.dtype(dtype)]),
                      (DROPOUT_BLOCK, DROPOUT_PER_SM))


def dropout_mask(shape, rate, seed, counter, dtype=np.float32):
    """A mask of ``shape``: 0 or ``1 / (1 - rate)`` per element, identical to the NumPy set's."""
    op = "dropout_mask"
    dt = np.dtype(dtype)
    if dt not in (np.float32, np.float64):
        raise TypeError(f"{op}: dtype must be float32 or float64, got {dt}")
    rate = float(rate)
    if not (0.0 <= rate < 1.0) or math.isnan(rate):
        raise ValueError(f"{op}: rate must be in [0, 1), got {rate}")
    shape = tuple(int(s) for s in (shape if np.iterable(shape) else (shape,)))
    mask = empty(shape, dt)
    n = mask.size
    if n >= 2**32:
        raise ValueError(f"{op}: at most 2**32 elements, got {n}")
    launch(dropout_kernel(dtname(dt)), stream_grid(cdiv(n, 4), DROPOUT_BLOCK, DROPOUT_PER_SM),
           (DROPOUT_BLOCK,), mask, int(seed) & MASK32, int(counter) & MASK32,
           math.ceil(rate * 2.0**32),
           dt.type(1.0 / (1.0 - rate)))
    return mask
