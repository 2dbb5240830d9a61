"""Optimizer updates as Keras 3 computes them, in place on the parameter ``p`` and its slot
arrays; ``g`` is never modified.

Every update starts with Keras's decoupled weight decay, ``p -= p * (lr * weight_decay)``
(``Optimizer._apply_weight_decay`` in Keras runs before the update step and with the same
learning rate); a weight decay of 0 leaves ``p`` untouched, infinities included. Hyperparameters
are taken as Python floats, so a float32 parameter stays float32 (a NumPy float64 scalar would
otherwise promote every temporary); the few products of hyperparameters (``lr * weight_decay``,
Adam's ``alpha``) are formed in float64 on the host.

Every update is checked (the contract's rule, as the cuda set keeps it): the new values are
computed beside the old ones and written back except at the elements whose new weight is not
finite (a non-finite gradient always gives one), which keep the weight and its slots; ``flag``
records the first refused update's ``tag``, and an update finding an earlier tag there changes
nothing. The check is one sum over the new weight (the element mask only when that sum is not
finite) and one copy per written array.
"""
from __future__ import annotations

import functools
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


def _decayed(p, lr, weight_decay):
    """Keras's decoupled weight decay, ``p - p * (lr * weight_decay)``, as a new array (``p``
    itself when there is none)."""
    lrwd = lr * weight_decay
    return p - np.multiply(p, lrwd, dtype=p.dtype) if lrwd else p


def _quiet(update):
    """``update`` without NumPy's warnings on NaN/inf: they are the check's business."""
    @functools.wraps(update)
    def run(*args, **kwargs):
        with np.errstate(all="ignore"):
            return update(*args, **kwargs)
    return run


def _refused_before(flag, tag):
    """Whether ``flag`` holds the tag of an earlier refused update (every later one is refused)."""
    return flag is not None and 0 < int(flag[0]) < int(tag)


def _commit(op, p, new_p, slots, flag, tag):
    """Write ``new_p`` into ``p`` and each ``(slot, new)`` pair, except at the elements where
    ``new_p`` is not finite, which keep their old values; such an element sets ``flag[0]`` to
    ``tag`` (unless an earlier tag is there), or raises FloatingPointError without a flag."""
    bad = None if np.isfinite(new_p.sum()) else ~np.isfinite(new_p)
    if bad is None or not bad.any():
        p[...] = new_p
        for a, new in slots:
            a[...] = new
        return
    keep = ~bad
    np.copyto(p, new_p, where=keep)
    for a, new in slots:
        np.copyto(a, new, where=keep)
    if flag is None:
        first = np.unravel_index(int(np.argmax(bad)), p.shape)
        raise FloatingPointError(f"{op}: the new weight is not finite at {int(bad.sum())} of "
                                 f"{p.size} elements (the first at index {first}); they were "
                                 "left as they were")
    if not 0 < int(flag[0]) < int(tag):
        flag[0] = tag


@_quiet
def sgd_update(p, g, v, lr, momentum, nesterov, weight_decay, flag=None, tag=1):
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
    if _refused_before(flag, tag):
        return
    pd = _decayed(p, lr, weight_decay)
    step = np.multiply(g, lr, dtype=p.dtype)             # lr * g
    if momentum == 0.0:
        _commit(op, p, np.subtract(pd, step, out=step), (), flag, tag)
        return
    new_v = np.multiply(v, momentum, dtype=p.dtype)
    new_v -= step                                        # v = momentum * v - lr * g
    if nesterov:
        nes = np.multiply(new_v, momentum, dtype=p.dtype)
        nes -= step                                      # momentum * v - lr * g
        new_p = np.add(pd, nes, out=nes)
    else:
        new_p = np.add(pd, new_v, out=step)
    _commit(op, p, new_p, ((v, new_v),), flag, tag)


@_quiet
def adam_update(p, g, m, v, lr, beta1, beta2, eps, t, weight_decay, vhat=None, flag=None,
                tag=1):
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
    if _refused_before(flag, tag):
        return
    pd = _decayed(p, lr, weight_decay)
    alpha = lr * math.sqrt(1.0 - beta2 ** t) / (1.0 - beta1 ** t)
    new_m = np.subtract(g, m, dtype=p.dtype)
    new_m *= 1.0 - beta1
    new_m += m                                           # m + (g - m) * (1 - beta1)
    new_v = np.multiply(g, g, dtype=p.dtype)
    new_v -= v
    new_v *= 1.0 - beta2
    new_v += v                                           # v + (g^2 - v) * (1 - beta2)
    slots = [(m, new_m), (v, new_v)]
    den = new_v
    if vhat is not None:
        den = np.maximum(vhat, new_v)
        slots.append((vhat, den))
    tmp = np.sqrt(den)
    tmp += eps                                           # sqrt(v) + eps
    num = np.multiply(new_m, alpha, dtype=p.dtype)
    num /= tmp
    _commit(op, p, np.subtract(pd, num, out=num), slots, flag, tag)


@_quiet
def rmsprop_update(p, g, s, lr, rho, eps, weight_decay, u=None, momentum=0.0, mg=None,
                   gain=None, flag=None, tag=1):
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
    if _refused_before(flag, tag):
        return
    pd = _decayed(p, lr, weight_decay)
    new_s = np.multiply(g, g, dtype=p.dtype)
    new_s *= gain
    new_s += np.multiply(s, rho, dtype=p.dtype)          # s = rho * s + gain * g^2
    slots = [(s, new_s)]
    if mg is None:
        tmp = np.add(new_s, eps, dtype=p.dtype)          # s + eps
    else:
        new_mg = np.multiply(g, gain, dtype=p.dtype)
        new_mg += np.multiply(mg, rho, dtype=p.dtype)    # mg = rho * mg + gain * g
        slots.append((mg, new_mg))
        tmp = np.multiply(new_mg, new_mg)
        np.subtract(new_s, tmp, out=tmp)
        tmp += eps                                       # s - mg^2 + eps
    np.sqrt(tmp, out=tmp)
    step = np.multiply(g, lr, dtype=p.dtype)
    step /= tmp                                          # lr * g / sqrt(d)
    if momentum != 0.0:
        step += np.multiply(u, momentum, dtype=p.dtype)  # u = momentum * u + step
        slots.append((u, step.copy()))
    _commit(op, p, np.subtract(pd, step, out=step), slots, flag, tag)
