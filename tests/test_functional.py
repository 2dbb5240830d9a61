"""gpucnn.functional on the NumPy backend beyond the op registry (tests/test_ops.py checks every
op's gradient against finite differences): ops composed (ReLU then pooling, a shared output,
softmax along other axes), the losses, the transposed convolution's sizes and adjoint, the
guide's worked examples, and the errors for bad input."""
import contextlib
import sys

import numpy as np
import pytest

import gpucnn
import gpucnn.functional as F
from _gradcheck import gradcheck
from _ops import _act_derivative
from _reference import ref_act


@pytest.fixture(autouse=True)
def _numpy_backend():
    gpucnn.set_backend("numpy")


@pytest.mark.parametrize("h,k,s,pad,expected", [
    (4, 3, 2, "valid", 9), (4, 3, 2, "same", 8), (3, 2, 3, "valid", 9), (5, 1, 1, "valid", 5),
    (3, 5, 1, "same", 3), (3, 4, 2, "valid", 8),
])
def test_conv2d_transpose_output_size_follows_keras(h, k, s, pad, expected):
    y = F.conv2d_transpose(np.ones((1, h, h, 1), np.float32), np.ones((k, k, 2, 1), np.float32),
                           strides=s, padding=pad)
    assert y.shape == (1, expected, expected, 2)


def test_conv2d_transpose_is_the_adjoint_of_conv2d(rng):
    # <conv(x), y> == <x, conv_transpose(y)> for the same kernel, strides and padding (on the
    # sizes where conv_transpose's Keras output size gives back x's size)
    x = rng.standard_normal((2, 8, 6, 3))
    w = rng.standard_normal((3, 2, 3, 4))
    y = F.conv2d(x, w, strides=2, padding="same").numpy()
    d = rng.standard_normal(y.shape)
    xt = F.conv2d_transpose(d, w, strides=2, padding="same").numpy()
    assert xt.shape == x.shape
    np.testing.assert_allclose((y * d).sum(), (x * xt).sum(), rtol=1e-10)


# ReLU (fused into the conv, or a layer of its own) then max pooling, and a ReLU output with two
# consumers: the gradient against finite differences.
RELU_POOL = [(3, 2, "valid"), (2, 2, "same"), (3, 1, "same")]


def _ids(cases):
    return ["x".join(map(str, c)) for c in cases]


@pytest.mark.parametrize("fn", [lambda x: F.softmax(x, axis=1), lambda x: F.log_softmax(x, axis=0)],
                         ids=["softmax-axis1", "log_softmax-axis0"])
def test_softmax_along_other_axes_gradients(fn, rng):
    gradcheck(fn, rng.standard_normal((3, 4, 5)) * 2)


@pytest.mark.parametrize("p,s,pad", RELU_POOL, ids=_ids(RELU_POOL))
@pytest.mark.parametrize("relu", ["fused", "layer"])
def test_relu_then_max_pool_gradients(relu, p, s, pad, rng):
    def fn(x, k, b):
        if relu == "fused":
            z = F.conv2d(x, k, b, padding="same", activation="relu")
        else:
            z = F.relu(F.conv2d(x, k, b, padding="same"))
        return F.max_pool2d(z, pool_size=p, strides=s, padding=pad)
    gradcheck(fn, rng.standard_normal((2, 7, 6, 2)), rng.standard_normal((3, 3, 2, 3)),
              rng.standard_normal(3))


def test_relu_output_with_a_second_consumer(rng):
    def fn(x, k, b):
        z = F.conv2d(x, k, b, padding="same", activation="relu")
        return F.max_pool2d(z, 3, 2) + F.avg_pool2d(z, 3, 2)
    gradcheck(fn, rng.standard_normal((2, 7, 7, 2)), rng.standard_normal((3, 3, 2, 3)),
              rng.standard_normal(3))


def test_dense_flatten_gradients(rng):
    gradcheck(lambda x, w, b: F.dense(F.flatten(x), w, b, activation="tanh"),
              rng.standard_normal((3, 2, 2, 2)), rng.standard_normal((8, 5)), rng.standard_normal(5))
    gradcheck(lambda x, w: F.dense(x, w), rng.standard_normal((1, 4)), rng.standard_normal((4, 3)))


