"""The optimizers with Keras 3's names, defaults and update formulas (each in its docstring),
run by the active kernel set's fused updates."""
from __future__ import annotations

from gpucnn.optimizers._args import number
from gpucnn.optimizers.optimizer import Optimizer


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum, Keras 3's formula::

        momentum 0:  p -= lr * g
        momentum:    v = momentum * v - lr * g;  p += v
        Nesterov:    v = momentum * v - lr * g;  p += momentum * v - lr * g

    Slot: ``momentum`` (the velocity v; only when momentum > 0).
    """

    _config_keys = ("momentum", "nesterov")

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, weight_decay=None,
                 clipnorm=None, clipvalue=None, global_clipnorm=None, name=None):
        super().__init__(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm, name)
        self.momentum = number(momentum, "momentum", "SGD", 0.0, 1.0)
        self.nesterov = bool(nesterov)

    def _slot_spec(self):
        return (("momentum", 0.0),) if self.momentum else ()

    def _update(self, ks, p, g, lr, wd):
        v = self._slot_arrays(p)[0] if self.momentum else None
        ks.sgd_update(p.data, g, v, lr, self.momentum, self.nesterov, wd, **self._guard)

    def _update_many(self, ks, ps, gs, lr, wd):
        vs = [self._slot_arrays(p)[0] for p in ps] if self.momentum else None
        ks.sgd_update_many([p.data for p in ps], gs, vs, lr, self.momentum, self.nesterov, wd,
                           **self._guard)


class Adam(Optimizer):
    """Adam, Keras 3's formula (``t`` = the step, from 1)::

        m += (g - m) * (1 - beta_1);  v += (g^2 - v) * (1 - beta_2)
        amsgrad: v_hat = max(v_hat, v), used in place of v
        p -= lr_t * m / (sqrt(v) + epsilon),  lr_t = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t)

    The bias corrections sit in ``lr_t``, so ``epsilon`` is added to ``sqrt(v)`` and not to
    the bias-corrected ``sqrt(v / (1 - beta_2^t))`` as in PyTorch (PyTorch's form with
    ``eps`` equals this one with ``epsilon = eps * sqrt(1 - beta_2^t)``).
    Slots: ``momentum`` (m), ``velocity`` (v), ``velocity_hat`` (amsgrad).
    """

    _config_keys = ("beta_1", "beta_2", "epsilon", "amsgrad")

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                 amsgrad=False, weight_decay=None, clipnorm=None, clipvalue=None,
                 global_clipnorm=None, name=None):
        super().__init__(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm, name)
        owner = type(self).__name__
        self.beta_1 = number(beta_1, "beta_1", owner, 0.0, 1.0, hi_open=True)
        self.beta_2 = number(beta_2, "beta_2", owner, 0.0, 1.0, hi_open=True)
        self.epsilon = number(epsilon, "epsilon", owner)
        self.amsgrad = bool(amsgrad)

    def _slot_spec(self):
        return (("momentum", 0.0), ("velocity", 0.0)) + ((("velocity_hat", 0.0),)
                                                         if self.amsgrad else ())

    def _update(self, ks, p, g, lr, wd):
        slots = self._slot_arrays(p)
        ks.adam_update(p.data, g, slots[0], slots[1], lr, self.beta_1, self.beta_2,
                       self.epsilon, self.iterations + 1, wd,
                       vhat=slots[2] if self.amsgrad else None, **self._guard)

    def _update_many(self, ks, ps, gs, lr, wd):
        slots = [self._slot_arrays(p) for p in ps]
        ks.adam_update_many([p.data for p in ps], gs, [s[0] for s in slots],
                            [s[1] for s in slots], lr, self.beta_1, self.beta_2, self.epsilon,
                            self.iterations + 1, wd,
                            vhats=[s[2] for s in slots] if self.amsgrad else None,
                            **self._guard)


class AdamW(Adam):
    """Adam with decoupled weight decay on by default (Keras's ``AdamW``: ``weight_decay``
    0.004): each step first does ``p -= p * lr * weight_decay``, then Adam's update."""

    def __init__(self, learning_rate=0.001, weight_decay=0.004, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-7, amsgrad=False, clipnorm=None, clipvalue=None,
                 global_clipnorm=None, name=None):
        if weight_decay is None:
            raise ValueError("AdamW: weight_decay must be a number (the decoupled decay rate), "
                             "got None; use Adam for none")
        super().__init__(learning_rate, beta_1, beta_2, epsilon, amsgrad, weight_decay,
                         clipnorm, clipvalue, global_clipnorm, name)


