"""gpucnn.data: the batch iterator, its epoch plan and the chunks streaming groups batches in;
data larger than the device (``Feed``, the cuda set's ``streams`` capability) and the reads a
``fit`` makes of the device.

The cuda set runs in Numba's simulator; its ``streams`` engine is either the simulator's own
(``Host``: the device is the host) or the GPU engine (``Device``) over ``FakeCuPy``, a CuPy held
to the real one (``@mirrors``) whose copies on the copy stream run as late as CUDA allows: only
when an event recorded after them is waited for. A batch used before its chunk's copy was
waited for then gives wrong rows; a pinned buffer given to a copy again before the host waited
for the last copy out of it is an error.
"""
import importlib
import inspect
import io
import os
import sys
import types

import cupy
import numpy as np
import pytest

import gpucnn
from gpucnn import data, layers, models, optimizers
from gpucnn.kernels import has, load_set
from gpucnn.kernels.cuda_set import _launch

streams_mod = importlib.import_module("gpucnn.kernels.cuda_set.streams")  # the function shadows it

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _fakes import mirrors, real_parameters  # noqa: E402

SIM = _launch.launch_path() == "sim"


def test_bounds_cover_the_data_and_chunks_group_them():
    assert data.batch_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert data.batch_bounds(10, 4, drop_remainder=True) == [(0, 4), (4, 8)]
    assert data.chunks([(2, 5), (5, 8), (8, 11), (11, 12)], 6) == [[(2, 5), (5, 8)],
                                                                  [(8, 11), (11, 12)]]


def test_shuffled_batches_are_the_seeded_permutation():
    x = np.arange(30.0).reshape(10, 3)
    y = np.arange(10) * 7
    perm = np.random.default_rng(3).permutation(10)        # what seed=3 draws for epoch 1
    got = list(data.Batches(x, y, batch_size=4, seed=3))
    assert [len(xb) for xb, _ in got] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([xb for xb, _ in got]), x[perm])
    np.testing.assert_array_equal(np.concatenate([yb for _, yb in got]), y[perm])


def test_epochs_differ_and_every_sample_appears_once():
    x = np.arange(20.0)
    b = data.Batches(x, batch_size=6, seed=0)
    e1, e2 = np.concatenate(list(b)), np.concatenate(list(b))
    assert sorted(e1) == sorted(e2) == list(x)
    assert not np.array_equal(e1, e2)


def test_unshuffled_batches_are_views():
    x = np.arange(12.0).reshape(6, 2)
    xb, yb = next(iter(data.Batches(x, np.arange(6), batch_size=4, shuffle=False)))
    assert np.shares_memory(xb, x) and xb.shape == (4, 2)


def test_plan_keeps_host_arrays_unshuffled_with_the_epochs_order():
    x = np.random.default_rng(0).random((9, 2, 2), dtype=np.float32)
    xe, ye, order = data.Batches(x, np.arange(9), batch_size=4, seed=1).epoch_plan()
    assert xe is x and list(order) == list(np.random.default_rng(1).permutation(9))


def test_bad_arguments_name_the_iterator():
    with pytest.raises(ValueError, match="Batches: batch_size must be a positive int, got 0"):
        data.Batches(np.zeros(3), batch_size=0)
    with pytest.raises(ValueError, match="same length, got 3 and 2"):
        data.Batches(np.zeros(3), np.zeros(2))
    with pytest.raises(ValueError, match="empty"):
        data.Batches(np.zeros((0, 2)))


