"""The losses of ``LOSSES`` (see ``gpucnn.kernels``): one launch for the forward, one for the
backward.

A forward block sums its share (a grid-stride loop over the elements, or its rows: one row at a
time with the threads striding along it, or, for rows of at most ``softmax.SHORT_ROW``, several
at once, a group of threads a row reading it once into shared memory) with the shared trees of
``softmax._reducers``, writes the sum to ``partial[block]`` and takes a ticket from ``counter``
(a fresh zero per call); the block with the last ticket adds the partials in their order and
writes the mean. No float atomics: the value depends on the grid alone. A backward is a
grid-stride loop, one write per element, from the per-row ``stats`` its forward wrote. Clip
bounds ``[1e-7, 1 - 1e-7]`` in the dtype; the gradient passes inside them and on them.
"""
from __future__ import annotations

import functools
import math

import numpy as np
from numba import types

from .. import LOSS_STATS, LOSSES
from . import _arrays
from ._launch import (NB_FLOAT, arr, cdiv, check_rank, contig, dtname, dummy, empty,
                      float_dtype, float_variants, kernel_factory, KernelSpec, Plans, Prepared, xp)
from ._runtime import numba_cuda as cuda
from .activation import SIGMOID, act_device_fns
from .softmax import _labels, _reducers, row_spec, row_variants
from .vector import HALF, stream_grid

#: Threads per block of the forward kernels (a power of two) and of the backward ones; the
#: grid-stride ones launch at most one wave of ``HALF`` blocks per SM (their launch bounds).
LOSS_BLOCK = 256
LOSS_BWD_BLOCK = 256

# codes: the elementwise losses, then the row losses
MSE, MAE, BCE, BCE_LOGITS = range(4)
CCE, CCE_LOGITS, SPARSE, SPARSE_LOGITS = range(4)
CODE = {name: i % 4 for i, name in enumerate(LOSSES)}


def _bounds(dtype):
    t = np.dtype(dtype).type
    return float(t(1e-7)), float(t(1.0 - 1e-7))


@functools.lru_cache(maxsize=None)
def _finisher(dtype: str, block: int):
    """``finish(red, ticket, t, part, partial, counter, out, count)``: thread 0 stores the block's
    sum ``part`` and takes a ticket; the block holding the last one writes ``out[0]`` = the sum of
    ``partial`` over ``count``."""
    dt = NB_FLOAT[np.dtype(dtype)]
    _, block_sum = _reducers(dtype, block)

    @cuda.jit(device=True, inline="always")
    def finish(red, ticket, t, part, partial, counter, out, count):
        blocks = cuda.gridDim.x
        if t == 0:
            partial[cuda.blockIdx.x] = part
            cuda.threadfence()  # the partial is visible to every block before the ticket
            ticket[0] = cuda.atomic.add(counter, 0, 1)
        cuda.syncthreads()  # every thread reads the ticket thread 0 took
        if ticket[0] == blocks - 1:       # the last block: every partial is written
            acc = dt(0)
            for i in range(t, blocks, block):
                acc += partial[i]
            total = block_sum(red, t, acc)
            if t == 0:
                out[0] = total / dt(count)

    return finish


@kernel_factory(lambda: row_variants(LOSS_BLOCK, groups=False))
def ew_fwd_kernel(dtype, block):
    dt = NB_FLOAT[np.dtype(dtype)]
    lo, hi = _bounds(dtype)
    _, block_sum = _reducers(dtype, block)
    finish = _finisher(dtype, block)

    def ew_fwd_k(p, t, partial, counter, out, code):
        """out[0] = the mean of loss(p[i], t[i]) over flat p, t: mse, mae, bce (p clipped) or
        bce from logits (max(z, 0) - z t + log(1 + exp(-|z|))). partial (grid,), counter (1,)."""
        red = cuda.shared.array(block, dt)
        ticket = cuda.shared.array(1, types.int32)
        acc = dt(0)
        for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
            x = p[i]
            y = t[i]
            if code == MSE:
                acc += (x - y) * (x - y)
            elif code == MAE:
                acc += abs(x - y)
            elif code == BCE:
                pc = min(max(x, dt(lo)), dt(hi))
                acc -= y * dt(math.log(pc)) + (dt(1) - y) * dt(math.log(dt(1) - pc))
            else:
                acc += max(x, dt(0)) - x * y + dt(math.log1p(math.exp(-abs(x))))
        tid = cuda.threadIdx.x
        finish(red, ticket, tid, block_sum(red, tid, acc), partial, counter, out, p.size)

    a = arr(dtype, 1)
    return KernelSpec(f"loss_ew_fwd[{dtype},{block}]", ew_fwd_k,
                      (a, a, a, arr(np.int32, 1), a, types.int32), (block, HALF))