class RMSprop(Optimizer):
    """RMSprop, Keras 3's formula::

        v = rho * v + (1 - rho) * g^2
        centered: mg = rho * mg + (1 - rho) * g;  step = lr * g / sqrt(v - mg^2 + epsilon)
        otherwise:                                step = lr * g / sqrt(v + epsilon)
        momentum > 0: u = momentum * u + step;  p -= u          otherwise: p -= step

    ``epsilon`` is inside the square root (PyTorch adds it to ``sqrt(v)``).
    Slots: ``velocity`` (v), ``momentum`` (u, when momentum > 0), ``average_gradient`` (mg,
    centered).
    """

    _config_keys = ("rho", "momentum", "epsilon", "centered")

    def __init__(self, learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7, centered=False,
                 weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None,
                 name=None):
        super().__init__(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm, name)
        self.rho = number(rho, "rho", "RMSprop", 0.0, 1.0, hi_open=True)
        self.momentum = number(momentum, "momentum", "RMSprop", 0.0, 1.0, hi_open=True)
        self.epsilon = number(epsilon, "epsilon", "RMSprop")
        self.centered = bool(centered)

    def _slot_spec(self):
        return ((("velocity", 0.0),) + ((("momentum", 0.0),) if self.momentum else ())
                + ((("average_gradient", 0.0),) if self.centered else ()))

    def _update(self, ks, p, g, lr, wd):
        slots = list(self._slot_arrays(p))
        v = slots.pop(0)
        u = slots.pop(0) if self.momentum else None
        mg = slots.pop(0) if self.centered else None
        ks.rmsprop_update(p.data, g, v, lr, self.rho, self.epsilon, wd, u=u,
                          momentum=self.momentum, mg=mg, **self._guard)

    def _update_many(self, ks, ps, gs, lr, wd):
        slots = [list(self._slot_arrays(p)) for p in ps]
        vs = [s.pop(0) for s in slots]
        us = [s.pop(0) for s in slots] if self.momentum else None
        mgs = [s.pop(0) for s in slots] if self.centered else None
        ks.rmsprop_update_many([p.data for p in ps], gs, vs, lr, self.rho, self.epsilon, wd,
                               us=us, momentum=self.momentum, mgs=mgs, **self._guard)


class Adagrad(Optimizer):
    """Adagrad, Keras 3's formula::

        a += g^2;  p -= lr * g / sqrt(a + epsilon)       (a starts at initial_accumulator_value)

    It runs on the RMSprop kernel with ``rho = 1`` and a gain of 1 on ``g^2``.
    Slot: ``accumulator`` (a).
    """

    _config_keys = ("initial_accumulator_value", "epsilon")

    def __init__(self, learning_rate=0.001, initial_accumulator_value=0.1, epsilon=1e-7,
                 weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None,
                 name=None):
        super().__init__(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm, name)
        self.initial_accumulator_value = number(initial_accumulator_value,
                                                 "initial_accumulator_value", "Adagrad")
        self.epsilon = number(epsilon, "epsilon", "Adagrad")

    def _slot_spec(self):
        return (("accumulator", self.initial_accumulator_value),)

    def _update(self, ks, p, g, lr, wd):
        (a,) = self._slot_arrays(p)
        ks.rmsprop_update(p.data, g, a, lr, 1.0, self.epsilon, wd, gain=1.0, **self._guard)

    def _update_many(self, ks, ps, gs, lr, wd):
        ks.rmsprop_update_many([p.data for p in ps], gs, [self._slot_arrays(p)[0] for p in ps],
                               lr, 1.0, self.epsilon, wd, gain=1.0, **self._guard)


__all__ = ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad"]
