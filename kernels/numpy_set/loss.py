"""The losses of ``LOSSES`` (Keras 3's formulas, see ``gpucnn.kernels``): each a mean, with the
per-row numbers its gradient needs (``stats``) computed on the way.

Probabilities are clipped to ``[1e-7, 1 - 1e-7]`` in their dtype; ``_clip``'s mask passes the
gradient inside the bounds and on them (TensorFlow's clip gradient).
"""
from __future__ import annotations

import numpy as np

from .. import LOSS_STATS as STATS, LOSSES
from ._util import check_float, check_ndim, fail
from .activation import act_forward

__all__ = ["loss_forward", "loss_backward"]

EPSILON = 1e-7


def _clip(a):
    t = a.dtype.type
    lo, hi = t(EPSILON), t(1.0 - EPSILON)
    return np.clip(a, lo, hi), ((a >= lo) & (a <= hi)).astype(a.dtype)


def _labels(op, labels, rows, k):
    """``(labels clamped to 0 where invalid, valid mask)`` of integer labels ``(rows,)``."""
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise TypeError(f"{op}: labels must be integers, got dtype {labels.dtype}")
    if labels.shape != (rows,):
        fail(op, "labels shape", (rows,), labels.shape)
    valid = (labels >= 0) & (labels < k)
    return np.where(valid, labels, 0), valid


def _check(op, loss, t, p):
    if loss not in LOSSES:
        raise ValueError(f"{op}: loss must be one of {LOSSES}, got {loss!r}")
    check_float(op, "p", p)
    if loss in STATS:
        check_ndim(op, "p", p, 2, "(rows, K)")
        if loss.startswith("sparse"):
            return _labels(op, t, *p.shape)
    t = np.asarray(t)
    if t.shape != p.shape:
        fail(op, "t shape (that of p)", p.shape, t.shape)
    return t, None


def loss_forward(loss, t, p):
    """``(value, stats)``: the mean loss (a 0-d array) of targets ``t`` and predictions ``p``."""
    t, valid = _check("loss_forward", loss, t, p)
    n = p.shape[0] if loss in STATS else p.size
    stats = None
    if loss == "mse":
        d = p - t
        value = (d * d).mean()
    elif loss == "mae":
        value = abs(p - t).mean()
    elif loss == "bce":
        pc, _ = _clip(p)
        value = (-(t * np.log(pc) + (1.0 - t) * np.log(1.0 - pc))).mean()
    elif loss == "bce_logits":     # max(z, 0) - z t + log(1 + exp(-|z|))
        value = (np.maximum(p, 0) - p * t + np.log1p(np.exp(-np.abs(p)))).mean()
    elif loss == "cce":            # the row divided by its sum, then clipped
        s = p.sum(axis=-1, keepdims=True)
        q = p / s
        qc, inside = _clip(q)
        value = -(t * np.log(qc)).sum() / n
        stats = np.stack([s[:, 0], (-t / qc * inside * q).sum(axis=-1)], axis=1)
    elif loss == "cce_logits":     # log-softmax z - m - log(sum(exp(z - m)))
        m = p.max(axis=1, keepdims=True)
        logp = np.subtract(p, m)
        lse = np.log(np.exp(logp).sum(axis=1, keepdims=True))
        logp -= lse
        value = -(t * logp).sum() / n
        stats = np.concatenate([m, lse, t.sum(axis=-1, keepdims=True)], axis=1)
    elif loss == "sparse_cce":     # clipped, then log(sum(pc)) - log(pc[label])
        pc, _ = _clip(p)
        total = pc.sum(axis=-1)
        picked = np.where(valid, pc[np.arange(n), t], np.nan).astype(p.dtype)
        value = (np.log(total) - np.log(picked)).mean()
        stats = np.stack([total, picked], axis=1)
    else:                          # sparse_cce_logits: logsumexp(z) - z[label]
        m = p.max(axis=1, keepdims=True)
        e = np.subtract(p, m)
        picked = e[np.arange(n), t]
        np.exp(e, out=e)
        s = e.sum(axis=1)
        rowloss = np.log(s)
        rowloss -= picked
        rowloss[~valid] = np.nan
        value = rowloss.mean()
        stats = np.stack([m[:, 0], s], axis=1)
    return np.asarray(value, dtype=p.dtype), stats


def loss_backward(loss, g, t, p, stats):
    """``dp``: the gradient of ``g`` times the mean loss, from the forward's ``stats``."""
    op = "loss_backward"
    t, valid = _check(op, loss, t, p)
    if loss in STATS and (stats is None or stats.shape != (p.shape[0], STATS[loss])):
        fail(op, "stats shape", (p.shape[0], STATS[loss]), getattr(stats, "shape", None))
    n = p.shape[0] if loss in STATS else p.size
    scale = g * (1.0 / n)
    if loss == "mse":
        return g * (2.0 / n) * (p - t)
    if loss == "mae":
        d = p - t
        return scale * ((d > 0).astype(p.dtype) - (d < 0).astype(p.dtype))
    if loss == "bce":
        pc, inside = _clip(p)
        return scale * ((pc - t) / (pc * (1.0 - pc))) * inside
    if loss == "bce_logits":
        return scale * (act_forward(p, "sigmoid") - t)
    if loss == "cce":              # q = p / s: dL/dp = (dq - sum(dq * q)) / s
        s = stats[:, :1]
        qc, inside = _clip(p / s)
        return scale * (-t / qc * inside - stats[:, 1:]) / s
    if loss == "cce_logits":       # softmax(z) * sum(t) - t
        logp = np.subtract(p, stats[:, :1])
        logp -= stats[:, 1:2]
        return scale * (np.exp(logp) * stats[:, 2:] - t)
    rows = np.flatnonzero(valid)
    if loss == "sparse_cce":       # 1 / sum(pc) - [j == label] / pc[label], through the clip
        dp = np.broadcast_to((1.0 / stats[:, 0])[:, None], p.shape).copy()
        dp[rows, t[rows]] -= 1.0 / stats[rows, 1]
        _, inside = _clip(p)
        dp *= inside
        dp *= scale
        return dp
    dp = np.exp(np.subtract(p, stats[:, :1]))      # sparse_cce_logits: softmax(z) - onehot
    dp /= stats[:, 1:]
    dp *= scale
    dp[rows, t[rows]] -= scale
    return dp
