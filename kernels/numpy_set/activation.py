"""Elementwise activations: forward, backward from the forward output, and an in-place epilogue.

    linear   y = x                      dx = dy
    relu     y = max(x, 0)              dx = dy * (y > 0)
    tanh     y = tanh(x)                dx = dy * (1 - y**2)
    sigmoid  y = 1 / (1 + exp(-x))      dx = dy * y * (1 - y)

Sigmoid is ``1 / (1 + exp(-x))`` as written: for ``x`` far below 0, ``exp(-x)`` is huge (or inf,
which gives exactly 0) and the quotient keeps its relative accuracy; no NaN at any ``x``.
"""
from __future__ import annotations

import numpy as np

from .. import ACTIVATIONS
from ._util import check_float

__all__ = ["act_forward", "act_backward", "act_inplace"]


def _check_act(op: str, act) -> None:
    if act not in ACTIVATIONS:
        raise ValueError(f"{op}: act expected one of {ACTIVATIONS}, got {act!r}")


def _sigmoid(x, out):
    with np.errstate(over="ignore"):   # exp(-x) = inf for x < -88 (float32) gives exactly 0
        e = np.negative(x, out=out)
        np.exp(e, out=e)
    e += 1
    return np.reciprocal(e, out=e)


# NumPy's maximum runs its SIMD loop only when both operands are arrays: against the scalar 0 it
# is 4-5x slower (float32, 48K elements: 19 us against 4.2 us). ReLU therefore takes the maximum
# with a slice of this read-only zeros array, in chunks of at most its size.
_ZERO_CHUNK = 1 << 16
_ZEROS = {}


def _relu(x, out):
    """``out = max(x, 0)`` elementwise (``out`` may be ``x``); returns ``out``."""
    if not (x.flags.c_contiguous and out.flags.c_contiguous):
        return np.maximum(x, 0, out=out)
    z = _ZEROS.get(x.dtype)
    if z is None:
        z = np.zeros(_ZERO_CHUNK, dtype=x.dtype)
        z.flags.writeable = False
        _ZEROS[x.dtype] = z
    xf, of = x.reshape(-1), out.reshape(-1)
    for i in range(0, xf.size, _ZERO_CHUNK):
        j = min(i + _ZERO_CHUNK, xf.size)
        np.maximum(xf[i:j], z[:j - i], out=of[i:j])
    return out


def act_inplace(y, act):
    """Apply ``act`` to ``y`` in place (the fused epilogue of conv2d_forward); returns ``y``."""
    if act == "relu":
        _relu(y, y)
    elif act == "tanh":
        np.tanh(y, out=y)
    elif act == "sigmoid":
        _sigmoid(y, y)
    elif act != "linear":
        _check_act("act_inplace", act)
    return y


def act_forward(x, act):
    """``y = act(x)`` elementwise, a new array of x's shape and dtype (also for 'linear')."""
    check_float("act_forward", "x", x)
    _check_act("act_forward", act)
    if act == "relu":
        return _relu(x, np.empty_like(x))
    if act == "tanh":
        return np.tanh(x)
    if act == "sigmoid":
        return _sigmoid(x, np.empty_like(x))
    return x.copy()


def act_backward(dy, y, act):
    """``dx`` from the upstream gradient ``dy`` and the forward *output* ``y`` (same shape)."""
    check_float("act_backward", "dy", dy)
    _check_act("act_backward", act)
    if dy.shape != y.shape:
        raise ValueError(f"act_backward: y expected shape {dy.shape} (that of dy), got {y.shape}")
    y = np.asarray(y, dtype=dy.dtype)
    if act == "relu":
        return np.multiply(dy, y > 0)                    # (np.where is ~8x slower)
    if act == "tanh":
        dx = np.multiply(y, y)
        np.subtract(1, dx, out=dx)
        return np.multiply(dx, dy, out=dx)
    if act == "sigmoid":
        dx = np.subtract(1, y)
        np.multiply(dx, y, out=dx)
        return np.multiply(dx, dy, out=dx)
    return dy.copy()


def epilogue(out, b, act, tile):
    """``out = act(out + b)`` in place on a block of a convolution's output rows ``(rows, C)``;
    the bias is added as a contiguous tiled block (no broadcast loop over short rows), ``tile``,
    which is returned for the next block (grown when too short). Every conv method ends so."""
    if b is not None:
        if tile is None or len(tile) < len(out):
            tile = np.tile(b, (len(out), 1))
        out += tile[:len(out)]
    act_inplace(out, act)
    return tile
