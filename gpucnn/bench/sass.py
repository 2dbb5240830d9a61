"""The instruction mix of the float32 conv kernels, read from their machine code (no GPU):
``python -m gpucnn.bench.sass [--out docs/instruction-mix.md] [--only NAME-SUBSTRING]
[--family baseline|igemm2|tf32]``.

Each kernel is built the way gpucnn builds what runs (``_cache.build``: Numba's PTX for
``sm_90``, assembled by Numba's linker), disassembled with ``nvdisasm`` (pip package
``nvidia-cuda-nvdisasm``) and its reduction loop found: the outermost loop (a backward branch)
that holds a barrier. One reduction step is that loop's body (staging, barriers and the tile
product), with any loop nested in it counted by its trip count (``TRIPS``: the baseline kernels'
``kk`` loop runs ``bk`` times in a full step; a nested loop that holds no FFMA is counted once
and flagged). A branch inside the step that skips code (the baseline's partial-step path, the
gemm kernels' ``if more``) is counted as taken the way a full step in the middle of the
reduction takes it: the baseline's partial-step loop is left out, everything else is in.

Printed per kernel: instructions per step, its math instructions (FFMA; HMMA in the TF32
kernels) and their share, shared loads by width, global loads, barriers, registers, stack frame (spills), and occupancy (resident blocks and warps per
SM of an sm_90 from registers, shared memory and threads). ``--out`` writes the table as
Markdown with the command, date and versions.
"""
from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import re
import shutil
import struct
import subprocess
import sys
from collections import Counter

from gpucnn.kernels import load_set

#: Hopper (sm_90) per-SM limits for the occupancy column.
SM90 = {"regs": 65536, "smem": 228 * 1024, "threads": 2048, "blocks": 32, "reg_unit": 256,
        "smem_reserved": 1024}
TARGET_WIDEST, TARGET_ALL = 75.0, 50.0

_INSN = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")
_LABEL = re.compile(r"^\s*(\.L_x_\d+):")
_TARGET = re.compile(r"`\((\.L_x_\d+)\)")


def nvdisasm_path() -> str:
    """nvdisasm from the ``nvidia-cuda-nvdisasm`` wheel (any CUDA major), else from PATH."""
    try:
        import nvidia

        for base in nvidia.__path__:
            for p in sorted(pathlib.Path(base).glob("*/bin/nvdisasm")):
                return str(p)
    except ImportError:
        pass
    found = shutil.which("nvdisasm")
    if not found:
        raise RuntimeError("nvdisasm not found: pip install nvidia-cuda-nvdisasm")
    return found


def disassemble(cubin: bytes, entry: str, tmpdir: pathlib.Path) -> list[tuple]:
    """``[(address, opcode, operands, label or None)]`` of function ``entry``."""
    path = tmpdir / f"k{os.getpid()}.cubin"
    path.write_bytes(cubin)
    try:
        text = subprocess.run([nvdisasm_path(), "-c", str(path)], capture_output=True,
                              text=True, check=True).stdout
    finally:
        path.unlink()
    out, label, inside = [], None, False
    for line in text.splitlines():
        if line.split()[:1] == [".section"]:
            inside = line.split()[1].split(",")[0] == ".text." + entry
            continue
        if not inside:
            continue
        m = _LABEL.match(line)
        if m:
            label = m.group(1)
            continue
        m = _INSN.search(line)
        if m:
            out.append((int(m.group(1), 16), m.group(3), (m.group(2) or "") + m.group(4), label))
            label = None
    return out


def loops(insns) -> list[tuple[int, int]]:
    """``(first index, last index)`` of each loop: a branch to a label at or before it."""
    where = {lab: i for i, (_, _, _, lab) in enumerate(insns) if lab}
    out = []
    for i, (_, op, args, _) in enumerate(insns):
        if op.startswith("BRA"):
            m = _TARGET.search(args)
            if m and m.group(1) in where and where[m.group(1)] <= i:
                out.append((where[m.group(1)], i))
    return out


