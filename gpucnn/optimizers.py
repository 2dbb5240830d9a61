"""Optimizers (Keras names and defaults), updating parameters in place through the kernel set.

Each keeps its per-parameter state ("slots": momentum, moment estimates) in arrays of the active
backend, created lazily on a parameter's first update. ``apply_gradients`` (or ``step``) updates
every parameter that has a gradient.

>>> from gpucnn.optimizers import SGD
>>> SGD = SGD(learning_rate=0.01)      # the guide's line
>>> SGD.learning_rate
0.01
"""
from __future__ import annotations

import math

from gpucnn import backend
from gpucnn.autograd import Tensor


def _number(v, name, owner, lo=0.0, hi=math.inf, lo_open=False, hi_open=False):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
        raise TypeError(f"{owner}: {name} must be a number, got {v!r}")
    v = float(v)
    if v < lo or v > hi or (lo_open and v == lo) or (hi_open and v == hi):
        lb, rb = "(" if lo_open else "[", ")" if hi_open else "]"
        raise ValueError(f"{owner}: {name} must lie in {lb}{lo}, {hi}{rb}, got {v!r}")
    return v


class Optimizer:
    """Base class: ``learning_rate``, optional ``weight_decay``, an ``iterations`` counter."""

    def __init__(self, learning_rate, weight_decay=0.0, name=None):
        owner = type(self).__name__
        self.learning_rate = _number(learning_rate, "learning_rate", owner, lo_open=True)
        self.weight_decay = _number(weight_decay or 0.0, "weight_decay", owner)
        self.name = name or owner
        self.iterations = 0
        self._slots = {}  # id(param) -> (param, slot arrays...)

    def _slot(self, p, count):
        entry = self._slots.get(id(p))
        if entry is None or entry[0] is not p or type(entry[1]) is not type(p.data):
            # new parameter (or one moved to another backend: its state starts afresh)
            xp = backend.xp()
            entry = (p, *[xp.zeros_like(p.data) for _ in range(count)])
            self._slots[id(p)] = entry
        return entry

    def apply_gradients(self, params) -> None:
        """One update of every Tensor in ``params`` that has a ``.grad`` (also accepts Keras'
        list of ``(grad, param)`` pairs)."""
        self.iterations += 1
        ks = backend.kernels()
        lr = self.learning_rate
        for p in params:
            if isinstance(p, tuple):
                g, p = p
                g = g.data if isinstance(g, Tensor) else ks.asarray(g)
            else:
                g = p.grad
                if g is None:
                    continue
                g = g.data
            self._update(ks, p, g, lr)

    step = apply_gradients

    def _update(self, ks, p, g, lr):  # pragma: no cover - abstract
        raise NotImplementedError

    def get_config(self) -> dict:
        return {k: v for k, v in vars(self).items() if not k.startswith("_") and k != "iterations"}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "name")
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Stochastic gradient descent, with optional (Nesterov) momentum, Keras formulation::

        v = momentum * v - lr * g;  p += v             (nesterov: p += momentum * v - lr * g)

    ``weight_decay`` adds ``weight_decay * p`` to the gradient (L2).
    """

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, weight_decay=0.0, name=None):
        super().__init__(learning_rate, weight_decay, name)
        self.momentum = _number(momentum, "momentum", "SGD", 0.0, 1.0, hi_open=True)
        self.nesterov = bool(nesterov)

    def _update(self, ks, p, g, lr):
        v = self._slot(p, 1)[1] if self.momentum else None
        ks.sgd_update(p.data, g, v, lr, self.momentum, self.nesterov, self.weight_decay)


class Adam(Optimizer):
    """Adam with bias correction; ``weight_decay`` is decoupled (AdamW)::

        m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
        p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + epsilon)
    """

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                 weight_decay=0.0, name=None):
        super().__init__(learning_rate, weight_decay, name)
        self.beta_1 = _number(beta_1, "beta_1", "Adam", 0.0, 1.0, hi_open=True)
        self.beta_2 = _number(beta_2, "beta_2", "Adam", 0.0, 1.0, hi_open=True)
        self.epsilon = _number(epsilon, "epsilon", "Adam")

    def _update(self, ks, p, g, lr):
        _, m, v = self._slot(p, 2)
        ks.adam_update(p.data, g, m, v, lr, self.beta_1, self.beta_2, self.epsilon,
                       self.iterations, self.weight_decay)


class RMSprop(Optimizer):
    """RMSprop: ``s = rho s + (1 - rho) g^2;  p -= lr g / (sqrt(s) + epsilon)``.

    With ``momentum > 0`` (Keras): ``u = momentum u + lr g / (sqrt(s) + epsilon); p -= u``.
    ``weight_decay`` adds ``weight_decay * p`` to the gradient (L2).
    """

    def __init__(self, learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7, weight_decay=0.0,
                 name=None):
        super().__init__(learning_rate, weight_decay, name)
        self.rho = _number(rho, "rho", "RMSprop", 0.0, 1.0, hi_open=True)
        self.momentum = _number(momentum, "momentum", "RMSprop", 0.0, 1.0, hi_open=True)
        self.epsilon = _number(epsilon, "epsilon", "RMSprop")

    def _update(self, ks, p, g, lr):
        if not self.momentum:
            ks.rmsprop_update(p.data, g, self._slot(p, 1)[1], lr, self.rho, self.epsilon,
                              self.weight_decay)
            return
        # momentum: written with the array module's own operations (no kernel in the contract)
        xp = ks.xp
        _, s, u = self._slot(p, 2)
        if self.weight_decay:
            g = g + self.weight_decay * p.data
        s *= self.rho
        s += (1.0 - self.rho) * (g * g)
        u *= self.momentum
        u += lr * g / (xp.sqrt(s) + self.epsilon)
        p.data -= u


_BY_NAME = {"sgd": SGD, "adam": Adam, "rmsprop": RMSprop}


def get(identifier) -> Optimizer:
    """An optimizer from ``'sgd'``, ``'adam'``, ``'rmsprop'`` (Keras defaults) or an instance."""
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, type) and issubclass(identifier, Optimizer):
        return identifier()
    if isinstance(identifier, str):
        cls = _BY_NAME.get(identifier.lower())
        if cls is None:
            raise ValueError(f"unknown optimizer {identifier!r}; expected one of {sorted(_BY_NAME)} "
                             "or an Optimizer")
        return cls()
    raise TypeError(f"an optimizer must be a name or an Optimizer, got {identifier!r}")


__all__ = ["Optimizer", "SGD", "Adam", "RMSprop", "get"]
