"""The memory-bound calls of the cuda set at the shapes of the guide's LeNet-5 and of AlexNet,
each with the bytes it must move (its floor) and the bytes its kernels as written request: the
rows of the bytes table (``gpucnn.bench.bandwidth``) and of the GPU check's bandwidth section
(``gpucnn.bench.check_bandwidth``).
"""
from __future__ import annotations

import os
from functools import partial
from typing import Callable, NamedTuple

import numpy as np

from gpucnn.bench import torch_ref
from gpucnn.kernels import load_set

F32 = 4


class Case(NamedTuple):
    """One memory-bound call: ``setup(C, alloc)`` makes its inputs with ``alloc(shape, kind)``
    (kind "normal", "positive", or ("labels", K)) and returns ``(call, arrays)``; ``torch(torch,
    arrays)`` PyTorch's counterpart (None where PyTorch has none)."""

    net: str
    layer: str
    op: str
    shape: str
    floor: int
    moved: int | Callable      # or a function of the recorded launches
    how: str
    setup: Callable
    torch: Callable | None = None


def _n(shape):
    return int(np.prod(shape))


def _setup(call, **specs):
    """A ``Case.setup``: the inputs ``specs`` (name -> (shape, kind)) made in order with
    ``alloc``, then ``(lambda: call(C, **inputs), inputs)``."""
    def setup(C, alloc):
        a = {k: alloc(shape, kind) for k, (shape, kind) in specs.items()}
        return (lambda: call(C, **a)), a
    return setup


def _act_cases(net, layer, shape, act):
    n, b = _n(shape), F32
    fwd = _setup(lambda C, x: C.act_forward(x, act), x=(shape, "normal"))
    bwd = _setup(lambda C, dy, y: C.act_backward(dy, y, act), dy=(shape, "normal"),
                 y=(shape, "normal"))
    tf = {"relu": lambda t, a: (lambda x=a["x"]: t.relu(x)),
          "tanh": lambda t, a: (lambda x=a["x"]: t.tanh(x))}.get(act)
    tb = (lambda t, a: (lambda: t.ops.aten.threshold_backward(a["dy"], a["y"], 0))) \
        if act == "relu" else (lambda t, a: (lambda: t.ops.aten.tanh_backward(a["dy"], a["y"])))
    s = str(tuple(shape))
    return [Case(net, layer, f"{act} fwd", s, 2 * n * b, 2 * n * b, "x read, y written once",
                 fwd, tf),
            Case(net, layer, f"{act} bwd", s, 3 * n * b, 3 * n * b, "dy, y read, dx written once",
                 bwd, tb)]


def colsum_moved(rows, cols, b=F32, first_read=1):
    """Bytes of a column sum from its recorded launches: the first pass reads ``first_read``
    arrays of (rows, cols) and writes (S, cols) partial sums (S its grid.y), a second pass reads
    them back; the last pass writes the (cols,) result."""
    def moved(launches):
        splits = launches[0][1][1] if len(launches) > 1 else 0
        return rows * cols * b * first_read + 2 * splits * cols * b + cols * b
    return moved


def _bias_case(net, layer, shape):
    rows, c = _n(shape[:-1]), shape[-1]
    return Case(net, layer, "bias grad", str(tuple(shape)), (rows + 1) * c * F32,
                colsum_moved(rows, c), "partial sums of row splits (grid.y), then their sum",
                _setup(lambda C, dy: C.bias_grad(dy), dy=(shape, "normal")),
                lambda t, a: (lambda: a["dy"].sum((0, 1, 2))))