def reduction_step(insns, bk: int, baseline: bool) -> dict:
    """The instruction counts of one reduction step (see the module docstring)."""
    lps = loops(insns)
    with_bar = [lp for lp in lps if any(op.startswith("BAR") for _, op, _, _ in
                                        insns[lp[0]:lp[1] + 1])]
    if not with_bar:
        raise RuntimeError("no loop with a barrier: not a tiled reduction")
    lo, hi = max(with_bar, key=lambda lp: lp[1] - lp[0])
    nested = sorted({lp for lp in lps if lo <= lp[0] and lp[1] <= hi and lp != (lo, hi)})
    # outermost nested loops only (a loop inside a nested one counts with it)
    top = [lp for lp in nested if not any(o != lp and o[0] <= lp[0] and lp[1] <= o[1]
                                          for o in nested)]
    counts, notes = Counter(), []
    weight = [1] * (hi - lo + 1)
    ffma_loops = [lp for lp in top if any(op == "FFMA" for _, op, _, _ in insns[lp[0]:lp[1] + 1])]
    for lp in top:
        if lp in ffma_loops and baseline:
            # the first FFMA loop is the full step's kk loop; a second is the partial step's
            trip = bk if lp == ffma_loops[0] else 0
        else:
            trip = 1
            notes.append(f"loop of {lp[1] - lp[0] + 1} counted once")
        for i in range(lp[0], lp[1] + 1):
            weight[i - lo] = trip
    for i in range(lo, hi + 1):
        _, op, args, _ = insns[i]
        if weight[i - lo]:
            counts[_width(op)] += weight[i - lo]
    total = sum(counts.values())
    lds = {k: v for k, v in counts.items() if k.startswith("LDS")}
    return {"total": total, "ffma": counts.get("FFMA", 0), "lds": lds,
            "hmma": sum(v for k, v in counts.items() if k.startswith("HMMA")),
            "ldg": sum(v for k, v in counts.items() if k.startswith("LDG")),
            "bar": sum(v for k, v in counts.items() if k.startswith("BAR")),
            "nested": len(top), "notes": notes}


def _width(op: str) -> str:
    """The opcode with a shared load's width spelled out (LDS is 32-bit)."""
    if op.startswith("LDS"):
        m = re.search(r"\.(64|128)\b", op)
        return f"LDS.{m.group(1) if m else 32}"
    return op


