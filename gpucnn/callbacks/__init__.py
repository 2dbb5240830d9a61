"""Callbacks for ``fit``, Keras-style: ``History``, ``EarlyStopping``, ``ModelCheckpoint``,
``ReduceLROnPlateau``, ``LearningRateScheduler``, ``CSVLogger``, ``TerminateOnNaN`` and
``LambdaCallback``.

A callback overrides the ``on_*`` hooks of ``Callback`` it needs. Batch-level hooks are only
called when a callback overrides them (``fit`` then reads the running loss after every step,
which costs a device synchronisation on a GPU).
"""
from __future__ import annotations

from gpucnn.callbacks.base import (Callback, CallbackList, History, LambdaCallback,
                                   TerminateOnNaN, overrides)
from gpucnn.callbacks.files import CSVLogger, ModelCheckpoint
from gpucnn.callbacks.learning_rate import LearningRateScheduler, ReduceLROnPlateau
from gpucnn.callbacks.monitor import EarlyStopping

__all__ = ["Callback", "History", "EarlyStopping", "ModelCheckpoint", "ReduceLROnPlateau",
           "LearningRateScheduler", "CSVLogger", "TerminateOnNaN", "LambdaCallback"]
