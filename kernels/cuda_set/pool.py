"""Max and average pooling, forward and backward, NHWC, Keras ``same``/``valid`` semantics.

Padded cells never win a max and are not counted in a mean. Windows may overlap (AlexNet's 3x3
stride 2): both backwards gather, each dx cell summing over the windows that cover it (no
atomics, no memset); the max-pool's takes the dy of the windows its cell won.

Every pool kernel has a second compiled variant (``vec=True``, named ``...[dtype,v4]``) in
which a thread works on 4 neighbouring channels with 128-bit loads and stores
(``vector.load4``/``store4``; the max-pool's int32 idx is stored and loaded as 4 scalars). The
launcher picks it when C % 4 == 0 and the input's data starts on 16 bytes (the outputs are
fresh allocations, so they do); the scalar variant otherwise. Both do the same arithmetic per
element in the same order: their results are identical.
"""
from __future__ import annotations

import math

import numpy as np
from numba import types

from .._geometry import padded_window_2d
from ._launch import (NB_FLOAT, arr, check_rank, contig, empty, float_dtype,
                      kernel_factory, KernelSpec, Plans, Prepared, xp, dtname)
from ._runtime import numba_cuda as cuda
from .vector import HALF, load4, store4, stream_grid

#: Threads per block of the grid-stride pooling kernels (over outputs; over inputs in the
#: backwards).
POOL_BLOCK = 256
#: Blocks per SM each kernel is compiled for (its launch bounds): (scalar, float32 4-channel,
#: float64 4-channel). 4 (64 registers) but where that spills: the max-pool forward, the
#: average-pool backward and the max-pool backward's 4-channel variant take 3; the float64
#: 4-channel ones but the max-pool forward one fewer (3 avg forward; 2 backward, which spill at
#: 3, 85 registers).
PER_SM = {"max_pool_fwd": (3, 3, 3), "max_pool_bwd": (HALF, 3, 2),
          "avg_pool_fwd": (HALF, HALF, 3), "avg_pool_bwd": (3, 3, 2)}

i64 = types.int64


def _variants():
    return [{"dtype": d, "vec": v} for d in ("float32", "float64") for v in (False, True)]


def _name(base, dtype, vec):
    return f"{base}[{dtype},v4]" if vec else f"{base}[{dtype}]"


def _spec(base, dtype, vec, kern, kinds):
    """The KernelSpec of variant ``vec`` of pool kernel ``base`` (``kern``): its arrays of
    ``kinds`` ("f" the dtype, "i" int32; 4-D, or flat with ``vec``), then the int64 geometry
    (after the sizes with ``vec``), at ``PER_SM[base]`` blocks per SM."""
    arrays = tuple(arr(dtype if k == "f" else np.int32, 1 if vec else 4) for k in kinds)
    per_sm = PER_SM[base][(2 if dtype == "float64" else 1) if vec else 0]
    return KernelSpec(_name(base, dtype, vec), kern, arrays + (i64,) * (11 if vec else 6),
                      (POOL_BLOCK, per_sm))


@cuda.jit(device=True, inline="always")
def chunk_index(i, q, wo, ho):
    """``(n, oh, ow, c)`` of chunk ``i`` of 4 channels of an NHWC array with ``q`` chunks per
    pixel, ``wo`` columns and ``ho`` rows: ``c`` the chunk's first channel."""
    c = (i % q) * 4
    t = i // q
    ow = t % wo
    t = t // wo
    return t // ho, t % ho, ow, c


@cuda.jit(device=True, inline="always")
def nhwc_index(i, a):
    """``(n, h, w, c)`` of the flat (C-order) index ``i`` of the 4-D array ``a``: the output (or
    input) element a thread of a grid-stride loop works on, channels fastest."""
    c = i % a.shape[3]
    t = i // a.shape[3]
    w = t % a.shape[2]
    t = t // a.shape[2]
    return t // a.shape[1], t % a.shape[1], w, c


@cuda.jit(device=True, inline="always")
def window(o, s, p, k, n):
    """``(lo, hi)``: the real cells ``[lo, hi)`` along one axis (``n`` cells) of window ``o``
    (size ``k``, stride ``s``, padding ``p`` before)."""
    a0 = o * s - p
    return max(a0, 0), min(a0 + k, n)


