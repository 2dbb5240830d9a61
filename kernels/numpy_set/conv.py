"""2-D convolution (cross-correlation) on NHWC images and HWIO kernels, as BLAS matrix products.

    y[n, p, q, o] = b[o] + sum_{i, j, c} xpad[n, p*sh + i, q*sw + j, c] * w[i, j, c, o]

``xpad`` is x with ``pad = (top, bottom, left, right)`` zeros. The forward pass and the kernel
gradient multiply im2col blocks (a strided window view of ``xpad`` copied a few images at a time,
so that each block stays in cache) by the kernel viewed as a ``(KH*KW*C_in, C_out)`` matrix. The
input gradient does one GEMM per kernel offset ``(i, j)`` and adds its ``(rows, C_in)`` result into
the strided view of the padded gradient that offset reads, then crops the padding away.
"""
from __future__ import annotations

import numpy as np

from ._util import (COL_BLOCK_BYTES, as_dtype, check_float, check_ndim, fail, offset_view,
                    out_size, pad_hw, windows)
from .activation import act_inplace

__all__ = ["conv2d_forward", "conv2d_backward_input", "conv2d_backward_weight", "bias_grad"]


def _geometry(op, x_shape, w_shape, stride, pad):
    n, h, wd, c = x_shape
    kh, kw, ci, co = w_shape
    if ci != c:
        fail(op, "w.shape[2] (input channels)", f"{c} (x has {c} channels)", ci)
    sh, sw = stride
    pt, pb, pl, pr = pad
    ho = out_size(op, h, kh, sh, pt, pb, "H")
    wo = out_size(op, wd, kw, sw, pl, pr, "W")
    return ho, wo


