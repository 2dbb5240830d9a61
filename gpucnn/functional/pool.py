"""Max and average pooling with Keras semantics (padded cells never win, never counted)."""
from __future__ import annotations

from gpucnn import backend
from gpucnn.autograd import Function
from gpucnn.functional import _check
from gpucnn.kernels._geometry import check_padding, pair, window_2d


class MaxPool2D(Function):
    """The gradient goes to each window's winner (the flat index the forward kernel returns)."""

    def forward(self, x, pool=(2, 2), stride=(2, 2), pad=(0, 0, 0, 0)):
        y, self.idx = backend.kernels().max_pool_forward(x, pool, stride, pad)
        self.x_shape, self.pool, self.stride, self.pad = x.shape, pool, stride, pad
        return y

    def backward(self, g):
        return backend.kernels().max_pool_backward(g, self.idx, self.x_shape, self.pool,
                                                   self.stride, self.pad)


class AvgPool2D(Function):
    def forward(self, x, pool=(2, 2), stride=(2, 2), pad=(0, 0, 0, 0)):
        self.x_shape, self.pool, self.stride, self.pad = x.shape, pool, stride, pad
        return backend.kernels().avg_pool_forward(x, pool, stride, pad)

    def backward(self, g):
        return backend.kernels().avg_pool_backward(g, self.x_shape, self.pool, self.stride, self.pad)


_CHECKED = {}     # signature -> the checked pool arguments


def _geometry(x, pool_size, strides, padding, op):
    key = _check.signature((x,), (op, pool_size, strides, padding))
    args = _CHECKED.get(key)
    if args is None:
        x = _check.image(x, op, "x")
        ph, pw = pair(pool_size, "pool_size", op)
        sh, sw = (ph, pw) if strides is None else pair(strides, "strides", op)
        padding = check_padding(padding, op)
        _, _, pad = window_2d(x.shape[1], x.shape[2], ph, pw, sh, sw, padding, op)
        args = _check.remember(_CHECKED, key, {"pool": (ph, pw), "stride": (sh, sw), "pad": pad})
    return x, args


def max_pool2d(x, pool_size=2, strides=None, padding="valid"):
    """Max pooling of ``(N, H, W, C)`` images; ``strides=None`` means ``pool_size``.

    The guide's Figure 10 (a 4x4 map, 2x2 windows):

    >>> import numpy as np, gpucnn.functional as F
    >>> m = np.array([[1, 3, 2, 1], [4, 6, 5, 0], [7, 2, 9, 8], [1, 0, 3, 4]], np.float32)
    >>> F.max_pool2d(m.reshape(1, 4, 4, 1)).numpy()[0, :, :, 0]
    array([[6., 5.],
           [7., 9.]], dtype=float32)
    """
    x, geo = _geometry(x, pool_size, strides, padding, "max_pool2d")
    return MaxPool2D.apply(x, **geo)


def avg_pool2d(x, pool_size=2, strides=None, padding="valid"):
    """Average pooling of ``(N, H, W, C)`` images; with ``same`` the mean is over real cells only.

    >>> import numpy as np, gpucnn.functional as F
    >>> m = np.array([[1, 3, 2, 1], [4, 6, 5, 0], [7, 2, 9, 8], [1, 0, 3, 4]], np.float32)
    >>> F.avg_pool2d(m.reshape(1, 4, 4, 1)).numpy()[0, :, :, 0]
    array([[3.5, 2. ],
           [2.5, 6. ]], dtype=float32)
    """
    x, geo = _geometry(x, pool_size, strides, padding, "avg_pool2d")
    return AvgPool2D.apply(x, **geo)
