"""Callbacks that write files during ``fit`` (on rank 0 alone with several MPI ranks):
``ModelCheckpoint`` and ``CSVLogger``, both through ``gpucnn.io.write_atomic``."""
from __future__ import annotations

import csv
import io as _stdio
import os

from gpucnn import io as _io
from gpucnn.callbacks.base import Callback
from gpucnn.callbacks.monitor import _Monitor


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
        """Fail now rather than after the first epoch: the architecture, the format fields (with
        the logs ``fit`` will give), the folder and the file the first epoch would write."""
        if not self.save_weights_only:
            try:
                self.model.get_config()
            except ValueError as e:
                raise ValueError(f"ModelCheckpoint: cannot save the whole model: {e}; pass "
                                 "save_weights_only=True to save the weights alone") from None
        names = list((self.params or {}).get("metrics") or ()) + ["learning_rate", self.monitor]
        _io.check_writable(self._path(0, {k: 0.0 for k in names}), "ModelCheckpoint")

    def _path(self, epoch, logs):
        try:
            return self.filepath.format(epoch=epoch + 1, **logs)
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"ModelCheckpoint: cannot format filepath {self.filepath!r} with epoch "
                             f"and the logs {sorted(logs)}: {type(e).__name__}: {e}") from None

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        path = self._path(epoch, logs)
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
            self.model.save(path, overwrite=None)        # a read-only file is refused


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
        _io.check_writable(self.filename, "CSVLogger")  # now, not after the first epoch
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


__all__ = ["CSVLogger", "ModelCheckpoint"]
