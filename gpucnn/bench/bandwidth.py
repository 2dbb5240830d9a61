"""The bytes table of the memory-bound kernels, made without a GPU:
``python -m gpucnn.bench.bandwidth [--out docs/bandwidth.md]``.

Each memory-bound kernel of the cuda set (activations, pools, softmax and its cross-entropy,
bias and column sums, dropout, the optimizer updates) at the shapes of the guide's LeNet-5 and of
AlexNet (227 x 227, both at batch 128, read off the zoo's models) gets a row with

- the floor: the bytes it must move, each input read once and each output written once, and the
  time that takes at the HBM bandwidth of an H100 SXM (3.35 TB/s) and an H200 (4.8 TB/s);
- the bytes its kernels as written request from memory (passes, re-reads, a memset, a second
  pass), counted from the kernel source (the "how" column says how). Re-reads of a row or of
  overlapping windows mostly hit L1/L2; the ratio is an upper bound of the DRAM traffic;
- its launches, the grid of each against the 132 SMs of an H100/H200 (blocks, and waves: the
  blocks over what all SMs hold at once, from the registers and threads of its sm_90 cubin), read
  off the real launchers (run in Numba's simulator with the launches recorded, not executed);
- its global memory instructions by kind and width in the sm_90 SASS (built the way
  ``gpucnn.bench.sass`` builds, disassembled with nvdisasm; the ``.E`` is dropped): ``LDG.128``
  and ``STG.128`` are 128-bit vector accesses, ``LDG`` and ``STG`` 32-bit ones, ``ATOMG`` atomics;
  the counts are instructions in the code, not executions.

``cases(tiny)`` is shared with the GPU check's bandwidth section (``check_bandwidth``), which
times the same calls on hardware.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import subprocess
import sys
from collections import Counter
from typing import Callable, NamedTuple

import numpy as np

#: HBM bandwidth (bytes/s) of the lent GPUs, from NVIDIA's data sheets; SMs of both.
HBM = {"H100 SXM": 3.35e12, "H200": 4.8e12}
SMS = 132
F32 = 4


class Case(NamedTuple):
    """One memory-bound call: ``setup(C, alloc)`` makes its inputs with ``alloc(shape, kind)``
    (kind "normal", "positive", or ("labels", K)) and returns ``(call, arrays)``; ``torch(torch,
    arrays)`` PyTorch's counterpart (None where PyTorch has none)."""

    net: str
    layer: str
    op: str
    shape: str
    floor: int
    moved: int | Callable      # or a function of the recorded launches
    how: str
    setup: Callable
    torch: Callable | None = None


def _n(shape):
    return int(np.prod(shape))


def _act_cases(net, layer, shape, act):
    n, b = _n(shape), F32

    def fwd(C, alloc):
        x = alloc(shape, "normal")
        return (lambda: C.act_forward(x, act)), {"x": x}

    def bwd(C, alloc):
        dy, y = alloc(shape, "normal"), alloc(shape, "normal")
        return (lambda: C.act_backward(dy, y, act)), {"dy": dy, "y": y}

    tf = {"relu": lambda t, a: (lambda x=a["x"]: t.relu(x)),
          "tanh": lambda t, a: (lambda x=a["x"]: t.tanh(x))}.get(act)
    tb = (lambda t, a: (lambda: t.ops.aten.threshold_backward(a["dy"], a["y"], 0))) \
        if act == "relu" else (lambda t, a: (lambda: t.ops.aten.tanh_backward(a["dy"], a["y"])))
    s = str(tuple(shape))
    return [Case(net, layer, f"{act} fwd", s, 2 * n * b, 2 * n * b, "x read, y written once",
                 fwd, tf),
            Case(net, layer, f"{act} bwd", s, 3 * n * b, 3 * n * b, "dy, y read, dx written once",
                 bwd, tb)]


def colsum_moved(rows, cols, b=F32, first_read=1):
    """Bytes of a column sum from its recorded launches: the first pass reads ``first_read``
    arrays of (rows, cols) and writes (S, cols) partial sums (S its grid.y), a second pass reads
    them back; the last pass writes the (cols,) result."""
    def moved(launches):
        splits = launches[0][1][1] if len(launches) > 1 else 0
        return rows * cols * b * first_read + 2 * splits * cols * b + cols * b
    return moved


