"""Training steps over the ranks of an MPI job: every rank holds the whole model, computes its
contiguous share of each global batch and adds its gradients to the other ranks' with one
in-place sum, after which every rank applies the same update.

The group of ranks comes from ``gpucnn.distributed.init()`` (``set_group``); this module only
needs its ``rank``, ``size`` and three collectives, each of which ends the job with a message
when the other ranks do not answer in time:

    ``allreduce_(a, what)``       in-place sum of a backend array (host, or device memory)
    ``allreduce_host_(a, what)``  in-place sum of a NumPy array
    ``bcast_host_(a, what)``      rank 0's NumPy array into ``a`` on every rank

One step is one sum of one flat buffer: the gradients of every trainable weight, one flag per
weight (whether a rank has its gradient), the loss weighted by the rank's share of the batch,
and the metric partial sums with their counts, so that the loss and metrics are exact for shares
of uneven size. Collectives follow the step index, never a clock: every rank makes the same
calls in the same order (``fit`` checks first that every rank was called with the same
settings).

A model whose layers are all ``per_sample`` and whose loss is a ``batch_mean`` gets, on any
number of ranks, the gradients of one process on the whole batch (up to the order of sums).
For another model each rank's share is weighted by its size, as data-parallel frameworks do.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import warnings

import numpy as np

from gpucnn import backend
from gpucnn import random as _random
from gpucnn.autograd import Tensor
from gpucnn.parallel import step as _step
from gpucnn.parallel.local import Runner

_group = None
_warned = []

# Environment variables by which MPI launchers give each process the size of its job.
LAUNCHER_SIZE = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MV2_COMM_WORLD_SIZE",
                 "SLURM_NTASKS")


def set_group(group) -> None:
    """Make ``group`` (see the module docstring) the ranks ``fit`` trains over; None: none."""
    global _group
    _group = group
    if group is not None:
        _warned.append(True)          # joined once: training alone afterwards is deliberate


def group():
    """The group of ranks when there are two or more, else None."""
    g = _group
    return g if g is not None and g.size > 1 else None


def is_main() -> bool:
    """Whether this process prints and writes for the job: rank 0, or a process on its own."""
    g = _group
    return g is None or g.rank == 0


@contextlib.contextmanager
def quiet():
    """Nothing printed to stdout inside the block on ranks other than 0 (the progress bar and
    what callbacks print: rank 0 prints for the job); elsewhere nothing changes."""
    if is_main():
        yield
        return
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        yield


def launched_size() -> int:
    """How many processes the MPI launcher that started this one started (1 when none)."""
    for name in LAUNCHER_SIZE:
        value = os.environ.get(name, "").strip()
        if value.isdigit() and int(value) > 1 and (name != "SLURM_NTASKS"
                                                   or os.environ.get("PMI_RANK")
                                                   or os.environ.get("PMIX_RANK")):
            return int(value)
    return 1


def warn_if_launched(op: str) -> None:
    """Warn once when an MPI launcher started several copies of this script but
    ``gpucnn.distributed.init()`` was not called: each copy would train alone, on all the data."""
    if _warned or _group is not None:
        return
    n = launched_size()
    if n > 1:
        _warned.append(True)
        warnings.warn(
            f"{op}: this process is one of {n} started by an MPI launcher (mpiexec, srun), but "
            "gpucnn.distributed.init() was not called, so every process trains the whole model "
            f"on all the data by itself (the same work {n} times). Call "
            "gpucnn.distributed.init() at the start of the script (the examples: --distributed).",
            RuntimeWarning, stacklevel=3)


# -- settings, and the start of a training call ---------------------------------------------------
def _gather_bytes(g, data: bytes, what: str) -> list:
    """Every rank's ``data`` (the sum of buffers that are zero outside each rank's slot)."""
    sizes = np.zeros(g.size, np.int64)
    sizes[g.rank] = len(data)
    g.allreduce_host_(sizes, what)
    ends = np.concatenate([[0], np.cumsum(sizes)])
    buf = np.zeros(int(ends[-1]), np.uint8)
    buf[ends[g.rank]:ends[g.rank + 1]] = np.frombuffer(data, np.uint8)
    g.allreduce_host_(buf, what)
    return [buf[ends[r]:ends[r + 1]].tobytes() for r in range(g.size)]


def check_settings(g, op: str, settings: dict) -> None:
    """A ValueError on every rank when the ranks' ``settings`` (plain values) differ, naming
    each setting that differs and every rank's value of it."""
    text = json.dumps(settings, sort_keys=True, default=str).encode()
    seen = [json.loads(b) for b in _gather_bytes(g, text, f"{op}: the check of the settings")]
    mine = json.loads(text)
    bad = [k for k in sorted(set().union(*seen)) if any(s.get(k) != seen[0].get(k) for s in seen)]
    if bad:
        detail = "; ".join(f"{k}: " + ", ".join(f"rank {r} has {s.get(k)!r}"
                                               for r, s in enumerate(seen)) for k in bad)
        raise ValueError(f"{op}: the {g.size} ranks were called with different settings, "
                         f"expected the same on every rank ({detail}); this is rank {g.rank}, "
                         f"which has {', '.join(f'{k}={mine.get(k)!r}' for k in bad)}")


