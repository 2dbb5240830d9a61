"""The launch paths of the cuda set, and the door its op modules import the registry
(``_registry``), the array helpers (``_arrays``) and the launches through. Numba's argument ABI
for the raw path is in ``_abi``.

Three launch paths, chosen once per process; none synchronises the host:

- ``sim``: Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``), NumPy arrays.
- ``raw`` (default on a GPU): the kernel's cubin from ``_cache``'s disk cache (built there once
  per machine by Numba's compiler: PTX for the device's ``sm_XY``, no LTO), loaded with CuPy
  (``cupy.cuda.function.Module``) and launched through CuPy's launcher on CuPy's current stream,
  the arguments flattened by hand to Numba's kernel ABI: a few microseconds of host time per
  launch instead of Numba's ~200 (numba issue 3003). A kernel that cannot be loaded so goes to
  Numba's launcher with a warning and is listed in ``FELL_BACK``; with ``STRICT``
  (``GPUCNN_STRICT_LAUNCH=1``, the tests, the GPU check) that is an error instead.
- ``numba`` (``GPUCNN_CUDA_LAUNCH=numba``: a cross-check of ``raw``, used by ``python -m
  gpucnn.gpucheck``): Numba's dispatcher with the explicit signature, arrays wrapped with
  ``cuda.as_cuda_array(sync=False)``, on an external stream wrapping CuPy's current stream.
"""
from __future__ import annotations

import ctypes
import functools
import os
import threading
import warnings

from numba import types

from . import _abi, _cache, _runtime
from ._abi import _scalar, as_declared, flat_param_types, make_packer
# the registry and array helpers, for the op modules (which import through this module)
from ._arrays import (FLOAT_DTYPES, NB_FLOAT, asarray, cdiv, check_rank,  # noqa: F401
                      contig, dtname, dummy, empty, float_dtype, sm_count, xp)
from ._registry import (KernelSpec, all_kernels, arr, float_variants,  # noqa: F401
                        kernel_factory)
from ._runtime import SIMULATOR, cp
from ._runtime import numba_cuda as cuda
from .streams import to_host  # noqa: F401 (the one read-back: streams().read)


_state = {"path": None, "launches": 0}

_lock = threading.Lock()


def launch_path() -> str:
    """'sim', 'raw' or 'numba': how kernels are launched in this process."""
    if _state["path"] is None:
        want = os.environ.get("GPUCNN_CUDA_LAUNCH", "raw").strip().lower() or "raw"
        if want not in ("raw", "numba") and not SIMULATOR:
            raise ValueError(f"GPUCNN_CUDA_LAUNCH must be 'raw' or 'numba', got {want!r}")
        _state["path"] = "sim" if SIMULATOR else want
    return _state["path"]


def launch_count() -> int:
    """How many kernels this process has launched (for launches-per-step counts)."""
    return _state["launches"]


def set_launch_path(path: str) -> str:
    """Switch between the 'raw' and 'numba' launch paths on a GPU (for checks and timings)."""
    if SIMULATOR:
        if path != "sim":
            raise ValueError("set_launch_path: only 'sim' is possible under NUMBA_ENABLE_CUDASIM=1")
    elif path not in ("raw", "numba"):
        raise ValueError(f"set_launch_path: expected 'raw' or 'numba', got {path!r}")
    _state["path"] = path
    return path


@functools.lru_cache(maxsize=None)
def _sim_kernel(spec: KernelSpec):
    return cuda.jit(spec.pyfunc)


@functools.lru_cache(maxsize=None)
def _numba_kernel(spec: KernelSpec):
    return cuda.jit(spec.sig, launch_bounds=spec.launch_bounds)(spec.pyfunc)


