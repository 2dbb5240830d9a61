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

from gpucnn.optimizers import schedules
from gpucnn.optimizers._args import class_of
from gpucnn.optimizers.algorithms import SGD, Adagrad, Adam, AdamW, RMSprop
from gpucnn.optimizers.optimizer import NonFiniteUpdateError, Optimizer
from gpucnn.optimizers.schedules import (CosineDecay, ExponentialDecay, LearningRateSchedule,
                                         PiecewiseConstantDecay)

_BY_NAME = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop, "adagrad": Adagrad}
_CLASSES = {c.__name__: c for c in _BY_NAME.values()}


def serialize(optimizer) -> dict:
    """``{"class_name": ..., "config": ...}`` of an optimizer (JSON-ready)."""
    return {"class_name": type(optimizer).__name__, "config": optimizer.get_config()}


def deserialize(d, custom_objects=None) -> Optimizer:
    """The optimizer ``serialize`` describes (fresh: no slots, ``iterations`` 0);
    ``custom_objects`` maps the class names of your own optimizers and schedules to classes."""
    cls = class_of(d, "an optimizer", "optimizer", _CLASSES, custom_objects)
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


__all__ = ["Optimizer", "NonFiniteUpdateError", "SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "get",
           "serialize", "deserialize", "schedules", "LearningRateSchedule", "ExponentialDecay",
           "PiecewiseConstantDecay", "CosineDecay"]
