"""The context of a GPU-check section (``python -m gpucnn.gpucheck``; see that module): the
tables it fills, its failures, the device and the timers.

Each section fills named tables through ``ctx.table(name)``: every row added is written at once
to the section's part file (JSON), so a section that is killed or hits a sticky device error
keeps every row it finished. Every case runs inside its own ``try`` with a device
synchronisation after it; after an error ``ctx.check_device()`` asks the device whether it still
works and ends the section (``DeviceLost``) when it does not. ``inject_fault`` makes a kernel
raise, for the check's own test.

Timing: on a GPU each measurement runs ``reps`` calls between one pair of CUDA events (``reps``
chosen so that a round lasts about a millisecond), takes ``--repeats`` rounds and reports the
median device time per call; the host time of one call is measured apart (``launch_overhead``).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from gpucnn.bench import _timing, torch_ref
from gpucnn.kernels import load_set

#: fp32 FMA lanes per SM by compute capability (major, minor); peak = SMs x lanes x 2 x clock.
FP32_LANES = {(6, 0): 64, (7, 0): 64, (7, 2): 64, (7, 5): 64, (8, 0): 64, (8, 6): 128,
              (8, 7): 128, (8, 9): 128, (9, 0): 128, (10, 0): 128, (10, 3): 128, (12, 0): 128}


class DeviceLost(RuntimeError):
    """The device no longer works in this process (a sticky CUDA error): end the section."""


class LiveRows(list):
    """A table's rows; every ``append`` rewrites the section's part file."""

    def __init__(self, ctx):
        super().__init__()
        self._ctx = ctx

    def append(self, row):
        super().append(row)
        self._ctx.dump()


def _jsonable(v):
    if isinstance(v, float):
        return None if math.isnan(v) or math.isinf(v) else v
    if isinstance(v, (np.floating, np.integer)):
        return _jsonable(v.item())
    if isinstance(v, (tuple, list)):
        return [_jsonable(u) for u in v]
    if isinstance(v, dict):
        return {k: _jsonable(u) for k, u in v.items()}
    return v


@dataclass
class Ctx:
    tiny: bool
    repeats: int
    warmup: int
    use_torch: bool
    part: str = ""            # the section's part file (JSON), rewritten as rows come in
    out: str = ""             # --out: the folder of the logs
    fault: str = ""           # a kernel name made to raise (the check's own test)
    C: object = None          # the cuda set
    N: object = None          # the numpy set
    gpu: bool = False
    cp: object = None
    torch: object = None
    torch_note: str = ""
    info: dict = field(default_factory=dict)
    failures: list = field(default_factory=list)
    tables: dict = field(default_factory=dict)
    rng: object = None

    def table(self, name) -> LiveRows:
        return self.tables.setdefault(name, LiveRows(self))

    def fail(self, msg):
        self.failures.append(msg)
        print(f"  FAILURE: {msg}", flush=True)
        self.dump()

    def dump(self):
        if not self.part:
            return
        data = {"info": _jsonable(self.info), "failures": list(self.failures),
                "torch_note": self.torch_note,
                "tables": {k: [_jsonable(list(r)) for r in v] for k, v in self.tables.items()}}
        tmp = self.part + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f)
        os.replace(tmp, self.part)

    def dev(self, a):
        return self.C.asarray(a)

    def host(self, a):
        return self.C.to_host(a)

    def rand(self, *shape, scale=1.0):
        return (scale * self.rng.standard_normal(shape)).astype(np.float32)

    def sync(self):
        if self.gpu:
            self.cp.cuda.get_current_stream().synchronize()

    def check_device(self):
        """Raise DeviceLost when the device no longer runs work (after an error)."""
        if not self.gpu:
            return
        try:
            self.cp.cuda.runtime.deviceSynchronize()
            a = self.cp.arange(4, dtype=self.cp.float32)
            if float((a * 2).sum().get()) != 12.0:
                raise RuntimeError("a CuPy kernel returned a wrong sum")
        except Exception as e:  # noqa: BLE001 - any failure here means the context is gone
            raise DeviceLost(f"the device stopped working: {type(e).__name__}: {e}") from None

    @contextlib.contextmanager
    def case(self, label, quiet=False):
        """Run a group of cases: an error is a failure of ``label`` (with ``quiet`` only
        printed), and the section goes on unless the device is lost."""
        try:
            yield
        except DeviceLost:
            raise
        except Exception as e:  # noqa: BLE001 - report and go on
            if quiet:
                print(f"  {label}: {type(e).__name__}: {e}", flush=True)
            else:
                self.fail(f"{label}: {type(e).__name__}: {e}")
            self.check_device()

    def attempt(self, label, fn, quiet=False, default=math.nan):
        """``fn()``, or ``default`` after an error (handled as ``case`` handles it)."""
        with self.case(label, quiet):
            return fn()
        return default

    def torch_try(self, label, fn, default=math.nan):
        """``fn()`` on the PyTorch side, or ``default`` without PyTorch or after an error (a
        PyTorch problem only loses the comparison: printed, not a failure)."""
        if self.torch is None:
            return default
        try:
            return fn()
        except Exception as e:  # noqa: BLE001
            print(f"  {label}: {type(e).__name__}: {e}", flush=True)
            return default

    @contextlib.contextmanager
    def fewer_repeats(self):
        """A quarter of the timed rounds (at least 5) on a GPU, for rows that are extra
        information or a reference point."""
        repeats = self.repeats
        self.repeats = max(5, repeats // 4) if self.gpu else repeats
        try:
            yield
        finally:
            self.repeats = repeats

    def median_ms(self, fn):
        """Median milliseconds per call. On a GPU: ``reps`` calls between one CUDA event pair
        (device time per call, not host launch gaps), over ``repeats`` rounds."""
        for _ in range(self.warmup):
            fn()
        if not self.gpu:
            times = []
            for _ in range(self.repeats):
                t = time.perf_counter()
                fn()
                times.append(1e3 * (time.perf_counter() - t))
            return statistics.median(times)
        cp = self.cp
        return _timing.device_ms(fn, cp.cuda.Event, cp.cuda.get_elapsed_time, 0, self.repeats)

    def torch_ms(self, fn):
        torch = self.torch
        return _timing.device_ms(fn, lambda: torch.cuda.Event(enable_timing=True),
                                 lambda a, b: a.elapsed_time(b), self.warmup, self.repeats)


def setup(args) -> Ctx:
    ctx = Ctx(tiny=args.tiny, repeats=args.repeats, warmup=args.warmup, use_torch=not args.no_torch,
              part=args.part or "", fault=args.fault or "", out=args.out)
    load_set("cuda").instruments().strict()   # a kernel on Numba's launcher is a failure here
    if ctx.fault:
        inject_fault(ctx.fault)
    ok, why, info = load_set("cuda").probe()
    ctx.info = dict(info)
    if not ok:
        if info.get("probe_traceback"):
            print(info["probe_traceback"], file=sys.stderr)
        ctx.fail(f"the cuda backend cannot run here: {why}")
        print(f"gpucheck: the cuda backend cannot run here: {why}", file=sys.stderr)
        raise SystemExit(2)
    ctx.C, ctx.N = load_set("cuda"), load_set("numpy")
    ctx.gpu = ctx.C.launch_path() != "sim"
    ctx.rng = np.random.default_rng(args.seed)
    if ctx.gpu:
        ctx.cp = ctx.C.xp
        ctx.info.update(_device_info(ctx.cp))
    if ctx.use_torch and ctx.gpu:
        try:
            torch = torch_ref.setup("cuda", 1)
            if not torch.cuda.is_available():
                raise RuntimeError("torch.cuda.is_available() is False")
            ctx.torch = torch
            ctx.info["torch"] = (f"{torch.__version__} (cuDNN {torch.backends.cudnn.version()}, "
                                 "fp32, TF32 off, channels-last)")
        except Exception as e:  # noqa: BLE001 - any failure: no torch column
            ctx.torch_note = f"PyTorch not used: {type(e).__name__}: {e}"
    elif ctx.use_torch:
        ctx.torch_note = "PyTorch not used: no GPU (simulator run)"
    else:
        ctx.torch_note = "PyTorch not used: --no-torch"
    return ctx


def inject_fault(fault: str):
    """Make every launch of a kernel whose name starts with ``fault`` raise (``sticky:NAME``:
    and make the device look lost afterwards), and the compiling of such a kernel fail, to test
    that the check survives it (``GPUCNN_GPUCHECK_FAULT``; tests/test_gpucheck.py)."""
    sticky = fault.startswith("sticky:")
    prefix = fault.split(":", 1)[1] if sticky else fault

    def launch(real, spec, grid, block, *args):
        if spec.name.startswith(prefix):
            if sticky:
                Ctx.check_device = _lost
            raise RuntimeError(f"injected fault in {spec.name} (GPUCNN_GPUCHECK_FAULT)")
        return real(spec, grid, block, *args)

    os.environ["GPUCNN_CACHE_FAULT"] = prefix     # read by the cache's compiler processes
    load_set("cuda").instruments().through(launch)     # for the rest of the process


def _lost(self):
    raise DeviceLost("the device stopped working (injected sticky fault)")


def _device_info(cp):
    dev = cp.cuda.Device()
    props = cp.cuda.runtime.getDeviceProperties(dev.id)
    cc = (int(props["major"]), int(props["minor"]))
    sms = int(props["multiProcessorCount"])
    clock_khz = int(props.get("clockRate", 0)) or int(dev.attributes.get("ClockRate", 0))
    lanes = FP32_LANES.get(cc, 128 if cc[0] >= 8 else 64)
    peak = sms * lanes * 2 * clock_khz * 1e3 / 1e9
    name = props["name"]
    return {"device": name.decode() if isinstance(name, bytes) else str(name),
            "compute_capability": f"{cc[0]}.{cc[1]}", "sms": sms,
            "clock_mhz": clock_khz / 1e3, "fp32_peak_gflops": peak,
            "memory_gib": props["totalGlobalMem"] / 2**30}


def torch_twins(ctx, build, *args) -> dict:
    """``build(torch, *args)`` (``torch_ref.gpu_*``): the PyTorch twins of our calls; {} without
    PyTorch or on failure."""
    return ctx.torch_try(f"[3] PyTorch twin {build.__name__}", lambda: build(ctx.torch, *args),
                         {})


def ratio(a, b):
    """``a / b``, NaN where either is NaN or ``b`` is not positive."""
    return a / b if a == a and b == b and b > 0 else math.nan


def tiny_launches(tiny, simulator):
    """Inside ``with``: a ``--tiny`` run's small launches (``simulate.small_launches``; with
    ``simulator`` also ``lock_shared_arrays``), nothing otherwise."""
    if not tiny:
        return contextlib.nullcontext()
    return load_set("cuda").instruments().small_launches(simulator)
