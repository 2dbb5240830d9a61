"""Optimizers with Keras 3's names, defaults and update formulas, updating parameters in place
through the kernel set; learning-rate schedules accepted wherever a learning rate is.

One step (``apply_gradients``) does what Keras 3 does, in Keras's order:

1. clip the gradients, if asked: ``clipnorm`` (each gradient ``g`` becomes
   ``g * c / max(||g||, c)``), ``global_clipnorm`` (every gradient times
   ``c * min(1 / N, 1 / c)`` with ``N`` the norm of all of them together) or ``clipvalue``
   (each element into ``[-c, c]``); at most one of the three;
2. decoupled weight decay, ``p -= p * (lr * weight_decay)`` (not an L2 term in the gradient;
   ``exclude_from_weight_decay`` spares chosen weights);
3. the optimizer's own update (its formula is in its docstring; the fused kernels of the
   active kernel set do steps 2 and 3 in one pass);
4. ``iterations += 1``.

The learning rate of a step is the float given or, with a schedule, the schedule at the number
of steps already done (``iterations``: 0 for the first step), as in Keras. Each optimizer keeps
per-parameter state ("slots", named as Keras names its optimizer variables: ``momentum``,
``velocity``, ...) in arrays of the active backend, created on a parameter's first update.

>>> from gpucnn.optimizers import SGD
>>> SGD = SGD(learning_rate=0.01)      # the guide's line
>>> SGD.learning_rate
0.01
>>> from gpucnn.optimizers import Adam, schedules
>>> lr = schedules.ExponentialDecay(1e-3, decay_steps=100, decay_rate=0.5)
>>> opt = Adam(learning_rate=lr)
>>> opt.learning_rate, lr(200)
(0.001, 0.00025)
"""
from __future__ import annotations

import bisect
import math
import numbers
import sys
import types as _types

import numpy as np

from gpucnn import backend
from gpucnn.autograd import Tensor
from gpucnn.kernels import has


def _number(v, name, owner, lo=0.0, hi=math.inf, lo_open=False, hi_open=False):
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or math.isnan(v):
        raise TypeError(f"{owner}: {name} must be a number, got {v!r}")
    v = float(v)
    if v < lo or v > hi or (lo_open and v == lo) or (hi_open and v == hi):
        lb, rb = "(" if lo_open else "[", ")" if hi_open else "]"
        raise ValueError(f"{owner}: {name} must lie in {lb}{lo}, {hi}{rb}, got {v!r}")
    return v


def _steps(v, name, owner, positive=True):
    """A step count (an int, or a float holding one) as an int."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or v != v or int(v) != v:
        raise TypeError(f"{owner}: {name} must be a whole number of steps, got {v!r}")
    v = int(v)
    if v < (1 if positive else 0):
        raise ValueError(f"{owner}: {name} must be {'> 0' if positive else '>= 0'}, got {v}")
    return v


# ---------------------------------------------------------------------------------------------
# Learning-rate schedules (Keras's keras.optimizers.schedules)
# ---------------------------------------------------------------------------------------------

class LearningRateSchedule:
    """Base class of the schedules: ``schedule(step)`` is the learning rate of the update that
    follows ``step`` updates (``step`` counts from 0). A subclass defines ``__call__(step)``
    and, to be saved with a model, ``get_config()``."""

    def __call__(self, step):  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} must define __call__(self, step)")

    def get_config(self) -> dict:
        """The schedule's arguments as a dict, enough to make it again with ``from_config``."""
        raise NotImplementedError(f"{type(self).__name__} must define get_config() to be saved")

    @classmethod
    def from_config(cls, config):
        """The schedule ``get_config`` describes."""
        return cls(**config)

    def __repr__(self):
        try:
            args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "name")
        except NotImplementedError:
            args = "..."
        return f"{type(self).__name__}({args})"


