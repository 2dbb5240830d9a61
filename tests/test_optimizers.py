"""Optimizers against updates computed by hand with the textbook formulas (plain NumPy float64
written out here), over a few steps with changing gradients, on a tiny problem."""
import math

import numpy as np
import pytest

import gpucnn
from gpucnn import layers, models, optimizers
from gpucnn.autograd import Tensor


@pytest.fixture(autouse=True)
def _numpy_backend():
    gpucnn.set_backend("numpy")


def run(opt, p0, grads):
    """Apply ``opt`` to one parameter for each gradient in turn; the parameter after each step."""
    p = Tensor(p0.astype(np.float32), requires_grad=True)
    out = []
    for g in grads:
        p.grad = Tensor(g.astype(np.float32))
        opt.apply_gradients([p])
        out.append(p.numpy().astype(np.float64))
    return out


@pytest.fixture
def problem(rng):
    p0 = rng.standard_normal(5)
    grads = [rng.standard_normal(5) for _ in range(4)]
    return p0, grads


def close(got, want):
    for i, (a, b) in enumerate(zip(got, want)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6, err_msg=f"step {i + 1}")


@pytest.mark.parametrize("momentum,nesterov,wd", [(0.0, False, 0.0), (0.9, False, 0.0),
                                                   (0.9, True, 0.0), (0.5, False, 0.1),
                                                   (0.0, False, 0.05)])
def test_sgd(problem, momentum, nesterov, wd):
    p0, grads = problem
    lr = 0.1
    p, v, want = p0.copy(), np.zeros_like(p0), []
    for g in grads:
        p = p - lr * wd * p                      # Keras: decoupled weight decay, first
        v = momentum * v - lr * g
        p = p + (momentum * v - lr * g if nesterov else v)
        want.append(p.copy())
    close(run(optimizers.SGD(lr, momentum=momentum, nesterov=nesterov, weight_decay=wd), p0, grads),
          want)


@pytest.mark.parametrize("eps,wd", [(1e-7, 0.0), (0.5, 0.0), (1e-7, 0.1)])
def test_adam(problem, eps, wd):
    """Keras's Adam: the bias corrections in the step size, epsilon added to sqrt(v) (a large
    epsilon tells this apart from PyTorch's sqrt(v_hat) + eps); weight decay decoupled."""
    p0, grads = problem
    lr, b1, b2 = 0.01, 0.8, 0.95
    p, m, v, want = p0.copy(), np.zeros_like(p0), np.zeros_like(p0), []
    for t, g in enumerate(grads, 1):
        p = p - lr * wd * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t) * m / (np.sqrt(v) + eps)
        want.append(p.copy())
    close(run(optimizers.Adam(lr, beta_1=b1, beta_2=b2, epsilon=eps, weight_decay=wd), p0, grads),
          want)


@pytest.mark.parametrize("momentum,wd", [(0.0, 0.0), (0.0, 0.1), (0.7, 0.0), (0.7, 0.05)])
def test_rmsprop(problem, momentum, wd):
    p0, grads = problem
    lr, rho, eps = 0.01, 0.8, 1e-3
    p, s, u, want = p0.copy(), np.zeros_like(p0), np.zeros_like(p0), []
    for g in grads:
        p = p - lr * wd * p                      # Keras: decoupled weight decay, first
        s = rho * s + (1 - rho) * g * g
        step = lr * g / np.sqrt(s + eps)         # Keras: epsilon inside the root
        u = momentum * u + step
        p = p - (u if momentum else step)
        want.append(p.copy())
    close(run(optimizers.RMSprop(lr, rho=rho, momentum=momentum, epsilon=eps, weight_decay=wd),
              p0, grads), want)


def test_keras_defaults_and_names():
    sgd = optimizers.get("sgd")
    assert (type(sgd), sgd.learning_rate, sgd.momentum, sgd.nesterov) == (optimizers.SGD, 0.01, 0.0, False)
    adam = optimizers.get("adam")
    assert (adam.learning_rate, adam.beta_1, adam.beta_2, adam.epsilon) == (0.001, 0.9, 0.999, 1e-7)
    rms = optimizers.get("RMSprop")
    assert (rms.learning_rate, rms.rho, rms.epsilon) == (0.001, 0.9, 1e-7)
    SGD = optimizers.SGD(learning_rate=0.01)  # the guide's line
    assert SGD.learning_rate == 0.01
    with pytest.raises(ValueError, match="unknown optimizer 'adamw2'"):
        optimizers.get("adamw2")
    with pytest.raises(ValueError, match="learning_rate"):
        optimizers.SGD(learning_rate=-1.0)
    with pytest.raises(ValueError, match="momentum"):
        optimizers.SGD(momentum=1.5)


def test_slots_are_lazy_per_parameter_and_updates_in_place(rng):
    opt = optimizers.Adam(0.01)
    a = Tensor(rng.standard_normal((3, 2)).astype(np.float32), requires_grad=True)
    b = Tensor(rng.standard_normal(4).astype(np.float32), requires_grad=True)
    assert opt._slots == {}
    data_a = a.data
    a.grad = Tensor(np.ones((3, 2), np.float32))
    opt.apply_gradients([a, b])  # b has no gradient: skipped, no slots
    assert len(opt._slots) == 1 and a.data is data_a
    b.grad = Tensor(np.ones(4, np.float32))
    before = a.numpy().copy()
    a.grad = None
    opt.apply_gradients([a, b])
    assert len(opt._slots) == 2
    np.testing.assert_array_equal(a.numpy(), before)
    assert opt.iterations == 2


def test_tiny_regression_converges(rng):
    """Each optimizer fits y = x @ w_true with a Dense layer (the loss falls by 10x or more)."""
    x = rng.standard_normal((64, 3)).astype(np.float32)
    y = x @ np.array([[1.0], [-2.0], [0.5]], np.float32)
    for opt in (optimizers.SGD(0.1, momentum=0.5), optimizers.Adam(0.05), optimizers.RMSprop(0.05)):
        gpucnn.manual_seed(0)
        m = models.Sequential([layers.Dense(1, input_shape=(3,))])
        m.compile(opt, "mse")
        h = m.fit(x, y, batch_size=16, epochs=15, verbose=0)
        assert h.history["loss"][-1] < 0.1 * h.history["loss"][0], (type(opt).__name__, h.history["loss"])
        assert math.isfinite(h.history["loss"][-1])
