"""im2col convolution: window blocks copied a few images at a time, times the kernel matrix.

The forward pass and the kernel gradient of any stride. Each block of output rows gets its
im2col matrix ``(rows, KH*KW*C_in)`` copied from a strided window view of the padded input into
a reused buffer small enough to stay in cache while its GEMM reads it; the forward epilogue
(bias, activation) runs on the block's output rows while they are in cache too.

Border classes: with zero padding, the window of an output pixel near the border reads some
padding, and a GEMM over those zeros is wasted work (AlexNet-small's 3x3 kernels on 7x7 maps: 18%
of the products; its 5x5 kernel on 15x15 maps: 15%). Where that share is large enough
(``border_min_saving`` of ``tuning``), the output pixels are grouped into rectangles whose windows read the
same kernel taps inside the image (``border_classes``), and each rectangle gets its own im2col
and GEMM with only those taps: no padded copy and no product with padding.
"""
from __future__ import annotations

import functools

import numpy as np

from ._parallel import block_scale, run_parts
from ._util import pad_hw, strided, windows
from .activation import epilogue as _epilogue
from .tuning import TUNING as T


def planar(c: int) -> bool:
    """Whether the im2col columns of ``c`` input channels are ordered ``(C, KH, KW)`` (the
    planar blocks) instead of ``(KH, KW, C)``."""
    return c <= T.planar_max_c


def kernel_matrix(w):
    """w ``(KH, KW, C, C_out)`` as the ``(K, C_out)`` matrix in the column order of the blocks."""
    kh, kw, c, co = w.shape
    if planar(c) and c > 1:
        return np.ascontiguousarray(w.transpose(2, 0, 1, 3)).reshape(-1, co)
    return w.reshape(-1, co)


