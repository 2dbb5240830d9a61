"""gpucnn.parallel: the step runners behind fit, and what layers and losses tell them; training
steps split over parts of the batch.

Layers say whether a training step may be split into parts of the batch by their ``per_sample``
attribute (no list of classes), losses by ``batch_mean``; ``runner_for`` picks the runner once
per fit; a runner refreshes its weights at each epoch; a call running on another thread keeps
fit from forking; the MPI runner's settings check names what differs.

Split steps (gpucnn.parallel: step, forked): on threads and on forked worker processes the loss
and gradients equal those of the whole step (dropout included), fit gives the same weights,
worker failures and a non-finite loss surface in the parent, and the workers follow a model
changed between epochs."""
import copy
import gc
import json
import os
import signal
import threading
import time
import warnings

import numpy as np
import pytest

import gpucnn
from gpucnn import callbacks, layers, losses, models, optimizers, parallel
from gpucnn.kernels import load_set, numpy_set
from gpucnn.models import NonFiniteLossError
from gpucnn.parallel import _calls, _worker, forked, local, ranks, workers
from gpucnn.parallel import step as _step

PROCESSES = forked.available(numpy_set)


@pytest.fixture(autouse=True)
def _split_everything(monkeypatch):
    """Two threads, and every batch big enough to split."""
    gpucnn.set_backend("numpy")
    monkeypatch.setattr(_step, "PROCESS_MIN_FLOPS", 0.0)
    monkeypatch.setattr(_step, "THREAD_MIN_FLOPS", 0.0)
    threads = numpy_set.get_num_threads()
    numpy_set.set_num_threads(2)
    yield
    numpy_set.set_num_threads(threads)


def split_net(dropout=0.3, seed=None):
    """The net the tests split and fit (no Dropout layer with ``dropout=0``)."""
    gpucnn.manual_seed(7)
    model = models.Sequential([
        layers.Input(shape=(10, 10, 2)),
        layers.Conv2D(5, 3, activation="tanh", name="conv"),
        layers.AveragePooling2D(2),
        layers.Conv2D(6, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(2),
        layers.Flatten(),
        layers.Dense(12, activation="relu", name="hidden"),
        *([layers.Dropout(dropout, seed=seed)] if dropout else []),
        layers.Dense(4, activation="softmax"),
    ])
    model.compile(optimizers.SGD(0.05, momentum=0.5), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def split_data(rng, n):
    return rng.standard_normal((n, 10, 10, 2)).astype(np.float32), rng.integers(0, 4, n)


def spy(monkeypatch, owner, name, calls):
    """``owner.name`` as it was, appending ``(name, arguments, result)`` to ``calls`` when it
    returns."""
    real = getattr(owner, name)

    def spied(*a, **k):
        out = real(*a, **k)
        calls.append((name, a, out))
        return out

    monkeypatch.setattr(owner, name, spied)
    return calls


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


def test_runner_for_picks_a_runner_once_per_fit(monkeypatch, rng):
    model = split_net(0)
    x, y = split_data(rng, 24)
    calls = spy(monkeypatch, parallel, "runner_for", [])
    model.fit(x, y, batch_size=8, epochs=3, verbose=0)
    picked = [c[2] for c in calls]
    assert len(picked) == 1 and type(picked[0]) is forked.Forked and picked[0]._closed
    hook = callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: None)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[hook])
    assert type(calls[-1][2]) is local.Whole               # batch hooks: no worker processes
    model.fit(x[:8], y[:8], batch_size=8, epochs=1, verbose=0)
    assert type(calls[-1][2]) is local.Whole               # one step an epoch
    model.release_workers()
    assert not forked.available(load_set("cuda"))          # device memory: no fork


@pytest.mark.parametrize("threads", [1, 2])
def test_a_layer_frozen_after_an_epoch_stays_put(threads, monkeypatch, rng):
    numpy_set.set_num_threads(threads)
    model = split_net(0)
    x, y = split_data(rng, 24)
    seen = {}
    calls = spy(monkeypatch, forked.WorkerSet, "__init__", [])
    spy(monkeypatch, forked.WorkerSet, "step", calls)

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
    if threads == 2:              # epochs 2 and 3 on a second set, forked for the change
        assert [c[0] for c in calls] == ["__init__"] + ["step"] * 3 + ["__init__"] + ["step"] * 6
        assert model._fit_workers.alive
    model.release_workers()


