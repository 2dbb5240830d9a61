"""End-to-end timings: training steps through ``Model.fit``, inference through ``Model.predict``,
the per-step time at batch 1, and the peak memory of training; PyTorch beside each.

gpucnn's side is exactly what a user runs: ``model.fit(x, y, batch_size, epochs=1, verbose=0)``
over ``steps`` batches (which includes the per-epoch shuffle and the loss read back each step),
``model.predict(x, batch_size)``. PyTorch's side is the loop its users write (shuffle with
``randperm``, slice, ``zero_grad``, forward, loss, ``backward``, ``step``, ``loss.item()``), in
eval mode under ``no_grad`` for inference. Both report seconds per step (per batch).

Peak memory (host): each side trains a few steps in a fresh process and reports the growth of
its resident set over them (``VmHWM`` after resetting it through ``/proc/self/clear_refs``, minus
the resident set before the first step) -- for gpucnn plus the growth each of its worker
processes reports (``gpucnn.parallel.forked``: its peak resident set less the one it started
with) -- and for gpucnn also the peak of the calling process's NumPy allocations under
``tracemalloc``. On a GPU: CuPy's memory pool after a step (it keeps every block it
allocated) and PyTorch's ``max_memory_allocated``.

Run as ``python -m gpucnn.bench.e2e --memory MODEL BATCH SIDE THREADS BACKEND`` it prints the
memory measurement of one side as JSON (the benchmark starts it that way).
"""
from __future__ import annotations

import gc
import json
import math
import subprocess
import sys
import tracemalloc
from dataclasses import dataclass, field

import numpy as np

from gpucnn.bench import _timing, shapes, torch_ref

MODELS = {
    # name: (input shape, optimizer, loss, accuracy metric); built by shapes.NETWORKS
    "lenet5": ((32, 32, 1), "sgd", "sparse", True),
    "alexnet_small": ((32, 32, 3), "sgd_momentum", "sparse", True),
    "autoencoder": ((28, 28, 1), "adam", "mse", False),
}
LABELS = {name: shapes.NETWORKS[name][0] for name in MODELS}


@dataclass
class E2ECase:
    model: str              # a key of MODELS
    kind: str               # "train", "predict" or "overhead" (training at batch 1)
    batch: int
    steps: int              # batches per timed call
    target: float = None    # the speed ratio gpucnn / PyTorch to reach (NumPy backend)
    flops: float = 0.0      # per step
    results: dict = field(default_factory=dict)    # side -> seconds per step
    memory: dict = field(default_factory=dict)     # side -> {"rss": bytes, "traced": bytes}

    @property
    def label(self) -> str:
        what = {"train": "training", "predict": "inference",
                "overhead": "per-step overhead (training)"}[self.kind]
        return f"{LABELS[self.model]} {what}"


def default_cases(quick: bool):
    if quick:
        return [E2ECase("lenet5", "train", 4, 2, 1.5), E2ECase("alexnet_small", "train", 4, 2, 1.0),
                E2ECase("autoencoder", "train", 4, 2, 1.0), E2ECase("lenet5", "predict", 8, 2),
                E2ECase("lenet5", "overhead", 1, 3, 1.0)]
    # steps per timed fit call: an epoch of 16384 LeNet-5 / 2048 AlexNet-small / 8192 autoencoder
    # images, so that fit's per-call work (checks, shuffle, starting the worker processes: 15-25
    # ms measured) weighs about what it weighs in a real epoch (MNIST: 60000 images)
    return [E2ECase("lenet5", "train", 32, 512, 1.5), E2ECase("lenet5", "train", 128, 128, 1.5),
            E2ECase("lenet5", "train", 512, 32, 1.2), E2ECase("alexnet_small", "train", 128, 16, 1.0),
            E2ECase("autoencoder", "train", 128, 64, 1.0), E2ECase("lenet5", "predict", 512, 16),
            E2ECase("lenet5", "overhead", 1, 400, 1.0)]


# ------------------------------------------------------------------------------------- gpucnn
def gpucnn_model(name):
    from gpucnn import optimizers

    _, opt, loss, acc = MODELS[name]
    model = shapes.NETWORKS[name][2]()
    optimizer = {"sgd": lambda: optimizers.SGD(learning_rate=0.01),
                 "sgd_momentum": lambda: optimizers.SGD(learning_rate=0.01, momentum=0.9),
                 "adam": lambda: optimizers.Adam(learning_rate=1e-3)}[opt]()
    model.compile(optimizer=optimizer,
                  loss="sparse_categorical_crossentropy" if loss == "sparse" else "mse",
                  metrics=["accuracy"] if acc else None)
    return model


def data(name, n, seed=0):
    """Random images in [0, 1) and their targets (labels, or the images for the autoencoder)."""
    shape, _, loss, _ = MODELS[name]
    rng = np.random.default_rng(seed)
    x = rng.random((n,) + shape, dtype=np.float32)
    y = x if loss == "mse" else rng.integers(0, 10, n).astype(np.int64)
    return x, y


def model_flops(model, batch: int, train: bool) -> float:
    """FLOPs of one step (multiply-adds count 2) in the convolutions and dense layers: the
    forward pass, and for training the input gradient (all but the first layer) and the kernel
    gradient. Pooling, activations and the loss add well under 1% on these networks."""
    from gpucnn import layers

    total, first = 0.0, True
    for layer in model.layers:
        kernel = getattr(layer, "kernel", None)
        if kernel is None:
            continue
        if isinstance(layer, layers.Conv2D):
            per = 2.0 * math.prod(layer.output_shape[1:3]) * kernel.size
        elif isinstance(layer, layers.Conv2DTranspose):
            per = 2.0 * math.prod(layer.input_shape[1:3]) * kernel.size
        else:
            per = 2.0 * kernel.size
        passes = 1                            # forward
        if train:
            passes += 1 if first else 2       # kernel gradient, and the input gradient
        total += per * batch * passes
        first = False
    return total


