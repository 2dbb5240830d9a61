"""Stride-1 convolution by shifted GEMMs: no im2col copy at all.

Flatten a block of padded images to rows ``r = (n*Hp + P)*Wp + Q``. Window offset ``(i, j)``
reads row ``r + s`` with ``s = i*Wp + j``, so for a stride of 1

    yfull[r]  = sum_{i,j} xrows[r + s_ij] @ w[i, j]                (y is yfull at P < Ho, Q < Wo)
    dw[i, j]  = xrows[s_ij : s_ij + L].T @ dyrows[:L]              (dy zero outside P < Ho, Q < Wo)

with every operand a contiguous slice of rows: one GEMM per offset, whose inner dimension is
``C_in``. The rows past the image edge compute values that are thrown away (forward) or meet zeros
(weight gradient). It beats im2col when ``C_out`` is small against ``C_in`` (the autoencoder's
16 -> 1 output conv): im2col copies ``KH*KW*C_in`` floats per output pixel, this adds
``KH*KW*C_out``.
"""
from __future__ import annotations

import numpy as np

from ._parallel import run_parts
from ._util import pad_hw
from .activation import epilogue

from .tuning import TUNING as T


def _blocking(x, pad, w_shape, extra_channels):
    n, h, wd, c = x.shape
    kh, kw = w_shape[:2]
    hp, wp = h + pad[0] + pad[1], wd + pad[2] + pad[3]
    per = hp * wp
    nb = max(1, min(n, T.shift_block_bytes // (per * (c + extra_channels) * x.itemsize)))
    offsets = [(i, j, i * wp + j) for i in range(kh) for j in range(kw)]
    return hp, wp, per, nb, offsets, (kh - 1) * wp + kw - 1


def _rows(x, n0, k, pad):
    """Images ``n0 : n0 + k`` padded and flattened to rows ``(k*Hp*Wp, C)``."""
    return np.ascontiguousarray(pad_hw(x[n0:n0 + k], pad)).reshape(-1, x.shape[3])


def shifted_forward(x, w, pad, y, b, act):
    """``y = act(conv(x, w) + b)`` for stride 1 into ``y`` ``(N, Ho, Wo, C_out)``."""
    n = x.shape[0]
    co = w.shape[3]
    _, ho, wo, _ = y.shape
    hp, wp, per, nb, offsets, smax = _blocking(x, pad, w.shape, co)

    def part(lo, hi):
        acc = np.empty((min(nb, hi - lo) * per, co), dtype=y.dtype)
        tmp = np.empty_like(acc)
        tile = None
        for n0 in range(lo, hi, nb):
            k = min(nb, hi - n0)
            xr = _rows(x, n0, k, pad)
            size = k * per - smax
            a, t = acc[:size], tmp[:size]
            for m, (i, j, s) in enumerate(offsets):
                np.dot(xr[s:s + size], w[i, j], out=t if m else a)
                if m:
                    a += t
            yb = y[n0:n0 + k]
            np.copyto(yb, acc[:k * per].reshape(k, hp, wp, co)[:, :ho, :wo])
            tile = epilogue(yb.reshape(-1, co), b, act, tile)

    run_parts(part, n, 2.0 * n * per * w.size)


def shifted_weight_grad(x, dy, w_shape, pad):
    """``dw`` of ``w_shape`` for stride 1: per offset, shifted input rows times the zero-framed dy."""
    kh, kw, c, co = w_shape
    _, ho, wo, _ = dy.shape
    hp, wp, per, nb, offsets, smax = _blocking(x, pad, w_shape, co)

    def part(lo, hi):
        dw = np.zeros(w_shape, dtype=x.dtype)
        tmp = np.empty((c, co), dtype=x.dtype)
        frame = np.zeros((min(nb, hi - lo), hp, wp, co), dtype=x.dtype)   # zero outside dy
        for n0 in range(lo, hi, nb):
            k = min(nb, hi - n0)
            xr = _rows(x, n0, k, pad)
            frame[:k, :ho, :wo] = dy[n0:n0 + k]
            dr = frame[:k].reshape(-1, co)
            size = k * per - smax
            for i, j, s in offsets:
                np.dot(xr[s:s + size].T, dr[:size], out=tmp)
                dw[i, j] += tmp
        return dw

    dw, *others = run_parts(part, x.shape[0], 2.0 * x.shape[0] * per * kh * kw * c * co)
    for other in others:
        dw += other
    return dw
