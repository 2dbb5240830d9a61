"""Training steps split over processes of this machine: the calling process and forked workers,
each computing the forward and backward pass of its part of every batch (Linux, NumPy set).

Why processes and not threads: a training step is hundreds of NumPy calls with Python (layers,
autograd) between them. Two threads split over the halves of a batch contend for the GIL between
those calls, and on the 2-vCPU machines this was tuned on every hand-over also pays the wake-up
of an idle vCPU (40-80 us); LeNet-5 at batch 32 then ran slower on two threads than on one
(3.5 ms against 2.7 ms a step) and gained only 1.3x at batch 128. Two processes share nothing but
memory: 1.9 ms at batch 32, 5.1 ms at batch 128 (PyTorch: 2.8 and 8.2 ms with two threads).

How, when the workers live and end, and what keeps them safe: ``workers`` (the ``WorkerSet``)
and ``_worker`` (the loop a worker runs).
"""
from __future__ import annotations

import os
import sys

from gpucnn.kernels import has
from gpucnn.parallel import step as _step
from gpucnn.parallel.local import Whole
from gpucnn.parallel.workers import (WorkerSet, drain, fingerprint, give_back, last_growth, lease,
                                     release, start)


def available(ks) -> bool:
    """Whether steps may run on processes here: Linux (fork), a kernel set on host memory that
    splits steps (the NumPy set)."""
    return (sys.platform.startswith("linux") and hasattr(os, "fork")
            and has(ks, "split_steps"))


class Forked(Whole):
    """The runner of ``fit`` on the NumPy set with two or more kernel threads: each step whose
    batch is large enough (``step.PROCESS_MIN_FLOPS``) runs on a ``WorkerSet``; other steps, or
    every step when no set may serve this call, run whole (``Whole``)."""

    def __init__(self, model, call):
        super().__init__(model, call.logits, call.totals, call.steps)
        x, y = call.x, call.y
        self.config = (call.largest, tuple(x.shape[1:]), x.dtype, tuple(y.shape[1:]), y.dtype,
                       tuple(model.output_shape[1:]), model.dtype)
        self.procs = None
        try:
            self._acquire()
        except BaseException:
            super().close()
            raise

    def refresh(self) -> None:
        super().refresh()
        self._release()
        self._acquire()

    def _acquire(self):
        """The model's set when it still fits it, else a new one (or None: steps run whole)."""
        largest, x_tail, x_dtype, y_tail, y_dtype, out_tail, out_dtype = self.config
        parts = _step.parts_for(self.ks, self.per_sample, largest, _step.PROCESS_MIN_FLOPS)
        if parts < 2:
            return
        model, params, need_out = self.model, self.params, self.totals is not None
        key = fingerprint(model, params, largest, x_tail, str(x_dtype), y_tail, str(y_dtype),
                          self.logits, need_out, parts)
        procs = model.__dict__.get("_fit_workers")
        if procs is not None:
            if procs.key == key and lease(procs):
                self.procs = procs               # the same model as last time: keep them
                return
            if procs.lessee is None:
                release(model)
        procs = start(model, params, largest, x_tail, x_dtype, y_tail, y_dtype, out_tail,
                      out_dtype, self.logits, need_out, parts)
        if procs is not None:
            model._fit_workers = procs          # kept for the next fit call while nothing changes
            self.procs = procs

    def _release(self, failed=False):
        procs, self.procs = self.procs, None
        if procs is None:
            return
        give_back(procs)
        if failed:                              # after a failure nothing of them is trusted
            release(self.model)

    def step(self, x, y, rows=None):
        """One training step: on the worker set when the batch is large enough, else whole."""
        self._tick()
        procs = self.procs
        n = x.shape[0] if rows is None else len(rows)
        if procs is None or _step.parts_for(self.ks, self.per_sample, n,
                                            _step.PROCESS_MIN_FLOPS) < 2:
            return self._whole(x, y, rows)
        loss, out, lv = procs.step(x, y, rows)
        if self.totals is None:
            return loss, lv, None
        return loss, lv, self.totals(y if rows is None else y[rows], out)

    def close(self, failed: bool = False) -> None:
        """Give the worker set back for the next call (end it after a failure)."""
        if not self._closed:
            self._release(failed)
        super().close(failed)


__all__ = ["Forked", "WorkerSet", "available", "drain", "fingerprint", "last_growth", "release",
           "start"]
