"""Learning-rate schedules, as Keras's ``keras.optimizers.schedules``: a schedule is accepted
wherever an optimizer takes a learning rate.

>>> from gpucnn.optimizers import schedules
>>> lr = schedules.ExponentialDecay(1e-3, decay_steps=100, decay_rate=0.5)
>>> lr(200)
0.00025
"""
from __future__ import annotations

import bisect
import math

from gpucnn.optimizers._args import class_of, number


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
        self.initial_learning_rate = number(initial_learning_rate, "initial_learning_rate", owner)
        self.decay_steps = number(decay_steps, "decay_steps", owner, lo_open=True)
        self.decay_rate = number(decay_rate, "decay_rate", owner)
        self.staircase = bool(staircase)
        self.name = name

    def __call__(self, step):
        exponent = step / self.decay_steps
        if self.staircase:
            exponent = math.floor(exponent)
        try:
            return self.initial_learning_rate * self.decay_rate ** exponent
        except OverflowError:          # a growing rate past float's range (the update refuses it)
            return math.inf

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
        self.boundaries = [number(b, "boundaries", owner, lo=-math.inf) for b in boundaries]
        if any(b >= c for b, c in zip(self.boundaries, self.boundaries[1:])):
            raise ValueError(f"{owner}: boundaries must increase strictly, got {boundaries}")
        self.values = [number(v, "values", owner) for v in values]
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
        self.initial_learning_rate = number(initial_learning_rate, "initial_learning_rate", owner)
        self.decay_steps = number(decay_steps, "decay_steps", owner, lo_open=True)
        self.alpha = number(alpha, "alpha", owner, hi=1.0)
        self.name = name
        self.warmup_target = (None if warmup_target is None
                              else number(warmup_target, "warmup_target", owner))
        self.warmup_steps = number(warmup_steps, "warmup_steps", owner)
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


def serialize(schedule) -> dict:
    """``{"class_name": ..., "config": ...}`` of a schedule (JSON-ready)."""
    return {"class_name": type(schedule).__name__, "config": schedule.get_config()}


def deserialize(d, custom_objects=None):
    """The schedule ``serialize`` describes; ``custom_objects`` maps the class names of
    your own schedules to their classes."""
    if isinstance(d, LearningRateSchedule):
        return d
    cls = class_of(d, "a schedule", "learning-rate schedule", _SCHEDULES, custom_objects)
    return cls.from_config(dict(d.get("config") or {}))


__all__ = ["LearningRateSchedule", "ExponentialDecay", "PiecewiseConstantDecay", "CosineDecay",
           "serialize", "deserialize"]
