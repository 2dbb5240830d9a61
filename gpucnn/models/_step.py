"""The forward and backward pass of one training step, on the whole batch or split into parts.

On the NumPy backend with two or more kernel threads, a step whose batch is large enough runs as
contiguous parts of the batch, each doing its own forward pass, loss and backward pass with
single-threaded kernels; the parts' gradients are then added. ``fit`` runs the parts on processes
(``_workers``: measured 1.4-1.9x faster than one core on LeNet-5); ``train_on_batch`` and fits
with batch-level callbacks run them on threads (``data_parallel`` of the NumPy set), which
contend for the GIL and pay off only on large batches.

The split result equals the unsplit one up to the order of floating-point sums because only
models whose every layer treats each sample on its own are split (the layers below, with named
activations), and only losses that are a mean over samples: the loss of the whole batch is the
parts' losses weighted by their share of the batch, and so are the gradients. Dropout draws its
keys once per step, before the parts run, and each part takes its rows of the whole batch's mask
(``gpucnn.functional._split``). Other models and losses, and the CUDA backend, always run the step
whole.
"""
from __future__ import annotations

import contextlib
import math

import numpy as np

from gpucnn import backend
from gpucnn import losses as _losses
from gpucnn import random as _random
from gpucnn.autograd import Tensor, _run_backward
from gpucnn.functional import _split
from gpucnn.kernels import has
from gpucnn.layers import _activations
from gpucnn.layers.conv import Conv2D, Conv2DTranspose
from gpucnn.layers.core import Activation, Dense, Dropout, Flatten, InputLayer, Reshape
from gpucnn.layers.pool import AveragePooling2D, MaxPooling2D

# Forward FLOPs of a batch below which a step stays whole: each part repeats the step's
# Python work (layers, autograd), which a tiny batch does not repay. Processes (fit) and threads
# (train_on_batch) have their own thresholds, measured on LeNet-5 on two cores.
PROCESS_MIN_FLOPS = 4e6
THREAD_MIN_FLOPS = 100e6

_PER_SAMPLE = (Conv2D, Conv2DTranspose, Dense, Flatten, Dropout, Activation, Reshape, InputLayer,
               MaxPooling2D, AveragePooling2D)
_MEAN_LOSSES = (_losses.SparseCategoricalCrossentropy, _losses.CategoricalCrossentropy,
                _losses.BinaryCrossentropy, _losses.MeanSquaredError, _losses.MeanAbsoluteError)


def leaf_layers(model):
    """The layers of a (possibly nested) plain Sequential, or None for any other model."""
    from gpucnn.models.sequential import Sequential

    cls = type(model)
    if (not isinstance(model, Sequential) or cls.call is not Sequential.call
            or cls._call_logits is not Sequential._call_logits):
        return None
    out = []
    for layer in model._layers:
        if isinstance(layer, Sequential):
            inner = leaf_layers(layer)
            if inner is None:
                return None
            out.extend(inner)
        else:
            out.append(layer)
    return out


def _per_sample(layer) -> bool:
    if type(layer) not in _PER_SAMPLE:
        return False
    act = getattr(layer, "_act", None)
    return act is None or act.name in _activations.NAMES


def sample_flops(model):
    """Forward FLOPs per sample of a model whose steps may be split, or None when they may not."""
    if type(model.loss) not in _MEAN_LOSSES:
        return None
    layers = leaf_layers(model)
    if not layers or not all(_per_sample(layer) for layer in layers):
        return None
    flops = 0.0
    for layer in layers:
        kernel = getattr(layer, "kernel", None)
        if kernel is None:
            continue
        if isinstance(layer, Conv2D) and layer.output_shape is not None:
            flops += 2.0 * math.prod(layer.output_shape[1:3]) * kernel.size
        elif isinstance(layer, Conv2DTranspose) and layer.input_shape is not None:
            flops += 2.0 * math.prod(layer.input_shape[1:3]) * kernel.size
        else:
            flops += 2.0 * kernel.size
    return flops


def parts_for(ks, per_sample, n: int, min_flops: float | None = None) -> int:
    """How many parts a step of ``n`` samples runs as (1: whole, on this thread); ``min_flops``
    defaults to the thread split's threshold."""
    if per_sample is None or n < 2 or not has(ks, "split_steps"):
        return 1
    threads = ks.get_num_threads()
    if threads < 2 or n * per_sample < (THREAD_MIN_FLOPS if min_flops is None else min_flops):
        return 1
    return min(threads, n)


def session(ks):
    """The context a run of steps goes in: on the NumPy backend, BLAS single-threaded (the
    kernels split work over their own threads; OpenBLAS's threads would otherwise wake for the
    dense layers' products and keep spinning on the cores the kernels use); elsewhere nothing."""
    return ks.single_threaded_blas() if has(ks, "threads") else contextlib.nullcontext()


def predraw(layers) -> list:
    """The dropout keys one training step draws, in the order its forward pass draws them (the
    Dropout layers in order), drawn now: every part of a split step then uses the same keys."""
    keys = []
    for layer in layers:
        if isinstance(layer, Dropout) and layer.rate > 0.0:
            keys.append(_random.next_dropout_key() if layer.seed is None
                        else layer._next_counter())
    return keys


def run_part(model, x, y, lo, hi, n, logits, keys):
    """One part of a split step: rows ``lo:hi`` of a batch of ``n`` (``x`` and ``y`` hold just
    those rows), forward with the step's dropout ``keys``, loss weighted by ``(hi - lo) / n``,
    backward into a sink with single-threaded kernels. Returns ``(loss, output, sink)``, the
    unweighted loss and the leaf gradients ``{id: [leaf, array]}``."""
    ks = backend.kernels()
    shared = _split.Shared(keys)
    with ks.serial_kernels(), _split.batch_part(lo, hi, n, shared):
        out = model._invoke(Tensor._wrap(x[:hi - lo]), True, logits)
        loss = model._loss_value(y[:hi - lo], out, logits)
        sink = {}
        _run_backward(loss, np.full((), (hi - lo) / n, dtype=loss.data.dtype), sink)
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
    keys = predraw(leaf_layers(model))

    def part(lo, hi):
        return run_part(model, xb[lo:hi], yb[lo:hi], lo, hi, n, logits, keys) + (hi - lo,)

    results = backend.kernels().data_parallel(part, n, parts)
    return combine(results, params, n, need_out)


def combine(results, params, n, need_out):
    """The step's loss, gradients (into ``.grad`` when the loss is finite) and output from the
    parts' ``(loss, output, sink, rows)``."""
    loss = results[0][0] * (results[0][3] / n)
    for r in results[1:]:
        loss = loss + r[0] * (r[3] / n)
    loss = np.asarray(loss, dtype=results[0][0].dtype)
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