def test_the_forked_runner_runs_small_batches_whole(monkeypatch, rng):
    model = split_net(0)
    x, y = split_data(rng, 20)
    calls = spy(monkeypatch, local.Whole, "_whole", [])
    spy(monkeypatch, forked.WorkerSet, "step", calls)
    monkeypatch.setattr(_step, "PROCESS_MIN_FLOPS", 5.0 * _step.sample_flops(model))
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)     # 8, 8, 4 rows
    assert [c[0] for c in calls] == ["step", "step", "_whole"]
    model.release_workers()


def test_no_fork_while_another_thread_is_in_a_call(rng):
    model = split_net(0)
    x, y = split_data(rng, 24)
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
    want = split_net(0).fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0).history
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    assert model.history.history["loss"] == pytest.approx(want["loss"], rel=1e-5)
    assert model.__dict__.get("_fit_workers") is not None    # alone again: workers
    model.release_workers()


def test_fit_under_an_mpi_launcher_without_init_warns(monkeypatch, rng):
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setattr(ranks, "_warned", [])
    model = split_net(0)
    x, y = split_data(rng, 24)
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


def _in_child(fn):
    """The exit code of a forked child that runs ``fn()`` (0 when it returns true); None when
    it hangs for 30 s (it is killed)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = 0 if fn() else 3
        finally:
            os._exit(code)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


def test_a_forked_child_splits_steps_over_threads_of_its_own():
    # the kernel pool's threads stay in the parent: a child made by os.fork (a user's own, or
    # multiprocessing's) that splits a step over threads must not wait for them for ever
    assert numpy_set.data_parallel(lambda lo, hi: hi - lo, 10, 2) == [5, 5]    # pool started
    code = _in_child(lambda: numpy_set.data_parallel(lambda lo, hi: hi - lo, 10, 2) == [5, 5])
    assert code is not None, "the forked child hung on the parent's kernel threads"
    assert code == 0


# ================================================================ split steps
def _grads(model):
    return [None if t.grad is None else t.grad.data.copy() for t in model.trainable_weights]


def _reseed(model):
    """The same dropout keys for the next step: the global stream and each layer's counter."""
    gpucnn.manual_seed(3)
    for layer in model.layers:
        if isinstance(layer, layers.Dropout):
            layer._counter = 0


def _whole_step(model, x, y):
    _reseed(model)
    loss, out, lv = _step.forward_backward(model, x, y, True, model.trainable_weights, 1, True)
    return float(loss), out.copy(), _grads(model)


def _assert_same_step(got, want):
    assert got[0] == pytest.approx(want[0], rel=1e-5)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-6)
    for g, w in zip(got[2], want[2]):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("n", [2, 7, 16])
@pytest.mark.parametrize("seed", [None, 5])
def test_thread_split_equals_whole_step(rng, n, seed):
    model = split_net(seed=seed)
    x, y = split_data(rng, n)
    want = _whole_step(model, x, y)
    _reseed(model)
    loss, out, lv = _step.forward_backward(model, x, y, True, model.trainable_weights, 2, True)
    assert lv == float(loss)
    _assert_same_step((float(loss), out, _grads(model)), want)


@pytest.mark.skipif(not PROCESSES, reason="worker processes need Linux (fork)")
@pytest.mark.parametrize("seed", [None, 5])
def test_process_split_equals_whole_step(rng, seed):
    model = split_net(seed=seed)
    x, y = split_data(rng, 9)
    cases = [(x, y, None), (*split_data(rng, 5), None),   # a smaller batch, the same workers
             (x, y, np.array([7, 0, 3, 3, 8, 1, 5]))]       # rows gathered by each process
    procs = forked.start(model, model.trainable_weights, 9, x.shape[1:], x.dtype, (), y.dtype,
                         (4,), np.float32, True, True, 3)
    got, want = [], []
    try:
        assert len(procs.workers) == 2
        for xc, yc, rows in cases:
            picked = slice(None) if rows is None else rows
            want.append(_whole_step(model, xc[picked], yc[picked]))
            _reseed(model)
            loss, out, _ = procs.step(xc, yc, rows)
            got.append((float(loss), out, _grads(model)))
    finally:
        procs.close()
    assert procs.workers == []
    for g, w in zip(got, want):
        _assert_same_step(g, w)


def _fit_weights(threads):
    numpy_set.set_num_threads(threads)
    model = split_net()
    x, y = split_data(np.random.default_rng(1), 40)
    gpucnn.manual_seed(11)
    hist = model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    return model.get_weights(), hist.history


