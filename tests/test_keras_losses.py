"""The cross-entropies on probabilities, value and gradient, against Keras 3 (on TensorFlow)
written out here in float64: probabilities clipped to [1e-7, 1 - 1e-7] with the gradient passed
on the bounds (TensorFlow's clip gradient), ``categorical_crossentropy`` normalising each row
before the clip, ``sparse_categorical_crossentropy`` after it (a softmax cross-entropy of the
clipped row's log). Inputs span 1e-9 to 1 and include values exactly on the bounds; each reference
gradient is itself checked by finite differences. The issue's two loss rows are tests of their
own; everything runs on both backends."""
import numpy as np
import pytest

import gpucnn
import gpucnn.functional as F
from gpucnn import layers, losses, models
from gpucnn.autograd import Tensor

BACKENDS = ["numpy", "cuda"]


@pytest.fixture(params=BACKENDS)
def backend(request):
    if request.param == "cuda":
        try:
            gpucnn.set_backend("cuda")
        except Exception as e:  # noqa: BLE001 - the cuda set is not usable here
            pytest.skip(f"the cuda backend is not usable here: {type(e).__name__}: {e}")
    else:
        gpucnn.set_backend("numpy")
    yield request.param
    gpucnn.set_backend("numpy")


def bounds(dtype):
    """Keras's clip bounds in the dtype of the data (1 - 1e-7 is 0.99999988 in float32)."""
    t = np.dtype(dtype).type
    return float(t(1e-7)), float(t(1.0 - 1e-7))


# ------------------------------------------------------------------ Keras 3, written out (float64)

def keras_sparse(p, y, dtype):
    lo, hi = bounds(dtype)
    n = p.shape[0]
    pc = np.clip(p, lo, hi)
    mask = (p >= lo) & (p <= hi)
    total = pc.sum(axis=1)
    picked = pc[np.arange(n), y]
    loss = np.mean(np.log(total) - np.log(picked))
    grad = np.repeat((1.0 / total)[:, None], p.shape[1], axis=1)
    grad[np.arange(n), y] -= 1.0 / picked
    return loss, grad * mask / n


def keras_categorical(p, t, dtype):
    lo, hi = bounds(dtype)
    n = p.shape[0]
    s = p.sum(axis=1, keepdims=True)
    q = p / s
    qc = np.clip(q, lo, hi)
    mask = (q >= lo) & (q <= hi)
    loss = -np.sum(t * np.log(qc)) / n
    dq = -t / qc * mask
    grad = (dq - np.sum(dq * q, axis=1, keepdims=True)) / s
    return loss, grad / n


def keras_binary(p, t, dtype):
    lo, hi = bounds(dtype)
    pc = np.clip(p, lo, hi)
    mask = (p >= lo) & (p <= hi)
    loss = np.mean(-(t * np.log(pc) + (1 - t) * np.log(1 - pc)))
    grad = (-t / pc + (1 - t) / (1 - pc)) * mask
    return loss, grad / p.size


def fd_grad(fn, p, h=1e-7):
    """Central differences of ``fn(p)`` (float64), element by element."""
    out = np.zeros_like(p)
    for idx in np.ndindex(p.shape):
        a, b = p.copy(), p.copy()
        a[idx] += h
        b[idx] -= h
        out[idx] = (fn(a) - fn(b)) / (2 * h)
    return out


# ------------------------------------------------------------------ inputs

def spread_probs(rng, n, k, dtype):
    """Rows of values 10**U(-9, 0) (not summing to 1), with some entries exactly on the clip
    bounds of ``dtype``."""
    lo, hi = bounds(dtype)
    p = 10.0 ** rng.uniform(-9, 0, (n, k))
    p[0, 0], p[1, 1], p[2, 0] = lo, hi, lo
    return p.astype(dtype)


def gpucnn_loss(fn, target, p):
    ks = gpucnn.backend.kernels()
    x = Tensor(ks.asarray(p.copy()), requires_grad=True)
    loss = fn(target, x)
    loss.backward()
    return float(ks.to_host(loss.data)), np.asarray(ks.to_host(x.grad.data), dtype=np.float64)