class FakeCuPy:
    """What the ``streams`` engine uses of CuPy, without a GPU (module docstring). ``reads``
    lists the arrays read back (``asnumpy``), ``host_waits`` counts ``Event.synchronize``;
    ``free`` is the device's free memory."""

    def __init__(self, free=1 << 40):
        self.reads, self.host_waits, self.free = [], 0, free
        inflight = []       # (stream, position, first byte, end) of host memory copies may read
        fake = self

        class Event:
            def __init__(self, stream, upto):
                self.stream, self.upto = stream, upto

            @mirrors(cupy.cuda.Event.synchronize)
            def synchronize(self):
                fake.host_waits += 1
                self.stream.run(self.upto)
                inflight[:] = [c for c in inflight if c[0] is not self.stream or c[1] >= self.upto]

        class Stream:
            @mirrors(cupy.cuda.Stream.__init__)
            def __init__(self, null=False, non_blocking=False, ptds=False, priority=None):
                self.pending, self.ran = [], 0

            def run(self, upto):
                while self.ran < upto:
                    self.pending[self.ran]()
                    self.ran += 1

            @mirrors(cupy.cuda.Stream.record)
            def record(self, event=None):
                return Event(self, len(self.pending))

            @mirrors(cupy.cuda.Stream.wait_event)
            def wait_event(self, event):
                event.stream.run(event.upto)   # the simulator's kernels run as they are launched

        class ndarray:
            @mirrors(cupy.ndarray.set)
            def set(self, arr, stream=None):    # the real method's checks, in its order
                if not isinstance(arr, np.ndarray):
                    raise TypeError("Only numpy.ndarray can be set to cupy.ndarray")
                if self.dtype != arr.dtype:
                    raise TypeError(f"{arr.dtype} array cannot be set to {self.dtype} array")
                if self.shape != arr.shape:
                    raise ValueError(f"Shape mismatch. Old shape: {self.shape}, new shape: "
                                     f"{arr.shape}")
                if not self.flags.c_contiguous:
                    raise RuntimeError("Cannot set to non-contiguous array")
                lo = arr.ctypes.data
                if any(c[2] < lo + arr.nbytes and lo < c[3] for c in inflight):
                    raise AssertionError("pinned memory written again while a copy the host has "
                                         "not waited for may still read it")
                inflight.append((stream, len(stream.pending), lo, lo + arr.nbytes))
                stream.pending.append(lambda: np.copyto(self, arr))

        class Pool:
            @mirrors(cupy.cuda.MemoryPool.free_bytes)
            def free_bytes(self):
                return 0

        @mirrors(cupy.cuda.runtime.memGetInfo)
        def memGetInfo():
            return fake.free, 80 << 30

        @mirrors(cupy.cuda.alloc_pinned_memory)
        def alloc_pinned_memory(size):
            return bytearray(size)

        @mirrors(cupy.empty)
        def empty(shape, dtype=float, order="C"):
            return np.full(shape, np.nan if np.dtype(dtype).kind == "f" else -7, dtype)

        @mirrors(cupy.asnumpy)
        def asnumpy(a, stream=None, order="C", out=None, *, blocking=True):
            fake.reads.append(a)
            return np.array(a)

        current = Stream()
        self.Event, self.Stream, self.ndarray, self.Pool = Event, Stream, ndarray, Pool
        self.functions = [memGetInfo, alloc_pinned_memory, empty, asnumpy]
        self.cuda = types.SimpleNamespace(
            runtime=types.SimpleNamespace(memGetInfo=memGetInfo), Stream=Stream,
            alloc_pinned_memory=alloc_pinned_memory,
            get_current_stream=mirrors(cupy.cuda.get_current_stream)(
                lambda device_id=-1: current))
        self.empty, self.asnumpy, self.get_default_memory_pool = empty, asnumpy, Pool


def test_the_fake_takes_the_real_parameter_names():
    fake = FakeCuPy()
    fns = fake.functions + [fake.cuda.get_current_stream] + [
        f for c in (fake.Event, fake.Stream, fake.ndarray, fake.Pool) for f in vars(c).values()
        if hasattr(f, "mirrors")]
    assert len(fns) == 11
    for f in fns:
        got = [p for p in inspect.signature(f.__wrapped__).parameters if p != "self"]
        assert got == [n for n, _ in real_parameters(f.mirrors)], f.__qualname__


@pytest.fixture(autouse=True)
def _no_cap():
    yield
    data.set_data_memory_limit(None)


