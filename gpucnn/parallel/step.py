"""The forward and backward pass of one training step: on the whole batch, or as contiguous parts
of it whose losses and gradients add up to the whole step's.

A model's step may be split into parts when every layer says ``per_sample`` (each sample's output
depends on that sample alone: conv, dense, pooling, flatten, dropout, ... with named
activations; a ``Sequential`` of such layers) and its loss says ``batch_mean`` (a mean over the
samples): the loss of the batch is then the parts' losses weighted by their share of the batch,
and so are the gradients. Dropout draws its keys once per step, before the parts run
(``model._step_keys()``), and each part takes its rows of the whole batch's mask
(``gpucnn.functional._split``), so that the split step drops what the unsplit step would. The
parts differ from the whole step only in the order of floating-point sums.

Who runs the parts is the runner's business (``gpucnn.parallel``): threads of the NumPy set
(``data_parallel``; they contend for the GIL and pay off only on large batches), forked worker
processes (``forked``) or MPI ranks (``ranks``).
"""
from __future__ import annotations

import contextlib
import math

import numpy as np

from gpucnn import backend
from gpucnn.autograd import Tensor, _run_backward
from gpucnn.functional import _split
from gpucnn.kernels import has

# Forward FLOPs of a batch below which a step stays whole: each part repeats the step's
# Python work (layers, autograd), which a tiny batch does not repay. Processes (fit) and threads
# (train_on_batch) have their own thresholds, measured on LeNet-5 on two cores.
PROCESS_MIN_FLOPS = 4e6
THREAD_MIN_FLOPS = 100e6


def splittable(model) -> bool:
    """Whether ``model``'s training step may run as parts of the batch (see the docstring)."""
    loss = getattr(model, "loss", None)
    return bool(loss is not None and loss.batch_mean and model.per_sample)


def sample_flops(model):
    """Forward FLOPs per sample of a model whose steps may be split, or None when they may not."""
    return float(model._sample_flops()) if splittable(model) else None


def parts_for(ks, per_sample, n: int, min_flops: float | None = None) -> int:
    """How many parts a step of ``n`` samples runs as (1: whole, on this thread); ``min_flops``
    defaults to the thread split's threshold."""
    if per_sample is None or n < 2 or not has(ks, "split_steps"):
        return 1
    threads = ks.get_num_threads()
    if threads < 2 or n * per_sample < (THREAD_MIN_FLOPS if min_flops is None else min_flops):
        return 1
    return min(threads, n)


def leaves(model) -> list:
    """The layers inside ``model`` that hold no other layers, each once, in order (what a copy
    of the model in another process could differ in: ``forked.fingerprint``)."""
    out, seen = [], set()

    def walk(layer):
        if id(layer) in seen:
            return
        seen.add(id(layer))
        inner = layer._sublayers()
        if not inner:
            out.append(layer)
        for c in inner:
            walk(c)

    for c in model._sublayers():
        walk(c)
    return out


def run_part(model, x, y, lo, hi, n, logits, keys, serial=True):
    """One part of a split step: rows ``lo:hi`` of a batch of ``n`` (``x`` and ``y`` hold just
    those rows), forward with the step's dropout ``keys``, loss weighted by ``(hi - lo) / n``,
    backward into a sink; with ``serial`` every kernel runs on this thread alone. Returns
    ``(loss, output, sink)``, the unweighted loss and the leaf gradients ``{id: [leaf, array]}``."""
    ks = backend.kernels()
    one = ks.serial_kernels() if serial and has(ks, "threads") else contextlib.nullcontext()
    with one, _split.batch_part(lo, hi, n, _split.Shared(keys)):
        out = model._invoke(Tensor._wrap(x[:hi - lo]), True, logits)
        loss = model._loss_value(y[:hi - lo], out, logits)
        sink = {}
        _run_backward(loss, backend.xp().full((), (hi - lo) / n, dtype=loss.data.dtype), sink)
    return loss.data, out.data, sink


def forward_backward(model, xb, yb, logits, params, parts, need_out):
    """Run the step's forward pass and, if its loss is finite, the backward pass into ``.grad``
    of ``params``; with ``parts > 1`` on that many threads. Returns ``(loss array, output array
    or None, loss as a float or None)``; the float is read only where reading is free (NumPy)."""
    if parts <= 1:
        out = model._invoke(Tensor._wrap(xb), True, logits)
        loss = model._loss_value(yb, out, logits)
        lv = float(loss.data) if isinstance(xb, np.ndarray) else None    # host: reading is free
        if lv is None or math.isfinite(lv):
            for p in params:
                p.grad = None
            loss.backward()
        return loss.data, out.data, lv
    n = xb.shape[0]
    keys = model._step_keys()

    def part(lo, hi):
        return run_part(model, xb[lo:hi], yb[lo:hi], lo, hi, n, logits, keys) + (hi - lo,)

    results = backend.kernels().data_parallel(part, n, parts)
    return combine(results, params, n, need_out)


def combine(results, params, n, need_out):
    """The step's loss, gradients (into ``.grad`` when the loss is finite) and output from the
    parts' ``(loss, output, sink, rows)``."""
    loss = np.asarray(sum(r[0] * (r[3] / n) for r in results), dtype=results[0][0].dtype)
    lv = float(loss)
    if math.isfinite(lv):
        for p in params:
            g = None
            for r in results:
                entry = r[2].get(id(p))
                if entry is not None:
                    g = entry[1] if g is None else np.add(g, entry[1])
            p.grad = None if g is None else Tensor._wrap(g)
    out = np.concatenate([r[1] for r in results]) if need_out else None
    return loss, out, lv
