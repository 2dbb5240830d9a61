"""Elementwise activations: forward, backward from the forward output, and an in-place epilogue.

    linear   y = x                      dx = dy
    relu     y = max(x, 0)              dx = dy * (y > 0)
    tanh     y = tanh(x)                dx = dy * (1 - y**2)
    sigmoid  y = 1 / (1 + exp(-x))      dx = dy * y * (1 - y)

Sigmoid is evaluated from ``e = exp(-|x|)`` (never overflows): ``1 / (1 + e)`` for ``x >= 0``,
``e / (1 + e)`` for ``x < 0``, so both tails keep their relative accuracy.
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
    pos = x >= 0                       # before ``out`` (possibly ``x``) is overwritten
    e = np.abs(x, out=out)
    np.negative(e, out=e)
    np.exp(e, out=e)                   # e = exp(-|x|) in (0, 1]
    den = e + 1
    np.copyto(e, 1, where=pos)         # numerator: 1 where x >= 0, e where x < 0
    return np.divide(e, den, out=e)


def act_inplace(y, act):
    """Apply ``act`` to ``y`` in place (the fused epilogue of conv2d_forward); returns ``y``."""
    if act == "relu":
        np.maximum(y, 0, out=y)
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
        return np.maximum(x, 0)
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
        return np.where(y > 0, dy, 0)
    if act == "tanh":
        dx = np.multiply(y, y)
        np.subtract(1, dx, out=dx)
        return np.multiply(dx, dy, out=dx)
    if act == "sigmoid":
        dx = np.subtract(1, y)
        np.multiply(dx, y, out=dx)
        return np.multiply(dx, dy, out=dx)
    return dy.copy()
