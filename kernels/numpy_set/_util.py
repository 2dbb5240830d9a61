"""Helpers shared by the NumPy kernels: cheap shape checks, padding, strided window views."""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided


def fail(op: str, what: str, expected, got):
    raise ValueError(f"{op}: {what} expected {expected}, got {got}")


def check_float(op: str, name: str, a) -> None:
    if not isinstance(a, np.ndarray) or a.dtype.kind != "f":
        got = a.dtype if isinstance(a, np.ndarray) else type(a).__name__
        raise TypeError(f"{op}: {name} must be a floating NumPy array, got {got}")


def check_ndim(op: str, name: str, a, ndim: int, layout: str) -> None:
    if a.ndim != ndim:
        fail(op, f"{name} of shape {layout}", f"{ndim} dimensions", f"shape {tuple(a.shape)}")


def check_array(op: str, name: str, a, ndim: int, layout: str) -> None:
    check_float(op, name, a)
    check_ndim(op, name, a, ndim, layout)


def as_dtype(a, dtype):
    """``a`` as a C-contiguous array of ``dtype`` (no copy when it already is one)."""
    return np.ascontiguousarray(a, dtype=dtype)


def pad_hw(x, pad, value=0.0):
    """``x`` (N, H, W, C) padded by ``pad = (top, bottom, left, right)``; ``x`` itself if no padding."""
    pt, pb, pl, pr = pad
    if not (pt or pb or pl or pr):
        return x
    n, h, w, c = x.shape
    out = np.empty((n, h + pt + pb, w + pl + pr, c), dtype=x.dtype)
    for border in (np.s_[:, :pt], np.s_[:, h + pt:], np.s_[:, pt:h + pt, :pl],
                   np.s_[:, pt:h + pt, w + pl:]):        # an empty border is an empty slice
        out[border] = value
    out[:, pt:h + pt, pl:w + pl] = x
    return out


def strided(a, shape, strides):
    """A view of ``a`` with the given shape and byte strides (read-only use): the plain ndarray
    constructor on a C-contiguous ``a`` (ten times cheaper than ``as_strided``), else
    ``as_strided``."""
    if a.flags.c_contiguous:
        return np.ndarray(shape, a.dtype, a, 0, strides)
    return as_strided(a, shape, strides, writeable=False)


def windows(xp, kh, kw, sh, sw, ho, wo):
    """View ``(N, ho, wo, kh, kw, C)`` of the windows of a padded NHWC array."""
    s0, s1, s2, s3 = xp.strides
    n, _, _, c = xp.shape
    return strided(xp, (n, ho, wo, kh, kw, c), (s0, s1 * sh, s2 * sw, s1, s2, s3))


def offset_view(a, i, j, sh, sw, ho, wo):
    """The ``(N, ho, wo, C)`` view of ``a`` read by window offset ``(i, j)`` at stride ``(sh, sw)``."""
    return a[:, i:i + (ho - 1) * sh + 1:sh, j:j + (wo - 1) * sw + 1:sw, :]