class _RawKernel:
    """A kernel's cubin (``_cache``) loaded into CuPy, launched with ``cuLaunchKernel`` through
    CuPy's driver binding. Its parameter buffer is laid out once (an 8-byte slot per flat
    parameter of Numba's ABI, and an array of pointers to the slots): a launch writes it with one
    ``struct.pack_into`` and makes one driver call. The driver copies the parameters at the
    launch, so the buffer is reused (under a lock: one launch at a time writes it)."""

    def __init__(self, spec: KernelSpec, cc):
        built = _cache.get(spec, cc)
        self.module = cp.cuda.function.Module()      # kept: the function lives in it
        self.module.load(built.cubin)
        self.fptr = int(self.module.get_function(built.entry).ptr)
        self.slots = len(flat_param_types(spec.argtypes))
        self.buf = ctypes.create_string_buffer(8 * self.slots)
        base = ctypes.addressof(self.buf)
        self.params = (ctypes.c_void_p * max(self.slots, 1))(
            *[base + 8 * i for i in range(self.slots)])
        self.params_ptr = ctypes.addressof(self.params)
        self.pack = make_packer(spec.name, spec.argtypes)
        self.launch_kernel = cp.cuda.driver.launchKernel
        self.lock = threading.Lock()

    def __call__(self, grid, block, args, stream_ptr):
        g = grid if len(grid) == 3 else _PAD3[len(grid)](grid)
        b = block if len(block) == 3 else _PAD3[len(block)](block)
        with self.lock:
            self.pack(args, self.buf)
            self.launch_kernel(self.fptr, g[0], g[1], g[2], b[0], b[1], b[2], 0, stream_ptr,
                               self.params_ptr, 0)


_PAD3 = {1: lambda t: (t[0], 1, 1), 2: lambda t: (t[0], t[1], 1)}

_raw_cache: dict = {}

#: ``{kernel name: "ExceptionType: message"}``: kernels not loadable through CuPy, run by Numba's
#: launcher instead (``backend_info()`` lists them; with ``STRICT``, an error: module docstring).
FELL_BACK: dict = {}

STRICT = os.environ.get("GPUCNN_STRICT_LAUNCH", "") not in ("", "0")

_failed: dict = {}     # (path, spec) -> the exception, so that a broken kernel fails fast


def fell_back() -> dict:
    """``{kernel name: reason}`` of the kernels running through Numba's launcher (see STRICT)."""
    return dict(FELL_BACK)


def device_cc(device: int | None = None) -> tuple[int, int]:
    """The compute capability of a CuPy device (the current one by default); a RuntimeError
    saying why there is none (also the ``compile_cache`` capability's ``device_cc``)."""
    if cp is None:
        raise RuntimeError("no GPU to read the compute capability from here "
                           f"({_runtime._cupy_error or 'simulator on'})")
    dev = cp.cuda.runtime.getDevice() if device is None else device
    props = cp.cuda.runtime.getDeviceProperties(dev)
    return int(props["major"]), int(props["minor"])


def _raw_kernel(spec: KernelSpec):
    dev = cp.cuda.runtime.getDevice()
    key = (spec.name, dev)   # a module is loaded per device; names are unique (a cheap hash)
    k = _raw_cache.get(key)
    if k is None:
        with _lock:
            k = _raw_cache.get(key)
            if k is None:
                k = _raw_cache[key] = _RawKernel(spec, device_cc(dev))
    return k


_streams: dict = {}


def _numba_stream():
    ptr = cp.cuda.get_current_stream().ptr
    s = _streams.get(ptr)
    if s is None:
        s = _streams[ptr] = cuda.external_stream(ptr) if ptr else cuda.default_stream()
    return s


def _wrap(ty, a):
    if isinstance(ty, types.Array):
        return cuda.as_cuda_array(as_declared(ty, a), sync=False)
    return _scalar(ty, a)


def launch(spec: KernelSpec, grid, block, *args):
    """Launch ``spec`` on ``grid`` x ``block`` (tuples) with ``args`` (arrays of this set and
    Python scalars, converted to the kernel's declared scalar types)."""
    if min(grid) <= 0:
        return  # an empty output: nothing to launch
    if len(args) != len(spec.argtypes):
        raise TypeError(f"{spec.name}: {len(spec.argtypes)} arguments expected, got {len(args)}")
    path = _state["path"] or launch_path()
    _state["launches"] += 1
    if path == "sim":
        # the simulator copies every array argument back after the kernel: a read-only input
        # (a broadcast gradient, say) goes as a copy
        conv = [(as_declared(t, a) if a.flags.writeable else as_declared(t, a.copy()))
                if isinstance(t, types.Array) else _scalar(t, a)
                for t, a in zip(spec.argtypes, args)]
        _sim_kernel(spec)[tuple(int(g) for g in grid), tuple(int(b) for b in block)](*conv)
        return
    if path == "raw" and spec.name not in FELL_BACK:
        try:
            k = _raw_kernel(spec)
        except Exception as e:  # pragma: no cover - GPU only (tests/test_raw_launch.py fakes it)
            _fall_back(spec, e)
        else:
            k(grid, block, args, cp.cuda.get_current_stream().ptr)
            return
    grid = tuple(int(g) for g in grid)
    block = tuple(int(b) for b in block)
    failed = _failed.get(("numba", spec))
    if failed is not None:
        raise failed
    wrapped = [_wrap(t, a) for t, a in zip(spec.argtypes, args)]
    try:
        kern = _numba_kernel(spec)
    except Exception as e:
        _failed[("numba", spec)] = e
        raise
    kern[grid, block, _numba_stream()](*wrapped)


