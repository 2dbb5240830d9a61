"""The Tensor's arithmetic: ``+ - * / @``, unary minus, ``**`` by a constant, ``sum``, ``mean``,
``reshape``, ``transpose``, ``exp``, ``log`` and indexing by slices, each with a gradient that
undoes broadcasting. Written once over the array module of the data (NumPy or CuPy).
"""
from __future__ import annotations

import math
import numbers

from gpucnn import backend
from gpucnn.autograd import Function, Tensor, as_tensor


def _unbroadcast(g, shape):
    """Sum ``g`` down to ``shape`` (the inverse of NumPy broadcasting)."""
    if tuple(g.shape) == tuple(shape):
        return g
    extra = g.ndim - len(shape)
    if extra > 0:
        g = g.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    return g


class Add(Function):
    def forward(self, a, b):
        self.sa, self.sb = a.shape, b.shape
        return a + b

    def backward(self, g):
        return _unbroadcast(g, self.sa), _unbroadcast(g, self.sb)


class Sub(Function):
    def forward(self, a, b):
        self.sa, self.sb = a.shape, b.shape
        return a - b

    def backward(self, g):
        return _unbroadcast(g, self.sa), _unbroadcast(-g, self.sb)


class Mul(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        return a * b

    def backward(self, g):
        return _unbroadcast(g * self.b, self.a.shape), _unbroadcast(g * self.a, self.b.shape)


class Div(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        return a / b

    def backward(self, g):
        ga = g / self.b
        return _unbroadcast(ga, self.a.shape), _unbroadcast(-ga * self.a / self.b, self.b.shape)


class ScalarOp(Function):
    """``x op c`` for a Python number ``c`` (no gradient for ``c``, no dtype change)."""

    def forward(self, x, c, op):
        self.c, self.op = c, op
        if op == "add":
            return x + c
        if op == "mul":
            return x * c
        if op == "rsub":
            return c - x
        if op == "rdiv":
            self.x = x
            self.y = c / x
            return self.y
        self.x = x  # pow
        return x ** c

    def backward(self, g):
        op, c = self.op, self.c
        if op == "add":
            return g
        if op == "mul":
            return g * c
        if op == "rsub":
            return -g
        if op == "rdiv":
            return -g * self.y / self.x
        return g * (c * self.x ** (c - 1))


class Neg(Function):
    def forward(self, x):
        return -x

    def backward(self, g):
        return -g


class MatMul(Function):
    def forward(self, a, b):
        if a.ndim < 1 or b.ndim < 1:
            raise ValueError("matmul: both operands need at least one dimension")
        if a.shape[-1] != b.shape[-2 if b.ndim > 1 else 0]:
            raise ValueError(f"matmul: inner dimensions differ: {tuple(a.shape)} @ {tuple(b.shape)}")
        self.a, self.b = a, b
        return a @ b

    def backward(self, g):
        a, b = self.a, self.b
        if a.ndim == 1 and b.ndim == 1:
            return g * b, g * a
        a2 = a[None, :] if a.ndim == 1 else a
        b2 = b[:, None] if b.ndim == 1 else b
        g2 = g
        if a.ndim == 1:
            g2 = g2[..., None, :]
        if b.ndim == 1:
            g2 = g2[..., None]
        ga = g2 @ b2.swapaxes(-1, -2)
        gb = a2.swapaxes(-1, -2) @ g2
        if a.ndim == 1:
            ga = ga[..., 0, :]
        if b.ndim == 1:
            gb = gb[..., 0]
        return _unbroadcast(ga, a.shape), _unbroadcast(gb, b.shape)


def _axes(axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    axis = (axis,) if isinstance(axis, int) else tuple(axis)
    return tuple(a % ndim for a in axis)


class Sum(Function):
    def forward(self, x, axis=None, keepdims=False, mean=False):
        self.shape, self.axes, self.keepdims = x.shape, _axes(axis, x.ndim), keepdims
        self.scale = None
        if mean:
            self.scale = 1.0 / max(math.prod(x.shape[a] for a in self.axes), 1)
            return x.mean(axis=axis, keepdims=keepdims)
        return x.sum(axis=axis, keepdims=keepdims)

    def backward(self, g):
        if not self.keepdims:
            shape = list(self.shape)
            for a in self.axes:
                shape[a] = 1
            g = g.reshape(shape)
        if self.scale is not None:
            g = g * self.scale
        return _xp(g).broadcast_to(g, self.shape)


class Reshape(Function):
    def forward(self, x, shape):
        self.shape = x.shape
        return x.reshape(shape)

    def backward(self, g):
        return g.reshape(self.shape)


class Transpose(Function):
    def forward(self, x, axes):
        self.axes = axes
        return x.transpose(axes)

    def backward(self, g):
        if self.axes is None:
            return g.transpose()
        n = len(self.axes)                      # the inverse permutation (axes may be < 0)
        return g.transpose(sorted(range(n), key=lambda i: self.axes[i] % n))


class Exp(Function):
    def forward(self, x):
        self.y = _xp(x).exp(x)
        return self.y

    def backward(self, g):
        return g * self.y


class Log(Function):
    def forward(self, x):
        self.x = x
        return _xp(x).log(x)

    def backward(self, g):
        return g / self.x


class GetItem(Function):
    def forward(self, x, index):
        self.shape, self.dtype, self.index = x.shape, x.dtype, index
        return x[index]

    def backward(self, g):
        xp = _xp(g)
        dx = xp.zeros(self.shape, dtype=g.dtype)
        parts = self.index if isinstance(self.index, tuple) else (self.index,)
        if all(p is None or p is Ellipsis or isinstance(p, (int, slice)) for p in parts):
            dx[self.index] = g  # basic indexing never selects a cell twice
        elif xp.__name__ == "numpy":
            xp.add.at(dx, self.index, g)
        elif backend.has("scatter_add"):   # the device arrays of the active set
            backend.kernels().scatter_add(dx, self.index, g)
        else:
            raise TypeError(f"indexing with repeated indices: the {backend.get_backend()} kernel "
                            "set cannot add the gradient at repeated indices of its arrays (it "
                            "has no 'scatter_add')")
        return dx


def _xp(a):
    mod = type(a).__module__
    if mod.startswith("cupy"):
        import sys

        return sys.modules["cupy"]
    import numpy

    return numpy


#: per op, ``x op c`` and ``c op x`` for a Python number ``c`` as ScalarOps: (name, c as given
#: to it) for the left, the name for the right
_SCALAR = {Add: (("add", lambda c: c), "add"), Sub: (("add", lambda c: -c), "rsub"),
           Mul: (("mul", lambda c: c), "mul"), Div: (("mul", lambda c: 1.0 / c), "rdiv")}


def _binary(op):
    (name, given), rname = _SCALAR[op]

    def method(self, other):
        if isinstance(other, numbers.Number) and not isinstance(other, bool):
            return ScalarOp.apply(self, c=given(other), op=name)
        return op.apply(self, as_tensor(other, self))

    def rmethod(self, other):
        if isinstance(other, numbers.Number) and not isinstance(other, bool):
            return ScalarOp.apply(self, c=other, op=rname)
        return op.apply(as_tensor(other, self), self)

    return method, rmethod


def attach(T):
    """Install the operators and methods on the Tensor class."""
    for name, op in (("add", Add), ("sub", Sub), ("mul", Mul), ("truediv", Div)):
        m, r = _binary(op)
        setattr(T, f"__{name}__", m)
        setattr(T, f"__r{name}__", r)
    T.__matmul__ = lambda a, b: MatMul.apply(a, as_tensor(b, a))
    T.__rmatmul__ = lambda a, b: MatMul.apply(as_tensor(b, a), a)
    T.__neg__ = lambda a: Neg.apply(a)

    def __pow__(a, c):
        if not isinstance(c, numbers.Number) or isinstance(c, bool):
            raise TypeError(f"Tensor ** : the exponent must be a Python number, got {type(c).__name__}")
        return ScalarOp.apply(a, c=c, op="pow")

    T.__pow__ = __pow__
    T.sum = lambda a, axis=None, keepdims=False: Sum.apply(a, axis=axis, keepdims=keepdims)
    T.mean = lambda a, axis=None, keepdims=False: Sum.apply(a, axis=axis, keepdims=keepdims, mean=True)

    T.reshape = lambda a, *shape: Reshape.apply(a, shape=_one_or_many(shape))
    T.transpose = lambda a, *axes: Transpose.apply(a, axes=_one_or_many(axes) or None)
    T.T = property(lambda a: Transpose.apply(a, axes=None))
    T.exp = lambda a: Exp.apply(a)
    T.log = lambda a: Log.apply(a)
    T.__getitem__ = lambda a, index: GetItem.apply(a, index=_check_index(index))


def _one_or_many(args):
    """``f(2, 3)`` and ``f((2, 3))`` alike: the arguments as one tuple."""
    return tuple(args[0]) if len(args) == 1 and isinstance(args[0], (tuple, list)) else args


def _check_index(index):
    parts = index if isinstance(index, tuple) else (index,)
    for p in parts:
        if isinstance(p, Tensor):
            raise TypeError("Tensor indexing: index with ints, slices, None or Ellipsis, not a Tensor")
    return index