def _dense_against_formulas(rng, act, shape, bias=True, x_grad=True, tol=2e-5, within=None):
    """``F.dense`` of float32 ``x`` ``(n, k)`` and ``w`` ``(k, m)`` (``shape``), forward and
    gradients (inside the context ``within``), against the float64 formulas."""
    n, k, m = shape
    x = rng.standard_normal((n, k)).astype(np.float32)
    w = (rng.standard_normal((k, m)) / 4).astype(np.float32)
    b = rng.standard_normal(m).astype(np.float32)
    r = rng.standard_normal((n, m)).astype(np.float32)
    tx, tw = gpucnn.Tensor(x, requires_grad=x_grad), gpucnn.Tensor(w, requires_grad=True)
    tb = gpucnn.Tensor(b, requires_grad=True) if bias else None
    with within or contextlib.nullcontext():
        out = F.dense(tx, tw, tb, activation=None if act == "linear" else act)
        (out * gpucnn.Tensor(r)).sum().backward()
    x64, w64, b64, r64 = (a.astype(np.float64) for a in (x, w, b, r))
    y = ref_act(x64 @ w64 + (b64 if bias else 0), act)
    dz = r64 * _act_derivative(y, act)
    tol = dict(rtol=tol, atol=tol)
    np.testing.assert_allclose(out.numpy(), y, **tol)
    np.testing.assert_allclose(tw.grad.numpy(), x64.T @ dz, **tol)
    if x_grad:
        np.testing.assert_allclose(tx.grad.numpy(), dz @ w64.T, **tol)
    else:
        assert tx.grad is None
    if bias:
        np.testing.assert_allclose(tb.grad.numpy(), dz.sum(0), **tol)


@pytest.mark.parametrize("act", ["linear", "relu", "sigmoid", "tanh"])
@pytest.mark.parametrize("path", ["conv", "matmul"])
@pytest.mark.parametrize("bias,x_grad", [(True, True), (False, True), (True, False)])
def test_dense_on_the_cuda_set_against_plain_formulas(act, path, bias, x_grad, cuda_backend,
                                                      monkeypatch, rng):
    # small layers run as 1x1 convolutions of the set's kernels (bias and activation in the
    # epilogue, fused gradients); layers above CONV_MAX_MACS on the array module's matmul
    dense_mod = sys.modules["gpucnn.functional.dense"]
    if path == "matmul":
        monkeypatch.setattr(dense_mod, "CONV_MAX_MACS", 0)
    ran = []
    conv_forward = dense_mod.DenseConv.forward
    monkeypatch.setattr(dense_mod.DenseConv, "forward",
                        lambda self, *a, **k: ran.append(1) or conv_forward(self, *a, **k))
    _dense_against_formulas(rng, act, (7, 13, 6), bias, x_grad)
    assert len(ran) == (path == "conv")


@pytest.mark.parametrize("act", ["linear", "relu"])
def test_dense_fused_gradients_with_tf32_allowed(act, cuda_backend, rng):
    # the TF32 kernels have no fused activation gradient: a linear layer's has none to apply
    from gpucnn.kernels import _precision
    # operands rounded to 10 mantissa bits
    _dense_against_formulas(rng, act, (5, 16, 8), tol=1e-2,
                            within=_precision.float32_matmul_precision("high"))


@pytest.mark.parametrize("labels,ok", [([0, 2, 1], True), ([0, -1, 1], False), ([0, 3, 1], False),
                                       (np.array([0, 2, 1], ">i8"), True),
                                       (np.array([0, 2**56, 1], ">i8"), False),
                                       (np.array([0, 255, 1], np.uint8), False),
                                       (np.array([0, -128, 1], np.int8), False)])
def test_sparse_labels_are_range_checked_in_any_integer_dtype(labels, ok):
    z = np.zeros((3, 3), np.float32)
    if ok:
        assert float(F.sparse_categorical_crossentropy(labels, z, from_logits=True)) > 0
    else:
        with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\) for 3 classes"):
            F.sparse_categorical_crossentropy(labels, z, from_logits=True)


def test_dense_gradients_on_the_cuda_set_in_float64(cuda_backend, rng):
    gradcheck(lambda x, w, b: F.dense(x, w, b, activation="sigmoid"),
              rng.standard_normal((3, 5)), rng.standard_normal((5, 4)), rng.standard_normal(4))


