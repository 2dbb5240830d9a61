"""Every optimizer against Keras 3's update formulas, written out in float64 in
``tests/_reference.py`` (nothing of gpucnn is called for the reference), over 100 steps with
gradients whose elements spread over 1e-6 to 1e2, with and without decoupled weight decay and
each kind of gradient clipping; and the rows of issue 14's table (RMSprop's and Adam's epsilon,
decoupled weight decay with momentum and with RMSprop), each a test of its own. Also (once
tests/test_optimizers.py) SGD, Adam and RMSprop against the same formulas over a few steps with
changing gradients on a tiny problem, Keras's defaults and names, lazy slots, and each optimizer
fitting a small regression.

Learning-rate schedules (ExponentialDecay, PiecewiseConstantDecay, CosineDecay with warm-up)
against Keras's formulas written out here, used as the learning rate of optimizers (the rate of
a step is the schedule at the number of steps done before it, weight decay included). The
callbacks that change the learning rate are tested with the others, in tests/test_callbacks.py.
The Keras step (clipping, decoupled decay, update, in Keras's order) is keras_clip and keras_step."""
import math

import numpy as np
import pytest

import gpucnn
from _reference import ref_adagrad_update, ref_adam_update, ref_rmsprop_update, ref_sgd_update
from gpucnn import layers, models, optimizers
from gpucnn.autograd import Tensor
from gpucnn.optimizers import schedules

SHAPES = [(7,), (3, 4)]
STEPS = 100
# float32 rounding after 100 steps: |p32 - p64| / max(|p64|, 1) (measured below 1e-6)
TOL = 1e-5


pytestmark = pytest.mark.usefixtures("numpy_backend")


# ------------------------------------------------------------------ Keras 3, written out (float64)

def keras_clip(grads, cfg):
    if cfg.get("clipnorm") is not None:
        c = cfg["clipnorm"]
        return [g * c / max(math.sqrt(float(np.sum(g * g))), c) for g in grads]
    if cfg.get("global_clipnorm") is not None:
        c = cfg["global_clipnorm"]
        n = math.sqrt(sum(float(np.sum(g * g)) for g in grads))
        scale = c * min(1.0 / n if n else math.inf, 1.0 / c)
        return [g * scale for g in grads]
    if cfg.get("clipvalue") is not None:
        c = cfg["clipvalue"]
        return [np.minimum(np.maximum(g, -c), c) for g in grads]
    return grads


def keras_slots(kind, cfg, p):
    if kind == "Adagrad":
        return {"a": np.full(p.shape, cfg.get("initial_accumulator_value", 0.1))}
    return {k: np.zeros(p.shape) for k in ("m", "v", "vhat", "mg", "u")}


def keras_step(kind, cfg, p, g, s, t, lr):
    """Keras 3's update of ``p`` with gradient ``g`` at step ``t`` (from 1); ``s``: slots (the
    formulas: ``tests/_reference.py``)."""
    p = p.copy()
    wd = cfg.get("weight_decay") or 0.0
    eps = cfg.get("epsilon", 1e-7)
    if kind == "SGD":
        ref_sgd_update(p, g, s["m"], lr, cfg.get("momentum", 0.0), cfg.get("nesterov"), wd)
    elif kind in ("Adam", "AdamW"):
        ref_adam_update(p, g, s["m"], s["v"], lr, cfg.get("beta_1", 0.9),
                        cfg.get("beta_2", 0.999), eps, t, wd,
                        vhat=s["vhat"] if cfg.get("amsgrad") else None)
    elif kind == "RMSprop":
        ref_rmsprop_update(p, g, s["v"], lr, cfg.get("rho", 0.9), eps, wd, u=s["u"],
                           momentum=cfg.get("momentum", 0.0),
                           mg=s["mg"] if cfg.get("centered") else None)
    elif kind == "Adagrad":
        ref_adagrad_update(p, g, s["a"], lr, eps, wd)
    else:
        raise ValueError(kind)
    return p


def spread_gradients(rng, shapes):
    """float32 gradients whose elements have random signs and magnitudes 10**U(-6, 2)."""
    return [(rng.choice([-1.0, 1.0], s) * 10.0 ** rng.uniform(-6, 2, s)).astype(np.float32)
            for s in shapes]


