"""2-D convolution (cross-correlation) on NHWC images and HWIO kernels, as BLAS matrix products.

    y[n, p, q, o] = b[o] + sum_{i, j, c} xpad[n, p*sh + i, q*sw + j, c] * w[i, j, c, o]

``xpad`` is x with ``pad = (top, bottom, left, right)`` zeros. A kernel that covers the whole
unpadded input (LeNet-5's C5: a 5x5 kernel on a 5x5 map, one output pixel) is a dense layer: one
GEMM each way. Otherwise these algorithms, chosen here by shape (each works for any batch, size
and padding; its module says how):

- im2col (``_im2col``): the forward pass and the kernel gradient, any stride; split into border
  classes where much of the windows reads zero padding (AlexNet-small's 3x3 layers: 7-16%
  faster per op).
- shifted GEMMs (``_shifted``): the same two at stride 1 when ``8 * C_out <= C_in``.
- scatter (``_scatter``): the input gradient for strides above 1. At stride 1 the input
  gradient is the forward correlation of dy, padded by ``k - 1 - pad``, with the flipped,
  transposed kernel ("gather"; 8-90% faster than the scatter on every stride-1 layer of the zoo
  but C3).
- row gather (``_rowgather``): the stride-1 input gradient with few input channels (8 < C_in <
  32) and a deep gather (``KH*KW*C_out >= 800``; AlexNet-small's conv2: 1.24x the gather).
- row-Toeplitz (``_toeplitz``): the stride-1 input gradient with ``C_in <= 8`` and ``C_out >=
  C_in`` (LeNet-5's C3: 1.5x the scatter).
"""
from __future__ import annotations

import numpy as np

from .._geometry import padded_window_2d
from ._im2col import im2col_forward, im2col_weight_grad, planar, use_border_classes
from ._rowgather import row_gather_input_grad
from ._rowgather import applies as row_gather_applies
from ._scatter import scatter_input_grad
from ._shifted import shifted_forward, shifted_weight_grad
from ._toeplitz import toeplitz_input_grad
from ._util import as_dtype, check_array, check_float, check_ndim, fail
from .activation import _check_act, act_inplace

from .tuning import TUNING as T

__all__ = ["conv2d_forward", "conv2d_backward_input", "conv2d_backward_weight", "bias_grad",
           "conv_algorithm", "conv2d_forward_keep", "conv2d_backward_weight_kept"]


def _dense(x_shape, w_shape, pad) -> bool:
    """Whether the kernel covers the whole unpadded input (one output pixel): a dense layer."""
    return T.dense and not any(pad) and tuple(x_shape[1:3]) == tuple(w_shape[:2])


def _dx_method(x_shape, w_shape, ho, wo, stride, pad):
    """``(method, gather padding of dy or None)`` of the input gradient."""
    _, h, wd, c = x_shape
    kh, kw, _, co = w_shape
    if tuple(stride) != (1, 1):
        return "scatter", None
    gpad = _gather_pad(h, wd, kh, kw, ho, wo, pad)
    fallback = "gather" if gpad is not None else "scatter"
    if T.dx_method is not None:
        if T.dx_method == "gather" or (T.dx_method == "rowgather"
                                       and not row_gather_applies(h, wd, ho, wo, gpad)):
            return fallback, gpad
        return T.dx_method, gpad
    if c <= 8 and co >= c:
        return "toeplitz", gpad
    if (c < T.row_gather_max_c and kh * kw * co >= T.row_gather_min_k
            and row_gather_applies(h, wd, ho, wo, gpad)):
        return "rowgather", gpad
    return fallback, gpad


def conv_algorithm(what: str, x_shape, w_shape, stride, pad) -> str:
    """The algorithm the kernels choose for ``what`` ("forward", "input" or "weight") of a conv
    of ``x_shape`` by ``w_shape`` (the benchmark prints it)."""
    if _dense(x_shape, w_shape, pad):
        return "dense GEMM"
    ho, wo = _geometry("conv_algorithm", x_shape, w_shape, stride, pad)
    kh, kw, c, co = w_shape
    if what == "input":
        method, gpad = _dx_method(x_shape, w_shape, ho, wo, stride, pad)
        if method == "gather":
            wf_shape = (kh, kw, co, c)
            if not _shifted((1, 1), co, c) and use_border_classes(
                    (x_shape[0], ho, wo, co), wf_shape, (1, 1), gpad, x_shape[1], x_shape[2]):
                return "gather (border classes)"
        return "row gather" if method == "rowgather" else method
    if _shifted(stride, c, co):
        return "shifted GEMMs"
    if kh == kw == 1 and tuple(stride) == (1, 1) and not any(pad):
        return "GEMM (1x1)"
    if planar(c):
        return "im2col (planar blocks)"
    if use_border_classes(x_shape, w_shape, stride, pad, ho, wo):
        return "im2col (border classes)"
    return "im2col"