def _pool_cases(net, layer, kind, x, k, s, pad):
    from gpucnn.kernels._geometry import window_2d

    ho, wo, pad4 = window_2d(x[1], x[2], k, k, s, s, pad)
    y = (x[0], ho, wo, x[3])
    nx, ny, b = _n(x), _n(y), F32
    geo = ((k, k), (s, s), pad4)
    sx, win = f"{tuple(x)} {k}x{k}/{s}", ny * k * k * b

    def nchw(a):
        return a.permute(0, 3, 1, 2)

    if kind == "max":
        def bwd(C, alloc):
            xa, dy = alloc(x, "normal"), alloc(y, "normal")
            _, idx = C.max_pool_forward(xa, *geo)
            return (lambda: C.max_pool_backward(dy, idx, x, *geo)), {"x": xa, "dy": dy}

        return [Case(net, layer, "max pool fwd", sx, (nx + ny) * b + 4 * ny, win + ny * (b + 4),
                     f"{k * k} window loads per output, y and idx written",
                     _setup(lambda C, x: C.max_pool_forward(x, *geo), x=(x, "normal")),
                     lambda t, a: partial(t.nn.functional.max_pool2d, nchw(a["x"]), k, s)),
                Case(net, layer, "max pool bwd", sx, ny * (b + 4) + nx * b,
                     nx * b + ny * (4 * k * k + b),
                     "a gather: dx written once, each window's idx read by each of its cells, "
                     "dy by its winner", bwd, lambda t, a: torch_ref.gpu_pool_twins(
                         t, "max", a["x"], a["dy"], k, s)["bwd"])]
    return [Case(net, layer, "avg pool fwd", sx, (nx + ny) * b, win + ny * b,
                 f"{k * k} window loads per output",
                 _setup(lambda C, x: C.avg_pool_forward(x, *geo), x=(x, "normal")),
                 lambda t, a: partial(t.nn.functional.avg_pool2d, nchw(a["x"]), k, s)),
            Case(net, layer, "avg pool bwd", sx, (nx + ny) * b, win + nx * b,
                 "a gather: every dy read once per cell of its window",
                 _setup(lambda C, dy: C.avg_pool_backward(dy, x, *geo), dy=(y, "normal")))]


def _softmax_cases(net, rows, k):
    n, b = rows * k, F32
    # a row group's shared memory holds the row: one read of it
    short = k <= load_set("cuda").instruments().SHORT_ROW
    shape = f"({rows}, {k})"
    z, lab = ((rows, k), "normal"), ((rows,), ("labels", k))

    def xb(C, alloc):
        z, lab = alloc((rows, k), "normal"), alloc((rows,), ("labels", k))
        g = alloc((), "positive")
        _, stats = C.loss_forward("sparse_cce_logits", lab, z)
        return (lambda: C.loss_backward("sparse_cce_logits", g, lab, z, stats)), {}

    return [Case(net, "output", "softmax fwd", shape, 2 * n * b, (2 if short else 4) * n * b,
                 "x read once into shared memory, y written" if short else
                 "3 passes over x (max, sum, write) and y written",
                 _setup(lambda C, z: C.softmax_forward(z), z=z),
                 lambda t, a: (lambda: t.softmax(a["z"], 1))),
            Case(net, "output", "softmax bwd", shape, 3 * n * b, 5 * n * b,
                 "2 passes over dy and y, dx written",
                 _setup(lambda C, dy, y: C.softmax_backward(dy, y), dy=z,
                        y=((rows, k), "positive"))),
            Case(net, "output", "sparse CE from logits fwd", shape, n * b + rows * (8 + 2 * b),
                 (1 if short else 2) * n * b + rows * (8 + 3 * b),
                 "z read once into shared memory, z[label] and the 2 stats per row" if short
                 else "2 passes over z (max, sum), z[label] and the 2 stats per row",
                 _setup(lambda C, z, labels: C.loss_forward("sparse_cce_logits", labels, z), z=z,
                        labels=lab),
                 lambda t, a: (lambda: t.nn.functional.cross_entropy(a["z"], a["labels"]))),
            Case(net, "output", "sparse CE from logits bwd", shape, 2 * n * b + rows * (8 + 2 * b),
                 n * (4 * b + 8), "z read, dz written, a label and 2 stats per element", xb)]


def _dense_cases(net, layer, rows, units, act, dropout):
    n, b = rows * units, F32
    sums = colsum_moved(rows, units, first_read=0)
    shape = (rows, units)
    out = [Case(net, layer, f"{act} bwd + bias grad", str(shape), 3 * n * b + units * b,
                lambda launches: 3 * n * b + sums(launches),
                "dy, y read and g written in the pass that makes the partial column sums",
                _setup(lambda C, dy, y: C.act_backward_bias(dy, y, act), dy=(shape, "normal"),
                       y=(shape, "normal")))]
    if dropout:
        out.append(Case(net, f"{layer} dropout", "dropout mask", str(shape), n * b, n * b,
                        "mask written once",
                        _setup(lambda C: C.dropout_mask(shape, 0.5, 1, 2, np.float32))))
    return out


