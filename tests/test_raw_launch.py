"""The raw launch path on the CPU: a fake CuPy records what the cuda set loads and launches, and
a fake compiler stands in for Numba's (tests/test_compile.py checks the real cubins and that the
flattened arguments are Numba's). Covered here: the kernel cache (stored once, read back by the
next process, corrupt or foreign entries rebuilt, an unwritable folder tolerated), the launch
itself, the fallback to Numba's launcher (an error in strict mode) and the backend probe."""
import ctypes
import os
import struct
import subprocess
import sys
import types
import warnings

import numpy as np
import pytest

from gpucnn.kernels.cuda_set import _abi, _cache, _launch, _probe, _registry, _runtime, activation

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _fakes  # noqa: E402
import cupy  # noqa: E402  (real: the fakes mirror it)
from cupy.cuda import driver, function, runtime  # noqa: E402


class FakeArray:
    """A device array of the fake CuPy: a NumPy array and a made-up device pointer."""

    _next = 0x7F00_0000_0000

    def __init__(self, a):
        self.a = np.ascontiguousarray(a)
        FakeArray._next += 1 << 20
        self.data = type("Ptr", (), {"ptr": FakeArray._next})()

    def __getattr__(self, name):
        return getattr(self.a, name)


class FakeCuPy:
    """Records module loads and ``cuLaunchKernel`` calls; a launch reads the parameter buffer
    the kernel's pointer array points at (``slots`` 8-byte values) as the driver would. Its
    module, driver and runtime methods mirror CuPy's (tests/test_fakes.py), as do its array
    transfers (for the probe: the arrays stay as they are)."""

    ndarray = FakeArray

    @_fakes.mirrors(cupy.asarray)
    def asarray(self, a, dtype=None, order=None, *, copy=None, blocking=False):
        return a

    @_fakes.mirrors(cupy.asnumpy)
    def asnumpy(self, a, stream=None, order="C", out=None, *, blocking=True):
        return a

    class Module:
        fake = None                       # the FakeCuPy of the test (set by its __init__)

        @_fakes.mirrors(function.Module.load)
        def load(self, cubin):
            if self.fake.load_error:
                raise self.fake.load_error
            self.fake.loads.append(bytes(cubin))

        @_fakes.mirrors(function.Module.get_function)
        def get_function(self, name):
            ptr = 0x1000 + len(self.fake.functions)
            self.fake.functions[ptr] = name
            return types.SimpleNamespace(ptr=ptr)

    class Driver:
        fake = None

        @_fakes.mirrors(driver.launchKernel)
        def launchKernel(self, f, grid_dim_x, grid_dim_y, grid_dim_z, block_dim_x, block_dim_y,
                         block_dim_z, shared_mem_bytes, stream, kernel_params, extra):
            fake = self.fake
            slot0 = ctypes.c_void_p.from_address(kernel_params).value
            raw = ctypes.string_at(slot0, 8 * fake.slots)
            fake.launches.append((fake.functions[f], (grid_dim_x, grid_dim_y, grid_dim_z),
                                  (block_dim_x, block_dim_y, block_dim_z), stream, raw))

    class Runtime:
        @_fakes.mirrors(runtime.getDevice)
        def getDevice(self):
            return 0

        @_fakes.mirrors(runtime.getDeviceProperties)
        def getDeviceProperties(self, device):
            return {"major": 9, "minor": 0}

    def __init__(self):
        self.loads, self.launches, self.functions = [], [], {}
        self.slots = 0
        self.load_error = None
        module = type("Module", (FakeCuPy.Module,), {"fake": self})
        drv = type("Driver", (FakeCuPy.Driver,), {"fake": self})()
        stream = types.SimpleNamespace(ptr=77)
        self.cuda = types.SimpleNamespace(
            runtime=FakeCuPy.Runtime(), function=types.SimpleNamespace(Module=module),
            get_current_stream=lambda device_id=-1: stream, driver=drv)