def run_both(kind, cfg, rng, steps=STEPS, grads=spread_gradients, lr_of=None):
    """(gpucnn's parameters as float64, Keras's parameters, the initial parameters) after
    ``steps`` updates with the same float32 gradients."""
    ks = gpucnn.backend.kernels()
    p0 = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    ts = [Tensor(ks.asarray(a.copy()), requires_grad=True) for a in p0]
    opt = getattr(optimizers, kind)(**cfg)
    want = [a.astype(np.float64) for a in p0]
    rcfg = dict(cfg)
    if kind == "AdamW":
        rcfg.setdefault("weight_decay", 0.004)
    slots = [keras_slots(kind, rcfg, a) for a in want]
    for t in range(1, steps + 1):
        gs = grads(rng, SHAPES)
        for p, g in zip(ts, gs):
            p.grad = Tensor(ks.asarray(g))
        opt.apply_gradients(ts)
        lr = cfg["learning_rate"] if lr_of is None else lr_of(t - 1)
        clipped = keras_clip([g.astype(np.float64) for g in gs], rcfg)
        want = [keras_step(kind, rcfg, a, g, s, t, lr) for a, g, s in zip(want, clipped, slots)]
    assert opt.iterations == steps
    got = [np.asarray(ks.to_host(p.data), dtype=np.float64) for p in ts]
    return got, want, p0


def max_error(got, want):
    return max(float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1.0))) for a, b in zip(got, want))


def check(got, want, p0, what):
    err = max_error(got, want)
    assert err < TOL, f"{what}: after {STEPS} steps |gpucnn - Keras| / max(|p|, 1) = {err:.2e}"
    moved = max(float(np.max(np.abs(b - a))) for a, b in zip(p0, want))
    assert moved > 100 * TOL, f"{what}: the parameters hardly moved ({moved:.1e}); a weak test"


CASES = [
    ("SGD", dict(learning_rate=0.01)),
    ("SGD", dict(learning_rate=0.01, momentum=0.9)),
    ("SGD", dict(learning_rate=0.01, momentum=0.9, weight_decay=0.05)),
    ("SGD", dict(learning_rate=0.01, momentum=0.9, nesterov=True, clipnorm=1.0)),
    ("SGD", dict(learning_rate=0.01, momentum=0.5, nesterov=True, weight_decay=0.1,
                 global_clipnorm=2.0)),
    ("Adam", dict(learning_rate=0.01)),
    ("Adam", dict(learning_rate=0.01, beta_1=0.8, beta_2=0.95, epsilon=1e-3, clipvalue=0.5)),
    ("Adam", dict(learning_rate=0.01, amsgrad=True)),
    ("Adam", dict(learning_rate=0.01, amsgrad=True, weight_decay=0.1, global_clipnorm=5.0)),
    ("AdamW", dict(learning_rate=0.01)),
    ("AdamW", dict(learning_rate=0.01, weight_decay=0.05, clipnorm=3.0)),
    ("RMSprop", dict(learning_rate=0.01)),
    ("RMSprop", dict(learning_rate=0.01, weight_decay=0.05, clipvalue=1.0)),
    ("RMSprop", dict(learning_rate=0.01, momentum=0.9)),
    ("RMSprop", dict(learning_rate=0.01, centered=True)),
    ("RMSprop", dict(learning_rate=0.01, momentum=0.9, centered=True, weight_decay=0.05,
                     global_clipnorm=10.0)),
    ("Adagrad", dict(learning_rate=0.1)),
    ("Adagrad", dict(learning_rate=0.1, initial_accumulator_value=0.5, weight_decay=0.01,
                     clipnorm=3.0)),
]


def _id(case):
    kind, cfg = case
    return kind + "-" + "-".join(f"{k}={v}" for k, v in cfg.items() if k != "learning_rate")


@pytest.mark.parametrize("kind,cfg", CASES, ids=[_id(c) for c in CASES])
def test_matches_keras_formulas_over_100_steps(kind, cfg, rng):
    got, want, p0 = run_both(kind, cfg, rng)
    check(got, want, p0, _id((kind, cfg)))


