"""Learning-rate schedules (ExponentialDecay, PiecewiseConstantDecay, CosineDecay with warm-up)
against Keras's formulas written out here, used as the learning rate of optimizers (the rate of
a step is the schedule at the number of steps done before it, weight decay included). The
callbacks that change the learning rate are tested with the others, in tests/test_callbacks.py."""
import math

import numpy as np
import pytest

import gpucnn
from gpucnn import layers, models, optimizers
from gpucnn.autograd import Tensor
from gpucnn.optimizers import schedules


@pytest.fixture(autouse=True)
def _numpy_backend():
    gpucnn.set_backend("numpy")
    gpucnn.manual_seed(0)


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

def _param(values):
    return Tensor(np.asarray(values, np.float32), requires_grad=True)


def test_sgd_with_a_schedule_uses_the_rate_at_the_steps_done(rng):
    sched = schedules.PiecewiseConstantDecay([2, 5], [0.1, 0.01, 0.001])
    opt = optimizers.SGD(learning_rate=sched, momentum=0.5, weight_decay=0.2)
    p = _param(rng.standard_normal(4))
    want, v = p.numpy().astype(np.float64), np.zeros(4)
    seen = []
    for k in range(8):
        g = rng.standard_normal(4).astype(np.float32)
        seen.append(opt.learning_rate)
        p.grad = Tensor(g)
        opt.apply_gradients([p])
        lr = [0.1, 0.1, 0.1, 0.01, 0.01, 0.01, 0.001, 0.001][k]
        want = want - want * 0.2 * lr                         # the decay with this step's rate
        v = 0.5 * v - lr * g
        want = want + v
    assert seen == [0.1, 0.1, 0.1, 0.01, 0.01, 0.01, 0.001, 0.001]
    np.testing.assert_allclose(p.numpy(), want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad"])
def test_every_optimizer_takes_a_schedule(name, rng):
    """Each optimizer with ExponentialDecay equals it with the same rates given step by step
    (through a float learning rate set before each step)."""
    sched = schedules.ExponentialDecay(0.05, decay_steps=3, decay_rate=0.3)
    a = getattr(optimizers, name)(learning_rate=sched)
    b = getattr(optimizers, name)(learning_rate=0.05)
    pa, pb = _param(rng.standard_normal(5)), None
    pb = _param(pa.numpy())
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
