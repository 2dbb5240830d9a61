"""Which threads of this process are inside a gpucnn training or inference call right now.

A worker process is a ``fork`` of this process. A fork copies every lock in the state it is in
at that moment, so a fork taken while another thread is inside NumPy, BLAS or gpucnn (holding
an allocator or BLAS lock, or a pipe half written) can leave the child stuck on a lock nobody
will release, or two processes reading one pipe. So workers are forked only while no other
thread has a call open (``exclusive``): a thread that opens a call meanwhile waits for the fork
to finish, and a call that finds other calls open runs its steps in its own process instead.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager

_lock = threading.RLock()     # re-entrant: a fork under it may end an older worker set
_open: dict = {}          # thread ident -> number of calls that thread has open


def enter() -> None:
    """Count one more open call on this thread (waits while another thread forks)."""
    me = threading.get_ident()
    with _lock:
        _open[me] = _open.get(me, 0) + 1


def leave() -> None:
    """Count one call of this thread fewer."""
    me = threading.get_ident()
    with _lock:
        left = _open.get(me, 0) - 1
        if left > 0:
            _open[me] = left
        else:
            _open.pop(me, None)


@contextmanager
def open_call():
    """``enter`` for the block, ``leave`` after it."""
    enter()
    try:
        yield
    finally:
        leave()


def others() -> int:
    """How many other threads have calls open (a snapshot)."""
    me = threading.get_ident()
    with _lock:
        return sum(1 for t, n in _open.items() if t != me and n > 0)


@contextmanager
def exclusive():
    """Hold the call table for the block and yield whether this thread is the only one with
    calls open; no other thread can open a call until the block ends (fork inside it)."""
    me = threading.get_ident()
    with _lock:
        yield not any(n > 0 for t, n in _open.items() if t != me)
