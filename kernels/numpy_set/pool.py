"""Max and average pooling on NHWC images, one vectorised pass per window offset ``(i, j)``.

Window ``(p, q)`` covers input rows ``p*sh - top + i`` and columns ``q*sw - left + j`` for
``0 <= i < ph``, ``0 <= j < pw``; cells outside the image are padding, which never wins a max
and is not counted in a mean (Keras ``same``). Max pooling keeps the first maximum in row-major
window order; a window whose real cells are all -inf picks its first real cell; a NaN in a
window makes its maximum NaN (its index is then unspecified).
"""
from __future__ import annotations

import numpy as np

from ._util import check_float, check_ndim, fail, offset_view, out_size, pad_hw

__all__ = ["max_pool_forward", "max_pool_backward", "avg_pool_forward", "avg_pool_backward"]


def _geometry(op, x_shape, pool, stride, pad):
    _, h, w, _ = x_shape
    ph, pw = pool
    sh, sw = stride
    pt, pb, pl, pr = pad
    if max(pt, pb) >= ph or max(pl, pr) >= pw:
        raise ValueError(f"{op}: padding (top, bottom, left, right) expected each side smaller "
                         f"than the window {(ph, pw)}, got {tuple(pad)}")
    return out_size(op, h, ph, sh, pt, pb, "H"), out_size(op, w, pw, sw, pl, pr, "W")


def _first_cells(size, k, s, before, out):
    """Per output position along one axis: first real input cell of its window and real count."""
    start = np.arange(out) * s - before
    first = np.maximum(start, 0)
    return first, np.minimum(start + k, size) - first