@pytest.fixture
def gpu(monkeypatch, tmp_path):
    """The cuda set on the raw path over a fake CuPy, a fresh cache folder and a fake compiler
    (``gpu.builds`` lists the kernels it was asked to build)."""
    fake = FakeCuPy()
    fake.builds = []

    def build(spec, cc):
        fake.builds.append((spec.name, tuple(cc)))
        return _cache.Built(b"\x7fELF-cubin-of-" + spec.name.encode(), "entry_" + spec.name, 0.5)

    for name, value in (("cp", fake), ("_raw_cache", {}), ("FELL_BACK", {}), ("_failed", {}),
                        ("STRICT", False)):
        monkeypatch.setattr(_launch, name, value)
    monkeypatch.setattr(_cache, "build", build)
    monkeypatch.setitem(_launch._state, "path", "raw")
    monkeypatch.setenv("GPUCNN_CACHE_DIR", str(tmp_path / "kernels"))
    return fake


SPEC = activation.act_fwd_kernel(dtype="float32")


def launch_tanh(shape=(5,)):
    x = FakeArray(np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape))
    y = FakeArray(np.empty(shape, np.float32))
    _launch.cp.slots = len(_abi.flat_param_types(SPEC.argtypes))
    _launch.launch(SPEC, (1,), (32,), x, y, 2)
    return x, y


def unpack(raw, spec=SPEC):
    return list(struct.unpack(_abi.param_format(spec.argtypes), raw))


@pytest.mark.parametrize("shape", [(5,), (2, 3, 4)])
def test_first_launch_builds_stores_loads_and_launches(gpu, tmp_path, monkeypatch, shape):
    """An elementwise kernel declares 1-D arrays: a (2, 3, 4) array goes as its 24 elements,
    shape (24,) and stride 4 bytes, the same slots Numba would get for ``a.reshape(-1)``. The
    loaded module is kept, and a new process reads the cache instead of compiling."""
    x, y = launch_tanh(shape)
    n = x.size
    assert gpu.builds == [(SPEC.name, (9, 0))]
    (path,) = (tmp_path / "kernels").glob("*.cubin")
    assert SPEC.name.split("[")[0] in path.name and "sm_90" in path.name
    assert gpu.loads == [b"\x7fELF-cubin-of-" + SPEC.name.encode()]
    (name, grid, block, stream, raw), = gpu.launches
    assert (name, grid, block, stream) == ("entry_" + SPEC.name, (1, 1, 1), (32, 1, 1), 77)
    want = [0, 0, n, 4, x.data.ptr, n, 4, 0, 0, n, 4, y.data.ptr, n, 4, 2]
    assert unpack(raw) == want
    assert want == [v.item() for v in _abi.flatten_args(SPEC.argtypes, [x, y, 2])]
    launch_tanh()                                       # the loaded module is kept
    assert len(gpu.builds) == 1 and len(gpu.loads) == 1 and len(gpu.launches) == 2
    monkeypatch.setattr(_launch, "_raw_cache", {})     # what a new process starts with
    launch_tanh()
    assert len(gpu.builds) == 1 and gpu.loads[0] == gpu.loads[1]
    assert _abi.rank_shape((2, 3, 4, 5), 2) == (24, 5)
    assert _abi.c_strides((24, 5), 4) == (20, 4)
    with pytest.raises(TypeError, match="cannot be seen with 3 axes"):
        _abi.rank_shape((4, 5), 3)


@pytest.mark.parametrize("a, got", [
    (np.zeros(4, np.float64), r"float64 1-D \(C-contiguous: True"),
    (np.zeros(16, np.float32)[::2], r"float32 1-D \(C-contiguous: False"),
    (np.zeros((4, 4), np.float32).T, r"float32 2-D \(C-contiguous: False")])
def test_a_wrong_dtype_or_a_strided_view_is_refused_before_the_launch(gpu, a, got):
    """The kernels index by shape: a view with strides of its own would be read wrongly, so the
    packer refuses it (a view of the declared rank as well as one of a higher rank)."""
    x, y = FakeArray(a), FakeArray(np.zeros(a.shape, np.float32))
    x.a = a                                             # as it is, not made C-contiguous
    with pytest.raises(TypeError, match=r"act_fwd\[float32\]: expected a C-contiguous 1-D "
                                        r"float32 array, got " + got):
        _launch.launch(SPEC, (1,), (32,), x, y, 2)
    pack = _abi.make_packer("act_fwd[float32]", SPEC.argtypes)
    with pytest.raises(TypeError, match=got):
        pack((x, y, 2), bytearray(8 * 64))
    assert gpu.launches == []


