"""Stride-1 input gradient by a kernel-row im2col and column shifts ("row gather").

The stride-1 input gradient is a forward correlation of dy, padded by ``(top, bottom, left,
right)``, with the flipped kernel ``wf[i, j, o, c] = w[KH-1-i, KW-1-j, c, o]``::

    dx[n, h, w, c] = sum_{i, j, o} dyp[n, h + i, w + j, o] * wf[i, j, o, c]

Its im2col GEMM ("gather") has ``C_in`` output columns, and BLAS runs narrow products slowly:
AlexNet-small's conv2, 24 columns, ran at 77 GFLOP/s where 120 columns run at 99. Split the sum
in two instead:

    z[n, h, u, j, c] = sum_{i, o} dyp[n, h + i, u, o] * wf[i, j, o, c]     one GEMM: K = KH*C_out,
                                                                           N = KW*C_in
    dx[n, h, w, c]   = sum_j z[n, h, w + j - left, j, c]                  KW shifted adds

``u`` runs over dy's own columns (a padding column would give z = 0). The im2col block holds
``KH`` runs of ``C_out`` floats per output pixel, a fifth of the gather's for a 5x5 kernel, and
the output rows are grouped into bands that read the same kernel rows inside dy (the top and
bottom rows of a ``same`` convolution skip the rows in the padding), so the vertical padding
is neither copied nor multiplied.

The shifted adds run over the flat ``z`` of a block: pixel ``t`` of a row of width ``Wo`` reads
``z`` at ``t*KW*C + (j - left)*KW*C + j*C``, one strided view per block whose sum over ``j`` is
written straight into dx. A read past its row's end lands on the next row's first columns (or
the previous row's last, or a row further on when the kernel is wider than the image), so every
entry of ``z`` that belongs to no pixel of dx (``w < 0`` or ``w >= W``) is set to zero first:
with ``W <= Wo`` those are the only entries such a read can reach. The reads before a block's
first row land on a zero margin; those past its last row land on the rows an earlier block left
in the buffer (whose entries there were zeroed alike) or on the zeros the buffer started with.
"""
from __future__ import annotations

import functools

import numpy as np

from ._im2col import axis_runs
from ._parallel import block_scale, run_parts
from ._util import strided

from .tuning import TUNING as T


def applies(h, wd, ho, wo, gpad) -> bool:
    """Whether the geometry suits the row gather: a gather padding exists and dx is no wider
    than dy (so a shifted read past a row's end only meets zeroed entries)."""
    return gpad is not None and wd <= wo


@functools.lru_cache(maxsize=256)
def _invalid(wo, wd, kw, left):
    """Per kernel column ``j``: the columns ``u`` of z below ``lo`` and from ``hi`` on add to no
    pixel of dx, ``[(j, lo, hi), ...]`` (only the ``j`` that have any)."""
    out = []
    for j in range(kw):
        lo = min(wo, max(0, j - left))               # u - j + left >= 0
        hi = max(lo, min(wo, wd + j - left))         # u - j + left < W
        if lo > 0 or hi < wo:
            out.append((j, lo, hi))
    return tuple(out)


def row_gather_input_grad(dy, w, x_shape, gpad):
    """``dx`` of ``x_shape`` for a stride-1 conv, from dy ``(N, Ho, Wo, C_out)`` and w ``(KH,
    KW, C_in, C_out)`` (one dtype), ``gpad`` the gather padding of dy (``conv._gather_pad``)."""
    n, h, wd, c = x_shape
    _, ho, wo, co = dy.shape
    kh, kw = w.shape[:2]
    top, _, left, _ = gpad
    dt = dy.dtype
    dy = np.ascontiguousarray(dy)
    # wz[(i, o), (j, c)] = wf[i, j, o, c] = w[KH-1-i, KW-1-j, c, o]
    wz = np.ascontiguousarray(w[::-1, ::-1].transpose(0, 3, 1, 2)).reshape(kh * co, kw * c)
    kc = kw * c
    bands = axis_runs(ho, kh, 1, top, h)           # dx rows p0..p1 read kernel rows lo..hi
    invalid = _invalid(wo, wd, kw, left)
    below, above = left * kc, (kw - left) * kc     # zero margins around a block's z
    item = dy.itemsize
    dx = np.empty(x_shape, dtype=dt)
    s0, s1, s2, s3 = dy.strides

    def part(lo, hi):
        zbuf = colbuf = None
        for p0, p1, i0, i1 in bands:
            hp = p1 - p0                           # (with a gather padding, i1 > i0 always)
            k = (i1 - i0) * co
            least = T.col_min_rows if k < T.wide_k else max(T.col_min_rows, T.wide_min_rows)
            rows = max(T.col_block_bytes * block_scale() // (k * item), least)
            nb = min(hi - lo, max(1, rows // (hp * wo)))
            r = nb * hp * wo
            if zbuf is None or len(zbuf) < below + r * kc + above:
                zbuf = np.zeros(below + r * kc + above, dtype=dt)
            if colbuf is None or colbuf.size < r * k:
                colbuf = np.empty(r * k, dtype=dt)
            wb = wz[i0 * co:i1 * co]
            first = (p0 - top + i0) * s1               # dy row read by the band's first tap
            for n0 in range(lo, hi, nb):
                m = min(nb, hi - n0)
                rm = m * hp * wo
                win = np.ndarray((m, hp, wo, i1 - i0, co), dt, dy, n0 * s0 + first,
                                 (s0, s1, s2, s1, s3))
                col = colbuf[:rm * k].reshape(m, hp, wo, i1 - i0, co)
                np.copyto(col, win)
                z = zbuf[below:below + rm * kc]
                np.dot(col.reshape(rm, k), wb, out=z.reshape(rm, kc))
                z4 = z.reshape(m * hp, wo, kw, c)
                for j, a, b in invalid:
                    z4[:, :a, j] = 0
                    z4[:, b:, j] = 0
                # v[n, p, w, j, :] = z[n, p, w + j - left, j, :]
                v = strided(zbuf, (m, hp, wd, kw, c),
                            (hp * wo * kc * item, wo * kc * item, kc * item, (kc + c) * item,
                             item))
                np.sum(v, axis=3, out=dx[n0:n0 + m, p0:p1])
        return None

    run_parts(part, n, 2.0 * n * h * wd * kh * kw * c * co)
    return dx

