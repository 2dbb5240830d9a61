"""Losses in Keras argument order ``(y_true, y_pred)``, each the mean over the batch, each on a
forward and a backward kernel of the active kernel set (``loss_forward``, ``loss_backward``).

Probabilities are clipped to ``[1e-7, 1 - 1e-7]`` before a log, as Keras does, and the
gradient passes the clip wherever a value lies inside it *or on a bound* (TensorFlow's clip
gradient); the ``from_logits=True`` paths never form a probability's log and have fused, stable
gradients. On probabilities, both categorical cross-entropies divide by the row's sum as Keras 3
on TensorFlow does: ``categorical_crossentropy`` normalises the row and then clips it,
``sparse_categorical_crossentropy`` clips the row and then normalises it (its loss is
``log(sum(clip(p))) - log(clip(p)[label])``).
"""
from __future__ import annotations

import numpy as np

from gpucnn import backend
from gpucnn.autograd import Function, Tensor
from gpucnn.functional import _check


def _pred(y_pred, op):
    y = _check.tensor(y_pred, op, "y_pred")
    _check.floating(y, op, "y_pred")
    if y.ndim < 1 or y.shape[0] == 0:
        raise ValueError(f"{op}: y_pred must have a non-empty batch axis, got shape {y.shape}")
    return y


def _target(y_true, y_pred, op):
    """A float target array of y_pred's shape and dtype (a constant: no gradient)."""
    t = y_true.data if isinstance(y_true, Tensor) else backend.kernels().asarray(y_true)
    if tuple(t.shape) != y_pred.shape:
        raise ValueError(f"{op}: y_true has shape {tuple(t.shape)} but y_pred has shape "
                         f"{y_pred.shape}; expected the same")
    return t.astype(y_pred.dtype, copy=False)


class Loss(Function):
    """One loss of the kernel contract's ``LOSSES`` (``kind``): the kernel set's
    ``loss_forward``, then its ``loss_backward`` from the per-row ``stats`` the forward kept."""

    def forward(self, p, t, kind):
        self.p, self.t, self.kind = p, t, kind
        value, self.stats = backend.kernels().loss_forward(kind, t, p)
        return value

    def backward(self, g):
        return backend.kernels().loss_backward(self.kind, g, self.t, self.p, self.stats)


def mse(y_true, y_pred):
    """Mean squared error over every element (the guide's autoencoder loss).

    >>> import gpucnn.functional as F
    >>> float(F.mse([[1.0, 2.0]], [[1.0, 4.0]]))
    2.0
    """
    p = _pred(y_pred, "mse")
    return Loss.apply(p, t=_target(y_true, p, "mse"), kind="mse")


def mae(y_true, y_pred):
    """Mean absolute error over every element.

    >>> import gpucnn.functional as F
    >>> float(F.loss.mae([[1.0, 2.0]], [[1.0, 4.0]]))
    1.0
    """
    p = _pred(y_pred, "mae")
    return Loss.apply(p, t=_target(y_true, p, "mae"), kind="mae")


def binary_crossentropy(y_true, y_pred, from_logits=False):
    """Binary cross-entropy, averaged over every element (Keras averages the last axis, then the
    batch: the same number for equal-sized rows). Targets in [0, 1]. Probabilities are clipped
    to ``[1e-7, 1 - 1e-7]``; the gradient passes on the bounds, as in Keras.
    """
    p = _pred(y_pred, "binary_crossentropy")
    return Loss.apply(p, t=_target(y_true, p, "binary_crossentropy"),
                      kind="bce_logits" if from_logits else "bce")


def categorical_crossentropy(y_true, y_pred, from_logits=False):
    """Cross-entropy of one-hot (or soft) targets ``(N, K)`` against probabilities or logits."""
    op = "categorical_crossentropy"
    p = _pred(y_pred, op)
    _check.rank(p, 2, op, "y_pred", "(N, classes)")
    return Loss.apply(p, t=_target(y_true, p, op), kind="cce_logits" if from_logits else "cce")


def _labels(y_true, n, k, op):
    """Integer class labels ``(N,)`` (``(N, 1)`` accepted), checked against ``[0, k)``.

    The range check reads the labels on the host when they are there (NumPy); labels already on a
    GPU are not read back (no sync in a training step): an out-of-range label makes that row's
    loss NaN instead, which ``fit`` reports.
    """
    lab = y_true.data if isinstance(y_true, Tensor) else y_true
    if not hasattr(lab, "dtype"):
        lab = np.asarray(lab)
    if lab.dtype.kind not in "iu":
        raise TypeError(f"{op}: labels must be integer class indices, got dtype {lab.dtype}; "
                        "convert them with .astype('int64') (one-hot targets go to "
                        "categorical_crossentropy)")
    if lab.ndim == 2 and lab.shape[1] == 1:
        lab = lab.reshape(-1)
    if lab.ndim != 1 or lab.shape[0] != n:
        raise ValueError(f"{op}: labels must have shape ({n},) to match y_pred's batch, got "
                         f"{tuple(lab.shape)}")
    # one pass: seen unsigned, a negative label is larger than any class count
    if isinstance(lab, np.ndarray) and lab.size and (not lab.dtype.isnative or int(
            lab.view(f"u{lab.dtype.itemsize}").max()) >= k):
        lo, hi = int(lab.min()), int(lab.max())
        if lo < 0 or hi >= k:
            raise ValueError(f"{op}: labels must lie in [0, {k}) for {k} classes, got values in "
                             f"[{lo}, {hi}]")
    return backend.kernels().asarray(lab)


def sparse_categorical_crossentropy(y_true, y_pred, from_logits=False):
    """Cross-entropy of integer labels ``(N,)`` against probabilities or logits ``(N, K)``.

    ``from_logits=True`` runs the fused softmax + cross-entropy kernels (stable).

    >>> import numpy as np, gpucnn.functional as F
    >>> round(float(F.sparse_categorical_crossentropy([0], np.array([[0.0, 0.0]], np.float32),
    ...                                               from_logits=True)), 4)
    0.6931
    """
    op = "sparse_categorical_crossentropy"
    p = _pred(y_pred, op)
    _check.rank(p, 2, op, "y_pred", "(N, classes)")
    labels = _labels(y_true, p.shape[0], p.shape[1], op)
    return Loss.apply(p, t=labels, kind="sparse_cce_logits" if from_logits else "sparse_cce")
