"""Optimizer updates, in place on the parameter ``p`` and its slot arrays; ``g`` is never modified.

Hyperparameters are taken as Python floats, so a float32 parameter stays float32 (a NumPy float64
scalar would otherwise promote every temporary).
"""
from __future__ import annotations

import math

import numpy as np

from ._util import check_float, fail

__all__ = ["sgd_update", "adam_update", "rmsprop_update"]


def _check(op, p, g, **slots):
    check_float(op, "p", p)
    for name, a in (("g", g), *slots.items()):
        if a.shape != p.shape:
            fail(op, f"{name} shape (that of p)", p.shape, tuple(a.shape))


def _l2_grad(p, g, weight_decay):
    """``g + weight_decay * p`` as a new array of p's dtype (``g`` untouched)."""
    out = np.multiply(p, weight_decay)
    out += g
    return out


def sgd_update(p, g, v, lr, momentum, nesterov, weight_decay):
    """SGD with momentum (Keras / PyTorch formulation), in place on ``p`` and ``v``::

        g' = g + weight_decay * p                 (L2; g itself is not modified)
        momentum == 0:  p -= lr * g'              (v may be None)
        otherwise:      v  = momentum * v - lr * g'
                        p += v                            (plain)
                        p += momentum * v - lr * g'       (nesterov, with the new v)
    """
    op = "sgd_update"
    lr, momentum, weight_decay = float(lr), float(momentum), float(weight_decay)
    if momentum != 0.0 and v is None:
        raise ValueError(f"{op}: v expected an array when momentum != 0, got None")
    _check(op, p, g, **({} if v is None else {"v": v}))
    if weight_decay:
        step = _l2_grad(p, g, weight_decay)
        step *= lr                                       # step = lr * g'
    else:
        step = np.multiply(g, lr, dtype=p.dtype)         # one pass, not a copy and a scale
    if momentum == 0.0:
        p -= step
        return
    v *= momentum
    v -= step
    if nesterov:
        p -= step
        np.multiply(v, momentum, out=step)
        p += step
    else:
        p += v


def adam_update(p, g, m, v, lr, beta1, beta2, eps, t, weight_decay):
    """Adam (Keras / PyTorch, bias-corrected; ``t`` is the 1-based step), in place on p, m, v::

        p -= lr * weight_decay * p                (decoupled decay, AdamW; before the step)
        m  = beta1 * m + (1 - beta1) * g
        v  = beta2 * v + (1 - beta2) * g**2
        m_hat = m / (1 - beta1**t),  v_hat = v / (1 - beta2**t)
        p -= lr * m_hat / (sqrt(v_hat) + eps)
    """
    op = "adam_update"
    lr, beta1, beta2, eps = float(lr), float(beta1), float(beta2), float(eps)
    weight_decay = float(weight_decay)
    t = int(t)
    if t < 1:
        raise ValueError(f"{op}: t expected the 1-based step >= 1, got {t}")
    _check(op, p, g, m=m, v=v)
    if weight_decay:
        p *= 1.0 - lr * weight_decay
    tmp = np.multiply(g, 1.0 - beta1, dtype=p.dtype)
    m *= beta1
    m += tmp
    np.multiply(g, g, out=tmp)
    tmp *= 1.0 - beta2
    v *= beta2
    v += tmp
    np.sqrt(v, out=tmp)
    tmp *= 1.0 / math.sqrt(1.0 - beta2 ** t)                 # sqrt(v_hat)
    tmp += eps
    np.divide(m, tmp, out=tmp)
    tmp *= lr / (1.0 - beta1 ** t)
    p -= tmp


def rmsprop_update(p, g, s, lr, rho, eps, weight_decay):
    """RMSprop, in place on ``p`` and ``s``::

        g' = g + weight_decay * p                 (L2; g itself is not modified)
        s  = rho * s + (1 - rho) * g'**2
        p -= lr * g' / (sqrt(s) + eps)
    """
    op = "rmsprop_update"
    lr, rho, eps, weight_decay = float(lr), float(rho), float(eps), float(weight_decay)
    _check(op, p, g, s=s)
    if weight_decay:
        g = _l2_grad(p, g, weight_decay)
    tmp = np.multiply(g, g, dtype=p.dtype)
    tmp *= 1.0 - rho
    s *= rho
    s += tmp
    np.sqrt(s, out=tmp)
    tmp += eps
    np.divide(g, tmp, out=tmp)
    tmp *= lr
    p -= tmp