def _bias_case(net, layer, shape):
    rows, c = _n(shape[:-1]), shape[-1]

    def setup(C, alloc):
        dy = alloc(shape, "normal")
        return (lambda: C.bias_grad(dy)), {"dy": dy}

    return Case(net, layer, "bias grad", str(tuple(shape)), (rows + 1) * c * F32,
                colsum_moved(rows, c), "partial sums of row splits (grid.y), then their sum",
                setup,
                lambda t, a: (lambda: a["dy"].sum((0, 1, 2))))


def _pool_cases(net, layer, kind, x, k, s, pad):
    from gpucnn.kernels._geometry import window_2d

    ho, wo, pad4 = window_2d(x[1], x[2], k, k, s, s, pad)
    y = (x[0], ho, wo, x[3])
    nx, ny, b = _n(x), _n(y), F32
    geo = ((k, k), (s, s), pad4)
    sx, win = f"{tuple(x)} {k}x{k}/{s}", ny * k * k * b

    def nchw(t, a):
        return a.permute(0, 3, 1, 2)

    if kind == "max":
        def fwd(C, alloc):
            xa = alloc(x, "normal")
            return (lambda: C.max_pool_forward(xa, *geo)), {"x": xa}

        def bwd(C, alloc):
            xa, dy = alloc(x, "normal"), alloc(y, "normal")
            _, idx = C.max_pool_forward(xa, *geo)
            return (lambda: C.max_pool_backward(dy, idx, x)), {"x": xa, "dy": dy}

        def tfwd(t, a):
            xt = nchw(t, a["x"])
            return lambda: t.nn.functional.max_pool2d(xt, k, s)

        def tbwd(t, a):
            xt, dyt = nchw(t, a["x"]), nchw(t, a["dy"])
            _, idx = t.nn.functional.max_pool2d(xt, k, s, return_indices=True)
            return lambda: t.ops.aten.max_pool2d_with_indices_backward(
                dyt, xt, [k, k], [s, s], [0, 0], [1, 1], False, idx)

        return [Case(net, layer, "max pool fwd", sx, (nx + ny) * b + 4 * ny, win + ny * (b + 4),
                     f"{k * k} window loads per output, y and idx written", fwd, tfwd),
                Case(net, layer, "max pool bwd", sx, ny * (b + 4) + nx * b,
                     nx * b + ny * (b + 4) + 2 * ny * b,
                     "dx zeroed (a memset), dy and idx read, an atomic add per dy", bwd, tbwd)]

    def afwd(C, alloc):
        xa = alloc(x, "normal")
        return (lambda: C.avg_pool_forward(xa, *geo)), {"x": xa}

    def abwd(C, alloc):
        dy = alloc(y, "normal")
        return (lambda: C.avg_pool_backward(dy, x, *geo)), {"dy": dy}

    def tafwd(t, a):
        xt = nchw(t, a["x"])
        return lambda: t.nn.functional.avg_pool2d(xt, k, s)

    return [Case(net, layer, "avg pool fwd", sx, (nx + ny) * b, win + ny * b,
                 f"{k * k} window loads per output", afwd, tafwd),
            Case(net, layer, "avg pool bwd", sx, (nx + ny) * b, win + nx * b,
                 "a gather: every dy read once per cell of its window", abwd)]


def _softmax_cases(net, rows, k):
    n, b = rows * k, F32
    shape = f"({rows}, {k})"

    def sm(C, alloc):
        z = alloc((rows, k), "normal")
        return (lambda: C.softmax_forward(z)), {"z": z}

    def xf(C, alloc):
        z, lab = alloc((rows, k), "normal"), alloc((rows,), ("labels", k))
        return (lambda: C.softmax_xent_forward(z, lab)), {"z": z, "labels": lab}

    def xb(C, alloc):
        z, lab = alloc((rows, k), "normal"), alloc((rows,), ("labels", k))
        g = alloc((rows,), "positive")
        _, p = C.softmax_xent_forward(z, lab)
        return (lambda: C.softmax_xent_backward(p, lab, g)), {}

    def sb(C, alloc):
        dy, y = alloc((rows, k), "normal"), alloc((rows, k), "positive")
        return (lambda: C.softmax_backward(dy, y)), {}

    return [Case(net, "output", "softmax fwd", shape, 2 * n * b, 4 * n * b,
                 "3 passes over x (max, sum, write) and y written", sm,
                 lambda t, a: (lambda: t.softmax(a["z"], 1))),
            Case(net, "output", "softmax bwd", shape, 3 * n * b, 5 * n * b,
                 "2 passes over dy and y, dx written", sb),
            Case(net, "output", "softmax xent fwd", shape, 2 * n * b + rows * (8 + b),
                 4 * n * b + rows * (8 + 2 * b), "3 passes over z, p and the loss written", xf,
                 lambda t, a: (lambda: t.nn.functional.cross_entropy(a["z"], a["labels"],
                                                                      reduction="none"))),
            Case(net, "output", "softmax xent bwd", shape, 2 * n * b + rows * (8 + b),
                 n * (3 * b + 8), "p read, dz written, a label and g[r] per element", xb)]


