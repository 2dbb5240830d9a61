"""Column sums of a 2-D array on the device: the bias gradient, and the final reduction of the
split-K partial weight gradients. Deterministic: fixed summation order, no atomics.
"""
from __future__ import annotations

import functools

import numpy as np
from numba import types

from ._launch import (NB_FLOAT, arr, cdiv, contig, empty, float_dtype, kernel_factory,
                      KernelSpec, Plans, Prepared, sm_count, xp, dtname)
from .activation import act_code, act_device_fns
from ._runtime import numba_cuda as cuda
from .vector import FULL, HALF

#: Block shape (columns, row lanes) of the column-sum kernels; row lanes a power of two.
COLSUM_BLOCK = (32, 8)
#: The fewest rows a split of the first pass takes. The rows are split over grid.y into as many
#: splits as one wave of blocks holds (``_splits``), and the partial sums summed by a second pass;
#: under ``8 * COLSUM_ROWS`` rows one pass sums them (a second launch costs more than it saves:
#: LeNet-5's split-K partials of 100 and 523 rows stay one launch).
COLSUM_ROWS = 256
MAX_GRID_Y = 65535


@functools.lru_cache(maxsize=None)
def _store_column_sum(RB):
    """A device function for a block of (columns, RB row lanes): each lane's partial sum
    ``acc`` of its column is added to the others' in a tree in the shared ``red`` (RB, CB),
    and lane 0 writes the column's total to ``out[s, c]``."""

    @cuda.jit(device=True, inline="always")
    def store(red, acc, out, s, c, ncols):
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        red[ty, tx] = acc
        cuda.syncthreads()  # every lane's partial sum is in `red` before the tree reads it
        step = RB // 2
        while step > 0:
            if ty < step:
                red[ty, tx] += red[ty + step, tx]
            cuda.syncthreads()  # this level of the tree is complete before the next reads it
            step //= 2
        if ty == 0 and c < ncols:
            out[s, c] = red[0, tx]

    return store


def _variants():
    return [{"dtype": d, "block": COLSUM_BLOCK} for d in ("float32", "float64")]


@kernel_factory(_variants)
def colsum_kernel(dtype, block):
    dt = NB_FLOAT[np.dtype(dtype)]
    CB, RB = block
    if RB & (RB - 1):
        raise ValueError(f"colsum: row lanes must be a power of two, got {RB}")
    store = _store_column_sum(RB)

    def colsum_k(a, out):
        """out[s, c] = sum of a[r, c] over the rows r of split s (splits = out.shape[0], each
        ceil(R / splits) consecutive rows). a (R, C) and out (S, C) C-contiguous.
        Block (CB, RB): threadIdx.x picks the column (coalesced reads), threadIdx.y a row lane;
        grid (ceil(C / CB), S). One global write per output, by row lane 0."""
        red = cuda.shared.array((RB, CB), dt)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        c = cuda.blockIdx.x * CB + tx
        s = cuda.blockIdx.y
        nrows = a.shape[0]
        ncols = a.shape[1]
        per = (nrows + out.shape[0] - 1) // out.shape[0]
        r_end = min(nrows, (s + 1) * per)
        acc = dt(0)
        if c < ncols:
            for r in range(s * per + ty, r_end, RB):
                acc += a[r, c]
        store(red, acc, out, s, c, ncols)

    a2 = arr(dtype, 2)
    return KernelSpec(f"colsum[{dtype},{CB}x{RB}]", colsum_k, (a2, a2), (CB * RB, FULL))