def _col_blocks(xp, kh, kw, sh, sw, ho, wo):
    """Yield ``(rows, col)``: a slice of the ``N*ho*wo`` output rows and its im2col block.

    Whole images per block while one image fits ``COL_BLOCK_BYTES``, else bands of output rows
    of one image. The block buffer is reused, so each ``col`` is valid until the next one.
    """
    n, _, _, c = xp.shape
    k = kh * kw * c
    if kh == kw == 1 and sh == sw == 1 and xp.flags.c_contiguous:
        yield slice(0, n * ho * wo), xp.reshape(n * ho * wo, c)       # 1x1: x is its own im2col
        return
    win = windows(xp, kh, kw, sh, sw, ho, wo)
    row_bytes = k * xp.itemsize
    per_img = ho * wo
    if per_img * row_bytes <= COL_BLOCK_BYTES:
        nb = min(n, max(1, COL_BLOCK_BYTES // (per_img * row_bytes)))
        buf = np.empty((nb, ho, wo, kh, kw, c), dtype=xp.dtype)
        for n0 in range(0, n, nb):
            m = min(nb, n - n0)
            np.copyto(buf[:m], win[n0:n0 + m])
            yield slice(n0 * per_img, (n0 + m) * per_img), buf[:m].reshape(m * per_img, k)
        return
    rb = max(1, COL_BLOCK_BYTES // (wo * row_bytes))
    buf = np.empty((rb, wo, kh, kw, c), dtype=xp.dtype)
    for i in range(n):
        for r0 in range(0, ho, rb):
            m = min(rb, ho - r0)
            np.copyto(buf[:m], win[i, r0:r0 + m])
            start = i * per_img + r0 * wo
            yield slice(start, start + m * wo), buf[:m].reshape(m * wo, k)


def conv2d_forward(x, w, b, stride, pad, act):
    """``y = act(conv(x, w) + b)``: x ``(N, H, W, C_in)``, w ``(KH, KW, C_in, C_out)``, b
    ``(C_out,)`` or None -> y ``(N, Ho, Wo, C_out)`` in x's dtype, bias and activation applied
    in place on each block while it is in cache."""
    op = "conv2d_forward"
    check_float(op, "x", x)
    check_ndim(op, "x", x, 4, "(N, H, W, C)")
    check_ndim(op, "w", w, 4, "(KH, KW, C_in, C_out)")
    ho, wo = _geometry(op, x.shape, w.shape, stride, pad)
    kh, kw, c, co = w.shape
    dt = x.dtype
    wm = as_dtype(w, dt).reshape(kh * kw * c, co)
    if b is not None:
        if b.shape != (co,):
            fail(op, "b of shape (C_out,)", (co,), tuple(b.shape))
        b = as_dtype(b, dt)
    y = np.empty((x.shape[0], ho, wo, co), dtype=dt)
    y2 = y.reshape(-1, co)
    for rows, col in _col_blocks(pad_hw(x, pad), kh, kw, *stride, ho, wo):
        out = y2[rows]
        np.matmul(col, wm, out=out)
        if b is not None:
            out += b
        act_inplace(out, act)
    return y


def conv2d_backward_weight(x, dy, w_shape, stride, pad):
    """``dw[i, j, c, o] = sum_{n, p, q} xpad[n, p*sh + i, q*sw + j, c] * dy[n, p, q, o]``, shape
    ``w_shape``, in x's dtype: the im2col blocks' transposed products, summed block by block."""
    op = "conv2d_backward_weight"
    check_float(op, "x", x)
    check_ndim(op, "x", x, 4, "(N, H, W, C)")
    check_ndim(op, "dy", dy, 4, "(N, Ho, Wo, C_out)")
    w_shape = tuple(int(s) for s in w_shape)
    ho, wo = _geometry(op, x.shape, w_shape, stride, pad)
    kh, kw, c, co = w_shape
    if dy.shape != (x.shape[0], ho, wo, co):
        fail(op, "dy shape", (x.shape[0], ho, wo, co), tuple(dy.shape))
    dt = x.dtype
    dy2 = as_dtype(dy, dt).reshape(-1, co)
    dw = np.zeros((kh * kw * c, co), dtype=dt)
    part = np.empty_like(dw)
    for rows, col in _col_blocks(pad_hw(x, pad), kh, kw, *stride, ho, wo):
        np.matmul(col.T, dy2[rows], out=part)
        dw += part
    return dw.reshape(w_shape)


def conv2d_backward_input(dy, w, x_shape, stride, pad):
    """``dx`` of shape ``x_shape`` from dy ``(N, Ho, Wo, C_out)`` and w ``(KH, KW, C_in, C_out)``:
    per kernel offset, ``dxpad[:, i::sh, j::sw, :] += dy @ w[i, j].T``, then the padding is
    cropped. Input cells no window reads get zero. Also the transposed convolution of ``dy``."""
    op = "conv2d_backward_input"
    check_float(op, "dy", dy)
    check_ndim(op, "dy", dy, 4, "(N, Ho, Wo, C_out)")
    check_ndim(op, "w", w, 4, "(KH, KW, C_in, C_out)")
    n, h, wd, c = (int(s) for s in x_shape)
    kh, kw, ci, co = w.shape
    nd, ho, wo, cd = dy.shape
    if ci != c or co != cd or nd != n:
        fail(op, "(N, C_in, C_out) of x_shape, w and dy to agree:",
             f"N={n}, C_in={c} (x_shape), C_out={co} (w)", f"dy shape {dy.shape}, w shape {w.shape}")
    sh, sw = stride
    pt, pb, pl, pr = pad
    dt = dy.dtype
    hp = max(h + pt + pb, (ho - 1) * sh + kh)
    wp = max(wd + pl + pr, (wo - 1) * sw + kw)
    dxp = np.zeros((n, hp, wp, c), dtype=dt)
    dy2 = as_dtype(dy, dt).reshape(-1, co)
    wt = np.ascontiguousarray(w.transpose(0, 1, 3, 2), dtype=dt)      # (KH, KW, C_out, C_in)
    part = np.empty((n * ho * wo, c), dtype=dt)
    part4 = part.reshape(n, ho, wo, c)
    for i in range(kh):
        for j in range(kw):
            np.matmul(dy2, wt[i, j], out=part)
            view = offset_view(dxp, i, j, sh, sw, ho, wo)
            np.add(view, part4, out=view)
    if (hp, wp) == (h, wd):
        return dxp
    return np.ascontiguousarray(dxp[:, pt:pt + h, pl:pl + wd])


def bias_grad(dy):
    """``db[o] = sum of dy[..., o]`` over every other axis, in dy's dtype."""
    check_float("bias_grad", "dy", dy)
    if dy.ndim < 1:
        fail("bias_grad", "dy", "at least 1 dimension", f"shape {dy.shape}")
    return np.ascontiguousarray(dy).reshape(-1, dy.shape[-1]).sum(axis=0)
