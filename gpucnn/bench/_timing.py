"""Interleaved timing: warm-up, then rounds that run every side once, the median per side."""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field


@dataclass
class Side:
    """One contender of a measurement: ``run()`` does the work once, ``sync()`` waits for it
    (a device synchronisation on a GPU, nothing on a CPU)."""

    name: str
    run: callable
    sync: callable = lambda: None
    samples: list = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


def interleaved(sides, warmup: int, repeats: int, per_call: int = 1):
    """Time ``sides`` in rounds (``A B A B ...``), so that a load change on the machine hits
    every side alike; each sample is seconds per unit of work (a call does ``per_call`` units).
    Returns ``sides`` with their ``samples`` filled."""
    for s in sides:
        for _ in range(warmup):
            s.run()
        s.sync()
    for _ in range(repeats):
        for s in sides:
            s.sync()
            t0 = time.perf_counter()
            s.run()
            s.sync()
            s.samples.append((time.perf_counter() - t0) / per_call)
    return sides


def repeat_count(seconds_per_call: float, budget: float, lo: int, hi: int) -> int:
    """How many calls fit in ``budget`` seconds, clamped to ``[lo, hi]``."""
    if seconds_per_call <= 0:
        return hi
    return max(lo, min(hi, int(budget / seconds_per_call)))