class _Once:
    """Falsy: a Prepared called once on a device (the next call prepares its raw launch)."""

    def __bool__(self):
        return False


_SECOND = _Once()


class Prepared:
    """One kernel's launch prepared for the argument shapes and dtypes every call's arrays must
    have (kept in ``Plans``, keyed by those and the op's parameters). A call passes only the
    arrays, in the kernel's order; scalars, grid and block are fixed. On the raw path, from the
    second call on (the first goes through ``launch``: a plan made for one call costs no more),
    the plan has its own parameter buffer, filled once (``make_packer``): a launch writes the
    arrays' addresses and calls the driver, a few microseconds. The other paths rebuild the full
    argument list and go through ``launch``."""

    __slots__ = ("spec", "grid", "block", "template", "array_pos", "raw")

    def __init__(self, spec: KernelSpec, grid, block, args, live=None):
        if len(args) != len(spec.argtypes):
            raise TypeError(f"{spec.name}: {len(spec.argtypes)} arguments expected, got "
                            f"{len(args)}")
        self.spec, self.grid, self.block = spec, tuple(grid), tuple(block)
        if live is None:        # the arrays (a ``Bound`` names its positions)
            live = [i for i, t in enumerate(spec.argtypes) if isinstance(t, types.Array)]
        self.array_pos = tuple(live)
        # the scalars stay; the arrays are not kept (a plan outlives the arrays it was made from)
        self.template = [None if i in self.array_pos else a for i, a in enumerate(args)]
        self.raw: dict = {}           # device -> the raw launch state (or None: not raw there)

    def args(self, arrays) -> list:
        full = list(self.template)
        for i, a in zip(self.array_pos, arrays):
            full[i] = a
        return full

    def __call__(self, *arrays):
        if _state["path"] == "raw":
            dev = cp.cuda.runtime.getDevice()
            fire = self.raw.get(dev)
            if fire:                    # the raw launch (it counts itself)
                return fire(*arrays)
            if fire is None:            # a first call: a plan made for one call stops here
                self.raw[dev] = _SECOND
            elif fire is _SECOND:       # called again: worth its own buffer and function
                fire = self.raw[dev] = self._raw_fire(arrays)
                if fire:
                    return fire(*arrays)
        launch(self.spec, self.grid, self.block, *self.args(arrays))

    def _raw_fire(self, arrays):
        """``fire(*arrays)``: the raw launch of this plan, generated once per plan and device:
        each array's address written (slot 4 of its block in Numba's ABI) into the plan's own
        buffer, filled once by ``make_packer``, then the driver's launch. False where the plan
        is not launched raw (an empty grid, or a kernel CuPy cannot load: ``launch`` then falls
        back, once, with its warning)."""
        if min(self.grid) <= 0:
            return False
        try:
            k = _raw_kernel(self.spec)
        except Exception:
            return False
        g = self.grid if len(self.grid) == 3 else _PAD3[len(self.grid)](self.grid)
        b = self.block if len(self.block) == 3 else _PAD3[len(self.block)](self.block)
        slots = (ctypes.c_uint64 * max(k.slots, 1))()
        k.pack(self.args(arrays), slots)
        params = (ctypes.c_void_p * max(k.slots, 1))(
            *[ctypes.addressof(slots) + 8 * i for i in range(k.slots)])
        env = {"slots": slots, "params": params, "params_ptr": ctypes.addressof(params),
               "lock": threading.Lock(), "pointer": _abi._pointer, "fptr": k.fptr,
               "launch_kernel": k.launch_kernel, "stream": cp.cuda.get_current_stream,
               "state": _state}
        writes, at, live = [], 0, set(self.array_pos)
        for i, t in enumerate(self.spec.argtypes):
            n = len(writes)
            if isinstance(t, types.Array):
                if i in live:
                    writes.append(f"        slots[{at + 4}] = pointer(a{n})")
                at += 5 + 2 * t.ndim
                continue
            if i in live:           # a scalar passed by every call (Bound): its slot, typed
                env[f"v{n}"] = _abi.scalar_kind(t)[2].from_buffer(slots, 8 * at)
                writes.append(f"        v{n}.value = a{n}")
            at += 1
        names = ", ".join(f"a{i}" for i in range(len(writes)))
        src = (f"def fire({names}):\n    with lock:\n" + "\n".join(writes)
               + f"\n        launch_kernel(fptr, {g[0]}, {g[1]}, {g[2]}, {b[0]}, {b[1]}, {b[2]}, "
               "0, stream().ptr, params_ptr, 0)\n    state['launches'] += 1\n")
        exec(compile(src, f"<gpucnn launch {self.spec.name}>", "exec"), env)
        return env["fire"]