def test_the_reference_would_catch_a_wrong_update(rng):
    """The comparison is sharp enough: Keras's Adam against PyTorch's placement of epsilon,
    fed to the same check, fails it."""
    got, want, p0 = run_both("Adam", dict(learning_rate=0.01, epsilon=1e-3),
                             np.random.default_rng(3))
    rng2 = np.random.default_rng(3)
    p = [rng2.standard_normal(s).astype(np.float32).astype(np.float64) for s in SHAPES]
    m, v = ([np.zeros(s) for s in SHAPES] for _ in range(2))
    for t in range(1, STEPS + 1):
        gs = [g.astype(np.float64) for g in spread_gradients(rng2, SHAPES)]
        for i, g in enumerate(gs):
            m[i] = 0.9 * m[i] + 0.1 * g
            v[i] = 0.999 * v[i] + 0.001 * g * g
            p[i] = p[i] - 0.01 * (m[i] / (1 - 0.9 ** t)) / (np.sqrt(v[i] / (1 - 0.999 ** t)) + 1e-3)
    assert max_error(got, want) < TOL
    assert max_error(p, want) > 100 * TOL


# ------------------------------------------------------------------ on the cuda kernels


CUDA_CASES = [
    ("SGD", dict(learning_rate=0.01, momentum=0.9, nesterov=True, weight_decay=0.05,
                 clipnorm=1.0)),
    ("Adam", dict(learning_rate=0.01, amsgrad=True, weight_decay=0.1, global_clipnorm=5.0)),
    ("RMSprop", dict(learning_rate=0.01, momentum=0.9, centered=True, weight_decay=0.05,
                     clipvalue=1.0)),
    ("Adagrad", dict(learning_rate=0.1, weight_decay=0.01)),
]


@pytest.mark.parametrize("kind,cfg", CUDA_CASES, ids=[_id(c) for c in CUDA_CASES])
def test_cuda_backend_matches_keras_formulas(kind, cfg, cuda_backend, rng):
    """The fused CUDA kernels (in the simulator without a GPU), 30 steps: the simulator runs
    each CUDA thread as a Python thread."""
    got, want, p0 = run_both(kind, cfg, rng, steps=30)
    err = max_error(got, want)
    assert err < TOL, f"cuda {_id((kind, cfg))}: {err:.2e}"


# ------------------------------------------------------------------ the rows of issue 14's table


def _one_param(value):
    return Tensor(np.asarray(value, np.float32), requires_grad=True)


def test_row_rmsprop_divides_by_sqrt_of_v_plus_epsilon():
    """Keras: lr * g / sqrt(v + eps). At gradients near 1e-4 the old sqrt(v) + eps gave a
    step ten times as large."""
    lr, rho, eps = 0.001, 0.9, 1e-7
    g = np.array([1e-4, -3e-4, 2e-5], np.float64)
    p = _one_param([0.5, -0.25, 1.0])
    p0 = p.numpy().astype(np.float64)
    opt = optimizers.RMSprop(lr)
    p.grad = Tensor(g.astype(np.float32))
    opt.apply_gradients([p])
    v = (1 - rho) * g * g
    keras = p0 - lr * g / np.sqrt(v + eps)
    old = p0 - lr * g / (np.sqrt(v) + eps)
    np.testing.assert_allclose(p.numpy(), keras, rtol=1e-6, atol=1e-9)
    assert abs(old[0] - p0[0]) > 5 * abs(keras[0] - p0[0])     # the old form: about 10x


