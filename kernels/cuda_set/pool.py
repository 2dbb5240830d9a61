"""Max and average pooling, forward and backward, NHWC, Keras ``same``/``valid`` semantics.

Padded cells never win a max and are not counted in a mean. Windows may overlap (AlexNet's 3x3
stride 2): max-pool backward scatters with atomic adds; average-pool backward gathers, each dx
cell summing over the windows that cover it (no atomics).
"""
from __future__ import annotations

import math

import numpy as np
from numba import types

from .._geometry import padded_window_2d
from ._launch import (NB_FLOAT, arr, check_rank, contig, empty, float_dtype, float_variants,
                      kernel_factory, KernelSpec, Plans, Prepared, xp, dtname)
from ._runtime import numba_cuda as cuda
from .vector import HALF, stream_grid

#: Threads per block of the grid-stride pooling kernels (over outputs; over inputs in the
#: average-pool backward). Each is compiled for 4 blocks per SM (64 registers), the max-pool
#: forward and average-pool backward for 3 (at 64 registers they spill).
POOL_BLOCK = 256

i64 = types.int64


@cuda.jit(device=True, inline="always")
def nhwc_index(i, a):
    """``(n, h, w, c)`` of the flat (C-order) index ``i`` of the 4-D array ``a``: the output (or
    input) element a thread of a grid-stride loop works on, channels fastest."""
    c = i % a.shape[3]
    t = i // a.shape[3]
    w = t % a.shape[2]
    t = t // a.shape[2]
    return t // a.shape[1], t % a.shape[1], w, c


@kernel_factory(float_variants)
def max_pool_fwd_kernel(dtype):
    dt = NB_FLOAT[np.dtype(dtype)]

    def max_pool_fwd_k(x, y, idx, ph, pw, sh, sw, pt, pl):
        """y[n, oh, ow, c] = max over the window's real cells of x; idx the flat h * W + w of
        the first maximal cell (a window with a NaN: y NaN, idx its first real cell). x (N, H,
        W, C), y and idx (N, Ho, Wo, C); a grid-stride loop over outputs, consecutive threads
        on consecutive channels (coalesced)."""
        for i in range(cuda.grid(1), y.size, cuda.gridsize(1)):
            n, oh, ow, c = nhwc_index(i, y)
            h0 = oh * sh - pt
            w0 = ow * sw - pl
            best = dt(-math.inf)
            best_at = -1
            first_at = max(h0, 0) * x.shape[2] + max(w0, 0)
            for a in range(max(h0, 0), min(h0 + ph, x.shape[1])):
                for b in range(max(w0, 0), min(w0 + pw, x.shape[2])):
                    v = x[n, a, b, c]
                    if v != v:                  # NaN: no later v > best holds any more
                        best = v
                        best_at = first_at
                    elif best_at < 0 or v > best:
                        best = v
                        best_at = a * x.shape[2] + b
            y[n, oh, ow, c] = best
            idx[n, oh, ow, c] = best_at

    a4 = arr(dtype, 4)
    return KernelSpec(f"max_pool_fwd[{dtype}]", max_pool_fwd_k,
                      (a4, a4, arr(np.int32, 4)) + (i64,) * 6, (POOL_BLOCK, 3))


