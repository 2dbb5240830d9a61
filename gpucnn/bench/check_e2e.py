"""The e2e and alexnet sections of the GPU check (``python -m gpucnn.gpucheck``): host and device
time per launch (raw path, Numba's path, CuPy, PyTorch), LeNet-5 through ``fit`` with CUDA graphs
and without beside PyTorch eager and graphed (``fit_steps``), and the guide's AlexNet through
``fit`` beside PyTorch with the time to its first step (``alexnet``).
"""
from __future__ import annotations

import gc
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from unittest import mock

import numpy as np

from gpucnn.bench import torch_ref
from gpucnn.bench.check_context import ratio, tiny_launches, torch_twins


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
        got = ctx.attempt(f"launch overhead {label}",
                          lambda: (host_us(fn), 1e3 * (device_ms or ctx.median_ms)(fn)),
                          default=None)
        if got is None:
            return
        host, dev = got
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
    t = torch_twins(ctx, torch_ref.gpu_tanh_twin, x)
    if "tanh" in t:
        add("PyTorch torch.tanh (1 elem)", t["tanh"], ctx.torch_ms)
    return rows


#: The issue-22 targets of gpucnn's ``fit`` (graphed, its default) on LeNet-5: images/s at least
#: these multiples of PyTorch eager's and of PyTorch CUDA-graphed's.
FIT_TARGETS = {"eager": 2.0, "graphed": 1.0}
#: AlexNet at 227 x 227: gpucnn's images/s at least these multiples of PyTorch's in fp32 (cuDNN,
#: TF32 off), by gpucnn's precision; peak device memory at most PyTorch's.
ALEXNET_TARGETS = {"fp32": 0.6, "TF32": 1.0}


def _verdict(ratio, want, what):
    if ratio != ratio:
        return f"{what}: no PyTorch figure"
    return f"{what} >= {want:g}x: {'met' if ratio >= want else 'NOT met'}"


def _timed_fit(ctx, model, x, y, batch):
    """Two ``fit`` calls as a user makes them: the first on two batches (kernels loaded, the
    step captured as a graph and its first replay checked where graphs run), then the timed
    epoch over ``x, y`` (a steady state: the kept graphs replayed). ``(images/s, host CPU ms
    per step, launches per step, captures, replays, steps)`` of the timed epoch; the launches
    are gpucnn's (a graph launch counts as none)."""
    from gpucnn.parallel import graphed

    steps = x.shape[0] // batch
    model.fit(x[:2 * batch], y[:2 * batch], batch_size=batch, epochs=1, verbose=0)
    ctx.sync()
    runner = graphed.kept_runner(model)
    caps0, reps0 = (0, 0) if runner is None else (runner.captures, runner.replays)
    n0 = ctx.C.launch_count()
    t0, c0 = time.perf_counter(), time.process_time()
    model.fit(x, y, batch_size=batch, epochs=1, verbose=0, shuffle=False)
    ctx.sync()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    runner = graphed.kept_runner(model)
    caps, reps = (0, 0) if runner is None else (runner.captures - caps0, runner.replays - reps0)
    return (steps * batch / wall, 1e3 * cpu / steps, (ctx.C.launch_count() - n0) / steps, caps,
            reps, steps)


