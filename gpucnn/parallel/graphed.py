"""The whole training step replayed as a CUDA graph on the cuda set.

On a GPU the guide's small networks are bound by the host: a LeNet-5 step is about twenty
kernel launches of a few microseconds of GPU work each, and Python's share of each launch is
larger than the kernel. ``Graphed`` runs the forward and backward pass (and the metric partial
sums) of a batch shape once eagerly, captures them once into a CUDA graph on a side stream
(CuPy's stream capture, with a memory pool of the graph's own), and from then on copies each
new batch into the captured input buffers and launches the graph: one launch a step instead of
twenty. The optimizer's update runs after it, eagerly (its learning rate and step change every
step; ``multi_update`` makes it one launch). ``fit`` and ``train_on_batch`` each keep one with
the model between calls (``kept``), so a second ``fit`` replays what the first captured.
``Forward`` does the same for the forward passes of ``evaluate`` and ``predict``.

A graph belongs to one batch shape (the last, partial batch of an epoch gets its own) and to
what it captured: the model's weight arrays (their addresses), which weights are trainable, the
loss and the output mode. When any of these changes (``set_weights`` that replaces arrays, a
layer frozen, another loss) the graph is captured again. The first replay of every new graph is
checked against an eager step on the same inputs; on a mismatch, or any error while capturing,
graphs are turned off for the model with a warning saying why, and the steps run eagerly. A model
whose step draws random keys (dropout) runs eagerly too: the keys would be frozen into the graph.
``GPUCNN_CUDA_GRAPHS=0`` turns graphs off.

The capture, the replay and the copies into captured buffers are the kernel set's ``graphs``
capability (``graph_engine()``): on a GPU CuPy's stream capture with a memory pool kept with the
graph; without one (the tests, in Numba's simulator) the step recorded as a function and called
again on the captured buffers. Everything but the CUDA graph itself is the same code, so the
bookkeeping is tested on any machine; the capture is checked on a GPU by
``python -m gpucnn.gpucheck``.
"""
from __future__ import annotations

import os
import warnings

import numpy as np

from gpucnn import backend
from gpucnn.autograd import Tensor
from gpucnn.kernels import has
from gpucnn.parallel import step as _step
from gpucnn.parallel.local import Whole

#: Largest relative difference between the first replay of a graph and an eager step (the
#: max-pool gradient adds with atomics, in an order that may differ from run to run).
CHECK_RTOL = 1e-4


def enabled(ks) -> bool:
    """Whether steps may be graphed here: a kernel set that captures CUDA graphs (its
    ``graphs`` capability), and GPUCNN_CUDA_GRAPHS not 0."""
    return has(ks, "graphs") and os.environ.get("GPUCNN_CUDA_GRAPHS", "1") not in ("0", "")


class _Graph:
    __slots__ = ("graph", "inputs", "out", "checked")

    def __init__(self, graph, inputs, out):
        self.graph, self.inputs, self.out, self.checked = graph, inputs, out, False


class _Replayer:
    """What ``Graphed`` and ``Forward`` share: a graph per fingerprint of the call (``_key``),
    captured on the second call with it (the first runs eagerly: kernels loaded, plans made) and
    replayed from then on, its first replay checked against an eager call. ``captures`` counts
    the graphs made, ``replays`` the calls run from one; ``off`` says why graphs are off."""

    WHAT = CAPTURE = EAGER = ""

    def _start(self, off=None):
        self.engine = backend.kernels().graph_engine()    # capture, launch and copy
        self.graphs: dict = {}
        self.warm: set = set()
        self.captures = 0
        self.replays = 0
        self.off = off

    def _turn_off(self, why):
        """Graphs off, with a warning saying why."""
        self.off = why
        self.graphs.clear()
        warnings.warn(f"gpucnn: CUDA graphs are off for model '{self.model.name}': {why}; its "
                      f"{self.WHAT} run eagerly (GPUCNN_CUDA_GRAPHS=0 turns them off for all)",
                      RuntimeWarning, stacklevel=4)

    @staticmethod
    def _key(tag, inputs, tensors):
        return (tag, tuple((tuple(a.shape), str(a.dtype)) for a in inputs),
                tuple((id(p), _address(p.data), tuple(p.shape)) for p in tensors))

    def _replay(self, key, fn, inputs):
        """``(fn(*inputs), replayed)``: run eagerly, or from the graph of ``key`` (each call's
        inputs copied into the captured buffers; then ``replayed`` is True)."""
        if self.off is not None:
            return fn(*inputs), False
        g = self.graphs.get(key)
        if g is None:
            if key not in self.warm:              # eager first: kernels loaded, plans made
                self.warm.add(key)
                return fn(*inputs), False
            statics = [backend.xp().empty_like(a) for a in inputs]
            for s, a in zip(statics, inputs):
                self.engine.copy(s, a)
            try:
                graph, out = self.engine.capture(lambda: fn(*statics))
            except Exception as e:  # noqa: BLE001 - any capture failure: eager from now on
                self._turn_off(f"capturing {self.CAPTURE} failed ({type(e).__name__}: {e})")
                return fn(*inputs), False
            g = self.graphs[key] = _Graph(graph, statics, out)
            self.captures += 1
        for s, a in zip(g.inputs, inputs):
            self.engine.copy(s, a)
        self.engine.launch(g.graph)
        self.replays += 1
        if not g.checked:
            g.checked = True
            want = fn(*inputs)
            why = _difference(g.out, want)
            if why is not None:
                self._turn_off(f"its first replay differs from an eager {self.EAGER} ({why})")
                return want, False
        return g.out, True


