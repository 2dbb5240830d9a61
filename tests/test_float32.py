"""Float32 end to end: no float64 array appears in a LeNet-5 training step on the NumPy backend.

An accidental upcast (a float64 constant array, a NumPy float64 scalar in an in-place-less
expression, a float64 temporary in a kernel) doubles the cost of everything downstream without
changing any result enough to notice. The watcher traces every Python function that runs during
the step, on every thread, and at each return looks at the return value and at every local
variable: an ndarray of dtype float64 anywhere is reported with the function and variable that
held it. Arrays of work have at least one axis; 0-d values are left out (the epoch's running
metric totals are host scalars, and any upcast they caused in real work would show up there).
The watcher checks itself first on code that does upcast.
"""
import sys
import threading

import numpy as np
import pytest

from gpucnn import zoo, optimizers
from gpucnn.kernels import numpy_set
from gpucnn.parallel import step as _step


class Float64Watcher:
    """Context manager recording float64 arrays held by any Python frame that returns."""

    def __init__(self):
        self.found = []

    def _check(self, frame, name, value):
        if isinstance(value, np.ndarray) and value.ndim and value.dtype == np.float64:
            code = frame.f_code
            self.found.append(f"{code.co_filename}:{code.co_firstlineno} {code.co_name}: "
                              f"{name} {getattr(value, 'shape', ())}")
        elif isinstance(value, (tuple, list)) and len(value) < 16:
            for i, v in enumerate(value):
                if isinstance(v, np.ndarray):
                    self._check(frame, f"{name}[{i}]", v)

    def _trace(self, frame, event, arg):
        if event == "return":
            self._check(frame, "return value", arg)
            for name, value in frame.f_locals.items():
                self._check(frame, name, value)
        return self._trace

    def __enter__(self):
        self.found = []
        threading.settrace(self._trace)
        sys.settrace(self._trace)
        return self

    def __exit__(self, *exc):
        sys.settrace(None)
        threading.settrace(None)
        return False


def _upcasting_kernel(x):
    scale = np.ones(x.shape[-1])                 # float64 by default: the bug this test catches
    return x * scale


def test_the_watcher_catches_an_upcast():
    x = np.ones((2, 3), np.float32)
    with Float64Watcher() as w:
        y = _upcasting_kernel(x)
    assert y.dtype == np.float64
    assert any("_upcasting_kernel: scale" in f for f in w.found)
    assert any("_upcasting_kernel: return value" in f for f in w.found)
    with Float64Watcher() as w:
        (x * np.float32(2)).sum()
    assert w.found == []


def _lenet(rng, n):
    model = zoo.lenet5()
    model.compile(optimizer=optimizers.SGD(learning_rate=0.01),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    x = rng.random((n, 32, 32, 1), dtype=np.float32)
    y = rng.integers(0, 10, n)
    return model, x, y


@pytest.mark.parametrize("threads,processes", [(1, False), (2, False), (2, True)],
                         ids=["one-thread", "two-threads", "worker-processes"])
def test_lenet5_training_step_stays_float32(rng, threads, processes, monkeypatch, numpy_backend):
    """Whole steps on one thread, steps split over two threads (the split the worker processes
    also run, part by part), and on worker processes: their buffers and the arrays the parent
    builds from them."""
    from gpucnn.parallel import forked

    if processes and not forked.available(numpy_set):
        pytest.skip("worker processes need Linux (fork)")
    model, x, y = _lenet(rng, 16)
    if processes:
        monkeypatch.setattr(_step, "PROCESS_MIN_FLOPS", 0.0)
    else:
        monkeypatch.setattr(_step, "THREAD_MIN_FLOPS", 0.0)
        monkeypatch.setattr(_step, "PROCESS_MIN_FLOPS", float("inf"))   # keep steps traceable
    with numpy_set.num_threads(threads):
        model.fit(x[:8], y[:8], batch_size=8, epochs=1, verbose=0)        # build, warm up
        with Float64Watcher() as w:
            model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert w.found == []
    assert all(t.dtype == np.float32 for t in model.weights)
