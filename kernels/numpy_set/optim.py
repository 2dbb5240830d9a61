"""Optimizer updates as Keras 3 computes them, in place on the parameter ``p`` and its slot
arrays; ``g`` is never modified.

Every update starts with Keras's decoupled weight decay, ``p -= p * (lr * weight_decay)``
(``Optimizer._apply_weight_decay`` in Keras runs before the update step and with the same
learning rate); a weight decay of 0 leaves ``p`` untouched, infinities included. Hyperparameters
are taken as Python floats, so a float32 parameter stays float32 (a NumPy float64 scalar would
otherwise promote every temporary); the few products of hyperparameters (``lr * weight_decay``,
Adam's ``alpha``) are formed in float64 on the host.
"""
from __future__ import annotations

import math

import numpy as np

from ._util import check_float, fail

__all__ = ["sgd_update", "adam_update", "rmsprop_update"]


def _check(op, p, g, **slots):
    check_float(op, "p", p)
    for name, a in (("g", g), *slots.items()):
        if a is None:
            continue
        check_float(op, name, a)
        if a.shape != p.shape:
            fail(op, f"{name} shape (that of p)", p.shape, tuple(a.shape))


def _need(op, name, a, why):
    if a is None:
        raise ValueError(f"{op}: {name} expected an array when {why}, got None")


def _decay(p, lr, weight_decay):
    """Keras's decoupled weight decay, in place: ``p -= p * (lr * weight_decay)``."""
    lrwd = lr * weight_decay
    if lrwd:
        p -= np.multiply(p, lrwd, dtype=p.dtype)


def sgd_update(p, g, v, lr, momentum, nesterov, weight_decay):
    """SGD as Keras 3 writes it, in place on ``p`` and ``v``::

        p -= p * (lr * weight_decay)                 decoupled decay, first
        momentum == 0:  p -= lr * g                  (v may be None)
        otherwise:      v  = momentum * v - lr * g
                        p += v                       plain momentum
                        p += momentum * v - lr * g   Nesterov, with the new v
    """
    op = "sgd_update"
    lr, momentum, weight_decay = float(lr), float(momentum), float(weight_decay)
    if momentum != 0.0:
        _need(op, "v", v, "momentum != 0")
    _check(op, p, g, **({} if v is None else {"v": v}))
    _decay(p, lr, weight_decay)
    step = np.multiply(g, lr, dtype=p.dtype)             # lr * g
    if momentum == 0.0:
        p -= step
        return
    v *= momentum
    v -= step                                            # v = momentum * v - lr * g
    if nesterov:
        tmp = np.multiply(v, momentum, dtype=p.dtype)
        tmp -= step                                      # momentum * v - lr * g
        p += tmp
    else:
        p += v


def adam_update(p, g, m, v, lr, beta1, beta2, eps, t, weight_decay, vhat=None):
    """Adam as Keras 3 writes it (``t`` is the 1-based step), in place on p, m, v (and vhat)::

        p -= p * (lr * weight_decay)                 decoupled decay, first (AdamW)
        alpha = lr * sqrt(1 - beta2**t) / (1 - beta1**t)
        m += (g - m) * (1 - beta1)
        v += (g**2 - v) * (1 - beta2)
        amsgrad (vhat given):  vhat = max(vhat, v), and vhat replaces v below
        p -= m * alpha / (sqrt(v) + eps)

    The bias corrections sit in ``alpha``, so ``eps`` is added to ``sqrt(v)`` itself: in
    PyTorch's form (``sqrt(v / (1 - beta2**t)) + eps``) that is an epsilon of
    ``eps / sqrt(1 - beta2**t)``.
    """
    op = "adam_update"
    lr, beta1, beta2, eps = float(lr), float(beta1), float(beta2), float(eps)
    weight_decay = float(weight_decay)
    t = int(t)
    if t < 1:
        raise ValueError(f"{op}: t expected the 1-based step >= 1, got {t}")
    _check(op, p, g, m=m, v=v, vhat=vhat)
    _decay(p, lr, weight_decay)
    alpha = lr * math.sqrt(1.0 - beta2 ** t) / (1.0 - beta1 ** t)
    tmp = np.subtract(g, m, dtype=p.dtype)
    tmp *= 1.0 - beta1
    m += tmp                                             # m += (g - m) * (1 - beta1)
    np.multiply(g, g, out=tmp)
    tmp -= v
    tmp *= 1.0 - beta2
    v += tmp                                             # v += (g^2 - v) * (1 - beta2)
    if vhat is not None:
        np.maximum(vhat, v, out=vhat)
    np.sqrt(v if vhat is None else vhat, out=tmp)
    tmp += eps                                           # sqrt(v) + eps
    num = np.multiply(m, alpha, dtype=p.dtype)
    num /= tmp
    p -= num


def rmsprop_update(p, g, s, lr, rho, eps, weight_decay, u=None, momentum=0.0, mg=None,
                   gain=None):
    """RMSprop as Keras 3 writes it, in place on ``p``, ``s`` (and ``u``, ``mg``)::

        p -= p * (lr * weight_decay)                 decoupled decay, first
        s  = rho * s + gain * g**2                   gain = 1 - rho unless given
        centered (mg given):  mg = rho * mg + gain * g;  d = s - mg**2 + eps
        otherwise:            d = s + eps
        step = lr * g / sqrt(d)                      eps inside the root, as Keras has it
        momentum != 0 (u given):  u = momentum * u + step;  p -= u
        otherwise:                p -= step

    Keras's Adagrad is this update with ``rho = 1`` and ``gain = 1`` (``s += g**2``; ``s`` starts
    at the initial accumulator value, 0.1 in Keras).
    """
    op = "rmsprop_update"
    lr, rho, eps = float(lr), float(rho), float(eps)
    weight_decay, momentum = float(weight_decay), float(momentum)
    gain = 1.0 - rho if gain is None else float(gain)
    if momentum != 0.0:
        _need(op, "u", u, "momentum != 0")
    _check(op, p, g, s=s, u=u if momentum != 0.0 else None, mg=mg)
    _decay(p, lr, weight_decay)
    tmp = np.multiply(g, g, dtype=p.dtype)
    tmp *= gain
    s *= rho
    s += tmp                                             # s = rho * s + gain * g^2
    if mg is None:
        np.add(s, eps, out=tmp)                          # s + eps
    else:
        mg *= rho
        np.multiply(g, gain, out=tmp)
        mg += tmp                                        # mg = rho * mg + gain * g
        np.multiply(mg, mg, out=tmp)
        np.subtract(s, tmp, out=tmp)
        tmp += eps                                       # s - mg^2 + eps
    np.sqrt(tmp, out=tmp)
    step = np.multiply(g, lr, dtype=p.dtype)
    step /= tmp                                          # lr * g / sqrt(d)
    if momentum == 0.0:
        p -= step
        return
    u *= momentum
    u += step
    p -= u
