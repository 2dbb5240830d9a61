"""The cross-entropies on probabilities, value and gradient, against Keras 3 (on TensorFlow)
written out in float64 (``ref_loss`` of tests/_reference.py): probabilities clipped to
[1e-7, 1 - 1e-7] with the gradient passed on the bounds (TensorFlow's clip gradient),
``categorical_crossentropy`` normalising each row before the clip,
``sparse_categorical_crossentropy`` after it (a softmax cross-entropy of the clipped row's log).
Inputs span 1e-9 to 1 and include values exactly on the bounds; the reference gradient of every
loss is itself checked by finite differences. The issue's two loss rows are tests of their own;
everything runs on both backends."""
import numpy as np
import pytest

import gpucnn
import gpucnn.functional as F
from _reference import ref_loss, ref_loss_bounds
from gpucnn import layers, losses, metrics, models
from gpucnn.autograd import Tensor
from gpucnn.kernels import load_set

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


bounds = ref_loss_bounds


def keras(loss, p, t, dtype):
    """``(value, gradient)`` of Keras 3's ``loss`` (a name of ``LOSSES``)."""
    return ref_loss(loss, t, p, dtype)[::2]


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
@pytest.mark.parametrize("loss,fn", [("sparse_cce", F.sparse_categorical_crossentropy),
                                     ("cce", F.categorical_crossentropy),
                                     ("bce", F.binary_crossentropy)], ids=["sparse", "cce", "bce"])
def test_crossentropy_is_keras(backend, loss, fn, dtype, rng):
    p = spread_probs(rng, *((5, 3) if loss == "bce" else (6, 4)), dtype)
    if loss == "sparse_cce":
        t = rng.integers(0, 4, 6)
        t[:3] = [0, 1, 0]                          # the labels sit on the bound entries
    elif loss == "cce":
        t = rng.dirichlet(np.ones(4), 6)           # soft targets: every entry counts
    else:
        p[3, 2] = bounds(dtype)[1]
        t = rng.random((5, 3)).round()
    want, want_g = keras(loss, p.astype(np.float64), t, dtype)
    got, got_g = gpucnn_loss(fn, t if loss == "sparse_cce" else t.astype(dtype), p)
    assert got == pytest.approx(want, rel=TOLS[dtype]["rtol"])
    np.testing.assert_allclose(got_g, want_g, **TOLS[dtype])
    if loss == "sparse_cce":
        assert got_g[0, 0] != 0 and got_g[2, 0] != 0, "on the bound the gradient passes"


def test_the_reference_gradients_are_right(rng):
    """Finite differences of every reference loss, away from the clip bounds."""
    p = rng.uniform(0.05, 0.9, (3, 4))
    y = np.array([0, 3, 1])
    t = rng.dirichlet(np.ones(4), 3)
    tb = rng.random((3, 4)).round()
    for loss, target in (("sparse_cce", y), ("sparse_cce_logits", y), ("cce", t),
                         ("cce_logits", t), ("bce", tb), ("bce_logits", tb), ("mse", t),
                         ("mae", t)):
        fn = lambda a: keras(loss, a, target, np.float64)   # noqa: E731
        np.testing.assert_allclose(fn(p)[1], fd_grad(lambda a: fn(a)[0], p), rtol=1e-6,
                                   atol=1e-9, err_msg=loss)


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
    t = np.array([[0.0, 1.0, 0.0]], np.float32)
    want, want_g = keras("cce", p.astype(np.float64), t.astype(np.float64), np.float32)
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
    want, _ = keras("sparse_cce", p, y, np.float32)
    assert model.evaluate(x, y, verbose=0) == pytest.approx(want, rel=1e-5)


def test_loss_config_round_trip():
    for name in ("sparse_categorical_crossentropy", "categorical_crossentropy",
                 "binary_crossentropy", "mse", "mae"):
        loss = losses.get(name)
        again = type(loss).from_config(loss.get_config())
        assert again.get_config() == loss.get_config() == {"name": name, "from_logits": False}
    assert losses.BinaryCrossentropy(from_logits=True).get_config()["from_logits"] is True


def test_mse_and_mae_metrics_average_every_output_seen(backend, rng):
    """Two batches of 3 and 1 rows: the running mean weighs each output once."""
    a, b = rng.standard_normal((2, 2, 3, 4)).astype(np.float32)
    for metric, f in ((metrics.MeanSquaredError(), np.square),
                      (metrics.MeanAbsoluteError(), np.abs)):
        metric.update_state(a[0], b[0])
        metric.update_state(a[1, :1], b[1, :1])
        want = np.concatenate([f(b[0] - a[0]).ravel(), f(b[1, :1] - a[1, :1]).ravel()]).mean()
        assert metric.result() == pytest.approx(want, rel=1e-5), metric.name


@pytest.mark.parametrize("loss", ["sparse_cce", "sparse_cce_logits"])
@pytest.mark.parametrize("kset", ["numpy", "cuda"])
def test_a_label_outside_the_classes_makes_the_mean_nan(kset, loss, rng,
                                                         poisoned_small_launches):
    """The kernels do not check labels on the host: the mean is NaN, and a row whose label is
    out of range gets its gradient without a one-hot term."""
    ks = load_set(kset)
    p = rng.uniform(0.1, 0.9, (3, 4)).astype(np.float32)
    value, stats = ks.loss_forward(loss, ks.asarray(np.array([1, 4, -1])), ks.asarray(p))
    assert np.isnan(ks.to_host(value))
    dp = ks.to_host(ks.loss_backward(loss, ks.asarray(np.array(1.0, np.float32)),
                                     ks.asarray(np.array([1, 4, -1])), ks.asarray(p), stats))
    for r, lab in enumerate([1, 0, 0]):     # rows 1, 2: the label-0 gradient less its one-hot
        want = ref_loss(loss, np.array([lab]), p[r:r + 1].astype(np.float64))[2][0] / 3
        if r:
            want[0] += (1 / min(max(p[r, 0], 1e-7), 1 - 1e-7) if loss == "sparse_cce" else 1) / 3
        np.testing.assert_allclose(dp[r], want, rtol=1e-5, err_msg=f"row {r}")


@pytest.mark.parametrize("kset", ["numpy", "cuda"])
@pytest.mark.parametrize("call,match", [
    (lambda ks: ks.loss_forward("hinge", np.ones(2, np.float32), np.ones(2, np.float32)),
     r"loss_forward: loss must be one of \('mse'"),
    (lambda ks: ks.loss_forward("mse", np.ones(3, np.float32), np.ones(2, np.float32)),
     r"loss_forward: t .*\(2,\).*\(3,\)"),
    (lambda ks: ks.loss_forward("cce", np.ones((2, 3), np.float32), np.ones(6, np.float32)),
     r"loss_forward: p .*2"),
    (lambda ks: ks.loss_forward("sparse_cce", np.array([0, 1, 2]), np.ones((2, 3), np.float32)),
     r"loss_forward: labels .*\(2,\).*\(3,\)"),
])
def test_the_loss_kernels_refuse_bad_input(kset, call, match):
    ks = load_set(kset)
    with pytest.raises(ValueError, match=match):
        call(ks)