@pytest.fixture
def gpu_engine(cuda_backend, monkeypatch):
    """The GPU engine: over ``FakeCuPy`` in the simulator (returned), CuPy's own on a GPU."""
    if SIM:
        fake = FakeCuPy()
        monkeypatch.setattr(streams_mod, "_engine", streams_mod.Device(fake))
        return fake
    return None


@pytest.fixture
def fake_gpu(gpu_engine):
    """``FakeCuPy`` under the GPU engine: its free memory set, its reads counted."""
    if gpu_engine is None:
        pytest.skip("the fake stands in for a GPU; on one, the tests of the batches and the "
                    "weights run the real engine")
    return gpu_engine


def arrays(rng, n):
    return rng.standard_normal((n, 6)).astype(np.float32), rng.integers(0, 3, n)


def row_bytes(x, y):
    return x.dtype.itemsize * x.shape[1] + y.dtype.itemsize


@pytest.mark.parametrize("engine", ["set's own", "device"])
@pytest.mark.parametrize("slots", [1, 2])
def test_streamed_batches_are_the_rows_of_the_epochs_order(request, cuda_backend, rng, engine,
                                                            slots):
    if engine == "device":
        request.getfixturevalue("gpu_engine")
    host = gpucnn.backend.kernels().to_host
    x, y = arrays(rng, 23)
    # room for `slots` chunks of two batches of 4, not for the data: 6 chunks, the last short
    data.set_data_memory_limit(slots * 8 * row_bytes(x, y))
    feed = data.Feed("fit", x, y, 4)
    assert feed.streamed and feed.used == slots * 8 * row_bytes(x, y)
    batches = data.Batches(feed.x, feed.y, 4, seed=7)
    perm_gen = np.random.default_rng(7)
    for _ in range(2):                          # two epochs: two orders, the buffers reused
        perm = perm_gen.permutation(23)
        seen = 0                                # a batch is read before the next is asked
        for (a, b), (xb, yb) in zip(batches.bounds, feed.batches(batches.bounds,
                                                                 *batches.epoch_plan())):
            np.testing.assert_array_equal(host(xb), x[perm[a:b]])
            np.testing.assert_array_equal(host(yb), y[perm[a:b]])
            seen += 1
        assert seen == 6
    xs = [np.array(host(xb)) for xb, _ in feed.batches([(a + 1, b + 1) for a, b in
                                                              data.batch_bounds(22, 4)])]
    np.testing.assert_array_equal(np.concatenate(xs), x[1:])     # unshuffled, from row 1


def tiny():
    gpucnn.manual_seed(3)
    model = models.Sequential([layers.Dense(4, activation="relu", input_shape=(6,)),
                               layers.Dense(3, activation="softmax")])
    model.compile(optimizers.SGD(0.1, momentum=0.5), "sparse_categorical_crossentropy",
                  ["accuracy"])
    return model