def _bcast_host_arrays(g, hosts, what: str) -> None:
    """Rank 0's ``hosts`` (host arrays of the same shapes and dtypes on every rank) into every
    other rank's, in place, as one broadcast of their bytes."""
    ends = np.concatenate([[0], np.cumsum([h.nbytes for h in hosts])]).astype(np.int64)
    buf = np.empty(int(ends[-1]), np.uint8)
    for h, a, b in zip(hosts, ends[:-1], ends[1:]):
        buf[a:b] = h.reshape(-1).view(np.uint8)
    g.bcast_host_(buf, what)
    if g.rank != 0:
        for h, a, b in zip(hosts, ends[:-1], ends[1:]):
            h.reshape(-1).view(np.uint8)[...] = buf[a:b]


def broadcast_model(g, model, what: str) -> None:
    """Rank 0's weights into every rank's model, in one broadcast (through host memory)."""
    ks = backend.kernels()
    weights = model.weights
    if not weights:
        return
    hosts = [np.array(ks.to_host(t.data), order="C", copy=True) for t in weights]
    _bcast_host_arrays(g, hosts, what)
    if g.rank == 0:
        return
    for t, h in zip(weights, hosts):
        if isinstance(t.data, np.ndarray):
            t.data[...] = h                   # in place: shared memory stays shared
        else:
            t.data[...] = ks.asarray(h)


def broadcast_state(g, model, what: str) -> None:
    """Rank 0's random state (shuffles, dropout keys) and optimizer step count on every rank."""
    opt = getattr(model, "optimizer", None)
    state = {"random": _random.get_state(),
             "iterations": None if opt is None else int(opt.iterations)}
    sent = _gather_bytes(g, json.dumps(state).encode(), what)[0]      # rank 0's
    if g.rank == 0:
        return
    state = json.loads(sent)
    _random.set_state(state["random"])
    if opt is not None and state["iterations"] is not None:
        opt.iterations = state["iterations"]


def broadcast_slots(g, model, what: str) -> None:
    """Rank 0's optimizer state (momentum, Adam's moments, ...) into every rank's optimizer, in
    one broadcast: a model that rank 0 alone loaded with ``load_model`` trains on every rank as
    it would in one process. Every rank packs its own state first (the same shapes and dtypes
    everywhere: the weights were checked equal), so all take part in the same broadcast."""
    opt = getattr(model, "optimizer", None)
    if opt is None or not opt.slot_names():
        return
    named = [(str(i), p) for i, p in enumerate(model.trainable_weights)]
    arrays = opt.get_slot_arrays(named)
    keys = sorted(arrays)
    hosts = [np.ascontiguousarray(arrays[k]) for k in keys]
    _bcast_host_arrays(g, hosts, what)
    if g.rank != 0:
        opt.set_slot_arrays(named, dict(zip(keys, hosts)))


def share(n: int, rank: int, size: int) -> tuple:
    """Rows ``(lo, hi)`` of ``n`` that rank ``rank`` of ``size`` takes (contiguous, sizes differ
    by one at most)."""
    return n * rank // size, n * (rank + 1) // size


def sum_host(g, values, what: str) -> np.ndarray:
    """``values`` (floats) summed over the ranks, in float64."""
    a = np.array(values, np.float64)
    if g is not None:
        g.allreduce_host_(a, what)
    return a


