"""Softmax and log-softmax along the last axis of ``(rows, K)``.

Every forward subtracts the row maximum first, so logits of any finite magnitude give no
overflow: ``softmax(x) = exp(x - m) / sum(exp(x - m))``, ``log_softmax(x) = x - m - log(sum(exp(x - m)))``.
"""
from __future__ import annotations

import numpy as np

from ._util import check_array, fail

__all__ = ["softmax_forward", "softmax_backward", "log_softmax_forward", "log_softmax_backward"]


def _check_pair(op, a, b, names=("dy", "y")):
    check_array(op, names[0], a, 2, "(rows, K)")
    if b.shape != a.shape:
        fail(op, f"{names[1]} shape (that of {names[0]})", a.shape, tuple(b.shape))


def _shifted(op, x):
    check_array(op, "x", x, 2, "(rows, K)")
    return np.subtract(x, x.max(axis=1, keepdims=True))


def softmax_forward(x):
    """``y[r] = exp(x[r] - max x[r]) / sum(...)`` for x ``(rows, K)``."""
    y = _shifted("softmax_forward", x)
    np.exp(y, out=y)
    y /= y.sum(axis=1, keepdims=True)
    return y


def softmax_backward(dy, y):
    """``dx = y * (dy - sum(dy * y))``, the sum over each row."""
    _check_pair("softmax_backward", dy, y)
    dx = np.subtract(dy, np.einsum("rk,rk->r", dy, y)[:, None])
    dx *= y
    return dx


def log_softmax_forward(x):
    """``y[r] = x[r] - max x[r] - log(sum(exp(x[r] - max x[r])))``."""
    y = _shifted("log_softmax_forward", x)
    y -= np.log(np.exp(y).sum(axis=1, keepdims=True))
    return y


def log_softmax_backward(dy, y):
    """``dx = dy - exp(y) * sum(dy)``, the sum over each row."""
    _check_pair("log_softmax_backward", dy, y)
    dx = np.exp(y)
    dx *= -dy.sum(axis=1, keepdims=True)
    dx += dy
    return dx
