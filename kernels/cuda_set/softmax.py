"""Softmax and log-softmax along the last axis of ``(rows, K)``, and the block reducers and label
check that the row losses of ``loss`` share. One block per row; the row's max and sum are
block-level tree reductions in shared memory (max-subtracted: no overflow for large logits).
"""
from __future__ import annotations

import functools
import math

import numpy as np
from numba import types

from ._launch import (NB_FLOAT, arr, check_rank, contig, empty, float_dtype,
                      kernel_factory, KernelSpec, Plans, Prepared, dtname)
from ._runtime import numba_cuda as cuda

#: Threads per block (one block per row); a power of two. Tests shrink it for the simulator.
SOFTMAX_BLOCK = 128
MAX_GRID_X = 2**31 - 1


def _variants():
    return [{"dtype": d, "block": SOFTMAX_BLOCK} for d in ("float32", "float64")]


@functools.lru_cache(maxsize=None)
def _block_reducers(dtype: str, block: int):
    """Device functions reducing one value per thread over the block (result to every thread),
    and the row maximum and exponential sum built on them that softmax and cross-entropy share."""
    dt = NB_FLOAT[np.dtype(dtype)]
    if block & (block - 1):
        raise ValueError(f"softmax: block size must be a power of two, got {block}")

    @cuda.jit(device=True, inline="always")
    def block_max(red, t, v):
        red[t] = v
        cuda.syncthreads()  # every thread's value is in `red` before the tree reads it
        step = block // 2
        while step > 0:
            if t < step and red[t + step] > red[t]:
                red[t] = red[t + step]
            cuda.syncthreads()  # this tree level is complete before the next one reads it
            step //= 2
        r = red[0]
        cuda.syncthreads()  # everyone has read red[0] before `red` is reused
        return r

    @cuda.jit(device=True, inline="always")
    def block_sum(red, t, v):
        red[t] = v
        cuda.syncthreads()  # every thread's value is in `red` before the tree reads it
        step = block // 2
        while step > 0:
            if t < step:
                red[t] += red[t + step]
            cuda.syncthreads()  # this tree level is complete before the next one reads it
            step //= 2
        r = red[0]
        cuda.syncthreads()  # everyone has read red[0] before `red` is reused
        return r

    @cuda.jit(device=True, inline="always")
    def row_max_sum(red, x, r, t):
        """``(m, s)`` of row ``r`` of ``x``: its maximum and ``sum(exp(x[r] - m))``, the threads of
        the block striding over the row (coalesced); both results in every thread."""
        m = dt(-math.inf)
        for j in range(t, x.shape[1], block):
            if x[r, j] > m:
                m = x[r, j]
        m = block_max(red, t, m)
        s = dt(0)
        for j in range(t, x.shape[1], block):
            s += dt(math.exp(x[r, j] - m))
        return m, block_sum(red, t, s)

    return block_max, block_sum, row_max_sum


@kernel_factory(_variants)
def softmax_fwd_kernel(dtype, block):
    dt = NB_FLOAT[np.dtype(dtype)]
    _, _, row_max_sum = _block_reducers(dtype, block)

    def softmax_fwd_k(x, y, log):
        """Row r = blockIdx.x of x (rows, K): y = softmax(x[r]) (log=0) or log_softmax (log=1).
        Threads stride over the row (coalesced); three passes over x, one write per output."""
        red = cuda.shared.array(block, dt)
        r = cuda.blockIdx.x
        t = cuda.threadIdx.x
        k = x.shape[1]
        m, s = row_max_sum(red, x, r, t)
        if log != 0:
            lse = m + dt(math.log(s))
            for j in range(t, k, block):
                y[r, j] = x[r, j] - lse
        else:
            for j in range(t, k, block):
                y[r, j] = dt(math.exp(x[r, j] - m)) / s

    a2 = arr(dtype, 2)
    return KernelSpec(f"softmax_fwd[{dtype},{block}]", softmax_fwd_k, (a2, a2, types.int64))


@kernel_factory(_variants)
def softmax_bwd_kernel(dtype, block):
    dt = NB_FLOAT[np.dtype(dtype)]
    _, block_sum, _ = _block_reducers(dtype, block)

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


def _row_plan(spec, rows, *scalars):
    """A launch of one block per row; its arrays first, then ``scalars``."""
    if rows > MAX_GRID_X:  # pragma: no cover - 2**31 rows
        raise ValueError(f"{spec.name}: {rows} rows exceed the grid limit {MAX_GRID_X}")
    arrays = sum(isinstance(t, types.Array) for t in spec.argtypes)
    return Prepared(spec, (rows,), (SOFTMAX_BLOCK,), (None,) * arrays + scalars)


_PLANS = {op: Plans(op) for op in ("softmax_forward", "log_softmax_forward", "softmax_backward",
                                   "log_softmax_backward")}


def _softmax(op, x, log):
    plans = _PLANS[op]
    key = plans.key((x,), None)
    plan = plans.get(key)
    if plan is None:
        x, dt = _rows(op, x)
        plan = plans.put(key, _row_plan(softmax_fwd_kernel(dtname(dt), SOFTMAX_BLOCK),
                                        x.shape[0], log), (x,), None)
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