def gather_rows(g, part, n: int, lo: int, what: str) -> np.ndarray:
    """The rows every rank holds (``part``: this rank's rows ``lo:lo + len(part)`` of ``n``),
    in order, on every rank (host memory)."""
    out = np.zeros((n,) + tuple(part.shape[1:]), part.dtype)
    out[lo:lo + len(part)] = part
    g.allreduce_host_(out, what)
    return out


def any_rank(flag: bool, what: str) -> bool:
    """``flag`` OR-ed over the ranks (``flag`` itself without a group)."""
    g = group()
    if g is None:
        return bool(flag)
    return bool(sum_host(g, [1.0 if flag else 0.0], what)[0] > 0)


class Ranks(Runner):
    """The runner of ``fit`` when ``gpucnn.distributed`` has two or more ranks (see the module
    docstring). Made, it has checked the settings and given every rank rank 0's weights,
    optimizer step and random state."""

    def __init__(self, g, model, call):
        super().__init__(model, call.logits, call.totals, call.steps)
        self.group, self.metrics, self.op = g, int(call.metrics), call.op
        op = call.op
        try:
            check_settings(g, op, dict(call.agreed))
            broadcast_model(g, model, f"{op}: the broadcast of rank 0's weights")
            broadcast_state(g, model, f"{op}: the broadcast of rank 0's random state")
            broadcast_slots(g, model, f"{op}: the broadcast of rank 0's optimizer state")
        except BaseException:
            super().close()
            raise
        self._layout()

    def refresh(self) -> None:
        super().refresh()
        self._layout()

    def _layout(self):
        params = self.params
        self.sizes = [int(p.size) for p in params]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        dts = [p.dtype for p in params] or [self.model.dtype]
        self.dtype = np.result_type(*dts)

    def _where(self) -> str:
        k = self._count - 1
        if not self.steps:
            return f"{self.op}, step {k + 1}"
        return f"{self.op}, epoch {k // self.steps + 1} of this call, step {k % self.steps + 1}"

    def step(self, x, y, rows=None):
        """This rank's share of the batch, then one sum over the ranks (see the module
        docstring); every rank returns the same loss, gradients and metric sums."""
        self._tick()
        g, params, xp = self.group, self.params, self.ks.xp
        n = x.shape[0] if rows is None else len(rows)
        lo, hi = share(n, g.rank, g.size)
        keys = self.model._step_keys()            # the same keys on every rank
        grads_end = int(self.offsets[-1])
        flags, at_loss = grads_end, grads_end + len(params)
        buf = xp.zeros(at_loss + 1 + 2 * self.metrics, dtype=self.dtype)
        if hi > lo:
            if rows is None:
                xb, yb = x[lo:hi], y[lo:hi]
            else:
                xb, yb = self._gather(x, y, rows[lo:hi])
            loss, out, sink = _step.run_part(self.model, xb, yb, lo, hi, n, self.logits, keys,
                                             serial=False)
            for i, p in enumerate(params):
                entry = sink.get(id(p))
                if entry is not None:
                    buf[self.offsets[i]:self.offsets[i + 1]] = entry[1].reshape(-1)
                    buf[flags + i] = 1
            buf[at_loss] = loss * ((hi - lo) / n)
            if self.totals is not None:
                for j, (s, c) in enumerate(self.totals(yb, out)):
                    buf[at_loss + 1 + 2 * j] = s
                    buf[at_loss + 2 + 2 * j] = c
        g.allreduce_(buf, f"{self.op}: the sum of the gradients ({self._where()})")
        tail = np.asarray(self.ks.to_host(buf[flags:]), np.float64)
        lv = float(tail[len(params)])
        if math.isfinite(lv):
            for i, p in enumerate(params):
                a, b = self.offsets[i], self.offsets[i + 1]
                p.grad = Tensor._wrap(buf[a:b].reshape(p.shape)) if tail[i] > 0 else None
        loss = buf[at_loss:at_loss + 1].reshape(())
        totals = None
        if self.totals is not None:
            rest = tail[len(params) + 1:]
            totals = [(float(rest[2 * j]), int(round(rest[2 * j + 1])))
                      for j in range(self.metrics)]
        return loss, lv, totals