def _dense_cases(net, layer, rows, units, act, dropout):
    n, b = rows * units, F32
    sums = colsum_moved(rows, units, first_read=0)
    shape = (rows, units)

    def fused(C, alloc):
        dy, y = alloc(shape, "normal"), alloc(shape, "normal")
        return (lambda: C.act_backward_bias(dy, y, act)), {}

    out = [Case(net, layer, f"{act} bwd + bias grad", str(shape), 3 * n * b + units * b,
                lambda launches: 3 * n * b + sums(launches),
                "dy, y read and g written in the pass that makes the partial column sums", fused)]
    if dropout:
        def drop(C, alloc):
            return (lambda: C.dropout_mask(shape, 0.5, 1, 2, np.float32)), {}

        out.append(Case(net, f"{layer} dropout", "dropout mask", str(shape), n * b, n * b,
                        "mask written once", drop))
    return out


def _optim_cases(net, shapes_):
    n, t, b = sum(_n(s) for s in shapes_), len(shapes_), F32

    def setup(family):
        def make(C, alloc):
            ps = [alloc(s, "normal") for s in shapes_]
            gs = [alloc(s, "normal") for s in shapes_]
            ms = [alloc(s, "normal") for s in shapes_]
            vs = [alloc(s, "positive") for s in shapes_]
            flag = C.xp.zeros(1, dtype=np.int64)     # read by the caller, never here
            if family == "adam":
                return (lambda: C.adam_update_many(ps, gs, ms, vs, 1e-4, 0.9, 0.999, 1e-7, 10,
                                                   0.0, flag=flag)), {"n": n}
            return (lambda: C.sgd_update_many(ps, gs, ms, 1e-4, 0.9, False, 0.0,
                                              flag=flag)), {"n": n}
        return make

    def tadam(t_, a):
        from gpucnn.bench import torch_ref

        return torch_ref.gpu_adam_twin(t_, a["n"])["step"]

    shape = f"{t} tensors, {n} values"
    return [Case(net, "all weights", "adam update (multi-tensor)", shape, 7 * n * b, 7 * n * b,
                 "p, g, m, v read; p, m, v written", setup("adam"), tadam),
            Case(net, "all weights", "sgd momentum (multi-tensor)", shape, 5 * n * b, 5 * n * b,
                 "p, g, v read; p, v written", setup("sgd"))]


def cases(tiny: bool = False, batch: int = 128) -> list[Case]:
    """The rows: tiny stand-ins (for the simulator) or LeNet-5 and AlexNet at ``batch``."""
    if tiny:
        return (_act_cases("tiny", "conv", (2, 5, 5, 4), "relu")
                + [_bias_case("tiny", "conv", (2, 5, 5, 6))]
                + _pool_cases("tiny", "pool", "max", (1, 5, 5, 4), 3, 2, "valid")
                + _pool_cases("tiny", "pool", "avg", (2, 4, 4, 3), 2, 2, "valid")
                + _softmax_cases("tiny", 3, 5)
                + _dense_cases("tiny", "fc", 3, 6, "relu", True)
                + _optim_cases("tiny", [(5, 3), (3,)]))
    from gpucnn import layers, zoo

    saved = os.environ.get("GPUCNN_BACKEND")
    os.environ.setdefault("GPUCNN_BACKEND", "numpy")    # the zoo builds its weights on the CPU
    try:
        models = (("LeNet-5", zoo.lenet5()), ("AlexNet", zoo.alexnet()))
    finally:
        if saved is None:
            os.environ.pop("GPUCNN_BACKEND", None)
    out = []
    for net, model in models:
        for layer in model.layers:
            hwc = tuple(int(v) for v in layer.input_shape[1:])
            act = getattr(layer, "activation", None)
            act = act if isinstance(act, str) else getattr(act, "__name__", None)
            if isinstance(layer, layers.Conv2D):
                ys = (batch,) + tuple(int(v) for v in layer.output_shape[1:])
                out += _act_cases(net, layer.name, ys, act) + [_bias_case(net, layer.name, ys)]
            elif isinstance(layer, (layers.MaxPooling2D, layers.AveragePooling2D)):
                kind = "max" if isinstance(layer, layers.MaxPooling2D) else "avg"
                out += _pool_cases(net, layer.name, kind, (batch,) + hwc,
                                   int(layer.pool_size[0]), int(layer.strides[0]), layer.padding)
            elif isinstance(layer, layers.Dense) and act == "softmax":
                out += _softmax_cases(net, batch, int(layer.units))
            elif isinstance(layer, layers.Dense):
                nxt = model.layers[model.layers.index(layer) + 1]
                out += _dense_cases(net, layer.name, batch, int(layer.units), act,
                                    isinstance(nxt, layers.Dropout))
        out += _optim_cases(net, [tuple(int(v) for v in w.shape) for w in model.trainable_weights])
    return out


