"""Build each kernel once per machine: cubins compiled by Numba, kept in a folder on disk.

What runs on a GPU is decided here, and the tests check exactly that: the PTX Numba's NVVM
makes for the device's compute capability (``compile_ptx``, no link-time optimisation, target
``sm_XY``, never the architecture-specific ``sm_XYa``), assembled to a cubin by Numba's linker
(``_Linker``, nvJitLink or the driver). The same function runs on a machine without a GPU: the
compute capability is then given, and ``python -m gpucnn.cache fill --cc 9.0`` fills the cache
ahead of time for another machine (which then needs no NVVM at all).

One file per kernel, ``<name>-sm_XY-<key>.cubin``, in ``cache_dir()`` (``GPUCNN_CACHE_DIR``, else
``$XDG_CACHE_HOME/gpucnn/kernels``, else ``~/.cache/gpucnn/kernels``). The key hashes what
decides the machine code: the kernel's name (with its compile-time parameters), its argument
types and launch bounds, the compute capability, numba-cuda's version and the source of the
kernel package. A file holds a header (format, the key's fields, the entry point's name, the
cubin's length and SHA-256) and then the cubin. It is written to a temporary file in the folder
and renamed into place; a file whose header, hash or ELF magic does not match is reported and
rebuilt, never loaded.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import pathlib
import re
import sys
import tempfile
import time

MAGIC = b"GPUCNN-CUBIN 1\n"
PKG_DIR = pathlib.Path(__file__).resolve().parent.parent     # kernels/ (gpucnn.kernels)


def cache_dir() -> pathlib.Path:
    """The folder of the kernel cache (not created here)."""
    d = os.environ.get("GPUCNN_CACHE_DIR")
    if d:
        return pathlib.Path(d).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "gpucnn" / "kernels"


@functools.lru_cache(maxsize=None)
def source_hash() -> str:
    """SHA-256 over every ``.py`` file of the kernel package (a change anywhere rebuilds all)."""
    h = hashlib.sha256()
    for path in sorted(PKG_DIR.rglob("*.py")):
        h.update(str(path.relative_to(PKG_DIR)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def numba_cuda_version() -> str:
    try:
        import numba_cuda

        return str(getattr(numba_cuda, "__version__", "unknown"))
    except ImportError:  # pragma: no cover - an old numba with the built-in CUDA target
        import numba

        return f"numba-{numba.__version__}"


def cache_note() -> str:
    """One line on what the cached kernels depend on (``python -m gpucnn.cache info``)."""
    return f"numba-cuda {numba_cuda_version()}, kernel source {source_hash()[:12]}"


def key_fields(spec, cc) -> dict:
    """What decides a kernel's machine code (the cache key, spelled out)."""
    return {"name": spec.name,
            "argtypes": [str(t) for t in spec.argtypes],
            "launch_bounds": list(spec.launch_bounds) if spec.launch_bounds else None,
            "arch": f"sm_{cc[0]}{cc[1]}",
            "numba_cuda": numba_cuda_version(),
            "source": source_hash()}


def entry_path(spec, cc) -> pathlib.Path:
    fields = key_fields(spec, cc)
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:20]
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", spec.name).strip("_")
    return cache_dir() / f"{safe}-{fields['arch']}-{digest}.cubin"


class Built:
    """A kernel's cubin and the name of its entry point (``ptx``: the PTX it was assembled
    from, when it was built in this process)."""

    __slots__ = ("cubin", "entry", "seconds", "source", "ptx")

    def __init__(self, cubin: bytes, entry: str, seconds: float = 0.0, source: str = "built",
                 ptx: str | None = None):
        self.cubin, self.entry, self.seconds, self.source = cubin, entry, seconds, source
        self.ptx = ptx


def build(spec, cc) -> Built:
    """Compile ``spec`` for compute capability ``cc`` (no GPU needed): PTX, then a cubin."""
    from numba import cuda
    from numba.cuda.cudadrv import driver

    t = time.perf_counter()
    ptx, _ = cuda.compile_ptx(spec.pyfunc, spec.sig, cc=tuple(cc),
                              launch_bounds=spec.launch_bounds)
    m = re.search(r"\.entry\s+(\S+)\s*\(", ptx)
    if m is None:  # pragma: no cover - Numba always emits one kernel entry
        raise RuntimeError(f"{spec.name}: no .entry in the PTX Numba made")
    linker = driver._Linker(cc=tuple(cc))
    linker.add_ptx(ptx.encode())
    cubin = cubin_bytes(linker.complete())
    return Built(cubin, m.group(1), time.perf_counter() - t, ptx=ptx)


def cubin_bytes(obj) -> bytes:
    """The bytes of a cubin from Numba's linker (bytes, or a cuda.core ``ObjectCode``)."""
    for code in (obj, getattr(obj, "code", None)):
        if isinstance(code, (bytes, bytearray, memoryview)):
            return bytes(code)
    raise TypeError(f"cannot get the cubin bytes out of {type(obj).__name__}")


class CacheEntryError(ValueError):
    """A cache file that is not what its name says (corrupt, truncated or foreign)."""


