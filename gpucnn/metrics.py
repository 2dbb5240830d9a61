"""Metrics as Keras names them, accumulated over an epoch where the data lives.

A metric keeps a running total as an array of the active backend (no host copy per step) and a
count on the host; ``result()`` reads the total back once. ``compile(metrics=['accuracy'])`` picks
the accuracy that fits the loss (sparse labels, one-hot rows, or binary outputs), as Keras does.

>>> import numpy as np
>>> from gpucnn import metrics
>>> m = metrics.SparseCategoricalAccuracy()
>>> m.update_state(np.array([0, 1]), np.array([[0.9, 0.1], [0.8, 0.2]], np.float32))
>>> m.result()
0.5
"""
from __future__ import annotations

import numpy as np

from gpucnn import backend
from gpucnn.autograd import Tensor


def _array(a):
    return a.data if isinstance(a, Tensor) else backend.kernels().asarray(a)


class Metric:
    """A running mean: ``update_state(y_true, y_pred)`` adds a batch, ``result()`` reads it.

    ``logits=True`` in ``update_state`` says that ``y_pred`` holds the logits before a final
    softmax/sigmoid (as ``fit`` passes them when it fuses the loss); metrics that need
    probabilities set ``needs_probabilities`` and then get probabilities instead.
    """

    needs_probabilities = False

    def __init__(self, name=None):
        self.name = name or self.default_name
        self.reset_state()

    def reset_state(self):
        """Start a new running mean (``fit`` and ``evaluate`` call it at every epoch)."""
        self._total = 0.0
        self._count = 0

    def batch_total(self, y_true, y_pred, logits):  # pragma: no cover - abstract
        """``(sum over the batch, number of items)``; the sum may stay on the device."""
        raise NotImplementedError

    def update_state(self, y_true, y_pred, logits=False):
        """Add one batch; ``logits`` says ``y_pred`` comes before the model's final activation."""
        s, n = self.batch_total(_array(y_true), _array(y_pred), logits)
        self._total = self._total + s
        self._count += n

    def result(self) -> float:
        """The running mean over every batch added since the last reset (0.0 before any)."""
        if self._count == 0:
            return 0.0
        return float(backend.kernels().to_host(self._total)) / self._count

    def __call__(self, y_true, y_pred):
        self.update_state(y_true, y_pred)
        return self.result()

    def __repr__(self):
        return f"{type(self).__name__}(name={self.name!r})"


class SparseCategoricalAccuracy(Metric):
    """Share of rows whose largest output is at the integer label."""

    default_name = "sparse_categorical_accuracy"

    def batch_total(self, y_true, y_pred, logits):
        pred = y_pred.argmax(axis=-1)
        return (pred == y_true.reshape(pred.shape)).sum(), pred.size


class CategoricalAccuracy(Metric):
    """Share of rows whose largest output is where the one-hot target's largest value is."""

    default_name = "categorical_accuracy"

    def batch_total(self, y_true, y_pred, logits):
        pred = y_pred.argmax(axis=-1)
        return (pred == y_true.argmax(axis=-1)).sum(), pred.size


class BinaryAccuracy(Metric):
    """Share of outputs on the same side of ``threshold`` as the 0/1 target."""

    default_name = "binary_accuracy"

    def __init__(self, name=None, threshold=0.5):
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"BinaryAccuracy: threshold must lie in (0, 1), got {threshold!r}")
        self.threshold = float(threshold)
        super().__init__(name)

    def batch_total(self, y_true, y_pred, logits):
        cut = float(np.log(self.threshold / (1.0 - self.threshold))) if logits else self.threshold
        pred = y_pred > cut
        return (pred == (y_true.reshape(pred.shape) > 0.5)).sum(), pred.size


class _AccuracyByShape(Metric):
    """``'accuracy'`` with a loss that does not say which: binary for one output per sample,
    sparse for integer labels, categorical for one-hot rows (Keras decides from the shapes too)."""

    default_name = "accuracy"

    def batch_total(self, y_true, y_pred, logits):
        if y_pred.shape[-1] == 1:
            return BinaryAccuracy.batch_total(self, y_true, y_pred, logits)
        if y_true.ndim == y_pred.ndim and y_true.shape[-1] == y_pred.shape[-1]:
            return CategoricalAccuracy.batch_total(self, y_true, y_pred, logits)
        return SparseCategoricalAccuracy.batch_total(self, y_true, y_pred, logits)

    threshold = 0.5


class MeanSquaredError(Metric):
    """The mean of ``(y_pred - y_true) ** 2`` over every output seen."""
    default_name = "mean_squared_error"
    needs_probabilities = True

    def batch_total(self, y_true, y_pred, logits):
        t = y_true.reshape(y_pred.shape).astype(y_pred.dtype, copy=False)
        return backend.kernels().loss_forward("mse", t, y_pred)[0] * t.size, t.size


class MeanAbsoluteError(Metric):
    """The mean of ``|y_pred - y_true|`` over every output seen."""
    default_name = "mean_absolute_error"
    needs_probabilities = True

    def batch_total(self, y_true, y_pred, logits):
        t = y_true.reshape(y_pred.shape).astype(y_pred.dtype, copy=False)
        return backend.kernels().loss_forward("mae", t, y_pred)[0] * t.size, t.size


_BY_NAME = {
    "sparse_categorical_accuracy": SparseCategoricalAccuracy,
    "categorical_accuracy": CategoricalAccuracy,
    "binary_accuracy": BinaryAccuracy,
    "mse": MeanSquaredError, "mean_squared_error": MeanSquaredError,
    "mae": MeanAbsoluteError, "mean_absolute_error": MeanAbsoluteError,
}
_ACCURACY_FOR_LOSS = {"sparse": SparseCategoricalAccuracy, "categorical": CategoricalAccuracy,
                      "binary": BinaryAccuracy}


def get(identifier, loss_kind=None) -> Metric:
    """A ``Metric`` from a name or an instance; ``'accuracy'``/``'acc'`` follow the loss's kind."""
    if isinstance(identifier, Metric):
        return identifier
    if isinstance(identifier, type) and issubclass(identifier, Metric):
        return identifier()
    if isinstance(identifier, str):
        key = identifier.lower()
        if key in ("accuracy", "acc"):
            cls = _ACCURACY_FOR_LOSS.get(loss_kind, _AccuracyByShape)
            return cls(name=identifier)
        cls = _BY_NAME.get(key)
        if cls is None:
            raise ValueError(f"unknown metric {identifier!r}; expected 'accuracy' or one of "
                             f"{sorted(_BY_NAME)}")
        return cls(name=identifier)
    raise TypeError(f"a metric must be a name or a Metric, got {identifier!r}")


__all__ = ["Metric", "get", "SparseCategoricalAccuracy", "CategoricalAccuracy", "BinaryAccuracy",
           "MeanSquaredError", "MeanAbsoluteError"]