def test_dropout_is_identity_in_inference_and_scales_in_training():
    x = np.ones((200, 50), np.float32)
    assert F.dropout(x, 0.5, training=False).numpy() is not None
    np.testing.assert_array_equal(F.dropout(x, 0.5, training=False).numpy(), x)
    y = F.dropout(x, 0.25).numpy()
    assert set(np.unique(y)) <= {0.0, np.float32(1 / 0.75)}
    assert abs((y == 0).mean() - 0.25) < 0.02
    gpucnn.manual_seed(3)
    a = F.dropout(x, 0.5).numpy()
    gpucnn.manual_seed(3)
    b = F.dropout(x, 0.5).numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, F.dropout(x, 0.5).numpy())


def test_loss_gradients_through_softmax_and_sigmoid(rng):
    """The losses on probabilities after the activation that makes them (each loss alone, on
    logits too, is in the op registry's gradient checks)."""
    n, k = 4, 5
    labels = rng.integers(0, k, n)
    soft = rng.random((n, k))
    soft /= soft.sum(1, keepdims=True)
    z = rng.standard_normal((n, k))
    gradcheck(lambda t: F.sparse_categorical_crossentropy(labels, F.softmax(t)), z)
    gradcheck(lambda t: F.categorical_crossentropy(np.eye(k)[labels], F.softmax(t)), z)
    gradcheck(lambda t: F.categorical_crossentropy(soft, F.softmax(t)), z)
    bt = rng.random((n, 3))
    gradcheck(lambda t: F.binary_crossentropy(bt, F.sigmoid(t)), rng.standard_normal((n, 3)))


def test_loss_values_against_direct_formulas(rng):
    n, k = 6, 4
    z = rng.standard_normal((n, k))
    labels = rng.integers(0, k, n)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    ce = -np.log(p[np.arange(n), labels]).mean()
    assert np.isclose(float(F.sparse_categorical_crossentropy(labels, z, from_logits=True)), ce)
    assert np.isclose(float(F.sparse_categorical_crossentropy(labels, p)), ce)
    assert np.isclose(float(F.categorical_crossentropy(np.eye(k)[labels], p)), ce)
    y = rng.random((n, 3))
    s = 1 / (1 + np.exp(-z[:, :3]))
    bce = -(y * np.log(s) + (1 - y) * np.log(1 - s)).mean()
    assert np.isclose(float(F.binary_crossentropy(y, z[:, :3], from_logits=True)), bce)
    assert np.isclose(float(F.binary_crossentropy(y, s)), bce)


def test_softmax_and_losses_are_stable_for_huge_logits():
    z = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4]], np.float32)
    for y in (F.softmax(z).numpy(), F.log_softmax(z).numpy()):
        assert np.isfinite(y).all()
    np.testing.assert_allclose(F.softmax(z).numpy()[1], [1 / 3] * 3, rtol=1e-6)
    assert np.isfinite(float(F.sparse_categorical_crossentropy([1, 0], z, from_logits=True)))
    assert np.isfinite(float(F.binary_crossentropy(np.ones((2, 3), np.float32), z, from_logits=True)))
    x = gpucnn.Tensor(z, requires_grad=True)
    F.sparse_categorical_crossentropy([1, 0], x, from_logits=True).backward()
    assert np.isfinite(x.grad.numpy()).all()


# -- the guide's worked examples ---------------------------------------------------------------

def test_guide_figures_6_7_convolution_then_relu():
    # a 3x3 image convolved with the 2x2 kernel of Figure 6 (bias 1), then ReLU; its top-left
    # window is Figure 6's patch [[1, 2], [0, 7]], which gives 9
    x = np.array([[1, 2, -3], [0, 7, -5], [-4, -6, 1]], np.float32).reshape(1, 3, 3, 1)
    w = np.array([[1, 0], [0, 1]], np.float32).reshape(2, 2, 1, 1)
    z = F.conv2d(x, w, np.ones(1, np.float32)).numpy()[0, :, :, 0]
    np.testing.assert_array_equal(z, [[9, -2], [-5, 9]])
    np.testing.assert_array_equal(F.relu(z).numpy(), [[9, 0], [0, 9]])
    fused = F.conv2d(x, w, np.ones(1, np.float32), activation="relu").numpy()[0, :, :, 0]
    np.testing.assert_array_equal(fused, [[9, 0], [0, 9]])


def test_guide_figures_10_11_pooling_a_4x4_map():
    m = np.array([[1, 3, 2, 1], [4, 6, 5, 0], [7, 2, 9, 8], [1, 0, 3, 4]], np.float32).reshape(1, 4, 4, 1)
    np.testing.assert_array_equal(F.max_pool2d(m, 2).numpy()[0, :, :, 0], [[6, 5], [7, 9]])
    np.testing.assert_array_equal(F.avg_pool2d(m, 2).numpy()[0, :, :, 0], [[3.5, 2], [2.5, 6]])