def test_the_cache_key_covers_what_decides_the_code(gpu):
    base = _cache.entry_path(SPEC, (9, 0))
    assert _cache.entry_path(SPEC, (8, 0)) != base
    assert _cache.entry_path(activation.act_fwd_kernel(dtype="float64"), (9, 0)) != base
    fields = _cache.key_fields(SPEC, (9, 0))
    assert fields["numba_cuda"] == _cache.numba_cuda_version()
    assert fields["source"] == _cache.source_hash() and len(fields["source"]) == 64


DAMAGE = {"truncated": lambda data: data[:-3],
          "flipped": lambda data: data[:-1] + bytes([data[-1] ^ 1]),
          "foreign": lambda data: data.replace(b'"sm_90"', b'"sm_80"'),
          "not-ours": lambda data: b"#!/bin/sh\nrm -rf /\n"}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_or_foreign_entry_is_rebuilt_not_loaded(gpu, monkeypatch, capsys, damage):
    launch_tanh()
    path = _cache.entry_path(SPEC, (9, 0))
    path.write_bytes(DAMAGE[damage](path.read_bytes()))
    monkeypatch.setattr(_launch, "_raw_cache", {})
    launch_tanh()
    assert len(gpu.builds) == 2                           # rebuilt, and the bad bytes never loaded
    assert all(b.startswith(b"\x7fELF-cubin") for b in gpu.loads)
    assert "ignoring the kernel cache entry" in capsys.readouterr().err
    assert _cache.read(path, _cache.key_fields(SPEC, (9, 0))).cubin == gpu.loads[-1]


