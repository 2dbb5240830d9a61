"""Threads for the heavy kernels: batch parts on a small pool, BLAS single-threaded meanwhile.

NumPy releases the GIL inside ``np.dot``'s BLAS call and inside large copies and ufunc loops
(every kernel multiplies with ``np.dot``, never ``np.matmul``/``@``: a 2-D matmul is one outer
iteration of a generalised ufunc, below NumPy's threshold for releasing the GIL, so two threads
multiplying with it run one after the other; measured 1.8x against 0.8x on two cores), so a kernel
whose batch is split over Python threads uses every core for its GEMMs *and* for its im2col
copies and epilogues (a multithreaded BLAS only parallelises the GEMMs, and on small
matrices its spinning workers cost more than they give). While any kernel runs, the BLAS
libraries that ``threadpoolctl`` finds are limited to one thread; the previous limit comes back
when the last running kernel returns. Without ``threadpoolctl`` installed the BLAS is left as is.

``GPUCNN_NUM_THREADS`` (read once) or ``set_num_threads`` sets the thread count; the default is
the number of CPUs the process may use, at most 8. Work below ``min_parallel_flops`` (``tuning``) stays
on the calling thread (the hand-off and the GIL-held Python of many small blocks cost more
than a second core saves), and tiny work does not even touch the BLAS thread setting.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager, nullcontext

from .tuning import TUNING as T

try:  # optional: limits BLAS threads while a kernel runs its own
    from threadpoolctl import ThreadpoolController
except ImportError:  # pragma: no cover - depends on the environment
    ThreadpoolController = None

_lock = threading.Lock()
_local = threading.local()   # .serial: this thread is one part of a data_parallel split
                             # .split: this thread runs a part of a split over threads
_depth = 0
_limiter = None
_blas = None          # threadpoolctl's controllers of the BLAS libraries, found on first use
_pool = None
_pool_size = 0


def cpus() -> int:
    """The CPUs this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def _default_threads() -> int:
    env = os.environ.get("GPUCNN_NUM_THREADS", "").strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError(f"GPUCNN_NUM_THREADS must be a positive integer, got {env!r}")
        return n
    return max(1, min(cpus(), 8))


_num_threads = _default_threads()


def get_num_threads() -> int:
    """Threads the NumPy kernels split their batch over."""
    return _num_threads


def set_num_threads(n: int) -> None:
    """Set the threads the NumPy kernels use (1 = run on the calling thread only)."""
    global _num_threads
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"set_num_threads: expected a positive int, got {n!r}")
    _num_threads = n


@contextmanager
def num_threads(n: int):
    """``set_num_threads(n)`` inside the ``with`` block, the previous count after it."""
    before = get_num_threads()
    set_num_threads(n)
    try:
        yield n
    finally:
        set_num_threads(before)


def _blas_libs():
    global _blas
    if _blas is None:
        _blas = ([lc for lc in ThreadpoolController().lib_controllers if lc.user_api == "blas"]
                 if ThreadpoolController is not None else [])
    return _blas


@contextmanager
def single_threaded_blas():
    """BLAS limited to one thread while any kernel is inside this block (re-entrant, thread-safe)."""
    global _depth, _limiter
    with _lock:
        if _depth == 0:
            _limiter = [(lc, lc.get_num_threads()) for lc in _blas_libs()]
            for lc, _ in _limiter:
                lc.set_num_threads(1)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                for lc, n in _limiter:
                    lc.set_num_threads(n)
                _limiter = None


def _after_fork_in_child() -> None:
    """A forked child has only the thread that forked: the pool's threads (and any lock another
    thread held) stayed in the parent, so the child starts a pool of its own when it needs one."""
    global _lock, _pool, _pool_size
    _lock = threading.Lock()
    _pool, _pool_size = None, 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _get_pool(workers: int) -> ThreadPoolExecutor:
    global _pool, _pool_size
    with _lock:
        if _pool is None or _pool_size < workers:
            # a larger pool replaces the old one, which is not shut down: another thread may be
            # about to submit to it; its threads end once the last user lets it go (the
            # executor's own weakref callback)
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gpucnn-kernel")
            _pool_size = workers
        return _pool


def _split(fn, n: int, parts: int, serial: bool) -> list:
    """``[fn(lo, hi), ...]`` over ``parts`` contiguous parts of ``range(n)`` (each inside
    ``serial_kernels`` when ``serial``): part 0 on this thread, the others on the pool; every
    part is waited for, even after an error, and the first exception is re-raised then."""
    bounds = [n * k // parts for k in range(parts + 1)]
    pool = _get_pool(parts - 1)
    futures = [pool.submit(_part, fn, bounds[k], bounds[k + 1], serial) for k in range(1, parts)]
    try:
        first = _part(fn, bounds[0], bounds[1], serial)
    finally:
        wait(futures)                # every part, even after an error
    return [first] + [f.result() for f in futures]


@contextmanager
def _thread_flag(name):
    """Sets ``_local.<name>`` for the block, then restores it."""
    prev = getattr(_local, name, False)
    setattr(_local, name, True)
    try:
        yield
    finally:
        setattr(_local, name, prev)


def serial_kernels():
    """A context: every kernel called on this thread inside it runs on this thread alone (this
    thread is already one part of a split: a thread of ``data_parallel``, or a process)."""
    return _thread_flag("serial")


def _part(fn, lo, hi, serial):
    with serial_kernels() if serial else nullcontext(), _thread_flag("split"):
        return fn(lo, hi)


def block_scale() -> int:
    """``threaded_block_scale`` (``tuning``) on a thread that runs one part of a split over threads (the
    kernels' blocks grow by it, see above), else 1."""
    return T.threaded_block_scale if getattr(_local, "split", False) else 1


def data_parallel(fn, n: int, parts: int | None = None):
    """``[fn(lo, hi), ...]`` over ``parts`` contiguous parts of ``range(n)`` (default: the kernel
    threads), each on its own thread, with BLAS single-threaded and every kernel called inside
    ``fn`` running on its caller's thread (no nested split). Part 0 runs on the calling thread;
    results come back in part order; the first exception is re-raised after every part ended.

    This is the split a whole training step uses (see ``gpucnn.models``): NumPy's elementwise
    work runs on one core per call, so two halves of a batch on two threads keep both cores
    busy for all of the step, not only inside the GEMMs.
    """
    parts = max(1, min(parts or get_num_threads(), n))
    if parts == 1 or getattr(_local, "serial", False):
        return [fn(0, n)]
    with single_threaded_blas():
        return _split(fn, n, parts, serial=True)


def run_parts(fn, n: int, flops: float):
    """``[fn(lo, hi), ...]`` over a split of ``range(n)`` into contiguous parts, one per thread
    (a single part when ``flops`` is small, threads are off, or the caller is already one part
    of a ``data_parallel`` split), with BLAS single-threaded. Part 0 runs on the calling thread.
    Results come back in part order."""
    if getattr(_local, "serial", False):
        return [fn(0, n)]
    parts = min(get_num_threads(), n) if flops >= T.min_parallel_flops else 1
    if parts <= 1 and flops < T.min_blas_limit_flops:
        return [fn(0, n)]
    with single_threaded_blas():
        return [fn(0, n)] if parts <= 1 else _split(fn, n, parts, serial=False)
