"""Stride-1 input gradient by row-Toeplitz GEMMs: few, wide GEMMs and few, long adds.

Cut each row of ``dy`` into chunks of ``Q`` output columns. A chunk ``dy[n, p, qQ:qQ+Q, :]`` is
``Q * C_out`` contiguous floats, so ``dy`` reshaped to ``(N*Ho*(Wo/Q), Q*C_out)`` is the GEMM's
left operand without any copy. The right operand ``T`` maps a chunk to everything it adds to the
padded input gradient: for kernel row ``i``, the ``Q + KW - 1`` input columns ``b`` under the
chunk, all channels::

    T[(q, o), (i, b, c)] = w[i, b - q, c, o]    (0 <= b - q < KW, else 0)

One GEMM gives, per chunk, ``KH`` runs of ``(Q + KW - 1) * C_in`` contiguous floats, each added
into one row of the padded gradient: ``KH * Wo/Q`` strided adds in all, instead of the
``KH * KW`` GEMMs with only ``C_in`` columns (slow in BLAS when ``C_in`` is small, as LeNet-5's
C3 has 6) of the per-offset scatter. ``T`` holds ``(Q + KW - 1) / KW`` times the useful
multiply-adds (zeros), so ``Q`` is the largest divisor of ``Wo`` not above ``KW`` (less than 2x).
The padding is cropped at the end; blocks of a few images keep every temporary in cache.
"""
from __future__ import annotations

import numpy as np

from ._parallel import run_parts

from .tuning import TUNING as T


def chunk(wo: int, kw: int) -> int:
    """``Q``: the largest divisor of ``wo`` that is at most ``kw``."""
    return max(q for q in range(1, min(wo, kw) + 1) if wo % q == 0)


def toeplitz_matrix(w, q: int):
    """``T`` of the module docstring, ``(Q*C_out, KH*(Q+KW-1)*C_in)``, from w ``(KH, KW, C_in,
    C_out)``."""
    kh, kw, c, co = w.shape
    t = np.zeros((q, co, kh, q + kw - 1, c), dtype=w.dtype)
    wt = w.transpose(3, 0, 1, 2)                                       # (C_out, KH, KW, C_in)
    for j in range(q):
        t[j, :, :, j:j + kw, :] = wt
    return t.reshape(q * co, kh * (q + kw - 1) * c)


def toeplitz_input_grad(dy, w, x_shape, pad):
    """``dx`` of ``x_shape`` for a stride-1 conv, from dy ``(N, Ho, Wo, C_out)`` and w ``(KH, KW,
    C_in, C_out)`` (both C-contiguous, one dtype)."""
    n, h, wd, c = x_shape
    _, ho, wo, co = dy.shape
    kh, kw = w.shape[:2]
    pt, _, pl, _ = pad
    q = chunk(wo, kw)
    nq = wo // q
    span = (q + kw - 1) * c                 # floats one chunk adds to one input row
    t = toeplitz_matrix(w, q)
    hp, wp = ho + kh - 1, wo + kw - 1       # the padded input the windows read
    crop = (hp, wp) != (h, wd)
    dx = np.empty(x_shape, dtype=dy.dtype)
    rows = ho * nq                          # GEMM rows per image
    nb = max(1, T.toeplitz_block_bytes // (rows * t.shape[1] * dy.itemsize))
    d2 = dy.reshape(n * rows, q * co)

    def part(lo, hi):
        m = min(nb, hi - lo)
        prod = np.empty((m * rows, t.shape[1]), dtype=dy.dtype)
        dxp = np.empty((m, hp, wp * c), dtype=dy.dtype) if crop else None
        for n0 in range(lo, hi, nb):
            k = min(nb, hi - n0)
            blk = dxp[:k] if crop else dx[n0:n0 + k].reshape(k, hp, wp * c)
            blk.fill(0)
            pr = prod[:k * rows]
            np.dot(d2[n0 * rows:(n0 + k) * rows], t, out=pr)
            p5 = pr.reshape(k, ho, nq, kh, span)
            for i in range(kh):
                for j in range(nq):
                    view = blk[:, i:i + ho, j * q * c:j * q * c + span]
                    np.add(view, p5[:, :, j, i], out=view)
            if crop:
                dx[n0:n0 + k] = blk.reshape(k, hp, wp, c)[:, pt:pt + h, pl:pl + wd]

    run_parts(part, n, 2.0 * dy.size * t.shape[1])
    return dx