def _geometry(op, x_shape, w_shape, stride, pad):
    n, h, wd, c = x_shape
    kh, kw, ci, co = w_shape
    if ci != c:
        fail(op, "w.shape[2] (input channels)", f"{c} (x has {c} channels)", ci)
    return padded_window_2d(op, h, wd, kh, kw, *stride, pad)


def _shifted(stride, c, co) -> bool:
    """Shifted GEMMs for stride 1 when ``8 * C_out <= C_in``, im2col otherwise (measured)."""
    if tuple(stride) != (1, 1) or T.forward_method == "im2col":
        return False
    return T.forward_method == "shifted" or 8 * co <= c


def _forward(x, w, b, stride, pad, act, y, keep=False):
    """Into ``y``; returns the kept im2col blocks (``keep`` on the im2col path) or None."""
    if _dense(x.shape, w.shape, pad):
        y2 = y.reshape(x.shape[0], -1)
        np.dot(x.reshape(x.shape[0], -1), w.reshape(-1, w.shape[3]), out=y2)
        if b is not None:
            y2 += b
        act_inplace(y2, act)
    elif _shifted(stride, x.shape[3], w.shape[3]):
        shifted_forward(x, w, pad, y, b, act)
    else:
        return im2col_forward(x, w, stride, pad, y, b, act, keep=keep)
    return None


def conv2d_forward(x, w, b, stride, pad, act):
    """``y = act(conv(x, w) + b)``: x ``(N, H, W, C_in)``, w ``(KH, KW, C_in, C_out)``, b
    ``(C_out,)`` or None -> y ``(N, Ho, Wo, C_out)`` in x's dtype; bias and activation are
    applied in place on each block of output rows while it is in cache."""
    return _conv_forward(x, w, b, stride, pad, act, False)[0]


def _conv_forward(x, w, b, stride, pad, act, keep):
    op = "conv2d_forward"
    check_array(op, "x", x, 4, "(N, H, W, C)")
    check_ndim(op, "w", w, 4, "(KH, KW, C_in, C_out)")
    _check_act(op, act)
    ho, wo = _geometry(op, x.shape, w.shape, stride, pad)
    co = w.shape[3]
    dt = x.dtype
    if b is not None:
        b = np.asarray(b)
        if b.shape != (co,):
            fail(op, "b of shape (C_out,)", (co,), tuple(b.shape))
        b = as_dtype(b, dt)
    y = np.empty((x.shape[0], ho, wo, co), dtype=dt)
    col_bytes = y.size // co * w.shape[0] * w.shape[1] * w.shape[2] * x.itemsize
    keep = keep and col_bytes <= T.keep_max_bytes
    kept = _forward(x, as_dtype(w, dt), b, stride, pad, act, y, keep=keep)
    return y, kept


def conv2d_forward_keep(x, w, b, stride, pad, act):
    """``conv2d_forward`` that also returns what ``conv2d_backward_weight_kept`` reuses (the
    im2col blocks when they are built and small enough, else None): ``(y, kept)``."""
    return _conv_forward(x, w, b, stride, pad, act, True)


def conv2d_backward_weight_kept(kept, x, dy, w_shape, stride, pad):
    """``conv2d_backward_weight`` from the blocks ``conv2d_forward_keep`` kept (or, when it kept
    none, from x)."""
    if kept is None:
        return conv2d_backward_weight(x, dy, w_shape, stride, pad)
    kh, kw, c, co = (int(s) for s in w_shape)
    return im2col_weight_grad(x, as_dtype(dy, x.dtype), (kh, kw, c, co), stride, pad, kept=kept)


