"""gpucnn.kernels: kernel sets, arrays in and arrays out.

Two sets implement the same contract, function for function and signature for signature:

- ``numpy_set``: NumPy with BLAS, runs on any CPU.
- ``cuda_set``:  Numba ``@cuda.jit`` kernels on CuPy arrays (NumPy arrays under
  ``NUMBA_ENABLE_CUDASIM=1``, where Numba's simulator runs the very same kernel code).

Kernels know nothing of Tensors or autograd; ``gpucnn.functional`` pairs them into
differentiable ops. Layouts: images ``(N, H, W, C)``, conv kernels ``(KH, KW, C_in, C_out)``,
biases ``(C,)``. Geometry arguments are already normalised by the caller:
``stride = (sh, sw)``, ``pad = (top, bottom, left, right)`` (see ``_geometry``),
``pool = (ph, pw)``. Dtypes: float32 (float64 accepted for gradient checks); an output has
the dtype of the first floating input.

The contract (every set defines each name in ``CONTRACT``):

Array module
    ``xp``                                    the array module outputs live in
    ``asarray(a)``                            an array of this set from any array-like (no copy
                                              when already one)
    ``to_host(a)``                            a NumPy array

Convolution (cross-correlation, as every framework computes it)
    ``conv2d_forward(x, w, b, stride, pad, act)``   -> y ``(N, Ho, Wo, C_out)``
        ``b`` may be None; ``act`` in ``ACTIVATIONS`` is applied in the epilogue.
    ``conv2d_backward_input(dy, w, x_shape, stride, pad)``  -> dx of shape ``x_shape``
        (also the transposed convolution: ``conv2d_transpose(x) == backward_input(x)``)
    ``conv2d_backward_weight(x, dy, w_shape, stride, pad)`` -> dw of shape ``w_shape``
    ``bias_grad(dy)``                         -> db, ``dy`` summed over every axis but the last

Pooling (``pad`` cells never win a max and are not counted in a mean)
    ``max_pool_forward(x, pool, stride, pad)``      -> (y, idx); ``idx`` int32, shape of y, the
        flat index ``h * W + w`` of the winning input cell in its ``(n, :, :, c)`` plane: the
        first maximum in row-major window order; a window with a NaN gives NaN and its first
        real cell
    ``max_pool_backward(dy, idx, x_shape)``         -> dx (winners accumulate: windows may overlap)
    ``avg_pool_forward(x, pool, stride, pad)``      -> y
    ``avg_pool_backward(dy, x_shape, pool, stride, pad)`` -> dx

Activations, elementwise, any shape (``act`` in ``ACTIVATIONS``)
    ``act_forward(x, act)``                   -> y
    ``act_backward(dy, y, act)``              -> dx, from the forward *output* y

Softmax along the last axis of a 2-D ``(rows, K)`` array
    ``softmax_forward(x)``                    -> y
    ``softmax_backward(dy, y)``               -> dx = y * (dy - sum(dy * y))
    ``log_softmax_forward(x)``                -> y
    ``log_softmax_backward(dy, y)``           -> dx = dy - exp(y) * sum(dy)
    ``softmax_xent_forward(z, labels)``       -> (loss ``(rows,)``, p ``(rows, K)``): fused
        softmax + cross-entropy for integer labels; loss_i = logsumexp(z_i) - z_i[labels_i];
        a label outside ``[0, K)`` gives loss NaN for its row (no host check inside the kernel)
    ``softmax_xent_backward(p, labels, g)``   -> dz = (p - onehot(labels)) * g[:, None], g ``(rows,)``

Dropout, counter-based and identical in both sets for the same ``seed`` and ``counter``
    ``dropout_mask(shape, rate, seed, counter, dtype)`` -> mask, 0 or ``1 / (1 - rate)`` per
        element; element ``i`` (C order) is kept iff ``uniform(seed, counter, i) >= rate`` where
        ``uniform`` is ``random_u32(seed, counter, i) * 2**-32`` of the shared hash in
        ``_rng.py``.

Optimizer updates, in place on the parameter and its slots (``g`` is not modified)
    ``sgd_update(p, g, v, lr, momentum, nesterov, weight_decay)``  ``v`` may be None when
        momentum == 0
    ``adam_update(p, g, m, v, lr, beta1, beta2, eps, t, weight_decay)``  ``t`` is the 1-based
        step; bias-corrected as Keras/PyTorch Adam; weight_decay decoupled (AdamW style)
    ``rmsprop_update(p, g, s, lr, rho, eps, weight_decay)``
    weight_decay (L2, added to the gradient) for SGD and RMSprop; decoupled for Adam.
"""
from __future__ import annotations

import importlib

ACTIVATIONS = ("linear", "relu", "tanh", "sigmoid")

CONTRACT = (
    "xp", "asarray", "to_host",
    "conv2d_forward", "conv2d_backward_input", "conv2d_backward_weight", "bias_grad",
    "max_pool_forward", "max_pool_backward", "avg_pool_forward", "avg_pool_backward",
    "act_forward", "act_backward",
    "softmax_forward", "softmax_backward", "log_softmax_forward", "log_softmax_backward",
    "softmax_xent_forward", "softmax_xent_backward",
    "dropout_mask",
    "sgd_update", "adam_update", "rmsprop_update",
)

SETS = ("numpy", "cuda")


def load_set(name: str):
    """Import and return the kernel set module ``name`` ('numpy' or 'cuda')."""
    if name not in SETS:
        raise ValueError(f"unknown kernel set {name!r}; expected one of {SETS}")
    return importlib.import_module(f".{name}_set", __name__)
