"""How the data of ``fit``, ``evaluate`` and ``predict`` reaches the kernels: batches, and the
device memory the data may use.

``Batches(x, y, batch_size=32, shuffle=True, seed=None)`` yields ``(x_batch, y_batch)`` (or
``x_batch`` alone when ``y`` is None) for one pass over the data; iterating again starts a new
epoch with a new order. Arrays stay where they are: NumPy arrays give NumPy batches, arrays of the
``cuda`` backend give device batches. When shuffling, NumPy data is gathered one batch at a time
(no shuffled copy of the whole dataset: an epoch of MNIST would be 188 MB of fresh pages, and a
batch gathered just before its step is still in cache when the step reads it); device data is
gathered into the new order once per epoch (one gather on the device) and the batches are slices
of it. The last batch holds the remainder unless ``drop_remainder=True``. The order comes from
``gpucnn.random.generator()`` (reset by ``gpucnn.manual_seed``), or from a generator of its own
when ``seed`` is an int.

``Feed`` puts a call's host arrays on a kernel set with the ``streams`` capability (the cuda set):
whole, once per call, where they fit the data's share of device memory (``set_data_memory_limit``
or ``GPUCNN_DATA_MEMORY``, else half the free memory), else streamed in chunks of whole batches
through pinned host memory and two device buffers on the set's copy stream, the kernels waiting
for a chunk's copy on the device. docs/data.md ("Data larger than the GPU") says when the host
waits, what counts twice and what is raised. The NumPy set has no such capability.

>>> import numpy as np
>>> from gpucnn.data import Batches
>>> b = Batches(np.arange(10.0), np.arange(10), batch_size=4, shuffle=False)
>>> len(b), [len(xb) for xb, yb in b]
(3, [4, 4, 2])
"""
from __future__ import annotations

import os
import re

import numpy as np

from gpucnn import backend
from gpucnn import random as _random
from gpucnn.kernels import has

#: The largest chunk streamed in one copy (by arithmetic, about 10 ms at PCIe 4.0 x16's 25 GB/s).
CHUNK_BYTES = 256 << 20

_limit = None          # set_data_memory_limit's value


def set_data_memory_limit(nbytes) -> None:
    """Cap the device memory the data of ``fit``, ``evaluate`` and ``predict`` may use at
    ``nbytes`` (an int >= 0); None: ``GPUCNN_DATA_MEMORY`` if set, else half of the device's
    free memory. Data above the cap is streamed (module docstring)."""
    global _limit
    if nbytes is not None and (isinstance(nbytes, bool) or not isinstance(nbytes, (int, np.integer))
                               or nbytes < 0):
        raise ValueError(f"set_data_memory_limit: expected a number of bytes (an int >= 0) or "
                         f"None, got {nbytes!r}")
    _limit = None if nbytes is None else int(nbytes)


def data_memory_limit():
    """``(bytes, where the cap comes from)`` set by ``set_data_memory_limit`` or
    ``GPUCNN_DATA_MEMORY``, or None when neither is set."""
    if _limit is not None:
        return _limit, "set_data_memory_limit"
    text = os.environ.get("GPUCNN_DATA_MEMORY", "").strip()
    if not text:
        return None
    m = re.fullmatch(r"(\d+)\s*([KMGT]?)(i?B)?", text, re.IGNORECASE)
    if m is None:
        raise ValueError(f"GPUCNN_DATA_MEMORY: expected bytes with an optional K, M, G or T "
                         f"suffix (e.g. 536870912 or 512M), got {text!r}")
    unit = m.group(2).upper()
    return int(m.group(1)) << (10 * ("KMGT".index(unit) + 1) if unit else 0), "GPUCNN_DATA_MEMORY"


def batch_bounds(n: int, batch_size: int, drop_remainder: bool = False) -> list:
    """``[(start, stop), ...]`` covering ``range(n)`` in steps of ``batch_size``."""
    stop = n - n % batch_size if drop_remainder else n
    return [(i, min(i + batch_size, n)) for i in range(0, stop, batch_size)]


