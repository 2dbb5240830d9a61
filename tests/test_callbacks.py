"""Callbacks: EarlyStopping (patience, min_delta, mode, baseline, restore_best_weights),
ModelCheckpoint (every epoch, save_best_only, formatted paths), batch hooks and stop_training;
ReduceLROnPlateau (a scripted monitored value, the learning rates worked out by hand from
Keras's rules), LearningRateScheduler and CSVLogger (rows, append, atomic rewrites).

The monitored values are scripted: a callback placed first writes ``logs['score']`` from a list, so
each test knows exactly which epoch is best."""
import csv
import os
import warnings

import numpy as np
import pytest

from gpucnn import callbacks, layers, models, optimizers
from gpucnn.optimizers import schedules
from test_models import same_weights as same


pytestmark = pytest.mark.usefixtures("numpy_backend")


class Script(callbacks.Callback):
    """Writes ``logs['score'] = values[epoch]`` and keeps the weights at each epoch's end."""

    def __init__(self, values):
        super().__init__()
        self.values = values
        self.weights = []

    def on_epoch_end(self, epoch, logs=None):
        logs["score"] = self.values[epoch]
        self.weights.append(self.model.get_weights())


@pytest.fixture
def data(rng):
    x = rng.standard_normal((24, 6)).astype(np.float32)
    return x, x @ rng.standard_normal((6, 2)).astype(np.float32)


def model(lr=0.05, opt=None):
    m = models.Sequential([layers.Dense(4, activation="tanh", input_shape=(6,)), layers.Dense(2)])
    m.compile(opt or optimizers.SGD(lr), "mse")
    return m


def fit(m, data, cbs, epochs):
    return m.fit(*data, batch_size=8, epochs=epochs, callbacks=cbs, verbose=0)


@pytest.mark.parametrize("values,kwargs,epochs,best,best_epoch", [
    ([5, 4, 3, 3.5, 3.2, 3.1, 1, 0], dict(patience=2), 5, 3, 2),  # then 2 epochs not better
    # +0.05 counts; +0.01 and +0.02 (not above min_delta) do not
    ([0.50, 0.55, 0.56, 0.57, 0.58, 0.9], dict(mode="max", min_delta=0.02, patience=2), 4,
     0.55, 1),
    # improvements that do not beat the baseline do not reset the wait (Keras 3)
    ([2.0, 1.5, 1.6, 1.7, 0.5], dict(baseline=1.0, patience=2), 3, 1.5, 1),
    ([2.0, 1.5, 1.6, 1.7, 0.5], dict(patience=2), 4, 1.5, 1),
], ids=["patience", "min_delta-max", "baseline", "no-baseline"])
def test_early_stopping(data, values, kwargs, epochs, best, best_epoch):
    es = callbacks.EarlyStopping(monitor="score", **kwargs)
    h = fit(model(), data, [Script(values), es], len(values))
    assert h.epoch == list(range(epochs))
    assert es.stopped_epoch == epochs - 1 and es.best == best and es.best_epoch == best_epoch


@pytest.mark.parametrize("values,patience,epochs", [
    ([3.0, 1.0, 2.0, 2.5, 2.6, 0.1], 2, 4),               # stopped early
    ([3.0, 1.0, 2.0], 5, 3)])                             # never stopped
def test_restore_best_weights(data, values, patience, epochs):
    script = Script(values)
    es = callbacks.EarlyStopping(monitor="score", patience=patience, restore_best_weights=True)
    m = model()
    h = fit(m, data, [script, es], len(values))
    assert h.epoch == list(range(epochs))
    assert same(m.get_weights(), script.weights[1])
    assert not same(script.weights[-1], script.weights[1])


def test_missing_monitor_warns_and_keeps_training(data):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        h = fit(model(), data, [callbacks.EarlyStopping(monitor="val_loss", patience=0)], 3)
    assert h.epoch == [0, 1, 2]
    assert any("'val_loss' is not in the logs" in str(x.message) for x in w)
    auto = callbacks.EarlyStopping(monitor="val_accuracy")
    assert auto.mode == "max" and callbacks.EarlyStopping().mode == "min"


def test_model_checkpoint_save_best_only(data, tmp_path):
    script = Script([3.0, 1.0, 2.0, 0.5, 0.7])
    ckpt = callbacks.ModelCheckpoint(str(tmp_path / "ep{epoch:02d}-{score:.1f}.weights.npz"),
                                     monitor="score", save_best_only=True)
    m = model()
    fit(m, data, [script, ckpt], 5)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["ep01-3.0.weights.npz", "ep02-1.0.weights.npz", "ep04-0.5.weights.npz"]
    probe = model()
    for name, epoch in (("ep02-1.0.weights.npz", 1), ("ep04-0.5.weights.npz", 3)):
        probe.load_weights(tmp_path / name)
        assert same(probe.get_weights(), script.weights[epoch])