def test_same_pooling_ignores_padded_cells():
    x = -np.ones((1, 3, 3, 1), np.float32)  # all negative: a zero pad cell must never win
    np.testing.assert_array_equal(F.max_pool2d(x, 2, padding="same").numpy(), -np.ones((1, 2, 2, 1)))
    np.testing.assert_array_equal(F.avg_pool2d(x, 2, padding="same").numpy(), -np.ones((1, 2, 2, 1)))


# -- bad input ----------------------------------------------------------------------------------

X = np.zeros((2, 8, 8, 3), np.float32) + 0.5


@pytest.mark.parametrize("call,exc,match", [
    (lambda: F.conv2d(X, np.ones((3, 3, 1, 4), np.float32)), ValueError, r"conv2d: input has 3 channels but the kernel expects 1"),
    (lambda: F.conv2d(X, np.ones((9, 9, 3, 4), np.float32)), ValueError, r"conv2d: window 9 is larger than the input H=8"),
    (lambda: F.conv2d(X, np.ones((3, 3, 3, 4), np.float32), strides=0), ValueError, r"conv2d: strides must be >= 1"),
    (lambda: F.conv2d(X.astype(np.uint8), np.ones((3, 3, 3, 4), np.uint8)), TypeError, r"conv2d: x must be a float32.*uint8"),
    (lambda: F.conv2d(X[0], np.ones((3, 3, 3, 4), np.float32)), ValueError, r"conv2d: x must have rank 4 \(N, H, W, C\), got shape \(8, 8, 3\)"),
    (lambda: F.conv2d(X, np.ones((3, 3, 3, 4), np.float32), padding="full"), ValueError, r"conv2d: padding must be 'valid' or 'same', got 'full'"),
    (lambda: F.conv2d(X, np.ones((3, 3, 3, 4), np.float32), np.ones(3, np.float32)), ValueError, r"conv2d: bias must have shape \(4,\), got \(3,\)"),
    (lambda: F.conv2d(X, np.ones((3, 3, 3, 4), np.float64)), TypeError, r"conv2d: x has dtype float32 but w has dtype float64"),
    (lambda: F.conv2d_transpose(X, np.ones((3, 3, 4, 2), np.float32)), ValueError, r"conv2d_transpose: input has 3 channels but the kernel expects 2"),
    (lambda: F.max_pool2d(X, 9), ValueError, r"max_pool2d: window 9 is larger than the input H=8"),
    (lambda: F.avg_pool2d(X, (2, 2), strides=(0, 1)), ValueError, r"avg_pool2d: strides must be >= 1"),
    (lambda: F.max_pool2d(X, 2.5), TypeError, r"max_pool2d: pool_size must be an int or a pair"),
    (lambda: F.dense(np.ones((2, 5), np.float32), np.ones((4, 3), np.float32)), ValueError, r"dense: input has 5 features but the kernel expects 4"),
    (lambda: F.dropout(X, 1.0), ValueError, r"dropout: rate must be a number in \[0, 1\), got 1.0"),
    (lambda: F.sparse_categorical_crossentropy([0, 10], np.ones((2, 10), np.float32)), ValueError, r"sparse_categorical_crossentropy: labels must lie in \[0, 10\) for 10 classes, got values in \[0, 10\]"),
    (lambda: F.sparse_categorical_crossentropy([-1, 0], np.ones((2, 10), np.float32)), ValueError, r"labels must lie in \[0, 10\)"),
    (lambda: F.sparse_categorical_crossentropy(np.array([0.0, 1.0]), np.ones((2, 10), np.float32)), TypeError, r"labels must be integer class indices, got dtype float64"),
    (lambda: F.sparse_categorical_crossentropy([0, 1, 2], np.ones((2, 10), np.float32)), ValueError, r"labels must have shape \(2,\)"),
    (lambda: F.mse(np.ones((2, 3)), np.ones((3, 2), np.float32)), ValueError, r"mse: y_true has shape \(2, 3\) but y_pred has shape \(3, 2\)"),
    (lambda: F.softmax(np.ones((2, 3), np.float32), axis=2), ValueError, r"softmax: axis must be an int in \[-2, 2\)"),
])
def test_bad_input_gives_a_clear_error(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