def fit_steps(ctx):
    """LeNet-5 trained by ``fit`` at batch 32, 128 and 512 with CUDA graphs and without: images
    per second, the host's CPU time per step and the kernel launches per step (the graphed step
    is one graph launch, the update and two input copies); beside them PyTorch training the
    same epoch from pinned host memory, eager and CUDA-graphed, measured first, and gpucnn's
    ratios to both with the verdicts of ``FIT_TARGETS`` on its graphed row."""
    import gpucnn
    from gpucnn import optimizers, zoo

    rows = ctx.table("fit")
    batches = (2,) if ctx.tiny else (32, 128, 512)
    before = gpucnn.get_backend()
    try:
        gpucnn.set_backend("cuda")
        for batch in batches:
            steps = 3 if ctx.tiny else max(16, 8192 // batch)
            theirs = {}
            for how in () if ctx.tiny else ("eager", "graphed"):
                got = torch_twins(ctx, torch_ref.gpu_lenet5_fit, batch, steps, how == "graphed")
                if got:
                    theirs[how] = got["images/s"]
                    rows.append(("PyTorch, CUDA graph" if how == "graphed" else
                                 "PyTorch eager (cuDNN)", batch, got["images/s"],
                                 got["host ms/step"], math.nan, math.nan, math.nan, "—",
                                 "captured before the timing" if how == "graphed" else "eager"))
                    print(f"  [fit] batch {batch} PyTorch {how}: {got['images/s']:.0f} "
                          "images/s", flush=True)
            for graphs in ("1", "0"):
                with ctx.case(f"fit LeNet-5 batch {batch} graphs={graphs}"), \
                        mock.patch.dict(os.environ, GPUCNN_CUDA_GRAPHS=graphs):
                    if ctx.tiny:
                        model = zoo.basic_cnn(input_shape=(8, 8, 1), classes=3, filters=2,
                                              kernel_size=3, units=4)
                        shape, classes = (8, 8, 1), 3
                    else:
                        model, shape, classes = zoo.lenet5(), (32, 32, 1), 10
                    model.compile(optimizer=optimizers.SGD(learning_rate=0.01),
                                  loss="sparse_categorical_crossentropy")
                    x = ctx.rng.random((batch * steps,) + shape).astype(np.float32)
                    y = ctx.rng.integers(0, classes, batch * steps)
                    ips, cpu, launches, caps, reps, _ = _timed_fit(ctx, model, x, y, batch)
                    ratios = {how: ratio(ips, theirs.get(how, math.nan)) for how in FIT_TARGETS}
                    verdict = "; ".join(_verdict(ratios[how], want, f"PyTorch {how}")
                                        for how, want in FIT_TARGETS.items())
                    rows.append((f"LeNet-5 fit, {'graphs' if graphs == '1' else 'eager'}", batch,
                                 ips, cpu, launches, ratios["eager"], ratios["graphed"],
                                 verdict if graphs == "1" else "—",
                                 f"{caps} captures, {reps} of {steps} steps replayed"))
                    print(f"  [fit] batch {batch} graphs={graphs}: {ips:.0f} images/s, "
                          f"{cpu:.3f} ms host CPU a step, {launches:.1f} launches, {reps} of "
                          f"{steps} steps replayed from a graph ({caps} captured in the timed "
                          f"epoch); {verdict}", flush=True)
    finally:
        gpucnn.set_backend(before)


def alexnet_model(tiny):
    """``(model, input shape, classes)``: the check's AlexNet, the guide's (227 x 227 x 3, 1,000
    classes, 62,378,344 parameters) or with ``tiny`` a 15 x 15 stand-in for the simulator;
    compiled with SGD (momentum 0.9) and sparse cross-entropy, as the PyTorch twin trains."""
    from gpucnn import optimizers, zoo

    if tiny:
        shape, classes = (15, 15, 3), 3
        model = zoo.alexnet(shape, classes, width=0.02, dense_units=4)
    else:
        shape, classes = (227, 227, 3), 1000
        model = zoo.alexnet(shape, classes)
    model.compile(optimizer=optimizers.SGD(learning_rate=0.01, momentum=0.9),
                  loss="sparse_categorical_crossentropy")
    return model, shape, classes


def _device_bytes(ctx, model):
    """What CuPy's default pool holds plus the memory pools of the model's kept graphs (NaN in
    the simulator)."""
    if not ctx.gpu:
        return math.nan
    from gpucnn.parallel import graphed

    runner = None if model is None else graphed.kept_runner(model)
    graphs = [] if runner is None else list(runner.graphs.values())
    return (ctx.cp.get_default_memory_pool().total_bytes()
            + sum(g.graph.pool.total_bytes() for g in graphs))


def alexnet(ctx):
    """AlexNet at the guide's size trained by ``fit`` at batch 128 beside PyTorch (the same
    network, SGD with momentum, eager), in fp32 on both sides, then with TF32 on both
    (``set_float32_matmul_precision('high')``, PyTorch's ``allow_tf32``): images per second,
    peak device memory and the ``ALEXNET_TARGETS`` verdicts; then the time to the first step in
    fresh processes (``first_step_rows``). The data are random images made once, on the device
    for both sides, so that host copies are not timed."""
    import gpucnn
    from gpucnn.kernels import _precision
    from gpucnn.parallel import graphed

    rows = ctx.table("alexnet")
    batch, steps = (2, 1) if ctx.tiny else (128, 12)
    before = gpucnn.get_backend()
    try:
        gpucnn.set_backend("cuda")
        _, shape, classes = alexnet_model(ctx.tiny)
        n = batch * steps
        x = ctx.cp.random.random((n,) + shape, dtype=np.float32) if ctx.gpu else \
            ctx.dev(ctx.rng.random((n,) + shape, dtype=np.float32))
        labels = ctx.rng.integers(0, classes, n)
        y = ctx.dev(labels)
        ref = {}
        for prec in ALEXNET_TARGETS:
            theirs = torch_twins(ctx, torch_ref.gpu_alexnet_fit, x, y, batch, prec == "TF32")
            if theirs:
                ref[prec] = theirs["images/s"]
                ctx.torch.cuda.empty_cache()
                rows.append(("PyTorch (cuDNN)", prec, theirs["images/s"],
                             1e3 * batch / theirs["images/s"], theirs["peak MiB"],
                             ratio(theirs["images/s"], ref.get("fp32", math.nan)), math.nan, "—",
                             f"eager; max_memory_allocated (reserved "
                             f"{theirs['reserved MiB']:.0f} MiB)"))
            with ctx.case(f"AlexNet fit {prec}"), \
                    _precision.float32_matmul_precision("high" if prec == "TF32" else "highest"):
                gc.collect()
                if ctx.gpu:
                    ctx.cp.get_default_memory_pool().free_all_blocks()
                base = _device_bytes(ctx, None)
                model = alexnet_model(ctx.tiny)[0]
                ips, _, launches, caps, reps, _ = _timed_fit(ctx, model, x, labels, batch)
                mib = (_device_bytes(ctx, model) - base) / 2**20
                speed = ratio(ips, ref.get("fp32", math.nan))
                memory = ratio(mib, theirs.get("peak MiB", math.nan))
                verdict = (_verdict(speed, ALEXNET_TARGETS[prec], "images/s vs PyTorch fp32")
                           + "; " + ("memory: no PyTorch figure" if memory != memory else
                                     f"memory <= 1x: {'met' if memory <= 1 else 'NOT met'}"))
                off = getattr(graphed.kept_runner(model), "off", None)
                rows.append(("gpucnn fit", prec, ips, 1e3 * batch / ips, mib, speed, memory,
                             verdict, f"{launches:.0f} launches per step, {reps} of {steps} "
                             f"steps replayed" + (f" (graphs off: {off})" if off else "")))
                print(f"  [alexnet] {prec}: {ips:.1f} images/s, {mib:.0f} MiB; {verdict}",
                      flush=True)
                del model
    finally:
        gpucnn.set_backend(before)
    first_step_rows(ctx)


#: Seconds each first-step process may take (the cold one compiles AlexNet's kernels).
FIRST_STEP_LIMITS = {"warm": 90, "cold": 150, "torch": 90}


def first_step_rows(ctx):
    """Seconds from starting a fresh process to the end of its first AlexNet training step
    (imports, CUDA context, the model built, data made on the host, the step, its loss read):
    gpucnn with the kernel cache the setup section filled (warm) and with an empty one (cold:
    the process compiles every kernel the step needs), and PyTorch (cuDNN picks its algorithms
    in every new process; there is no cache to warm)."""
    rows = ctx.table("first_step")
    runs = [("gpucnn fit", "warm"), ("gpucnn fit", "cold")]
    if ctx.torch is not None:
        runs.append(("PyTorch", "torch"))
    for label, kind in runs:
        with ctx.case(f"AlexNet first step, {label} ({kind})"), \
                tempfile.TemporaryDirectory(prefix="gpucheck-cold-") as empty:
            env = dict(os.environ)
            if kind == "cold":
                env["GPUCNN_CACHE_DIR"] = empty
            cmd = [sys.executable, "-m", "gpucnn.bench.check_e2e", "--first-step",
                   "torch" if kind == "torch" else "gpucnn"] + (["--tiny"] if ctx.tiny else [])
            limit = FIRST_STEP_LIMITS[kind] * (4 if ctx.tiny else 1)
            t0 = time.time()
            try:
                r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=limit)
            except subprocess.TimeoutExpired:
                rows.append((label, kind, math.nan, f"not done in {limit} s (stopped)"))
                ctx.fail(f"AlexNet first step, {label} ({kind}): not done in {limit} s")
                continue
            if r.returncode != 0:
                raise RuntimeError(f"exit {r.returncode}: {(r.stderr or r.stdout)[-400:]}")
            secs = json.loads(r.stdout.strip().splitlines()[-1])["end"] - t0
            cache = {"warm": "the cache setup filled", "cold": "an empty cache (compiles)",
                     "torch": "no kernel cache (cuDNN's autotuner in every process)"}[kind]
            rows.append((label, kind, secs, cache))
            print(f"  [alexnet] first step, {label} ({kind}): {secs:.1f} s", flush=True)