@kernel_factory(_variants)
def act_colsum_kernel(dtype, block):
    dt = NB_FLOAT[np.dtype(dtype)]
    _, act_bwd = act_device_fns(dtype)
    CB, RB = block
    store = _store_column_sum(RB)

    def act_colsum_k(dy, y, g, out, code):
        """g = act'(y) * dy elementwise, and out[s, c] = the sum of g[r, c] over split s's rows,
        as ``colsum_k`` does (dy, y, g (R, C); out (S, C); same block and grid): the gradient
        of a dense layer's activation and its bias gradient in one pass."""
        red = cuda.shared.array((RB, CB), dt)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        c = cuda.blockIdx.x * CB + tx
        s = cuda.blockIdx.y
        nrows = dy.shape[0]
        ncols = dy.shape[1]
        per = (nrows + out.shape[0] - 1) // out.shape[0]
        r_end = min(nrows, (s + 1) * per)
        acc = dt(0)
        if c < ncols:
            for r in range(s * per + ty, r_end, RB):
                v = act_bwd(dy[r, c], y[r, c], code)
                g[r, c] = v
                acc += v
        store(red, acc, out, s, c, ncols)

    a2 = arr(dtype, 2)
    return KernelSpec(f"act_colsum[{dtype},{CB}x{RB}]", act_colsum_k,
                      (a2, a2, a2, a2, types.int32), (CB * RB, HALF))


_ACT_BIAS, _COLSUM = Plans("act_backward_bias"), Plans("column_sum")


def _splits(nrows, ncols, per_sm):
    """Splits of the first pass: at least ``COLSUM_ROWS`` rows each, and as many as one wave of
    blocks (``per_sm`` on every SM, the kernel's launch bounds) holds beside the column blocks."""
    if nrows < 8 * COLSUM_ROWS:
        return 1
    wave = sm_count() * per_sm // cdiv(ncols, COLSUM_BLOCK[0])
    return max(1, min(MAX_GRID_Y, cdiv(nrows, COLSUM_ROWS), wave))


def act_backward_bias(dy, y, act):
    """``(g, db)``: ``g = act_backward(dy, y, act)`` of a ``(rows, C)`` gradient and its column
    sums, in one launch (and a plain column sum of its partial sums when it split the rows): a
    dense layer's backward (capability ``fused_backward``)."""
    op = "act_backward_bias"
    key = _ACT_BIAS.key((dy, y), act)
    hit = _ACT_BIAS.get(key)
    if hit is None:
        code = act_code(op, act)
        dt = float_dtype(op, dy)
        dy, y = contig(dy, dt), contig(y, dt)
        if dy.ndim != 2 or tuple(y.shape) != tuple(dy.shape):
            raise ValueError(f"{op}: dy and y must be 2-D (rows, C) of one shape, got dy "
                             f"{tuple(dy.shape)} and y {tuple(y.shape)}")
        nrows, ncols = dy.shape
        splits = _splits(nrows, ncols, HALF)
        cb, rb = COLSUM_BLOCK
        plan = Prepared(act_colsum_kernel(dtname(dt), COLSUM_BLOCK), (cdiv(ncols, cb), splits),
                        (cb, rb), (None,) * 4 + (code,))
        hit = _ACT_BIAS.put(key, (plan if nrows else None, (splits, ncols)), (dy, y), act)
    plan, part_shape = hit
    g = empty(dy.shape, dy.dtype)
    if plan is None:     # no rows
        return g, xp.zeros(part_shape[1:], dtype=dy.dtype)
    part = empty(part_shape, dy.dtype)
    plan(dy, y, g, part)
    return g, (part if part_shape[0] == 1 else _colsum_pass(part, 1)).reshape(part_shape[1:])


def _colsum_pass(a2, splits):
    key = _COLSUM.key((a2,), splits)
    plan = _COLSUM.get(key)
    if plan is None:
        cb, rb = COLSUM_BLOCK
        plan = _COLSUM.put(key, Prepared(colsum_kernel(dtname(a2.dtype), COLSUM_BLOCK),
                                         (cdiv(a2.shape[1], cb), splits), (cb, rb), (None, None)),
                           (a2,), splits)
    out = empty((splits, a2.shape[1]), a2.dtype)
    plan(a2, out)
    return out


def column_sum(a2):
    """``a2.sum(axis=0)`` of a C-contiguous 2-D device array, as a 1-D array."""
    nrows, ncols = a2.shape
    if nrows == 0:
        return xp.zeros((ncols,), dtype=a2.dtype)
    splits = _splits(nrows, ncols, FULL)
    if splits > 1:
        a2 = _colsum_pass(a2, splits)
    return _colsum_pass(a2, 1).reshape(ncols)