@kernel_factory(lambda: row_variants(LOSS_BLOCK))
def rows_fwd_kernel(dtype, block, group=0, kmax=0):
    """``group`` threads a row (0: the block); ``kmax`` > 0: rows of at most ``kmax`` columns,
    kept in shared memory (read from global memory once)."""
    dt = NB_FLOAT[np.dtype(dtype)]
    lo, hi = _bounds(dtype)
    width = group or block
    per = block // width                     # rows a block at a time
    cells = per * kmax if kmax else 1        # the block's rows in shared memory, if kept
    tree_max, tree_sum = _reducers(dtype, width)
    _, block_sum = _reducers(dtype, block)
    finish = _finisher(dtype, block)

    def rows_fwd_k(p, t, labels, partial, counter, out, stats, code):
        """out[0] = the mean over the rows of p (rows, K) of its cross-entropy against t (rows,
        K) or labels (rows,) int64 (the other a dummy), and stats[r] as ``LOSS_STATS`` says.
        A block takes ``per`` rows side by side (rows b * per + t // width, then a grid
        stride), each row's threads striding along it (coalesced). With kmax, p is read from
        global memory once (the row's max or sum), into the thread's own cells of ``row``,
        which the other passes read; else each pass reads p. t and p[r, label] read once."""
        red = cuda.shared.array(block, dt)
        row = cuda.shared.array(cells, dt)
        ticket = cuda.shared.array(1, types.int32)
        tid = cuda.threadIdx.x
        lane = tid % width
        at = (tid // width) * kmax           # row[at + j]: column j of this thread's row
        logits = code == CCE_LOGITS or code == SPARSE_LOGITS
        acc = dt(0)                          # the row's threads' rows, in its lane 0
        for r in range(cuda.blockIdx.x * per + tid // width, p.shape[0] + tid // width,
                       cuda.gridDim.x * per):
            live = r < p.shape[0]            # the same trip count in every thread of a block
            k = p.shape[1] if live else 0
            lab = labels[r] if live and code >= SPARSE else 0
            a = dt(-math.inf) if logits else dt(0)
            for j in range(lane, k, width):
                x = p[r, j]
                if kmax:
                    row[at + j] = x
                if logits:
                    if x > a:
                        a = x
                else:
                    a += min(max(x, dt(lo)), dt(hi)) if code == SPARSE else x
            m = tree_max(red, tid, a) if logits else tree_sum(red, tid, a)
            inside = lab >= 0 and lab < p.shape[1]
            if code == SPARSE:           # m = sum(pc), b = pc[label]
                b = min(max(p[r, lab], dt(lo)), dt(hi)) if live and inside else dt(math.nan)
                v = dt(math.log(m)) - dt(math.log(b)) if live else dt(0)
            elif code == CCE:            # m = the row sum s, b = sum(dq * q)
                a = dt(0)
                d = dt(0)
                for j in range(lane, k, width):
                    q = (row[at + j] if kmax else p[r, j]) / m
                    qc = min(max(q, dt(lo)), dt(hi))
                    a -= t[r, j] * dt(math.log(qc))
                    if q >= dt(lo) and q <= dt(hi):
                        d += -t[r, j] / qc * q
                v = tree_sum(red, tid, a)
                b = tree_sum(red, tid, d)
            else:                        # m = the row max, s = sum(exp(z - m))
                s = dt(0)
                for j in range(lane, k, width):
                    s += dt(math.exp((row[at + j] if kmax else p[r, j]) - m))
                s = tree_sum(red, tid, s)
                if code == SPARSE_LOGITS:
                    b = s
                    v = dt(math.nan)
                    if live and inside:
                        v = dt(math.log(s)) - (p[r, lab] - m)
                else:
                    b = dt(math.log(s)) if live else dt(0)
                    a = dt(0)
                    ts = dt(0)
                    for j in range(lane, k, width):
                        a -= t[r, j] * (((row[at + j] if kmax else p[r, j]) - m) - b)
                        ts += t[r, j]
                    v = tree_sum(red, tid, a)
                    ts = tree_sum(red, tid, ts)
                    if live and lane == 0:
                        stats[r, 2] = ts
            if live and lane == 0:
                stats[r, 0] = m
                stats[r, 1] = b
                acc += v
        finish(red, ticket, tid, block_sum(red, tid, acc), partial, counter, out, p.shape[0])

    a1, a2 = arr(dtype, 1), arr(dtype, 2)
    name = f"{dtype},{block},g{group},k{kmax}" if group else f"{dtype},{block}"
    return KernelSpec(f"loss_rows_fwd[{name}]", rows_fwd_k,
                      (a2, a2, arr(np.int64, 1), a1, arr(np.int32, 1), a1, a2, types.int32))


@kernel_factory(float_variants)
def ew_bwd_kernel(dtype):
    dt = NB_FLOAT[np.dtype(dtype)]
    lo, hi = _bounds(dtype)
    act_fwd, _ = act_device_fns(dtype)

    def ew_bwd_k(p, t, g, dp, code, c):
        """dp[i] = g[0] c loss'(p[i], t[i]) over flat arrays (c = 2 / size for mse, else
        1 / size); a grid-stride loop."""
        scale = g[0] * c
        for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
            x = p[i]
            y = t[i]
            if code == MSE:
                v = scale * (x - y)
            elif code == MAE:
                v = scale if x > y else (-scale if x < y else dt(0))
            elif code == BCE:
                inside = x >= dt(lo) and x <= dt(hi)
                v = scale * ((x - y) / (x * (dt(1) - x))) if inside else dt(0)
            else:
                v = scale * (act_fwd(x, SIGMOID) - y)
            dp[i] = v

    a = arr(dtype, 1)
    return KernelSpec(f"loss_ew_bwd[{dtype}]", ew_bwd_k, (a, a, a, a, types.int32, dt),
                      (LOSS_BWD_BLOCK, HALF))


@kernel_factory(float_variants)
def rows_bwd_kernel(dtype):
    dt = NB_FLOAT[np.dtype(dtype)]
    lo, hi = _bounds(dtype)

    def rows_bwd_k(p, t, labels, stats, g, dp, code, c):
        """dp[r, j] = the gradient of g[0] times the mean cross-entropy (c = 1 / rows) from the
        forward's stats; p, t, dp (rows, K), labels (rows,) int64; a grid-stride loop over the
        elements."""
        scale = g[0] * c
        k = p.shape[1]
        for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
            r = i // k
            j = i - r * k
            x = p[r, j]
            if code == CCE:              # (dq - sum(dq * q)) / s, dq = -t / q through the clip
                s = stats[r, 0]
                q = x / s
                dq = -t[r, j] / q if q >= dt(lo) and q <= dt(hi) else dt(0)
                v = scale * (dq - stats[r, 1]) / s
            elif code == CCE_LOGITS:     # softmax(z) sum(t) - t
                v = scale * (dt(math.exp((x - stats[r, 0]) - stats[r, 1])) * stats[r, 2]
                             - t[r, j])
            elif code == SPARSE:         # 1 / sum(pc) - [j == label] / pc[label], clipped
                v = dt(0)
                if x >= dt(lo) and x <= dt(hi):
                    v = dt(1) / stats[r, 0]
                    if labels[r] == j:
                        v -= dt(1) / stats[r, 1]
                    v *= scale
            else:                        # softmax(z) - onehot(label)
                v = dt(math.exp(x - stats[r, 0])) / stats[r, 1] * scale
                if labels[r] == j:
                    v -= scale
            dp[r, j] = v

    a1, a2 = arr(dtype, 1), arr(dtype, 2)
    return KernelSpec(f"loss_rows_bwd[{dtype}]", rows_bwd_k,
                      (a2, a2, arr(np.int64, 1), a2, a1, a2, types.int32, dt),
                      (LOSS_BWD_BLOCK, HALF))


# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------

_FWD, _BWD = Plans("loss_forward"), Plans("loss_backward")


def _pair(loss, t, dt):
    """``(t, labels)`` of the kernels: the absent one a dummy."""
    if loss.startswith("sparse"):
        return dummy(dt, 2), t
    return t, dummy(np.int64, 1)


def _inputs(op, loss, t, p):
    """``(p, t, labels, dtype)`` checked and converted (the absent one of t, labels a dummy)."""
    if loss not in CODE:
        raise ValueError(f"{op}: loss must be one of {LOSSES}, got {loss!r}")
    dt = float_dtype(op, p)
    p = contig(p, dt)
    if loss in LOSS_STATS:
        check_rank(op, "p", p, 2, "(rows, K)")
        if loss.startswith("sparse"):
            return (p, *_pair(loss, _labels(op, t, p.shape[0]), dt), dt)
    t = contig(t, dt)
    if t.shape != p.shape:
        raise ValueError(f"{op}: t must have p's shape {tuple(p.shape)}, got {tuple(t.shape)}")
    return (p, *_pair(loss, t, dt), dt)


def loss_forward(loss, t, p):
    """``(value, stats)``: the mean loss as a 0-d array, and the row losses' stats."""
    op = "loss_forward"
    key = _FWD.key((p, t), loss)
    hit = _FWD.get(key)
    if hit is None:
        p, tt, lab, dt = _inputs(op, loss, t, p)
        rows = loss in LOSS_STATS
        if rows:
            spec, per = row_spec(rows_fwd_kernel, dt, LOSS_BLOCK, p.shape[1])
            grid = (min(cdiv(p.shape[0], per), _arrays.MAX_BLOCKS),)   # small_launches lowers it
        else:
            spec = ew_fwd_kernel(dtname(dt), LOSS_BLOCK)
            grid = stream_grid(p.size, LOSS_BLOCK, HALF)
        plan = Prepared(spec, grid, (LOSS_BLOCK,), (None,) * (7 if rows else 5) + (CODE[loss],))
        hit = _FWD.put(key, (plan, grid[0], LOSS_STATS.get(loss)),
                       (p, lab if loss.startswith("sparse") else tt), loss)
    else:
        tt, lab = _pair(loss, t, p.dtype)
    plan, blocks, width = hit
    out = empty((1,), p.dtype)
    if blocks == 0:                       # an empty batch: the mean of nothing
        out.fill(np.nan)
    partial, counter = empty((max(blocks, 1),), p.dtype), xp.zeros((1,), np.int32)
    if width is None:
        plan(p, tt, partial, counter, out)
        return out.reshape(()), None
    stats = empty((p.shape[0], width), p.dtype)
    plan(p, tt, lab, partial, counter, out, stats)
    return out.reshape(()), stats


def loss_backward(loss, g, t, p, stats):
    """``dp``, the gradient of ``g * loss_forward(loss, t, p)[0]``."""
    op = "loss_backward"
    g1 = g.reshape(1) if type(g) is xp.ndarray else g
    rows = loss in LOSS_STATS
    key = _BWD.key((p, t, stats, g1), loss)
    plan = _BWD.get(key)
    if plan is None:
        p, tt, lab, dt = _inputs(op, loss, t, p)
        g1 = contig(g, dt).reshape(1)
        n = p.shape[0] if rows else p.size
        if rows:
            stats = contig(stats, dt)
            if tuple(stats.shape) != (n, LOSS_STATS[loss]):
                raise ValueError(f"{op}: stats must have shape {(n, LOSS_STATS[loss])} for "
                                 f"{loss}, got {tuple(stats.shape)}")
        spec = (rows_bwd_kernel if rows else ew_bwd_kernel)(dtname(dt))
        c = (2.0 if loss == "mse" else 1.0) / max(n, 1)
        plan = _BWD.put(key, Prepared(spec, stream_grid(p.size, LOSS_BWD_BLOCK, HALF),
                                      (LOSS_BWD_BLOCK,),
                                      (None,) * (6 if rows else 4) + (CODE[loss], c)),
                        (p, lab if loss.startswith("sparse") else tt, stats, g1), loss)
    else:
        tt, lab = _pair(loss, t, p.dtype)
    dp = empty(p.shape, p.dtype)
    if rows:
        plan(p, tt, lab, stats, g1, dp)
    else:
        plan(p, tt, g1, dp)
    return dp
