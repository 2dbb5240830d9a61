"""Callbacks that change the optimizer's learning rate: ``ReduceLROnPlateau`` and
``LearningRateScheduler``."""
from __future__ import annotations

import inspect
import math
import numbers

from gpucnn.callbacks.base import Callback
from gpucnn.callbacks.monitor import _Monitor


def _current_lr(model, owner) -> float:
    opt = getattr(model, "optimizer", None)
    if opt is None:
        raise RuntimeError(f"{owner}: the model has no optimizer; compile it first")
    return float(opt.learning_rate)


class ReduceLROnPlateau(_Monitor):
    """Multiply the learning rate by ``factor`` when ``monitor`` has not improved for
    ``patience`` epochs (Keras's rule).

    An improvement is a change beyond ``min_delta`` in the direction of ``mode``; after a
    reduction, ``cooldown`` epochs pass before the waiting starts again; the rate never goes
    below ``min_lr``. Each epoch's ``logs`` get ``learning_rate``. An optimizer made with a
    learning-rate schedule cannot have its rate set: that is a TypeError at the first reduction.
    """

    def __init__(self, monitor="val_loss", factor=0.1, patience=10, verbose=0, mode="auto",
                 min_delta=1e-4, cooldown=0, min_lr=0.0):
        super().__init__(monitor, mode, min_delta)
        owner = "ReduceLROnPlateau"
        if isinstance(factor, bool) or not isinstance(factor, numbers.Real) or not 0 < factor < 1:
            raise ValueError(f"{owner}: factor must lie in (0, 1), got {factor!r}")
        self.patience = self._count(patience, "patience")
        self.cooldown = self._count(cooldown, "cooldown")
        if isinstance(min_lr, bool) or not isinstance(min_lr, numbers.Real) or min_lr < 0:
            raise ValueError(f"{owner}: min_lr must be a number >= 0, got {min_lr!r}")
        self.factor, self.verbose, self.min_lr = float(factor), verbose, float(min_lr)
        self._reset()

    def _reset(self):
        self.wait = 0
        self.cooldown_counter = 0
        self.best = None

    def in_cooldown(self) -> bool:
        """Whether the cooldown after the last reduction is still running (no new reduction yet)."""
        return self.cooldown_counter > 0

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        logs["learning_rate"] = _current_lr(self.model, "ReduceLROnPlateau")
        current = self._current(logs)
        if current is None:
            return
        if self.in_cooldown():
            self.cooldown_counter -= 1
            self.wait = 0
        if self._improved(current, self.best):
            self.best = current
            self.wait = 0
        elif not self.in_cooldown():
            self.wait += 1
            if self.wait >= self.patience:
                old = _current_lr(self.model, "ReduceLROnPlateau")
                if old > self.min_lr:
                    new = max(old * self.factor, self.min_lr)
                    self.model.optimizer.learning_rate = new
                    if self.verbose > 0:
                        print(f"Epoch {epoch + 1}: ReduceLROnPlateau reducing learning rate "
                              f"to {new}.")
                    self.cooldown_counter = self.cooldown
                    self.wait = 0


def _positional_arity(fn):
    """How many positional arguments ``fn`` takes (None when it cannot be told)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return 2
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)


class LearningRateScheduler(Callback):
    """Set the learning rate at the start of each epoch to ``schedule(epoch, lr)`` (``epoch``
    from 0, ``lr`` the current rate; a ``schedule(epoch)`` of one argument works too, as in
    Keras). Each epoch's ``logs`` get ``learning_rate``."""

    def __init__(self, schedule, verbose=0):
        super().__init__()
        if not callable(schedule):
            raise TypeError(f"LearningRateScheduler: schedule must be a function "
                            f"schedule(epoch, lr), got {schedule!r}")
        self.schedule = schedule
        self.verbose = verbose

    def on_epoch_begin(self, epoch, logs=None):
        lr = _current_lr(self.model, "LearningRateScheduler")
        if _positional_arity(self.schedule) == 1:
            new = self.schedule(epoch)
        else:
            new = self.schedule(epoch, lr)
        if isinstance(new, bool) or not isinstance(new, numbers.Real) or math.isnan(new):
            raise ValueError(f"LearningRateScheduler: the schedule must return a float, got "
                             f"{new!r} for epoch {epoch}")
        self.model.optimizer.learning_rate = float(new)
        if self.verbose > 0:
            print(f"Epoch {epoch + 1}: LearningRateScheduler setting learning rate to {new}.")

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = _current_lr(self.model, "LearningRateScheduler")


__all__ = ["LearningRateScheduler", "ReduceLROnPlateau"]