class ExponentialDecay(LearningRateSchedule):
    """``initial_learning_rate * decay_rate ** (step / decay_steps)``; with ``staircase`` the
    exponent is rounded down to a whole number (the rate drops every ``decay_steps`` steps)."""

    def __init__(self, initial_learning_rate, decay_steps, decay_rate, staircase=False,
                 name="ExponentialDecay"):
        owner = "ExponentialDecay"
        self.initial_learning_rate = _number(initial_learning_rate, "initial_learning_rate", owner)
        self.decay_steps = _number(decay_steps, "decay_steps", owner, lo_open=True)
        self.decay_rate = _number(decay_rate, "decay_rate", owner)
        self.staircase = bool(staircase)
        self.name = name

    def __call__(self, step):
        exponent = step / self.decay_steps
        if self.staircase:
            exponent = math.floor(exponent)
        return self.initial_learning_rate * self.decay_rate ** exponent

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate,
                "decay_steps": self.decay_steps, "decay_rate": self.decay_rate,
                "staircase": self.staircase, "name": self.name}


class PiecewiseConstantDecay(LearningRateSchedule):
    """``values[0]`` while ``step <= boundaries[0]``, ``values[i]`` while
    ``boundaries[i-1] < step <= boundaries[i]``, ``values[-1]`` after the last boundary
    (Keras's convention: a boundary step still has the value before it)."""

    def __init__(self, boundaries, values, name="PiecewiseConstant"):
        owner = "PiecewiseConstantDecay"
        boundaries, values = list(boundaries), list(values)
        if len(boundaries) != len(values) - 1:
            raise ValueError(f"{owner}: values must have one more entry than boundaries; got "
                             f"{len(boundaries)} boundaries {boundaries} and {len(values)} "
                             f"values {values}")
        self.boundaries = [_number(b, "boundaries", owner, lo=-math.inf) for b in boundaries]
        if any(b >= c for b, c in zip(self.boundaries, self.boundaries[1:])):
            raise ValueError(f"{owner}: boundaries must increase strictly, got {boundaries}")
        self.values = [_number(v, "values", owner) for v in values]
        self.name = name

    def __call__(self, step):
        return self.values[bisect.bisect_left(self.boundaries, step)]

    def get_config(self):
        return {"boundaries": list(self.boundaries), "values": list(self.values),
                "name": self.name}


class CosineDecay(LearningRateSchedule):
    """Cosine decay after an optional linear warm-up (SGDR without restarts)::

        warm-up (warmup_target given, step < warmup_steps):
            initial_learning_rate + (warmup_target - initial_learning_rate) * step / warmup_steps
        decay (s = min(step - warmup_steps, decay_steps), from top = warmup_target, or
               initial_learning_rate without a warm-up):
            top * ((1 - alpha) * 0.5 * (1 + cos(pi * s / decay_steps)) + alpha)
    """

    def __init__(self, initial_learning_rate, decay_steps, alpha=0.0, name="CosineDecay",
                 warmup_target=None, warmup_steps=0):
        owner = "CosineDecay"
        self.initial_learning_rate = _number(initial_learning_rate, "initial_learning_rate", owner)
        self.decay_steps = _number(decay_steps, "decay_steps", owner, lo_open=True)
        self.alpha = _number(alpha, "alpha", owner, hi=1.0)
        self.name = name
        self.warmup_target = (None if warmup_target is None
                              else _number(warmup_target, "warmup_target", owner))
        self.warmup_steps = _number(warmup_steps, "warmup_steps", owner)
        if self.warmup_target is not None and self.warmup_steps == 0:
            raise ValueError(f"{owner}: a warmup_target ({warmup_target!r}) needs warmup_steps "
                             "> 0, got 0")

    def _decayed(self, s, top):
        cosine = 0.5 * (1.0 + math.cos(math.pi * s / self.decay_steps))
        return top * ((1.0 - self.alpha) * cosine + self.alpha)

    def __call__(self, step):
        if self.warmup_target is None:
            return self._decayed(min(step, self.decay_steps), self.initial_learning_rate)
        s = min(step, self.decay_steps + self.warmup_steps)
        if s < self.warmup_steps:
            done = s / self.warmup_steps
            return (self.warmup_target - self.initial_learning_rate) * done + \
                self.initial_learning_rate
        return self._decayed(s - self.warmup_steps, self.warmup_target)

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate,
                "decay_steps": self.decay_steps, "alpha": self.alpha, "name": self.name,
                "warmup_target": self.warmup_target, "warmup_steps": self.warmup_steps}