def read(path: pathlib.Path, fields: dict) -> Built:
    """The entry at ``path``, checked against ``fields``; CacheEntryError when it does not hold."""
    data = path.read_bytes()
    if not data.startswith(MAGIC):
        raise CacheEntryError(f"{path.name}: not a gpucnn cubin file")
    end = data.find(b"\n", len(MAGIC))
    try:
        head = json.loads(data[len(MAGIC):end])
    except ValueError:
        raise CacheEntryError(f"{path.name}: unreadable header") from None
    body = data[end + 1:]
    if head.get("key") != fields:
        raise CacheEntryError(f"{path.name}: built for another key ({head.get('key')})")
    if len(body) != head.get("size") or hashlib.sha256(body).hexdigest() != head.get("sha256"):
        raise CacheEntryError(f"{path.name}: truncated or corrupted (length or SHA-256 differs)")
    if not body.startswith(b"\x7fELF") or not isinstance(head.get("entry"), str):
        raise CacheEntryError(f"{path.name}: the payload is not a cubin")
    return Built(body, head["entry"], source="cache")


def write(path: pathlib.Path, fields: dict, built: Built) -> None:
    """Store ``built`` at ``path`` atomically (a reader sees no file or the whole file)."""
    head = {"key": fields, "entry": built.entry, "size": len(built.cubin),
            "sha256": hashlib.sha256(built.cubin).hexdigest(), "seconds": round(built.seconds, 3)}
    blob = MAGIC + json.dumps(head, sort_keys=True).encode() + b"\n" + built.cubin
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


#: Whether a kernel compiled on a cache miss is announced on stderr (one line each).
ANNOUNCE = True
_announced = {"first": False}


def _announce(spec, cc, built, folder):
    if not ANNOUNCE:
        return
    if not _announced["first"]:
        _announced["first"] = True
        print(f"gpucnn: compiling CUDA kernels for sm_{cc[0]}{cc[1]} into {folder} (once per "
              "machine; `python -m gpucnn.cache fill` compiles them all ahead of time)",
              file=sys.stderr, flush=True)
    print(f"gpucnn: compiled {spec.name} in {built.seconds:.1f} s", file=sys.stderr, flush=True)


def get(spec, cc, *, rebuild: bool = False) -> Built:
    """The cubin of ``spec`` for ``cc``: from the cache when a valid entry is there, else built
    and stored. A cache that cannot be written (read-only folder) only costs the storing."""
    cc = tuple(int(v) for v in cc)
    fields = key_fields(spec, cc)
    path = entry_path(spec, cc)
    if not rebuild and path.exists():
        try:
            return read(path, fields)
        except (CacheEntryError, OSError) as e:
            print(f"gpucnn: ignoring the kernel cache entry {path}: {e}; rebuilding it",
                  file=sys.stderr, flush=True)
    built = build(spec, cc)
    try:
        write(path, fields, built)
    except OSError as e:
        print(f"gpucnn: cannot store {spec.name} in the kernel cache {path.parent}: {e}",
              file=sys.stderr, flush=True)
    _announce(spec, cc, built, path.parent)
    return built


def _fill_one(args):
    name, cc, rebuild = args
    global ANNOUNCE
    ANNOUNCE = False
    from . import _registry

    spec = {s.name: s for s in _registry.all_kernels()}[name]
    t = time.perf_counter()
    fault = os.environ.get("GPUCNN_CACHE_FAULT")    # the GPU check's own test makes one fail
    try:
        if fault and name.startswith(fault):
            raise RuntimeError(f"injected compile fault in {name} (GPUCNN_CACHE_FAULT)")
        built = get(spec, cc, rebuild=rebuild)
    except Exception as e:  # noqa: BLE001 - reported per kernel by fill()
        return name, None, time.perf_counter() - t, f"{type(e).__name__}: {e}"
    return name, built.source, time.perf_counter() - t, None


def fill(cc, *, jobs: int | None = None, names=None, rebuild: bool = False, out=sys.stderr):
    """Compile every registered kernel (or ``names``) for ``cc`` into the cache, ``jobs``
    processes at a time; prints one line per kernel. Returns ``{name: (source, seconds, error)}``
    where source is 'cache' (already there), 'built', or None on failure."""
    import concurrent.futures as cf
    import multiprocessing as mp

    from . import _registry

    specs = [s for s in _registry.all_kernels() if names is None or s.name in names]
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(specs) or 1))
    cc = tuple(int(v) for v in cc)
    res = {}
    t0 = time.perf_counter()
    print(f"gpucnn: {len(specs)} kernels for sm_{cc[0]}{cc[1]} into {cache_dir()} "
          f"({jobs} processes)", file=out, flush=True)
    work = [(s.name, cc, rebuild) for s in specs]
    simulator = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")
    pool = None
    if jobs == 1 and not simulator:
        results = map(_fill_one, work)
    else:
        # spawned workers: no inherited CUDA context, and Numba's real compiler even when this
        # process runs the simulator (Numba reads the variable when a worker imports it)
        pool = cf.ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn"))
        saved = os.environ.pop("NUMBA_ENABLE_CUDASIM", None)
        try:
            futures = [pool.submit(_fill_one, w) for w in work]
        finally:
            if saved is not None:
                os.environ["NUMBA_ENABLE_CUDASIM"] = saved
        results = (f.result() for f in cf.as_completed(futures))
    try:
        for i, (name, source, sec, err) in enumerate(results, 1):
            res[name] = (source, sec, err)
            state = f"FAILED {err}" if err else ("cached" if source == "cache" else "compiled")
            print(f"  [{i:2d}/{len(specs)}] {name:48s} {sec:6.1f} s  {state}", file=out,
                  flush=True)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    bad = sum(1 for v in res.values() if v[2])
    print(f"gpucnn: {len(specs) - bad} of {len(specs)} kernels ready in "
          f"{time.perf_counter() - t0:.1f} s" + (f", {bad} FAILED" if bad else ""), file=out,
          flush=True)
    return res
