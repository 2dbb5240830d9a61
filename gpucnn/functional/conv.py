"""Convolution and transposed convolution, forward and backward in one place."""
from __future__ import annotations

from gpucnn import backend
from gpucnn.autograd import Function, is_grad_enabled
from gpucnn.functional import _check
from gpucnn.kernels import ACTIVATIONS, has
from gpucnn.kernels._geometry import check_padding, pair, transpose_out_1d, window_2d


class Conv2D(Function):
    """``y = act(conv(x, w) + b)``; the activation runs in the kernel's epilogue."""

    def forward(self, x, w, b=None, stride=(1, 1), pad=(0, 0, 0, 0), act="linear", keep=False):
        ks = backend.kernels()
        if keep and has(ks, "conv_keep"):   # the set may keep its im2col blocks for dw
            y, self.kept = ks.conv2d_forward_keep(x, w, b, stride, pad, act)
        else:
            y, self.kept = ks.conv2d_forward(x, w, b, stride, pad, act), None
        self.x, self.w, self.stride, self.pad, self.act = x, w, stride, pad, act
        self.y = y if act != "linear" else None
        return y

    def backward(self, g):
        ks = backend.kernels()
        if self.kept is None and has(ks, "fused_backward"):
            return self._fused_backward(ks, g)
        if self.act != "linear":
            g = ks.act_backward(g, self.y, self.act)
        x, w = self.x, self.w
        px, pw = self.parents[0], self.parents[1]
        dx = ks.conv2d_backward_input(g, w, x.shape, self.stride, self.pad) if px.requires_grad else None
        dw = None
        if pw.requires_grad:
            if self.kept is not None:
                dw = ks.conv2d_backward_weight_kept(self.kept, x, g, w.shape, self.stride,
                                                    self.pad)
            else:
                dw = ks.conv2d_backward_weight(x, g, w.shape, self.stride, self.pad)
        if len(self.parents) == 3:
            return dx, dw, ks.bias_grad(g) if self.parents[2].requires_grad else None
        return dx, dw

    def _fused_backward(self, ks, g):
        """The activation's gradient read inside the conv gradients, the bias gradient summed
        by the kernel-gradient pass: two launches (three with a split reduction) where the
        plain path takes four."""
        x, w, act, y = self.x, self.w, self.act, self.y
        px, pw = self.parents[0], self.parents[1]
        pb = self.parents[2] if len(self.parents) == 3 else None
        need_db = pb is not None and pb.requires_grad
        dx = dw = db = None
        if px.requires_grad:
            dx = ks.conv2d_backward_input_act(g, y, act, w, x.shape, self.stride, self.pad)
        if pw.requires_grad:
            dw, db = ks.conv2d_backward_weight_bias(x, g, y, act, w.shape, self.stride,
                                                    self.pad)
        elif need_db:
            db = ks.bias_grad(ks.act_backward(g, y, act) if act != "linear" else g)
        if pb is not None:
            return dx, dw, db if need_db else None
        return dx, dw


class Conv2DTranspose(Function):
    """``y = conv2d_backward_input(x, w) + b``: the adjoint of a ``conv2d`` with the same kernel."""

    def forward(self, x, w, b=None, out_shape=None, stride=(1, 1), pad=(0, 0, 0, 0)):
        ks = backend.kernels()
        y = ks.conv2d_backward_input(x, w, out_shape, stride, pad)
        if b is not None:
            y += b
        self.x, self.w, self.stride, self.pad = x, w, stride, pad
        return y

    def backward(self, g):
        ks = backend.kernels()
        x, w = self.x, self.w
        px, pw = self.parents[0], self.parents[1]
        dx = ks.conv2d_forward(g, w, None, self.stride, self.pad, "linear") if px.requires_grad else None
        dw = ks.conv2d_backward_weight(g, x, w.shape, self.stride, self.pad) if pw.requires_grad else None
        if len(self.parents) == 3:
            return dx, dw, ks.bias_grad(g) if self.parents[2].requires_grad else None
        return dx, dw


def _activation_name(activation, op):
    if activation is None:
        return "linear"
    if activation not in ACTIVATIONS:
        raise ValueError(f"{op}: a fused activation must be one of {ACTIVATIONS}, got {activation!r}")
    return activation


_CONV2D = {}      # signature -> the checked Conv2D arguments