def test_row_adam_epsilon_with_the_bias_correction_in_the_step(rng):
    """Keras: p -= lr_t * m / (sqrt(v) + eps), lr_t = lr sqrt(1 - b2^t) / (1 - b1^t). With
    gradients near 1e-6 this is far from PyTorch's sqrt(v_hat) + eps, over 100 steps."""
    def tiny(rng, shapes):
        return [(rng.choice([-1.0, 1.0], s) * 10.0 ** rng.uniform(-6.5, -5.5, s))
                .astype(np.float32) for s in shapes]

    got, want, p0 = run_both("Adam", dict(learning_rate=0.01), rng, grads=tiny)
    check(got, want, p0, "Adam at gradients near 1e-6")
    # one step at g = 1e-6: Keras's step against PyTorch's (sqrt(v_hat) + eps)
    g = np.float64(np.float32(1e-6))
    step_keras = 0.01 * math.sqrt(1 - 0.999) / (1 - 0.9) * (0.1 * g) / (math.sqrt(0.001) * g + 1e-7)
    step_torch = 0.01 * g / (g + 1e-7)
    p = _one_param([0.0])
    opt = optimizers.Adam(0.01)
    p.grad = Tensor(np.array([g], np.float32))
    opt.apply_gradients([p])
    assert -float(p.numpy()[0]) == pytest.approx(step_keras, rel=1e-5)
    assert abs(step_torch - step_keras) > 0.3 * step_keras


def test_row_sgd_momentum_weight_decay_is_decoupled():
    """Keras: p -= lr * wd * p outside the momentum. With a zero gradient for 10 steps p shrinks
    by (1 - lr wd)^10 and the momentum stays 0; the old L2 form built the decay up in the
    momentum (4x the change after 10 steps)."""
    lr, wd, mu = 0.1, 0.5, 0.9
    p = _one_param([2.0, -1.0])
    p0 = p.numpy().astype(np.float64)
    opt = optimizers.SGD(lr, momentum=mu, weight_decay=wd)
    for _ in range(10):
        p.grad = Tensor(np.zeros(2, np.float32))
        opt.apply_gradients([p])
    keras = p0 * (1 - lr * wd) ** 10
    np.testing.assert_allclose(p.numpy(), keras, rtol=1e-6)
    assert np.all(opt._slots[id(p)][1] == 0)                 # the velocity never moved
    q, v = p0.copy(), np.zeros(2)
    for _ in range(10):                                       # the old L2-in-the-gradient form
        v = mu * v - lr * wd * q
        q = q + v
    assert abs(q[0] - p0[0]) > 3 * abs(keras[0] - p0[0])


def test_row_rmsprop_weight_decay_is_decoupled(rng):
    """Keras: the decay is p -= lr * wd * p, not divided by sqrt(v) as an L2 term would be."""
    cfg = dict(learning_rate=0.01, weight_decay=0.1)
    got, want, p0 = run_both("RMSprop", cfg, rng)
    check(got, want, p0, "RMSprop with weight decay")
    # one step from a fresh optimizer against the L2 form
    p = _one_param([1.0])
    opt = optimizers.RMSprop(0.01, weight_decay=0.1)
    p.grad = Tensor(np.array([1e-3], np.float32))
    opt.apply_gradients([p])
    g = float(np.float32(1e-3))
    keras = 1.0 - 0.01 * 0.1 * 1.0 - 0.01 * g / math.sqrt(0.1 * g * g + 1e-7)
    gl2 = g + 0.1
    l2 = 1.0 - 0.01 * gl2 / (math.sqrt(0.1 * gl2 * gl2) + 1e-7)
    assert float(p.numpy()[0]) == pytest.approx(keras, rel=1e-6)
    assert abs(l2 - keras) > 1e-3


# ------------------------------------------------------------------ arguments and state


@pytest.mark.parametrize("name,defaults,slots,other", [
    ("SGD", {"learning_rate": 0.01, "momentum": 0.0, "nesterov": False}, (),
     (dict(momentum=0.9), ("momentum",))),
    ("Adam", {"learning_rate": 0.001, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7,
              "amsgrad": False}, ("momentum", "velocity"),
     (dict(amsgrad=True), ("momentum", "velocity", "velocity_hat"))),
    ("AdamW", {"learning_rate": 0.001, "weight_decay": 0.004}, ("momentum", "velocity"), None),
    ("RMSprop", {"learning_rate": 0.001, "rho": 0.9, "momentum": 0.0, "epsilon": 1e-7,
                 "centered": False}, ("velocity",),
     (dict(momentum=0.5, centered=True), ("velocity", "momentum", "average_gradient"))),
    ("Adagrad", {"learning_rate": 0.001, "initial_accumulator_value": 0.1, "epsilon": 1e-7},
     ("accumulator",), None),
])
def test_keras_defaults_slot_names_and_config_round_trip(name, defaults, slots, other):
    """Keras's defaults (attributes and config) and slot names, by name in any case; ``other``:
    arguments that add slots, and the slots then."""
    opt = optimizers.get(name.lower())
    assert type(opt) is getattr(optimizers, name) and type(optimizers.get(name)) is type(opt)
    config = opt.get_config()
    for k, v in defaults.items():
        assert config[k] == v and getattr(opt, k) == v, (name, k, config[k])
    assert opt.slot_names() == slots, name
    again = optimizers.deserialize(optimizers.serialize(opt))
    assert type(again) is type(opt) and again.get_config() == config
    if other is not None:
        assert type(opt)(**other[0]).slot_names() == other[1]


