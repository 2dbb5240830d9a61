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

The rows are ``membound.cases``, which the GPU check's bandwidth section
(``check_bandwidth``) times on hardware.
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

import numpy as np

from gpucnn.bench.membound import cases
from gpucnn.kernels import load_set

#: HBM bandwidth (bytes/s) of the lent GPUs, from NVIDIA's data sheets; SMs of both.
HBM = {"H100 SXM": 3.35e12, "H200": 4.8e12}
SMS = 132


# --------------------------------------------------------------------------- launches

def record_launches(tiny=False, batch=128) -> list[dict]:
    """Each case's launches ``[(kernel, grid, block)]``, read off the real launchers run in
    Numba's simulator with every launch recorded instead of run (NUMBA_ENABLE_CUDASIM=1)."""
    C = load_set("cuda")
    seen = []

    def record(real, spec, grid, block, *args):
        seen.append((spec.name, [int(g) for g in grid], [int(v) for v in block]))

    rows = []
    with C.instruments().launches_through(record):
        for case in cases(tiny, batch):
            call, _ = case.setup(C, lambda shape, kind: _blank(shape, kind))
            seen.clear()
            call()
            rows.append({"key": _key(case), "launches": list(seen)})
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

    tools = load_set("cuda").instruments()
    specs = {s.name: s for s in tools.kernels()}
    tmp = pathlib.Path(os.environ.get("TMPDIR", "/tmp"))
    out = {}
    for name in names:
        built = tools.build(specs[name], (9, 0))
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


def table(tiny=False, batch=128) -> tuple[str, dict]:
    launches = {r["key"]: r["launches"] for r in _child("--record", True, "--batch", str(batch),
                                                        *(["--tiny"] if tiny else []))}
    names = sorted({k for ls in launches.values() for k, _, _ in ls})
    sass_rows = _child("--sass", False, ";".join(names))
    lines = []
    for case in cases(tiny, batch):
        ls = launches[_key(case)]
        moved = case.moved(ls) if callable(case.moved) else case.moved
        t = " / ".join(f"{case.floor / bw * 1e6:.1f}" for bw in HBM.values())
        lines.append(f"| {case.net} | {case.layer} | {case.op} | {case.shape} | {_mb(case.floor)} "
                     f"| {_mb(moved)} | {moved / case.floor:.2f} | {t} | "
                     + "; ".join(_launch_text(k, g, b, sass_rows) for k, g, b in ls)
                     + f" | {_mem_text([k for k, _, _ in ls], sass_rows)} | {case.how} |")
    fp64 = {k: v["fp64"] for k, v in sass_rows.items() if "float32" in k and v["fp64"]}
    return "\n".join(lines), fp64


NOTES = """Reading the table, and what is not at the floor yet:

- "requested / floor" above 1 is re-reading, not necessarily DRAM traffic: a pool's window
  loads overlap (3x3 stride 2: each input read by up to 4 windows, 2.25 on average) and a
  softmax row (4 KB at K = 1000) is re-read from L1. The max-pool backward is a gather (the
  contract passes it the pool geometry): each dx cell reads the indices of the windows covering
  it (4 bytes for each of a window's k x k cells, re-read like the forward's window loads) and dy
  where it won, and writes once; no memset, no atomics. Fusing it with the activation's
  backward, which reads the same dx, is not done.
- Waves: every grid-stride kernel launches at most one wave of the blocks per SM its launch
  bounds guarantee (``vector.stream_grid``); the resident column counts what the registers of
  the sm_90 cubin allow, so a kernel whose registers leave room for more blocks than its bounds
  shows a wave below 1. Column sums split the rows to fill one wave. Rows of at most 256
  columns (``softmax.SHORT_ROW``) go 4 to a 128-thread softmax block and 8 to a 256-thread block
  of the row losses' forward, a group of 32 threads a row; longer rows (AlexNet's 1000 classes)
  still take one block per row, so 128 of them fill under a tenth of a wave.
- 128-bit accesses: the activations (forward and backward), the dropout mask, and the pools'
  forward and the average pool's backward where C % 4 == 0 (their ``v4`` variants; the max
  pool's int32 indices are still stored 32 bits at a time); softmax, column sums and optimizer
  updates load 32 bits per thread (coalesced across the warp). A chunk-of-4 optimizer update with 128-bit accesses was written, but Numba's compile of
  it took minutes per kernel, so it is not in.
- Float64 in a float32 kernel: none (dropout's keep test compares integers, ``u >=
  ceil(rate * 2**32)``, exactly the NumPy set's float64 test)."""


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
    body, fp64 = table(args.tiny, args.batch)
    text = HEADER + "\n" + body
    print(text)
    note = ("float64 instructions in float32 kernels: "
            + ("; ".join(f"{k}: {', '.join(sorted(set(v)))}" for k, v in fp64.items()) or "none"))
    print(note)
    if args.out:
        import numba

        from gpucnn.io import write_atomic

        nc = load_set("cuda").instruments().numba_cuda_version()
        cmd = "python -m gpucnn.bench.bandwidth" + "".join(f" {a}" for a in (argv or sys.argv[1:]))
        doc = (f"# Bytes of the memory-bound kernels (sm_90, no GPU)\n\nCommand: `{cmd}`; "
               f"{datetime.date.today().isoformat()}; numba {numba.__version__}, numba-cuda "
               f"{nc}.\n\n" + __doc__.split("\n\n", 1)[1].strip()
               + "\n\n" + text + "\n\n- " + note + "\n\n" + NOTES + "\n")
        write_atomic(args.out, lambda f: f.write(doc), "w", op="gpucnn.bench.bandwidth --out")
    return 0


if __name__ == "__main__":
    sys.exit(main())
