"""Parts of one batch computed on separate threads (``gpucnn.models`` splits a training step).

Every op but dropout computes each sample on its own, so a part of the batch gets exactly its rows
of the whole batch's result. Dropout draws a random key per call: inside a split step the ``k``-th
dropout call of every part shares one key (drawn before the step by ``gpucnn.models``, or else
once, by whichever part gets there first) and each part takes its rows of the whole batch's
mask, so that the split step drops what the unsplit step would.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager

_local = threading.local()


class Shared:
    """The keys of one split step's dropout calls, shared by its parts (drawn before the step
    when ``keys`` is given, else on demand by whichever part gets to a call first)."""

    def __init__(self, keys=None):
        self.lock = threading.Lock()
        self.keys = list(keys) if keys is not None else []


class Part:
    """Rows ``lo:hi`` of a batch of ``n``; ``calls`` counts this part's dropout calls."""

    __slots__ = ("lo", "hi", "n", "shared", "calls")

    def __init__(self, lo, hi, n, shared):
        self.lo, self.hi, self.n, self.shared, self.calls = lo, hi, n, shared, 0


def current():
    """The part of a batch this thread computes, or None outside a split step."""
    return getattr(_local, "part", None)


@contextmanager
def batch_part(lo: int, hi: int, n: int, shared: Shared):
    prev = current()
    _local.part = Part(lo, hi, n, shared)
    try:
        yield _local.part
    finally:
        _local.part = prev


def draw(fn):
    """``fn()`` (a random key), or inside a split step the key of this dropout call shared by
    every part (``fn`` runs once per call index)."""
    part = current()
    if part is None:
        return fn()
    k = part.calls
    part.calls += 1
    shared = part.shared
    with shared.lock:
        while len(shared.keys) <= k:
            shared.keys.append(fn())
        return shared.keys[k]