def col_blocks(x, pad, kh, kw, sh, sw, ho, wo, fresh=False):
    """Yield ``(rows, col)``: a slice of the ``N*ho*wo`` output rows of ``x`` padded by ``pad``
    and its im2col block, a ``(len(rows), KH*KW*C)`` matrix (possibly a transposed view) with its
    columns in the order ``planar`` tells.

    Whole images per block while one image fits the block size (each block padded on its own,
    so no padded copy of the whole batch is made), else bands of output rows of one image. The
    buffer is reused, so each ``col`` is valid until the next one is yielded (``fresh=True``:
    every block gets a buffer of its own, which the caller may keep). With few input
    channels the block is built from a channel-planar copy of the images and transposed,
    ``(C*KH*KW, rows)``, so that each copy moves runs of ``wo`` floats instead of runs of
    ``KW*C`` (AlexNet's first layer, 3 channels: 1.6x faster; LeNet-5's C1, 1 channel).
    """
    n, _, _, c = x.shape
    k = kh * kw * c
    per_img = ho * wo
    if kh == kw == 1 and sh == sw == 1 and not any(pad) and x.flags.c_contiguous:
        yield slice(0, n * per_img), x.reshape(n * per_img, c)        # 1x1: x is its own im2col
        return
    least = T.col_min_rows if k < T.wide_k else max(T.col_min_rows, T.wide_min_rows)
    rows = max(T.col_block_bytes * block_scale() // (k * x.itemsize), least)   # rows per block
    nb = min(n, max(1, rows // per_img))
    if planar(c):
        buf = np.empty((c, kh, kw, nb, ho, wo), dtype=x.dtype)
        for n0 in range(0, n, nb):
            m = min(nb, n - n0)
            xb = np.ascontiguousarray(pad_hw(x[n0:n0 + m], pad).transpose(3, 0, 1, 2))
            sc, s0, s1, s2 = xb.strides                               # (C, m, Hp, Wp)
            win = strided(xb, (c, kh, kw, m, ho, wo), (sc, s1, s2, s0, s1 * sh, s2 * sw))
            blk = (buf[:, :, :, :m] if m == nb and not fresh
                   else np.empty((c, kh, kw, m, ho, wo), x.dtype))
            np.copyto(blk, win)
            yield slice(n0 * per_img, (n0 + m) * per_img), blk.reshape(k, m * per_img).T
        return
    if per_img <= rows:
        buf = np.empty((nb, ho, wo, kh, kw, c), dtype=x.dtype)
        for n0 in range(0, n, nb):
            m = min(nb, n - n0)
            blk = buf[:m] if not fresh else np.empty((m, ho, wo, kh, kw, c), dtype=x.dtype)
            np.copyto(blk, windows(pad_hw(x[n0:n0 + m], pad), kh, kw, sh, sw, ho, wo))
            yield slice(n0 * per_img, (n0 + m) * per_img), blk.reshape(m * per_img, k)
        return
    rb = max(1, rows // wo)
    buf = np.empty((rb, wo, kh, kw, c), dtype=x.dtype)
    for i in range(n):
        win = windows(pad_hw(x[i:i + 1], pad), kh, kw, sh, sw, ho, wo)[0]
        for r0 in range(0, ho, rb):
            m = min(rb, ho - r0)
            blk = buf[:m] if not fresh else np.empty((m, wo, kh, kw, c), dtype=x.dtype)
            np.copyto(blk, win[r0:r0 + m])
            start = i * per_img + r0 * wo
            yield slice(start, start + m * wo), blk.reshape(m * wo, k)


def axis_runs(size, k, s, before, out):
    """Runs of output positions along one axis whose windows have the same taps inside the input:
    ``[(p0, p1, lo, hi), ...]``, positions ``p0 <= p < p1`` reading input cells
    ``p*s - before + t`` for the taps ``lo <= t < hi`` (``hi <= lo``: the window is all padding)."""
    runs = []
    for p in range(out):
        lo = max(0, before - p * s)
        hi = max(lo, min(k, size + before - p * s))
        if runs and runs[-1][2:] == (lo, hi):
            runs[-1] = (runs[-1][0], p + 1, lo, hi)
        else:
            runs.append((p, p + 1, lo, hi))
    return runs


def border_classes(x_shape, kh, kw, stride, pad, ho, wo):
    """``(classes, saving)``: the rectangles ``(p0, p1, q0, q1, i0, i1, j0, j1)`` of output pixels
    whose windows read exactly the kernel taps ``i0 <= i < i1``, ``j0 <= j < j1`` inside the
    image, and the share of window cells (over all output pixels) that are padding. Worked out
    once per geometry (a layer asks with the same one every step)."""
    return _border_classes(int(x_shape[1]), int(x_shape[2]), int(kh), int(kw),
                           *(int(s) for s in stride), *(int(p) for p in pad), int(ho), int(wo))


@functools.lru_cache(maxsize=1024)
def _border_classes(h, w, kh, kw, sh, sw, pt, pb, pl, pr, ho, wo):
    rows = axis_runs(h, kh, sh, pt, ho)
    cols = axis_runs(w, kw, sw, pl, wo)
    real = sum((p1 - p0) * (i1 - i0) for p0, p1, i0, i1 in rows) * \
        sum((q1 - q0) * (j1 - j0) for q0, q1, j0, j1 in cols)
    classes = tuple((p0, p1, q0, q1, i0, i1, j0, j1)
                    for p0, p1, i0, i1 in rows for q0, q1, j0, j1 in cols)
    return classes, 1.0 - real / (ho * wo * kh * kw)


def use_border_classes(x_shape, w_shape, stride, pad, ho, wo) -> bool:
    """Whether ``im2col_forward`` / ``im2col_weight_grad`` take the border classes."""
    kh, kw, c, co = w_shape
    if planar(c) or not any(pad):
        return False
    classes, saving = border_classes(x_shape, kh, kw, stride, pad, ho, wo)
    if len(classes) > 9 and kh * kw * c * co < T.border_many_classes_min_work:
        return False
    return saving >= T.border_min_saving


def class_blocks(x, cls, kh, kw, sh, sw, pad):
    """Yield ``(n0, m, col)`` for one border class: images ``n0 .. n0+m`` of the unpadded ``x``
    and their im2col block ``(m * pixels, taps * C)`` over the class's taps only (every cell it
    reads is inside the image). The buffer is reused between blocks."""
    p0, p1, q0, q1, i0, i1, j0, j1 = cls
    n, _, _, c = x.shape
    hp, wq, ki, kj = p1 - p0, q1 - q0, i1 - i0, j1 - j0
    k = ki * kj * c
    pix = hp * wq
    least = T.col_min_rows if k < T.wide_k else max(T.col_min_rows, T.wide_min_rows)
    nb = min(n, max(1, max(T.col_block_bytes * block_scale() // (k * x.itemsize), least) // pix))
    s0, s1, s2, s3 = x.strides
    r, q = p0 * sh - pad[0] + i0, q0 * sw - pad[2] + j0               # first cell read
    shape, steps = (n, hp, wq, ki, kj, c), (s0, s1 * sh, s2 * sw, s1, s2, s3)
    if x.flags.c_contiguous:
        win = np.ndarray(shape, x.dtype, x, r * s1 + q * s2, steps)
    else:
        win = strided(x[:, r:, q:], shape, steps)
    buf = np.empty((nb, hp, wq, ki, kj, c), dtype=x.dtype)
    for n0 in range(0, n, nb):
        m = min(nb, n - n0)
        np.copyto(buf[:m], win[n0:n0 + m])
        yield n0, m, buf[:m].reshape(m * pix, k)


def _region(a, n0, m, cls):
    """The ``(m, p1-p0, q1-q0, C)`` part of ``a`` ``(N, Ho, Wo, C)`` a border class covers."""
    p0, p1, q0, q1 = cls[:4]
    return a[n0:n0 + m, p0:p1, q0:q1]


def _border_forward(x, w, stride, pad, y, b, act):
    """``im2col_forward`` (no keep) over the border classes of ``border_classes``."""
    kh, kw, c, co = w.shape
    _, ho, wo, _ = y.shape
    classes = border_classes(x.shape, kh, kw, stride, pad, ho, wo)[0]

    def part(lo, hi):
        xs = x[lo:hi]
        tile = None
        for cls in classes:
            i0, i1, j0, j1 = cls[4:]
            pix = (cls[1] - cls[0]) * (cls[3] - cls[2])
            wm = np.ascontiguousarray(w[i0:i1, j0:j1]).reshape(-1, co)
            out = None
            blocks = class_blocks(xs, cls, kh, kw, *stride, pad) if len(wm) else \
                [(0, hi - lo, None)]
            region = (cls[1] - cls[0], cls[3] - cls[2], co)
            for n0, m, col in blocks:
                if out is None or len(out) < m * pix:
                    out = np.empty((m * pix, co), dtype=y.dtype)
                o = out[:m * pix]
                if col is None:
                    o.fill(0)                 # the window lies in the padding: bias only
                else:
                    np.dot(col, wm, out=o)
                tile = _epilogue(o, b, act, tile)
                _region(y, lo + n0, m, cls)[...] = o.reshape((m,) + region)

    run_parts(part, x.shape[0], 2.0 * y.size * kh * kw * c)


def _border_weight_grad(x, dy, w_shape, stride, pad):
    """``im2col_weight_grad`` (nothing kept) over the border classes: each class adds
    ``col.T @ dy`` of its pixels into the kernel taps it reads."""
    kh, kw, c, co = w_shape
    _, ho, wo, _ = dy.shape
    classes = border_classes(x.shape, kh, kw, stride, pad, ho, wo)[0]

    def part(lo, hi):
        dw = np.zeros((kh, kw, c, co), dtype=x.dtype)
        xs = x[lo:hi]
        for cls in classes:
            i0, i1, j0, j1 = cls[4:]
            if i1 == i0 or j1 == j0:
                continue                      # windows in the padding: no tap to update
            acc = tmp = None
            for n0, m, col in class_blocks(xs, cls, kh, kw, *stride, pad):
                g = np.ascontiguousarray(_region(dy, lo + n0, m, cls)).reshape(len(col), co)
                if acc is None:
                    acc = np.dot(col.T, g)
                    tmp = np.empty_like(acc)
                else:
                    np.dot(col.T, g, out=tmp)
                    acc += tmp
            dw[i0:i1, j0:j1] += acc.reshape(i1 - i0, j1 - j0, c, co)
        return dw

    parts = run_parts(part, x.shape[0], 2.0 * dy.size * kh * kw * c)
    dw = parts[0]
    for other in parts[1:]:
        dw += other
    return dw


def im2col_forward(x, w, stride, pad, y, b, act, keep=False):
    """``y = act(conv(x, w) + b)`` into ``y`` ``(N, Ho, Wo, C_out)``, batch parts on the kernel
    threads (bias and activation: ``activation.epilogue``). With ``keep``, returns the im2col
    blocks ``[(rows, col), ...]`` over the whole batch for ``im2col_weight_grad``; else None."""
    n, _, _, c = x.shape
    kh, kw, _, co = w.shape
    _, ho, wo, _ = y.shape
    if not keep and use_border_classes(x.shape, w.shape, stride, pad, ho, wo):
        _border_forward(x, w, stride, pad, y, b, act)
        return None
    wm = kernel_matrix(w)
    y2 = y.reshape(-1, co)
    per_img = ho * wo

    def part(lo, hi):
        tile = None
        base = lo * per_img
        kept = [] if keep else None
        for rows, col in col_blocks(x[lo:hi], pad, kh, kw, *stride, ho, wo, fresh=keep):
            out = y2[base + rows.start:base + rows.stop]
            np.dot(col, wm, out=out)
            tile = _epilogue(out, b, act, tile)
            if keep:
                kept.append((slice(base + rows.start, base + rows.stop), col))
        return kept

    parts = run_parts(part, n, 2.0 * y.size * kh * kw * c)
    return [blk for p in parts for blk in p] if keep else None


def im2col_weight_grad(x, dy, w_shape, stride, pad, kept=None):
    """``dw`` of ``w_shape``: the sum over blocks of ``col.T @ dy_rows`` (partial sums per batch
    part, added in part order); from the forward pass's blocks when ``kept`` holds them."""
    kh, kw, c, co = w_shape
    _, ho, wo, _ = dy.shape
    if kept is None and use_border_classes(x.shape, w_shape, stride, pad, ho, wo):
        return _border_weight_grad(x, dy, w_shape, stride, pad)
    dy2 = dy.reshape(-1, co)
    per_img = ho * wo

    def part(lo, hi):
        dw = np.zeros((kh * kw * c, co), dtype=x.dtype)
        tmp = np.empty_like(dw)
        base = lo * per_img
        blocks = kept if kept is not None else (
            (slice(base + r.start, base + r.stop), col)
            for r, col in col_blocks(x[lo:hi], pad, kh, kw, *stride, ho, wo))
        for rows, col in blocks:
            np.dot(col.T, dy2[rows], out=tmp)
            dw += tmp
        return dw

    if kept is not None:
        parts = [part(0, x.shape[0])]
    else:
        parts = run_parts(part, x.shape[0], 2.0 * dy.size * kh * kw * c)
    dw = parts[0]
    for other in parts[1:]:
        dw += other
    if planar(c) and c > 1:
        return np.ascontiguousarray(dw.reshape(c, kh, kw, co).transpose(1, 2, 0, 3))
    return dw.reshape(w_shape)