_SCHEDULES = {c.__name__: c for c in (ExponentialDecay, PiecewiseConstantDecay, CosineDecay)}


def serialize_schedule(schedule) -> dict:
    """``{"class_name": ..., "config": ...}`` of a schedule (JSON-ready)."""
    return {"class_name": type(schedule).__name__, "config": schedule.get_config()}


def deserialize_schedule(d, custom_objects=None):
    """The schedule ``serialize_schedule`` describes; ``custom_objects`` maps the class names of
    your own schedules to their classes."""
    if isinstance(d, LearningRateSchedule):
        return d
    cls = _class_of(d, "a schedule", "learning-rate schedule", _SCHEDULES, custom_objects)
    return cls.from_config(dict(d.get("config") or {}))


def _class_of(d, what, kind, known, custom_objects):
    """The class a ``{'class_name': ..., 'config': ...}`` dict names, from ``custom_objects``
    first, then from ``known``; a clear error for anything else."""
    if not isinstance(d, dict) or "class_name" not in d:
        raise TypeError(f"{what} must be given as {{'class_name': ..., 'config': ...}}, "
                        f"got {d!r}")
    name = d["class_name"]
    cls = (custom_objects or {}).get(name) or known.get(name)
    if cls is None:
        raise ValueError(f"unknown {kind} {name!r}; expected one of {sorted(known)} or a "
                         "class given in custom_objects")
    return cls


#: ``gpucnn.optimizers.schedules``, as Keras's ``keras.optimizers.schedules``.
schedules = _types.ModuleType(__name__ + ".schedules",
                              "Learning-rate schedules (Keras's keras.optimizers.schedules).")
for _obj in (LearningRateSchedule, ExponentialDecay, PiecewiseConstantDecay, CosineDecay):
    setattr(schedules, _obj.__name__, _obj)
schedules.serialize, schedules.deserialize = serialize_schedule, deserialize_schedule
sys.modules[schedules.__name__] = schedules


# ---------------------------------------------------------------------------------------------
# Optimizers
# ---------------------------------------------------------------------------------------------

