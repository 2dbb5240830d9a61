"""Dropout masks from the shared counter-based hash of ``kernels/_rng.py``.

Element ``i`` (C order) of the mask is ``scale = dtype(1 / (1 - rate))`` (the quotient taken in
float64, then rounded to ``dtype``) when ``uniform(seed, counter, i) >= rate``, else 0, where
``uniform = random_u32(seed, counter, i) * 2**-32`` is exact in float64. The CUDA set computes the
same bits, so both sets drop the same elements for the same ``seed`` and ``counter``.
"""
from __future__ import annotations

import math

import numpy as np

from .._rng import uniform_np

__all__ = ["dropout_mask"]


def dropout_mask(shape, rate, seed, counter, dtype):
    """Mask of ``shape`` and ``dtype``: 0 or ``1 / (1 - rate)``; ``rate = 0`` gives all ones."""
    rate = float(rate)
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout_mask: rate expected in [0, 1), got {rate!r}")
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise TypeError(f"dropout_mask: dtype must be floating, got {dtype}")
    shape = tuple(int(s) for s in shape)
    if rate == 0.0:
        return np.ones(shape, dtype=dtype)
    u = uniform_np(int(seed), int(counter), math.prod(shape))
    mask = np.greater_equal(u, rate).astype(dtype)
    mask *= dtype.type(1.0 / (1.0 - rate))
    return mask.reshape(shape)
