"""Interleaved timing: warm-up, then rounds that run every side once, the median per side."""
from __future__ import annotations

import math
import os
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


def _busy():
    """``(CPU seconds the whole machine spent busy, CPU seconds this process and its reaped
    children spent)`` so far, or None where ``/proc/stat`` is unreadable."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
    except OSError:
        return None
    # user nice system idle iowait irq softirq steal ...: busy is all but idle and iowait
    ticks = [int(v) for v in fields[:8]]
    busy = sum(ticks) - ticks[3] - ticks[4]
    hz = os.sysconf("SC_CLK_TCK")
    t = os.times()
    return busy / hz, (t.user + t.system + t.children_user + t.children_system
                       + _live_children_ticks() / hz)


def _live_children_ticks() -> int:
    """CPU ticks spent so far by this process's children that are still running (fit's worker
    processes outlive the timed call; ``os.times`` counts a child only once it is reaped)."""
    me = str(os.getpid())
    total = 0
    try:
        names = os.listdir("/proc")
    except OSError:
        return 0
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()   # after "pid (comm) ": state, ppid, ...
        if len(fields) > 12 and fields[1] == me:
            total += int(fields[11]) + int(fields[12])   # utime, stime
    return total


def foreign_load(before, after, seconds: float) -> float:
    """The share of the machine's CPUs that other processes kept busy over ``seconds`` (0 when
    unknown): the machine's busy CPU time less this process's, over ``seconds`` times the CPUs."""
    if before is None or after is None or seconds <= 0:
        return 0.0
    other = (after[0] - before[0]) - (after[1] - before[1])
    return max(0.0, other) / (seconds * (os.cpu_count() or 1))


# A sample longer than MIN_CHECKED seconds taken while other processes kept more than
# MAX_FOREIGN of the CPUs busy is measured again (at most RETRIES times): on a shared machine
# another tenant's test run otherwise decides the ratio (PyTorch's spinning OpenMP threads suffer
# most, which flatters gpucnn).
MIN_CHECKED, MAX_FOREIGN, RETRIES = 0.2, 0.1, 4
discarded = [0]


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
            for attempt in range(RETRIES + 1):
                s.sync()
                b0, t0 = _busy(), time.perf_counter()
                for _ in range(burst):
                    s.run()
                s.sync()
                dt = time.perf_counter() - t0
                if (dt < MIN_CHECKED or attempt == RETRIES
                        or foreign_load(b0, _busy(), dt) <= MAX_FOREIGN):
                    break
                discarded[0] += 1
                time.sleep(1.0)                 # let the other load pass
            s.samples.append(dt / (burst * per_call))
    return sides


def repeat_count(seconds_per_call: float, budget: float, lo: int, hi: int) -> int:
    """How many calls fit in ``budget`` seconds, clamped to ``[lo, hi]``."""
    if seconds_per_call <= 0:
        return hi
    return max(lo, min(hi, int(budget / seconds_per_call)))


def device_ms(fn, new_event, elapsed_ms, warmup: int, repeats: int, round_ms: float = 1.0,
              max_reps: int = 200) -> float:
    """Median device milliseconds per call of ``fn`` on a GPU, from events (CuPy's or
    PyTorch's: ``new_event()`` makes one with ``record()`` and ``synchronize()``,
    ``elapsed_ms(a, b)`` reads the time between two). One timed call sizes the rounds: ``reps``
    calls between one event pair, so that a round lasts about ``round_ms`` (a kernel of a few
    microseconds is timed as many launches, not as one launch and its host gaps); the median of
    ``repeats`` rounds, divided by ``reps``."""
    for _ in range(warmup):
        fn()
    a, b = new_event(), new_event()
    a.record()
    fn()
    b.record()
    b.synchronize()
    reps = int(min(max_reps, max(1, math.ceil(round_ms / max(elapsed_ms(a, b), 1e-3)))))
    times = []
    for _ in range(repeats):
        a, b = new_event(), new_event()
        a.record()
        for _ in range(reps):
            fn()
        b.record()
        b.synchronize()
        times.append(elapsed_ms(a, b) / reps)
    return statistics.median(times)
