"""gpucnn.parallel: the step runners behind fit, and what layers and losses tell them.

Layers say whether a training step may be split into parts of the batch by their ``per_sample``
attribute (no list of classes), losses by ``batch_mean``; ``runner_for`` picks the runner once
per fit; a runner refreshes its weights at each epoch; a call running on another thread keeps
fit from forking; the MPI runner's settings check names what differs."""
import json
import threading
import warnings

import numpy as np
import pytest

import gpucnn
from gpucnn import callbacks, layers, losses, models, optimizers, parallel
from gpucnn.kernels import load_set, numpy_set
from gpucnn.parallel import _calls, forked, local, ranks
from gpucnn.parallel import step as _step


@pytest.fixture(autouse=True)
def _numpy_two_threads(monkeypatch):
    gpucnn.set_backend("numpy")
    monkeypatch.setattr(_step, "PROCESS_MIN_FLOPS", 0.0)
    threads = numpy_set.get_num_threads()
    numpy_set.set_num_threads(2)
    yield
    numpy_set.set_num_threads(threads)


def net(seed=3):
    gpucnn.manual_seed(seed)
    model = models.Sequential([
        layers.Input(shape=(8, 8, 1)),
        layers.Conv2D(3, 3, activation="relu", name="conv"),
        layers.MaxPooling2D(2),
        layers.Flatten(),
        layers.Dense(6, activation="tanh", name="hidden"),
        layers.Dense(3, activation="softmax", name="out"),
    ])
    model.compile(optimizers.SGD(0.1), "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def data(n=24, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 8, 8, 1)).astype(np.float32), rng.integers(0, 3, n)


@pytest.mark.parametrize("layer, expected", [
    (layers.Conv2D(2, 3, activation="relu"), True),
    (layers.Conv2DTranspose(2, 3, activation="sigmoid"), True),
    (layers.Dense(2, activation="softmax"), True),
    (layers.Dense(2, activation=lambda t: t - t.mean()), False),   # a function of its own
    (layers.Activation("tanh"), True),
    (layers.Flatten(), True), (layers.Reshape((4,)), True), (layers.Dropout(0.5), True),
    (layers.MaxPooling2D(2), True), (layers.AveragePooling2D(2), True),
])
def test_layers_say_whether_they_are_per_sample(layer, expected):
    assert layer.per_sample is expected


def test_a_layer_of_your_own_is_split_when_it_says_so():
    class Scale(layers.Layer):
        def compute_output_shape(self, input_shape):
            return input_shape

        def call(self, x, training=False):
            return x * 2.0

    class RowScale(Scale):
        per_sample = True                      # no class list: the attribute decides

    for cls, splits in ((Scale, False), (RowScale, True)):
        model = models.Sequential([layers.Input(shape=(4,)), cls(), layers.Dense(2)])
        model.compile("sgd", "mse")
        assert _step.sample_flops(model) == (2.0 * 4 * 2 if splits else None), cls.__name__

    class Chained(models.Sequential):
        def call(self, x, training=False):            # no longer the plain chain
            return super().call(x, training) * 1.0

    odd = Chained([layers.Input(shape=(4,)), layers.Dense(2)])
    odd.compile("sgd", "mse")
    assert not odd.per_sample and _step.sample_flops(odd) is None


def test_losses_say_whether_they_are_batch_means():
    for name in ("sparse_categorical_crossentropy", "categorical_crossentropy",
                 "binary_crossentropy", "mse", "mae"):
        assert losses.get(name).batch_mean, name
    assert not losses.get(lambda t, p: (p * p).sum()).batch_mean


def test_nested_sequential_keys_and_flops():
    inner = models.Sequential([layers.Dense(4, activation="relu"), layers.Dropout(0.5, seed=3)])
    model = models.Sequential([layers.Input(shape=(5,)), inner, layers.Dropout(0.2),
                               layers.Dense(2)])
    model.compile("sgd", "mse")
    assert model.per_sample
    assert _step.sample_flops(model) == 2.0 * (5 * 4) + 2.0 * (4 * 2)
    gpucnn.manual_seed(9)
    keys = model._step_keys()          # the seeded layer's counter, then the global stream
    assert keys[0] == 0 and isinstance(keys[1], tuple) and len(keys) == 2
    assert model._step_keys()[0] == 1


def test_runner_for_picks_a_runner_once_per_fit(monkeypatch):
    model = net()
    x, y = data()
    picked = []
    real = parallel.runner_for

    def spy(*a, **k):
        picked.append(real(*a, **k))
        return picked[-1]

    monkeypatch.setattr(parallel, "runner_for", spy)
    model.fit(x, y, batch_size=8, epochs=3, verbose=0)
    assert len(picked) == 1 and type(picked[0]) is forked.Forked and picked[0]._closed
    hook = callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: None)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[hook])
    assert type(picked[-1]) is local.Whole                 # batch hooks: no worker processes
    model.fit(x[:8], y[:8], batch_size=8, epochs=1, verbose=0)
    assert type(picked[-1]) is local.Whole                 # one step an epoch
    model.release_workers()
    assert not forked.available(load_set("cuda"))          # device memory: no fork