class Bound(Prepared):
    """A ``Prepared`` launch whose fixed arguments include arrays (kept by reference, so their
    addresses stay valid): ``args`` are the first call's full arguments; each call passes only
    those at positions ``live`` (arrays or scalars, in the kernel's order), written into the
    plan's buffer by a raw launch. For arrays that mostly stay (an optimizer's weights and
    slots; the gradients are new each step) with scalars that change (a step, a learning rate)."""

    __slots__ = ()


_ALL_PLANS: list = []


def clear_plans():
    """Forget every prepared launch (plans keep the block sizes and tiles they were made with),
    so that a changed tuning constant (``EW_BLOCK``, ``SOFTMAX_BLOCK``, ...) reaches shapes
    already seen (the conv's ``TILE_OVERRIDE`` and ``TARGET_BLOCKS`` need nothing: while set,
    the conv launchers use no plans)."""
    for p in _ALL_PLANS:
        p.table.clear()


class Plans:
    """The prepared launches of one launcher, keyed by what decides them. A launcher looks its
    ``key(arrays, params)`` up first; on a miss it checks and converts its arguments, prepares
    the launch and ``put``s it. The key is None unless every array is a C-contiguous array of
    this set (None entries allowed): such calls, and unhashable params, take the checked path."""

    __slots__ = ("op", "table")

    def __init__(self, op: str):
        self.op, self.table = op, {}
        _ALL_PLANS.append(self)

    def key(self, arrays, params):
        key = (params,)
        nd = xp.ndarray
        for a in arrays:
            if a is None:
                key += (None,)
            elif type(a) is nd and a.flags.c_contiguous:
                key += (a.shape, a.dtype)
            else:
                return None
        return key

    def get(self, key):
        if key is None:
            return None
        try:
            return self.table.get(key)
        except TypeError:           # unhashable params: the checked path
            return None

    def put(self, key, plan, inputs, params):
        """Keep ``plan`` under ``key`` when the checked path passed the inputs on as they came
        (``inputs``: what went to the kernel, after conversions): a call that needed a copy or a
        cast keeps taking the checked path, which makes it."""
        if key is not None and len(self.table) < 512 and self.key(inputs, params) == key:
            try:
                self.table[key] = plan
            except TypeError:
                pass
        return plan


def _fall_back(spec: KernelSpec, e: Exception):
    why = f"{type(e).__name__}: {e}"
    if STRICT:
        raise RuntimeError(f"gpucnn: the kernel {spec.name} cannot be built or loaded through CuPy "
                           f"({why}); strict launch mode (GPUCNN_STRICT_LAUNCH) refuses Numba's "
                           "launcher as a fallback") from e
    FELL_BACK[spec.name] = why
    warnings.warn(f"gpucnn: building or loading {spec.name} for CuPy failed ({why}); using Numba's "
                  "launcher for it (slower launches; backend_info() lists such kernels)",
                  RuntimeWarning, stacklevel=3)
