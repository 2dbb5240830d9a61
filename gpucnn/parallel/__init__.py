"""Step runners: who computes the forward and backward pass of each training step of ``fit``.

``fit`` asks ``runner_for(...)`` once per call and then, for every batch, calls
``runner.step(x, y, rows=None) -> (loss, lv, totals)``; at the end ``runner.close()``
(``local.Runner`` says what these are). The runners:

- ``graphed.Graphed``: on the CUDA set, the whole step captured once per batch shape as a CUDA
  graph and replayed (one launch a step); eager where a graph cannot hold the step.
- ``local.Whole``: the whole step in this process (on the NumPy set, a large batch as parts on
  the kernel threads). On the CUDA set, for batch-level callbacks, for one-step epochs.
- ``forked.Forked``: the parts of each step on this process and forked worker processes of this
  machine (Linux, NumPy set, two or more kernel threads, a model whose step may be split:
  ``step.splittable``); no launcher needed, works in notebooks, measured faster on a small
  CPU than threads. Worker sets outlive the call while the model stays the same.
- ``ranks.Ranks``: each rank of an MPI job (``gpucnn.distributed.init()``) computes its share
  of every batch and the ranks add their gradients.

``session(ks)`` is the context every training and inference call runs in (BLAS single-threaded
on the NumPy set; it also tells the forked runner that a call is running on this thread).
Nothing here imports layers, models or losses: a layer says ``per_sample``, a loss
``batch_mean``, a model lists the random keys of its step (``_step_keys``) and its FLOPs per
sample (``_sample_flops``).
"""
from __future__ import annotations

import contextlib

from gpucnn.kernels import has
from gpucnn.parallel import _calls, forked, graphed, ranks, step
from gpucnn.parallel.local import Runner, Whole
from gpucnn.parallel.ranks import any_rank, group, is_main, set_group


@contextlib.contextmanager
def session(ks):
    """The context a run of steps or predictions goes in: the call counts as running on this
    thread, and on the NumPy set BLAS is single-threaded (the kernels split work over their own
    threads; OpenBLAS's threads would otherwise wake for the dense layers' products and keep
    spinning on the cores the kernels use)."""
    with _calls.open_call():
        if has(ks, "threads"):
            with ks.single_threaded_blas():
                yield
        else:
            yield


def runner_for(model, ks, *, logits, totals=None, metrics=0, steps=0, largest=0, x=None,
               y=None, batch_hooks=False, op="fit", settings=None) -> Runner:
    """The runner of a training call on ``model``: ``logits`` (the loss from the logits),
    ``totals(yb, out)`` and its length ``metrics`` (the metric partial sums of a batch, or
    None), ``steps`` per epoch, the ``largest`` batch, the training arrays ``x`` and ``y``,
    whether batch-level callbacks run (they may change the model between steps, so no worker
    processes), and the call's ``settings`` (checked equal over MPI ranks)."""
    g = group()
    if g is not None:
        return ranks.Ranks(g, model, logits, totals, steps, metrics, op, dict(settings or {}))
    ranks.warn_if_launched(op)
    if graphed.enabled(ks):
        return graphed.Graphed(model, logits, totals, steps)
    if (batch_hooks or steps < 2 or x is None or not forked.available(ks)
            or model.output_shape is None or step.sample_flops(model) is None):
        return Whole(model, logits, totals, steps)
    return forked.Forked(model, logits, totals, steps, largest, x, y, model.output_shape)


def release(model) -> None:
    """End the worker processes kept for ``model``, those of collected models, and those whose
    thread has ended."""
    forked.release(model)
    with _calls.exclusive():
        forked.drain()


__all__ = ["Runner", "Whole", "any_rank", "group", "is_main", "release", "runner_for",
           "session", "set_group", "step"]