@pytest.mark.parametrize("threads", [1, 2])
def test_a_layer_frozen_after_an_epoch_stays_put(threads):
    numpy_set.set_num_threads(threads)
    model = net()
    x, y = data()
    seen = {}

    def freeze(epoch, logs):
        if epoch == 0:
            model.get_layer("conv").trainable = False
            seen["conv"] = [w.copy() for w in model.get_layer("conv").get_weights()]
            seen["hidden"] = model.get_layer("hidden").get_weights()[0].copy()

    model.fit(x, y, batch_size=8, epochs=3, verbose=0,
              callbacks=[callbacks.LambdaCallback(on_epoch_end=freeze)])
    for a, b in zip(model.get_layer("conv").get_weights(), seen["conv"]):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(model.get_layer("hidden").get_weights()[0], seen["hidden"])
    model.release_workers()


def test_the_forked_runner_runs_small_batches_whole(monkeypatch):
    model = net()
    x, y = data(20)
    whole, split = [], []
    real_whole, real_set = local.Whole._whole, forked.WorkerSet.step
    monkeypatch.setattr(local.Whole, "_whole",
                        lambda self, *a: whole.append(1) or real_whole(self, *a))
    monkeypatch.setattr(forked.WorkerSet, "step",
                        lambda self, *a: split.append(1) or real_set(self, *a))
    monkeypatch.setattr(_step, "PROCESS_MIN_FLOPS", 5.0 * _step.sample_flops(model))
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)     # 8, 8, 4 rows
    assert split == [1, 1] and whole == [1]
    model.release_workers()


def test_no_fork_while_another_thread_is_in_a_call():
    model = net()
    x, y = data()
    inside, leave = threading.Event(), threading.Event()

    def other():
        with parallel.session(numpy_set):
            inside.set()
            leave.wait(30)

    t = threading.Thread(target=other)
    t.start()
    try:
        assert inside.wait(30)
        assert _calls.others() == 1
        runner = parallel.runner_for(model, numpy_set, parallel.FitCall(
            logits=True, steps=3, largest=8, x=x, y=y))
        assert type(runner) is forked.Forked and runner.procs is None     # runs whole
        runner.close()
    finally:
        leave.set()
        t.join(30)
    assert _calls.others() == 0
    want = net().fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0).history
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    assert model.history.history["loss"] == pytest.approx(want["loss"], rel=1e-5)
    assert model.__dict__.get("_fit_workers") is not None    # alone again: workers
    model.release_workers()


