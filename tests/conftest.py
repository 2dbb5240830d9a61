"""Test-session setup.

Numba reads NUMBA_ENABLE_CUDASIM once, when it is first imported, so it is set here, before any
test module imports gpucnn or numba. With no GPU (CI, developer machines) every CUDA kernel then
runs in Numba's simulator on NumPy arrays. On a machine with a real GPU, set
GPUCNN_TEST_REAL_GPU=1 to run the same tests on the hardware instead.

The PTX compile test needs Numba's real compiler, which the simulator replaces; it runs in a
subprocess with the variable removed.
"""
import os

if os.environ.get("GPUCNN_TEST_REAL_GPU") != "1":
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
os.environ.pop("GPUCNN_BACKEND", None)  # tests choose their backend explicitly

import numpy as np  # noqa: E402
import pytest  # noqa: E402


def _lock_simulator_shared_arrays():
    """Numba's CUDA simulator runs a block's threads as Python threads and gives them one shared
    array per source line, stored by the first thread that asks, with an unlocked look-up then
    store: a thread switch between the two gives some threads a private "shared" array, and the
    kernel a wrong result (seen once in the whole suite, in gpucheck's first conv). The same
    allocation, done under a lock, so that simulated kernels are deterministic."""
    import sys
    import threading

    from numba.cuda.simulator import kernelapi
    from numba.np import numpy_support
    from numba.core import types

    original = kernelapi.FakeCUDAShared.array
    lock = threading.Lock()

    def array(self, shape, dtype, alignment=None):
        if shape == 0 or alignment is not None:       # dynamic shared memory, or an error
            return original(self, shape, dtype, alignment)
        frame = sys._getframe(1)
        caller = (frame.f_code.co_filename, frame.f_lineno)   # the key the simulator uses
        with lock:
            res = self._allocations.get(caller)
            if res is None:
                if isinstance(dtype, types.Type):
                    dtype = numpy_support.as_dtype(dtype)
                res = np.empty(shape, dtype)
                self._allocations[caller] = res
        return res

    kernelapi.FakeCUDAShared.array = array


if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    _lock_simulator_shared_arrays()


@pytest.fixture
def rng():
    """A fresh generator per test, seeded from the test's name so failures reproduce."""
    import zlib

    name = os.environ.get("PYTEST_CURRENT_TEST", "gpucnn")
    return np.random.default_rng(zlib.crc32(name.encode()))
