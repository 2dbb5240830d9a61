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

import csv
import inspect
import io as _stdio
import math
import numbers
import os
import warnings

from gpucnn import io as _io


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
        pass

    def on_train_end(self, logs=None):
        """Called once when ``fit`` has finished (also when a callback stopped it early)."""
        pass

    def on_epoch_begin(self, epoch, logs=None):
        """Called at the start of epoch ``epoch`` (counted from 0)."""
        pass

    def on_epoch_end(self, epoch, logs=None):
        """Called after epoch ``epoch``; ``logs`` holds its loss, metrics and ``val_*`` values."""
        pass

    def on_train_batch_begin(self, batch, logs=None):
        """Called before step ``batch`` (from 0) of the epoch; only if a callback overrides it."""
        pass

    def on_train_batch_end(self, batch, logs=None):
        """Called after step ``batch`` with the running loss and metrics in ``logs``; only if
        a callback overrides it."""
        pass


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


def _mode_op(mode: str, monitor: str, owner: str):
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"{owner}: mode must be 'auto', 'min' or 'max', got {mode!r}")
    if mode == "auto":
        m = monitor.lower()
        mode = "max" if ("acc" in m or m.endswith("auc")) else "min"
    return mode


class _Monitor(Callback):
    def __init__(self, monitor, mode, min_delta=0.0):
        super().__init__()
        self.monitor = monitor
        self.mode = _mode_op(mode, monitor, type(self).__name__)
        self.min_delta = abs(float(min_delta))

    def _improved(self, current, reference) -> bool:
        if reference is None:
            return True
        if self.mode == "min":
            return current + self.min_delta < reference
        return current - self.min_delta > reference

    def _current(self, logs):
        v = (logs or {}).get(self.monitor)
        if v is None:
            warnings.warn(f"{type(self).__name__}: the monitored value {self.monitor!r} is not in the "
                          f"logs (available: {sorted(logs or {})}); skipping", RuntimeWarning,
                          stacklevel=3)
        return v


class EarlyStopping(_Monitor):
    """Stop training when ``monitor`` has not improved for ``patience`` epochs.

    ``min_delta``: the smallest change that counts as an improvement; ``baseline``: a value to
    beat; ``restore_best_weights``: at the end of training, put back the weights of the best epoch;
    ``start_from_epoch``: epochs of warm-up during which nothing is monitored.
    """

    def __init__(self, monitor="val_loss", min_delta=0.0, patience=0, verbose=0, mode="auto",
                 baseline=None, restore_best_weights=False, start_from_epoch=0):
        super().__init__(monitor, mode, min_delta)
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
            raise ValueError(f"EarlyStopping: patience must be an int >= 0, got {patience!r}")
        self.patience = patience
        self.verbose = verbose
        self.baseline = baseline
        self.restore_best_weights = bool(restore_best_weights)
        self.start_from_epoch = int(start_from_epoch)
        self._reset()

    def _reset(self):
        self.wait = 0
        self.stopped_epoch = 0
        self.best = None
        self.best_epoch = 0
        self.best_weights = None

    def on_train_begin(self, logs=None):
        self._reset()

    def on_epoch_end(self, epoch, logs=None):
        current = self._current(logs)
        if current is None or epoch < self.start_from_epoch:
            return
        if self.restore_best_weights and self.best_weights is None:
            self.best_weights = self.model.get_weights()
        self.wait += 1
        if self._improved(current, self.best):
            self.best, self.best_epoch = current, epoch
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            if self.baseline is None or self._improved(current, self.baseline):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.stopped_epoch > 0 and self.verbose > 0:
            print(f"Epoch {self.stopped_epoch + 1}: early stopping")
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose > 0:
                print(f"Restoring model weights from the end of the best epoch: {self.best_epoch + 1}.")
            self.model.set_weights(self.best_weights)