def conv2d(x, w, b=None, strides=1, padding="valid", activation=None):
    """2-D convolution (cross-correlation) of channels-last images.

    ``x`` ``(N, H, W, C_in)``, ``w`` ``(KH, KW, C_in, C_out)``, ``b`` ``(C_out,)`` or None;
    ``strides`` an int or a pair; ``padding`` ``"valid"`` or ``"same"`` (TensorFlow: the odd
    padding pixel goes to the bottom/right); ``activation`` one of ``linear relu tanh sigmoid``
    fused into the kernel. Returns ``(N, Ho, Wo, C_out)``.

    The guide's Figure 6: a 2x2 kernel [[1, 0], [0, 1]] with bias 1 over the patch [[1, 2], [0, 7]]:

    >>> import numpy as np, gpucnn.functional as F
    >>> x = np.array([[1, 2], [0, 7]], np.float32).reshape(1, 2, 2, 1)
    >>> w = np.array([[1, 0], [0, 1]], np.float32).reshape(2, 2, 1, 1)
    >>> F.conv2d(x, w, np.ones(1, np.float32)).numpy().ravel()
    array([9.], dtype=float32)
    """
    key = _check.signature((x, w, b), (strides, padding, activation))
    args = _CONV2D.get(key)
    if args is None:
        op = "conv2d"
        x = _check.image(x, op, "x")
        w = _check.tensor(w, op, "w")
        _check.rank(w, 4, op, "w", "(KH, KW, C_in, C_out)")
        _check.same_dtype(x, w, op, "x", "w")
        kh, kw, cin, cout = w.shape
        if x.shape[3] != cin:
            raise ValueError(f"{op}: input has {x.shape[3]} channels but the kernel expects "
                             f"{cin} (x {x.shape}, w {w.shape})")
        sh, sw = pair(strides, "strides", op)
        _, _, pad = window_2d(x.shape[1], x.shape[2], kh, kw, sh, sw,
                              check_padding(padding, op), op)
        act = _activation_name(activation, op)
        b = _check.bias(b, cout, x, op)
        args = _check.remember(_CONV2D, key, {"stride": (sh, sw), "pad": pad, "act": act})
    inputs = (x, w) if b is None else (x, w, b)
    keep = w.requires_grad and is_grad_enabled()      # the kernel gradient will be wanted
    return Conv2D.apply(*inputs, keep=keep, **args)


def conv2d_transpose(x, w, b=None, strides=1, padding="valid"):
    """Transposed convolution (Keras ``Conv2DTranspose``), the gradient of ``conv2d`` w.r.t. its input.

    ``x`` ``(N, H, W, C_in)``, ``w`` ``(KH, KW, C_out, C_in)`` (Keras layout), ``b`` ``(C_out,)``.
    Output ``(N, Ho, Wo, C_out)`` with ``Ho = H * sh`` for ``same`` and
    ``(H - 1) * sh + max(KH, sh)`` for ``valid``.

    >>> import numpy as np, gpucnn.functional as F
    >>> F.conv2d_transpose(np.ones((1, 2, 2, 1), np.float32), np.ones((2, 2, 1, 1), np.float32),
    ...                    strides=2).shape
    (1, 4, 4, 1)
    """
    op = "conv2d_transpose"
    x = _check.image(x, op, "x")
    w = _check.tensor(w, op, "w")
    _check.rank(w, 4, op, "w", "(KH, KW, C_out, C_in)")
    _check.same_dtype(x, w, op, "x", "w")
    kh, kw, cout, cin = w.shape
    if x.shape[3] != cin:
        raise ValueError(f"{op}: input has {x.shape[3]} channels but the kernel expects {cin} "
                         f"(x {x.shape}, w {w.shape} as (KH, KW, C_out, C_in))")
    sh, sw = pair(strides, "strides", op)
    padding = check_padding(padding, op)
    n, h, wd, _ = x.shape
    ho, wo = transpose_out_1d(h, kh, sh, padding), transpose_out_1d(wd, kw, sw, padding)
    hc, wc, pad = window_2d(ho, wo, kh, kw, sh, sw, padding, op)
    assert (hc, wc) == (h, wd), (hc, wc, h, wd)
    b = _check.bias(b, cout, x, op)
    inputs = (x, w) if b is None else (x, w, b)
    return Conv2DTranspose.apply(*inputs, out_shape=(n, ho, wo, cout), stride=(sh, sw), pad=pad)
