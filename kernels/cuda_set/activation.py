"""Elementwise activations ReLU, tanh, sigmoid (and linear), forward and backward.

The device functions ``act_fwd``/``act_bwd`` of ``act_device_fns(dtype)`` are shared with the
convolution epilogue. ``act`` travels to the kernels as an int code (``ACT_CODE``), so one
kernel serves every activation.
"""
from __future__ import annotations

import functools
import math

import numpy as np
from numba import types

from .. import ACTIVATIONS
from ._launch import (NB_FLOAT, arr, cdiv, contig, empty, float_dtype, float_variants,
                      kernel_factory, KernelSpec, Plans, Prepared, dtname)
from ._runtime import numba_cuda as cuda
from .vector import aligned16, load4, store4, stream_grid

#: Threads per block of the elementwise kernels (grid-stride loops; see ``vector.stream_grid``),
#: and the blocks per SM they are compiled for: 6 leaves 40 registers (at 32, 8 blocks, the
#: sigmoid's division calls spill).
EW_BLOCK = 256
EW_PER_SM = 6

ACT_CODE = {name: i for i, name in enumerate(ACTIVATIONS)}  # linear 0, relu 1, tanh 2, sigmoid 3
LINEAR, RELU, TANH, SIGMOID = (ACT_CODE[a] for a in ("linear", "relu", "tanh", "sigmoid"))


def act_code(op: str, act) -> int:
    if act not in ACT_CODE:
        raise ValueError(f"{op}: act must be one of {ACTIVATIONS}, got {act!r}")
    return ACT_CODE[act]


@functools.lru_cache(maxsize=None)
def act_device_fns(dtype: str):
    """``(act_fwd(v, code), act_bwd(dy, y, code))`` device functions computing in ``dtype``."""
    dt = NB_FLOAT[np.dtype(dtype)]

    @cuda.jit(device=True, inline="always")
    def act_fwd(v, code):
        zero = dt(0)
        one = dt(1)
        if code == RELU:
            return v if v > zero else zero
        if code == TANH:
            return dt(math.tanh(v))
        if code == SIGMOID:
            # exp of a non-positive number only: no overflow for large |v|
            if v >= zero:
                return one / (one + dt(math.exp(-v)))
            e = dt(math.exp(v))
            return e / (one + e)
        return v

    @cuda.jit(device=True, inline="always")
    def act_bwd(dy, y, code):
        zero = dt(0)
        one = dt(1)
        if code == RELU:
            return dy if y > zero else zero
        if code == TANH:
            return dy * (one - y * y)
        if code == SIGMOID:
            return dy * y * (one - y)
        return dy

    return act_fwd, act_bwd


@kernel_factory(float_variants)
def act_fwd_kernel(dtype):
    act_fwd, _ = act_device_fns(dtype)

    def act_forward_k(x, y, code):
        """y[i] = act(x[i]) over flat C-contiguous arrays of equal size, one read and one write
        per element: chunks of 4 by 128-bit loads and stores when both arrays are 16-byte
        aligned, then the rest one by one; a grid-stride loop over chunks."""
        chunks = x.size // 4 if aligned16(x) and aligned16(y) else 0
        for c in range(cuda.grid(1), chunks, cuda.gridsize(1)):
            v = load4(x, 4 * c)
            store4(y, 4 * c, act_fwd(v[0], code), act_fwd(v[1], code), act_fwd(v[2], code),
                   act_fwd(v[3], code))
        for i in range(4 * chunks + cuda.grid(1), x.size, cuda.gridsize(1)):
            y[i] = act_fwd(x[i], code)

    a = arr(dtype, 1)
    return KernelSpec(f"act_fwd[{dtype}]", act_forward_k, (a, a, types.int32),
                      (EW_BLOCK, EW_PER_SM))


@kernel_factory(float_variants)
def act_bwd_kernel(dtype):
    _, act_bwd = act_device_fns(dtype)

    def act_backward_k(dy, y, dx, code):
        """dx[i] = act'(from y[i]) * dy[i] over flat C-contiguous arrays, vectorised as
        ``act_forward_k``."""
        chunks = dy.size // 4 if aligned16(dy) and aligned16(y) and aligned16(dx) else 0
        for c in range(cuda.grid(1), chunks, cuda.gridsize(1)):
            g = load4(dy, 4 * c)
            v = load4(y, 4 * c)
            store4(dx, 4 * c, act_bwd(g[0], v[0], code), act_bwd(g[1], v[1], code),
                   act_bwd(g[2], v[2], code), act_bwd(g[3], v[3], code))
        for i in range(4 * chunks + cuda.grid(1), dy.size, cuda.gridsize(1)):
            dx[i] = act_bwd(dy[i], y[i], code)

    a = arr(dtype, 1)
    return KernelSpec(f"act_bwd[{dtype}]", act_backward_k, (a, a, a, types.int32),
                      (EW_BLOCK, EW_PER_SM))


_FWD, _BWD = Plans("act_forward"), Plans("act_backward")


def _elementwise(op, plans, kernel, arrays, act):
    """A new output from ``kernel`` over ``arrays`` (of one shape, any rank: the kernel sees
    the flat contiguous arrays), through a plan of ``plans``."""
    key = plans.key(arrays, act)
    plan = plans.get(key)
    if plan is None:
        code = act_code(op, act)
        dt = float_dtype(op, arrays[0])
        arrays = tuple(contig(a, dt) for a in arrays)
        if len(arrays) == 2 and arrays[0].shape != arrays[1].shape:
            raise ValueError(f"{op}: dy {tuple(arrays[0].shape)} and y {tuple(arrays[1].shape)} "
                             "must have the same shape")
        grid = stream_grid(cdiv(arrays[0].size, 4), EW_BLOCK, EW_PER_SM)
        plan = plans.put(key, Prepared(kernel(dtname(dt)), grid, (EW_BLOCK,),
                                       (*arrays, None, code)), arrays, act)
    out = empty(arrays[0].shape, arrays[0].dtype)
    plan(*arrays, out)
    return out


def act_forward(x, act):
    """``act(x)`` elementwise, any shape."""
    return _elementwise("act_forward", _FWD, act_fwd_kernel, (x,), act)


def act_backward(dy, y, act):
    """The gradient of ``act`` from its forward output ``y``: ``dx = act'(y) * dy``."""
    return _elementwise("act_backward", _BWD, act_bwd_kernel, (dy, y), act)
