"""Activations and softmax. Backward passes use the forward output (saved), not the input."""
from __future__ import annotations

from gpucnn import backend
from gpucnn.autograd import Function
from gpucnn.functional import _check


class Activation(Function):
    def forward(self, x, act="relu"):
        self.act = act
        self.y = backend.kernels().act_forward(x, act)
        return self.y

    def backward(self, g):
        return backend.kernels().act_backward(g, self.y, self.act)


def _act(x, act):
    x = _check.tensor(x, act, "x")
    _check.floating(x, act, "x")
    return Activation.apply(x, act=act)


def relu(x):
    """``max(0, x)`` elementwise (the guide's Figure 7).

    >>> import gpucnn.functional as F
    >>> F.relu([-2.0, 0.0, 9.0]).numpy()
    array([0., 0., 9.], dtype=float32)
    """
    return _act(x, "relu")


def tanh(x):
    """``tanh(x)`` elementwise; the activation of the guide's LeNet-5."""
    return _act(x, "tanh")


def sigmoid(x):
    """``1 / (1 + exp(-x))`` elementwise, stable for large ``|x|``; the perceptron's activation."""
    return _act(x, "sigmoid")


class _Rows(Function):
    """Softmax or log-softmax over the last axis of a 2-D view of the input."""

    def forward(self, x, axis=-1, log=False):
        xp = backend.xp()
        ks = backend.kernels()
        self.axis, self.log, self.shape = axis, log, x.shape
        xm = xp.moveaxis(x, axis, -1)
        self.mshape = xm.shape
        x2 = xp.ascontiguousarray(xm).reshape(-1, xm.shape[-1])
        y2 = ks.log_softmax_forward(x2) if log else ks.softmax_forward(x2)
        self.y2 = y2
        return xp.moveaxis(y2.reshape(self.mshape), -1, self.axis)

    def backward(self, g):
        xp = backend.xp()
        ks = backend.kernels()
        g2 = xp.ascontiguousarray(xp.moveaxis(g, self.axis, -1)).reshape(self.y2.shape)
        d2 = ks.log_softmax_backward(g2, self.y2) if self.log else ks.softmax_backward(g2, self.y2)
        return xp.moveaxis(d2.reshape(self.mshape), -1, self.axis)


def _rows(x, axis, op, log):
    x = _check.tensor(x, op, "x")
    _check.floating(x, op, "x")
    if not isinstance(axis, int) or not -x.ndim <= axis < x.ndim:
        raise ValueError(f"{op}: axis must be an int in [-{x.ndim}, {x.ndim}), got {axis!r}")
    return _Rows.apply(x, axis=axis % x.ndim, log=log)


def softmax(x, axis=-1):
    """``exp(x) / sum(exp(x))`` along ``axis``, max-subtracted (stable for logits of 1e4).

    >>> import gpucnn.functional as F
    >>> F.softmax([[0.0, 0.0]]).numpy()
    array([[0.5, 0.5]], dtype=float32)
    """
    return _rows(x, axis, "softmax", False)


def log_softmax(x, axis=-1):
    """``x - logsumexp(x)`` along ``axis``, stable for logits of 1e4."""
    return _rows(x, axis, "log_softmax", True)
