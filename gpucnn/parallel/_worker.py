"""The worker side of a ``WorkerSet`` (``workers``): the loop a forked worker runs, its
parent-death request, and the polling both sides of a pipe do.

Safety. Workers are forked only while no other thread of the process is inside a gpucnn call
(``_calls``); a concurrent call runs its steps in its own process, so two calls never share a
set or a pipe. Each worker closes the pipe ends it inherited from other workers, asks the kernel
to kill it when the thread that forked it ends (Linux's parent-death signal,
``prctl(PR_SET_PDEATHSIG, SIGKILL)``: a SIGKILL of the parent takes the workers with it), and
checks the parent's pid while it waits. The worker is a fork of a process that may have threads
(the kernel pool, OpenBLAS's pool); it only ever runs gpucnn's step on NumPy and single-threaded
BLAS, ignores SIGINT (the parent stops it) and leaves through ``os._exit``. A worker's exception
comes back as its traceback and is raised in the parent.
"""
from __future__ import annotations

import ctypes
import os
import signal
import time
import traceback

from gpucnn.parallel import step as _step

# Seconds a process polls before it blocks: the parent for a worker's answer (a step's part
# takes about as long on each side, so the answer comes soon), a worker for the next step
# (which follows after the optimizer's update, unless the epoch or fit call has ended).
SPIN_REPLY = 0.05
SPIN_NEXT = 0.005
# Seconds between a blocked worker's checks that its parent still runs.
PARENT_CHECK = 0.25
_PR_SET_PDEATHSIG = 1


def spin(conn, seconds) -> None:
    """Poll ``conn`` without sleeping for up to ``seconds`` (then return, ready or not): a process
    blocked in a read is woken by the scheduler tens to hundreds of microseconds after the data
    arrives, which a step of a millisecond or two feels; polling keeps the core awake instead."""
    end = time.perf_counter() + seconds
    poll = conn.poll
    while not poll() and time.perf_counter() < end:
        pass


def receive(conn, seconds, gone):
    """``conn``'s next message, polled for ``seconds`` first (``spin``); while blocked after
    that, ``gone()`` is asked every ``PARENT_CHECK`` seconds whether the other side has ended
    (then EOFError)."""
    spin(conn, seconds)
    while not conn.poll(PARENT_CHECK):
        if gone():
            raise EOFError
    return conn.recv()


_prctl = []          # [libc's prctl] once looked up (in the parent: no loader call after fork)


def find_prctl():
    if not _prctl:
        try:
            _prctl.append(ctypes.CDLL(None, use_errno=True).prctl)
        except (OSError, AttributeError):          # not Linux: the pid check alone
            _prctl.append(None)
    return _prctl[0]


def die_with_parent(parent: int, prctl) -> None:
    """In a worker: have the kernel send SIGKILL when the thread that forked it ends (Linux's
    parent-death signal), and leave at once if the parent is already gone (it died before the
    request took hold)."""
    if prctl is not None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def _status_kb(field):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def worker_loop(conn, parent, model, params, logits, need_out, x, y, out, loss, has,
                 grads) -> int:
    """The worker: run the parts the parent sends until it sends None (or goes away); on None it
    answers with its resident-memory growth in bytes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from gpucnn import backend

    rss0 = _status_kb("VmRSS")
    ks = backend.kernels()
    with ks.single_threaded_blas():
        while True:
            try:
                msg = receive(conn, SPIN_NEXT, lambda: os.getppid() != parent)
            except (EOFError, OSError):
                return 0
            if msg is None:
                hwm = _status_kb("VmHWM")
                try:
                    conn.send(-1 if hwm is None or rss0 is None else (hwm - rss0) * 1024)
                except OSError:
                    pass
                return 0
            try:
                lo, hi, n, keys = msg
                m = hi - lo
                res = _step.run_part(model, x, y, lo, hi, n, logits, keys)
                loss[0] = float(res[0])
                if need_out:
                    out[:m] = res[1]
                sink = res[2]
                for i, p in enumerate(params):
                    entry = sink.get(id(p))
                    has[i] = entry is not None
                    if entry is not None:
                        grads[i][...] = entry[1]
                conn.send(None)
            except BaseException:  # noqa: BLE001 - reported to the parent
                try:
                    conn.send(traceback.format_exc())
                except OSError:
                    return 1


__all__ = ["PARENT_CHECK", "SPIN_NEXT", "SPIN_REPLY", "die_with_parent", "find_prctl", "receive",
           "spin", "worker_loop"]
