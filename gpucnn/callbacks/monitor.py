"""Callbacks that watch one logged value: the ``monitor``/``mode``/``min_delta`` logic shared by
``EarlyStopping``, ``ModelCheckpoint`` and ``ReduceLROnPlateau``, and ``EarlyStopping``."""
from __future__ import annotations

import warnings

from gpucnn.callbacks.base import Callback


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
        if self.min_delta != self.min_delta:       # NaN: every comparison would say "worse"
            raise ValueError(f"{type(self).__name__}: min_delta must be a number >= 0, got "
                             f"{min_delta!r}")

    def _count(self, v, name):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{type(self).__name__}: {name} must be an int >= 0, got {v!r}")
        return v

    def on_train_begin(self, logs=None):
        self._reset()

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
        self.patience = self._count(patience, "patience")
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


__all__ = ["EarlyStopping"]
