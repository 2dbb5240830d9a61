"""Step runners: who computes the forward and backward pass of each training step of ``fit``.

This package is the one door of the training loop (``gpucnn.models.training``) to its steps and
ranks. ``fit`` asks ``runner_for(model, ks, call)`` once per call (``call``: a ``FitCall``, the
call's settings) and then, for every batch, calls ``runner.step(x, y, rows=None) -> (loss, lv,
totals)``; at the end ``runner.close()`` (``local.Runner`` says what these are);
``train_on_batch`` asks ``batch_runner``, ``evaluate`` and ``predict`` ``forward_graphs``. The
runners:

- ``graphed.Graphed``: the whole step replayed as a CUDA graph (a set with ``graphs``);
- ``local.Whole``: the whole step in this process (on the NumPy set, a large batch as parts on
  the kernel threads); also where batch-level callbacks run, and for one-step epochs;
- ``forked.Forked``: the parts of each step on this process and forked worker processes
  (Linux, NumPy set, a model whose step may be split: ``step.splittable``);
- ``ranks.Ranks``: each rank of an MPI job (``gpucnn.distributed.init()``) computes its share
  of every batch and the ranks add their gradients.

Every training and inference call runs inside ``session(ks)``. Nothing here imports layers,
models or losses: a layer says ``per_sample``, a loss ``batch_mean``, a model lists the random
keys of its step (``_step_keys``) and its FLOPs per sample (``_sample_flops``).
"""
from __future__ import annotations

import contextlib

from gpucnn.kernels import has
from gpucnn.parallel import _calls, forked, graphed, ranks, step
from gpucnn.parallel.local import FitCall, Runner, Whole
from gpucnn.parallel.ranks import any_rank, gather_rows, group, is_main, quiet, set_group, sum_host


@contextlib.contextmanager
def session(ks):
    """The context a run of steps or predictions goes in: the call counts as running on this
    thread, and on the NumPy set BLAS is single-threaded (the kernels split work over their own
    threads; OpenBLAS's threads would otherwise wake for the dense layers' products and keep
    spinning on the cores the kernels use)."""
    blas = ks.single_threaded_blas() if has(ks, "threads") else contextlib.nullcontext()
    with _calls.open_call(), blas:
        yield


def runner_for(model, ks, call: FitCall) -> Runner:
    """The runner of the training call ``call`` (a ``FitCall``: the call's settings) on
    ``model``."""
    g = group()
    if g is not None:
        return ranks.Ranks(g, model, call)
    ranks.warn_if_launched(call.op)
    if graphed.enabled(ks):
        return graphed.kept(model, call.logits, call.totals, call.steps)
    if (call.batch_hooks or call.steps < 2 or call.x is None or not forked.available(ks)
            or model.output_shape is None or step.sample_flops(model) is None):
        return Whole(model, call.logits, call.totals, call.steps)
    return forked.Forked(model, call)


def batch_runner(model, ks, logits, totals) -> Runner:
    """``train_on_batch``'s runner: where steps are graphed a ``Graphed`` kept with the model
    between calls (its graphs are per batch shape; a new loss or metrics makes a new one), else
    a ``Whole`` for this call."""
    if not graphed.enabled(ks):
        return Whole(model, logits, totals)
    return graphed.kept(model, logits, totals, slot="_gpucnn_batch_runner")


def forward_graphs(model, ks, g):
    """The model's ``graphed.Forward`` where forward passes are replayed as CUDA graphs (a set
    that captures graphs, one process, ``GPUCNN_CUDA_GRAPHS`` not 0), else None; ``g`` is the
    group of ranks or None."""
    if g is not None or not graphed.enabled(ks):
        return None
    fwd = model.__dict__.get("_gpucnn_forward")
    if fwd is None:
        fwd = model.__dict__["_gpucnn_forward"] = graphed.Forward(model)
    return fwd


def shard(g, n: int) -> tuple:
    """The rows ``(lo, hi)`` of ``n`` this process evaluates or predicts (all without ranks)."""
    return (0, n) if g is None else ranks.share(n, g.rank, g.size)


def checked_group(op, **settings):
    """The group of ranks, its ranks checked to have been called with the same ``settings``; or
    None with one process."""
    g = group()
    if g is not None:
        ranks.check_settings(g, op, settings)
    return g


def release(model) -> None:
    """End the worker processes kept for ``model``, those of collected models, and those whose
    thread has ended."""
    forked.release(model)
    with _calls.exclusive():
        forked.drain()


def stop_workers(model) -> None:
    """End the worker processes kept for ``model`` alone."""
    forked.release(model)


__all__ = ["FitCall", "Runner", "Whole", "any_rank", "batch_runner", "checked_group",
           "forward_graphs", "gather_rows", "group", "is_main", "quiet", "release", "runner_for",
           "session", "set_group", "shard", "step", "stop_workers", "sum_host"]
