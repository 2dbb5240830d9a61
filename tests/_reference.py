"""Plain-loop references for the kernel tests (any kernel set): slow, obvious, and independent of
the kernels' algorithms (no padding arrays, no im2col, no strided views).

Layouts as in the kernel contract: images (N, H, W, C), conv kernels (KH, KW, C_in, C_out),
``stride = (sh, sw)``, ``pad = (top, bottom, left, right)``. Every result is float64.
A window cell ``(p*sh - top + i, q*sw - left + j)`` outside the image is padding: it adds nothing
to a convolution, never wins a max and is not counted in a mean.

Keras 3's optimizer updates are written here once too (``ref_*_update``), for the registry's
optimizer entry and every optimizer test.
"""
from __future__ import annotations

import math

import numpy as np


def ref_pads(h, w, kh, kw, sh, sw, padding):
    """Keras/TensorFlow padding ``(top, bottom, left, right)`` for 'valid' or 'same'."""
    if padding == "valid":
        return (0, 0, 0, 0)
    th = max((math.ceil(h / sh) - 1) * sh + kh - h, 0)
    tw = max((math.ceil(w / sw) - 1) * sw + kw - w, 0)
    return (th // 2, th - th // 2, tw // 2, tw - tw // 2)


def ref_out_size(size, k, s, before, after):
    return (size + before + after - k) // s + 1


def _cells(h, w, p, q, kh, kw, sh, sw, pad):
    """Yield ``(i, j, r, c)``: window offset and the real input cell it reads at output (p, q)."""
    for i in range(kh):
        r = p * sh - pad[0] + i
        if not 0 <= r < h:
            continue
        for j in range(kw):
            c = q * sw - pad[2] + j
            if 0 <= c < w:
                yield i, j, r, c


def ref_conv2d(x, w, b, stride, pad, act="linear"):
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    n, h, wd, _ = x.shape
    kh, kw, _, co = w.shape
    ho = ref_out_size(h, kh, stride[0], pad[0], pad[1])
    wo = ref_out_size(wd, kw, stride[1], pad[2], pad[3])
    y = np.zeros((n, ho, wo, co))
    for s, p, q in np.ndindex(n, ho, wo):
        acc = np.zeros(co) if b is None else np.array(b, np.float64)
        for i, j, r, c in _cells(h, wd, p, q, kh, kw, *stride, pad):
            acc = acc + x[s, r, c] @ w[i, j]
        y[s, p, q] = acc
    return ref_act(y, act)


def ref_conv2d_backward_input(dy, w, x_shape, stride, pad):
    dy, w = np.asarray(dy, np.float64), np.asarray(w, np.float64)
    n, h, wd, _ = x_shape
    kh, kw, _, _ = w.shape
    dx = np.zeros(x_shape)
    for s, p, q in np.ndindex(n, *dy.shape[1:3]):
        for i, j, r, c in _cells(h, wd, p, q, kh, kw, *stride, pad):
            dx[s, r, c] += w[i, j] @ dy[s, p, q]
    return dx


def ref_conv2d_backward_weight(x, dy, w_shape, stride, pad):
    x, dy = np.asarray(x, np.float64), np.asarray(dy, np.float64)
    n, h, wd, _ = x.shape
    kh, kw, _, _ = w_shape
    dw = np.zeros(w_shape)
    for s, p, q in np.ndindex(n, *dy.shape[1:3]):
        for i, j, r, c in _cells(h, wd, p, q, kh, kw, *stride, pad):
            dw[i, j] += np.outer(x[s, r, c], dy[s, p, q])
    return dw


def _pool_loop(x, pool, stride, pad, reduce):
    x = np.asarray(x, np.float64)
    n, h, w, ch = x.shape
    ho = ref_out_size(h, pool[0], stride[0], pad[0], pad[1])
    wo = ref_out_size(w, pool[1], stride[1], pad[2], pad[3])
    out = np.zeros((n, ho, wo, ch))
    idx = np.zeros((n, ho, wo, ch), np.int64)
    for s, p, q in np.ndindex(n, ho, wo):
        cells = [(r, c) for _, _, r, c in _cells(h, w, p, q, *pool, *stride, pad)]
        for k in range(ch):
            out[s, p, q, k], idx[s, p, q, k] = reduce([x[s, r, c, k] for r, c in cells],
                                                      [r * w + c for r, c in cells])
    return out, idx


def _first_max(values, flat):
    if any(v != v for v in values):      # a NaN: the window gives NaN and its first real cell
        return float("nan"), flat[0]
    best = max(range(len(values)), key=values.__getitem__)     # the first of equal maxima
    return values[best], flat[best]


def ref_max_pool(x, pool, stride, pad):
    """``(y, idx)``: the max over the real cells of each window (first one in row-major order
    among equals) and its flat index ``h * W + w``; a window with a NaN gives NaN and its first
    real cell."""
    return _pool_loop(x, pool, stride, pad, _first_max)


def ref_avg_pool(x, pool, stride, pad):
    """The mean over the real cells of each window (Keras ``same``: padding not counted)."""
    return _pool_loop(x, pool, stride, pad, lambda v, f: (sum(v) / len(v), 0))[0]


def ref_max_pool_backward(dy, idx, x_shape):
    dy = np.asarray(dy, np.float64)
    n, h, w, ch = x_shape
    dx = np.zeros(x_shape)
    for s, p, q, k in np.ndindex(*dy.shape):
        f = int(idx[s, p, q, k])
        dx[s, f // w, f % w, k] += dy[s, p, q, k]
    return dx


def ref_avg_pool_backward(dy, x_shape, pool, stride, pad):
    dy = np.asarray(dy, np.float64)
    n, h, w, ch = x_shape
    dx = np.zeros(x_shape)
    for s, p, q in np.ndindex(*dy.shape[:3]):
        cells = [(r, c) for _, _, r, c in _cells(h, w, p, q, *pool, *stride, pad)]
        for r, c in cells:
            dx[s, r, c] += dy[s, p, q] / len(cells)
    return dx


def ref_act(z, act):
    z = np.asarray(z, np.float64)
    if act == "linear":
        return z.copy()
    if act == "relu":
        return np.where(z > 0, z, 0.0)
    if act == "tanh":
        return np.tanh(z)
    if act == "sigmoid":
        return np.array([1.0 / (1.0 + math.exp(-v)) if v > -700 else 0.0 for v in z.ravel()]
                        ).reshape(z.shape)
    raise ValueError(act)


def finite_diff(f, x, dy, indices, eps=1e-6):
    """Central differences of ``sum(f(x) * dy)`` with respect to ``x`` at the flat ``indices``
    (float64 ``x``, modified and restored in place)."""
    flat = x.reshape(-1)
    out = np.empty(len(indices))
    for k, i in enumerate(indices):
        keep = flat[i]
        flat[i] = keep + eps
        up = float(np.sum(np.asarray(f(x), np.float64) * dy))
        flat[i] = keep - eps
        down = float(np.sum(np.asarray(f(x), np.float64) * dy))
        flat[i] = keep
        out[k] = (up - down) / (2 * eps)
    return out


def rel_err(got, want):
    """Largest absolute difference over the largest magnitude of ``want`` (host arrays), NaN
    required at the same places (an output left unwritten shows as NaN in a poisoned buffer)."""
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan), "NaN at different places (an unwritten output?)"
    if nan.all():
        return 0.0
    scale = max(np.abs(want[~nan]).max(), 1e-30)
    return float(np.abs(got[~nan] - want[~nan]).max() / scale)


# ------------------------------------------------------------------------------ optimizer updates
# Keras 3's update formulas, once for every optimizer test: float64, in place on ``p`` and its
# slots (``g`` is left alone), with the kernel contract's arguments. Each first applies Keras's
# decoupled weight decay, ``p -= p * weight_decay * lr``.

def ref_sgd_update(p, g, v, lr, momentum, nesterov, weight_decay):
    """``p -= lr g``; with momentum ``v = momentum v - lr g`` then ``p += v`` (Nesterov:
    ``p += momentum v - lr g``)."""
    p -= p * weight_decay * lr
    if momentum == 0:
        p -= lr * g
        return
    v[...] = momentum * v - lr * g
    p += momentum * v - lr * g if nesterov else v


def ref_adam_update(p, g, m, v, lr, beta1, beta2, eps, t, weight_decay, vhat=None):
    """``m += (g - m)(1 - beta1)``, ``v += (g^2 - v)(1 - beta2)``, ``p -= m alpha / (sqrt(v) +
    eps)`` with the bias corrections in ``alpha = lr sqrt(1 - beta2^t) / (1 - beta1^t)`` (``t``
    from 1); amsgrad (``vhat`` given): ``vhat = max(vhat, v)`` in place of ``v``."""
    p -= p * weight_decay * lr
    alpha = lr * math.sqrt(1 - beta2 ** t) / (1 - beta1 ** t)
    m += (g - m) * (1 - beta1)
    v += (g * g - v) * (1 - beta2)
    den = v
    if vhat is not None:
        np.maximum(vhat, v, out=vhat)
        den = vhat
    p -= m * alpha / (np.sqrt(den) + eps)


def ref_rmsprop_update(p, g, s, lr, rho, eps, weight_decay, u=None, momentum=0.0, mg=None,
                       gain=None):
    """``s = rho s + gain g^2`` (gain ``1 - rho`` when None), step ``lr g / sqrt(s + eps)``
    (epsilon inside the root); centered (``mg`` given): ``mg = rho mg + gain g`` and
    ``sqrt(s - mg^2 + eps)``; momentum: ``u = momentum u + step``, ``p -= u``."""
    gain = 1 - rho if gain is None else gain
    p -= p * weight_decay * lr
    s[...] = rho * s + gain * g * g
    if mg is not None:
        mg[...] = rho * mg + gain * g
        step = lr * g / np.sqrt(s - mg * mg + eps)
    else:
        step = lr * g / np.sqrt(s + eps)
    if momentum:
        u[...] = momentum * u + step
        p -= u
    else:
        p -= step


def ref_adagrad_update(p, g, a, lr, eps, weight_decay):
    """``a += g^2``, ``p -= lr g / sqrt(a + eps)``."""
    p -= p * weight_decay * lr
    a += g * g
    p -= lr * g / np.sqrt(a + eps)


def ref_updated(update, args, in_place, flag=None):
    """The arrays at positions ``in_place`` of ``args`` after ``update(*args)`` on float64 copies
    (``args`` are left alone). With ``flag``, the position of the contract's refusal flag (its
    tag follows it), the contract's check around the formula: nothing changes when the flag
    holds a lower tag; else an element whose gradient or new weight is not finite keeps its old
    values, and the flag takes the tag unless a lower one is there."""
    args = [(np.array(a, np.float64) if a.dtype.kind == "f" else a.copy())
            if isinstance(a, np.ndarray) else a for a in args]
    if flag is None:
        update(*args)
        return tuple(args[i] for i in in_place)
    fl, tag = args[flag], args[flag + 1]
    if not 0 < fl[0] < tag:
        old = {i: args[i].copy() for i in in_place if args[i] is not None and i != flag}
        with np.errstate(all="ignore"):
            update(*args[:flag])
        bad = ~np.isfinite(args[0]) | ~np.isfinite(args[1])
        for i, a in old.items():
            args[i][bad] = a[bad]
        if bad.any() and not 0 < fl[0] < tag:
            fl[0] = tag
    return tuple(args[i] for i in in_place)


# ------------------------------------------------------------------------------ losses
# Keras 3's losses (on TensorFlow) in float64, row by row: probabilities clipped to the bounds
# [1e-7, 1 - 1e-7] of ``dtype`` (the data's), the gradient passed inside the clip and on its
# bounds; ``cce`` normalises a row before the clip, ``sparse_cce`` after it.

def ref_loss_bounds(dtype):
    """The clip bounds in ``dtype`` (``1 - 1e-7`` is 0.99999988 in float32), as floats."""
    t = np.dtype(dtype).type
    return float(t(1e-7)), float(t(1.0 - 1e-7))


def ref_loss(loss, t, p, dtype=np.float64):
    """``(mean, stats, d mean / dp)`` of a loss of the kernel contract's ``LOSSES``; ``stats``
    the per-row numbers its ``LOSS_STATS`` names (None for the elementwise losses)."""
    p = np.asarray(p, np.float64)
    lo, hi = ref_loss_bounds(dtype)
    inside = lambda a: ((a >= lo) & (a <= hi)).astype(np.float64)   # noqa: E731
    if loss in ("mse", "mae", "bce", "bce_logits"):
        t = np.asarray(t, np.float64)
        d, n = p - t, p.size
        if loss == "mse":
            return np.mean(d * d), None, 2 * d / n
        if loss == "mae":
            return np.mean(np.abs(d)), None, np.sign(d) / n
        if loss == "bce":
            pc = np.clip(p, lo, hi)
            return (np.mean(-(t * np.log(pc) + (1 - t) * np.log(1 - pc))), None,
                    (-t / pc + (1 - t) / (1 - pc)) * inside(p) / n)
        return (np.mean(np.maximum(p, 0) - p * t + np.log1p(np.exp(-np.abs(p)))), None,
                (1 / (1 + np.exp(-p)) - t) / n)
    values, stats, grad = [], [], np.zeros_like(p)
    for r, x in enumerate(p):
        if loss == "cce":
            s = x.sum()
            q = x / s
            qc = np.clip(q, lo, hi)
            dq = -t[r] / qc * inside(q)
            values.append(-np.sum(t[r] * np.log(qc)))
            stats.append((s, np.sum(dq * q)))
            grad[r] = (dq - np.sum(dq * q)) / s
        elif loss == "cce_logits":
            m = x.max()
            lse = math.log(np.exp(x - m).sum())
            values.append(-np.sum(t[r] * (x - m - lse)))
            stats.append((m, lse, t[r].sum()))
            grad[r] = np.exp(x - m - lse) * t[r].sum() - t[r]
        elif loss == "sparse_cce":
            pc, lab = np.clip(x, lo, hi), t[r]
            values.append(math.log(pc.sum()) - math.log(pc[lab]))
            stats.append((pc.sum(), pc[lab]))
            grad[r] = inside(x) / pc.sum()
            grad[r, lab] -= inside(x)[lab] / pc[lab]
        else:                                   # sparse_cce_logits
            m, lab = x.max(), t[r]
            s = np.exp(x - m).sum()
            values.append(m + math.log(s) - x[lab])
            stats.append((m, s))
            grad[r] = np.exp(x - m) / s
            grad[r, lab] -= 1
    return np.mean(values), np.array(stats), grad / p.shape[0]
