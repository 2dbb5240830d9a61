"""Issue 24, case 1: no update ever writes a non-finite weight. The kernels refuse such elements
and flag the update (tests/test_ops.py runs the rule on both sets against tests/_reference.py);
here the optimizer and ``fit`` on both backends (the cuda set in Numba's simulator): the error
names the weight and the first refused step, and the weights are those of that step, compared
with a run that stops there."""
import contextlib

import numpy as np
import pytest

import gpucnn
from gpucnn import layers, models, optimizers
from gpucnn.callbacks import LearningRateScheduler
from gpucnn.kernels.cuda_set import _launch, simulate
from gpucnn.optimizers import NonFiniteUpdateError, schedules
from gpucnn.optimizers.optimizer import Optimizer


@pytest.fixture(params=["numpy", "cuda"])
def backend(request):
    small = simulate.small_launches() if _launch.launch_path() == "sim" else contextlib.nullcontext()
    with small if request.param == "cuda" else contextlib.nullcontext():
        gpucnn.set_backend(request.param)
        try:
            yield request.param
        finally:
            gpucnn.set_backend("numpy")


def model_and_data(optimizer, seed=0):
    gpucnn.manual_seed(seed)
    model = models.Sequential([layers.Dense(4, activation="relu", input_shape=(3,), name="h"),
                               layers.Dense(2, activation="softmax", name="out")])
    model.compile(optimizer, "sparse_categorical_crossentropy")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((16, 3)).astype(np.float32)
    return model, x, rng.integers(0, 2, 16)


def weights(model):
    return [w.copy() for w in model.get_weights()]


@pytest.mark.parametrize("make", [
    lambda: (optimizers.SGD(np.inf), NonFiniteUpdateError),
    lambda: (optimizers.Adam(epsilon=0.0), NonFiniteUpdateError),   # 0 / 0 at a dead unit
    # the rate grows a millionfold a step: the loss overflows first (and says the weights are
    # those of the step before, which is now true), the rate later (inf, not an OverflowError)
    lambda: (optimizers.SGD(schedules.ExponentialDecay(0.1, 1, 1e6)), FloatingPointError),
], ids=["lr-inf", "adam-epsilon-0", "exponential-decay-1e6"])
def test_fit_never_writes_a_non_finite_weight_and_names_it(make, backend):
    opt, error = make()
    model, x, y = model_and_data(opt)
    if isinstance(opt, optimizers.Adam):
        model.layers[0].kernel.data[:, 0] = 0.0      # a unit dead on every sample: g = 0
        model.layers[0].bias.data[0] = -1.0
    with pytest.raises(error, match=r"the update of '(h|out)/(kernel|bias)' at optimizer step "
                                    r"\d+ was refused|the training loss is"):
        model.fit(x, y, batch_size=4, epochs=3, verbose=0, shuffle=False)
    assert all(np.isfinite(w).all() for w in model.get_weights())
    assert schedules.ExponentialDecay(0.1, 1, 1e6)(60) == np.inf


def test_a_scheduler_returning_inf_is_refused_before_any_weight_changes(backend):
    model, x, y = model_and_data(optimizers.SGD(0.1))
    before = weights(model)
    with pytest.raises(NonFiniteUpdateError, match="optimizer step 1 was refused"):
        model.fit(x, y, batch_size=4, epochs=2, verbose=0, shuffle=False,
                  callbacks=[LearningRateScheduler(lambda epoch: np.inf)])
    for w, b in zip(model.get_weights(), before):          # lr = inf: every element refused
        np.testing.assert_array_equal(w, b)


def test_on_a_device_the_flag_is_read_with_the_loss_and_names_the_first_refused_step(
        backend, monkeypatch):
    """With the flag read only when the loss is (a device's way), the steps after the first
    refused one are refused too: the weights are those after step 2, as a run of two steps
    leaves them, and the error names step 3."""
    lr = schedules.PiecewiseConstantDecay([1], [0.05, np.inf])     # inf from the third step
    monkeypatch.setattr(Optimizer, "_flag_on_host", lambda self: False)
    model, x, y = model_and_data(optimizers.SGD(lr))
    with pytest.raises(NonFiniteUpdateError, match="optimizer step 3 was refused"):
        model.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False)
    reference, _, _ = model_and_data(optimizers.SGD(0.05))
    reference.fit(x[:8], y[:8], batch_size=4, epochs=1, verbose=0, shuffle=False)
    for w, r in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(w, r)
    assert model.optimizer.iterations == 4                 # every step ran, two were refused


def test_train_on_batch_and_a_direct_update_raise_at_once(backend):
    model, x, y = model_and_data(optimizers.SGD(np.inf))
    with pytest.raises(NonFiniteUpdateError, match="SGD: the update of 'h/kernel' at optimizer "
                                                   "step 1"):
        model.train_on_batch(x, y)
    opt = optimizers.RMSprop(0.1)
    p = gpucnn.Tensor(np.ones(3, np.float32), requires_grad=True)
    p.grad = gpucnn.Tensor(np.array([1.0, np.nan, 1.0], np.float32))
    with pytest.raises(NonFiniteUpdateError, match="RMSprop: the update of 'weight 0' at "
                                                   "optimizer step 1"):
        opt.apply_gradients([p])
    got = p.numpy()
    assert got[1] == 1.0 and got[0] < 1.0 and got[2] < 1.0   # only the NaN's element kept


@pytest.mark.parametrize("name", ["sgd_update", "adam_update", "rmsprop_update"])
def test_an_update_without_a_flag_raises(name, backend):
    ks = gpucnn.backend.kernels()
    p = ks.asarray(np.ones(5, np.float32))
    g = ks.asarray(np.array([0.1, np.inf, 0.2, 0.3, 0.4], np.float32))
    slots = [ks.asarray(np.zeros(5, np.float32)) for _ in range(2)]
    args = {"sgd_update": (p, g, None, 0.1, 0.0, False, 0.0),
            "adam_update": (p, g, *slots, 0.1, 0.9, 0.999, 1e-7, 1, 0.0),
            "rmsprop_update": (p, g, slots[0], 0.1, 0.9, 1e-7, 0.0)}[name]
    with pytest.raises(FloatingPointError, match=f"{name}: the new weight is not finite"):
        getattr(ks, name)(*args)
    assert ks.to_host(p)[1] == 1.0
