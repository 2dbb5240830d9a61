"""Softmax and log-softmax along the last axis of ``(rows, K)``, and the reducers and label
check that the row losses of ``loss`` share. A row's max and sum are tree reductions in shared
memory (max-subtracted: no overflow for large logits). Short rows (K <= ``SHORT_ROW``) take the
row-group forward: a group of threads per row, several rows per block, the row read from global
memory once into shared memory; longer ones one block per row, three passes over the row.
"""
from __future__ import annotations

import functools
import math

import numpy as np
from numba import types

from ._launch import (NB_FLOAT, arr, cdiv, check_rank, contig, empty, float_dtype,
                      kernel_factory, KernelSpec, Plans, Prepared, dtname)
from ._runtime import numba_cuda as cuda

#: Threads per block (one block per long row); a power of two. Tests shrink it for the simulator.
SOFTMAX_BLOCK = 128
MAX_GRID_X = 2**31 - 1
#: Rows of at most ``SHORT_ROW`` columns take the row-group kernels (here and in ``loss``): a
#: group of ``group_size(block)`` threads per row, the block's rows side by side.
SHORT_ROW = 256
ROW_GROUP = 32


def group_size(block: int) -> int:
    """Threads per row of a row-group kernel of ``block`` threads: ``ROW_GROUP``, and at most
    half the block (so that a block holds 2 rows at least)."""
    return min(ROW_GROUP, block // 2)


def row_variants(block: int, groups: bool = True) -> list:
    """The launchers' variants of a kernel of ``block`` threads: in each dtype, and with
    ``groups`` its row-group ones too (``group_size(block)`` threads a row, ``SHORT_ROW``)."""
    one = [{"dtype": d, "block": block} for d in ("float32", "float64")]
    return one + ([dict(v, group=group_size(block), kmax=SHORT_ROW) for v in one] if groups
                  else [])


def row_spec(factory, dt, block: int, k: int):
    """``(spec, rows a block)`` of ``factory``'s kernel of ``block`` threads for rows of ``k``
    columns: the row-group kernel when k <= ``SHORT_ROW``, else one row a block at a time."""
    g = group_size(block) if k <= SHORT_ROW else 0
    return factory(dtname(dt), block, g, SHORT_ROW if g else 0), block // g if g else 1


@functools.lru_cache(maxsize=None)
def _reducers(dtype: str, width: int):
    """``(tree_max, tree_sum)``: device functions ``f(red, t, v)`` reducing one value per thread
    over the ``width`` consecutive threads of t's group (``t // width``; all of the block when
    ``width`` is the block size), the result to each of them. ``red`` is a shared array of one
    entry per thread; every thread of the block must call (they hold ``syncthreads``)."""
    if width & (width - 1):
        raise ValueError(f"softmax: block and group sizes must be powers of two, got {width}")

    @cuda.jit(device=True, inline="always")
    def tree_max(red, t, v):
        lane = t % width
        red[t] = v
        cuda.syncthreads()  # every thread's value is in `red` before the tree reads it
        step = width // 2
        while step > 0:
            if lane < step and red[t + step] > red[t]:
                red[t] = red[t + step]
            cuda.syncthreads()  # this tree level is complete before the next one reads it
            step //= 2
        r = red[t - lane]
        cuda.syncthreads()  # everyone has read its group's result before `red` is reused
        return r

    @cuda.jit(device=True, inline="always")
    def tree_sum(red, t, v):
        lane = t % width
        red[t] = v
        cuda.syncthreads()  # every thread's value is in `red` before the tree reads it
        step = width // 2
        while step > 0:
            if lane < step:
                red[t] += red[t + step]
            cuda.syncthreads()  # this tree level is complete before the next one reads it
            step //= 2
        r = red[t - lane]
        cuda.syncthreads()  # everyone has read its group's result before `red` is reused
        return r

    return tree_max, tree_sum


@kernel_factory(lambda: row_variants(SOFTMAX_BLOCK))
def softmax_fwd_kernel(dtype, block, group=0, kmax=0):
    """``group`` threads a row (0: the block, one row a block); ``kmax`` > 0: rows of at most
    ``kmax`` columns, kept in shared memory (read from global memory once)."""
    dt = NB_FLOAT[np.dtype(dtype)]
    width = group or block
    per = block // width                     # rows a block
    cells = per * kmax if kmax else 1        # the block's rows in shared memory, if kept
    tree_max, tree_sum = _reducers(dtype, width)

    def softmax_fwd_k(x, y, log):
        """Row blockIdx.x * per + t // width of x (rows, K): y = softmax(x[r]) (log=0) or
        log_softmax (log=1), the row's threads striding along it (coalesced). With kmax, x is
        read once, into the thread's own cells of ``row`` (the max pass), which then hold
        exp(x - m) for softmax (the sum pass); else three passes over x. One write per output;
        rows past the end (in the last block) read and write nothing."""
        red = cuda.shared.array(block, dt)
        row = cuda.shared.array(cells, dt)
        t = cuda.threadIdx.x
        lane = t % width
        at = (t // width) * kmax            # row[at + j]: column j of this thread's row
        r = cuda.blockIdx.x * per + t // width
        live = r < x.shape[0]
        k = x.shape[1] if live else 0
        m = dt(-math.inf)
        for j in range(lane, k, width):
            v = x[r, j]
            if kmax:
                row[at + j] = v
            if v > m:
                m = v
        m = tree_max(red, t, m)
        s = dt(0)
        for j in range(lane, k, width):
            e = dt(math.exp((row[at + j] if kmax else x[r, j]) - m))
            s += e
            if kmax and log == 0:
                row[at + j] = e
        s = tree_sum(red, t, s)
        if log != 0 and live:
            s = m + dt(math.log(s))             # log-softmax subtracts the log-sum-exp
        for j in range(lane, k, width):
            if log != 0:
                y[r, j] = (row[at + j] if kmax else x[r, j]) - s
            else:
                y[r, j] = (row[at + j] if kmax else dt(math.exp(x[r, j] - m))) / s

    a2 = arr(dtype, 2)
    name = f"{dtype},{block},g{group},k{kmax}" if group else f"{dtype},{block}"
    return KernelSpec(f"softmax_fwd[{name}]", softmax_fwd_k, (a2, a2, types.int64))


@kernel_factory(lambda: row_variants(SOFTMAX_BLOCK, groups=False))
def softmax_bwd_kernel(dtype, block):
    dt = NB_FLOAT[np.dtype(dtype)]
    _, block_sum = _reducers(dtype, block)

    def softmax_bwd_k(dy, y, dx, log):
        """Row r = blockIdx.x: softmax (log=0) dx = y * (dy - sum(dy * y));
        log-softmax (log=1) dx = dy - exp(y) * sum(dy). All (rows, K)."""
        red = cuda.shared.array(block, dt)
        r = cuda.blockIdx.x
        t = cuda.threadIdx.x
        k = dy.shape[1]
        s = dt(0)
        for j in range(t, k, block):
            s += dy[r, j] if log != 0 else dy[r, j] * y[r, j]
        s = block_sum(red, t, s)
        for j in range(t, k, block):
            if log != 0:
                dx[r, j] = dy[r, j] - dt(math.exp(y[r, j])) * s
            else:
                dx[r, j] = y[r, j] * (dy[r, j] - s)

    a2 = arr(dtype, 2)
    return KernelSpec(f"softmax_bwd[{dtype},{block}]", softmax_bwd_k, (a2, a2, a2, types.int64))


# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------

def _rows(op, x, name="x"):
    dt = float_dtype(op, x)
    x = contig(x, dt)
    check_rank(op, name, x, 2, "(rows, K)")
    return x, dt


def _row_plan(spec, rows, *scalars, per=1):
    """A launch of one block per ``per`` rows; its arrays first, then ``scalars``."""
    blocks = cdiv(rows, per)
    if blocks > MAX_GRID_X:  # pragma: no cover - 2**31 rows
        raise ValueError(f"{spec.name}: {rows} rows exceed the grid limit {MAX_GRID_X}")
    arrays = sum(isinstance(t, types.Array) for t in spec.argtypes)
    return Prepared(spec, (blocks,), (SOFTMAX_BLOCK,), (None,) * arrays + scalars)


_PLANS = {op: Plans(op) for op in ("softmax_forward", "log_softmax_forward", "softmax_backward",
                                   "log_softmax_backward")}


def _softmax(op, x, log):
    plans = _PLANS[op]
    key = plans.key((x,), None)
    plan = plans.get(key)
    if plan is None:
        x, dt = _rows(op, x)
        spec, per = row_spec(softmax_fwd_kernel, dt, SOFTMAX_BLOCK, x.shape[1])
        plan = plans.put(key, _row_plan(spec, x.shape[0], log, per=per), (x,), None)
    y = empty(x.shape, x.dtype)
    plan(x, y)
    return y


def _softmax_bwd(op, dy, y, log):
    plans = _PLANS[op]
    key = plans.key((dy, y), None)
    plan = plans.get(key)
    if plan is None:
        dy, dt = _rows(op, dy, "dy")
        y = contig(y, dt)
        if y.shape != dy.shape:
            raise ValueError(f"{op}: dy {tuple(dy.shape)} and y {tuple(y.shape)} must match")
        plan = plans.put(key, _row_plan(softmax_bwd_kernel(dtname(dt), SOFTMAX_BLOCK),
                                        dy.shape[0], log), (dy, y), None)
    dx = empty(dy.shape, dy.dtype)
    plan(dy, y, dx)
    return dx


def softmax_forward(x):
    """Softmax of each row of ``x`` (rows, K)."""
    return _softmax("softmax_forward", x, 0)


def log_softmax_forward(x):
    """Log-softmax of each row of ``x`` (rows, K)."""
    return _softmax("log_softmax_forward", x, 1)


def softmax_backward(dy, y):
    """``dx = y * (dy - sum(dy * y))`` per row, from the softmax output ``y``."""
    return _softmax_bwd("softmax_backward", dy, y, 0)


def log_softmax_backward(dy, y):
    """``dx = dy - exp(y) * sum(dy)`` per row, from the log-softmax output ``y``."""
    return _softmax_bwd("log_softmax_backward", dy, y, 1)


def _labels(op, labels, rows):
    lab = contig(labels)
    if lab.dtype.kind not in "iu":
        raise TypeError(f"{op}: labels must be integers, got dtype {lab.dtype}")
    if lab.shape != (rows,):
        raise ValueError(f"{op}: labels must have shape ({rows},), got {tuple(lab.shape)}")
    return contig(lab, np.int64)