def _first_step(side, tiny):
    """The body of a first-step process (``first_step_rows``): one AlexNet training step at the
    check's batch; prints the wall-clock time at its end as JSON."""
    rng = np.random.default_rng(0)
    if side == "torch":
        torch = torch_ref.setup("cuda", 1)
        x = torch.from_numpy(rng.random((128, 227, 227, 3), dtype=np.float32)).cuda()
        y = torch.from_numpy(rng.integers(0, 1000, 128)).cuda()
        net = torch_ref.alexnet(torch).cuda().to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        loss = torch.nn.functional.cross_entropy(net(x.permute(0, 3, 1, 2)), y)
        loss.backward()
        opt.step()
        float(loss)
    else:
        import gpucnn

        gpucnn.set_backend("cuda")
        # as the sections run in the simulator (bench/gpu.py)
        with tiny_launches(tiny, os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"):
            model, shape, classes = alexnet_model(tiny)
            batch = 2 if tiny else 128
            x = rng.random((batch,) + shape, dtype=np.float32)
            model.fit(x, rng.integers(0, classes, batch), batch_size=batch, epochs=1, verbose=0)
    print(json.dumps({"end": time.time()}), flush=True)


if __name__ == "__main__":
    if len(sys.argv) in (3, 4) and sys.argv[1] == "--first-step" and \
            sys.argv[2] in ("gpucnn", "torch") and sys.argv[3:] in ([], ["--tiny"]):
        _first_step(sys.argv[2], len(sys.argv) == 4)
    else:
        sys.exit("usage: python -m gpucnn.bench.check_e2e --first-step gpucnn|torch [--tiny]")