def test_bad_arguments_name_the_optimizer():
    with pytest.raises(ValueError, match="only one of clipnorm, clipvalue and global_clipnorm"):
        optimizers.SGD(clipnorm=1.0, clipvalue=0.5)
    with pytest.raises(ValueError, match=r"Adam: clipnorm must lie in \(0.0"):
        optimizers.Adam(clipnorm=0.0)
    with pytest.raises(ValueError, match="AdamW: weight_decay must be a number"):
        optimizers.AdamW(weight_decay=None)
    with pytest.raises(ValueError, match="RMSprop: weight_decay"):
        optimizers.RMSprop(weight_decay=-0.1)
    with pytest.raises(TypeError, match="Adagrad: epsilon must be a number"):
        optimizers.Adagrad(epsilon="small")
    with pytest.raises(ValueError, match="unknown optimizer 'Nadam'"):
        optimizers.deserialize({"class_name": "Nadam", "config": {}})
    with pytest.raises(ValueError, match="unknown optimizer 'adamw2'"):
        optimizers.get("adamw2")
    with pytest.raises(ValueError, match="learning_rate"):
        optimizers.SGD(learning_rate=-1.0)
    with pytest.raises(ValueError, match="momentum"):
        optimizers.SGD(momentum=1.5)


def test_exclude_from_weight_decay_by_name_and_by_tensor():
    a, b, c = (_one_param(v) for v in ([1.0, 2.0], [1.0], [4.0]))
    for t, name in zip((a, b, c), ("dense/kernel", "dense/bias", "other/kernel")):
        t.name = name
    opt = optimizers.SGD(0.1, weight_decay=0.5)
    opt.exclude_from_weight_decay(var_list=[c], var_names=["bias"])
    for t in (a, b, c):
        t.grad = Tensor(np.zeros(t.shape, np.float32))
    opt.apply_gradients([a, b, c])
    np.testing.assert_allclose(a.numpy(), [0.95, 1.9], rtol=1e-6)
    assert b.numpy()[0] == 1.0 and c.numpy()[0] == 4.0


def test_weight_decay_zero_leaves_infinite_weights_alone():
    """No decay term at all when weight_decay is 0 (inf * 0 would make a NaN); the infinite
    element's update is refused and reported, the finite one is updated."""
    p = _one_param([np.inf, 1.0])
    for opt in (optimizers.SGD(0.1), optimizers.Adam(0.1), optimizers.RMSprop(0.1)):
        p.data[...] = [np.inf, 1.0]
        p.grad = Tensor(np.array([0.0, 0.5], np.float32))
        with pytest.raises(optimizers.NonFiniteUpdateError, match="optimizer step 1"):
            opt.apply_gradients([p])
        assert p.numpy()[0] == np.inf and p.numpy()[1] < 1.0, type(opt).__name__


def test_clipping_leaves_the_gradients_of_the_parameters_alone(rng):
    p = _one_param(rng.standard_normal(5))
    g = (100 * rng.standard_normal(5)).astype(np.float32)
    p.grad = Tensor(g.copy())
    optimizers.SGD(0.1, global_clipnorm=1.0).apply_gradients([p])
    np.testing.assert_array_equal(p.grad.numpy(), g)


# ------------------------------------------------------------------ a few steps on a tiny problem

