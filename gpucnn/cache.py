"""The kernel cache: ``python -m gpucnn.cache {fill,info,clear}``.

The cuda backend compiles each kernel once per machine (Numba's compiler: PTX for the GPU's
compute capability, then a cubin) and keeps it in a folder (``GPUCNN_CACHE_DIR``, default
``~/.cache/gpucnn/kernels``). A cold cache costs about a minute of compiling the first time the
kernels are used; ``fill`` compiles all of them ahead of time, several processes at once::

    python -m gpucnn.cache fill             # for the GPU of this machine
    python -m gpucnn.cache fill --cc 9.0    # for an H100/H200, on any machine with NVVM (no GPU)
    python -m gpucnn.cache info             # where the cache is and what it holds
    python -m gpucnn.cache clear            # delete the cached kernels

A cache filled with ``--cc`` on one machine can be copied to a machine with that GPU and the same
gpucnn and numba-cuda versions, which then needs no CUDA compiler (NVVM) at all.
"""
from __future__ import annotations

import argparse
import os
import sys

from gpucnn import kernels as _kernels

__all__ = ["cache_dir", "fill"]


def _cached_set():
    """The cuda kernel set, which keeps the cache (its ``compile_cache`` capability)."""
    kset = _kernels.load_set("cuda")
    if not _kernels.has(kset, "compile_cache"):
        raise SystemExit("gpucnn.cache: the cuda kernel set keeps no compiled-kernel cache")
    return kset


def cache_dir():
    """The folder of the kernel cache."""
    return _cached_set().cache_dir()


def _parse_cc(text: str) -> tuple[int, int]:
    try:
        major, minor = (int(v) for v in text.split("."))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a compute capability like 9.0, got {text!r}")
    if major < 5 or minor < 0:
        raise argparse.ArgumentTypeError(f"expected a compute capability >= 5.0, got {text!r}")
    return major, minor


def fill(cc=None, jobs=None, rebuild=False):
    """Compile every kernel for ``cc`` (default: this machine's GPU) into the cache; returns the
    per-kernel results of the cuda set's ``fill_cache``."""
    kset = _cached_set()
    try:
        cc = cc or kset.device_cc()
    except RuntimeError as e:
        raise SystemExit(f"gpucnn.cache: {e}; give it with --cc, for example --cc 9.0 for an "
                         "H100 or H200") from None
    return kset.fill_cache(cc, jobs=jobs, rebuild=rebuild)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gpucnn.cache", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fill", help="compile every kernel into the cache")
    f.add_argument("--cc", type=_parse_cc, default=None,
                   help="compute capability, e.g. 9.0 (default: the GPU of this machine)")
    f.add_argument("--jobs", type=int, default=None, help="compiler processes (default: CPUs)")
    f.add_argument("--rebuild", action="store_true", help="compile even what is cached")
    sub.add_parser("info", help="where the cache is and what it holds")
    sub.add_parser("clear", help="delete the cached kernels")
    args = ap.parse_args(argv)
    folder = cache_dir()
    if args.cmd == "fill":
        res = fill(args.cc, args.jobs, args.rebuild)
        return 1 if any(err for _, _, err in res.values()) else 0
    files = sorted(folder.glob("*.cubin")) if folder.is_dir() else []
    if args.cmd == "info":
        size = sum(p.stat().st_size for p in files)
        print(f"kernel cache: {folder}\n{len(files)} kernels, {size / 2**20:.1f} MiB\n"
              f"{_cached_set().cache_note()}")
        return 0
    for p in files:
        os.unlink(p)
    print(f"removed {len(files)} kernels from {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
