"""Max and average pooling on NHWC images, vectorised over whole blocks of images.

Window ``(p, q)`` covers input rows ``p*sh - top + i`` and columns ``q*sw - left + j`` for
``0 <= i < ph``, ``0 <= j < pw``; cells outside the image are padding, which never wins a max
and is not counted in a mean (Keras ``same``). Max pooling keeps the first maximum in row-major
window order; a window whose real cells are all -inf picks its first real cell; a NaN in a
window makes its maximum NaN and its index the window's first real cell.

Every op runs over blocks of a few images (on the kernel threads), so that its temporaries stay
small and in cache; only the outputs are full size.
"""
from __future__ import annotations

import numpy as np

from .._geometry import padded_window_2d
from ._parallel import run_parts
from ._util import check_array, fail, offset_view, pad_hw

from .tuning import TUNING as T

__all__ = ["max_pool_forward", "max_pool_backward", "avg_pool_forward", "avg_pool_backward"]


def _geometry(op, x_shape, pool, stride, pad):
    _, h, w, _ = x_shape
    ph, pw = pool
    pt, pb, pl, pr = pad
    if max(pt, pb) >= ph or max(pl, pr) >= pw:
        raise ValueError(f"{op}: padding (top, bottom, left, right) expected each side smaller "
                         f"than the window {(ph, pw)}, got {tuple(pad)}")
    return padded_window_2d(op, h, w, ph, pw, *stride, pad)