class ModelCheckpoint(_Monitor):
    """Save the model after each epoch: the whole model by default (``Model.save``: architecture,
    weights, compile settings and optimizer state, read back by ``gpucnn.models.load_model``,
    so training resumes where it stopped; ``load_weights`` also takes its weights), or with
    ``save_weights_only=True`` the weights alone (``Model.save_weights``). Either is one
    ``.npz`` archive written atomically.

    ``filepath`` may hold format fields: ``'ckpt-{epoch:02d}-{val_loss:.3f}.npz'``.
    ``save_best_only`` saves only when ``monitor`` improves. A model whose architecture cannot be
    written (a custom activation function, say) is refused when training starts, unless
    ``save_weights_only``.
    """

    main_rank_only = True

    def __init__(self, filepath, monitor="val_loss", verbose=0, save_best_only=False,
                 save_weights_only=False, mode="auto", save_freq="epoch", initial_value_threshold=None):
        super().__init__(monitor, mode)
        if save_freq != "epoch":
            raise ValueError(f"ModelCheckpoint: only save_freq='epoch' is supported, got {save_freq!r}")
        self.filepath = str(filepath)
        self.verbose = verbose
        self.save_best_only = bool(save_best_only)
        self.save_weights_only = bool(save_weights_only)
        self.best = initial_value_threshold

    def on_train_begin(self, logs=None):
        if not self.save_weights_only:
            try:
                self.model.get_config()      # fail now rather than after the first epoch
            except ValueError as e:
                raise ValueError(f"ModelCheckpoint: cannot save the whole model: {e}; pass "
                                 "save_weights_only=True to save the weights alone") from None

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        try:
            path = self.filepath.format(epoch=epoch + 1, **logs)
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"ModelCheckpoint: cannot format filepath {self.filepath!r} with epoch "
                             f"and the logs {sorted(logs)}: {e}") from None
        if self.save_best_only:
            current = self._current(logs)
            if current is None or not self._improved(current, self.best):
                if self.verbose > 0 and current is not None:
                    print(f"Epoch {epoch + 1}: {self.monitor} did not improve from {self.best}")
                return
            if self.verbose > 0:
                print(f"Epoch {epoch + 1}: {self.monitor} improved from {self.best} to {current}, "
                      f"saving model to {path}")
            self.best = current
        elif self.verbose > 0:
            print(f"Epoch {epoch + 1}: saving model to {path}")
        if self.save_weights_only:
            self.model.save_weights(path)
        else:
            self.model.save(path)


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
        for name, v in (("patience", patience), ("cooldown", cooldown)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{owner}: {name} must be an int >= 0, got {v!r}")
        if isinstance(min_lr, bool) or not isinstance(min_lr, numbers.Real) or min_lr < 0:
            raise ValueError(f"{owner}: min_lr must be a number >= 0, got {min_lr!r}")
        self.factor, self.patience, self.verbose = float(factor), patience, verbose
        self.cooldown, self.min_lr = cooldown, float(min_lr)
        self._reset()

    def _reset(self):
        self.wait = 0
        self.cooldown_counter = 0
        self.best = None

    def on_train_begin(self, logs=None):
        self._reset()

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


class CSVLogger(Callback):
    """Write each epoch's logs as a row of a CSV file: ``epoch`` (from 0), then the logged
    values in the order of their sorted names (Keras's layout; a value missing from a later
    epoch is written ``NA``).

    The file is rewritten whole after every epoch through ``gpucnn.io.write_atomic`` (a
    temporary file renamed over it), so a reader, or a crash, never finds half a row. With
    ``append=True`` the rows follow those already in the file, which must have the same
    columns; otherwise the file starts afresh at ``fit``.
    """

    main_rank_only = True

    def __init__(self, filename, separator=",", append=False):
        super().__init__()
        self.filename = os.fspath(filename)
        if not isinstance(separator, str) or len(separator) != 1:
            raise ValueError(f"CSVLogger: separator must be one character, got {separator!r}")
        self.sep = separator
        self.append = bool(append)
        self.keys = None
        self._prefix = ""
        self._rows = []
        self._old_header = None

    def on_train_begin(self, logs=None):
        self.keys = None
        self._rows = []
        self._prefix, self._old_header = "", None
        if self.append and os.path.exists(self.filename):
            with open(self.filename, encoding="utf-8", newline="") as f:
                text = f.read()
            if text.strip():
                if not text.endswith(("\n", "\r")):
                    text += "\r\n"
                self._prefix = text
                self._old_header = next(csv.reader(_stdio.StringIO(text), delimiter=self.sep))

    @staticmethod
    def _value(v):
        if isinstance(v, str):
            return v
        if hasattr(v, "__len__") and not (hasattr(v, "ndim") and v.ndim == 0):
            return f"[{', '.join(map(str, v))}]"
        return v

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.keys is None:
            self.keys = sorted(logs)
            columns = ["epoch"] + self.keys
            if self._old_header is not None and self._old_header != columns:
                raise ValueError(f"CSVLogger: {self.filename!r} has the columns "
                                 f"{self._old_header}, but this training logs {columns}; "
                                 "append=True needs the same columns (use another file, or "
                                 "append=False to start it afresh)")
        row = [epoch] + [self._value(logs[k]) if k in logs else "NA" for k in self.keys]
        self._rows.append(row)
        out = _stdio.StringIO()
        writer = csv.writer(out, delimiter=self.sep)
        if self._old_header is None:
            writer.writerow(["epoch"] + self.keys)
        writer.writerows(self._rows)
        data = (self._prefix + out.getvalue()).encode("utf-8")
        _io.write_atomic(self.filename, lambda f: f.write(data))


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


__all__ = ["Callback", "History", "EarlyStopping", "ModelCheckpoint", "ReduceLROnPlateau",
           "LearningRateScheduler", "CSVLogger", "TerminateOnNaN", "LambdaCallback"]