class Batches:
    """Batches of ``x`` (and ``y``) for one epoch per iteration; see the module docstring."""

    def __init__(self, x, y=None, batch_size=32, shuffle=True, seed=None, drop_remainder=False):
        if (isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer))
                or batch_size < 1):
            raise ValueError(f"Batches: batch_size must be a positive int, got {batch_size!r}")
        n = len(x)
        if y is not None and len(y) != n:
            raise ValueError(f"Batches: x and y must have the same length, got {n} and {len(y)}")
        if n == 0:
            raise ValueError("Batches: the dataset is empty (0 samples)")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise TypeError(f"Batches: seed must be an int or None, got {seed!r}")
        self.x, self.y, self.n = x, y, n
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_remainder = bool(drop_remainder)
        self._gen = np.random.default_rng(seed) if seed is not None else None
        self.bounds = batch_bounds(n, self.batch_size, self.drop_remainder)

    def __len__(self) -> int:
        return len(self.bounds)

    def epoch_plan(self):
        """``(x, y, order)`` for one epoch: batch ``(a, b)`` of the epoch is ``x[order[a:b]]``,
        or ``x[a:b]`` when ``order`` is None. Host arrays stay unshuffled and ``order`` is this
        epoch's permutation; device arrays come gathered into it (``order`` None)."""
        if not self.shuffle:
            return self.x, self.y, None
        perm = (self._gen if self._gen is not None else _random.generator()).permutation(self.n)
        if isinstance(self.x, np.ndarray):
            return self.x, self.y, perm
        idx = backend.kernels().asarray(perm)
        return self.x[idx], (None if self.y is None else self.y[idx]), None

    def __iter__(self):
        x, y, order = self.epoch_plan()
        for a, b in self.bounds:
            rows = slice(a, b) if order is None else order[a:b]
            yield x[rows] if y is None else (x[rows], y[rows])


def data_budget(ks) -> tuple:
    """``(bytes, where from)``: the device memory the data of a call may use on kernel set ``ks``
    (one with the ``streams`` capability)."""
    limit = data_memory_limit()
    if limit is not None:
        return limit
    free = ks.streams().free_bytes()
    return free // 2, f"half of the device's {free:,} free bytes"


def chunks(bounds, rows) -> list:
    """Consecutive batches ``bounds`` grouped into lists spanning at most ``rows`` rows each."""
    groups = []
    for a, b in bounds:
        if groups and b - groups[-1][0][0] <= rows:
            groups[-1].append((a, b))
        else:
            groups.append([(a, b)])
    return groups


