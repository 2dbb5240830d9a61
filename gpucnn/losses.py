"""Losses as Keras names them, each ``loss(y_true, y_pred) -> scalar Tensor`` (the batch mean).

``model.compile(loss=...)`` takes a name (``'sparse_categorical_crossentropy'``,
``'categorical_crossentropy'``, ``'binary_crossentropy'``, ``'mse'``, ``'mae'``), a ``Loss`` object,
or any callable ``f(y_true, y_pred)`` returning a Tensor.

When a model ends in a softmax (or a sigmoid) and its loss is a (sparse) categorical (or binary)
cross-entropy on probabilities, ``fit`` and ``evaluate`` compute the loss from the logits instead
(``from_logits=True``: the fused, stable kernel), as Keras does internally; the value is the same up to
Keras' clipping of probabilities at 1e-7.

On probabilities the losses are Keras 3's (on TensorFlow) in every corner: both categorical
cross-entropies divide each row by its sum (rows that do not sum to 1 are normalised; for
``sparse_categorical_crossentropy`` after the clip, for ``categorical_crossentropy`` before it),
and gradients pass the ``[1e-7, 1 - 1e-7]`` clip on its bounds (see ``gpucnn.functional.loss``).

>>> import numpy as np
>>> from gpucnn import losses
>>> round(float(losses.get("mse")(np.array([[1.0, 2.0]], np.float32), np.array([[1.0, 4.0]], np.float32))), 4)
2.0
"""
from __future__ import annotations

import gpucnn.functional as F
from gpucnn.autograd import Tensor
from gpucnn.functional.loss import mae as _mae


class Loss:
    """Base class. ``kind`` tells ``fit`` how to check targets: ``sparse`` (integer labels),
    ``categorical`` (one-hot rows), ``binary`` (0/1 per output), ``regression`` or None (custom).
    ``fuses`` names the final activation whose logits this loss can take instead."""

    kind = None
    fuses = None
    #: Whether the value is a mean over the samples of the batch: a training step may then be
    #: computed as parts of the batch whose losses, weighted by their share, add up to it
    #: (``gpucnn.parallel``). A subclass whose ``call`` is not such a mean sets it to False.
    batch_mean = False

    def __init__(self, from_logits: bool = False, name: str | None = None):
        self.from_logits = bool(from_logits)
        self.name = name or _default_name(type(self).__name__)

    def __call__(self, y_true, y_pred):
        return self.call(y_true, y_pred, self.from_logits)

    def call(self, y_true, y_pred, from_logits):  # pragma: no cover - abstract
        """The batch mean as a scalar Tensor; ``y_pred`` holds logits when ``from_logits``."""
        raise NotImplementedError

    def get_config(self) -> dict:
        """The constructor arguments (``name``, ``from_logits``) as a dict."""
        return {"name": self.name, "from_logits": self.from_logits}

    @classmethod
    def from_config(cls, config):
        """The loss ``get_config`` describes."""
        return cls(**config)

    def __repr__(self):
        return f"{type(self).__name__}(from_logits={self.from_logits})"


def _default_name(cls_name):
    """``MeanSquaredError`` -> ``mean_squared_error``: a ``_`` before each capital but the first."""
    return "".join("_" + ch.lower() if ch.isupper() and i else ch.lower()
                   for i, ch in enumerate(cls_name))


class SparseCategoricalCrossentropy(Loss):
    """Integer labels ``(N,)`` against probabilities (or logits) ``(N, K)``."""

    kind, fuses = "sparse", "softmax"
    batch_mean = True

    def call(self, y_true, y_pred, from_logits):
        return F.sparse_categorical_crossentropy(y_true, y_pred, from_logits=from_logits)


class CategoricalCrossentropy(Loss):
    """One-hot targets ``(N, K)`` against probabilities (or logits) ``(N, K)``."""

    kind, fuses = "categorical", "softmax"
    batch_mean = True

    def call(self, y_true, y_pred, from_logits):
        return F.categorical_crossentropy(y_true, y_pred, from_logits=from_logits)


class BinaryCrossentropy(Loss):
    """Targets in [0, 1] against probabilities (or logits) of the same shape."""

    kind, fuses = "binary", "sigmoid"
    batch_mean = True

    def call(self, y_true, y_pred, from_logits):
        return F.binary_crossentropy(y_true, y_pred, from_logits=from_logits)