@pytest.mark.skipif(not PROCESSES, reason="worker processes need Linux (fork)")
def test_fit_on_processes_matches_fit_on_one_core(monkeypatch):
    calls = spy(monkeypatch, forked.WorkerSet, "step", [])
    split_w, split_h = _fit_weights(2)
    rows = [c[1][1].shape[0] if c[1][3] is None else len(c[1][3]) for c in calls]
    assert rows == [8] * 10                                 # every step ran on the workers
    whole_w, whole_h = _fit_weights(1)
    for a, b in zip(split_w, whole_w):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(split_h["loss"], whole_h["loss"], rtol=1e-5)
    assert split_h["accuracy"] == whole_h["accuracy"]


@pytest.mark.skipif(not PROCESSES, reason="worker processes need Linux (fork)")
def test_worker_failure_is_raised_in_the_parent_and_workers_end(rng, monkeypatch):
    parent = os.getpid()
    real = _step.run_part

    def failing(model, x, y, lo, hi, n, logits, keys):
        if os.getpid() != parent:
            raise ArithmeticError("boom in the worker")
        return real(model, x, y, lo, hi, n, logits, keys)

    monkeypatch.setattr(_step, "run_part", failing)
    model = split_net()
    before = model.get_weights()
    x, y = split_data(rng, 16)
    with pytest.raises(RuntimeError, match="(?s)worker process failed.*ArithmeticError: boom"):
        model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert "_fit_workers" not in model.__dict__
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)                   # failed at the first step


@pytest.mark.skipif(not PROCESSES, reason="worker processes need Linux (fork)")
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_non_finite_loss_on_processes_stops_before_the_update(rng):
    model = models.Sequential([layers.Input(shape=(10, 10, 2)), layers.Flatten(),
                               layers.Dense(3)])
    model.compile(optimizers.SGD(0.1), "mse")
    model.set_weights([np.full((200, 3), 1e30, np.float32), np.zeros(3, np.float32)])
    before = model.get_weights()
    x = np.abs(rng.standard_normal((16, 10, 10, 2))).astype(np.float32) + 1
    with pytest.raises(NonFiniteLossError, match="loss is inf at epoch 1/1, step 1/2"):
        model.fit(x, np.zeros((16, 3), np.float32), batch_size=8, verbose=0)
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)


class _Freeze(callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        self.model.layers[0].trainable = False


@pytest.mark.skipif(not PROCESSES, reason="worker processes need Linux (fork)")
def test_workers_follow_a_layer_frozen_between_epochs(rng, monkeypatch):
    model = split_net()
    x, y = split_data(rng, 32)
    started = spy(monkeypatch, forked.WorkerSet, "__init__", [])
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[_Freeze()])
    frozen = [w.copy() for w in model.layers[0].get_weights()]
    model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    assert len(started) == 2                      # one set of workers per fit call
    for a, b in zip(model.layers[0].get_weights(), frozen):
        np.testing.assert_array_equal(a, b)       # the frozen layer did not move in the workers


def test_steps_that_must_not_split_stay_whole(rng):
    model = split_net()
    assert _step.parts_for(numpy_set, _step.sample_flops(model), 8) == 2
    assert _step.parts_for(numpy_set, _step.sample_flops(model), 1) == 1
    custom = split_net()
    custom.compile("sgd", lambda t, p: (p * p).mean())        # not known to be a batch mean
    assert _step.sample_flops(custom) is None
    assert _step.parts_for(load_set("cuda"), 1e9, 64) == 1       # no split off the NumPy set


@pytest.mark.skipif(not PROCESSES, reason="worker processes need Linux (fork)")
def test_workers_outlive_fit_one_set_per_process(rng):
    x, y = split_data(rng, 32)
    a, b = split_net(), split_net()
    gpucnn.manual_seed(1)
    a.fit(x, y, batch_size=8, verbose=0)
    first = a._fit_workers
    pids = [w.pid for w in first.workers]
    assert first.alive and not any(workers._ended(p) for p in pids)
    a.fit(x, y, batch_size=8, verbose=0)
    assert a._fit_workers is first                     # the same model: the same workers
    b.fit(x, y, batch_size=8, verbose=0)
    assert not first.alive and all(workers._ended(p) for p in pids)      # one set at most
    # a, trained again after b took the workers: new ones, and the same weights as on one core
    a.compile(optimizers.SGD(0.05, momentum=0.5), "sparse_categorical_crossentropy",
              metrics=["accuracy"])
    start = a.get_weights()
    gpucnn.manual_seed(2)
    a.fit(x, y, batch_size=8, verbose=0)
    assert a._fit_workers is not first and a._fit_workers.alive
    c = split_net()
    c.set_weights(start)
    numpy_set.set_num_threads(1)
    gpucnn.manual_seed(2)
    c.fit(x, y, batch_size=8, verbose=0)
    numpy_set.set_num_threads(2)
    for p, q in zip(a.get_weights(), c.get_weights()):
        np.testing.assert_allclose(p, q, rtol=1e-4, atol=1e-5)
    live = [w.pid for w in a._fit_workers.workers]
    del a, first
    gc.collect()
    assert workers._pending                               # queued by the finalizer, no I/O
    forked.drain()                                       # (the next fit does this too)
    assert all(workers._ended(p) for p in live)           # gone with their model