def test_an_unwritable_cache_costs_only_the_storing(gpu, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "kernels"
    folder.write_text("a file where the cache folder should be")
    launch_tanh()
    assert len(gpu.launches) == 1
    assert "cannot store" in capsys.readouterr().err
    monkeypatch.setenv("GPUCNN_CACHE_DIR", str(tmp_path / "fresh"))
    monkeypatch.setattr(_launch, "_raw_cache", {})
    launch_tanh()
    assert [p.name for p in (tmp_path / "fresh").iterdir() if p.name.startswith(".")] == []


def test_strict_mode_makes_a_failed_load_an_error(gpu, monkeypatch):
    monkeypatch.setattr(_launch, "STRICT", True)
    gpu.load_error = OSError("CUDA_ERROR_INVALID_IMAGE")
    with pytest.raises(RuntimeError, match=r"act_fwd\[float32\] cannot be built or loaded.*"
                                           r"CUDA_ERROR_INVALID_IMAGE.*strict"):
        launch_tanh()
    assert _launch.fell_back() == {}


def test_outside_strict_mode_a_failed_load_falls_back_once_and_is_listed(gpu, monkeypatch):
    gpu.load_error = OSError("CUDA_ERROR_INVALID_IMAGE")
    calls = []

    class FakeNumbaKernel:
        def __getitem__(self, config):
            return lambda *args: calls.append((config[:2], args))

    monkeypatch.setattr(_launch, "_numba_kernel", lambda spec: FakeNumbaKernel())
    monkeypatch.setattr(_launch, "_numba_stream", lambda: "stream")
    monkeypatch.setattr(_launch, "_wrap", lambda t, a: a)
    with pytest.warns(RuntimeWarning, match=r"act_fwd\[float32\].*Numba's launcher"):
        launch_tanh()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        launch_tanh()                                      # no second warning, no second load
    assert len(calls) == 2 and gpu.launches == []
    assert list(_launch.fell_back()) == [SPEC.name]
    assert "CUDA_ERROR_INVALID_IMAGE" in _launch.fell_back()[SPEC.name]


def test_a_kernel_numba_cannot_compile_fails_fast_the_second_time(gpu, monkeypatch):
    monkeypatch.setitem(_launch._state, "path", "numba")
    tries = []

    def broken(spec):
        tries.append(spec.name)
        raise RuntimeError("NvvmSupportError: libNVVM cannot be found")

    monkeypatch.setattr(_launch, "_numba_kernel", broken)
    monkeypatch.setattr(_launch, "_wrap", lambda t, a: a)
    for _ in range(2):
        with pytest.raises(RuntimeError, match="libNVVM"):
            launch_tanh()
    assert tries == [SPEC.name]


# --------------------------------------------------------------------------- the probe

def _nvvm_missing(x, act):
    raise RuntimeError("NvvmSupportError: libNVVM cannot be found. Do `conda install "
                       "cudatoolkit`")


@pytest.mark.parametrize("act_forward, want", [
    (_nvvm_missing, ["libNVVM cannot be found", "gpucnn[cuda12]", "gpucnn[cuda13]", "CUDA_HOME",
                     "python -m gpucnn.cache fill"]),
    (lambda x, act: x, ["wrong numbers"])], ids=["no-compiler", "identity-not-tanh"])
def test_the_probe_names_what_failed_and_the_fix(monkeypatch, act_forward, want):
    monkeypatch.setattr(_runtime, "cp", FakeCuPy())
    monkeypatch.setattr(activation, "act_forward", act_forward)
    info = {}
    ok, why = _probe._prove_chain(info)
    assert not ok and all(w in why for w in want), why
    assert ("Traceback" in info.get("probe_traceback", "")) == (act_forward is _nvvm_missing)


def test_the_probe_verdict_is_computed_once(monkeypatch):
    calls = []
    monkeypatch.setattr(_probe, "_verdict", {})
    monkeypatch.setattr(_probe, "_probe", lambda: calls.append(1) or (False, "why", {"a": 1}))
    first = _probe.probe()
    first[2]["a"] = 2                                   # callers get copies
    assert _probe.probe() == (False, "why", {"a": 1}) and calls == [1]


# --------------------------------------------------------------------------- the real compiler

def test_a_second_process_finds_every_kernel_in_the_cache(tmp_path):
    """Numba's real compiler (no simulator) in two fresh processes: the first builds, the
    second finds both kernels in the cache and compiles nothing."""
    code = ("import sys; from gpucnn.kernels.cuda_set import _cache, _registry; "
            "names = [s.name for s in _registry.all_kernels()[:2]]; "
            "res = _cache.fill((9, 0), jobs=1, names=names); "
            "print('SOURCES', sorted(v[0] for v in res.values()))")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env["GPUCNN_CACHE_DIR"] = str(tmp_path)
    runs = [subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                           timeout=300) for _ in range(2)]
    for r in runs:
        assert r.returncode == 0, r.stderr[-3000:]
    assert "SOURCES ['built', 'built']" in runs[0].stdout
    assert "SOURCES ['cache', 'cache']" in runs[1].stdout
    assert len(list(tmp_path.glob("*.cubin"))) == 2
    assert [p for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []


def _draw(spec, rng):
    """Random shapes of a kernel's array arguments and values of its scalars, by position."""
    from numba import types

    shapes, scalars = {}, {}
    for i, t in enumerate(spec.argtypes):
        if isinstance(t, types.Array):
            shapes[i] = tuple(int(v) for v in rng.integers(1, 4, t.ndim))
        elif isinstance(t, types.Integer):
            scalars[i] = int(rng.integers(-5 if t.signed else 0, 50))
        else:
            scalars[i] = float(rng.standard_normal())
    return shapes, scalars


def _args(spec, shapes, scalars, array=np.zeros, lead=()):
    return [array(lead + shapes[i], str(t.dtype)) if i in shapes else scalars[i]
            for i, t in enumerate(spec.argtypes)]


def test_every_kernels_packer_and_prepared_launch_write_what_flatten_args_gives(gpu, rng):
    """Against the reference flattening, which tests/test_compile.py holds to Numba's own
    dispatcher and the cubins, for every registered kernel and arrays of the declared rank and of
    one rank more: the generated packer (one struct.pack_into a launch), and a plan made from one
    call's arguments, then called with other arrays of the same shapes, which hands the driver
    the full flat list of those arrays (the address written at the right slot of each array's
    block, whatever its rank)."""
    def fake(shape, dtype):
        return FakeArray(np.zeros(shape, dtype))

    for spec in _registry.all_kernels():
        pack = _abi.make_packer(spec.name, spec.argtypes)
        fmt = _abi.param_format(spec.argtypes)
        gpu.slots = len(_abi.flat_param_types(spec.argtypes))
        for lead in ((), (2,)):
            shapes, scalars = _draw(spec, rng)
            args = _args(spec, shapes, scalars, lead=lead)
            buf = ctypes.create_string_buffer(struct.calcsize(fmt))
            pack(args, buf)
            want = [v.item() for v in _abi.flatten_args(spec.argtypes, args)]
            assert list(struct.unpack(fmt, buf.raw)) == pytest.approx(want, rel=1e-7), spec.name
            plan = _launch.Prepared(spec, (1,), (32,), _args(spec, shapes, scalars, fake, lead))
            for _ in range(3):      # the first through launch(), then the prepared buffer
                args = _args(spec, shapes, scalars, fake, lead)
                plan(*[a for i, a in enumerate(args) if i in shapes])
                *_, raw = gpu.launches[-1]
                want = [v.item() for v in _abi.flatten_args(spec.argtypes, args)]
                assert unpack(raw, spec) == pytest.approx(want, rel=1e-7), spec.name


def test_a_prepared_launch_writes_what_flatten_args_gives_for_each_call(gpu):
    """A plan fills its buffer once; later calls write only the arrays' addresses. Every
    launch's buffer is still the full flat list Numba's ABI wants for those arrays."""
    gpu.slots = len(_abi.flat_param_types(SPEC.argtypes))
    x = FakeArray(np.zeros((2, 3), np.float32))
    plan = _launch.Prepared(SPEC, (1,), (32,), (x, None, 3))
    for _ in range(3):
        x, y = FakeArray(np.zeros((2, 3), np.float32)), FakeArray(np.zeros((2, 3), np.float32))
        plan(x, y)
        *_, raw = gpu.launches[-1]
        assert unpack(raw) == [v.item() for v in _abi.flatten_args(SPEC.argtypes, [x, y, 3])]
    assert len(gpu.launches) == 3 and len(gpu.builds) == 1
    assert callable(plan.raw[0])
    once = _launch.Prepared(SPEC, (1,), (32,), (x, None, 3))
    once(x, y)              # a plan used once builds no launch function of its own
    assert once.raw[0] is _launch._SECOND and len(gpu.launches) == 4
    with pytest.raises(TypeError, match="3 arguments expected, got 2"):
        _launch.Prepared(SPEC, (1,), (32,), (x, None))


def test_plans_are_kept_only_for_arrays_passed_on_as_they_came(monkeypatch):
    """A plan's key is the arrays' shapes and dtypes and the op's parameters; arrays that are
    not C-contiguous arrays of the set, or a call whose inputs needed a conversion, take the
    checked path every time. ``clear_plans`` forgets them all."""
    monkeypatch.setattr(_launch, "xp", np)
    plans = _launch.Plans("test_op")
    a, b = np.zeros((4, 5), np.float32), np.zeros(3, np.float64)
    key = plans.key((a, None, b), ("relu", 2))
    assert key == (("relu", 2), (4, 5), np.dtype(np.float32), None, (3,), np.dtype(np.float64))
    assert plans.key((a.T,), "relu") is None                   # not C-contiguous
    assert plans.key((a.tolist(),), "relu") is None            # not an array of the set
    unhashable = plans.key((a,), ["relu"])
    plans.put(unhashable, "plan", (a,), ["relu"])
    assert plans.get(unhashable) is None and plans.table.keys() == set()
    assert plans.put(key, "plan", (a, None, b.astype(np.float32)), ("relu", 2)) == "plan"
    assert plans.get(key) is None                              # converted: not kept
    plans.put(key, "plan", (a, None, b), ("relu", 2))
    assert plans.get(key) == "plan" and plans.get(None) is None
    _launch.clear_plans()
    assert plans.get(key) is None
    _launch._ALL_PLANS.remove(plans)


def test_conv_launchers_bypass_plans_while_a_tile_is_overridden(monkeypatch):
    from gpucnn.kernels.cuda_set import conv
    assert conv._plannable()
    monkeypatch.setattr(conv, "TILE_OVERRIDE", {"fwd": (64, 64, 16)})
    assert not conv._plannable()
    monkeypatch.setattr(conv, "TILE_OVERRIDE", {})
    monkeypatch.setattr(conv, "TARGET_BLOCKS", 4)
    assert not conv._plannable()