def max_pool_forward(x, pool, stride, pad):
    """``(y, idx)`` for x ``(N, H, W, C)``: y the window maxima ``(N, Ho, Wo, C)``; idx int32, the
    flat index ``h * W + w`` of each winning input cell in its ``(n, :, :, c)`` plane."""
    op = "max_pool_forward"
    check_float(op, "x", x)
    check_ndim(op, "x", x, 4, "(N, H, W, C)")
    ho, wo = _geometry(op, x.shape, pool, stride, pad)
    _, h, w, _ = x.shape
    ph, pw = pool
    sh, sw = stride
    pt, _, pl, _ = pad
    xp = pad_hw(x, pad, -np.inf)
    y = np.array(offset_view(xp, 0, 0, sh, sw, ho, wo))
    bt = np.uint8 if ph * pw < 256 else np.int32
    best = np.zeros(y.shape, dtype=bt)                   # the winning offset t = i * pw + j
    v = np.empty_like(y)            # each offset's view is copied once, then every step runs
    win = np.empty(y.shape, dtype=bool)   # on contiguous arrays (masked copies are slow)
    step = np.empty(y.shape, dtype=bt)
    for t in range(1, ph * pw):
        np.copyto(v, offset_view(xp, t // pw, t % pw, sh, sw, ho, wo))
        np.greater(v, y, out=win)
        np.maximum(y, v, out=y)
        np.subtract(bt(t), best, out=step)               # best += win * (t - best)
        np.multiply(step, win, out=step)
        best += step
    offs = np.array([i * w + j for i in range(ph) for j in range(pw)], dtype=np.int32)
    base = ((np.arange(ho) * sh - pt)[:, None] * w + (np.arange(wo) * sw - pl)[None, :])
    idx = np.take(offs, best)
    idx += base.astype(np.int32)[None, :, :, None]
    if xp is not x and np.isneginf(y).any():              # an all -inf window may have kept padding
        fh, _ = _first_cells(h, ph, sh, pt, ho)
        fw, _ = _first_cells(w, pw, sw, pl, wo)
        first = (fh[:, None] * w + fw[None, :]).astype(np.int32)[None, :, :, None]
        np.copyto(idx, np.broadcast_to(first, idx.shape), where=np.isneginf(y))
    return y, idx


def max_pool_backward(dy, idx, x_shape):
    """``dx`` of shape ``x_shape``: each ``dy`` element added to the input cell ``idx`` names
    (windows may overlap, so one cell may collect several)."""
    op = "max_pool_backward"
    check_float(op, "dy", dy)
    check_ndim(op, "dy", dy, 4, "(N, Ho, Wo, C)")
    n, h, w, c = (int(s) for s in x_shape)
    if idx.shape != dy.shape or dy.shape[0] != n or dy.shape[3] != c:
        fail(op, "idx and dy of one shape (N, Ho, Wo, C) matching x_shape",
             f"idx {dy.shape}, N={n}, C={c}", f"idx {idx.shape}, dy {dy.shape}")
    # flat position of each winner in dx viewed as (N*H*W*C,): ((n*H*W + idx) * C + c)
    flat = idx.astype(np.intp)
    flat += (np.arange(n, dtype=np.intp) * (h * w))[:, None, None, None]
    flat *= c
    flat += np.arange(c, dtype=np.intp)
    dx = np.zeros(n * h * w * c, dtype=dy.dtype)
    np.add.at(dx, flat.ravel(), np.ascontiguousarray(dy).ravel())
    return dx.reshape(n, h, w, c)


def _inv_counts(x_shape, pool, stride, pad, ho, wo, dtype):
    """``1 / count`` of real cells per window: a scalar without padding, else ``(Ho, Wo, 1)``."""
    _, h, w, _ = x_shape
    if not any(pad):
        return dtype.type(1.0 / (pool[0] * pool[1]))
    _, ch = _first_cells(h, pool[0], stride[0], pad[0], ho)
    _, cw = _first_cells(w, pool[1], stride[1], pad[2], wo)
    return (1.0 / (ch[:, None] * cw[None, :])).astype(dtype)[:, :, None]


def avg_pool_forward(x, pool, stride, pad):
    """``y`` ``(N, Ho, Wo, C)``: the mean of the real (non-padding) cells of each window.

    The window rows are summed first (whole image rows: long contiguous runs), then the
    columns of that ``(N, Ho, W, C)`` sum, then each window is scaled by ``1 / count``."""
    op = "avg_pool_forward"
    check_float(op, "x", x)
    check_ndim(op, "x", x, 4, "(N, H, W, C)")
    ho, wo = _geometry(op, x.shape, pool, stride, pad)
    ph, pw = pool
    sh, sw = stride
    xp = pad_hw(x, pad, 0.0)
    rows = _rows(xp, 0, sh, ho)
    if ph > 1:
        rows = rows + _rows(xp, 1, sh, ho)
        for i in range(2, ph):
            rows += _rows(xp, i, sh, ho)
    y = np.array(_cols(rows, 0, sw, wo))
    for j in range(1, pw):
        y += _cols(rows, j, sw, wo)
    y *= _inv_counts(x.shape, pool, stride, pad, ho, wo, y.dtype)
    return y


def avg_pool_backward(dy, x_shape, pool, stride, pad):
    """``dx`` of shape ``x_shape``: each ``dy / count`` spread over the real cells of its window,
    one strided add (or copy, where the windows tile the image) per window offset."""
    op = "avg_pool_backward"
    check_float(op, "dy", dy)
    check_ndim(op, "dy", dy, 4, "(N, Ho, Wo, C)")
    x_shape = tuple(int(s) for s in x_shape)
    ho, wo = _geometry(op, x_shape, pool, stride, pad)
    n, h, w, c = x_shape
    if dy.shape != (n, ho, wo, c):
        fail(op, "dy shape", (n, ho, wo, c), tuple(dy.shape))
    ph, pw = pool
    sh, sw = stride
    pt, pb, pl, pr = pad
    g = dy * _inv_counts(x_shape, pool, stride, pad, ho, wo, dy.dtype)
    hp, wp = h + pt + pb, w + pl + pr
    tiles = sh == ph and sw == pw and ho * sh == hp and wo * sw == wp   # each cell in 1 window
    dxp = (np.empty if tiles else np.zeros)((n, hp, wp, c), dtype=dy.dtype)
    for t in range(ph * pw):
        view = offset_view(dxp, t // pw, t % pw, sh, sw, ho, wo)
        if tiles:
            np.copyto(view, g)
        else:
            np.add(view, g, out=view)
    if (pt, pb, pl, pr) == (0, 0, 0, 0):
        return dxp
    return np.ascontiguousarray(dxp[:, pt:pt + h, pl:pl + w])


def _rows(a, i, sh, ho):
    """The ``(N, Ho, W, C)`` view of the rows window offset ``i`` reads at row stride ``sh``."""
    return a[:, i:i + (ho - 1) * sh + 1:sh]


def _cols(a, j, sw, wo):
    """The ``(N, Ho, Wo, C)`` view of the columns window offset ``j`` reads at stride ``sw``."""
    return a[:, :, j:j + (wo - 1) * sw + 1:sw]