# --------------------------------------------------------------------------- launches

def record_launches(tiny=False, batch=128) -> list[dict]:
    """Each case's launches ``[(kernel, grid, block)]``, read off the real launchers run in
    Numba's simulator with every launch recorded instead of run (NUMBA_ENABLE_CUDASIM=1)."""
    import gpucnn.kernels.cuda_set as C
    from gpucnn.kernels.cuda_set import _launch

    seen = []

    def fake(spec, grid, block, *args):
        seen.append((spec.name, [int(g) for g in grid], [int(v) for v in block]))

    real = _launch.launch
    mods = [m for m in list(sys.modules.values())
            if getattr(m, "__name__", "").startswith("gpucnn.kernels.cuda_set.")
            and getattr(m, "launch", None) is real]
    for m in mods:
        m.launch = fake
    rows = []
    try:
        for case in cases(tiny, batch):
            call, _ = case.setup(C, lambda shape, kind: _blank(shape, kind))
            seen.clear()
            call()
            rows.append({"key": _key(case), "launches": list(seen)})
    finally:
        for m in mods:
            m.launch = real
    return rows


def _blank(shape, kind):
    """An input that is never read (the launches are not run): untouched pages cost nothing."""
    return np.empty(shape, np.int64 if isinstance(kind, tuple) else np.float32)


def _key(case):
    return f"{case.net}|{case.layer}|{case.op}"


# --------------------------------------------------------------------------- machine code

def sass_summary(names) -> dict:
    """Per kernel name: its global loads/stores by width, registers and resident blocks per
    sm_90 SM, from the cubin ``_cache.build`` makes for sm_90 (no GPU, no simulator)."""
    from gpucnn.bench import sass
    from gpucnn.kernels.cuda_set import _cache, _launch

    specs = {s.name: s for s in _launch.all_kernels()}
    tmp = pathlib.Path(os.environ.get("TMPDIR", "/tmp"))
    out = {}
    for name in names:
        built = _cache.build(specs[name], (9, 0))
        insns = sass.disassemble(built.cubin, built.entry, tmp)
        widths = Counter(op.replace(".E", "").replace(".CONSTANT", "").replace(".STRONG.GPU", "")
                         for _, op, _, _ in insns if op.startswith(("LDG", "STG", "RED", "ATOM")))
        smem, info = sass._shared_and_info(built.cubin, built.entry)
        out[name] = {"mem": dict(widths), "registers": info.get("registers", 0), "smem": smem,
                     "frame": info.get("frame_bytes", 0),
                     "fp64": [op for _, op, _, _ in insns if ".F64" in op or op.startswith(
                         ("DADD", "DMUL", "DFMA", "DSETP"))]}
    return out