# Adam: Keras's bias corrections in the step size, epsilon added to sqrt(v) (a large epsilon tells
# this apart from PyTorch's sqrt(v_hat) + eps); weight decay decoupled
FEW_STEPS = [
    ("SGD", dict(learning_rate=0.1)),
    ("SGD", dict(learning_rate=0.1, momentum=0.9)),
    ("SGD", dict(learning_rate=0.1, momentum=0.9, nesterov=True)),
    ("SGD", dict(learning_rate=0.1, momentum=0.5, weight_decay=0.1)),
    ("SGD", dict(learning_rate=0.1, weight_decay=0.05)),
    ("Adam", dict(learning_rate=0.01, beta_1=0.8, beta_2=0.95)),
    ("Adam", dict(learning_rate=0.01, beta_1=0.8, beta_2=0.95, epsilon=0.5)),
    ("Adam", dict(learning_rate=0.01, beta_1=0.8, beta_2=0.95, weight_decay=0.1)),
    ("RMSprop", dict(learning_rate=0.01, rho=0.8, epsilon=1e-3)),
    ("RMSprop", dict(learning_rate=0.01, rho=0.8, epsilon=1e-3, weight_decay=0.1)),
    ("RMSprop", dict(learning_rate=0.01, rho=0.8, epsilon=1e-3, momentum=0.7)),
    ("RMSprop", dict(learning_rate=0.01, rho=0.8, epsilon=1e-3, momentum=0.7,
                     weight_decay=0.05)),
]


@pytest.mark.parametrize("kind,cfg", FEW_STEPS, ids=[_id(c) for c in FEW_STEPS])
def test_a_few_steps_on_a_tiny_problem(rng, kind, cfg):
    """Four steps on one parameter, each against Keras's formula from the same start."""
    p0 = rng.standard_normal(5)
    grads = [rng.standard_normal(5) for _ in range(4)]
    want, slots, opt = p0.copy(), keras_slots(kind, cfg, p0), getattr(optimizers, kind)(**cfg)
    p = _one_param(p0)
    for t, g in enumerate(grads, 1):
        want = keras_step(kind, cfg, want, g, slots, t, cfg["learning_rate"])
        p.grad = Tensor(g.astype(np.float32))
        opt.apply_gradients([p])
        np.testing.assert_allclose(p.numpy().astype(np.float64), want, rtol=2e-5, atol=2e-6,
                                   err_msg=f"step {t}")


def test_the_guides_line():
    SGD = optimizers.SGD(learning_rate=0.01)  # the guide's line
    assert SGD.learning_rate == 0.01


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


# ------------------------------------------------------------------ the schedules

def test_exponential_decay():
    s = schedules.ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5)
    for step in (0, 1, 7, 10, 25, 1000):
        assert s(step) == pytest.approx(0.1 * 0.5 ** (step / 10), rel=1e-12)
    st = schedules.ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5, staircase=True)
    assert [st(k) for k in (0, 9, 10, 19, 20)] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025])


def test_piecewise_constant_decay_keeps_the_value_before_on_a_boundary():
    s = schedules.PiecewiseConstantDecay([3, 7], [1.0, 0.5, 0.1])
    assert [s(k) for k in range(10)] == [1.0] * 4 + [0.5] * 4 + [0.1] * 2
    with pytest.raises(ValueError, match=r"one more entry than boundaries; got 2 boundaries"):
        schedules.PiecewiseConstantDecay([3, 7], [1.0, 0.5])
    with pytest.raises(ValueError, match="increase strictly"):
        schedules.PiecewiseConstantDecay([7, 3], [1.0, 0.5, 0.1])


def test_cosine_decay_with_and_without_warmup():
    s = schedules.CosineDecay(0.1, decay_steps=20, alpha=0.1)
    for step in (0, 5, 10, 20, 40):
        k = min(step, 20)
        want = 0.1 * ((1 - 0.1) * 0.5 * (1 + math.cos(math.pi * k / 20)) + 0.1)
        assert s(step) == pytest.approx(want, rel=1e-12)
    w = schedules.CosineDecay(0.0, decay_steps=20, warmup_target=0.2, warmup_steps=5)
    assert [w(k) for k in range(6)] == pytest.approx([0.0, 0.04, 0.08, 0.12, 0.16, 0.2])
    assert w(15) == pytest.approx(0.2 * 0.5 * (1 + math.cos(math.pi * 10 / 20)))
    assert w(25) == pytest.approx(0.0, abs=1e-15) and w(100) == pytest.approx(0.0, abs=1e-15)
    with pytest.raises(ValueError, match="warmup_target .* needs warmup_steps > 0"):
        schedules.CosineDecay(0.0, 10, warmup_target=0.1)
    with pytest.raises(ValueError, match=r"CosineDecay: decay_steps must lie in \(0.0"):
        schedules.CosineDecay(0.1, 0)


