"""Losses in Keras argument order ``(y_true, y_pred)``, each the mean over the batch.

Probabilities are clipped to ``[EPSILON, 1 - EPSILON]`` before a log, as Keras does, and the
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

EPSILON = 1e-7


def _bounds(dtype):
    """The clip bounds in ``dtype`` (``1 - EPSILON`` rounds to 0.99999988 in float32)."""
    t = np.dtype(dtype).type
    return t(EPSILON), t(1.0 - EPSILON)


def _clip(xp, a):
    """``(clip(a, lo, hi), mask)``: the mask is 1 where the gradient passes the clip (inside
    the bounds or on one, as TensorFlow's clip passes it), else 0."""
    lo, hi = _bounds(a.dtype)
    return xp.clip(a, lo, hi), ((a >= lo) & (a <= hi)).astype(a.dtype)


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


class MSE(Function):
    def forward(self, p, t):
        self.d = p - t
        return (self.d * self.d).mean()

    def backward(self, g):
        return g * (2.0 / self.d.size) * self.d


def mse(y_true, y_pred):
    """Mean squared error over every element (the guide's autoencoder loss).

    >>> import gpucnn.functional as F
    >>> float(F.mse([[1.0, 2.0]], [[1.0, 4.0]]))
    2.0
    """
    p = _pred(y_pred, "mse")
    return MSE.apply(p, t=_target(y_true, p, "mse"))


class BCE(Function):
    def forward(self, p, t, logits):
        xp = backend.xp()
        self.t, self.logits = t, logits
        if logits:
            self.s = backend.kernels().act_forward(p, "sigmoid")
            # max(z, 0) - z t + log(1 + exp(-|z|))
            loss = xp.maximum(p, 0) - p * t + xp.log1p(xp.exp(-xp.abs(p)))
        else:
            self.pc, self.inside = _clip(xp, p)
            loss = -(t * xp.log(self.pc) + (1.0 - t) * xp.log(1.0 - self.pc))
        return loss.mean()

    def backward(self, g):
        n = self.t.size
        if self.logits:
            return g * (1.0 / n) * (self.s - self.t)
        pc, t = self.pc, self.t
        # d/dp of -(t log pc + (1 - t) log(1 - pc)), through the clip (passed on the bounds)
        return g * (1.0 / n) * ((pc - t) / (pc * (1.0 - pc))) * self.inside


def binary_crossentropy(y_true, y_pred, from_logits=False):
    """Binary cross-entropy, averaged over every element (Keras averages the last axis, then the
    batch: the same number for equal-sized rows). Targets in [0, 1]. Probabilities are clipped
    to ``[1e-7, 1 - 1e-7]``; the gradient passes on the bounds, as in Keras.
    """
    p = _pred(y_pred, "binary_crossentropy")
    return BCE.apply(p, t=_target(y_true, p, "binary_crossentropy"), logits=bool(from_logits))


class CCE(Function):
    """Categorical cross-entropy over the last axis of 2-D ``(N, K)`` predictions."""

    def forward(self, p, t, logits):
        xp = backend.xp()
        ks = backend.kernels()
        self.t, self.logits, self.n = t, logits, p.shape[0]
        if logits:
            self.logp = ks.log_softmax_forward(p)
            return -(t * self.logp).sum() / self.n
        # Keras: the row divided by its sum, then clipped
        s = p.sum(axis=-1, keepdims=True)
        q = p / s
        self.p, self.s = p, s
        self.qc, self.inside = _clip(xp, q)
        return -(t * xp.log(self.qc)).sum() / self.n

    def backward(self, g):
        xp = backend.xp()
        scale = g * (1.0 / self.n)
        if self.logits:
            tsum = self.t.sum(axis=-1, keepdims=True)
            return scale * (xp.exp(self.logp) * tsum - self.t)
        dq = -self.t / self.qc * self.inside
        # q = p / s: dL/dp = (dq - sum(dq * q)) / s
        q = self.p / self.s
        return scale * (dq - (dq * q).sum(axis=-1, keepdims=True)) / self.s


def categorical_crossentropy(y_true, y_pred, from_logits=False):
    """Cross-entropy of one-hot (or soft) targets ``(N, K)`` against probabilities or logits."""
    op = "categorical_crossentropy"
    p = _pred(y_pred, op)
    _check.rank(p, 2, op, "y_pred", "(N, classes)")
    return CCE.apply(p, t=_target(y_true, p, op), logits=bool(from_logits))


class SparseCE(Function):
    def forward(self, p, labels, logits):
        xp = backend.xp()
        ks = backend.kernels()
        self.labels, self.logits, self.n = labels, logits, p.shape[0]
        if logits:
            loss, self.prob = ks.softmax_xent_forward(p, labels)
            return loss.mean()
        # Keras on TensorFlow: clip the row, take its log as logits of a softmax cross-entropy:
        # loss = log(sum(pc)) - log(pc[label]), pc = clip(p)
        rows = xp.arange(p.shape[0])
        self.rows = rows
        pc, self.inside = _clip(xp, p)
        self.total = pc.sum(axis=-1)
        self.picked = pc[rows, labels]
        return (xp.log(self.total) - xp.log(self.picked)).mean()

    def backward(self, g):
        xp = backend.xp()
        scale = g * (1.0 / self.n)
        if self.logits:
            # one contiguous scale per row: the launcher keeps its prepared launch for it
            rows_g = xp.ascontiguousarray(xp.broadcast_to(scale.astype(self.prob.dtype),
                                                          (self.n,)))
            return backend.kernels().softmax_xent_backward(self.prob, self.labels, rows_g)
        # d/dpc_j = 1 / sum(pc) - [j == label] / pc[label], through the clip
        dp = xp.broadcast_to((1.0 / self.total)[:, None], self.inside.shape).copy()
        dp[self.rows, self.labels] -= 1.0 / self.picked
        dp *= self.inside
        dp *= scale
        return dp


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
    if isinstance(lab, np.ndarray) and lab.size:
        lo, hi = int(lab.min()), int(lab.max())
        if lo < 0 or hi >= k:
            raise ValueError(f"{op}: labels must lie in [0, {k}) for {k} classes, got values in "
                             f"[{lo}, {hi}]")
    return backend.kernels().asarray(lab)


def sparse_categorical_crossentropy(y_true, y_pred, from_logits=False):
    """Cross-entropy of integer labels ``(N,)`` against probabilities or logits ``(N, K)``.

    ``from_logits=True`` runs the fused softmax + cross-entropy kernel (stable, one pass).

    >>> import numpy as np, gpucnn.functional as F
    >>> round(float(F.sparse_categorical_crossentropy([0], np.array([[0.0, 0.0]], np.float32),
    ...                                               from_logits=True)), 4)
    0.6931
    """
    op = "sparse_categorical_crossentropy"
    p = _pred(y_pred, op)
    _check.rank(p, 2, op, "y_pred", "(N, classes)")
    labels = _labels(y_true, p.shape[0], p.shape[1], op)
    return SparseCE.apply(p, labels=labels, logits=bool(from_logits))