class Feed:
    """The arrays ``x`` (and ``y``, or None) of one call ``op`` on the active kernel set, whole or
    streamed (module docstring); ``copies`` is how many times their size they take whole (2 when
    ``fit`` shuffles on the device), ``budget`` the ``(bytes, where from)`` they may use (default
    ``data_budget``); ``used`` is what they take."""

    def __init__(self, op, x, y, batch_size, copies=1, budget=None):
        ks = backend.kernels()
        self.n, self.used, self._streamer = len(x), 0, None
        self.x, self.y = x, y
        if not (has(ks, "streams") and isinstance(x, np.ndarray)):
            self.x, self.y = ks.asarray(x), (None if y is None else ks.asarray(y))
            return
        budget, where = data_budget(ks) if budget is None else budget
        arrays = [a for a in (x, y) if a is not None]
        row = sum(a[:1].nbytes for a in arrays)
        if self.n * row * copies <= budget:
            self.x, self.y = ks.asarray(x), (None if y is None else ks.asarray(y))
            self.used = self.n * row * copies
            return
        batch = min(batch_size, self.n)
        most = -(-self.n // batch) * batch
        for slots in (2, 1):
            rows = min(min(CHUNK_BYTES, budget // slots) // row // batch * batch, most)
            if rows:
                break
        else:
            raise MemoryError(
                f"{op}: one batch of {batch} samples needs {batch * row:,} bytes of device memory "
                f"({row:,} per sample), but the data may use {budget:,} bytes ({where}); lower "
                "batch_size, or raise the cap with gpucnn.data.set_data_memory_limit(nbytes) or "
                "GPUCNN_DATA_MEMORY")
        self._streamer = _Streamer(ks.streams(), arrays, rows, slots)
        self.used = rows * row * slots

    @property
    def streamed(self) -> bool:
        """Whether the arrays are streamed (else held whole where the kernels run)."""
        return self._streamer is not None

    def batches(self, bounds, x=None, y=None, order=None):
        """For each batch ``(a, b)`` of ``bounds``, what a runner's ``step`` takes:
        ``(x[a:b], y[a:b])``, or with an ``order`` on host arrays ``(x, y, order[a:b])``
        (``x``, ``y``, ``order``: an ``epoch_plan`` of ``self.x`` and ``self.y``, these two
        unshuffled by default); streamed, ``(x rows, y rows)`` on the device (y None stays
        None)."""
        x = self.x if x is None else x
        y = self.y if y is None else y
        if self._streamer is not None:
            return self._streamer.batches([a for a in (x, y) if a is not None], order, bounds,
                                          y is None)
        if order is None:
            return ((x[a:b], None if y is None else y[a:b]) for a, b in bounds)
        return ((x, y, order[a:b]) for a, b in bounds)


class _Streamer:
    """Host arrays streamed through ``slots`` pairs of pinned and device buffers of ``rows``
    rows each, on the ``streams`` engine ``engine``."""

    def __init__(self, engine, arrays, rows, slots):
        self.engine, self.rows = engine, rows
        shapes = [((rows,) + a.shape[1:], a.dtype) for a in arrays]
        self.dev = [[engine.empty(*s) for s in shapes] for _ in range(slots)]
        self.pin = [[engine.pinned(*s) for s in shapes] for _ in range(slots)]
        self.copied = [None] * slots       # the last copy out of each slot's pinned buffers
        self.released = [None] * slots     # recorded after the last step reading each slot

    def _load(self, k, arrays, order, lo, hi):
        """Chunk ``k`` (rows ``lo:hi`` of the epoch) into slot ``k % slots``."""
        i, m = k % len(self.dev), hi - lo
        self.engine.finish(self.copied[i])
        for a, p in zip(arrays, self.pin[i]):
            if order is None:
                p[:m] = a[lo:hi]
            else:
                np.take(a, order[lo:hi], axis=0, out=p[:m], mode="clip")  # unbuffered
        self.copied[i] = self.engine.upload(
            [(d[:m], p[:m]) for d, p in zip(self.dev[i], self.pin[i])], self.released[i])

    def batches(self, arrays, order, bounds, no_y):
        groups = chunks(bounds, self.rows)
        ahead = len(self.dev) - 1          # chunks copied ahead of the one whose steps run

        def load(k):
            self._load(k, arrays, order, groups[k][0][0], groups[k][-1][1])

        try:
            if ahead and groups:
                load(0)
            for k, group in enumerate(groups):
                if k + ahead < len(groups):
                    load(k + ahead)
                i, lo = k % len(self.dev), group[0][0]
                self.engine.wait(self.copied[i])
                try:
                    for a, b in group:
                        out = [d[a - lo:b - lo] for d in self.dev[i]]
                        yield (out[0], None) if no_y else tuple(out)
                finally:
                    self.released[i] = self.engine.record()
        finally:                           # no copy still reads a pinned buffer
            for ev in self.copied:
                self.engine.finish(ev)


def _items(v):
    """The number of items of a nested-list level, or None for a number."""
    if isinstance(v, (list, tuple)) or (isinstance(v, np.ndarray) and v.ndim):
        return len(v)
    return None


def _ragged(a, where: str):
    """Where nested lists ``a`` stop being rectangular (``"x[0] has 3 items, x[2] has 2"``), or
    None when they are rectangular."""
    items = list(a)
    counts = [_items(v) for v in items]
    for j, c in enumerate(counts):
        if c != counts[0]:
            def say(c):
                return "a number" if c is None else f"{c} item{'s' if c != 1 else ''}"
            return f"{where}[0] has {say(counts[0])}, {where}[{j}] has {say(c)}"
    if counts and counts[0] is not None:
        for i, v in enumerate(items):
            found = _ragged(v, f"{where}[{i}]")
            if found:
                return found
    return None


def as_array(a, what: str, op: str, dtype=None):
    """``np.asarray(a, dtype)`` for an array or (nested) list; a nested list whose rows differ
    in length raises a ValueError naming ``op``, ``what`` and the first two rows that differ."""
    try:
        return np.asarray(a, dtype=dtype)
    except (ValueError, TypeError) as e:
        where = _ragged(a, what) if isinstance(a, (list, tuple)) else None
        if where is None:
            raise type(e)(f"{op}: cannot make an array of {what}: {e}") from None
        raise ValueError(f"{op}: {what} is a nested list whose rows differ in length ({where}); "
                         "every sample must have the same shape") from None


__all__ = ["Batches", "Feed", "as_array", "batch_bounds", "chunks", "data_budget",
           "data_memory_limit", "set_data_memory_limit"]
