"""Fully connected layers, flattening and dropout."""
from __future__ import annotations

from gpucnn import backend
from gpucnn import random as _random
from gpucnn.autograd import Function
from gpucnn.functional import _check, _split
from gpucnn.functional.conv import Conv2D, _activation_name
from gpucnn.kernels import has

#: The largest dense layer (batch x in x out multiply-adds) that a set with fused conv gradients
#: (capability ``fused_backward``) runs as a 1x1 convolution of its own kernels. Below it the
#: host's cost per launch outweighs the GPU's work, and the conv kernels take the bias, the
#: activation and both their gradients in two launches a pass where the array module's matmul
#: (cuBLAS on CuPy) needs a launch for each. Above it the GEMM is the work, and cuBLAS, which
#: splits a long reduction and tunes its tiles per size, is the better engine. With TF32
#: allowed (``set_float32_matmul_precision``), the small layers run on the TF32 conv kernels.
CONV_MAX_MACS = 1 << 25


class DenseConv(Conv2D):
    """``Dense`` as a 1x1 convolution of a 1x1 image: ``x`` (N, in) is seen as (N, 1, 1, in) and
    ``w`` (in, out) as (1, 1, in, out), so the conv kernels' epilogue adds the bias and applies
    the activation, and their fused gradients read the activation's gradient."""

    def forward(self, x, w, b=None, act="linear"):
        n, k = x.shape
        m = w.shape[1]
        y = super().forward(x.reshape(n, 1, 1, k), w.reshape(1, 1, k, m), b, (1, 1),
                            (0, 0, 0, 0), act)
        return y.reshape(n, m)

    def backward(self, g):
        grads = super().backward(g.reshape(g.shape[0], 1, 1, g.shape[1]))
        dx, dw = grads[0], grads[1]
        dx = None if dx is None else dx.reshape(dx.shape[0], dx.shape[3])
        dw = None if dw is None else dw.reshape(dw.shape[2], dw.shape[3])
        return (dx, dw) + tuple(grads[2:])


class Dense(Function):
    """``y = act(x @ w + b)`` with the bias and activation applied in place."""

    def forward(self, x, w, b=None, act="linear"):
        dot = backend.xp().dot      # not @: NumPy's 2-D matmul keeps the GIL (see kernels)
        y = dot(x, w)
        if b is not None:
            y += b
        self.x, self.w, self.act = x, w, act
        if act != "linear":
            y = backend.kernels().act_forward(y, act)
            self.y = y
        return y

    def backward(self, g):
        ks = backend.kernels()
        db = None
        need_db = len(self.parents) == 3 and self.parents[2].requires_grad
        if self.act != "linear" and need_db and has(ks, "fused_backward"):
            g, db = ks.act_backward_bias(g, self.y, self.act)    # one launch for both
        elif self.act != "linear":
            g = ks.act_backward(g, self.y, self.act)
        px, pw = self.parents[0], self.parents[1]
        dot = backend.xp().dot
        dx = dot(g, self.w.T) if px.requires_grad else None
        dw = dot(self.x.T, g) if pw.requires_grad else None
        if len(self.parents) == 3:
            if need_db and db is None:
                db = ks.bias_grad(g)
            return dx, dw, db
        return dx, dw


_CHECKED = {}     # signature -> the checked activation name


def dense(x, w, b=None, activation=None):
    """``act(x @ w + b)`` for ``x`` ``(N, in)``, ``w`` ``(in, out)``, ``b`` ``(out,)``.

    >>> import numpy as np, gpucnn.functional as F
    >>> F.dense(np.ones((1, 2), np.float32), np.ones((2, 3), np.float32)).numpy()
    array([[2., 2., 2.]], dtype=float32)
    """
    key = _check.signature((x, w, b), (activation,))
    act = _CHECKED.get(key)
    if act is None:
        op = "dense"
        x = _check.tensor(x, op, "x")
        w = _check.tensor(w, op, "w")
        _check.rank(x, 2, op, "x", "(N, features)")
        _check.rank(w, 2, op, "w", "(in, out)")
        _check.floating(x, op, "x")
        _check.same_dtype(x, w, op, "x", "w")
        if x.shape[1] != w.shape[0]:
            raise ValueError(f"{op}: input has {x.shape[1]} features but the kernel expects "
                             f"{w.shape[0]} (x {x.shape}, w {w.shape})")
        b = _check.bias(b, w.shape[1], x, op)
        act = _check.remember(_CHECKED, key, _activation_name(activation, op))
    inputs = (x, w) if b is None else (x, w, b)
    ks = backend.kernels()
    if has(ks, "fused_backward") and x.shape[0] * w.shape[0] * w.shape[1] <= CONV_MAX_MACS:
        return DenseConv.apply(*inputs, act=act)
    return Dense.apply(*inputs, act=act)


def flatten(x):
    """``(N, ...)`` to ``(N, prod(...))``, C order (Keras ``Flatten`` on channels-last data)."""
    x = _check.tensor(x, "flatten", "x")
    if x.ndim < 1:
        raise ValueError(f"flatten: x needs a batch axis, got shape {x.shape}")
    n = x.shape[0]
    return x.reshape(n, -1 if n else 0)


class Dropout(Function):
    """``x * mask``; inside a split training step (see ``_split``) the mask is this part's rows of
    the whole batch's mask."""

    def forward(self, x, rate=0.5, seed=0, counter=0):
        part = _split.current()
        whole = part is None or x.shape[0] != part.hi - part.lo
        shape = x.shape if whole else (part.n,) + tuple(x.shape[1:])
        mask = backend.kernels().dropout_mask(shape, rate, seed, counter, x.dtype)
        self.mask = mask if whole else mask[part.lo:part.hi]
        return x * self.mask

    def backward(self, g):
        return g * self.mask


def dropout(x, rate, training=True, seed=None):
    """Zero each element with probability ``rate`` and scale the rest by ``1 / (1 - rate)``.

    Masks come from a counter-based hash computed where the data lives: ``seed=None`` takes the
    next key of the generator that ``gpucnn.manual_seed`` resets; an int ``seed`` gives the same mask
    at every call. With ``training=False`` (inference) the input is returned unchanged.
    """
    x = _check.tensor(x, "dropout", "x")
    _check.floating(x, "dropout", "x")
    rate = _check.rate(rate, "dropout")
    if not training or rate == 0.0:
        return x
    if seed is None:
        seed, counter = _split.draw(_random.next_dropout_key)
    else:
        seed, counter = int(seed) & 0xFFFFFFFF, 0
    return Dropout.apply(x, rate=rate, seed=seed, counter=counter)