def occupancy(regs: int, smem: int, threads: int) -> tuple[int, int]:
    """(blocks, warps) resident per sm_90 SM."""
    unit = SM90["reg_unit"]
    warps = -(-threads // 32)
    regs_block = warps * (-(-max(regs, 1) * 32 // unit) * unit)
    by_regs = SM90["regs"] // regs_block
    by_smem = SM90["smem"] // (smem + SM90["smem_reserved"]) if smem else SM90["blocks"]
    blocks = min(by_regs, by_smem, SM90["threads"] // threads, SM90["blocks"])
    return blocks, blocks * warps


FAMILIES = {"igemm_": "baseline", "gemm_": "igemm2", "tf32_": "tf32"}


def conv_specs():
    """``[(spec, family, tile)]``: the float32 conv kernels of the three families."""
    out = []
    for spec in load_set("cuda").instruments().kernels():
        family = next((f for p, f in FAMILIES.items() if spec.name.startswith(p)), None)
        if family and "float32" in spec.name:
            out.append((spec, family, _tile_of(spec.name)))
    return out


def _tile_of(name: str) -> tuple:
    """``(bm, bn, bk, tm, tn)`` of a SIMT kernel, ``(bm, bn, bk, wm, wn)`` (warps) of a TF32 one."""
    m = re.search(r"(\d+)x(\d+)x(\d+)/(\d+)x(\d+)", name)
    return tuple(int(v) for v in m.groups())


def threads_of(family: str, tile: tuple) -> int:
    return 32 * tile[3] * tile[4] if family == "tf32" else (tile[0] // tile[3]) * (tile[1] //
                                                                                   tile[4])


def _shared_and_info(cubin: bytes, entry: str):
    """(static shared bytes, {registers, frame_bytes}) from the cubin's sections."""
    data = cubin
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    raw = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names_off = raw[shstrndx][4]

    def name(off):
        end = data.index(b"\0", names_off + off)
        return data[names_off + off:end].decode()

    smem = sum(size for nm, _t, _f, _a, _o, size in raw if name(nm) == ".nv.shared." + entry)
    return smem, _function_info(data, raw, name, entry)


def _function_info(data, raw, name, entry) -> dict:
    secs = {name(nm): data[off:off + size] for nm, _t, _f, _a, off, size in raw}
    strtab, symtab = secs.get(".strtab", b""), secs.get(".symtab", b"")
    syms = []
    for i in range(0, len(symtab), 24):
        st = struct.unpack_from("<I", symtab, i)[0]
        syms.append(strtab[st:strtab.index(b"\0", st)].decode())
    sym = syms.index(entry)
    info, i, out = secs[".nv.info"], 0, {}
    while i < len(info):
        fmt, attr = info[i], info[i + 1]
        if fmt == 4:
            size = struct.unpack_from("<H", info, i + 2)[0]
            if attr in (0x2F, 0x11):
                idx, val = struct.unpack_from("<II", info, i + 4)
                if idx == sym:
                    out["registers" if attr == 0x2F else "frame_bytes"] = val
            i += 4 + size
        else:
            i += 4
    return out


def analyse(spec, family, tile, cc=(9, 0), tmpdir=None) -> dict:
    tmpdir = pathlib.Path(tmpdir or os.environ.get("TMPDIR", "/tmp"))
    built = load_set("cuda").instruments().build(spec, cc)
    insns = disassemble(built.cubin, built.entry, tmpdir)
    step = reduction_step(insns, tile[2], family == "baseline")
    smem, info = _shared_and_info(built.cubin, built.entry)
    blocks, warps = occupancy(info.get("registers", 0), smem, threads_of(family, tile))
    allops = Counter(op for _, op, _, _ in insns)
    math = "HMMA" if family == "tf32" else "FFMA"
    return {"name": spec.name, "family": family, "tile": tile, **step, "math": math,
            "share": 100.0 * step[math.lower()] / max(step["total"], 1),
            "registers": info.get("registers"), "frame": info.get("frame_bytes", 0),
            "smem": smem, "blocks": blocks, "warps": warps,
            "fp64": sorted(op for op in allops if ".F64" in op or op.startswith("D")
                           and op[1:4] in ("ADD", "MUL", "FMA", "SET")),
            "calls": sorted({re.sub(r"[`()\s]", "", args) for _, op, args, _ in insns
                             if op.startswith("CALL")}),
            "sass_lines": len(insns), "build_s": built.seconds}


def _row(r) -> str:
    lds = ", ".join(f"{v} {k}" for k, v in sorted(r["lds"].items()))
    flag = "" if r["family"] != "igemm2" else (" ok" if r["share"] >= TARGET_ALL else " LOW")
    return (f"| {r['name']} | {r['total']} | {r[r['math'].lower()]} {r['math']} | "
            f"{r['share']:.1f}%{flag} | {lds} | "
            f"{r['ldg']} | {r['bar']} | {r['registers']} | {r['frame']} | "
            f"{r['blocks']} / {r['warps']} | {r['build_s']:.1f} |")


NOTES = """Reading the table:

- "igemm2" kernels are ``gemm_*`` (kernels/cuda_set/gemm.py), the baseline ``igemm_*``
  (kernels/cuda_set/conv.py, still selectable with ``conv.set_conv_kernels("baseline")``), the
  TF32 kernels ``tf32_*`` (kernels/cuda_set/conv_tf32.py, with TF32 allowed).
- The TF32 kernels' math is HMMA (``HMMA.1688.F32.TF32``: one m16n8k8 product per warp, 1,024
  multiply-adds, 32 per thread), counted and shared out like FFMA: a step of ``bk`` does
  ``bk * bm * bn / (8 * threads)`` of them per thread. Their share is not comparable with a
  SIMT kernel's: each HMMA stands for 32 FFMA.
- A step of the baseline is its ``kk`` loop counted ``bk`` times plus the staging around it; its
  partial last step's loop is left out. A step of igemm2 is straight-line code.
- The fused variants (``_f``, ``_sf``) count 2 FFMA per staged element of their activation
  gradient (``g2 y^2 + g1 y + g0``) beside the tile product's ``bk * tm * tn``.
- Each staged element of the left operand feeds ``bn`` columns, so a tile's FFMA per staged
  element is at most ``bm * bn / (bm + bn)``: 64 for 128x128, 32 for 64x64, 14 for the narrow
  128x16. The narrow tile's share is bounded by that: staging one gathered element with its
  two range checks costs about 9 instructions, a fused one about 19 (y loaded beside dy).
- The ``_v`` variants read 4 channels per 128-bit global load (LDG.E.128: one range check, one
  address and one load per 4 elements): the input gradient's dy, y and w on the wide and narrow
  tiles, the weight gradient's dy and y on the wide tile, where C_out is a multiple of 4 (the
  mid tile, with scalar loads, takes the rest).
- Occupancy is what registers, static shared memory and threads allow on an sm_90 SM; the
  wide tile runs one 256-thread block per SM by design (its launch bounds)."""


HEADER = ("| kernel | instructions / step | FFMA or HMMA | share | shared loads | global loads | "
          "barriers | registers | stack bytes | blocks / warps per SM | build s |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|")


def versions() -> str:
    import numba

    nvd = nvdisasm_path()
    v = subprocess.run([nvd, "--version"], capture_output=True, text=True).stdout.strip()
    v = v.splitlines()[-1] if v else "?"
    nc = load_set("cuda").instruments().numba_cuda_version()
    return (f"numba {numba.__version__}, numba-cuda {nc}, "
            f"nvdisasm {v}, Python {sys.version.split()[0]}")


def verdict(rows) -> list[str]:
    """The targets, kernel by kernel."""
    fmt = lambda rs: ", ".join(f"{r['name']} {r['share']:.1f}%" for r in rs) or "none"  # noqa
    out = []
    tf32 = [r for r in rows if r["family"] == "tf32"]
    if tf32:
        per = [r["total"] / r["hmma"] for r in tf32 if r["hmma"]]
        out.append("- TF32 kernels, HMMA in every reduction step: "
                   + ("yes" if len(per) == len(tf32) else "not in " + fmt(
                       [r for r in tf32 if not r["hmma"]]))
                   + (f" ({min(per):.0f}-{max(per):.0f} instructions per HMMA)" if per else "")
                   + "; stack frames: " + (", ".join(f"{r['name']} {r['frame']} B" for r in tf32
                                                     if r["frame"]) or "none"))
    new = [r for r in rows if r["family"] == "igemm2"]
    if not new:
        return out
    widest = max(new, key=lambda r: (r["tile"][3] * r["tile"][4], r["tile"][0] * r["tile"][1]))
    wide = [r for r in new if r["tile"] == widest["tile"]]
    low = [r for r in new if r["share"] < TARGET_ALL]
    calls = [f"{r['name']}: {', '.join(r['calls'])}" for r in new if r["calls"]]
    return [f"- Widest SIMT tile ({'x'.join(map(str, widest['tile'][:3]))}, "
            f"{widest['tile'][3]}x{widest['tile'][4]} register blocks), target >= "
            f"{TARGET_WIDEST:.0f}%: met by "
            + fmt([r for r in wide if r["share"] >= TARGET_WIDEST]) + "; not by "
            + fmt([r for r in wide if r["share"] < TARGET_WIDEST]),
            f"- Every igemm2 kernel >= {TARGET_ALL:.0f}%: "
            + ("met" if not low else "not met by " + fmt(low)),
            "- Stack frames (spills) of igemm2 kernels: "
            + (", ".join(f"{r['name']} {r['frame']} B" for r in new if r["frame"]) or "none"),
            "- Calls in igemm2 kernels (outside the reduction loop; the float division of the "
            "forward epilogue's sigmoid): "
            + ("; ".join(calls) or "none")] + out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gpucnn.bench.sass", description=__doc__.split(
        "\n\n")[0])
    ap.add_argument("--out", help="write the table as Markdown to this file")
    ap.add_argument("--only", help="kernels whose name contains this")
    ap.add_argument("--family", choices=tuple(FAMILIES.values()), help="one kernel family")
    args = ap.parse_args(argv)
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
        env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
        return subprocess.call([sys.executable, "-m", "gpucnn.bench.sass", *(argv or
                                                                             sys.argv[1:])],
                               env=env)
    rows = []
    print(HEADER, flush=True)
    for spec, family, tile in conv_specs():
        if (args.only and args.only not in spec.name) or (args.family and family != args.family):
            continue
        r = analyse(spec, family, tile)
        rows.append(r)
        print(_row(r), flush=True)
    lines = verdict(rows)
    print("\n".join(lines))
    if args.out:
        cmd = "python -m gpucnn.bench.sass" + "".join(f" {a}" for a in (argv or sys.argv[1:]))
        text = (f"# Instruction mix of the float32 conv kernels (sm_90, no GPU)\n\n"
                f"Command: `{cmd}`; {datetime.date.today().isoformat()}; {versions()}.\n\n"
                + (__doc__.split("\n\n", 1)[1].strip() + "\n\n")
                + HEADER + "\n" + "\n".join(_row(r) for r in rows) + "\n\n"
                + "\n".join(lines) + "\n\n" + NOTES + "\n")
        from gpucnn.io import write_atomic

        write_atomic(args.out, lambda f: f.write(text), "w", op="gpucnn.bench.sass --out")
    return 0


if __name__ == "__main__":
    sys.exit(main())