class MeanSquaredError(Loss):
    """The mean of ``(y_pred - y_true) ** 2`` over every element (``'mse'``)."""
    kind = "regression"
    batch_mean = True

    def call(self, y_true, y_pred, from_logits):
        return F.mse(y_true, y_pred)


class MeanAbsoluteError(Loss):
    """The mean of ``|y_pred - y_true|`` over every element (``'mae'``)."""
    kind = "regression"
    batch_mean = True

    def call(self, y_true, y_pred, from_logits):
        return _mae(y_true, y_pred)


class LossFunctionWrapper(Loss):
    """A plain function ``f(y_true, y_pred)`` returning a Tensor (its mean is taken if not scalar)."""

    def __init__(self, fn, name=None):
        super().__init__(False, name or getattr(fn, "__name__", "loss"))
        self.fn = fn

    def call(self, y_true, y_pred, from_logits):
        out = self.fn(y_true, y_pred)
        if not isinstance(out, Tensor):
            raise TypeError(f"loss {self.name!r} returned {type(out).__name__}; a loss function must "
                            "return a Tensor computed from y_pred (so that it can be differentiated)")
        return out if out.size == 1 and out.ndim == 0 else out.mean()


sparse_categorical_crossentropy = F.sparse_categorical_crossentropy
"""Mean cross-entropy of integer labels ``(N,)`` and probabilities (or logits) ``(N, K)``."""
categorical_crossentropy = F.categorical_crossentropy
"""Mean cross-entropy of one-hot targets and probabilities (or logits), both ``(N, K)``."""
binary_crossentropy = F.binary_crossentropy
"""The mean binary cross-entropy of targets in [0, 1] against probabilities (or logits)."""


def mean_squared_error(y_true, y_pred):
    """The mean of ``(y_pred - y_true) ** 2`` as a scalar Tensor."""
    return F.mse(y_true, y_pred)


def mean_absolute_error(y_true, y_pred):
    """The mean of ``|y_pred - y_true|`` as a scalar Tensor."""
    return _mae(y_true, y_pred)


mse = MSE = mean_squared_error
mae = MAE = mean_absolute_error

_BY_NAME = {
    "sparse_categorical_crossentropy": SparseCategoricalCrossentropy,
    "categorical_crossentropy": CategoricalCrossentropy,
    "binary_crossentropy": BinaryCrossentropy,
    "mse": MeanSquaredError, "mean_squared_error": MeanSquaredError,
    "mae": MeanAbsoluteError, "mean_absolute_error": MeanAbsoluteError,
}
_BY_FUNCTION = {
    sparse_categorical_crossentropy: SparseCategoricalCrossentropy,
    categorical_crossentropy: CategoricalCrossentropy,
    binary_crossentropy: BinaryCrossentropy,
    mean_squared_error: MeanSquaredError, mean_absolute_error: MeanAbsoluteError,
    F.mse: MeanSquaredError, _mae: MeanAbsoluteError,
}
_CLASS_NAMES = {c.__name__: c for c in set(_BY_NAME.values())}


def get(identifier) -> Loss:
    """A ``Loss`` from a name, a ``Loss``, a ``Loss`` class or a function."""
    if isinstance(identifier, Loss):
        return identifier
    if isinstance(identifier, type) and issubclass(identifier, Loss):
        return identifier()
    if isinstance(identifier, str):
        cls = _BY_NAME.get(identifier.lower()) or _CLASS_NAMES.get(identifier)
        if cls is None:
            raise ValueError(f"unknown loss {identifier!r}; expected one of {sorted(_BY_NAME)}, a "
                             "Loss object or a function f(y_true, y_pred)")
        obj = cls()
        obj.name = identifier if identifier in _BY_NAME else obj.name
        return obj
    if callable(identifier):
        cls = _BY_FUNCTION.get(identifier)
        if cls is not None:
            obj = cls()
            obj.name = identifier.__name__
            return obj
        return LossFunctionWrapper(identifier)
    raise TypeError(f"a loss must be a name, a Loss or a function f(y_true, y_pred), got {identifier!r}")


__all__ = [
    "Loss", "get", "SparseCategoricalCrossentropy", "CategoricalCrossentropy", "BinaryCrossentropy",
    "MeanSquaredError", "MeanAbsoluteError", "LossFunctionWrapper",
    "sparse_categorical_crossentropy", "categorical_crossentropy", "binary_crossentropy",
    "mean_squared_error", "mean_absolute_error", "mse", "mae",
]
