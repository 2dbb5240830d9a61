"""The e2e section of the GPU check (``python -m gpucnn.gpucheck``): host and device time per
launch (raw path, Numba's path, CuPy, PyTorch), a LeNet-5 training step in images/s beside
PyTorch with launches per step, and LeNet-5 through ``fit`` with CUDA graphs and without.
"""
from __future__ import annotations

import math
import os
import time

import numpy as np

from gpucnn.bench import torch_ref
from gpucnn.bench.check_context import torch_twins

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
    t = torch_twins(ctx, torch_ref.gpu_tanh_twin, x)
    if "tanh" in t:
        add("PyTorch torch.tanh (1 elem)", t["tanh"], ctx.torch_ms)
    return rows


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
            theirs = torch_twins(ctx, torch_ref.gpu_lenet5_images_per_second, batch,
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
                got = torch_twins(ctx, torch_ref.gpu_lenet5_fit_images_per_second, batch,
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

