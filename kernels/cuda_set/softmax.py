"""Softmax and log-softmax along the last axis of ``(rows, K)``, and the fused softmax +
cross-entropy for integer labels. One block per row; the row's max and sum are block-level tree
reductions in shared memory (max-subtracted: no overflow for large logits).
"""
from __future__ import annotations

import functools
import math

import numpy as np
from numba import types

from ._launch import (NB_FLOAT, arr, check_rank, contig, empty, float_dtype,
                      kernel_factory, KernelSpec, Plans, Prepared, dtname)
from ._runtime import numba_cuda as cuda
from .vector import stream_grid

#: Threads per block (one block per row); a power of two. Tests shrink it for the simulator.
SOFTMAX_BLOCK = 128
#: Threads per block of the elementwise cross-entropy backward, and its blocks per SM (at 8,
#: 32 registers, it spills).
XENT_BWD_BLOCK = 256
XENT_BWD_PER_SM = 6
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


@kernel_factory(_variants)
def xent_fwd_kernel(dtype, block):
    dt = NB_FLOAT[np.dtype(dtype)]
    _, _, row_max_sum = _block_reducers(dtype, block)

    def xent_fwd_k(z, labels, loss, p):
        """Row r = blockIdx.x of logits z (rows, K), labels (rows,) int64: p = softmax(z[r]),
        loss[r] = logsumexp(z[r]) - z[r, label], NaN for a label outside [0, K)."""
        red = cuda.shared.array(block, dt)
        r = cuda.blockIdx.x
        t = cuda.threadIdx.x
        k = z.shape[1]
        m, s = row_max_sum(red, z, r, t)
        for j in range(t, k, block):
            p[r, j] = dt(math.exp(z[r, j] - m)) / s
        if t == 0:
            lab = labels[r]
            if lab >= 0 and lab < k:
                loss[r] = m + dt(math.log(s)) - z[r, lab]
            else:
                loss[r] = dt(math.nan)

    a2 = arr(dtype, 2)
    return KernelSpec(f"xent_fwd[{dtype},{block}]", xent_fwd_k,
                      (a2, arr(np.int64, 1), arr(dtype, 1), a2))


def _bwd_variants():
    return [{"dtype": d} for d in ("float32", "float64")]


@kernel_factory(_bwd_variants)
def xent_bwd_kernel(dtype):
    dt = NB_FLOAT[np.dtype(dtype)]

    def xent_bwd_k(p, labels, g, dz):
        """dz[r, j] = (p[r, j] - [j == labels[r]]) * g[r]; p, dz (rows, K) viewed flat, one
        thread per element."""
        for i in range(cuda.grid(1), dz.size, cuda.gridsize(1)):
            k = dz.shape[1]
            r = i // k
            j = i % k
            v = p[r, j]
            if labels[r] == j:
                v -= dt(1)
            dz[r, j] = v * g[r]

    a2 = arr(dtype, 2)
    return KernelSpec(f"xent_bwd[{dtype}]", xent_bwd_k, (a2, arr(np.int64, 1), arr(dtype, 1), a2),
                      (XENT_BWD_BLOCK, XENT_BWD_PER_SM))


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
                                   "log_softmax_backward", "softmax_xent_forward",
                                   "softmax_xent_backward")}


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


def softmax_xent_forward(z, labels):
    """``(loss (rows,), p (rows, K))``: fused softmax + cross-entropy of integer labels."""
    op = "softmax_xent_forward"
    plans = _PLANS[op]
    key = plans.key((z, labels), None)
    plan = plans.get(key)
    if plan is None:
        z, dt = _rows(op, z, "z")
        labels = _labels(op, labels, z.shape[0])
        plan = plans.put(key, _row_plan(xent_fwd_kernel(dtname(dt), SOFTMAX_BLOCK), z.shape[0]),
                         (z, labels), None)
    loss = empty(z.shape[:1], z.dtype)
    p = empty(z.shape, z.dtype)
    plan(z, labels, loss, p)
    return loss, p


def softmax_xent_backward(p, labels, g):
    """``dz = (p - onehot(labels)) * g[:, None]``."""
    op = "softmax_xent_backward"
    plans = _PLANS[op]
    key = plans.key((p, labels, g), None)
    plan = plans.get(key)
    if plan is None:
        p, dt = _rows(op, p, "p")
        labels = _labels(op, labels, p.shape[0])
        g = contig(g, dt).reshape(-1)
        if g.shape != (p.shape[0],):
            raise ValueError(f"{op}: g must have shape ({p.shape[0]},), got {tuple(g.shape)}")
        grid = stream_grid(p.size, XENT_BWD_BLOCK, XENT_BWD_PER_SM)
        plan = plans.put(key, Prepared(xent_bwd_kernel(dtname(dt)), grid, (XENT_BWD_BLOCK,),
                                       (None,) * 4), (p, labels, g), None)
    dz = empty(p.shape, p.dtype)
    plan(p, labels, g, dz)
    return dz
