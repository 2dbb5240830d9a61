"""Callbacks: EarlyStopping (patience, min_delta, mode, baseline, restore_best_weights),
ModelCheckpoint (every epoch, save_best_only, formatted paths), batch hooks and stop_training.

The monitored values are scripted: a callback placed first writes ``logs['score']`` from a list, so
each test knows exactly which epoch is best."""
import warnings

import numpy as np
import pytest

import gpucnn
from gpucnn import callbacks, layers, models, optimizers


@pytest.fixture(autouse=True)
def _numpy_backend():
    gpucnn.set_backend("numpy")
    gpucnn.manual_seed(0)


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


def model():
    m = models.Sequential([layers.Dense(4, activation="tanh", input_shape=(6,)), layers.Dense(2)])
    m.compile(optimizers.SGD(0.05), "mse")
    return m


def fit(m, data, cbs, epochs):
    return m.fit(*data, batch_size=8, epochs=epochs, callbacks=cbs, verbose=0)


def same(a, b):
    return all(np.array_equal(p, q) for p, q in zip(a, b))


def test_early_stopping_patience(data):
    script = Script([5, 4, 3, 3.5, 3.2, 3.1, 1, 0])
    es = callbacks.EarlyStopping(monitor="score", patience=2)
    h = fit(model(), data, [script, es], 8)
    assert h.epoch == [0, 1, 2, 3, 4]  # best at epoch 2, two epochs without improvement
    assert es.stopped_epoch == 4 and es.best == 3 and es.best_epoch == 2


def test_early_stopping_min_delta_and_max_mode(data):
    script = Script([0.50, 0.55, 0.56, 0.57, 0.58, 0.9])
    es = callbacks.EarlyStopping(monitor="score", mode="max", min_delta=0.02, patience=2)
    h = fit(model(), data, [script, es], 6)
    assert h.epoch == [0, 1, 2, 3]  # +0.05 counts; +0.01 and +0.02 (not above min_delta) do not
    assert es.best == 0.55
    auto = callbacks.EarlyStopping(monitor="val_accuracy")
    assert auto.mode == "max" and callbacks.EarlyStopping().mode == "min"


def test_early_stopping_baseline(data):
    """Improvements that do not beat the baseline do not reset the wait (Keras 3)."""
    values = [2.0, 1.5, 1.6, 1.7, 0.5]
    es = callbacks.EarlyStopping(monitor="score", baseline=1.0, patience=2)
    assert fit(model(), data, [Script(values), es], 5).epoch == [0, 1, 2]
    es = callbacks.EarlyStopping(monitor="score", patience=2)
    assert fit(model(), data, [Script(values), es], 5).epoch == [0, 1, 2, 3]


def test_restore_best_weights(data):
    script = Script([3.0, 1.0, 2.0, 2.5, 2.6, 0.1])
    es = callbacks.EarlyStopping(monitor="score", patience=2, restore_best_weights=True)
    m = model()
    h = fit(m, data, [script, es], 6)
    assert h.epoch == [0, 1, 2, 3]
    assert same(m.get_weights(), script.weights[1])
    assert not same(script.weights[3], script.weights[1])


def test_restore_best_weights_without_early_stop(data):
    script = Script([3.0, 1.0, 2.0])
    m = model()
    fit(m, data, [script, callbacks.EarlyStopping(monitor="score", patience=5,
                                                  restore_best_weights=True)], 3)
    assert same(m.get_weights(), script.weights[1])


def test_missing_monitor_warns_and_keeps_training(data):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        h = fit(model(), data, [callbacks.EarlyStopping(monitor="val_loss", patience=0)], 3)
    assert h.epoch == [0, 1, 2]
    assert any("'val_loss' is not in the logs" in str(x.message) for x in w)


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