def test_fit_under_an_mpi_launcher_without_init_warns(monkeypatch):
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setattr(ranks, "_warned", [])
    model = net()
    x, y = data()
    with pytest.warns(RuntimeWarning, match="one of 2 started by an MPI launcher.*"
                                            "gpucnn.distributed.init"):
        model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.fit(x, y, batch_size=8, epochs=1, verbose=0)      # once per process
    model.release_workers()


def test_without_ranks_a_process_is_its_own_main():
    assert parallel.group() is None and parallel.is_main()
    assert parallel.any_rank(True, "x") is True and parallel.any_rank(False, "x") is False


@pytest.mark.parametrize("n, size", [(7, 2), (1, 2), (33, 4), (8, 3)])
def test_shares_are_contiguous_and_even(n, size):
    bounds = [ranks.share(n, r, size) for r in range(size)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    sizes = [hi - lo for lo, hi in bounds]
    assert max(sizes) - min(sizes) <= 1


class _TwoRanks:
    """Rank 0 of a job of two whose other rank holds ``peer`` (its settings)."""

    rank, size = 0, 2

    def __init__(self, peer):
        self.peer = json.dumps(peer, sort_keys=True, default=str).encode()

    def allreduce_host_(self, a, what):
        if a.dtype == np.int64:                            # the sizes
            a[1] += len(self.peer)
        else:                                              # the bytes, the peer's at the end
            a[len(a) - len(self.peer):] += np.frombuffer(self.peer, np.uint8)


def test_the_settings_check_names_what_differs():
    mine = {"batch_size": 32, "epochs": 2, "x": [100, [8, 8, 1], "float32"]}
    ranks.check_settings(_TwoRanks(dict(mine)), "fit", mine)          # the same: no error
    other = dict(mine, batch_size=16, x=[99, [8, 8, 1], "float32"])
    with pytest.raises(ValueError) as e:
        ranks.check_settings(_TwoRanks(other), "fit", mine)
    text = str(e.value)
    assert text.startswith("fit: the 2 ranks were called with different settings")
    assert "batch_size: rank 0 has 32, rank 1 has 16" in text
    assert "x: rank 0 has [100, [8, 8, 1], 'float32'], rank 1 has [99, [8, 8, 1]" in text
    assert "epochs" not in text


def test_workers_are_replaced_when_an_epoch_callback_freezes_a_layer(monkeypatch):
    model = net()
    x, y = data()
    made, split = [], []
    real_init, real_step = forked.WorkerSet.__init__, forked.WorkerSet.step
    monkeypatch.setattr(forked.WorkerSet, "__init__",
                        lambda self, *a: made.append(1) or real_init(self, *a))
    monkeypatch.setattr(forked.WorkerSet, "step",
                        lambda self, *a: split.append(len(made)) or real_step(self, *a))

    def freeze(epoch, logs):
        if epoch == 0:
            model.get_layer("conv").trainable = False

    model.fit(x, y, batch_size=8, epochs=2, verbose=0,
              callbacks=[callbacks.LambdaCallback(on_epoch_end=freeze)])
    assert split == [1, 1, 1, 2, 2, 2]          # epoch 2 on a second set, forked for the change
    assert model._fit_workers.alive
    model.release_workers()


def test_a_forked_child_splits_steps_over_threads_of_its_own():
    # the kernel pool's threads stay in the parent: a child made by os.fork (a user's own, or
    # multiprocessing's) that splits a step over threads must not wait for them for ever
    import os
    import signal
    import time

    assert numpy_set.data_parallel(lambda lo, hi: hi - lo, 10, 2) == [5, 5]    # pool started
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = 0 if numpy_set.data_parallel(lambda lo, hi: hi - lo, 10, 2) == [5, 5] else 2
        finally:
            os._exit(code)
    deadline = time.monotonic() + 30
    done = 0
    while not done and time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        time.sleep(0.01)
    if not done:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung on the parent's kernel threads")
    assert os.waitstatus_to_exitcode(status) == 0