def _trained_on_workers(rng):
    """``(x, y, model)``: a small model after one fit, its worker processes kept."""
    x, y = split_data(rng, 32)
    model = split_net()
    model.fit(x, y, batch_size=8, verbose=0)
    assert model._fit_workers.alive
    return x, y, model


def _cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not PROCESSES or not os.path.isdir("/proc/self"),
                    reason="worker processes need Linux (fork) and /proc")
def test_idle_workers_poll_briefly_then_sleep(rng):
    # between steps a worker polls for the next one (no wake-up latency), but only for
    # SPIN_NEXT seconds: kept between fit calls, it must not burn a core
    x, y, a = _trained_on_workers(rng)
    pid = a._fit_workers.workers[0].pid
    time.sleep(_worker.SPIN_NEXT + 0.1)
    c0 = _cpu_seconds(pid)
    time.sleep(0.5)
    assert _cpu_seconds(pid) - c0 < 0.05
    a._stop_workers()


@pytest.mark.skipif(not PROCESSES, reason="worker processes need Linux (fork)")
def test_a_fork_of_the_user_process_leaves_the_workers_alone(rng):
    # a user's own fork inherits the worker set (and its exit-time finalizer); when that child
    # ends it, or the child's copy of the model goes, the parent's workers must go on serving
    x, y, a = _trained_on_workers(rng)
    procs = a._fit_workers
    pids = [w.pid for w in procs.workers]

    def end_them():
        procs._finalizer()                     # what the child's exit would run
        procs.close()
        return True

    def train_alone():
        a.fit(x, y, batch_size=8, verbose=0)
        mine = a._fit_workers
        ok = mine is not procs and mine.alive and not set(w.pid for w in mine.workers) & set(pids)
        mine.close()
        return ok

    _in_child(end_them)
    assert not any(workers._ended(p) for p in pids)
    # a fork that trains the inherited model starts workers of its own, never the parent's
    assert _in_child(train_alone) == 0
    assert not any(workers._ended(p) for p in pids)
    a.fit(x, y, batch_size=8, verbose=0)                  # the same workers still answer
    assert a._fit_workers is procs and procs.alive


@pytest.mark.skipif(not PROCESSES, reason="worker processes need Linux (fork)")
def test_a_model_with_workers_deep_copies_and_releases_them(rng):
    x, y, a = _trained_on_workers(rng)
    procs = a._fit_workers
    b = copy.deepcopy(a)                                   # the copy gets no workers
    assert b.__dict__.get("_fit_workers") is None and procs.alive
    for p, q in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(p, q)
    b.fit(x, y, batch_size=8, verbose=0)                  # trains on workers of its own
    assert b._fit_workers is not procs
    pids = [w.pid for w in b._fit_workers.workers]
    b.release_workers()
    assert b.__dict__.get("_fit_workers") is None
    assert all(workers._ended(p) for p in pids)
    b.release_workers()                                    # twice is fine


@pytest.mark.skipif(not PROCESSES, reason="worker processes need Linux (fork)")
def test_a_worker_killed_while_idle_is_replaced(rng):
    x, y, a = _trained_on_workers(rng)
    first = a._fit_workers
    os.kill(first.workers[0].pid, signal.SIGKILL)
    time.sleep(0.2)
    a.fit(x, y, batch_size=8, verbose=0)                  # no broken pipe: new workers
    assert a._fit_workers is not first and a._fit_workers.alive
    a.release_workers()


@pytest.mark.skipif(not PROCESSES, reason="worker processes need Linux (fork)")
def test_workers_of_a_collected_model_end_when_the_next_fit_starts_workers(rng):
    x, y, a = _trained_on_workers(rng)
    live = [w.pid for w in a._fit_workers.workers]
    del a
    gc.collect()
    b = split_net()
    b.fit(x, y, batch_size=8, verbose=0)
    assert all(workers._ended(p) for p in live) and not workers._pending
    b.release_workers()