def _child(flag, env_sim, *extra):
    env = dict(os.environ)
    if env_sim:
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    else:
        env.pop("NUMBA_ENABLE_CUDASIM", None)
    r = subprocess.run([sys.executable, "-m", "gpucnn.bench.bandwidth", flag, *extra], env=env,
                       capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"gpucnn.bench.bandwidth {flag} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- table

HEADER = ("| net | layer | op | shape | floor MB | requested MB | requested / floor | floor µs "
          "H100 / H200 | launches: kernel grid (blocks/SM resident, waves) | global memory "
          "ops in SASS | how requested is counted |\n|" + "---|" * 11)


def _mb(v):
    return f"{v / 1e6:.3f}" if v < 1e6 else f"{v / 1e6:.1f}"


def _launch_text(kernel, grid, block, sass_rows):
    from gpucnn.bench import sass

    threads = int(np.prod(block))
    blocks = int(np.prod(grid))
    info = sass_rows.get(kernel, {})
    per_sm, _ = sass.occupancy(info.get("registers", 32), info.get("smem", 0), threads)
    waves = blocks / (SMS * max(per_sm, 1))
    return f"{kernel} {'x'.join(map(str, grid))} ({per_sm}/SM, {waves:.2f})"


def _mem_text(kernels, sass_rows):
    parts = []
    for k in dict.fromkeys(kernels):
        m = sass_rows.get(k, {}).get("mem", {})
        frame = sass_rows.get(k, {}).get("frame", 0)
        parts.append(f"{k}: " + ", ".join(f"{v} {op}" for op, v in sorted(m.items()))
                     + (f", {frame} B stack" if frame else ""))
    return "; ".join(parts)


def table(tiny=False, batch=128) -> tuple[str, list]:
    launches = {r["key"]: r["launches"] for r in _child("--record", True, "--batch", str(batch),
                                                        *(["--tiny"] if tiny else []))}
    names = sorted({k for ls in launches.values() for k, _, _ in ls})
    sass_rows = _child("--sass", False, ";".join(names))
    lines, rows = [], []
    for case in cases(tiny, batch):
        ls = launches[_key(case)]
        moved = case.moved(ls) if callable(case.moved) else case.moved
        t = " / ".join(f"{case.floor / bw * 1e6:.1f}" for bw in HBM.values())
        lines.append(f"| {case.net} | {case.layer} | {case.op} | {case.shape} | {_mb(case.floor)} "
                     f"| {_mb(moved)} | {moved / case.floor:.2f} | {t} | "
                     + "; ".join(_launch_text(k, g, b, sass_rows) for k, g, b in ls)
                     + f" | {_mem_text([k for k, _, _ in ls], sass_rows)} | {case.how} |")
        rows.append((case, ls))
    fp64 = {k: v["fp64"] for k, v in sass_rows.items() if "float32" in k and v["fp64"]}
    return "\n".join(lines), [rows, fp64]


NOTES = """Reading the table, and what is not at the floor yet:

- "requested / floor" above 1 is re-reading, not necessarily DRAM traffic: a pool's window
  loads overlap (3x3 stride 2: each input read by up to 4 windows, 2.25 on average) and a
  softmax row (4 KB at K = 1000) is re-read from L1. The max-pool backward's excess is real: a
  memset of dx (xp.zeros, its own launch, not listed) and an atomic read-modify-write per dy. A
  gather without either (and fused with the activation's backward, which reads the same dx)
  needs the pool geometry, which the contract's ``max_pool_backward(dy, idx, x_shape)`` does
  not carry.
- Waves: every grid-stride kernel launches at most one wave of the blocks per SM its launch
  bounds guarantee (``vector.stream_grid``); the resident column counts what the registers of
  the sm_90 cubin allow, so a kernel whose registers leave room for more blocks than its bounds
  shows a wave below 1. Column sums split the rows to fill one wave. Softmax and the fused
  cross-entropy forward still launch one 128-thread block per row: 128 rows fill under a tenth
  of a wave.
- 128-bit accesses: the activations (forward and backward) and the dropout mask; the pools,
  softmax, column sums and optimizer updates load 32 bits per thread (coalesced across the
  warp). A chunk-of-4 optimizer update with 128-bit accesses was written, but Numba's compile of
  it took minutes per kernel, so it is not in.
- Float64 in a float32 kernel: only dropout's keep test, float64 by contract (bit-identical masks
  with the NumPy set)."""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gpucnn.bench.bandwidth",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="write the table as Markdown to this file")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--tiny", action="store_true", help="the simulator's tiny shapes")
    ap.add_argument("--record", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--sass", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.record:
        print(json.dumps(record_launches(args.tiny, args.batch)))
        return 0
    if args.sass is not None:
        print(json.dumps(sass_summary([n for n in args.sass.split(";") if n])))
        return 0
    body, (_, fp64) = table(args.tiny, args.batch)
    text = HEADER + "\n" + body
    print(text)
    note = ("float64 instructions in float32 kernels: "
            + ("; ".join(f"{k}: {', '.join(sorted(set(v)))}" for k, v in fp64.items()) or "none"))
    print(note)
    if args.out:
        import numba

        from gpucnn.kernels.cuda_set import _cache

        cmd = "python -m gpucnn.bench.bandwidth" + "".join(f" {a}" for a in (argv or sys.argv[1:]))
        pathlib.Path(args.out).write_text(
            f"# Bytes of the memory-bound kernels (sm_90, no GPU)\n\nCommand: `{cmd}`; "
            f"{datetime.date.today().isoformat()}; numba {numba.__version__}, numba-cuda "
            f"{_cache.numba_cuda_version()}.\n\n" + __doc__.split("\n\n", 1)[1].strip()
            + "\n\n" + text + "\n\n- " + note + "\n\n" + NOTES + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
