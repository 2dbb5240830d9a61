"""Callbacks for ``fit``, Keras-style: ``History``, ``EarlyStopping``, ``ModelCheckpoint``,
``ReduceLROnPlateau``, ``LearningRateScheduler``, ``CSVLogger``, ``TerminateOnNaN`` and
``LambdaCallback``.

A callback overrides any of ``on_train_begin/end(logs)``, ``on_epoch_begin/end(epoch, logs)``
and ``on_train_batch_begin/end(batch, logs)``; ``self.model`` is the model being trained.
``logs`` at an epoch's end holds that epoch's ``loss``, metrics and ``val_*`` values. Batch-level
hooks are only called when a callback overrides them (``fit`` then reads the running loss after
every step, which costs a device synchronisation on a GPU).
"""
from __future__ import annotations

from gpucnn.callbacks.base import (Callback, CallbackList, History, LambdaCallback,
                                   TerminateOnNaN, overrides)
from gpucnn.callbacks.files import CSVLogger, ModelCheckpoint
from gpucnn.callbacks.learning_rate import LearningRateScheduler, ReduceLROnPlateau
from gpucnn.callbacks.monitor import EarlyStopping

__all__ = ["Callback", "History", "EarlyStopping", "ModelCheckpoint", "ReduceLROnPlateau",
           "LearningRateScheduler", "CSVLogger", "TerminateOnNaN", "LambdaCallback"]
