"""The callback protocol of ``fit``, the list ``fit`` calls it through, and the callbacks that
only record or react to the logs: ``History``, ``TerminateOnNaN``, ``LambdaCallback``."""
from __future__ import annotations

import math


class Callback:
    """Base class of the callbacks of ``fit``: override the ``on_*`` hooks you need."""

    #: With several MPI ranks (``gpucnn.distributed``) every callback runs on every rank (with
    #: the same logs); one that only writes out (files, pictures) says True and runs on rank 0
    #: alone.
    main_rank_only = False

    def __init__(self):
        self.model = None
        self.params = {}

    def set_model(self, model):
        """Called by ``fit`` before training; ``self.model`` is then the model being trained."""
        self.model = model

    def set_params(self, params):
        """Called by ``fit`` before training; ``self.params`` holds epochs, steps and verbose."""
        self.params = params

    def on_train_begin(self, logs=None):
        """Called once when ``fit`` starts, before the first epoch."""

    def on_train_end(self, logs=None):
        """Called once when ``fit`` has finished (also when a callback stopped it early)."""

    def on_epoch_begin(self, epoch, logs=None):
        """Called at the start of epoch ``epoch`` (counted from 0)."""

    def on_epoch_end(self, epoch, logs=None):
        """Called after epoch ``epoch``; ``logs`` holds its loss, metrics and ``val_*`` values."""

    def on_train_batch_begin(self, batch, logs=None):
        """Called before step ``batch`` (from 0) of the epoch; only if a callback overrides it."""

    def on_train_batch_end(self, batch, logs=None):
        """Called after step ``batch`` with the running loss and metrics in ``logs``; only if
        a callback overrides it."""


def overrides(cb: Callback, hook: str) -> bool:
    return getattr(type(cb), hook, None) is not getattr(Callback, hook)


class History(Callback):
    """Records the epoch logs: ``history.history['loss']`` is the list of per-epoch losses."""

    def __init__(self):
        super().__init__()
        self.history = {}
        self.epoch = []

    def on_train_begin(self, logs=None):
        self.epoch = []

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for k, v in (logs or {}).items():
            self.history.setdefault(k, []).append(v)


class TerminateOnNaN(Callback):
    """Stop training when an epoch's loss is NaN or infinite (``fit`` itself already raises on a
    non-finite loss; this stops quietly instead)."""

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            print(f"Epoch {epoch + 1}: invalid loss, terminating training")
            self.model.stop_training = True


class LambdaCallback(Callback):
    """A callback from plain functions: ``LambdaCallback(on_epoch_end=lambda epoch, logs: ...)``."""

    def __init__(self, on_epoch_begin=None, on_epoch_end=None, on_train_begin=None,
                 on_train_end=None, on_train_batch_begin=None, on_train_batch_end=None):
        super().__init__()
        for hook, fn in (("on_epoch_begin", on_epoch_begin), ("on_epoch_end", on_epoch_end),
                         ("on_train_begin", on_train_begin), ("on_train_end", on_train_end),
                         ("on_train_batch_begin", on_train_batch_begin),
                         ("on_train_batch_end", on_train_batch_end)):
            if fn is not None:
                setattr(self, hook, fn)

    def _has(self, hook):
        return hook in self.__dict__


class CallbackList:
    """Dispatches to callbacks; batch hooks only to those that define them."""

    def __init__(self, callbacks, model, params):
        self.callbacks = list(callbacks)
        for cb in self.callbacks:
            if not isinstance(cb, Callback):
                raise TypeError(f"fit: callbacks must be Callback instances, got {cb!r}")
            cb.set_model(model)
            cb.set_params(params)

        def having(hook):
            return [cb for cb in self.callbacks
                    if (cb._has(hook) if isinstance(cb, LambdaCallback) else overrides(cb, hook))]

        self.batch_begin = having("on_train_batch_begin")
        self.batch_end = having("on_train_batch_end")

    def call(self, hook, *args):
        for cb in self.callbacks:
            getattr(cb, hook)(*args)


__all__ = ["Callback", "CallbackList", "History", "LambdaCallback", "TerminateOnNaN", "overrides"]
