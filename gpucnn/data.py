"""A small batch iterator shared by ``Model.fit`` and the examples.

``Batches(x, y, batch_size=32, shuffle=True, seed=None)`` yields ``(x_batch, y_batch)`` (or
``x_batch`` alone when ``y`` is None) for one pass over the data; iterating again starts a new
epoch with a new order. Arrays stay where they are: NumPy arrays give NumPy batches, arrays of the
``cuda`` backend give device batches. When shuffling, NumPy data is gathered one batch at a time
(no shuffled copy of the whole dataset: an epoch of MNIST would be 188 MB of fresh pages, and a
batch gathered just before its step is still in cache when the step reads it); device data is
gathered into the new order once per epoch (one gather on the device) and the batches are slices
of it. The last batch holds the remainder unless ``drop_remainder=True``.

The order comes from ``gpucnn.random.generator()`` (reset by ``gpucnn.manual_seed``), or from a
generator of its own when ``seed`` is an int.

>>> import numpy as np
>>> from gpucnn.data import Batches
>>> b = Batches(np.arange(10.0), np.arange(10), batch_size=4, shuffle=False)
>>> len(b), [len(xb) for xb, yb in b]
(3, [4, 4, 2])
"""
from __future__ import annotations

import numpy as np

from gpucnn import backend
from gpucnn import random as _random


def batch_bounds(n: int, batch_size: int, drop_remainder: bool = False) -> list:
    """``[(start, stop), ...]`` covering ``range(n)`` in steps of ``batch_size``."""
    stop = n - n % batch_size if drop_remainder else n
    return [(i, min(i + batch_size, n)) for i in range(0, stop, batch_size)]


def _take(a, perm_host):
    """``a[perm]`` with the index on the array's own device."""
    if isinstance(a, np.ndarray):
        return a[perm_host]
    return a[backend.kernels().asarray(perm_host)]


class Batches:
    """Batches of ``x`` (and ``y``) for one epoch per iteration; see the module docstring."""

    def __init__(self, x, y=None, batch_size=32, shuffle=True, seed=None, drop_remainder=False):
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
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

    def _permutation(self):
        gen = self._gen if self._gen is not None else _random.generator()
        return gen.permutation(self.n)

    def epoch_arrays(self):
        """``(x, y)`` in this epoch's order (a shuffled copy, or the arrays themselves)."""
        if not self.shuffle:
            return self.x, self.y
        perm = self._permutation()
        return _take(self.x, perm), (None if self.y is None else _take(self.y, perm))

    def epoch_plan(self):
        """``(x, y, order)`` for one epoch: batch ``(a, b)`` of the epoch is ``x[order[a:b]]``
        (see ``gather``), or ``x[a:b]`` when ``order`` is None. Host arrays stay unshuffled and
        ``order`` is this epoch's permutation; device arrays come gathered (``order`` None)."""
        if self.shuffle and isinstance(self.x, np.ndarray):
            return self.x, self.y, self._permutation()
        x, y = self.epoch_arrays()
        return x, y, None

    def __iter__(self):
        x, y, order = self.epoch_plan()
        for a, b in self.bounds:
            xb, yb = gather(x, y, order, a, b)
            yield xb if y is None else (xb, yb)


def gather(x, y, order, a, b, out=None):
    """Batch ``(a, b)`` of an ``epoch_plan``: ``(x rows, y rows)`` (y None stays None). With
    ``order``, x's rows are gathered into ``out`` (a buffer of at least ``b - a`` rows of x's
    shape and dtype) when given, else into a new array; without, they are slices (views)."""
    if order is None:
        return x[a:b], (None if y is None else y[a:b])
    idx = order[a:b]
    xb = np.take(x, idx, axis=0, out=None if out is None else out[:b - a])
    return xb, (None if y is None else y[idx])


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


__all__ = ["Batches", "batch_bounds", "gather", "as_array"]
