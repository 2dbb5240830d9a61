"""Threads for the heavy kernels: batch parts on a small pool, BLAS single-threaded meanwhile.

NumPy releases the GIL inside BLAS calls and inside large copies and ufunc loops, so a kernel
whose batch is split over Python threads uses every core for its GEMMs *and* for its im2col
copies and epilogues (a multithreaded BLAS only parallelises the GEMMs, and on small
matrices its spinning workers cost more than they give). While any kernel runs, the BLAS
libraries that ``threadpoolctl`` finds are limited to one thread; the previous limit comes back
when the last running kernel returns. Without ``threadpoolctl`` installed the BLAS is left as is.

``GPUCNN_NUM_THREADS`` (read once) or ``set_num_threads`` sets the thread count; the default is
the number of CPUs the process may use, at most 8. Work below ``MIN_PARALLEL_FLOPS`` stays
on the calling thread (the hand-off costs more than it saves).
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

try:  # optional: limits BLAS threads while a kernel runs its own
    from threadpoolctl import ThreadpoolController
except ImportError:  # pragma: no cover - depends on the environment
    ThreadpoolController = None

MIN_PARALLEL_FLOPS = 8e6

_lock = threading.Lock()
_depth = 0
_limiter = None
_controller = None
_pool = None
_pool_size = 0


def _default_threads() -> int:
    env = os.environ.get("GPUCNN_NUM_THREADS", "").strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            raise ValueError(f"GPUCNN_NUM_THREADS must be a positive integer, got {env!r}") from None
        if n < 1:
            raise ValueError(f"GPUCNN_NUM_THREADS must be a positive integer, got {env!r}")
        return n
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 8))


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
def single_threaded_blas():
    """BLAS limited to one thread while any kernel is inside this block (re-entrant, thread-safe)."""
    global _depth, _limiter, _controller
    with _lock:
        if _depth == 0 and ThreadpoolController is not None:
            if _controller is None:
                _controller = ThreadpoolController()
            _limiter = _controller.limit(limits=1, user_api="blas")
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _limiter is not None:
                _limiter.restore_original_limits()
                _limiter = None


def _get_pool(workers: int) -> ThreadPoolExecutor:
    global _pool, _pool_size
    with _lock:
        if _pool is None or _pool_size < workers:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gpucnn-kernel")
            _pool_size = workers
        return _pool


def run_parts(fn, n: int, flops: float):
    """``[fn(lo, hi), ...]`` over a split of ``range(n)`` into contiguous parts, one per thread
    (a single part when ``flops`` is small or threads are off), with BLAS single-threaded.
    Part 0 runs on the calling thread. Results come back in part order."""
    parts = min(get_num_threads(), n) if flops >= MIN_PARALLEL_FLOPS else 1
    with single_threaded_blas():
        if parts <= 1:
            return [fn(0, n)]
        bounds = [n * k // parts for k in range(parts + 1)]
        pool = _get_pool(parts - 1)
        futures = [pool.submit(fn, bounds[k], bounds[k + 1]) for k in range(1, parts)]
        first = fn(bounds[0], bounds[1])
        return [first] + [f.result() for f in futures]
