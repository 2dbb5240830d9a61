"""The prepared check of ``gpucnn.distributed`` for a machine with GPUs; run it under MPI::

    mpiexec -n 2 python -m gpucnn.distributed.check [--out results.md]

One rank per GPU. It prints (rank 0) a Markdown report of:

1. the NCCL sum (allreduce) of 61,706 float32 (LeNet-5's gradients) and of 62,378,344 float32
   (AlexNet's): median milliseconds and the bus bandwidth ``2 (R - 1) / R * bytes / time``;
2. LeNet-5 trained on R GPUs against the same training on one GPU (rank 0 alone, afterwards):
   the largest difference of the weights (they should agree to about 1e-6);
3. AlexNet (227 x 227 x 3, ``--per-gpu`` images per GPU per step) training images per second on
   one GPU and on R GPUs, and the scaling efficiency.

``--backend numpy --quick`` runs the same steps on the CPU with tiny sizes (the sums then go
through MPI), which checks the script itself on a machine without GPUs.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

import gpucnn
from gpucnn import distributed, optimizers, zoo

LENET_PARAMS = 61_706
ALEXNET_PARAMS = 62_378_344


def _sync():
    if gpucnn.get_backend() == "cuda" and gpucnn.backend.xp().__name__ == "cupy":
        distributed._gpus().synchronize()


def _timed(fn, warmup: int, repeats: int) -> float:
    """Median seconds of ``fn()`` (after ``warmup`` calls), the device synchronised."""
    for _ in range(warmup):
        fn()
    _sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def allreduce_rows(sizes, repeats):
    """``[(floats, ms, GB/s)]``: the in-place sum over the ranks of float32 arrays."""
    g = distributed._group()
    xp = gpucnn.backend.xp()
    rows = []
    for n in sizes:
        a = xp.ones(n, dtype=np.float32)
        g.barrier("check: before the allreduce timing")
        t = _timed(lambda: g.allreduce_(a, f"check: allreduce of {n:,} float32"), 3, repeats)
        moved = 2 * (g.size - 1) / g.size * a.nbytes
        rows.append((n, t * 1e3, moved / t / 1e9))
    return rows


def _lenet_run(x, y, batch):
    gpucnn.manual_seed(0)
    model = zoo.lenet5()
    model.compile(optimizers.SGD(0.05, momentum=0.9), "sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=batch, epochs=1, verbose=0)
    return model.get_weights()


def _alexnet_rate(per_step, steps, quick):
    """Training images per second of AlexNet at ``per_step`` images a step (global batch)."""
    gpucnn.manual_seed(0)
    shape = (32, 32, 3) if quick else (227, 227, 3)
    model = zoo.alexnet(input_shape=shape, classes=10 if quick else 1000,
                        width=0.25 if quick else 1.0)
    model.compile(optimizers.SGD(0.01, momentum=0.9), "sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    n = per_step * (steps + 2)
    x = rng.random((n,) + shape, dtype=np.float32)
    y = rng.integers(0, 10 if quick else 1000, n)
    model.fit(x[:2 * per_step], y[:2 * per_step], batch_size=per_step, epochs=1, verbose=0)
    _sync()
    t0 = time.perf_counter()
    model.fit(x[2 * per_step:], y[2 * per_step:], batch_size=per_step, epochs=1, verbose=0,
              shuffle=False)
    _sync()
    return per_step * steps / (time.perf_counter() - t0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m gpucnn.distributed.check",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", default="cuda", choices=("auto", "numpy", "cuda"))
    p.add_argument("--quick", action="store_true", help="tiny sizes (checks the script)")
    p.add_argument("--per-gpu", type=int, default=64, help="AlexNet images per GPU per step")
    p.add_argument("--repeats", type=int, default=20, help="timed allreduce calls per size")
    p.add_argument("--out", default=None, help="also write the report to this file")
    args = p.parse_args(argv)
    distributed.init(backend=args.backend)
    info = distributed.info()
    size, rank = info["size"], info["rank"]
    lines = [f"# gpucnn.distributed check: {size} rank(s), backend {gpucnn.get_backend()}, "
             f"sums by {info['transport']}", ""]

    sizes = (LENET_PARAMS, 1_000_000) if args.quick else (LENET_PARAMS, ALEXNET_PARAMS)
    lines += ["## Allreduce (in-place sum) of float32", "",
              "| floats | ms (median) | bus GB/s |", "|---:|---:|---:|"]
    for n, ms, gbs in allreduce_rows(sizes, 5 if args.quick else args.repeats):
        lines.append(f"| {n:,} | {ms:.3f} | {gbs:.2f} |")

    rng = np.random.default_rng(0)
    n = 512 if args.quick else 4096
    x = rng.random((n, 32, 32, 1), dtype=np.float32)
    y = rng.integers(0, 10, n)
    together = _lenet_run(x, y, 64)
    per_step = 4 if args.quick else args.per_gpu
    steps = 3 if args.quick else 20
    rate_all = _alexnet_rate(per_step * size, steps, args.quick)

    distributed.shutdown()                   # rank 0 alone from here: one GPU
    if rank != 0:
        return 0
    alone = _lenet_run(x, y, 64)
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(together, alone))
    scale = max(float(np.max(np.abs(b))) for b in alone)
    lines += ["", f"## LeNet-5, {n:,} samples, batch 64, 1 epoch, SGD with momentum", "",
              f"- {size} rank(s) against one: largest weight difference {diff:.2e} "
              f"(largest weight {scale:.3f})"]
    rate_one = _alexnet_rate(per_step, steps, args.quick)
    what = "AlexNet-small (32 x 32, width 0.25)" if args.quick else "AlexNet (227 x 227 x 3)"
    lines += ["", f"## {what} training, {per_step} images per GPU per step", "",
              "| GPUs | images/s | images/s per GPU | scaling efficiency |",
              "|---:|---:|---:|---:|",
              f"| 1 | {rate_one:,.0f} | {rate_one:,.0f} | 1.00 |",
              f"| {size} | {rate_all:,.0f} | {rate_all / size:,.0f} | "
              f"{rate_all / (size * rate_one):.2f} |"]
    text = "\n".join(lines)
    print(text, flush=True)
    if args.out:
        from gpucnn.io import write_atomic

        write_atomic(args.out, lambda f: f.write(text + "\n"), "w",
                     op="gpucnn.distributed.check --out")
    return 0


if __name__ == "__main__":
    sys.exit(main())