class Optimizer:
    """Base class. Keras's common arguments: ``learning_rate`` (a float >= 0 or a
    ``LearningRateSchedule``), ``weight_decay`` (decoupled; None or 0: none), ``clipnorm``,
    ``clipvalue``, ``global_clipnorm`` (at most one), ``name``; an ``iterations`` counter.

    A subclass names its slots in ``_slot_spec`` and defines ``_update(ks, p, g, lr, wd)``.
    """

    def __init__(self, learning_rate, weight_decay=None, clipnorm=None, clipvalue=None,
                 global_clipnorm=None, name=None):
        owner = type(self).__name__
        self._learning_rate = None
        self.learning_rate = learning_rate
        self.weight_decay = _number(weight_decay or 0.0, "weight_decay", owner)
        clips = {"clipnorm": clipnorm, "clipvalue": clipvalue, "global_clipnorm": global_clipnorm}
        given = {k: v for k, v in clips.items() if v is not None}
        if len(given) > 1:
            raise ValueError(f"{owner}: only one of clipnorm, clipvalue and global_clipnorm can "
                             f"be set, got {given}")
        for k, v in clips.items():
            setattr(self, k, None if v is None else _number(v, k, owner, lo_open=True))
        self.name = name or owner
        self.iterations = 0
        self._slots = {}  # id(param) -> (param, slot arrays in _slot_spec() order)
        self._no_decay_ids = set()
        self._no_decay_names = ()

    # -- learning rate ---------------------------------------------------------------------------
    @property
    def learning_rate(self) -> float:
        """The learning rate of the next step: the float given, or the schedule at
        ``iterations``. Setting it is refused when the optimizer was made with a schedule."""
        lr = self._learning_rate
        return float(lr(self.iterations)) if isinstance(lr, LearningRateSchedule) else lr

    @learning_rate.setter
    def learning_rate(self, value) -> None:
        owner = type(self).__name__
        if isinstance(value, LearningRateSchedule):
            self._learning_rate = value
            return
        if isinstance(self._learning_rate, LearningRateSchedule):
            raise TypeError(f"{owner}: this optimizer was made with the schedule "
                            f"{self._learning_rate!r} as its learning_rate, so its learning rate "
                            f"cannot be set to {value!r}; make the optimizer with a float "
                            "learning_rate to change it during training")
        self._learning_rate = _number(value, "learning_rate", owner)

    @property
    def schedule(self):
        """The ``LearningRateSchedule`` the optimizer was made with, or None."""
        lr = self._learning_rate
        return lr if isinstance(lr, LearningRateSchedule) else None

    # -- weight decay --------------------------------------------------------------------------
    def exclude_from_weight_decay(self, var_list=None, var_names=None) -> None:
        """Spare weights from the decay: those in ``var_list`` (Tensors) and those whose name
        (``"C1/bias"``) contains one of the strings in ``var_names`` (``["bias"]``)."""
        self._no_decay_ids = {id(t) for t in (var_list or ())}
        self._no_decay_names = tuple(str(s) for s in (var_names or ()))

    def _decays(self, p) -> bool:
        if id(p) in self._no_decay_ids:
            return False
        name = getattr(p, "name", None) or ""
        return not any(s in name for s in self._no_decay_names)

    # -- slots -------------------------------------------------------------------------------------
    def _slot_spec(self) -> tuple:
        """``((name, initial value), ...)``: the slots each parameter gets."""
        return ()

    def _slot_arrays(self, p) -> tuple:
        spec = self._slot_spec()
        entry = self._slots.get(id(p))
        if (entry is None or entry[0] is not p or len(entry) != len(spec) + 1
                or type(entry[1]) is not type(p.data)):
            # new parameter (or one moved to another backend: its state starts afresh)
            xp = backend.xp()
            entry = (p, *[xp.full_like(p.data, init) for _, init in spec])
            self._slots[id(p)] = entry
        return entry[1:]

    def slot_names(self) -> tuple:
        """The names of the slots each parameter gets (Keras's names), in order."""
        return tuple(name for name, _ in self._slot_spec())

    def get_slot_arrays(self, named_params) -> dict:
        """``{"<path>/<slot>": host array}`` for ``[(path, Tensor)]``: the state a parameter has,
        or the initial state for one not updated yet (what its first update would create)."""
        spec = self._slot_spec()
        if not spec:
            return {}
        ks = backend.kernels()
        out = {}
        for path, p in named_params:
            entry = self._slots.get(id(p))
            if entry is not None and entry[0] is p and len(entry) == len(spec) + 1:
                arrays = [np.array(ks.to_host(a), copy=True) for a in entry[1:]]
            else:
                arrays = [np.full(p.shape, init, dtype=p.dtype) for _, init in spec]
            for (name, _), a in zip(spec, arrays):
                out[f"{path}/{name}"] = a
        return out

    def set_slot_arrays(self, named_params, arrays) -> None:
        """Give each parameter of ``[(path, Tensor)]`` the slots ``arrays["<path>/<slot>"]``
        (as ``get_slot_arrays`` returns them), copied to the active backend. Every array is
        checked before any is set."""
        spec = self._slot_spec()
        problems = []
        for path, p in named_params:
            for name, _ in spec:
                a = arrays.get(f"{path}/{name}")
                if a is None:
                    problems.append(f"missing: {path}/{name} {p.shape}")
                elif tuple(a.shape) != tuple(p.shape) or a.dtype != p.dtype:
                    problems.append(f"{path}/{name}: expected {p.shape} {p.dtype}, got "
                                    f"{tuple(a.shape)} {a.dtype}")
        if problems:
            raise ValueError(f"{type(self).__name__}.set_slot_arrays: the slots do not match "
                             "the parameters; nothing was set:\n  " + "\n  ".join(problems))
        if not spec:
            return
        ks = backend.kernels()
        for path, p in named_params:
            self._slots[id(p)] = (p, *[ks.xp.array(ks.asarray(arrays[f"{path}/{name}"]),
                                                   copy=True) for name, _ in spec])

    # -- one step ------------------------------------------------------------------------------------
    def apply_gradients(self, params) -> None:
        """One update of every Tensor in ``params`` that has a ``.grad`` (also accepts Keras'
        list of ``(grad, param)`` pairs): clipping, weight decay and the update as the module
        docstring says; ``iterations`` then counts one more step."""
        ks = backend.kernels()
        pairs = []
        for p in params:
            if isinstance(p, tuple):
                g, p = p
                if g is None:
                    continue
                g = g.data if isinstance(g, Tensor) else ks.asarray(g)
            else:
                g = p.grad
                if g is None:
                    continue
                g = g.data
            pairs.append((p, g))
        if pairs:
            lr = self.learning_rate
            grads = self._clip([g for _, g in pairs], ks.xp)
            if has(ks, "multi_update") and type(self)._update_many is not Optimizer._update_many:
                groups = {}          # one multi-tensor launch per weight decay (MULTI tensors)
                for (p, _), g in zip(pairs, grads):
                    wd = self.weight_decay if self._decays(p) else 0.0
                    groups.setdefault(wd, ([], []))
                    groups[wd][0].append(p)
                    groups[wd][1].append(g)
                for wd, (ps, gs) in groups.items():
                    self._update_many(ks, ps, gs, lr, wd)
            else:
                for (p, _), g in zip(pairs, grads):
                    self._update(ks, p, g, lr, self.weight_decay if self._decays(p) else 0.0)
        self.iterations += 1

    step = apply_gradients

    def _clip(self, grads, xp):
        """The gradients clipped as Keras clips them (new arrays; the inputs are not changed)."""
        if self.clipnorm is not None:
            out = []
            for g in grads:
                c = g.dtype.type(self.clipnorm)
                norm = xp.sqrt(xp.sum(g * g))                        # ||g||
                out.append(g * c / xp.maximum(norm, c))              # g * c / max(||g||, c)
            return out
        if self.global_clipnorm is not None:
            dt = np.result_type(*[g.dtype for g in grads])
            c = dt.type(self.global_clipnorm)
            norm = xp.sqrt(sum(xp.sum(g * g) for g in grads))        # N of all gradients
            with np.errstate(divide="ignore", invalid="ignore"):
                # c * min(1/N, 1/c); a NaN or infinite N makes every gradient NaN, as in Keras
                scale = c * xp.minimum(1 / norm, 1 / c) + (norm - norm)
            return [g * scale.astype(g.dtype) for g in grads]
        if self.clipvalue is not None:
            return [xp.clip(g, -self.clipvalue, self.clipvalue) for g in grads]
        return grads

    def _update(self, ks, p, g, lr, wd):  # pragma: no cover - abstract
        raise NotImplementedError

    def _update_many(self, ks, ps, gs, lr, wd):
        """The update of many parameters at once, on a kernel set with ``multi_update``
        (a subclass that defines it gets one launch per dozen tensors instead of one each)."""
        raise NotImplementedError

    # -- configuration -----------------------------------------------------------------------------
    def get_config(self) -> dict:
        """The settings (``learning_rate`` and the rest) as a dict, without the step counter."""
        lr = self._learning_rate
        return {"name": self.name,
                "learning_rate": serialize_schedule(lr) if isinstance(lr, LearningRateSchedule)
                else lr,
                "weight_decay": self.weight_decay, "clipnorm": self.clipnorm,
                "clipvalue": self.clipvalue, "global_clipnorm": self.global_clipnorm}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        """The optimizer ``get_config`` describes (a schedule given as a dict is rebuilt)."""
        config = dict(config)
        if isinstance(config.get("learning_rate"), dict):
            config["learning_rate"] = deserialize_schedule(config["learning_rate"],
                                                           custom_objects)
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "name")
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum, Keras 3's formula::

        momentum 0:  p -= lr * g
        momentum:    v = momentum * v - lr * g;  p += v
        Nesterov:    v = momentum * v - lr * g;  p += momentum * v - lr * g

    Slot: ``momentum`` (the velocity v; only when momentum > 0).
    """

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, weight_decay=None,
                 clipnorm=None, clipvalue=None, global_clipnorm=None, name=None):
        super().__init__(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm, name)
        self.momentum = _number(momentum, "momentum", "SGD", 0.0, 1.0)
        self.nesterov = bool(nesterov)

    def _slot_spec(self):
        return (("momentum", 0.0),) if self.momentum else ()

    def _update(self, ks, p, g, lr, wd):
        v = self._slot_arrays(p)[0] if self.momentum else None
        ks.sgd_update(p.data, g, v, lr, self.momentum, self.nesterov, wd)

    def _update_many(self, ks, ps, gs, lr, wd):
        vs = [self._slot_arrays(p)[0] for p in ps] if self.momentum else None
        ks.sgd_update_many([p.data for p in ps], gs, vs, lr, self.momentum, self.nesterov, wd)

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "nesterov": self.nesterov}


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

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                 amsgrad=False, weight_decay=None, clipnorm=None, clipvalue=None,
                 global_clipnorm=None, name=None):
        super().__init__(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm, name)
        owner = type(self).__name__
        self.beta_1 = _number(beta_1, "beta_1", owner, 0.0, 1.0, hi_open=True)
        self.beta_2 = _number(beta_2, "beta_2", owner, 0.0, 1.0, hi_open=True)
        self.epsilon = _number(epsilon, "epsilon", owner)
        self.amsgrad = bool(amsgrad)

    def _slot_spec(self):
        return (("momentum", 0.0), ("velocity", 0.0)) + ((("velocity_hat", 0.0),)
                                                         if self.amsgrad else ())

    def _update(self, ks, p, g, lr, wd):
        slots = self._slot_arrays(p)
        ks.adam_update(p.data, g, slots[0], slots[1], lr, self.beta_1, self.beta_2,
                       self.epsilon, self.iterations + 1, wd,
                       vhat=slots[2] if self.amsgrad else None)

    def _update_many(self, ks, ps, gs, lr, wd):
        slots = [self._slot_arrays(p) for p in ps]
        ks.adam_update_many([p.data for p in ps], gs, [s[0] for s in slots],
                            [s[1] for s in slots], lr, self.beta_1, self.beta_2, self.epsilon,
                            self.iterations + 1, wd,
                            vhats=[s[2] for s in slots] if self.amsgrad else None)

    def get_config(self):
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2,
                "epsilon": self.epsilon, "amsgrad": self.amsgrad}


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

    def __init__(self, learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7, centered=False,
                 weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None,
                 name=None):
        super().__init__(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm, name)
        self.rho = _number(rho, "rho", "RMSprop", 0.0, 1.0, hi_open=True)
        self.momentum = _number(momentum, "momentum", "RMSprop", 0.0, 1.0, hi_open=True)
        self.epsilon = _number(epsilon, "epsilon", "RMSprop")
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
                          momentum=self.momentum, mg=mg)

    def _update_many(self, ks, ps, gs, lr, wd):
        slots = [list(self._slot_arrays(p)) for p in ps]
        vs = [s.pop(0) for s in slots]
        us = [s.pop(0) for s in slots] if self.momentum else None
        mgs = [s.pop(0) for s in slots] if self.centered else None
        ks.rmsprop_update_many([p.data for p in ps], gs, vs, lr, self.rho, self.epsilon, wd,
                               us=us, momentum=self.momentum, mgs=mgs)

    def get_config(self):
        return {**super().get_config(), "rho": self.rho, "momentum": self.momentum,
                "epsilon": self.epsilon, "centered": self.centered}


class Adagrad(Optimizer):
    """Adagrad, Keras 3's formula::

        a += g^2;  p -= lr * g / sqrt(a + epsilon)       (a starts at initial_accumulator_value)

    It runs on the RMSprop kernel with ``rho = 1`` and a gain of 1 on ``g^2``.
    Slot: ``accumulator`` (a).
    """

    def __init__(self, learning_rate=0.001, initial_accumulator_value=0.1, epsilon=1e-7,
                 weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None,
                 name=None):
        super().__init__(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm, name)
        self.initial_accumulator_value = _number(initial_accumulator_value,
                                                 "initial_accumulator_value", "Adagrad")
        self.epsilon = _number(epsilon, "epsilon", "Adagrad")

    def _slot_spec(self):
        return (("accumulator", self.initial_accumulator_value),)

    def _update(self, ks, p, g, lr, wd):
        (a,) = self._slot_arrays(p)
        ks.rmsprop_update(p.data, g, a, lr, 1.0, self.epsilon, wd, gain=1.0)

    def _update_many(self, ks, ps, gs, lr, wd):
        ks.rmsprop_update_many([p.data for p in ps], gs, [self._slot_arrays(p)[0] for p in ps],
                               lr, 1.0, self.epsilon, wd, gain=1.0)

    def get_config(self):
        return {**super().get_config(),
                "initial_accumulator_value": self.initial_accumulator_value,
                "epsilon": self.epsilon}


_BY_NAME = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop, "adagrad": Adagrad}
_CLASSES = {c.__name__: c for c in _BY_NAME.values()}


def serialize(optimizer) -> dict:
    """``{"class_name": ..., "config": ...}`` of an optimizer (JSON-ready)."""
    return {"class_name": type(optimizer).__name__, "config": optimizer.get_config()}


def deserialize(d, custom_objects=None) -> Optimizer:
    """The optimizer ``serialize`` describes (fresh: no slots, ``iterations`` 0);
    ``custom_objects`` maps the class names of your own optimizers and schedules to classes."""
    cls = _class_of(d, "an optimizer", "optimizer", _CLASSES, custom_objects)
    return cls.from_config(dict(d.get("config") or {}), custom_objects)


def get(identifier) -> Optimizer:
    """An optimizer from ``'sgd'``, ``'adam'``, ``'adamw'``, ``'rmsprop'``, ``'adagrad'`` (Keras
    defaults), a ``serialize`` dict, or an instance."""
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, type) and issubclass(identifier, Optimizer):
        return identifier()
    if isinstance(identifier, dict):
        return deserialize(identifier)
    if isinstance(identifier, str):
        cls = _BY_NAME.get(identifier.lower())
        if cls is None:
            raise ValueError(f"unknown optimizer {identifier!r}; expected one of {sorted(_BY_NAME)} "
                             "or an Optimizer")
        return cls()
    raise TypeError(f"an optimizer must be a name or an Optimizer, got {identifier!r}")


__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "get", "serialize",
           "deserialize", "schedules", "LearningRateSchedule", "ExponentialDecay",
           "PiecewiseConstantDecay", "CosineDecay"]