def gpucnn_side(case):
    """``(run, model)``: ``run()`` does ``case.steps`` steps through fit or predict."""
    model = gpucnn_model(case.model)
    x, y = data(case.model, case.batch * case.steps)
    if case.kind == "predict":
        return (lambda: model.predict(x, batch_size=case.batch, verbose=0)), model
    return (lambda: model.fit(x, y, batch_size=case.batch, epochs=1, verbose=0)), model


def torch_side(tr, case):
    _, opt, loss, acc = MODELS[case.model]
    torch = tr.torch
    torch.manual_seed(0)
    net = {"lenet5": lambda: torch_ref.lenet5(torch),
           "alexnet_small": lambda: torch_ref.alexnet(torch, 32, 10, width=0.25, dense_units=256,
                                                      stem="small"),
           "autoencoder": lambda: torch_ref.autoencoder(torch)}[case.model]()
    x, y = data(case.model, case.batch * case.steps)
    trainer = torch_ref.Trainer(torch, net, x, y, case.batch, opt, loss, tr.device, acc)
    if case.kind == "predict":
        return lambda: trainer.predict(case.batch)
    return trainer.epoch


def run(e2e_cases, tr, gpucnn_sync, warmup, repeats, gap=0.05):
    """Time every case, interleaved; fills ``results`` (seconds per step) and ``flops``."""
    for case in e2e_cases:
        g_run, model = gpucnn_side(case)
        sides = [_timing.Side("gpucnn", g_run, gpucnn_sync)]
        if tr is not None:
            sides.append(_timing.Side("torch", torch_side(tr, case), tr.sync))
        _timing.interleaved(sides, warmup, repeats, per_call=case.steps, gap=gap)
        case.results = {s.name: s.median for s in sides}
        case.flops = model_flops(model, case.batch, case.kind != "predict")
    return e2e_cases


# ------------------------------------------------------------------------------------- memory
def _status_kb(field_name):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise KeyError(field_name)


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure_memory_here(model_name, batch, side, threads, backend_name, steps=3):
    """The memory of ``steps`` training steps of one side, in this process (see the module
    docstring); a dict of byte counts."""
    case = E2ECase(model_name, "train", batch, steps)
    if side == "gpucnn":
        import gpucnn
        from gpucnn import backend

        gpucnn.set_backend(backend_name)
        if backend.has("threads"):
            backend.kernels().set_num_threads(threads)
        run, model = gpucnn_side(case)
    else:
        torch = torch_ref.setup("cpu", threads)
        tr = torch_ref.TorchSide(torch, "cpu")
        run = torch_side(tr, case)
    gc.collect()
    reset = _reset_peak()
    rss0 = _status_kb("VmRSS")
    run()
    out = {"rss": (_status_kb("VmHWM") - rss0) * 1024, "hwm_reset": reset}
    if side == "gpucnn":
        from gpucnn.parallel import forked

        model._stop_workers()                 # the workers report their growth as they end
        workers = [g for g in forked.last_growth if g >= 0]
        out["workers"] = len(workers)
        out["rss"] += sum(workers)            # the worker processes' own growth
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        run()
        out["traced"] = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
    return out


def memory(e2e_cases, tr, backend_name, threads, env=None):
    """Peak memory of each training case (host: a fresh process per side; GPU: in process)."""
    for case in e2e_cases:
        if case.kind != "train":
            continue
        sides = ["gpucnn"] + (["torch"] if tr is not None else [])
        for side in sides:
            if backend_name == "cuda":
                case.memory[side] = _gpu_memory(case, side, tr)
                continue
            cmd = [sys.executable, "-m", "gpucnn.bench.e2e", "--memory", case.model,
                   str(case.batch), side, str(threads), backend_name]
            res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
            if res.returncode != 0:
                raise RuntimeError(f"memory measurement failed ({' '.join(cmd)}):\n{res.stderr}")
            case.memory[side] = json.loads(res.stdout.strip().splitlines()[-1])
    return e2e_cases


def _gpu_memory(case, side, tr):
    if side == "gpucnn":
        from gpucnn import backend

        cupy = backend.xp()
        pool = cupy.get_default_memory_pool()
        run, _ = gpucnn_side(E2ECase(case.model, "train", case.batch, 3))
        cupy.cuda.Device().synchronize()
        pool.free_all_blocks()
        before = pool.total_bytes()
        run()
        cupy.cuda.Device().synchronize()
        return {"rss": pool.total_bytes() - before, "hwm_reset": True}
    torch = tr.torch
    run = torch_side(tr, E2ECase(case.model, "train", case.batch, 3))
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    run()
    torch.cuda.synchronize()
    return {"rss": torch.cuda.max_memory_allocated() - before, "hwm_reset": True}



if __name__ == "__main__":
    if len(sys.argv) == 7 and sys.argv[1] == "--memory":
        _, _, m, b, s, t, bk = sys.argv
        print(json.dumps(measure_memory_here(m, int(b), s, int(t), bk)))
    else:
        sys.exit("usage: python -m gpucnn.bench.e2e --memory MODEL BATCH SIDE THREADS BACKEND")
