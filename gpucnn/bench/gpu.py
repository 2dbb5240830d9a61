"""The sections of the real-GPU check (``python -m gpucnn.gpucheck``; see that module).

Each ``section_*`` function runs in its own process (started by the driver in
``gpucnn.gpucheck``) and fills named tables through ``ctx.table(name)``: every row added is
written at once to the section's part file (JSON), so a section that is killed or hits a sticky
device error keeps every row it finished. Every case runs inside its own ``try`` with a device
synchronisation after it; after an error ``ctx.check_device()`` asks the device whether it still
works and ends the section (``DeviceLost``) when it does not.

Timing: on a GPU each measurement runs ``reps`` calls between one pair of CUDA events (``reps``
chosen so that a round lasts about a millisecond), takes ``--repeats`` rounds and reports the
median device time per call; the host time of one call is measured apart (``launch_overhead``).
"""
from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from gpucnn.bench import _timing, shapes, torch_ref

FWD_TOL, GRAD_TOL, BUG_TOL = 1e-5, 1e-4, 1e-3
#: fp32 FMA lanes per SM by compute capability (major, minor); peak = SMs x lanes x 2 x clock.
FP32_LANES = {(6, 0): 64, (7, 0): 64, (7, 2): 64, (7, 5): 64, (8, 0): 64, (8, 6): 128,
              (8, 7): 128, (8, 9): 128, (9, 0): 128, (10, 0): 128, (10, 3): 128, (12, 0): 128}


# --------------------------------------------------------------------------- shapes

@dataclass
class Conv:
    net: str
    name: str
    x: tuple          # (N, H, W, C_in)
    k: int
    cout: int
    stride: int
    padding: str
    act: str

    def geometry(self):
        from gpucnn.kernels._geometry import window_2d

        ho, wo, pad = window_2d(self.x[1], self.x[2], self.k, self.k, self.stride, self.stride,
                                self.padding)
        return (self.x[0], ho, wo, self.cout), pad

    @property
    def w(self):
        return (self.k, self.k, self.x[3], self.cout)

    def flops(self):
        (n, ho, wo, co), _ = self.geometry()
        return 2.0 * n * ho * wo * co * self.k * self.k * self.x[3]


@dataclass
class Pool:
    net: str
    name: str
    kind: str         # "max" | "avg"
    x: tuple
    k: int
    stride: int

    def geometry(self):
        from gpucnn.kernels._geometry import window_2d

        ho, wo, pad = window_2d(self.x[1], self.x[2], self.k, self.k, self.stride, self.stride,
                                "valid")
        return (self.x[0], ho, wo, self.x[3]), pad


def layers(tiny: bool):
    """The conv and pool layers of LeNet-5 (batch 128) and AlexNet (227 x 227 x 3, batch 32),
    read off the zoo's models (``shapes``); tiny stand-ins for the simulator."""
    if tiny:
        return ([Conv("lenet", "C1", (2, 9, 9, 1), 5, 6, 1, "valid", "tanh"),
                 Conv("alexnet", "conv1", (1, 15, 15, 3), 11, 4, 4, "valid", "relu"),
                 Conv("alexnet", "conv2", (1, 5, 5, 4), 5, 6, 1, "same", "relu")],
                [Pool("lenet", "S2", "avg", (2, 5, 5, 6), 2, 2),
                 Pool("alexnet", "pool1", "max", (1, 5, 5, 4), 3, 2)])
    convs, pools = [], []
    for net, key in (("lenet", "lenet5"), ("alexnet", "alexnet")):
        _, batch, rows = shapes.net_table(key)
        for r in rows:
            x = (batch,) + r.hwc
            if r.kind in ("first", "conv"):
                convs.append(Conv(net, r.name, x, r.k, r.filters, r.stride, r.padding,
                                  r.act or "linear"))
            elif r.kind in ("max", "avg"):
                pools.append(Pool(net, r.name, r.kind, x, r.k, r.stride))
    return convs, pools


def _batch(shape, n):
    return (min(shape[0], n),) + tuple(shape[1:])


# --------------------------------------------------------------------------- context

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
    return v


