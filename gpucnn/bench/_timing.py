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


def interleaved(sides, warmup: int, repeats: int, per_call: int = 1, gap: float = 0.0,
                lead: float = 0.0, burst: int = 1):
    """Time ``sides`` in rounds (``A B A B ...``), so that a load change on the machine hits
    every side alike. In each round a side first gets ``gap`` seconds of idle, then runs untimed
    for ``lead`` seconds (at least one call when ``lead > 0``), then ``burst`` timed calls back to
    back; a sample is seconds per unit of work
    (a call does ``per_call`` units). Returns ``sides`` with their ``samples`` filled.

    Why the gap and the lead calls: PyTorch's OpenMP workers keep spinning for milliseconds after
    each parallel region (libgomp's default wait policy), so whatever runs next shares a core
    with them (measured on 2 vCPUs: a 0.25 ms NumPy op took 3.5 ms right after a PyTorch op, and
    PyTorch's own single-threaded ops suffered alike). Long calls (a training epoch) wait out the
    spinning with a short gap; short calls (one op) instead run untimed through the spinning, then
    back to back, which measures them warm, as they run inside a training step."""
    for s in sides:
        for _ in range(warmup):
            s.run()
        s.sync()
    for _ in range(repeats):
        for s in sides:
            s.sync()
            if gap:
                time.sleep(gap)
            if lead > 0:
                t_lead = time.perf_counter()
                s.run()
                while time.perf_counter() - t_lead < lead:
                    s.run()
            s.sync()
            t0 = time.perf_counter()
            for _ in range(burst):
                s.run()
            s.sync()
            s.samples.append((time.perf_counter() - t0) / (burst * per_call))
    return sides


def repeat_count(seconds_per_call: float, budget: float, lo: int, hi: int) -> int:
    """How many calls fit in ``budget`` seconds, clamped to ``[lo, hi]``."""
    if seconds_per_call <= 0:
        return hi
    return max(lo, min(hi, int(budget / seconds_per_call)))