class Graphed(_Replayer, Whole):
    """``Whole``, with each batch shape's step captured once and replayed (module docstring):
    the forward and backward pass and the metric partial sums; a replay's gradients are the
    graph's buffers."""

    WHAT, CAPTURE, EAGER = "training steps", "the step", "step"

    def __init__(self, model, logits, totals=None, steps=0):
        super().__init__(model, logits, totals, steps)
        self._start(None if not model._draws_keys() else (
            "the step draws random keys (dropout): they would be frozen into the graph"))

    def step(self, x, y, rows=None):
        self._tick()
        xb, yb = self._gather(x, y, rows)
        key = self._key((self.logits, self.model.loss, self.totals is not None), (xb, yb),
                        self.params)
        (loss, lv, totals, grads), replayed = self._replay(key, self._eager, (xb, yb))
        for p, grad in zip(self.params, grads):
            p.grad = None if grad is None else Tensor._wrap(grad)
        return loss, None if replayed else lv, totals

    def _eager(self, xb, yb):
        loss, out, lv = _step.forward_backward(self.model, xb, yb, self.logits, self.params, 1,
                                               self.totals is not None)
        grads = [None if p.grad is None else p.grad.data for p in self.params]
        return loss, lv, self._totals(yb, out), grads


def kept(model, logits, totals=None, steps=0, slot="_gpucnn_graphed") -> Graphed:
    """``fit``'s ``Graphed`` for ``model`` (``train_on_batch``'s under another ``slot``), kept
    with the model between calls: a later call replays the graphs an earlier one captured (a
    steady-state epoch costs no capture). A new output mode, loss or compiled metrics
    (``compile`` makes new ones) makes a new runner; ``kept_runner(model)`` returns ``fit``'s."""
    key = (logits, model.loss, tuple(getattr(model, "compiled_metrics", ())), totals is None)
    held = model.__dict__.get(slot)
    if held is None or held[0] != key:
        held = model.__dict__[slot] = (key, Graphed(model, logits, totals, steps))
        return held[1]
    runner = held[1]
    runner.totals, runner.steps, runner._count = totals, int(steps), 0
    return runner.reopen()


def kept_runner(model):
    """The ``Graphed`` that ``fit`` keeps with ``model`` (None before a graphed ``fit``): its
    ``captures`` and ``replays`` count the graphs it really captured and replayed."""
    held = model.__dict__.get("_gpucnn_graphed")
    return None if held is None else held[1]


class Forward(_Replayer):
    """The forward passes of ``evaluate`` and ``predict`` replayed as CUDA graphs, as
    ``Graphed`` does for training steps (``_Replayer``; turned off, with a warning, for these
    passes alone): ``run(tag, fn, *inputs)`` returns ``fn(*inputs)``; ``tag`` names what the
    graph captured besides the weights (the op, the loss, the metrics), whose arrays changing
    captures again. What a replay returns lives in the graph's buffers until the next replay:
    ``copy=True`` returns copies (for results that are kept)."""

    WHAT = "forward passes (evaluate, predict)"
    CAPTURE, EAGER = "a forward pass", "pass"

    def __init__(self, model):
        self.model = model
        self._start()

    def run(self, tag, fn, *inputs, copy=False):
        out, replayed = self._replay(self._key(tag, inputs, self.model.weights), fn, inputs)
        return _copies(out) if copy and replayed else out


def _leaves(v):
    """The arrays and Nones of nested tuples and lists, in order (Python numbers skipped)."""
    if isinstance(v, (tuple, list)):
        return [a for u in v for a in _leaves(u)]
    return [v] if v is None or hasattr(v, "shape") else []


def _difference(got, want):
    """None when the arrays of ``got`` and ``want`` agree to ``CHECK_RTOL`` (relative to the
    largest magnitude of each), else what differs."""
    ks = backend.kernels()
    a_all, b_all = _leaves(got), _leaves(want)
    if len(a_all) != len(b_all):
        return f"{len(a_all)} outputs against {len(b_all)}"
    for i, (a, b) in enumerate(zip(a_all, b_all)):
        if a is None or b is None:
            if (a is None) != (b is None):
                return f"output {i} is missing in {'the graph' if a is None else 'the eager run'}"
            continue
        a, b = np.asarray(ks.to_host(a), np.float64), np.asarray(ks.to_host(b), np.float64)
        if a.shape != b.shape:
            return f"output {i}: shape {a.shape} against {b.shape}"
        if not b.size:
            continue
        scale = max(float(np.abs(b).max()), 1e-30)
        err = float(np.abs(a - b).max()) / scale
        if not err <= CHECK_RTOL:
            return f"output {i}: relative difference {err:.2e} > {CHECK_RTOL:.0e}"
    return None


def _copies(v):
    if isinstance(v, (tuple, list)):
        return type(v)(_copies(u) for u in v)
    return v.copy() if hasattr(v, "shape") else v


def _address(a) -> int:
    data = getattr(a, "data", None)
    ptr = getattr(data, "ptr", None)
    if ptr is not None:
        return int(ptr)
    return int(a.__array_interface__["data"][0]) if hasattr(a, "__array_interface__") else id(a)


__all__ = ["CHECK_RTOL", "Forward", "Graphed", "enabled", "kept", "kept_runner"]