def test_schedule_config_round_trip_and_import_path():
    from gpucnn.optimizers.schedules import CosineDecay   # Keras's import path

    for s in (schedules.ExponentialDecay(0.1, 10, 0.9, staircase=True),
              schedules.PiecewiseConstantDecay([2, 4], [0.3, 0.2, 0.1]),
              CosineDecay(0.0, 20, alpha=0.05, warmup_target=0.1, warmup_steps=3)):
        again = schedules.deserialize(schedules.serialize(s))
        assert type(again) is type(s) and again.get_config() == s.get_config()
        assert [again(k) for k in range(30)] == [s(k) for k in range(30)]
    with pytest.raises(ValueError, match="unknown learning-rate schedule 'Nope'"):
        schedules.deserialize({"class_name": "Nope", "config": {}})


# ------------------------------------------------------------------ a schedule as a learning rate

def test_sgd_with_a_schedule_uses_the_rate_at_the_steps_done(rng):
    sched = schedules.PiecewiseConstantDecay([2, 5], [0.1, 0.01, 0.001])
    opt = optimizers.SGD(learning_rate=sched, momentum=0.5, weight_decay=0.2)
    p = _one_param(rng.standard_normal(4))
    want, v = p.numpy().astype(np.float64), np.zeros(4)
    seen = []
    for k in range(8):
        g = rng.standard_normal(4).astype(np.float32)
        seen.append(opt.learning_rate)
        p.grad = Tensor(g)
        opt.apply_gradients([p])
        lr = [0.1, 0.1, 0.1, 0.01, 0.01, 0.01, 0.001, 0.001][k]
        ref_sgd_update(want, g.astype(np.float64), v, lr, 0.5, False, 0.2)  # this step's rate
    assert seen == [0.1, 0.1, 0.1, 0.01, 0.01, 0.01, 0.001, 0.001]
    np.testing.assert_allclose(p.numpy(), want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad"])
def test_every_optimizer_takes_a_schedule(name, rng):
    """Each optimizer with ExponentialDecay equals it with the same rates given step by step
    (through a float learning rate set before each step)."""
    sched = schedules.ExponentialDecay(0.05, decay_steps=3, decay_rate=0.3)
    a = getattr(optimizers, name)(learning_rate=sched)
    b = getattr(optimizers, name)(learning_rate=0.05)
    pa = _one_param(rng.standard_normal(5))
    pb = _one_param(pa.numpy())
    for k in range(6):
        g = rng.standard_normal(5).astype(np.float32)
        b.learning_rate = sched(k)
        pa.grad, pb.grad = Tensor(g), Tensor(g.copy())
        a.apply_gradients([pa])
        b.apply_gradients([pb])
    np.testing.assert_array_equal(pa.numpy(), pb.numpy())
    assert a.learning_rate == pytest.approx(sched(6))
    assert a.schedule is sched and b.schedule is None
    with pytest.raises(TypeError, match=f"{name}: this optimizer was made with the schedule"):
        a.learning_rate = 0.1


def test_compile_with_a_scheduled_optimizer_trains(rng):
    x = rng.standard_normal((32, 3)).astype(np.float32)
    y = x @ np.array([[1.0], [-2.0], [0.5]], np.float32)
    m = models.Sequential([layers.Dense(1, input_shape=(3,))])
    m.compile(optimizers.Adam(schedules.CosineDecay(0.0, 40, warmup_target=0.1,
                                                    warmup_steps=8)), "mse")
    h = m.fit(x, y, batch_size=8, epochs=12, verbose=0)
    assert m.optimizer.iterations == 48
    assert m.optimizer.learning_rate == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi)), abs=1e-12)
    assert h.history["loss"][-1] < 0.2 * h.history["loss"][0]