@kernel_factory(float_variants)
def max_pool_bwd_kernel(dtype):
    def max_pool_bwd_k(dy, idx, dx):
        """dx[n, j // W, j % W, c] += dy[n, oh, ow, c] with j = idx[n, oh, ow, c], for every
        output; dx (N, H, W, C) zeroed by the launcher. One thread per output; atomic adds,
        since overlapping windows may share a winner."""
        for i in range(cuda.grid(1), dy.size, cuda.gridsize(1)):
            n, oh, ow, c = nhwc_index(i, dy)
            j = idx[n, oh, ow, c]
            if j >= 0:
                cuda.atomic.add(dx, (n, j // dx.shape[2], j % dx.shape[2], c), dy[n, oh, ow, c])

    a4 = arr(dtype, 4)
    return KernelSpec(f"max_pool_bwd[{dtype}]", max_pool_bwd_k, (a4, arr(np.int32, 4), a4),
                      (POOL_BLOCK, HALF))


@kernel_factory(float_variants)
def avg_pool_fwd_kernel(dtype):
    dt = NB_FLOAT[np.dtype(dtype)]

    def avg_pool_fwd_k(x, y, ph, pw, sh, sw, pt, pl):
        """y[n, oh, ow, c] = mean of x over the window's real cells (padding not counted).
        x (N, H, W, C), y (N, Ho, Wo, C); a grid-stride loop over outputs."""
        for i in range(cuda.grid(1), y.size, cuda.gridsize(1)):
            n, oh, ow, c = nhwc_index(i, y)
            h0 = oh * sh - pt
            w0 = ow * sw - pl
            h_lo, h_hi = max(h0, 0), min(h0 + ph, x.shape[1])
            w_lo, w_hi = max(w0, 0), min(w0 + pw, x.shape[2])
            s = dt(0)
            for a in range(h_lo, h_hi):
                for b in range(w_lo, w_hi):
                    s += x[n, a, b, c]
            y[n, oh, ow, c] = s / dt((h_hi - h_lo) * (w_hi - w_lo))

    a4 = arr(dtype, 4)
    return KernelSpec(f"avg_pool_fwd[{dtype}]", avg_pool_fwd_k, (a4, a4) + (i64,) * 6,
                      (POOL_BLOCK, HALF))


@kernel_factory(float_variants)
def avg_pool_bwd_kernel(dtype):
    dt = NB_FLOAT[np.dtype(dtype)]

    def avg_pool_bwd_k(dy, dx, ph, pw, sh, sw, pt, pl):
        """dx[n, h, w, c] = sum over the windows (oh, ow) covering (h, w) of dy / count(oh, ow).
        dy (N, Ho, Wo, C), dx (N, H, W, C); a grid-stride loop over dx, a gather: no atomics,
        one global write each."""
        for i in range(cuda.grid(1), dx.size, cuda.gridsize(1)):
            n, h, w, c = nhwc_index(i, dx)
            # windows oh with oh*sh - pt <= h <= oh*sh - pt + ph - 1
            oh_lo = max(0, (h + pt - ph + sh) // sh)
            oh_hi = min(dy.shape[1] - 1, (h + pt) // sh)
            ow_lo = max(0, (w + pl - pw + sw) // sw)
            ow_hi = min(dy.shape[2] - 1, (w + pl) // sw)
            s = dt(0)
            for oh in range(oh_lo, oh_hi + 1):
                h0 = oh * sh - pt
                nh = min(h0 + ph, dx.shape[1]) - max(h0, 0)
                for ow in range(ow_lo, ow_hi + 1):
                    w0 = ow * sw - pl
                    nw = min(w0 + pw, dx.shape[2]) - max(w0, 0)
                    s += dy[n, oh, ow, c] / dt(nh * nw)
            dx[n, h, w, c] = s

    a4 = arr(dtype, 4)
    return KernelSpec(f"avg_pool_bwd[{dtype}]", avg_pool_bwd_k, (a4, a4) + (i64,) * 6,
                      (POOL_BLOCK, 3))


# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------

def _geometry(op, x_shape, pool, stride, pad):
    try:
        ph, pw = (int(v) for v in pool)
        sh, sw = (int(v) for v in stride)
        pt, pb, pl, pr = (int(v) for v in pad)
    except (TypeError, ValueError):
        raise TypeError(f"{op}: pool and stride must be pairs and pad a 4-tuple, got "
                        f"pool={pool!r}, stride={stride!r}, pad={pad!r}") from None
    if min(ph, pw, sh, sw) < 1 or min(pt, pb, pl, pr) < 0:
        raise ValueError(f"{op}: expected pool, stride >= 1 and pad >= 0, got pool={pool!r}, "
                         f"stride={stride!r}, pad={pad!r}")
    _, h, w, _ = x_shape
    ho, wo = padded_window_2d(op, h, w, ph, pw, sh, sw, (pt, pb, pl, pr))
    return ho, wo, (ph, pw, sh, sw, pt, pl)


def _plan(spec, n, arrays, geo=()):
    """A grid-stride launch over ``n`` elements (one wave of the blocks per SM of its launch
    bounds at most); ``arrays`` array arguments, then ``geo``."""
    return Prepared(spec, stream_grid(n, POOL_BLOCK, spec.launch_bounds[1]), (POOL_BLOCK,),
                    (None,) * arrays + tuple(geo))


_PLANS = {op: Plans(op) for op in ("max_pool_forward", "max_pool_backward", "avg_pool_forward",
                                   "avg_pool_backward")}


def _forward(op, factory, arrays, x, pool, stride, pad):
    """``(plan, output shape, x)`` of a pool's forward: the launch prepared once per input
    shape and geometry (``x`` converted on the first call of a shape only)."""
    plans, params = _PLANS[op], (pool, stride, pad)
    key = plans.key((x,), params)
    hit = plans.get(key)
    if hit is None:
        dt = float_dtype(op, x)
        x = contig(x, dt)
        check_rank(op, "x", x, 4, "(N, H, W, C)")
        ho, wo, geo = _geometry(op, x.shape, pool, stride, pad)
        n, _, _, c = x.shape
        hit = plans.put(key, (_plan(factory(dtname(dt)), n * ho * wo * c, arrays, geo),
                              (n, ho, wo, c)), (x,), params)
    return hit[0], hit[1], x


def max_pool_forward(x, pool, stride, pad):
    """``(y, idx)``: the window maxima and the flat ``h * W + w`` of each winner (int32)."""
    plan, y_shape, x = _forward("max_pool_forward", max_pool_fwd_kernel, 3, x, pool, stride, pad)
    y = empty(y_shape, x.dtype)
    idx = empty(y_shape, np.int32)
    plan(x, y, idx)
    return y, idx


def max_pool_backward(dy, idx, x_shape):
    """dx of shape ``x_shape``: each dy routed to its window's winner (accumulating)."""
    op = "max_pool_backward"
    plans = _PLANS[op]
    key = plans.key((dy, idx), x_shape)
    hit = plans.get(key)
    if hit is None:
        dt = float_dtype(op, dy)
        dy = contig(dy, dt)
        idx = contig(idx, np.int32)
        check_rank(op, "dy", dy, 4, "(N, Ho, Wo, C)")
        x_shape = tuple(int(v) for v in x_shape)
        if dy.shape != idx.shape or len(x_shape) != 4 or x_shape[0] != dy.shape[0] \
                or x_shape[3] != dy.shape[3]:
            raise ValueError(f"{op}: dy {tuple(dy.shape)}, idx {tuple(idx.shape)} and x_shape "
                             f"{x_shape} do not match (expected equal dy/idx shapes with x's N "
                             "and C)")
        hit = plans.put(key, (_plan(max_pool_bwd_kernel(dtname(dt)), dy.size, 3), x_shape),
                        (dy, idx), x_shape)
    plan, x_shape = hit
    dx = xp.zeros(x_shape, dtype=dy.dtype)
    plan(dy, idx, dx)
    return dx


def avg_pool_forward(x, pool, stride, pad):
    """The mean over each window's real (unpadded) cells."""
    plan, y_shape, x = _forward("avg_pool_forward", avg_pool_fwd_kernel, 2, x, pool, stride, pad)
    y = empty(y_shape, x.dtype)
    plan(x, y)
    return y


def avg_pool_backward(dy, x_shape, pool, stride, pad):
    """dx of shape ``x_shape``: each dy spread evenly over its window's real cells."""
    op = "avg_pool_backward"
    plans, params = _PLANS[op], (x_shape, pool, stride, pad)
    key = plans.key((dy,), params)
    hit = plans.get(key)
    if hit is None:
        dt = float_dtype(op, dy)
        dy = contig(dy, dt)
        check_rank(op, "dy", dy, 4, "(N, Ho, Wo, C)")
        x_shape = tuple(int(v) for v in x_shape)
        if len(x_shape) != 4:
            raise ValueError(f"{op}: x_shape must be (N, H, W, C), got {x_shape}")
        ho, wo, geo = _geometry(op, x_shape, pool, stride, pad)
        if tuple(dy.shape) != (x_shape[0], ho, wo, x_shape[3]):
            raise ValueError(f"{op}: dy has shape {tuple(dy.shape)}, expected "
                             f"{(x_shape[0], ho, wo, x_shape[3])} for x_shape {x_shape}")
        size = x_shape[0] * x_shape[1] * x_shape[2] * x_shape[3]
        hit = plans.put(key, (_plan(avg_pool_bwd_kernel(dtname(dt)), size, 2, geo), x_shape),
                        (dy,), params)
    plan, x_shape = hit
    dx = empty(x_shape, dy.dtype)
    plan(dy, dx)
    return dx
