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


if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    from gpucnn.kernels.cuda_set import simulate  # noqa: E402

    simulate.lock_shared_arrays()


@pytest.fixture
def rng():
    """A fresh generator per test, seeded from the test's name so failures reproduce."""
    import zlib

    name = os.environ.get("PYTEST_CURRENT_TEST", "gpucnn")
    return np.random.default_rng(zlib.crc32(name.encode()))


@pytest.fixture(scope="module")
def poisoned_small_launches():
    """The cuda set's launches for kernel tests: in the simulator the small tiles and blocks of
    ``simulate.SMALL`` (several tiles per grid, split-K, grid-stride loops, two-pass sums on
    small shapes); everywhere, outputs poisoned (NaN) before a kernel writes them."""
    import contextlib

    from gpucnn.kernels.cuda_set import _arrays, _launch, simulate as sim

    ctx = sim.small_launches() if _launch.launch_path() == "sim" else contextlib.nullcontext()
    with ctx:
        _arrays.POISON = True
        try:
            yield
        finally:
            _arrays.POISON = False


@pytest.fixture
def small_launches():
    """In the simulator, the cuda set's small tiles and blocks for the test (the simulator runs
    each CUDA thread as a Python thread); on a GPU, the real launches."""
    import contextlib

    from gpucnn.kernels.cuda_set import _launch, simulate as sim

    with sim.small_launches() if _launch.launch_path() == "sim" else contextlib.nullcontext():
        yield


@pytest.fixture
def cuda_backend(small_launches):
    """The cuda backend for the test, with ``small_launches``; the NumPy backend after it."""
    import gpucnn

    gpucnn.set_backend("cuda")
    try:
        yield
    finally:
        gpucnn.set_backend("numpy")


@pytest.fixture(scope="session")
def mnist_dir():
    """The shared MNIST test split's folder (GPUCNN_MNIST_DIR, absolute): the test skips when the
    variable is unset and fails when the folder lacks the split's two files."""
    from pathlib import Path

    folder = os.environ.get("GPUCNN_MNIST_DIR")
    if not folder:
        pytest.skip("GPUCNN_MNIST_DIR is not set: run `python -m gpucnn.datasets fetch mnist` and set "
                    "it to the folder printed (CI sets it to the shared MNIST test split)")
    folder = Path(folder).resolve()
    stems = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
    if not all((folder / s).is_file() for s in stems):     # set but wrong: a failure
        pytest.fail(f"GPUCNN_MNIST_DIR={folder} does not hold {stems[0]} and {stems[1]}")
    return folder


@pytest.fixture
def numpy_backend():
    """The NumPy backend and seed 0 for the test, the NumPy backend after it."""
    import gpucnn

    gpucnn.set_backend("numpy")
    gpucnn.manual_seed(0)
    yield
    gpucnn.set_backend("numpy")
