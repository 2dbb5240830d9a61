"""Input gradient (and transposed convolution) by scatter: one GEMM per kernel offset.

    dxpad[:, i + p*sh, j + q*sw, :] += dy[:, p, q, :] @ w[i, j].T      for every offset (i, j)

Each offset's product is a contiguous ``(rows, C_in)`` block added into the strided view of the
padded gradient that the offset reads in the forward pass (runs of ``Wo*C_in`` floats when the
stride is 1), a few images at a time so that the block stays in cache; the padding is cropped at
the end. Any stride and padding; input cells no window reads keep their zero.
"""
from __future__ import annotations

import numpy as np

from ._parallel import run_parts
from ._util import offset_view

from .tuning import TUNING as T


def scatter_input_grad(dy, w, x_shape, stride, pad):
    """``dx`` of ``x_shape`` from dy ``(N, Ho, Wo, C_out)`` and w ``(KH, KW, C_in, C_out)``."""
    n, h, wd, c = x_shape
    _, ho, wo, co = dy.shape
    kh, kw = w.shape[:2]
    sh, sw = stride
    pt, pb, pl, pr = pad
    wt = np.ascontiguousarray(w.transpose(0, 1, 3, 2))                # (KH, KW, C_out, C_in)
    hp = max(h + pt + pb, (ho - 1) * sh + kh)
    wp = max(wd + pl + pr, (wo - 1) * sw + kw)
    crop = (hp, wp) != (h, wd)
    dx = np.empty((n, h, wd, c), dtype=dy.dtype)
    dy2 = dy.reshape(-1, co)
    per_img = ho * wo
    nb = max(1, T.scatter_block_bytes // ((per_img * (co + c) + hp * wp * c) * dy.itemsize))

    def part(lo, hi):
        m = min(nb, hi - lo)
        tmp = np.empty((m * per_img, c), dtype=dy.dtype)
        dxp = np.empty((m, hp, wp, c), dtype=dy.dtype) if crop else None
        for n0 in range(lo, hi, nb):
            k = min(nb, hi - n0)
            blk = dxp[:k] if crop else dx[n0:n0 + k]
            blk.fill(0)
            t2 = tmp[:k * per_img]
            t4 = t2.reshape(k, ho, wo, c)
            d2 = dy2[n0 * per_img:(n0 + k) * per_img]
            for i in range(kh):
                for j in range(kw):
                    np.dot(d2, wt[i, j], out=t2)
                    view = offset_view(blk, i, j, sh, sw, ho, wo)
                    np.add(view, t4, out=view)
            if crop:
                dx[n0:n0 + k] = blk[:, pt:pt + h, pl:pl + wd]

    run_parts(part, n, 2.0 * dy.size * kh * kw * c)
    return dx
