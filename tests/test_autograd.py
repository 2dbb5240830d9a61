"""Tensor and autograd: operators against finite differences, graph rules, dtypes."""
import operator

import numpy as np
import pytest

import gpucnn
from _gradcheck import gradcheck


pytestmark = pytest.mark.usefixtures("numpy_backend")
BINARY = {"add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": operator.truediv}

SHAPES = [((3, 4), (3, 4)), ((3, 4), (4,)), ((2, 3, 4), (3, 1)), ((1, 4), (3, 1)), ((5,), ())]


@pytest.mark.parametrize("name", BINARY)
@pytest.mark.parametrize("sa,sb", SHAPES)
def test_binary_ops_broadcast_gradients(name, sa, sb, rng):
    a = rng.standard_normal(sa)
    b = rng.standard_normal(sb)
    if name == "div":
        b = np.sign(b) * (np.abs(b) + 0.5)
    gradcheck(BINARY[name], a, b)


@pytest.mark.parametrize("fn", [
    lambda x: -x, lambda x: x ** 3, lambda x: (x * x + 1.0) ** 0.5,
    lambda x: 2.0 - x, lambda x: 3.0 / (x * x + 1.0), lambda x: x * 2.0 + 1.0,
    lambda x: (x * 0.5).exp(), lambda x: (x * x + 0.1).log(),
    lambda x: x.sum(), lambda x: x.sum(axis=1), lambda x: x.mean(axis=(0, 2), keepdims=True),
    lambda x: x.mean(), lambda x: x.reshape(4, 6), lambda x: x.transpose(2, 0, 1),
    lambda x: x[1:, ::2], lambda x: x[..., 1], lambda x: x.T,
], ids=["neg", "pow3", "sqrt", "rsub", "rdiv", "affine", "exp", "log", "sum", "sum1", "meank",
        "mean", "reshape", "transpose", "slice", "ellipsis", "T"])
def test_unary_ops_gradients(fn, rng):
    gradcheck(fn, rng.standard_normal((2, 3, 4)))


@pytest.mark.parametrize("sa,sb", [((3, 4), (4, 5)), ((4,), (4, 2)), ((3, 4), (4,)), ((2, 3, 4), (4, 2))])
def test_matmul_gradients(sa, sb, rng):
    gradcheck(lambda a, b: a @ b, rng.standard_normal(sa), rng.standard_normal(sb))


def test_reused_input_accumulates(rng):
    gradcheck(lambda x: x * x + x * 3.0 - x / (x * x + 2.0), rng.standard_normal((3, 3)))


def test_dtypes_default_float32_and_float64_kept():
    assert gpucnn.Tensor([1, 2]).dtype == np.float32
    assert gpucnn.Tensor(np.ones(2)).dtype == np.float64
    assert gpucnn.Tensor(np.ones(2, np.float32)).dtype == np.float32
    x = gpucnn.Tensor(np.ones(3, np.float32), requires_grad=True)
    y = (x * 2.0 + 1.0) ** 2 / 3.0
    assert y.dtype == np.float32
    y.sum().backward()
    assert x.grad.dtype == np.float32


def test_backward_explicit_grad_and_scalar_rule():
    x = gpucnn.Tensor([1.0, 2.0], requires_grad=True)
    y = x * 3.0
    with pytest.raises(RuntimeError, match="one-element"):
        y.backward()
    y.backward(np.array([1.0, 10.0], np.float32))
    np.testing.assert_allclose(x.grad.numpy(), [3.0, 30.0])
    with pytest.raises(ValueError, match="shape"):
        (x * 1.0).backward(np.ones(3, np.float32))


def test_second_backward_through_freed_graph_is_an_error():
    x = gpucnn.Tensor([1.0, 2.0], requires_grad=True)
    y = (x * x).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="freed"):
        y.backward()


def test_grad_accumulates_across_backwards_and_zero_grad():
    x = gpucnn.Tensor([1.0], requires_grad=True)
    (x * 2.0).sum().backward()
    (x * 3.0).sum().backward()
    assert x.grad.numpy()[0] == 5.0
    x.zero_grad()
    assert x.grad is None


def test_no_grad_records_nothing_and_detach():
    x = gpucnn.Tensor([1.0], requires_grad=True)
    with gpucnn.no_grad():
        y = x * 2.0
    assert not y.requires_grad and y.is_leaf
    z = (x * 2.0).detach()
    assert not z.requires_grad and z.is_leaf
    with pytest.raises(RuntimeError, match="does not require grad"):
        z.sum().backward()


def test_numpy_returns_host_array_and_shape():
    x = gpucnn.Tensor(np.arange(6, dtype=np.float32).reshape(2, 3))
    assert isinstance(x.numpy(), np.ndarray) and x.shape == (2, 3) and x.ndim == 2


def test_integer_tensor_cannot_require_grad():
    with pytest.raises(TypeError, match="floating"):
        gpucnn.Tensor(np.arange(3), requires_grad=True)


def test_an_intermediate_used_by_ops_recorded_apart(rng):
    # y feeds ops recorded before and after others: each op runs once all of its gradient is in
    gradcheck(lambda x: (lambda y: y * y + (y + 1.0).exp() * y)(x * 2.0 + 1.0),
              rng.standard_normal((3, 2)))