def test_a_capped_fit_trains_the_same_weights_as_the_whole_data(gpu_engine, rng):
    x, y = arrays(rng, 13)
    xv, yv = arrays(rng, 5)
    whole = tiny()
    h1 = whole.fit(x, y, batch_size=3, epochs=2, verbose=0, validation_data=(xv, yv))
    # the training data: two buffers of one batch; the validation data what is left, one batch
    data.set_data_memory_limit(9 * row_bytes(x, y))
    streamed = tiny()
    h2 = streamed.fit(x, y, batch_size=3, epochs=2, verbose=0, validation_data=(xv, yv))
    for a, b in zip(whole.get_weights(), streamed.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert h1.history == h2.history
    np.testing.assert_array_equal(whole.predict(x, batch_size=3, verbose=0),
                                  streamed.predict(x, batch_size=3, verbose=0))


def test_data_above_half_the_free_device_memory_is_streamed(fake_gpu, rng):
    x, y = arrays(rng, 40)
    fake_gpu.free = 2 * 40 * row_bytes(x, y) + 1          # half of it: the data, once
    assert not data.Feed("evaluate", x, y, 8).streamed
    assert data.Feed("fit", x, y, 8, copies=2).streamed   # a shuffled copy does not fit
    fake_gpu.free -= 2
    assert data.Feed("evaluate", x, y, 8).streamed


@pytest.mark.parametrize("op", ["fit", "evaluate", "predict"])
def test_a_batch_that_cannot_fit_is_an_error_with_the_bytes(cuda_backend, rng, op):
    x, y = arrays(rng, 10)
    model = tiny()
    need = 4 * (row_bytes(x, y) if op != "predict" else x.dtype.itemsize * 6)
    data.set_data_memory_limit(need - 1)
    call = {"fit": lambda: model.fit(x, y, batch_size=4, verbose=0),
            "evaluate": lambda: model.evaluate(x, y, batch_size=4, verbose=0),
            "predict": lambda: model.predict(x, batch_size=4, verbose=0)}[op]
    with pytest.raises(MemoryError, match=rf"^{op}: one batch of 4 samples needs {need:,} bytes "
                                          rf".* may use {need - 1:,} bytes \(set_data_memory"):
        call()
    data.set_data_memory_limit(need)                 # one batch: streamed, no copy ahead
    call()


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("verbose", [0, 1])
def test_a_fit_reads_the_device_per_epoch_and_bar_redraw_not_per_step(fake_gpu, rng,
                                                                      monkeypatch, verbose):
    """Every read goes through the engine's ``read`` (the set's ``to_host``: ``cupy.asnumpy``
    on a GPU). A redraw of a terminal's bar reads the loss and the accuracy. The optimizer's
    refusal flag is told apart: in the simulator it is a NumPy array, which
    ``Optimizer._flag_on_host`` takes for host memory and reads every step; on a GPU it is read
    with the loss."""
    out = Terminal()
    monkeypatch.setattr(sys, "stdout", out)
    counts = []
    for n in (12, 24):
        x, y = arrays(rng, n)
        data.set_data_memory_limit(6 * row_bytes(x, y))
        model = tiny()
        fake_gpu.reads.clear()
        fake_gpu.host_waits = 0
        out.seek(0)
        out.truncate()
        model.fit(x, y, batch_size=3, epochs=2, verbose=verbose)
        redraws = out.getvalue().count("\r") - 2 * verbose     # less each epoch's final line
        assert redraws >= 2 * verbose                             # the last step redraws
        flag = model.optimizer._flag
        counts.append(sum(a is not flag for a in fake_gpu.reads) - 2 * redraws)
        # host waits (chunks of one batch here): before a pinned buffer is rewritten, and one
        # per buffer at the end of each epoch
        assert fake_gpu.host_waits <= 2 * (n // 3 + 2)
    assert counts[0] == counts[1]


def test_the_numpy_set_has_no_streams_and_ignores_the_cap(rng, numpy_backend):
    assert not has(load_set("numpy"), "streams") and has(load_set("cuda"), "streams")
    x, y = arrays(rng, 6)
    data.set_data_memory_limit(1)
    feed = data.Feed("fit", x, y, 2)
    assert not feed.streamed and feed.x is x


def test_the_cap_from_the_environment(monkeypatch):
    monkeypatch.setenv("GPUCNN_DATA_MEMORY", "3M")
    assert data.data_memory_limit() == (3 << 20, "GPUCNN_DATA_MEMORY")
    monkeypatch.setenv("GPUCNN_DATA_MEMORY", "1.5G")
    with pytest.raises(ValueError, match="GPUCNN_DATA_MEMORY: expected bytes .* got '1.5G'"):
        data.data_memory_limit()
    data.set_data_memory_limit(5)
    assert data.data_memory_limit() == (5, "set_data_memory_limit")
    with pytest.raises(ValueError, match=r"set_data_memory_limit: expected .* got -1"):
        data.set_data_memory_limit(-1)