def test_model_checkpoint_every_epoch_and_best_of_one_file(data, tmp_path):
    script = Script([3.0, 1.0, 2.0])
    every = callbacks.ModelCheckpoint(tmp_path / "last.npz", monitor="score")
    best = callbacks.ModelCheckpoint(tmp_path / "best.npz", monitor="score", save_best_only=True)
    m = model()
    fit(m, data, [script, every, best], 3)
    probe = model()
    probe.load_weights(tmp_path / "last.npz")
    assert same(probe.get_weights(), m.get_weights())
    probe.load_weights(tmp_path / "best.npz")
    assert same(probe.get_weights(), script.weights[1])
    with pytest.raises(ValueError, match="cannot format filepath"):
        fit(model(), data, [callbacks.ModelCheckpoint(str(tmp_path / "{nope}.npz"))], 1)


def test_batch_hooks_get_the_running_loss_and_can_stop_training(data):
    seen = []

    def on_batch_end(batch, logs):
        seen.append((batch, logs["loss"]))
        if len(seen) == 4:
            m.stop_training = True

    m = model()
    h = fit(m, data, [callbacks.LambdaCallback(on_train_batch_end=on_batch_end)], 5)
    assert [b for b, _ in seen] == [0, 1, 2, 0]  # 3 steps per epoch; stopped in the second
    assert h.epoch == [0, 1]
    assert all(np.isfinite(v) for _, v in seen)
    assert m.optimizer.iterations == 4


def test_epoch_hooks_order_and_logs(data):
    events = []
    cb = callbacks.LambdaCallback(
        on_train_begin=lambda logs: events.append("begin"),
        on_epoch_begin=lambda epoch, logs: events.append(f"e{epoch}"),
        on_epoch_end=lambda epoch, logs: events.append(sorted(logs)),
        on_train_end=lambda logs: events.append("end"))
    fit(model(), data, [cb], 2)
    assert events == ["begin", "e0", ["loss"], "e1", ["loss"], "end"]
    with pytest.raises(TypeError, match="Callback instances"):
        fit(model(), data, [lambda: None], 1)


# ------------------------------------------------------------------ learning rate and CSV

def test_reduce_lr_on_plateau_follows_keras(data):
    """patience 2, cooldown 1, factor 0.5, min_lr 0.02, min_delta 1e-3, worked out by hand:
    reductions at the ends of epochs 3, 5 and 8 (the last one stops at min_lr), none at 10;
    ``logs['learning_rate']`` is the rate the epoch trained with."""
    values = [5, 4, 4, 4, 4, 3.9999, 2, 2, 2, 2, 2]
    rop = callbacks.ReduceLROnPlateau(monitor="score", factor=0.5, patience=2, cooldown=1,
                                      min_lr=0.02, min_delta=1e-3)
    m = model(0.1)
    h = fit(m, data, [Script(values), rop], len(values))
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
    h = fit(m, data, [callbacks.LearningRateScheduler(schedule), probe], 4)
    assert calls == [(0, 0.08), (1, 0.08), (2, 0.08), (3, 0.04)]
    assert seen == pytest.approx([0.08, 0.08, 0.04, 0.02])
    assert h.history["learning_rate"] == pytest.approx([0.08, 0.08, 0.04, 0.02])
    one_arg = callbacks.LearningRateScheduler(lambda epoch: 0.1 / (epoch + 1))
    m = model(0.5)
    h = m.fit(*data, batch_size=8, epochs=3, verbose=0, callbacks=[one_arg])
    assert h.history["learning_rate"] == pytest.approx([0.1, 0.05, 0.1 / 3])
    with pytest.raises(ValueError, match="LearningRateScheduler: the schedule must return a float, "
                                         "got 'fast' for epoch 0"):
        model(0.1).fit(*data, epochs=1, verbose=0,
                    callbacks=[callbacks.LearningRateScheduler(lambda e, lr: "fast")])


def read_csv(path, delimiter=","):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f, delimiter=delimiter))


def test_csv_logger_rows_append_and_atomic_rewrites(data, tmp_path):
    path = tmp_path / "log.csv"
    rows_seen = []
    peek = callbacks.LambdaCallback(on_epoch_end=lambda e, logs: rows_seen.append(
        len(read_csv(path))))
    x, y = data
    m = model(0.1)
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
    model(0.1).fit(*data, batch_size=8, epochs=1, verbose=0, callbacks=[callbacks.CSVLogger(path)])
    before = path.read_bytes()
    x, y = data
    with pytest.raises(ValueError, match=r"CSVLogger: .*log.csv' has the columns \['epoch', "
                                         r"'loss'\], but this training logs \['epoch', 'loss', "
                                         r"'val_loss'\]"):
        model(0.1).fit(x, y, batch_size=8, epochs=1, verbose=0, validation_data=(x, y),
                    callbacks=[callbacks.CSVLogger(path, append=True)])
    assert path.read_bytes() == before


def test_csv_logger_separator_and_missing_values(data, tmp_path):
    path = tmp_path / "log.tsv"

    class Once(callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                logs["extra"] = [1, 2]

    fit(model(0.1), data, [Once(), callbacks.CSVLogger(path, separator="\t")], 2)
    rows = read_csv(path, delimiter="\t")
    assert rows[0] == ["epoch", "extra", "loss"]
    assert rows[1][1] == "[1, 2]" and rows[2][1] == "NA"