TOLS = {np.float32: dict(rtol=2e-5, atol=1e-7), np.float64: dict(rtol=1e-10, atol=1e-14)}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sparse_categorical_crossentropy_is_keras(backend, dtype, rng):
    n, k = 6, 4
    p = spread_probs(rng, n, k, dtype)
    y = rng.integers(0, k, n)
    y[:3] = [0, 1, 0]                              # the labels sit on the bound entries
    want, want_g = keras_sparse(p.astype(np.float64), y, dtype)
    got, got_g = gpucnn_loss(F.sparse_categorical_crossentropy, y, p)
    assert got == pytest.approx(want, rel=TOLS[dtype]["rtol"])
    np.testing.assert_allclose(got_g, want_g, **TOLS[dtype])
    assert got_g[0, 0] != 0 and got_g[2, 0] != 0, "on the bound the gradient passes"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_categorical_crossentropy_is_keras(backend, dtype, rng):
    n, k = 6, 4
    p = spread_probs(rng, n, k, dtype)
    t = rng.dirichlet(np.ones(k), n)             # soft targets: every entry counts
    want, want_g = keras_categorical(p.astype(np.float64), t, dtype)
    got, got_g = gpucnn_loss(F.categorical_crossentropy, t.astype(dtype), p)
    assert got == pytest.approx(want, rel=TOLS[dtype]["rtol"])
    np.testing.assert_allclose(got_g, want_g, **TOLS[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_binary_crossentropy_is_keras(backend, dtype, rng):
    p = spread_probs(rng, 5, 3, dtype)
    p[3, 2] = bounds(dtype)[1]
    t = rng.random((5, 3)).round()
    want, want_g = keras_binary(p.astype(np.float64), t, dtype)
    got, got_g = gpucnn_loss(F.binary_crossentropy, t.astype(dtype), p)
    assert got == pytest.approx(want, rel=TOLS[dtype]["rtol"])
    np.testing.assert_allclose(got_g, want_g, **TOLS[dtype])


def test_the_reference_gradients_are_right(rng):
    """Finite differences of the reference losses, away from the clip bounds."""
    p = rng.uniform(0.05, 0.9, (3, 4))
    y = np.array([0, 3, 1])
    t = rng.dirichlet(np.ones(4), 3)
    tb = rng.random((3, 4)).round()
    for name, fn in (("sparse", lambda a: keras_sparse(a, y, np.float64)),
                     ("categorical", lambda a: keras_categorical(a, t, np.float64)),
                     ("binary", lambda a: keras_binary(a, tb, np.float64))):
        np.testing.assert_allclose(fn(p)[1], fd_grad(lambda a: fn(a)[0], p), rtol=1e-6,
                                   atol=1e-9, err_msg=name)


# ------------------------------------------------------------------ the rows of issue 14's table

def test_row_sparse_crossentropy_normalises_the_probabilities(backend):
    """p = [0.2, 0.2], label 0: Keras -log(0.2 / 0.4) = 0.693, not -log(0.2) = 1.609."""
    p = np.array([[0.2, 0.2]], np.float32)
    got, g = gpucnn_loss(F.sparse_categorical_crossentropy, np.array([0]), p)
    assert got == pytest.approx(np.log(2.0), rel=1e-6)
    np.testing.assert_allclose(g, [[1 / 0.4 - 1 / 0.2, 1 / 0.4]], rtol=1e-6)
    loss = losses.get("sparse_categorical_crossentropy")
    assert float(loss(np.array([0]), p)) == pytest.approx(np.log(2.0), rel=1e-6)


def test_row_binary_crossentropy_gradient_passes_at_the_clip_bounds(backend):
    """p exactly 1 - 1e-7 (float32: 0.99999988) with target 0: Keras's gradient is
    1 / (1 - p) = 8.4e6, not 0; at p = 1e-7 with target 1 it is -1e7."""
    lo, hi = bounds(np.float32)
    got, g = gpucnn_loss(F.binary_crossentropy, np.array([[0.0, 1.0]], np.float32),
                         np.array([[hi, lo]], np.float32))
    assert g[0, 0] == pytest.approx(1 / (1 - hi) / 2, rel=1e-5)
    assert g[0, 0] > 4e6
    assert g[0, 1] == pytest.approx(-1 / lo / 2, rel=1e-5)


def test_categorical_crossentropy_gradient_passes_at_the_clip_bounds(backend):
    lo, hi = bounds(np.float32)
    p = np.array([[hi, lo, 0.0]], np.float32)            # row sum hi + lo: q on the bounds
    p[0, 1] = np.float32(lo)
    t = np.array([[0.0, 1.0, 0.0]], np.float32)
    want, want_g = keras_categorical(p.astype(np.float64), t.astype(np.float64), np.float32)
    got, g = gpucnn_loss(F.categorical_crossentropy, t, p)
    np.testing.assert_allclose(g, want_g, rtol=1e-4)
    assert g[0, 1] != 0


def test_a_model_evaluates_the_sparse_loss_as_keras(rng):
    """A sigmoid output is not fused with the sparse cross-entropy: its rows do not sum to 1
    and the loss evaluate() reports is Keras's normalised one."""
    gpucnn.set_backend("numpy")
    gpucnn.manual_seed(0)
    model = models.Sequential([layers.Dense(3, activation="sigmoid", input_shape=(4,))])
    model.compile("sgd", "sparse_categorical_crossentropy")
    x = rng.standard_normal((8, 4)).astype(np.float32)
    y = rng.integers(0, 3, 8)
    p = model.predict(x, verbose=0).astype(np.float64)
    want, _ = keras_sparse(p, y, np.float32)
    assert model.evaluate(x, y, verbose=0) == pytest.approx(want, rel=1e-5)


def test_loss_config_round_trip():
    for name in ("sparse_categorical_crossentropy", "categorical_crossentropy",
                 "binary_crossentropy", "mse", "mae"):
        loss = losses.get(name)
        again = type(loss).from_config(loss.get_config())
        assert again.get_config() == loss.get_config() == {"name": name, "from_logits": False}
    assert losses.BinaryCrossentropy(from_logits=True).get_config()["from_logits"] is True
