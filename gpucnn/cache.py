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

from gpucnn.kernels.cuda_set import _cache

__all__ = ["cache_dir", "fill"]


def cache_dir():
    """The folder of the kernel cache."""
    return _cache.cache_dir()


def _parse_cc(text: str) -> tuple[int, int]:
    try:
        major, minor = (int(v) for v in text.split("."))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a compute capability like 9.0, got {text!r}")
    if major < 5 or minor < 0:
        raise argparse.ArgumentTypeError(f"expected a compute capability >= 5.0, got {text!r}")
    return major, minor


def _device_cc() -> tuple[int, int]:
    from gpucnn.kernels.cuda_set import _launch, _runtime

    if _runtime.SIMULATOR or _runtime.cp is None:
        raise SystemExit("gpucnn.cache: no GPU to read the compute capability from here "
                         f"({_runtime._cupy_error or 'simulator on'}); give it with --cc, "
                         "for example --cc 9.0 for an H100 or H200")
    return _launch.device_cc()


def fill(cc=None, jobs=None, rebuild=False):
    """Compile every kernel for ``cc`` (default: this machine's GPU) into the cache; returns the
    per-kernel results of ``_cache.fill``."""
    return _cache.fill(cc or _device_cc(), jobs=jobs, rebuild=rebuild)


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
    folder = _cache.cache_dir()
    if args.cmd == "fill":
        res = fill(args.cc, args.jobs, args.rebuild)
        return 1 if any(err for _, _, err in res.values()) else 0
    files = sorted(folder.glob("*.cubin")) if folder.is_dir() else []
    if args.cmd == "info":
        size = sum(p.stat().st_size for p in files)
        print(f"kernel cache: {folder}\n{len(files)} kernels, {size / 2**20:.1f} MiB\n"
              f"numba-cuda {_cache.numba_cuda_version()}, kernel source {_cache.source_hash()[:12]}")
        return 0
    for p in files:
        os.unlink(p)
    print(f"removed {len(files)} kernels from {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