def _optim_cases(net, shapes_):
    n, t, b = sum(_n(s) for s in shapes_), len(shapes_), F32

    def setup(family):
        def make(C, alloc):
            ps, gs, ms, vs = ([alloc(s, kind) for s in shapes_]
                              for kind in ("normal", "normal", "normal", "positive"))
            flag = C.xp.zeros(1, dtype=np.int64)     # read by the caller, never here
            if family == "adam":
                return (lambda: C.adam_update_many(ps, gs, ms, vs, 1e-4, 0.9, 0.999, 1e-7, 10,
                                                   0.0, flag=flag)), {"n": n}
            return (lambda: C.sgd_update_many(ps, gs, ms, 1e-4, 0.9, False, 0.0,
                                              flag=flag)), {"n": n}
        return make

    shape = f"{t} tensors, {n} values"
    return [Case(net, "all weights", "adam update (multi-tensor)", shape, 7 * n * b, 7 * n * b,
                 "p, g, m, v read; p, m, v written", setup("adam"),
                 lambda t_, a: torch_ref.gpu_adam_twin(t_, a["n"])["step"]),
            Case(net, "all weights", "sgd momentum (multi-tensor)", shape, 5 * n * b, 5 * n * b,
                 "p, g, v read; p, v written", setup("sgd"))]


def cases(tiny: bool = False, batch: int = 128) -> list[Case]:
    """The rows: tiny stand-ins (for the simulator) or LeNet-5 and AlexNet at ``batch``."""
    if tiny:
        return (_act_cases("tiny", "conv", (2, 5, 5, 4), "relu")
                + [_bias_case("tiny", "conv", (2, 5, 5, 6))]
                + _pool_cases("tiny", "pool", "max", (1, 5, 5, 4), 3, 2, "valid")
                + _pool_cases("tiny", "pool", "avg", (2, 4, 4, 3), 2, 2, "valid")
                + _softmax_cases("tiny", 3, 5)
                + _dense_cases("tiny", "fc", 3, 6, "relu", True)
                + _optim_cases("tiny", [(5, 3), (3,)]))
    from gpucnn import layers, zoo

    saved = os.environ.get("GPUCNN_BACKEND")
    os.environ.setdefault("GPUCNN_BACKEND", "numpy")    # the zoo builds its weights on the CPU
    try:
        models = (("LeNet-5", zoo.lenet5()), ("AlexNet", zoo.alexnet()))
    finally:
        if saved is None:
            os.environ.pop("GPUCNN_BACKEND", None)
    out = []
    for net, model in models:
        for layer in model.layers:
            hwc = tuple(int(v) for v in layer.input_shape[1:])
            act = getattr(layer, "activation", None)
            act = act if isinstance(act, str) else getattr(act, "__name__", None)
            if isinstance(layer, layers.Conv2D):
                ys = (batch,) + tuple(int(v) for v in layer.output_shape[1:])
                out += _act_cases(net, layer.name, ys, act) + [_bias_case(net, layer.name, ys)]
            elif isinstance(layer, (layers.MaxPooling2D, layers.AveragePooling2D)):
                kind = "max" if isinstance(layer, layers.MaxPooling2D) else "avg"
                out += _pool_cases(net, layer.name, kind, (batch,) + hwc,
                                   int(layer.pool_size[0]), int(layer.strides[0]), layer.padding)
            elif isinstance(layer, layers.Dense) and act == "softmax":
                out += _softmax_cases(net, batch, int(layer.units))
            elif isinstance(layer, layers.Dense):
                nxt = model.layers[model.layers.index(layer) + 1]
                out += _dense_cases(net, layer.name, batch, int(layer.units), act,
                                    isinstance(nxt, layers.Dropout))
        out += _optim_cases(net, [tuple(int(v) for v in w.shape) for w in model.trainable_weights])
    return out
