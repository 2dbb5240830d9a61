"""The bandwidth section of the GPU check (``python -m gpucnn.gpucheck``): each memory-bound
kernel of ``membound.cases`` (LeNet-5 and AlexNet at batch 128) timed with CUDA events, its
floor bytes (each input read once, each output written once) over its time as bytes per second,
against the device's measured bandwidth: a device-to-device copy (``cudaMemcpyAsync`` through
CuPy) of 2 x 256 MB. PyTorch's counterpart, where it has one, is timed on the same arrays and
reported the same way. A case whose floor is under twice the L2 cache is marked: its data can
stay in L2 between repeats, so its figure is not HBM bandwidth.
"""
from __future__ import annotations

import math

import numpy as np

from gpucnn.bench import membound
from gpucnn.bench.check_context import ratio

#: Floats in each buffer of the copy that measures the device's bandwidth (256 MB).
COPY_FLOATS = 64 * 2**20


def _alloc(ctx):
    def alloc(shape, kind):
        if isinstance(kind, tuple):
            return ctx.dev(ctx.rng.integers(0, kind[1], shape))
        if ctx.gpu:
            a = ctx.cp.random.standard_normal(shape, dtype=np.float32)
        else:
            a = ctx.dev(ctx.rand(*shape))
        return abs(a) if kind == "positive" else a
    return alloc


def copy_bandwidth(ctx) -> float:
    """Bytes per second of a device-to-device copy (read + write counted)."""
    n = 1024 if ctx.tiny else COPY_FLOATS
    a = ctx.dev(ctx.rand(n))
    b = ctx.dev(np.empty(n, np.float32))
    if ctx.gpu:
        fn = lambda: b.data.copy_from_device_async(a.data, a.nbytes)  # noqa: E731
    else:
        fn = lambda: np.copyto(b, a)  # noqa: E731
    return 2 * a.nbytes / (ctx.median_ms(fn) * 1e-3)


def check_bandwidth(ctx, batch=128):
    rows = ctx.table("bandwidth")
    copy = copy_bandwidth(ctx)
    l2 = int(ctx.cp.cuda.Device().attributes["L2CacheSize"]) if ctx.gpu else 0
    size = f"2 x {4 * (1024 if ctx.tiny else COPY_FLOATS) / 1e6:.0f} MB"
    rows.append(("device", "copy", "device-to-device copy", size,
                 None, None, copy / 1e9, 100.0, None, None, None, "the reference"))
    for case in membound.cases(ctx.tiny, batch):
        with ctx.case(f"bandwidth {case.net} {case.layer} {case.op}"):
            _time(ctx, rows, case, copy, l2)
    return rows


def _time(ctx, rows, case, copy, l2):
    call, arrays = case.setup(ctx.C, _alloc(ctx))
    ms = ctx.median_ms(call)
    tms = math.nan if case.torch is None else ctx.torch_try(
        f"[bw] torch {case.op}", lambda: ctx.torch_ms(case.torch(ctx.torch, {
            k: ctx.torch.from_dlpack(v) if hasattr(v, "__dlpack__") else v
            for k, v in arrays.items()})))
    gbs = case.floor / (ms * 1e-3) / 1e9
    tgbs = ratio(case.floor, tms * 1e-3) / 1e9
    note = "fits in L2: not an HBM figure" if case.floor < 2 * l2 else ""
    rows.append((case.net, case.layer, case.op, case.shape, case.floor / 1e6, ms, gbs,
                 100.0 * gbs * 1e9 / copy, tms, 100.0 * tgbs * 1e9 / copy, ratio(tms, ms), note))
    print(f"  [bw] {case.net:8s} {case.layer:10s} {case.op:28s} {ms:9.4f} ms "
          f"{gbs:8.1f} GB/s" + (f"  torch {tms:9.4f} ms" if tms == tms else ""), flush=True)
