"""The counter-based random generator that every kernel set uses for dropout.

``random_u32(seed, counter, i)`` is a stateless 32-bit hash of three 32-bit words: the seed,
a per-call counter, and the element index. Two rounds of the murmur3 finaliser over a mix of
the three words; every step is arithmetic modulo 2**32, so the NumPy code below (on uint64
arrays, masked) and a CUDA device function (on uint32) give the same bits.
"""
from __future__ import annotations

import numpy as np

MASK32 = 0xFFFFFFFF
GOLDEN = 0x9E3779B9
M1 = 0x85EBCA6B
M2 = 0xC2B2AE35
M3 = 0x27D4EB2F


def fmix32_np(h):
    """murmur3's finaliser on a uint64 array holding 32-bit values."""
    h = h ^ (h >> np.uint64(16))
    h = (h * np.uint64(M1)) & np.uint64(MASK32)
    h = h ^ (h >> np.uint64(13))
    h = (h * np.uint64(M2)) & np.uint64(MASK32)
    h = h ^ (h >> np.uint64(16))
    return h


def random_u32_np(seed: int, counter: int, i):
    """The 32-bit random word of elements ``i`` (a uint64 array of indices < 2**32)."""
    s = np.uint64(seed & MASK32)
    c = np.uint64(counter & MASK32)
    h = (i * np.uint64(GOLDEN)) & np.uint64(MASK32)
    h = fmix32_np(h ^ s)
    h = (h + c * np.uint64(M3)) & np.uint64(MASK32)
    return fmix32_np(h ^ s)


def uniform_np(seed: int, counter: int, n: int):
    """``n`` floats in [0, 1): ``random_u32 * 2**-32`` in float64 (exact)."""
    i = np.arange(n, dtype=np.uint64)
    return random_u32_np(seed, counter, i).astype(np.float64) * (1.0 / 4294967296.0)
