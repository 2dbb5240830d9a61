"""Every fake of CuPy, NCCL and the driver in the tests, held to the real installed library.

CuPy and NCCL install and import without a GPU (the ``test`` extra brings ``cupy-cuda12x`` and
``nvidia-nccl-cu12``): each fake method that stands in for a real one (``_fakes.mirrors``) must
exist there with the same parameter names; the argument rules the fakes enforce must be the
real ones (the real functions are called with what gpucnn passes and with what they refuse);
and what gpucnn relies on of the real objects (a graph with no ``__dict__``, an id of 128
bytes) is checked on them. These tests fail, never skip, when the libraries are missing."""
import gc
import inspect
import os
import sys
import weakref

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _fakes  # noqa: E402

import cupy  # noqa: E402  (a failure here is a failure of the test run: the test extra has it)
from cupy.cuda import nccl  # noqa: E402


def _fake_classes():
    from test_raw_launch import FakeCuPy

    cap = _fakes.capture_cupy([])
    return [_fakes.FakeComm, cap.Stream, cap.Graph, FakeCuPy.Module, FakeCuPy.Driver,
            FakeCuPy.Runtime, FakeCuPy]


@pytest.mark.parametrize("cls", _fake_classes(), ids=lambda c: c.__qualname__)
def test_each_mirrored_method_takes_the_real_ones_parameter_names(cls):
    methods = _fakes.mirrored_methods(cls)
    assert methods, f"{cls.__qualname__} mirrors nothing of the real library"
    for name, real in methods.items():
        fake = [p for p in inspect.signature(vars(cls)[name].__wrapped__).parameters
                if p != "self"]
        want = [n for n, _ in _fakes.real_parameters(real)]
        assert fake == want, f"{cls.__qualname__}.{name}{tuple(fake)} against the real {want}"


def test_fake_gpu_has_every_method_of_the_cuda_sets_devices_with_the_same_parameters():
    from gpucnn.kernels.cuda_set._devices import Devices

    FakeGpu = _fakes.FakeGpu
    for name, real in vars(Devices).items():
        if name.startswith("_") or not callable(real):
            continue
        assert hasattr(FakeGpu, name), f"FakeGpu lacks {name}"
        assert (list(inspect.signature(getattr(FakeGpu, name)).parameters)
                == list(inspect.signature(real).parameters)), name


def test_the_nccl_fake_uses_the_real_ids_version_and_constants():
    fake = _fakes.FakeNccl()
    uid = fake.get_unique_id()
    assert type(uid) is bytes and len(uid) == 128          # CuPy 14: bytes, not a tuple
    assert fake.get_version() == nccl.get_version() >= 20000
    for name in ("NCCL_FLOAT32", "NCCL_FLOAT64", "NCCL_SUM"):
        assert getattr(fake, name) == getattr(nccl, name)


@pytest.mark.parametrize("bad,error", [
    (tuple(range(128)), TypeError),          # what gpucnn passed before CuPy 14
    (b"x" * 10, ValueError),
    (bytearray(128), TypeError),
])
def test_the_fake_communicator_refuses_what_the_real_one_refuses(bad, error):
    with pytest.raises(error) as real:
        nccl.NcclCommunicator(2, bad, 0)
    with pytest.raises(error) as fake:
        _fakes.FakeNccl().NcclCommunicator(2, bad, 0)
    if error is TypeError:
        assert "commId" in str(real.value) and "commId" in str(fake.value)


def test_the_real_communicator_accepts_the_arguments_gpucnn_passes():
    """Past its argument checks the real constructor needs a GPU: the error it gives then is
    NCCL's or CUDA's, never a TypeError or ValueError about the arguments."""
    uid = np.frombuffer(nccl.get_unique_id(), np.uint8).copy()     # as NcclSum broadcasts it
    with pytest.raises(Exception) as e:
        nccl.NcclCommunicator(2, uid.tobytes(), 0)
    assert not isinstance(e.value, (TypeError, ValueError)), e.value
    _fakes.FakeNccl().NcclCommunicator(2, uid.tobytes(), 0)


def test_mirrored_calls_are_checked_against_the_real_c_types():
    comm = _fakes.FakeNccl().NcclCommunicator(1, nccl.get_unique_id(), 0)
    with pytest.raises(TypeError):
        comm.allReduce(1.5, 1.5, 3, nccl.NCCL_FLOAT32, nccl.NCCL_SUM, 0)
    with pytest.raises(TypeError):
        _fakes.FakeNccl().NcclCommunicator("2", nccl.get_unique_id(), 0)


def test_a_cupy_graph_takes_no_attributes():
    """What the graph engine must live with: ``Graph`` has no ``__dict__`` (nothing can be hung
    on it, the fake's graph neither), so the engine keeps the graph's pool beside it."""
    from cupy.cuda import graph

    assert graph.Graph.__dictoffset__ == 0
    g = graph.Graph.__new__(graph.Graph)
    with pytest.raises(AttributeError):
        g._gpucnn_pool = object()
    fake = _fakes.capture_cupy([]).Stream().end_capture()
    with pytest.raises(AttributeError):
        fake._gpucnn_pool = object()


def test_a_real_capture_keeps_its_memory_pool_as_long_as_the_graph():
    """The ``graphs`` capability on CuPy's real pool, allocator context and graph class (only the
    stream is faked): the capture succeeds (no attribute hung on the graph) and the pool lives
    exactly as long as what the capture returned."""
    from gpucnn.kernels.cuda_set import graphs

    launched = []
    cap = _fakes.capture_cupy(launched)
    engine = graphs.Device(cap)
    captured, out = engine.capture(lambda: ("loss", "grads"))
    assert out == ("loss", "grads")
    assert isinstance(captured.graph, cupy.cuda.graph.Graph)
    pool = weakref.ref(captured.pool)
    gc.collect()
    assert isinstance(pool(), cupy.cuda.MemoryPool)
    engine.launch(captured)
    assert len(launched) == 1
    del captured
    gc.collect()
    assert pool() is None


def test_the_raw_launch_fakes_stand_for_the_real_driver_and_runtime():
    from cupy.cuda import driver, function, runtime

    from test_raw_launch import FakeCuPy

    assert _fakes.mirrored_methods(FakeCuPy.Driver)["launchKernel"] is driver.launchKernel
    assert _fakes.mirrored_methods(FakeCuPy.Module)["load"] is function.Module.load
    assert set(_fakes.mirrored_methods(FakeCuPy.Runtime)) == {"getDevice", "getDeviceProperties"}
    assert runtime.getDevice and runtime.getDeviceProperties