@dataclass
class Ctx:
    tiny: bool
    repeats: int
    warmup: int
    use_torch: bool
    part: str = ""            # the section's part file (JSON), rewritten as rows come in
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
        rows = self.tables.get(name)
        if rows is None:
            rows = self.tables[name] = LiveRows(self)
        return rows

    def fail(self, msg):
        self.failures.append(msg)
        print(f"  FAILURE: {msg}", flush=True)
        self.dump()

    def dump(self):
        if not self.part:
            return
        data = {"info": _jsonable_dict(self.info), "failures": list(self.failures),
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
    def case(self, label):
        """Run a group of cases: an error is a failure of ``label``, and the section goes on
        unless the device is lost."""
        try:
            yield
        except DeviceLost:
            raise
        except Exception as e:  # noqa: BLE001 - report and go on
            self.fail(f"{label}: {type(e).__name__}: {e}")
            self.check_device()

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


def _jsonable_dict(d):
    return {k: _jsonable(v) if not isinstance(v, dict) else _jsonable_dict(v) for k, v in d.items()}


def _setup(args) -> Ctx:
    from gpucnn.kernels import load_set
    from gpucnn.kernels.cuda_set import _launch, _runtime

    ctx = Ctx(tiny=args.tiny, repeats=args.repeats, warmup=args.warmup, use_torch=not args.no_torch,
              part=args.part or "", fault=args.fault or "")
    _launch.STRICT = True        # a kernel falling back to Numba's launcher is a failure here
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
        ctx.cp = _runtime.cp
        ctx.info.update(_device_info(ctx.cp))
    if ctx.use_torch and ctx.gpu:
        try:
            torch = importlib.import_module("torch")
            if not torch.cuda.is_available():
                raise RuntimeError("torch.cuda.is_available() is False")
            torch.backends.cudnn.benchmark = True
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
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
    from gpucnn.kernels.cuda_set import _launch as launch_mod

    sticky = fault.startswith("sticky:")
    prefix = fault.split(":", 1)[1] if sticky else fault
    real = launch_mod.launch

    def launch(spec, grid, block, *args):
        if spec.name.startswith(prefix):
            if sticky:
                Ctx.check_device = _lost
            raise RuntimeError(f"injected fault in {spec.name} (GPUCNN_GPUCHECK_FAULT)")
        return real(spec, grid, block, *args)

    os.environ["GPUCNN_CACHE_FAULT"] = prefix     # read by the cache's compiler processes
    launch_mod.launch = launch
    for mod in list(sys.modules.values()):   # the launchers imported launch by name
        if getattr(mod, "__name__", "").startswith("gpucnn.kernels.cuda_set.") and \
                getattr(mod, "launch", None) is real:
            mod.launch = launch


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


# --------------------------------------------------------------------------- (1) accuracy

def _rel(ctx, got, want):
    got = np.asarray(ctx.host(got), np.float64)
    want = np.asarray(want, np.float64)
    if got.shape != want.shape:
        return math.inf
    nan = np.isnan(want)
    if not np.array_equal(np.isnan(got), nan):
        return math.inf
    if nan.all():
        return 0.0
    return float(np.abs(got[~nan] - want[~nan]).max() / max(np.abs(want[~nan]).max(), 1e-30))


def accuracy_cases(ctx):
    """(label, shape text, contract name, args, tolerance) at realistic sizes (batch cut for the
    CPU reference: 16 for LeNet-5, 4 for AlexNet)."""
    convs, pools = layers(ctx.tiny)
    r = ctx.rand
    out = []
    for c in convs:
        x = _batch(c.x, 16 if c.net == "lenet" else 4)
        cc = Conv(c.net, c.name, x, c.k, c.cout, c.stride, c.padding, c.act)
        ys, pad = cc.geometry()
        st = (c.stride, c.stride)
        tag = f"{c.net} {c.name}"
        shp = f"x{x} w{cc.w}"
        out += [(f"{tag} conv2d_forward (+bias, {c.act})", shp, "conv2d_forward",
                 (r(*x), r(*cc.w, scale=0.1), r(c.cout), st, pad, c.act), FWD_TOL),
                (f"{tag} conv2d_backward_input", shp, "conv2d_backward_input",
                 (r(*ys), r(*cc.w, scale=0.1), x, st, pad), GRAD_TOL),
                (f"{tag} conv2d_backward_weight", shp, "conv2d_backward_weight",
                 (r(*x), r(*ys), cc.w, st, pad), GRAD_TOL),
                (f"{tag} bias_grad", f"dy{ys}", "bias_grad", (r(*ys),), GRAD_TOL)]
    for p in pools:
        x = _batch(p.x, 16 if p.net == "lenet" else 4)
        pp = Pool(p.net, p.name, p.kind, x, p.k, p.stride)
        ys, pad = pp.geometry()
        geo = ((p.k, p.k), (p.stride, p.stride), pad)
        tag, shp = f"{p.net} {p.name}", f"x{x} {p.k}x{p.k}/{p.stride}"
        if p.kind == "max":
            xv = r(*x)
            _, idx = ctx.N.max_pool_forward(xv, *geo)
            out += [(f"{tag} max_pool_forward", shp, "max_pool_forward", (xv, *geo), FWD_TOL),
                    (f"{tag} max_pool_backward", shp, "max_pool_backward", (r(*ys), idx, x),
                     GRAD_TOL)]
        else:
            out += [(f"{tag} avg_pool_forward", shp, "avg_pool_forward", (r(*x), *geo), FWD_TOL),
                    (f"{tag} avg_pool_backward", shp, "avg_pool_backward", (r(*ys), x, *geo),
                     GRAD_TOL)]
    rows, k = (4, 7) if ctx.tiny else (128, 1000)
    e = (3, 5, 7) if ctx.tiny else (32, 55, 55, 96)
    z = r(rows, k, scale=3.0)
    lab = ctx.rng.integers(0, k, rows)
    p = ctx.N.softmax_forward(z)
    for act in ("relu", "tanh", "sigmoid"):
        y = ctx.N.act_forward(r(*e), act)
        out += [(f"act_forward {act}", f"{e}", "act_forward", (r(*e), act), FWD_TOL),
                (f"act_backward {act}", f"{e}", "act_backward", (r(*e), y, act), GRAD_TOL)]
    out += [("softmax_forward", f"({rows}, {k})", "softmax_forward", (z,), FWD_TOL),
            ("softmax_backward", f"({rows}, {k})", "softmax_backward", (r(rows, k), p), GRAD_TOL),
            ("log_softmax_forward", f"({rows}, {k})", "log_softmax_forward", (z,), FWD_TOL),
            ("log_softmax_backward", f"({rows}, {k})", "log_softmax_backward",
             (r(rows, k), ctx.N.log_softmax_forward(z)), GRAD_TOL),
            ("softmax_xent_forward", f"({rows}, {k})", "softmax_xent_forward", (z, lab), FWD_TOL),
            ("softmax_xent_backward", f"({rows}, {k})", "softmax_xent_backward",
             (p, lab, np.full(rows, 1.0 / rows, np.float32)), GRAD_TOL)]
    d = (5, 9) if ctx.tiny else (128, 4096)
    out.append(("dropout_mask (bit-exact)", f"{d} rate 0.5", "dropout_mask",
                (d, 0.5, 1234, 7, np.float32), 0.0))
    n = 50 if ctx.tiny else 1 << 20
    out += [("sgd_update (momentum, nesterov, wd)", f"({n},)", "sgd_update",
             (r(n), r(n), r(n), 0.01, 0.9, True, 1e-4), FWD_TOL),
            ("adam_update (t=3, wd)", f"({n},)", "adam_update",
             (r(n), r(n), r(n, scale=0.1), np.abs(r(n)), 1e-3, 0.9, 0.999, 1e-7, 3, 1e-2),
             FWD_TOL),
            ("rmsprop_update (wd)", f"({n},)", "rmsprop_update",
             (r(n), r(n), np.abs(r(n)), 1e-3, 0.9, 1e-7, 1e-4), FWD_TOL)]
    return out


IN_PLACE = {"sgd_update": (0, 2), "adam_update": (0, 2, 3), "rmsprop_update": (0, 2)}


def _run_case(ctx, fn, args):
    """``(cuda outputs, numpy outputs)`` as tuples of arrays."""
    dev = [ctx.dev(a.copy()) if isinstance(a, np.ndarray) else a for a in args]
    ref = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
    got = getattr(ctx.C, fn)(*dev)
    want = getattr(ctx.N, fn)(*ref)
    if fn in IN_PLACE:
        return tuple(dev[i] for i in IN_PLACE[fn]), tuple(ref[i] for i in IN_PLACE[fn])
    if not isinstance(want, tuple):
        got, want = (got,), (want,)
    return got, want


def check_accuracy(ctx):
    rows = ctx.table("accuracy")
    for label, shape, fn, args, tol in accuracy_cases(ctx):
        lost = None
        try:
            got, want = _run_case(ctx, fn, args)
            ctx.sync()
            if tol == 0.0:
                err = 0.0 if all(np.array_equal(ctx.host(g), w) for g, w in zip(got, want)) \
                    else math.inf
            else:
                err = max(_rel(ctx, g, w) for g, w in zip(got, want) if w.dtype.kind == "f")
                if any(w.dtype.kind in "iu" and not np.array_equal(ctx.host(g), w)
                       for g, w in zip(got, want)):
                    err = math.inf
            verdict = "ok" if err <= tol else ("high" if err <= BUG_TOL else "WRONG")
        except Exception as e:  # noqa: BLE001 - report and go on
            err, verdict = math.nan, f"ERROR {type(e).__name__}: {e}"[:160]
            try:
                ctx.check_device()
            except DeviceLost as d:
                lost = d
        if verdict not in ("ok", "high"):
            ctx.fail(f"accuracy: {label}: {verdict} (rel err {err:.2e})")
        rows.append((label, shape, err, tol, verdict))
        print(f"  [1] {label:48s} rel err {err:.2e} {verdict}", flush=True)
        if lost is not None:
            raise lost
    _launch_path_agreement(ctx, rows)
    return rows


def _launch_path_agreement(ctx, rows):
    """On a GPU: the same calls through CuPy's launcher (raw) and Numba's give identical bits."""
    if not ctx.gpu:
        return
    C = ctx.C
    convs, pools = layers(ctx.tiny)
    c = convs[1]
    ys, pad = c.geometry()
    x, w, b = ctx.dev(ctx.rand(*_batch(c.x, 8))), ctx.dev(ctx.rand(*c.w)), ctx.dev(ctx.rand(c.cout))
    z = ctx.dev(ctx.rand(64, 1000))
    calls = {
        "conv2d_forward": lambda: C.conv2d_forward(x, w, b, (c.stride,) * 2, pad, c.act),
        "conv2d_backward_weight": lambda: C.conv2d_backward_weight(
            x, C.conv2d_forward(x, w, b, (c.stride,) * 2, pad, c.act), c.w, (c.stride,) * 2, pad),
        "softmax_xent_forward": lambda: C.softmax_xent_forward(z, ctx.dev(np.arange(64) % 1000)),
        "dropout_mask": lambda: C.dropout_mask((256, 1000), 0.5, 99, 3, np.float32),
    }
    before = C.launch_path()
    try:
        for name, call in calls.items():
            outs = {}
            try:
                for path in ("raw", "numba"):
                    C.set_launch_path(path)
                    r = call()
                    outs[path] = [ctx.host(a) for a in (r if isinstance(r, tuple) else (r,))]
                same = all(np.array_equal(a, b, equal_nan=True)
                           for a, b in zip(outs["raw"], outs["numba"]))
                verdict = "ok" if same else "WRONG"
            except Exception as e:  # noqa: BLE001 - report and go on
                same, verdict = False, f"ERROR {type(e).__name__}: {e}"[:160]
            if not same:
                ctx.fail(f"launch paths: {name}: {verdict}")
            rows.append((f"raw launch == Numba launch: {name}", "bitwise",
                         0.0 if same else math.nan, 0.0, verdict))
            print(f"  [1] raw vs numba launch {name}: {verdict}", flush=True)
            if not same:
                ctx.check_device()
    finally:
        C.set_launch_path(before)


# --------------------------------------------------------------------------- (2-4) timings

def time_ops(ctx):
    """Rows (net, layer, op, shape, ours ms, GFLOP/s, % peak, torch ms, ratio)."""
    C = ctx.C
    convs, pools = layers(ctx.tiny)
    rows = ctx.table("ops")

    def add(net, layer, op, shape, ours_fn, flops=None, torch_fn=None):
        try:
            ms = ctx.median_ms(ours_fn)
        except Exception as e:  # noqa: BLE001
            ctx.fail(f"timing {net} {layer} {op}: {type(e).__name__}: {e}")
            ms = math.nan
            ctx.check_device()
        tms = math.nan
        if ctx.torch is not None and torch_fn is not None:
            try:
                tms = ctx.torch_ms(torch_fn)
            except Exception as e:  # noqa: BLE001 - a missing torch op is not our failure
                print(f"  [3] torch {net} {layer} {op}: {type(e).__name__}: {e}", flush=True)
        gflops = flops / (ms * 1e6) if flops and ms == ms and ms > 0 else math.nan
        peak = ctx.info.get("fp32_peak_gflops")
        pct = 100.0 * gflops / peak if peak and gflops == gflops else math.nan
        rows.append((net, layer, op, shape, ms, gflops, pct, tms,
                     tms / ms if tms == tms and ms == ms and ms > 0 else math.nan))
        print(f"  [2] {net:8s} {layer:6s} {op:22s} {ms:9.3f} ms"
              + (f"  torch {tms:9.3f} ms" if tms == tms else ""), flush=True)

    for c in convs:
        with ctx.case(f"timing {c.net} {c.name}"):
            _time_conv(ctx, add, c)
    for p in pools:
        with ctx.case(f"timing {p.net} {p.name}"):
            _time_pool(ctx, add, p)
    _time_rows(ctx, add)
    return rows


def _time_conv(ctx, add, c):
    C = ctx.C
    ys, pad = c.geometry()
    st = (c.stride, c.stride)
    x, w, b, dy = (ctx.dev(ctx.rand(*c.x)), ctx.dev(ctx.rand(*c.w, scale=0.1)),
                   ctx.dev(ctx.rand(c.cout)), ctx.dev(ctx.rand(*ys)))
    shape = f"x{c.x} k{c.k} s{c.stride} {c.padding} -> {ys}"
    t = _torch_ops(ctx, torch_ref.gpu_conv_twins, x, w, b, dy, st, pad, c.act, c.cout)
    add(c.net, c.name, f"conv fwd+bias+{c.act}", shape,
        lambda: C.conv2d_forward(x, w, b, st, pad, c.act), c.flops(), t.get("fwd"))
    add(c.net, c.name, "conv bwd input", shape,
        lambda: C.conv2d_backward_input(dy, w, c.x, st, pad), c.flops(), t.get("bwd_input"))
    add(c.net, c.name, "conv bwd weight", shape,
        lambda: C.conv2d_backward_weight(x, dy, c.w, st, pad), c.flops(), t.get("bwd_weight"))
    add(c.net, c.name, "bias grad", f"dy{ys}", lambda: C.bias_grad(dy), None, t.get("bias"))
    calls = ((f"conv fwd+bias+{c.act}", lambda: C.conv2d_forward(x, w, b, st, pad, c.act), "fwd"),
             ("conv bwd input", lambda: C.conv2d_backward_input(dy, w, c.x, st, pad),
              "bwd_input"),
             ("conv bwd weight", lambda: C.conv2d_backward_weight(x, dy, c.w, st, pad),
              "bwd_weight"))
    _time_conv_baseline(ctx, add, c, shape, calls, t)


def _time_conv_baseline(ctx, add, c, shape, calls, t):
    """The rows above again on the baseline conv kernels (``conv.set_conv_kernels``), in the
    same run: the igemm2 kernels' speed-up is the ratio of two rows of one table. Each baseline
    result is checked against igemm2's first (fewer repeats: it is the reference point)."""
    from gpucnn.kernels.cuda_set import conv as cv

    new = {}
    for label, fn, _ in calls:
        try:
            new[label] = ctx.host(fn())
        except Exception as e:  # noqa: BLE001
            ctx.fail(f"{c.net} {c.name} {label} (igemm2): {type(e).__name__}: {e}")
            ctx.check_device()
    before, repeats = cv.set_conv_kernels("baseline"), ctx.repeats
    ctx.repeats = max(5, repeats // 4) if ctx.gpu else repeats
    try:
        for label, fn, key in calls:
            try:
                err = _rel(ctx, fn(), new[label]) if label in new else 0.0
            except Exception as e:  # noqa: BLE001
                err = math.nan
                print(f"  [2] baseline {c.name} {label}: {type(e).__name__}: {e}", flush=True)
                ctx.check_device()
            if not err <= GRAD_TOL:
                ctx.fail(f"{c.net} {c.name} {label}: baseline and igemm2 differ by {err:.2e}")
            add(c.net, c.name, f"{label} [baseline]", shape, fn, c.flops(), t.get(key))
    finally:
        cv.set_conv_kernels(before)
        ctx.repeats = repeats


def _time_pool(ctx, add, p):
    C = ctx.C
    ys, pad = p.geometry()
    geo = ((p.k, p.k), (p.stride, p.stride), pad)
    x, dy = ctx.dev(ctx.rand(*p.x)), ctx.dev(ctx.rand(*ys))
    shape = f"x{p.x} {p.k}x{p.k}/{p.stride}"
    t = _torch_ops(ctx, torch_ref.gpu_pool_twins, p.kind, x, dy, p.k, p.stride)
    if p.kind == "max":
        _, idx = C.max_pool_forward(x, *geo)
        add(p.net, p.name, "max pool fwd", shape, lambda: C.max_pool_forward(x, *geo),
            None, t.get("fwd"))
        add(p.net, p.name, "max pool bwd", shape,
            lambda: C.max_pool_backward(dy, idx, p.x), None, t.get("bwd"))
    else:
        add(p.net, p.name, "avg pool fwd", shape, lambda: C.avg_pool_forward(x, *geo),
            None, t.get("fwd"))
        add(p.net, p.name, "avg pool bwd", shape,
            lambda: C.avg_pool_backward(dy, p.x, *geo), None, t.get("bwd"))


def _time_rows(ctx, add):
    """Softmax, cross-entropy, activations, dropout and optimizers at the networks' sizes."""
    C = ctx.C
    for net, rows_, k in (("lenet", 128, 10), ("alexnet", 32, 1000)):
        if ctx.tiny:
            rows_, k = 2, 5
        with ctx.case(f"timing {net} softmax"):
            z = ctx.dev(ctx.rand(rows_, k))
            lab = ctx.dev(ctx.rng.integers(0, k, rows_))
            loss, p = C.softmax_xent_forward(z, lab)
            g = ctx.dev(np.full(rows_, 1.0 / rows_, np.float32))
            t = _torch_ops(ctx, torch_ref.gpu_softmax_twins, z, lab)
            add(net, "output", "softmax xent fwd", f"({rows_}, {k})",
                lambda: C.softmax_xent_forward(z, lab), None, t.get("xent"))
            add(net, "output", "softmax xent bwd", f"({rows_}, {k})",
                lambda: C.softmax_xent_backward(p, lab, g), None, None)
            add(net, "output", "softmax fwd", f"({rows_}, {k})", lambda: C.softmax_forward(z),
                None, t.get("softmax"))
    e = (2, 5, 5, 4) if ctx.tiny else (32, 55, 55, 96)
    with ctx.case("timing relu"):
        x = ctx.dev(ctx.rand(*e))
        y = C.act_forward(x, "relu")
        t = _torch_ops(ctx, torch_ref.gpu_relu_twins, x, y)
        add("alexnet", "conv1", "relu fwd", f"{e}", lambda: C.act_forward(x, "relu"), None,
            t.get("fwd"))
        add("alexnet", "conv1", "relu bwd", f"{e}", lambda: C.act_backward(x, y, "relu"), None,
            t.get("bwd"))
    d = (2, 16) if ctx.tiny else (128, 4096)
    add("alexnet", "fc6", "dropout mask", f"{d}", lambda: C.dropout_mask(d, 0.5, 1, 2, np.float32),
        None, None)
    n = 64 if ctx.tiny else 9216 * 4096
    with ctx.case("timing optimizer updates"):
        p, g, m, v = (ctx.dev(ctx.rand(n)) for _ in range(4))
        v = abs(v)
        tadam = _torch_ops(ctx, torch_ref.gpu_adam_twin, n).get("step")
        add("alexnet", "fc6", "adam update", f"({n},)",
            lambda: C.adam_update(p, g, m, v, 1e-4, 0.9, 0.999, 1e-7, 10, 0.0), None, tadam)
        add("alexnet", "fc6", "sgd momentum update", f"({n},)",
            lambda: C.sgd_update(p, g, m, 1e-4, 0.9, False, 0.0), None, None)


def _torch_ops(ctx, build, *args) -> dict:
    """``build(torch, *args)`` (``torch_ref.gpu_*``): the PyTorch twins of our calls; {} without
    PyTorch or on failure."""
    if ctx.torch is None:
        return {}
    try:
        return build(ctx.torch, *args)
    except Exception as e:  # noqa: BLE001 - a PyTorch problem only loses the comparison
        print(f"  [3] PyTorch twin {build.__name__}: {type(e).__name__}: {e}", flush=True)
        return {}


def tile_sweep(ctx):
    """The conv tiles of ``conv.CANDIDATE_TILES`` against the default choice, per GEMM mode, on
    the AlexNet layers (checked against the default tile's result, then timed)."""
    from gpucnn.kernels.cuda_set import conv as cv

    convs, _ = layers(ctx.tiny)
    chosen = [c for c in convs if c.net == "alexnet"]
    if not ctx.tiny:
        chosen = [c for c in chosen if c.name in ("conv1", "conv2", "conv4")]
    rows = ctx.table("sweep")
    repeats = ctx.repeats
    ctx.repeats = max(5, repeats // 4) if ctx.gpu else repeats   # extra information: fewer runs
    try:
        for c in chosen:
            _sweep_layer(ctx, cv, c, rows)
    finally:
        ctx.repeats = repeats
    return rows


def _sweep_layer(ctx, cv, c, rows):
    C = ctx.C
    ys, pad = c.geometry()
    st = (c.stride, c.stride)
    x, w, b, dy = (ctx.dev(ctx.rand(*c.x)), ctx.dev(ctx.rand(*c.w, scale=0.1)),
                   ctx.dev(ctx.rand(c.cout)), ctx.dev(ctx.rand(*ys)))
    calls = {cv.FWD: (c.cout, lambda: C.conv2d_forward(x, w, b, st, pad, c.act)),
             cv.BWD_INPUT: (c.x[3], lambda: C.conv2d_backward_input(dy, w, c.x, st, pad)),
             cv.BWD_WEIGHT: (c.cout, lambda: C.conv2d_backward_weight(x, dy, c.w, st, pad))}
    if c.stride > 1 and not ctx.tiny:
        del calls[cv.BWD_INPUT]   # the first layer's input gradient: never needed, very slow
    for mode, (ncols, call) in calls.items():
        default = cv.choose_tile(mode, ncols)
        try:
            want = ctx.host(call())
        except Exception as e:  # noqa: BLE001
            ctx.fail(f"tile sweep {c.name} {cv.MODE_NAMES[mode]}: the default tile failed: "
                     f"{type(e).__name__}: {e}")
            ctx.check_device()
            continue
        base = math.nan
        tiles = (default,) + tuple(t for t in ([] if ctx.tiny else cv.CANDIDATE_TILES[mode])
                                   if t != default)
        for tile in tiles:
            cv.TILE_OVERRIDE = {mode: tile}
            try:
                err = _rel(ctx, call(), want)
                ms = ctx.median_ms(call)
            except Exception as e:  # noqa: BLE001
                err, ms = math.nan, math.nan
                print(f"  [4] tile {tile}: {type(e).__name__}: {e}", flush=True)
                ctx.check_device()
            finally:
                cv.TILE_OVERRIDE = {}
            if tile == default:
                base = ms
            if not err <= GRAD_TOL:
                ctx.fail(f"tile sweep {c.name} {cv.MODE_NAMES[mode]} {tile}: "
                         f"rel err {err:.2e} against the default tile")
            label = "/".join(map(str, tile[:3])) + f" {tile.tm}x{tile.tn} " \
                f"b{tile.min_blocks}" + (" (default)" if tile == default else "")
            gf = c.flops() / (ms * 1e6) if ms == ms and ms > 0 else math.nan
            rows.append((f"{c.net} {c.name}", cv.MODE_NAMES[mode], label, ms, gf,
                         base / ms if ms == ms and ms > 0 else math.nan, err))
            print(f"  [4] {c.name} {cv.MODE_NAMES[mode]:10s} {label:28s} {ms:9.3f} ms",
                  flush=True)


# --------------------------------------------------------------------------- (5) overhead

def launch_overhead(ctx):
    """Per call of a 1-element kernel: host microseconds (calls queued back to back, no sync)
    and device microseconds (``median_ms``: many calls between one event pair), per launch
    path, beside CuPy and PyTorch."""
    C = ctx.C
    calls = 3 if ctx.tiny else 2000
    x = ctx.dev(np.ones(1, np.float32))

    def host_us(fn):
        for _ in range(min(calls, 50)):
            fn()
        ctx.sync()
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        dt = time.perf_counter() - t
        ctx.sync()
        return 1e6 * dt / calls

    rows = ctx.table("overhead")

    def add(label, fn, device_ms=None):
        try:
            host = host_us(fn)
            dev = 1e3 * (device_ms or ctx.median_ms)(fn)
        except Exception as e:  # noqa: BLE001
            ctx.fail(f"launch overhead {label}: {type(e).__name__}: {e}")
            ctx.check_device()
            return
        rows.append((label, host, dev))
        print(f"  [5] {label:48s} host {host:8.1f} us/call, device {dev:8.2f} us/call",
              flush=True)

    paths = ("raw", "numba") if ctx.gpu else (C.launch_path(),)
    before = C.launch_path()
    try:
        for path in paths:
            C.set_launch_path(path)
            add(f"gpucnn act_forward (1 elem), {path} launch path",
                lambda: C.act_forward(x, "tanh"))
    finally:
        C.set_launch_path(before)
    if ctx.gpu:
        add("CuPy cp.tanh (1 elem)", lambda: ctx.cp.tanh(x))
    t = _torch_ops(ctx, torch_ref.gpu_tanh_twin, x)
    if "tanh" in t:
        add("PyTorch torch.tanh (1 elem)", t["tanh"], ctx.torch_ms)
    return rows


# --------------------------------------------------------------------------- (6) end to end

def end_to_end(ctx):
    """LeNet-5 train_on_batch images/s (a tiny CNN with --tiny), beside PyTorch; on the cuda
    set the step is replayed as a CUDA graph after the warm-up (unless GPUCNN_CUDA_GRAPHS=0)."""
    batch = 2 if ctx.tiny else 128
    steps = 1 if ctx.tiny else 30
    rows = ctx.table("e2e")
    import gpucnn
    from gpucnn import optimizers, zoo

    before = gpucnn.get_backend()
    try:
        gpucnn.set_backend("cuda")
        if ctx.tiny:
            name, model = "basic CNN 8x8 (tiny stand-in)", zoo.basic_cnn(
                input_shape=(8, 8, 1), classes=3, filters=2, kernel_size=3, units=4)
            shape, classes = (8, 8, 1), 3
        else:
            name, model, shape, classes = "LeNet-5 32x32x1", zoo.lenet5(), (32, 32, 1), 10
        model.compile(optimizer=optimizers.SGD(learning_rate=0.01),
                      loss="sparse_categorical_crossentropy")
        xh = ctx.rng.random((batch,) + shape).astype(np.float32)
        yh = ctx.rng.integers(0, classes, batch)
        for _ in range(3):      # compiles the kernels; the second step captures the graph
            model.train_on_batch(xh, yh)
        n0 = ctx.C.launch_count()
        t = time.perf_counter()
        for _ in range(steps):
            model.train_on_batch(xh, yh)
        ctx.sync()
        dt = time.perf_counter() - t
        launches = (ctx.C.launch_count() - n0) / steps
        ours = batch * steps / dt
        theirs = math.nan
        if not ctx.tiny:
            theirs = _torch_ops(ctx, torch_ref.gpu_lenet5_images_per_second, batch,
                                steps).get("images/s", math.nan)
        kept = model.__dict__.get("_gpucnn_batch_runner")
        runner = kept[1] if kept else None
        if runner is not None and runner.off is None and runner.captures:
            how = f"one CUDA graph and {launches:.0f} kernel launches per step"
        else:
            off = f"; graphs off: {runner.off}" if runner is not None and runner.off else ""
            how = f"{launches:.0f} gpucnn kernel launches per step (eager{off})"
        rows.append((name, batch, ours, theirs, ours / theirs if theirs == theirs else math.nan,
                     how))
    except Exception as e:  # noqa: BLE001
        ctx.fail(f"end to end: {type(e).__name__}: {e}")
        rows.append(("training step", batch, math.nan, math.nan, math.nan,
                     f"ERROR {type(e).__name__}: {e}"[:200]))
        ctx.check_device()
    finally:
        gpucnn.set_backend(before)
    for r in rows:
        print(f"  [6] {r[0]}: {r[2]:.1f} images/s ({r[5]})", flush=True)
    return rows


# --------------------------------------------------------------------------- sections

EXAMPLES = ("perceptron", "basic_cnn", "lenet5", "alexnet", "autoencoder")
TEST_SELECTION = ("tests/test_ops.py", "tests/test_kernels_cuda.py", "tests/test_graphs.py",
                  "tests/test_optim_kernels.py",
                  "tests/test_models.py::test_cuda_backend_matches_numpy_step_for_step",
                  "tests/test_zoo.py::test_a_zoo_model_gives_the_same_output_on_the_cuda_backend")


def repo_root():
    """The source checkout gpucnn runs from (examples/ and tests/ beside gpucnn/), or None."""
    import gpucnn

    root = os.path.dirname(os.path.dirname(os.path.abspath(gpucnn.__file__)))
    return root if os.path.isdir(os.path.join(root, "examples")) else None


def section_setup(ctx, out_dir):
    """The device and library versions, then every kernel compiled (or found) in the cache by
    several processes at once; its log goes to ``compile.log``."""
    from gpucnn.kernels.cuda_set import _cache, _launch

    rows = ctx.table("setup")
    for k in ("device", "compute_capability", "sms", "clock_mhz", "fp32_peak_gflops",
              "memory_gib", "cuda_driver", "cuda_runtime", "cupy", "numba", "numba_cuda", "nvvm",
              "kernel_cache", "launch_path", "torch"):
        if k in ctx.info:
            rows.append((k, ctx.info[k]))
    rows.append(("python", sys.version.split()[0]))
    rows.append(("numpy", np.__version__))
    cc = _launch.device_cc() if ctx.gpu else (9, 0)
    names = None
    if ctx.tiny:    # the PTX test compiles every kernel; the check's own test needs two
        names = [s.name for s in _launch.all_kernels()[:2]]
    log_path = os.path.join(out_dir, "compile.log")
    with open(log_path, "w", encoding="utf-8") as log:
        res = _cache.fill(cc, names=names, out=log)
    ok = [n for n, (_, _, err) in res.items() if not err]
    built = [res[n][1] for n in ok if res[n][0] == "built"]
    rows.append(("kernels ready", f"{len(ok)} of {len(res)} for sm_{cc[0]}{cc[1]} "
                 f"({len(built)} compiled, {len(ok) - len(built)} from the cache)"))
    if built:
        rows.append(("compile seconds", f"{sum(built):.1f} in all, slowest {max(built):.1f}"))
    for n, (_, _, err) in res.items():
        if err:
            ctx.fail(f"compile {n}: {err}")


def section_accuracy(ctx, out_dir):
    check_accuracy(ctx)


def section_ops(ctx, out_dir):
    time_ops(ctx)
    tile_sweep(ctx)


def section_e2e(ctx, out_dir):
    launch_overhead(ctx)
    end_to_end(ctx)
    fit_steps(ctx)


def fit_steps(ctx):
    """LeNet-5 trained by ``fit`` at batch 32, 128 and 512 with CUDA graphs and without: images
    per second, the host's CPU time per step and the kernel launches per step (the graphed step
    is one graph launch, the update and two input copies); beside them PyTorch training the
    same way, eager and CUDA-graphed."""
    import gpucnn
    from gpucnn import optimizers, zoo
    from gpucnn.parallel import graphed

    rows = ctx.table("fit")
    batches = (2,) if ctx.tiny else (32, 128, 512)
    before = gpucnn.get_backend()
    saved = os.environ.get("GPUCNN_CUDA_GRAPHS")
    try:
        gpucnn.set_backend("cuda")
        for batch in batches:
            for graphs in ("1", "0"):
                with ctx.case(f"fit LeNet-5 batch {batch} graphs={graphs}"):
                    os.environ["GPUCNN_CUDA_GRAPHS"] = graphs
                    steps = 3 if ctx.tiny else max(16, 8192 // batch)
                    if ctx.tiny:
                        model = zoo.basic_cnn(input_shape=(8, 8, 1), classes=3, filters=2,
                                              kernel_size=3, units=4)
                        shape, classes = (8, 8, 1), 3
                    else:
                        model, shape, classes = zoo.lenet5(), (32, 32, 1), 10
                    model.compile(optimizer=optimizers.SGD(learning_rate=0.01),
                                  loss="sparse_categorical_crossentropy")
                    n = batch * steps
                    x = ctx.rng.random((n,) + shape).astype(np.float32)
                    y = ctx.rng.integers(0, classes, n)
                    # the first fit warms up, captures and checks the first replay; the timed
                    # second fit replays the graphs the runner kept (a steady-state epoch)
                    model.fit(x, y, batch_size=batch, epochs=1, verbose=0)
                    ctx.sync()
                    runner = graphed.kept_runner(model)
                    caps0, reps0 = (0, 0) if runner is None else (runner.captures,
                                                                  runner.replays)
                    n0 = ctx.C.launch_count()
                    t0, c0 = time.perf_counter(), time.process_time()
                    model.fit(x, y, batch_size=batch, epochs=1, verbose=0, shuffle=False)
                    ctx.sync()
                    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                    launches = (ctx.C.launch_count() - n0) / steps
                    runner = graphed.kept_runner(model)
                    caps, reps = (0, 0) if runner is None else (runner.captures - caps0,
                                                                runner.replays - reps0)
                    rows.append((f"LeNet-5 fit, {'graphs' if graphs == '1' else 'eager'}", batch,
                                 n / wall, 1e3 * cpu / steps, launches,
                                 f"{caps} captures, {reps} of {steps} steps replayed"))
                    print(f"  [fit] batch {batch} graphs={graphs}: {n / wall:.0f} images/s, "
                          f"{1e3 * cpu / steps:.3f} ms host CPU a step, {launches:.1f} launches, "
                          f"{reps} of {steps} steps replayed from a graph ({caps} captured "
                          "in the timed epoch)", flush=True)
            if ctx.tiny or ctx.torch is None:
                continue
            for graphed_torch in (False, True):
                name = "PyTorch, CUDA graph" if graphed_torch else "PyTorch eager (cuDNN)"
                got = _torch_ops(ctx, torch_ref.gpu_lenet5_fit_images_per_second, batch,
                                 max(16, 8192 // batch), graphed_torch)
                if got:
                    rows.append((name, batch, got["images/s"], got["host ms/step"], math.nan,
                                 "captured before the timing" if graphed_torch else "eager"))
                    print(f"  [fit] batch {batch} {name}: {got['images/s']:.0f} images/s",
                          flush=True)
    finally:
        if saved is None:
            os.environ.pop("GPUCNN_CUDA_GRAPHS", None)
        else:
            os.environ["GPUCNN_CUDA_GRAPHS"] = saved
        gpucnn.set_backend(before)


#: Runs a script or pytest in a process of its own with the section's fault injected first.
_WRAP = ("import os, runpy, sys\n"
         "fault = os.environ.get('GPUCNN_SECTION_FAULT')\n"
         "if fault:\n"
         "    from gpucnn.bench import gpu; gpu.inject_fault(fault)\n"
         "target = sys.argv[1]; sys.argv = sys.argv[1:]\n"
         "if target == '-m':\n"
         "    sys.argv = sys.argv[1:]; runpy.run_module(sys.argv[0], run_name='__main__', "
         "alter_sys=True)\n"
         "else:\n"
         "    sys.path.insert(0, os.path.dirname(os.path.abspath(target)))\n"
         "    runpy.run_path(target, run_name='__main__')\n")


def _run_logged(cmd, log, env, timeout, cwd):
    """Run ``cmd``, its output appended to ``log``; ``(exit status, seconds, last lines)``."""
    log.write(f"\n$ {' '.join(cmd)}\n")
    log.flush()
    t = time.perf_counter()
    try:
        r = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=timeout)
        rc, text = r.returncode, r.stdout
    except subprocess.TimeoutExpired as e:
        rc = "timeout"
        text = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) \
            else (e.stdout or "")
    log.write(text)
    log.flush()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return rc, time.perf_counter() - t, lines


def section_examples(ctx, out_dir):
    """Every example script for one short epoch on the cuda backend (log: examples.log)."""
    import tempfile

    rows = ctx.table("examples")
    root = repo_root()
    if root is None:
        ctx.fail("examples: no examples/ folder beside gpucnn (run from a source checkout)")
        return
    env = dict(os.environ, MPLBACKEND="Agg", GPUCNN_STRICT_LAUNCH="1",
               GPUCNN_SECTION_FAULT=ctx.fault)
    names = ("perceptron",) if ctx.tiny else EXAMPLES
    limit = "8" if ctx.tiny else "512"
    with open(os.path.join(out_dir, "examples.log"), "a", encoding="utf-8") as log, \
            tempfile.TemporaryDirectory() as tmp:
        for name in names:
            cmd = [sys.executable, "-c", _WRAP, os.path.join(root, "examples", f"{name}.py"),
                   "--backend",
                   "cuda", "--epochs", "1", "--limit", limit, "--verbose", "2",
                   "--out", os.path.join(tmp, name)]
            rc, sec, lines = _run_logged(cmd, log, env, 120, root)
            pictures = len(os.listdir(os.path.join(tmp, name))) \
                if os.path.isdir(os.path.join(tmp, name)) else 0
            last = lines[-1] if lines else ""
            if rc == 0:   # the last line with a metric; on failure the last line is the error
                last = next((ln for ln in reversed(lines) if "loss" in ln or "accuracy" in ln),
                            last)
            rows.append((f"examples/{name}.py", rc, sec, pictures, last[:160]))
            print(f"  [ex] {name}: exit {rc} in {sec:.1f} s, {pictures} pictures", flush=True)
            if rc != 0:
                ctx.fail(f"examples/{name}.py exited with {rc}: {last[:200]}")


def section_tests(ctx, out_dir):
    """The test suite's cuda tests on the device (``GPUCNN_TEST_REAL_GPU=1``; log: tests.log)."""
    rows = ctx.table("tests")
    root = repo_root()
    if root is None:
        ctx.fail("tests: no tests/ folder beside gpucnn (run from a source checkout)")
        return
    env = dict(os.environ, GPUCNN_STRICT_LAUNCH="1", GPUCNN_SECTION_FAULT=ctx.fault)
    if ctx.gpu:
        env["GPUCNN_TEST_REAL_GPU"] = "1"
        env.pop("NUMBA_ENABLE_CUDASIM", None)
    selection = list(TEST_SELECTION)
    extra = []
    if ctx.tiny:
        selection, extra = [TEST_SELECTION[0]], ["-k", "cuda and act_forward and relu"]
    cmd = [sys.executable, "-c", _WRAP, "-m", "pytest", "-q", "-p", "no:cacheprovider",
           *selection, *extra]
    with open(os.path.join(out_dir, "tests.log"), "a", encoding="utf-8") as log:
        rc, sec, lines = _run_logged(cmd, log, env, 240, root)
    summary = next((ln for ln in reversed(lines) if " passed" in ln or " failed" in ln
                    or " error" in ln), lines[-1] if lines else "")
    rows.append((" ".join(selection + extra), rc, sec, summary[:200]))
    print(f"  [tests] exit {rc} in {sec:.0f} s: {summary}", flush=True)
    if rc != 0:
        first = next((ln for ln in lines if ln.startswith("E ")), "")
        ctx.fail(f"tests: pytest exited with {rc}: {summary[:200]}; first error: {first[:300]}")


SECTIONS = {"setup": section_setup, "accuracy": section_accuracy, "ops": section_ops,
            "e2e": section_e2e, "examples": section_examples, "tests": section_tests}


def run_section(args) -> int:
    """The body of one section's process: 0 when it found nothing wrong, 1 otherwise, 3 when
    the device was lost."""
    import contextlib

    ctx = _setup(args)
    print(f"gpucheck [{args.section}]: {ctx.info.get('device', '?')}, launch path "
          f"{ctx.C.launch_path()}", flush=True)
    ctx.dump()
    cm = contextlib.nullcontext()
    if args.tiny:
        from gpucnn.kernels.cuda_set import simulate

        cm = simulate.small_launches()
        if not ctx.gpu:
            simulate.lock_shared_arrays()
    try:
        with cm:
            SECTIONS[args.section](ctx, args.out)
    except DeviceLost as e:
        ctx.fail(f"section {args.section} ended early: {e}")
        return 3
    except Exception as e:  # noqa: BLE001 - the section's own code failed: say where
        import traceback

        traceback.print_exc()
        ctx.fail(f"section {args.section} stopped: {type(e).__name__}: {e}")
        return 1
    return 1 if ctx.failures else 0