@cuda.jit(device=True, inline="always")
def covering(a, s, p, k, n):
    """``(lo, hi)``: the windows ``[lo, hi)`` (of ``n``) covering cell ``a`` along one axis,
    those with o*s - p <= a <= o*s - p + k - 1."""
    return max(0, (a + p - k + s) // s), min(n - 1, (a + p) // s) + 1


@cuda.jit(device=True, inline="always")
def max_step(v, best, best_at, here, first_at):
    """The max-pool forward's update of one channel's ``(best, best_at)`` by the value ``v`` at
    the flat cell ``here`` (the scalar kernel's loop body)."""
    if v != v:
        return v, first_at
    if best_at < 0 or v > best:
        return v, here
    return best, best_at


@kernel_factory(_variants)
def max_pool_fwd_kernel(dtype, vec=False):
    dt = NB_FLOAT[np.dtype(dtype)]

    def max_pool_fwd_k(x, y, idx, ph, pw, sh, sw, pt, pl):
        """y[n, oh, ow, c] = max over the window's real cells of x; idx the flat h * W + w of
        the first maximal cell (a window with a NaN: y NaN, idx its first real cell). x (N, H,
        W, C), y and idx (N, Ho, Wo, C); a grid-stride loop over outputs, consecutive threads
        on consecutive channels (coalesced)."""
        for i in range(cuda.grid(1), y.size, cuda.gridsize(1)):
            n, oh, ow, c = nhwc_index(i, y)
            h_lo, h_hi = window(oh, sh, pt, ph, x.shape[1])
            w_lo, w_hi = window(ow, sw, pl, pw, x.shape[2])
            best = dt(-math.inf)
            best_at = -1
            first_at = h_lo * x.shape[2] + w_lo
            for a in range(h_lo, h_hi):
                for b in range(w_lo, w_hi):
                    v = x[n, a, b, c]
                    if v != v:                  # NaN: no later v > best holds any more
                        best = v
                        best_at = first_at
                    elif best_at < 0 or v > best:
                        best = v
                        best_at = a * x.shape[2] + b
            y[n, oh, ow, c] = best
            idx[n, oh, ow, c] = best_at

    def max_pool_fwd_v4_k(x, y, idx, hh, ww, cc, ho, wo, ph, pw, sh, sw, pt, pl):
        """``max_pool_fwd_k`` on 4 channels per thread: x, y and idx flat (x (N, hh, ww, cc),
        y and idx (N, ho, wo, cc), cc % 4 == 0, x and y 16-byte aligned); one 128-bit load per
        window cell, one 128-bit store of y, 4 stores of idx."""
        q = cc // 4
        for i in range(cuda.grid(1), y.size // 4, cuda.gridsize(1)):
            n, oh, ow, c = chunk_index(i, q, wo, ho)
            h_lo, h_hi = window(oh, sh, pt, ph, hh)
            w_lo, w_hi = window(ow, sw, pl, pw, ww)
            b0 = b1 = b2 = b3 = dt(-math.inf)
            a0 = a1 = a2 = a3 = -1
            first_at = h_lo * ww + w_lo
            for a in range(h_lo, h_hi):
                for b in range(w_lo, w_hi):
                    here = a * ww + b
                    v = load4(x, ((n * hh + a) * ww + b) * cc + c)
                    b0, a0 = max_step(v[0], b0, a0, here, first_at)
                    b1, a1 = max_step(v[1], b1, a1, here, first_at)
                    b2, a2 = max_step(v[2], b2, a2, here, first_at)
                    b3, a3 = max_step(v[3], b3, a3, here, first_at)
            o = 4 * i
            store4(y, o, b0, b1, b2, b3)
            idx[o] = a0
            idx[o + 1] = a1
            idx[o + 2] = a2
            idx[o + 3] = a3

    return _spec("max_pool_fwd", dtype, vec, max_pool_fwd_v4_k if vec else max_pool_fwd_k,
                 "ffi")


@kernel_factory(_variants)
def max_pool_bwd_kernel(dtype, vec=False):
    dt = NB_FLOAT[np.dtype(dtype)]

    def max_pool_bwd_k(dy, idx, dx, ph, pw, sh, sw, pt, pl):
        """dx[n, h, w, c] = sum of dy[n, oh, ow, c] over the windows (oh, ow) covering (h, w)
        whose winner idx[n, oh, ow, c] is h * W + w, in row-major window order. dy and idx (N,
        Ho, Wo, C), dx (N, H, W, C); a grid-stride loop over dx, a gather: no atomics, no
        memset, one global write each; dy read only where the cell won."""
        for i in range(cuda.grid(1), dx.size, cuda.gridsize(1)):
            n, h, w, c = nhwc_index(i, dx)
            here = h * dx.shape[2] + w
            oh_lo, oh_hi = covering(h, sh, pt, ph, dy.shape[1])
            s = dt(0)
            for oh in range(oh_lo, oh_hi):
                ow_lo, ow_hi = covering(w, sw, pl, pw, dy.shape[2])
                for ow in range(ow_lo, ow_hi):
                    if idx[n, oh, ow, c] == here:
                        s += dy[n, oh, ow, c]
            dx[n, h, w, c] = s

    def max_pool_bwd_v4_k(dy, idx, dx, hh, ww, cc, ho, wo, ph, pw, sh, sw, pt, pl):
        """``max_pool_bwd_k`` on 4 channels per thread: dy, idx (N, ho, wo, cc) and dx (N, hh,
        ww, cc) flat, cc % 4 == 0, dy and dx 16-byte aligned; per covering window 4 idx loads
        and, where one of the 4 cells won, a 128-bit load of dy; one 128-bit store."""
        q = cc // 4
        for i in range(cuda.grid(1), dx.size // 4, cuda.gridsize(1)):
            n, h, w, c = chunk_index(i, q, ww, hh)
            here = h * ww + w
            oh_lo, oh_hi = covering(h, sh, pt, ph, ho)
            s0 = s1 = s2 = s3 = dt(0)
            for oh in range(oh_lo, oh_hi):
                ow_lo, ow_hi = covering(w, sw, pl, pw, wo)
                for ow in range(ow_lo, ow_hi):
                    o = ((n * ho + oh) * wo + ow) * cc + c
                    k0 = idx[o] == here
                    k1 = idx[o + 1] == here
                    k2 = idx[o + 2] == here
                    k3 = idx[o + 3] == here
                    if k0 or k1 or k2 or k3:
                        g = load4(dy, o)
                        if k0:
                            s0 += g[0]
                        if k1:
                            s1 += g[1]
                        if k2:
                            s2 += g[2]
                        if k3:
                            s3 += g[3]
            store4(dx, 4 * i, s0, s1, s2, s3)

    return _spec("max_pool_bwd", dtype, vec, max_pool_bwd_v4_k if vec else max_pool_bwd_k,
                 "fif")


@kernel_factory(_variants)
def avg_pool_fwd_kernel(dtype, vec=False):
    dt = NB_FLOAT[np.dtype(dtype)]

    def avg_pool_fwd_k(x, y, ph, pw, sh, sw, pt, pl):
        """y[n, oh, ow, c] = mean of x over the window's real cells (padding not counted).
        x (N, H, W, C), y (N, Ho, Wo, C); a grid-stride loop over outputs."""
        for i in range(cuda.grid(1), y.size, cuda.gridsize(1)):
            n, oh, ow, c = nhwc_index(i, y)
            h_lo, h_hi = window(oh, sh, pt, ph, x.shape[1])
            w_lo, w_hi = window(ow, sw, pl, pw, x.shape[2])
            s = dt(0)
            for a in range(h_lo, h_hi):
                for b in range(w_lo, w_hi):
                    s += x[n, a, b, c]
            y[n, oh, ow, c] = s / dt((h_hi - h_lo) * (w_hi - w_lo))

    def avg_pool_fwd_v4_k(x, y, hh, ww, cc, ho, wo, ph, pw, sh, sw, pt, pl):
        """``avg_pool_fwd_k`` on 4 channels per thread, flat arrays as ``max_pool_fwd_v4_k``:
        one 128-bit load per window cell, one 128-bit store."""
        q = cc // 4
        for i in range(cuda.grid(1), y.size // 4, cuda.gridsize(1)):
            n, oh, ow, c = chunk_index(i, q, wo, ho)
            h_lo, h_hi = window(oh, sh, pt, ph, hh)
            w_lo, w_hi = window(ow, sw, pl, pw, ww)
            s0 = s1 = s2 = s3 = dt(0)
            for a in range(h_lo, h_hi):
                for b in range(w_lo, w_hi):
                    v = load4(x, ((n * hh + a) * ww + b) * cc + c)
                    s0 += v[0]
                    s1 += v[1]
                    s2 += v[2]
                    s3 += v[3]
            m = dt((h_hi - h_lo) * (w_hi - w_lo))
            store4(y, 4 * i, s0 / m, s1 / m, s2 / m, s3 / m)

    return _spec("avg_pool_fwd", dtype, vec, avg_pool_fwd_v4_k if vec else avg_pool_fwd_k,
                 "ff")


@kernel_factory(_variants)
def avg_pool_bwd_kernel(dtype, vec=False):
    dt = NB_FLOAT[np.dtype(dtype)]

    def avg_pool_bwd_k(dy, dx, ph, pw, sh, sw, pt, pl):
        """dx[n, h, w, c] = sum over the windows (oh, ow) covering (h, w) of dy / count(oh, ow).
        dy (N, Ho, Wo, C), dx (N, H, W, C); a grid-stride loop over dx, a gather: no atomics,
        one global write each."""
        for i in range(cuda.grid(1), dx.size, cuda.gridsize(1)):
            n, h, w, c = nhwc_index(i, dx)
            oh_lo, oh_hi = covering(h, sh, pt, ph, dy.shape[1])
            ow_lo, ow_hi = covering(w, sw, pl, pw, dy.shape[2])
            s = dt(0)
            for oh in range(oh_lo, oh_hi):
                h_lo, h_hi = window(oh, sh, pt, ph, dx.shape[1])
                for ow in range(ow_lo, ow_hi):
                    w_lo, w_hi = window(ow, sw, pl, pw, dx.shape[2])
                    s += dy[n, oh, ow, c] / dt((h_hi - h_lo) * (w_hi - w_lo))
            dx[n, h, w, c] = s

    def avg_pool_bwd_v4_k(dy, dx, hh, ww, cc, ho, wo, ph, pw, sh, sw, pt, pl):
        """``avg_pool_bwd_k`` on 4 channels per thread: dy (N, ho, wo, cc) and dx (N, hh, ww,
        cc) flat, cc % 4 == 0, both 16-byte aligned; a 128-bit load per covering window, one
        128-bit store."""
        q = cc // 4
        for i in range(cuda.grid(1), dx.size // 4, cuda.gridsize(1)):
            n, h, w, c = chunk_index(i, q, ww, hh)
            oh_lo, oh_hi = covering(h, sh, pt, ph, ho)
            ow_lo, ow_hi = covering(w, sw, pl, pw, wo)
            s0 = s1 = s2 = s3 = dt(0)
            for oh in range(oh_lo, oh_hi):
                h_lo, h_hi = window(oh, sh, pt, ph, hh)
                for ow in range(ow_lo, ow_hi):
                    w_lo, w_hi = window(ow, sw, pl, pw, ww)
                    m = dt((h_hi - h_lo) * (w_hi - w_lo))
                    g = load4(dy, ((n * ho + oh) * wo + ow) * cc + c)
                    s0 += g[0] / m
                    s1 += g[1] / m
                    s2 += g[2] / m
                    s3 += g[3] / m
            store4(dx, 4 * i, s0, s1, s2, s3)

    return _spec("avg_pool_bwd", dtype, vec, avg_pool_bwd_v4_k if vec else avg_pool_bwd_k,
                 "ff")


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


def _on16(a) -> bool:
    """Whether the data of ``a`` starts on 16 bytes (a view with an offset may not)."""
    ptr = a.__array_interface__["data"][0] if xp is np else a.data.ptr
    return ptr % 16 == 0


def _plans(factory, dt, n, c, arrays, dims, geo):
    """``(vector plan or None, scalar plan)`` of a pool kernel over ``n`` elements of ``c``
    channels: the vector variant (4 channels a thread, flat arrays, ``dims`` = (H, W, C, Ho,
    Wo)) exists when c % 4 == 0; the launch picks it when the input is 16-byte aligned."""
    name = dtname(dt)
    vec = _plan(factory(name, vec=True), n // 4, arrays, dims + geo) if c % 4 == 0 else None
    return vec, _plan(factory(name), n, arrays, geo)


def _pick(plans, a):
    """The plan for input ``a``: the vector one if there is one and ``a`` is 16-byte aligned."""
    vec, scalar = plans
    return vec if vec is not None and _on16(a) else scalar


_PLANS = {op: Plans(op) for op in ("max_pool_forward", "max_pool_backward", "avg_pool_forward",
                                   "avg_pool_backward")}


def _forward(op, factory, arrays, x, pool, stride, pad):
    """``(plan, output shape, x)`` of a pool's forward: the launches prepared once per input
    shape and geometry (``x`` converted on the first call of a shape only), the plan picked by
    x's alignment on every call."""
    plans, params = _PLANS[op], (pool, stride, pad)
    key = plans.key((x,), params)
    hit = plans.get(key)
    if hit is None:
        dt = float_dtype(op, x)
        x = contig(x, dt)
        check_rank(op, "x", x, 4, "(N, H, W, C)")
        ho, wo, geo = _geometry(op, x.shape, pool, stride, pad)
        n, h, w, c = x.shape
        hit = plans.put(key, (_plans(factory, dt, n * ho * wo * c, c, arrays, (h, w, c, ho, wo),
                                     geo), (n, ho, wo, c)), (x,), params)
    return _pick(hit[0], x), hit[1], x


def _backward(op, factory, dy, idx, x_shape, pool, stride, pad):
    """``(plans, x_shape, dy, idx)`` of a pool's backward over dx (``idx`` None for the
    average), prepared once per input shape and geometry as ``_forward``'s."""
    plans, params = _PLANS[op], (x_shape, pool, stride, pad)
    ins = (dy,) if idx is None else (dy, idx)
    key = plans.key(ins, params)
    hit = plans.get(key)
    if hit is None:
        dt = float_dtype(op, dy)
        dy = contig(dy, dt)
        idx = None if idx is None else contig(idx, np.int32)
        check_rank(op, "dy", dy, 4, "(N, Ho, Wo, C)")
        x_shape = tuple(int(v) for v in x_shape)
        if len(x_shape) != 4:
            raise ValueError(f"{op}: x_shape must be (N, H, W, C), got {x_shape}")
        ho, wo, geo = _geometry(op, x_shape, pool, stride, pad)
        n, h, w, c = x_shape
        if tuple(dy.shape) != (n, ho, wo, c) or idx is not None and idx.shape != dy.shape:
            raise ValueError(f"{op}: dy {tuple(dy.shape)} (and idx, if given) must have shape "
                             f"{(n, ho, wo, c)} for x_shape {x_shape}")
        hit = plans.put(key, (_plans(factory, dt, n * h * w * c, c, len(ins) + 1,
                                     (h, w, c, ho, wo), geo), x_shape), ins, params)
    return hit[0], hit[1], dy, idx


def max_pool_forward(x, pool, stride, pad):
    """``(y, idx)``: the window maxima and the flat ``h * W + w`` of each winner (int32)."""
    plan, y_shape, x = _forward("max_pool_forward", max_pool_fwd_kernel, 3, x, pool, stride, pad)
    y = empty(y_shape, x.dtype)
    idx = empty(y_shape, np.int32)
    plan(x, y, idx)
    return y, idx


def max_pool_backward(dy, idx, x_shape, pool, stride, pad):
    """dx of shape ``x_shape``: each dy routed to its window's winner (accumulating), as a
    gather over the windows (the forward's geometry) covering each cell: dx written once."""
    plans, x_shape, dy, idx = _backward("max_pool_backward", max_pool_bwd_kernel, dy, idx,
                                        x_shape, pool, stride, pad)
    dx = empty(x_shape, dy.dtype)
    _pick(plans, dy)(dy, idx, dx)
    return dx


def avg_pool_forward(x, pool, stride, pad):
    """The mean over each window's real (unpadded) cells."""
    plan, y_shape, x = _forward("avg_pool_forward", avg_pool_fwd_kernel, 2, x, pool, stride, pad)
    y = empty(y_shape, x.dtype)
    plan(x, y)
    return y


def avg_pool_backward(dy, x_shape, pool, stride, pad):
    """dx of shape ``x_shape``: each dy spread evenly over its window's real cells."""
    plans, x_shape, dy, _ = _backward("avg_pool_backward", avg_pool_bwd_kernel, dy, None,
                                      x_shape, pool, stride, pad)
    dx = empty(x_shape, dy.dtype)
    _pick(plans, dy)(dy, dx)
    return dx