def _over_blocks(x_shape, itemsize, work, fn):
    """``fn(n0, n1)`` over blocks of images, the blocks split over the kernel threads."""
    n, h, w, c = x_shape
    nb = max(1, T.pool_block_bytes // (h * w * c * itemsize))

    def part(lo, hi):
        for n0 in range(lo, hi, nb):
            fn(n0, min(n0 + nb, hi))

    run_parts(part, n, work)


def _first_cells(size, k, s, before, out):
    """Per output position along one axis: first real input cell of its window and real count."""
    start = np.arange(out) * s - before
    first = np.maximum(start, 0)
    return first, np.minimum(start + k, size) - first


def _taps(a, axis, i, s, out):
    """The view of ``a`` along ``axis`` (1: rows, 2: columns) that window offset ``i`` reads at
    stride ``s`` for ``out`` output positions."""
    return a[(slice(None),) * axis + (slice(i, i + (out - 1) * s + 1, s),)]


def _window_max(xp, ph, pw, sh, sw, ho, wo, y, w):
    """Window maxima of the padded block ``xp`` ``(k, Hp, Wp, C)`` into ``y``; returns per window
    the offset ``i * w + j`` (``w``: the unpadded width) of its first maximum in row-major
    order, in the smallest unsigned type that holds ``(ph - 1) * w + pw`` (a window with a NaN
    gets its last offset, which the caller replaces).

    Rows first, over whole image rows (``Wp * C`` contiguous floats per inner loop, where a
    strided view of output columns would loop over runs of ``C``): per output row ``p`` and
    input column, the maximum ``m`` of the ``ph`` rows it reads and the first row ``i`` holding
    it. Then the columns, over the flat array of those rows, so that the ``pw`` column offsets
    are shifted contiguous slices (computed for every input column, then the output columns
    picked out once): the window maximum ``M``, and the offset as the least ``i_j * w + j``
    over the columns ``j`` whose ``m`` equals ``M`` -- the first maximum in row-major order,
    since among the cells equal to the maximum it takes the smallest row, then column."""
    k, _, wp, c = xp.shape
    last = (ph - 1) * w + pw - 1                      # the largest offset
    bt = np.uint8 if last < 255 else np.uint16 if last < 65535 else np.uint32
    none = bt(np.iinfo(bt).max)                       # a column whose maximum is not M
    rows = xp.reshape(k, -1, wp * c)
    views = [_taps(rows, 1, i, sh, ho) for i in range(ph)]                 # (k, ho, Wp*C)
    if ph == 1:
        colmax = views[0]
        first = np.zeros(colmax.shape, dtype=bt)
    else:
        colmax = np.maximum(views[0], views[1])
        for v in views[2:]:
            np.maximum(colmax, v, out=colmax)
        later = np.not_equal(views[0], colmax)        # no maximum in the rows so far
        first = later.astype(bt)
        if ph > 2:
            ne = np.empty(later.shape, dtype=bool)
            for v in views[1:-1]:
                np.not_equal(v, colmax, out=ne)
                later &= ne
                first += later
        first *= bt(w)
    a, f = colmax.reshape(-1), first.reshape(-1)
    n = a.size - (pw - 1) * c                         # every column with all pw columns after it
    big = np.empty(a.size, dtype=a.dtype)             # full length, to reshape to (k, ho, Wp, C)
    m = big[:n]
    if pw == 1:
        m[...] = a
        code = f
    else:
        np.maximum(a[:n], a[c:c + n], out=m)
        for j in range(2, pw):
            np.maximum(m, a[j * c:j * c + n], out=m)
        code = np.empty(a.size, dtype=bt)
        ne = np.empty(n, dtype=bool)
        off, mask = np.empty(n, dtype=bt), np.empty(n, dtype=bt)
        for j in range(pw):
            np.not_equal(a[j * c:j * c + n], m, out=ne)
            np.multiply(ne, none, out=mask)           # all ones where column j holds no maximum
            if j == 0:
                np.bitwise_or(f[:n], mask, out=code[:n])
                continue
            np.add(f[j * c:j * c + n], bt(j), out=off)
            off |= mask
            np.minimum(code[:n], off, out=code[:n])
        np.minimum(code[:n], bt(last), out=code[:n])  # a NaN window matches no column
    cols = slice(0, (wo - 1) * sw + 1, sw)
    np.copyto(y, big.reshape(k, ho, wp, c)[:, :, cols])
    return code.reshape(k, ho, wp, c)[:, :, cols]


def max_pool_forward(x, pool, stride, pad):
    """``(y, idx)`` for x ``(N, H, W, C)``: y the window maxima ``(N, Ho, Wo, C)``; idx int32, the
    flat index ``h * W + w`` of each winning input cell in its ``(n, :, :, c)`` plane."""
    op = "max_pool_forward"
    check_array(op, "x", x, 4, "(N, H, W, C)")
    ho, wo = _geometry(op, x.shape, pool, stride, pad)
    n, h, w, c = x.shape
    ph, pw = pool
    sh, sw = stride
    pt, _, pl, _ = pad
    y = np.empty((n, ho, wo, c), dtype=x.dtype)
    idx = np.empty((n, ho, wo, c), dtype=np.int32)
    base = ((np.arange(ho) * sh - pt)[:, None] * w + (np.arange(wo) * sw - pl)[None, :])
    base = np.repeat(base.astype(np.int32), c).reshape(ho, wo, c)    # contiguous, as idx's images
    fh, _ = _first_cells(h, ph, sh, pt, ho)
    fw, _ = _first_cells(w, pw, sw, pl, wo)
    first = (fh[:, None] * w + fw[None, :]).astype(np.int32)[:, :, None]

    def block(n0, n1):
        xp = pad_hw(x[n0:n1], pad, -np.inf)
        yb, ib = y[n0:n1], idx[n0:n1]
        np.copyto(ib, _window_max(xp, ph, pw, sh, sw, ho, wo, yb, w))
        ib += base
        # a window whose maximum is -inf may have kept a padding cell, and one with a NaN has no
        # first maximum: both take their first real cell
        real = np.greater(yb, -np.inf)
        if not real.all():
            np.copyto(ib, np.broadcast_to(first, ib.shape), where=~real)

    _over_blocks(x.shape, x.itemsize, y.size * ph * pw * 4.0, block)
    return y, idx


def max_pool_backward(dy, idx, x_shape, pool, stride, pad):
    """``dx`` of shape ``x_shape``: each ``dy`` element added to the input cell ``idx`` names
    (windows may overlap, so one cell may collect several), in row-major window order. The
    geometry is not needed here (the contract passes it for the cuda set's gather)."""
    op = "max_pool_backward"
    check_array(op, "dy", dy, 4, "(N, Ho, Wo, C)")
    n, h, w, c = (int(s) for s in x_shape)
    if idx.shape != dy.shape or dy.shape[0] != n or dy.shape[3] != c:
        fail(op, "idx and dy of one shape (N, Ho, Wo, C) matching x_shape",
             f"idx {dy.shape}, N={n}, C={c}", f"idx {idx.shape}, dy {dy.shape}")
    dx = np.zeros((n, h, w, c), dtype=dy.dtype)
    chan = np.arange(c, dtype=np.intp)

    def block(n0, n1):
        # flat position of each winner in the block of dx viewed as (k*H*W*C,): (n*H*W + idx)*C + c
        flat = idx[n0:n1].astype(np.intp)
        flat += (np.arange(n1 - n0, dtype=np.intp) * (h * w))[:, None, None, None]
        flat *= c
        flat += chan
        np.add.at(dx[n0:n1].reshape(-1), flat.reshape(-1), dy[n0:n1].reshape(-1))

    _over_blocks((n, h, w, c), dy.itemsize, dy.size * 8.0, block)
    return dx


def _inv_counts(x_shape, pool, stride, pad, ho, wo, dtype):
    """``1 / count`` of real cells per window: a scalar without padding, else ``(Ho, Wo, 1)``."""
    _, h, w, _ = x_shape
    if not any(pad):
        return dtype.type(1.0 / (pool[0] * pool[1]))
    _, ch = _first_cells(h, pool[0], stride[0], pad[0], ho)
    _, cw = _first_cells(w, pool[1], stride[1], pad[2], wo)
    return (1.0 / (ch[:, None] * cw[None, :])).astype(dtype)[:, :, None]


def _tiling(x_shape, pool, stride, pad) -> bool:
    """Whether the windows tile the image exactly (stride == window, no padding, nothing left)."""
    _, h, w, c = x_shape
    return (tuple(pool) == tuple(stride) and not any(pad) and h % pool[0] == 0
            and w % pool[1] == 0 and c <= T.gemm_pool_max_c)


_SPREAD = {}


def _spread(c, pw, scale, dtype):
    """``(C, pw*C)``: ``[I I ... I] * scale``, one identity block per window column (cached,
    read-only)."""
    key = (c, pw, scale, dtype.str)
    e = _SPREAD.get(key)
    if e is None:
        e = np.tile(np.eye(c, dtype=dtype) * dtype.type(scale), (1, pw))
        e.flags.writeable = False
        _SPREAD[key] = e
    return e


def _avg_tiling_forward(x, pool):
    """Tiling windows: the window rows summed over whole image rows (contiguous), then the
    columns by one GEMM with ``[I ... I].T / (ph*pw)``."""
    n, h, w, c = x.shape
    ph, pw = pool
    ho, wo = h // ph, w // pw
    xr = x.reshape(n * ho, ph, w * c)
    rows = np.add(xr[:, 0], xr[:, 1]) if ph > 1 else xr[:, 0].copy()
    for i in range(2, ph):
        rows += xr[:, i]
    e = _spread(c, pw, 1.0 / (ph * pw), x.dtype)
    return np.dot(rows.reshape(-1, pw * c), e.T).reshape(n, ho, wo, c)


def _avg_tiling_backward(dy, x_shape, pool):
    """Tiling windows: ``dy / (ph*pw)`` spread over a window's columns by one GEMM with
    ``[I ... I] / (ph*pw)`` (whole image rows), then copied to each of its rows."""
    n, h, w, c = x_shape
    ph, pw = pool
    ho = h // ph
    row = np.dot(dy.reshape(-1, c), _spread(c, pw, 1.0 / (ph * pw), dy.dtype))
    dx = np.empty((n * ho, ph, w * c), dtype=dy.dtype)
    np.copyto(dx, row.reshape(n * ho, 1, w * c))
    return dx.reshape(x_shape)


def avg_pool_forward(x, pool, stride, pad):
    """``y`` ``(N, Ho, Wo, C)``: the mean of the real (non-padding) cells of each window.

    The window rows are summed first (whole image rows: long contiguous runs), then the
    columns of that ``(N, Ho, W, C)`` sum, then each window is scaled by ``1 / count``."""
    op = "avg_pool_forward"
    check_array(op, "x", x, 4, "(N, H, W, C)")
    ho, wo = _geometry(op, x.shape, pool, stride, pad)
    ph, pw = pool
    sh, sw = stride
    if _tiling(x.shape, pool, stride, pad):
        return _avg_tiling_forward(np.ascontiguousarray(x), pool)
    y = np.empty((x.shape[0], ho, wo, x.shape[3]), dtype=x.dtype)
    inv = _inv_counts(x.shape, pool, stride, pad, ho, wo, y.dtype)

    def block(n0, n1):
        xp = pad_hw(x[n0:n1], pad, 0.0)
        rows = _taps(xp, 1, 0, sh, ho)
        if ph > 1:
            rows = rows + _taps(xp, 1, 1, sh, ho)
            for i in range(2, ph):
                rows += _taps(xp, 1, i, sh, ho)
        yb = y[n0:n1]
        if pw > 1:
            np.add(_taps(rows, 2, 0, sw, wo), _taps(rows, 2, 1, sw, wo), out=yb)
        else:
            np.copyto(yb, _taps(rows, 2, 0, sw, wo))
        for j in range(2, pw):
            yb += _taps(rows, 2, j, sw, wo)
        yb *= inv

    _over_blocks(x.shape, x.itemsize, y.size * (ph + pw) * 2.0, block)
    return y


def avg_pool_backward(dy, x_shape, pool, stride, pad):
    """``dx`` of shape ``x_shape``: each ``dy / count`` spread over the real cells of its window,
    one strided add (or copy, where the windows tile the image) per window offset."""
    op = "avg_pool_backward"
    check_array(op, "dy", dy, 4, "(N, Ho, Wo, C)")
    x_shape = tuple(int(s) for s in x_shape)
    ho, wo = _geometry(op, x_shape, pool, stride, pad)
    n, h, w, c = x_shape
    if dy.shape != (n, ho, wo, c):
        fail(op, "dy shape", (n, ho, wo, c), tuple(dy.shape))
    ph, pw = pool
    sh, sw = stride
    if _tiling(x_shape, pool, stride, pad):
        return _avg_tiling_backward(np.ascontiguousarray(dy), x_shape, pool)
    pt, pb, pl, pr = pad
    hp, wp = h + pt + pb, w + pl + pr
    crop = any(pad)
    tiles = sh == ph and sw == pw and ho * sh == hp and wo * sw == wp   # each cell in 1 window
    inv = _inv_counts(x_shape, pool, stride, pad, ho, wo, dy.dtype)
    dx = np.empty(x_shape, dtype=dy.dtype)

    def block(n0, n1):
        g = dy[n0:n1] * inv
        dxp = np.empty((n1 - n0, hp, wp, c), dtype=dy.dtype) if crop else dx[n0:n1]
        if not tiles:
            dxp.fill(0)
        for t in range(ph * pw):
            view = offset_view(dxp, t // pw, t % pw, sh, sw, ho, wo)
            if tiles:
                np.copyto(view, g)
            else:
                np.add(view, g, out=view)
        if crop:
            dx[n0:n1] = dxp[:, pt:pt + h, pl:pl + w]

    _over_blocks(x_shape, dy.itemsize, dy.size * ph * pw * 2.0, block)
    return dx
