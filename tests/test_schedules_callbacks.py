"""Learning-rate schedules (ExponentialDecay, PiecewiseConstantDecay, CosineDecay with warm-up)
against Keras's formulas written out here, used as the learning rate of optimizers (the rate of
a step is the schedule at the number of steps done before it, weight decay included); and the
callbacks ReduceLROnPlateau (a scripted monitored value, the learning rates worked out by hand
from Keras's rules), LearningRateScheduler and CSVLogger (rows, append, atomic rewrites)."""
import csv
import math
import os

import numpy as np
import pytest

import gpucnn
from gpucnn import callbacks, layers, models, optimizers
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


# ------------------------------------------------------------------ callbacks

class Script(callbacks.Callback):
    """Writes ``logs['score'] = values[epoch]``."""

    def __init__(self, values):
        super().__init__()
        self.values = values

    def on_epoch_end(self, epoch, logs=None):
        logs["score"] = self.values[epoch]


@pytest.fixture
def data(rng):
    x = rng.standard_normal((24, 6)).astype(np.float32)
    return x, x @ rng.standard_normal((6, 2)).astype(np.float32)


def model(lr=0.1, opt=None):
    m = models.Sequential([layers.Dense(4, activation="tanh", input_shape=(6,)), layers.Dense(2)])
    m.compile(opt or optimizers.SGD(lr), "mse")
    return m


def test_reduce_lr_on_plateau_follows_keras(data):
    """patience 2, cooldown 1, factor 0.5, min_lr 0.02, min_delta 1e-3, worked out by hand:
    reductions at the ends of epochs 3, 5 and 8 (the last one stops at min_lr), none at 10;
    ``logs['learning_rate']`` is the rate the epoch trained with."""
    values = [5, 4, 4, 4, 4, 3.9999, 2, 2, 2, 2, 2]
    rop = callbacks.ReduceLROnPlateau(monitor="score", factor=0.5, patience=2, cooldown=1,
                                      min_lr=0.02, min_delta=1e-3)
    m = model(0.1)
    h = m.fit(*data, batch_size=8, epochs=len(values), verbose=0,
              callbacks=[Script(values), rop])
    assert h.history["learning_rate"] == pytest.approx(
        [0.1, 0.1, 0.1, 0.1, 0.05, 0.05, 0.025, 0.025, 0.025, 0.02, 0.02])
    assert m.optimizer.learning_rate == pytest.approx(0.02)
    assert rop.best == 2


def test_reduce_lr_on_plateau_arguments_and_schedules(data):
    with pytest.raises(ValueError, match=r"ReduceLROnPlateau: factor must lie in \(0, 1\), got 1.0"):
        callbacks.ReduceLROnPlateau(factor=1.0)
    rop = callbacks.ReduceLROnPlateau(monitor="score", patience=0)
    m = model(opt=optimizers.SGD(schedules.ExponentialDecay(0.1, 10, 0.9)))
    with pytest.raises(TypeError, match="made with the schedule"):
        m.fit(*data, batch_size=8, epochs=3, verbose=0, callbacks=[Script([3, 3, 3]), rop])


def test_learning_rate_scheduler_sets_the_rate_of_each_epoch(data):
    calls = []

    def schedule(epoch, lr):
        calls.append((epoch, lr))
        return lr * 0.5 if epoch >= 2 else lr

    m = model(0.08)
    seen = []
    probe = callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs: seen.append(m.optimizer.learning_rate))
    h = m.fit(*data, batch_size=8, epochs=4, verbose=0,
              callbacks=[callbacks.LearningRateScheduler(schedule), probe])
    assert calls == [(0, 0.08), (1, 0.08), (2, 0.08), (3, 0.04)]
    assert seen == pytest.approx([0.08, 0.08, 0.04, 0.02])
    assert h.history["learning_rate"] == pytest.approx([0.08, 0.08, 0.04, 0.02])
    one_arg = callbacks.LearningRateScheduler(lambda epoch: 0.1 / (epoch + 1))
    m = model(0.5)
    h = m.fit(*data, batch_size=8, epochs=3, verbose=0, callbacks=[one_arg])
    assert h.history["learning_rate"] == pytest.approx([0.1, 0.05, 0.1 / 3])
    with pytest.raises(ValueError, match="LearningRateScheduler: the schedule must return a float, "
                                         "got 'fast' for epoch 0"):
        model().fit(*data, epochs=1, verbose=0,
                    callbacks=[callbacks.LearningRateScheduler(lambda e, lr: "fast")])


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def test_csv_logger_rows_append_and_atomic_rewrites(data, tmp_path):
    path = tmp_path / "log.csv"
    rows_seen = []
    peek = callbacks.LambdaCallback(on_epoch_end=lambda e, logs: rows_seen.append(
        len(read_csv(path))))
    x, y = data
    m = model()
    h = m.fit(x, y, batch_size=8, epochs=3, verbose=0, validation_data=(x[:8], y[:8]),
              callbacks=[callbacks.CSVLogger(path), peek])
    rows = read_csv(path)
    assert rows[0] == ["epoch", "loss", "val_loss"]
    assert [int(r[0]) for r in rows[1:]] == [0, 1, 2]
    for r, loss, val in zip(rows[1:], h.history["loss"], h.history["val_loss"]):
        assert float(r[1]) == loss and float(r[2]) == val          # repr: every digit
    assert rows_seen == [2, 3, 4]          # whole rows after every epoch (header + rows)
    assert sorted(os.listdir(tmp_path)) == ["log.csv"]                 # no temporary left
    m.fit(x, y, batch_size=8, epochs=5, initial_epoch=3, verbose=0,
          validation_data=(x[:8], y[:8]), callbacks=[callbacks.CSVLogger(path, append=True)])
    rows = read_csv(path)
    assert rows[0] == ["epoch", "loss", "val_loss"] and len(rows) == 6
    assert [int(r[0]) for r in rows[1:]] == [0, 1, 2, 3, 4]
    m.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[callbacks.CSVLogger(path)])
    assert read_csv(path)[0] == ["epoch", "loss"] and len(read_csv(path)) == 2  # afresh


def test_csv_logger_refuses_other_columns_when_appending(data, tmp_path):
    path = tmp_path / "log.csv"
    model().fit(*data, batch_size=8, epochs=1, verbose=0, callbacks=[callbacks.CSVLogger(path)])
    before = path.read_bytes()
    x, y = data
    with pytest.raises(ValueError, match=r"CSVLogger: .*log.csv' has the columns \['epoch', "
                                         r"'loss'\], but this training logs \['epoch', 'loss', "
                                         r"'val_loss'\]"):
        model().fit(x, y, batch_size=8, epochs=1, verbose=0, validation_data=(x, y),
                    callbacks=[callbacks.CSVLogger(path, append=True)])
    assert path.read_bytes() == before


def test_csv_logger_separator_and_missing_values(data, tmp_path):
    path = tmp_path / "log.tsv"

    class Once(callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                logs["extra"] = [1, 2]

    model().fit(*data, batch_size=8, epochs=2, verbose=0,
                callbacks=[Once(), callbacks.CSVLogger(path, separator="\t")])
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    assert rows[0] == ["epoch", "extra", "loss"]
    assert rows[1][1] == "[1, 2]" and rows[2][1] == "NA"