def conv2d_backward_weight(x, dy, w_shape, stride, pad):
    """``dw[i, j, c, o] = sum_{n, p, q} xpad[n, p*sh + i, q*sw + j, c] * dy[n, p, q, o]``, of
    shape ``w_shape``, in x's dtype."""
    op = "conv2d_backward_weight"
    check_array(op, "x", x, 4, "(N, H, W, C)")
    check_ndim(op, "dy", dy, 4, "(N, Ho, Wo, C_out)")
    w_shape = tuple(int(s) for s in w_shape)
    ho, wo = _geometry(op, x.shape, w_shape, stride, pad)
    co = w_shape[3]
    if dy.shape != (x.shape[0], ho, wo, co):
        fail(op, "dy shape", (x.shape[0], ho, wo, co), tuple(dy.shape))
    dy = as_dtype(dy, x.dtype)
    if _dense(x.shape, w_shape, pad):
        x2 = as_dtype(x, x.dtype).reshape(x.shape[0], -1)
        return np.dot(x2.T, dy.reshape(x.shape[0], co)).reshape(w_shape)
    if _shifted(stride, x.shape[3], co):
        return shifted_weight_grad(x, dy, w_shape, pad)
    return im2col_weight_grad(x, dy, w_shape, stride, pad)


def _gather_pad(h, wd, kh, kw, ho, wo, pad):
    """Padding of dy that makes the stride-1 input gradient a forward correlation with the
    flipped kernel, or None where the geometry would need cropping instead."""
    top, left = kh - 1 - pad[0], kw - 1 - pad[2]
    bottom, right = h + kh - 1 - ho - top, wd + kw - 1 - wo - left
    if min(top, left, bottom, right) < 0:
        return None
    return top, bottom, left, right


def conv2d_backward_input(dy, w, x_shape, stride, pad):
    """``dx`` of shape ``x_shape`` from dy ``(N, Ho, Wo, C_out)`` and w ``(KH, KW, C_in, C_out)``,
    in dy's dtype: ``dxpad[n, p*sh + i, q*sw + j, c] += sum_o dy[n, p, q, o] * w[i, j, c, o]``,
    the padding cropped. Input cells no window reads get zero. Also the transposed convolution
    of ``dy`` (output size ``x_shape``)."""
    op = "conv2d_backward_input"
    check_array(op, "dy", dy, 4, "(N, Ho, Wo, C_out)")
    check_ndim(op, "w", w, 4, "(KH, KW, C_in, C_out)")
    n, h, wd, c = (int(s) for s in x_shape)
    kh, kw, ci, co = w.shape
    nd, ho, wo, cd = dy.shape
    if ci != c or co != cd or nd != n:
        fail(op, "(N, C_in, C_out) of x_shape, w and dy to agree:",
             f"N={n}, C_in={c} (x_shape), C_out={co} (w)", f"dy shape {dy.shape}, w shape {w.shape}")
    dt = dy.dtype
    w = as_dtype(w, dt)
    dy = as_dtype(dy, dt)
    if _dense((n, h, wd, c), w.shape, pad):
        return np.dot(dy.reshape(n, co), w.reshape(-1, co).T).reshape(n, h, wd, c)
    method, gpad = _dx_method((n, h, wd, c), w.shape, ho, wo, stride, pad)
    if method == "toeplitz":
        return toeplitz_input_grad(dy, w, (n, h, wd, c), pad)
    if method == "rowgather":
        return row_gather_input_grad(dy, w, (n, h, wd, c), gpad)
    if method == "gather":
        wf = np.ascontiguousarray(w[::-1, ::-1].transpose(0, 1, 3, 2))   # (KH, KW, C_out, C_in)
        dx = np.empty((n, h, wd, c), dtype=dt)
        _forward(dy, wf, None, (1, 1), gpad, "linear", dx)
        return dx
    return scatter_input_grad(dy, w, (n, h, wd, c), stride, pad)


def bias_grad(dy):
    """``db[o] = sum of dy[..., o]`` over every other axis, in dy's dtype."""
    check_float("bias_grad", "dy", dy)
    if dy.ndim < 1:
        fail("bias_grad", "dy", "at least 1 dimension", f"shape {dy.shape}")
    if dy.ndim == 1:
        return dy.copy()
    c = dy.shape[-1]
    # rows of the leading axis first (long contiguous adds), then the remaining (..., C) block
    return np.ascontiguousarray(dy).reshape(dy.shape[0], -1).sum(axis=0).reshape(-1, c).sum(axis=0)
