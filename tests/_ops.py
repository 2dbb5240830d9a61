"""The op registry: one entry per op, from which every backend is tested (tests/test_ops.py).

An entry names the op's public function and its backward (the ``Function`` in
``gpucnn.functional``), the kernel-contract functions it runs on (with, for each, the call made
from a sample's inputs, the plain-loop or direct-formula reference, the float32 tolerance
against the NumPy set, and the arguments updated in place), and its samples: geometries with
the edge cases, each made by ``make(rng)`` as a dict of float64 inputs. ``grad(inputs)`` gives
the public function over tensors and the arrays to differentiate, for the float64
finite-difference check. Adding an op is adding one entry: the NumPy set is tested against the
references, the CUDA set (in Numba's simulator, or on a GPU) against the NumPy set, and the
gradient against finite differences.

Kernel functions beyond the contract, which only some sets offer (the cuda set's fused backward
and multi-tensor updates), are tested beside their capability in tests/test_kernels_cuda.py.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

import gpucnn.functional as F
from _reference import (ref_act, ref_adam_update, ref_avg_pool, ref_avg_pool_backward,
                        ref_conv2d, ref_conv2d_backward_input, ref_conv2d_backward_weight,
                        ref_loss, ref_loss_bounds, ref_max_pool, ref_max_pool_backward, ref_pads,
                        ref_rmsprop_update, ref_sgd_update, ref_updated)
from gpucnn.kernels._rng import uniform_np

FWD, GRAD = 1e-5, 1e-4      # float32 relative error against the NumPy set: outputs, gradients


@dataclass
class Kernel:
    """A contract function of the op: ``call(inputs)`` its arguments, ``ref(inputs)`` the
    expected outputs (a tuple; None: tested against a formula elsewhere, named in ``where``),
    ``tol`` the float32 tolerance against the NumPy set (0: bit for bit), ``in_place`` the
    positions of the arguments it updates (its result is then those arguments)."""

    call: callable
    ref: callable = None
    tol: float = FWD
    in_place: tuple = ()
    where: str = ""


@dataclass
class Sample:
    id: str
    make: callable           # rng -> dict of float64 inputs and settings
    cuda: bool = True        # small enough for the simulator's parity test
    grad: bool = True        # in the finite-difference check


@dataclass
class Op:
    name: str
    public: str              # "gpucnn.functional.conv2d"
    backward: str            # "gpucnn.functional.conv.Conv2D" ("": the op has no gradient)
    kernels: dict            # contract function name -> Kernel
    samples: list
    grad: callable = None    # inputs -> (fn over tensors, arrays); None: not differentiable
    notes: str = ""
    extra: list = field(default_factory=list)   # other test files that cover the op


def _normal(rng, *shape, scale=1.0):
    return scale * rng.standard_normal(shape)


# ------------------------------------------------------------------------------ convolution

# (N, H, W, C_in, KH, KW, C_out, stride, padding, act, in the simulator, in the gradient check)
CONV_GEOMETRIES = [
    (1, 3, 3, 1, 2, 2, 1, (1, 1), "valid", "linear", True, False),
    (2, 7, 6, 3, 3, 3, 4, (1, 1), "same", "relu", True, True),
    (3, 8, 9, 2, 2, 2, 3, (1, 1), "same", "tanh", False, True),       # even kernel, same
    (2, 9, 7, 2, 4, 4, 3, (2, 2), "same", "sigmoid", True, True),
    (1, 10, 11, 3, 5, 5, 2, (2, 2), "valid", "linear", False, False),
    (2, 11, 8, 2, 3, 2, 3, (3, 3), "same", "relu", False, True),       # non-square kernel
    (2, 7, 7, 2, 2, 2, 2, (3, 3), "valid", "linear", True, True),     # rows/cols no window reads
    (1, 6, 9, 4, 1, 1, 5, (1, 1), "valid", "tanh", True, False),      # 1x1: x its own im2col
    (2, 6, 9, 4, 1, 1, 5, (2, 3), "valid", "linear", False, False),
    (2, 5, 8, 3, 5, 3, 2, (1, 2), "same", "sigmoid", False, True),     # non-square stride
    (1, 4, 4, 2, 5, 5, 2, (1, 1), "same", "relu", True, False),       # kernel larger than image
    (3, 5, 5, 6, 5, 5, 4, (1, 1), "valid", "tanh", False, False),      # C5-like: 1x1 output
    (3, 8, 7, 1, 3, 3, 2, (1, 1), "same", "relu", False, False),       # one input channel
    (5, 9, 9, 1, 5, 5, 3, (2, 2), "valid", "tanh", False, False),
    (3, 6, 6, 4, 3, 3, 1, (1, 1), "same", "sigmoid", False, False),    # one output channel
    (2, 7, 7, 6, 3, 3, 5, (1, 1), "same", "relu", False, False),       # border classes
    (2, 9, 8, 5, 4, 2, 6, (2, 3), "same", "tanh", False, False),       # ... even kernel, strides
    (1, 4, 4, 5, 5, 5, 6, (1, 1), "same", "sigmoid", False, False),    # ... larger than image
    (1, 5, 6, 3, 2, 2, 11, (2, 2), "same", "linear", True, False),    # two column tiles (cuda)
    (1, 13, 11, 2, 5, 5, 3, (4, 4), "valid", "relu", True, False),    # AlexNet conv1's stride
]


def _conv_sample(g):
    n, h, w, c, kh, kw, co, stride, padding, act, cuda, grad = g

    def make(rng):
        x = _normal(rng, n, h, w, c)
        wt = _normal(rng, kh, kw, c, co, scale=1 / math.sqrt(kh * kw * c))
        pad = ref_pads(h, w, kh, kw, *stride, padding)
        ho = (h + pad[0] + pad[1] - kh) // stride[0] + 1
        wo = (w + pad[2] + pad[3] - kw) // stride[1] + 1
        return dict(x=x, w=wt, b=_normal(rng, co), stride=stride, pad=pad, padding=padding,
                    act=act, dy=_normal(rng, n, ho, wo, co))

    tag = f"{n}x{h}x{w}x{c}-k{kh}x{kw}x{co}-s{stride[0]}{stride[1]}-{padding}-{act}"
    return Sample(tag, make, cuda, grad)


CONV2D = Op(
    "conv2d", "gpucnn.functional.conv2d", "gpucnn.functional.conv.Conv2D",
    kernels={
        "conv2d_forward": Kernel(
            lambda i: (i["x"], i["w"], i["b"], i["stride"], i["pad"], i["act"]),
            lambda i: (ref_conv2d(i["x"], i["w"], i["b"], i["stride"], i["pad"], i["act"]),)),
        "conv2d_backward_input": Kernel(
            lambda i: (i["dy"], i["w"], i["x"].shape, i["stride"], i["pad"]),
            lambda i: (ref_conv2d_backward_input(i["dy"], i["w"], i["x"].shape, i["stride"],
                                                 i["pad"]),), GRAD),
        "conv2d_backward_weight": Kernel(
            lambda i: (i["x"], i["dy"], i["w"].shape, i["stride"], i["pad"]),
            lambda i: (ref_conv2d_backward_weight(i["x"], i["dy"], i["w"].shape, i["stride"],
                                                  i["pad"]),), GRAD),
        "bias_grad": Kernel(lambda i: (i["dy"],), lambda i: (i["dy"].sum(axis=(0, 1, 2)),),
                            GRAD),
    },
    samples=[_conv_sample(g) for g in CONV_GEOMETRIES],
    grad=lambda i: (lambda x, w, b: F.conv2d(x, w, b, strides=i["stride"], padding=i["padding"],
                                             activation=i["act"]), (i["x"], i["w"], i["b"])),
    notes="forced algorithms and block sizes of the NumPy set: test_ops.CONV_CONFIGS",
    extra=["tests/test_kernels_numpy.py (fast paths)",
           "tests/test_kernels_cuda.py (tiles, split-K, fused)"])


def _transpose_sample(g):
    n, h, w, c, kh, kw, co, stride, padding = g

    def make(rng):
        return dict(x=_normal(rng, n, h, w, c), w=_normal(rng, kh, kw, co, c),
                    b=_normal(rng, co), stride=stride, padding=padding)

    return Sample(f"{n}x{h}x{w}x{c}-k{kh}x{kw}x{co}-s{stride}-{padding}", make, False, True)


CONV2D_TRANSPOSE = Op(
    "conv2d_transpose", "gpucnn.functional.conv2d_transpose",
    "gpucnn.functional.conv.Conv2DTranspose",
    kernels={},     # runs on conv2d_backward_input (forward) and conv2d_forward (its gradient)
    samples=[_transpose_sample(g) for g in [(1, 2, 2, 1, 3, 3, 2, 1, "valid"),
                                            (2, 3, 3, 2, 2, 2, 3, 1, "same"),
                                            (2, 3, 3, 3, 4, 3, 2, 2, "same"),
                                            (1, 4, 4, 2, 5, 5, 2, 3, "valid"),
                                            (3, 4, 2, 2, 1, 1, 1, 2, "same"),
                                            (1, 3, 4, 2, 3, 2, 3, (2, 3), "valid")]],
    grad=lambda i: (lambda x, w, b: F.conv2d_transpose(x, w, b, strides=i["stride"],
                                                       padding=i["padding"]),
                    (i["x"], i["w"], i["b"])),
    extra=["tests/test_kernels_numpy.py (the adjoint identity)"])


# ------------------------------------------------------------------------------ pooling

# (shape, pool, stride, padding, in the simulator)
POOL_GEOMETRIES = [
    ((2, 8, 8, 3), (2, 2), (2, 2), "valid", True),     # LeNet-5 S2: windows tile the image
    ((2, 9, 9, 2), (3, 3), (2, 2), "valid", True),     # AlexNet: overlapping
    ((1, 8, 7, 2), (3, 3), (2, 2), "same", True),
    ((2, 5, 6, 1), (2, 2), (1, 1), "same", True),
    ((2, 7, 7, 2), (2, 3), (1, 2), "same", True),      # non-square window and stride
    ((1, 5, 7, 3), (2, 2), (2, 2), "same", False),     # odd sizes: padding bottom/right
    ((1, 7, 8, 2), (3, 3), (3, 3), "valid", False),    # cells no window reads
    ((1, 5, 5, 2), (1, 1), (2, 2), "valid", False),
    ((1, 6, 6, 2), (1, 1), (2, 2), "valid", False),    # strided, unread cells inside the tiling
]


def _pool_sample(g, ties=False):
    shape, pool, stride, padding, cuda = g

    def make(rng):
        if ties:   # small integers (ties), a NaN, and a whole row and column of -inf
            x = rng.integers(-2, 2, size=shape).astype(np.float64)
            x[0, shape[1] - 1, shape[2] - 1, 0] = np.nan
            x[0, 0, :, -1] = -np.inf
            x[0, :, 0, -1] = -np.inf
        else:
            x = _normal(rng, *shape)
        pad = ref_pads(*shape[1:3], *pool, *stride, padding)
        ho = (shape[1] + pad[0] + pad[1] - pool[0]) // stride[0] + 1
        wo = (shape[2] + pad[2] + pad[3] - pool[1]) // stride[1] + 1
        y, idx = ref_max_pool(x, pool, stride, pad)
        return dict(x=x, pool=pool, stride=stride, pad=pad, padding=padding, idx=idx,
                    dy=_normal(rng, shape[0], ho, wo, shape[3]))

    tag = f"{'x'.join(map(str, shape))}-p{pool[0]}{pool[1]}-s{stride[0]}{stride[1]}-{padding}"
    return Sample(("ties-nan-inf-" if ties else "") + tag, make, cuda, not ties)


MAX_POOL = Op(
    "max_pool2d", "gpucnn.functional.max_pool2d", "gpucnn.functional.pool.MaxPool2D",
    kernels={
        "max_pool_forward": Kernel(lambda i: (i["x"], i["pool"], i["stride"], i["pad"]),
                                   lambda i: ref_max_pool(i["x"], i["pool"], i["stride"],
                                                          i["pad"]), 0.0),
        "max_pool_backward": Kernel(lambda i: (i["dy"], i["idx"], i["x"].shape, i["pool"],
                                                   i["stride"], i["pad"]),
                                    lambda i: (ref_max_pool_backward(i["dy"], i["idx"],
                                                                     i["x"].shape),), GRAD),
    },
    samples=[_pool_sample(g) for g in POOL_GEOMETRIES] + [_pool_sample(POOL_GEOMETRIES[1], True),
                                                          _pool_sample(POOL_GEOMETRIES[2], True)],
    grad=lambda i: (lambda x: F.max_pool2d(x, i["pool"], i["stride"], i["padding"]), (i["x"],)),
    extra=["tests/test_kernels_numpy.py (ties, NaN, wide windows)",
           "tests/test_kernels_numpy.py (separable maxima)"])

AVG_POOL = Op(
    "avg_pool2d", "gpucnn.functional.avg_pool2d", "gpucnn.functional.pool.AvgPool2D",
    kernels={
        "avg_pool_forward": Kernel(lambda i: (i["x"], i["pool"], i["stride"], i["pad"]),
                                   lambda i: (ref_avg_pool(i["x"], i["pool"], i["stride"],
                                                           i["pad"]),)),
        "avg_pool_backward": Kernel(
            lambda i: (i["dy"], i["x"].shape, i["pool"], i["stride"], i["pad"]),
            lambda i: (ref_avg_pool_backward(i["dy"], i["x"].shape, i["pool"], i["stride"],
                                             i["pad"]),), GRAD),
    },
    samples=[_pool_sample(g) for g in POOL_GEOMETRIES],
    grad=lambda i: (lambda x: F.avg_pool2d(x, i["pool"], i["stride"], i["padding"]), (i["x"],)),
    extra=["tests/test_kernels_numpy.py (the GEMM column pass)"])


# ------------------------------------------------------------------------------ activations

def _act_derivative(y, act):
    return {"linear": np.ones_like(y), "relu": (y > 0).astype(y.dtype),
            "tanh": 1 - y * y, "sigmoid": y * (1 - y)}[act]


def _act_sample(act, shape=(3, 5, 7), scale=3.0):
    def make(rng):
        x = _normal(rng, *shape, scale=scale)
        return dict(x=x, act=act, y=ref_act(x, act), dy=_normal(rng, *shape))

    return Sample(f"{act}-{'x'.join(map(str, shape))}", make, True, act != "linear")


ACTIVATION = Op(
    "activation", "gpucnn.functional.relu", "gpucnn.functional.activation.Activation",
    kernels={
        "act_forward": Kernel(lambda i: (i["x"], i["act"]), lambda i: (ref_act(i["x"], i["act"]),)),
        "act_backward": Kernel(lambda i: (i["dy"], i["y"], i["act"]),
                               lambda i: (i["dy"] * _act_derivative(i["y"], i["act"]),), GRAD),
    },
    samples=[_act_sample(a) for a in ("linear", "relu", "tanh", "sigmoid")]
    + [_act_sample("sigmoid", (5,), 60.0)],
    grad=lambda i: ({"relu": F.relu, "tanh": F.tanh, "sigmoid": F.sigmoid}[i["act"]], (i["x"],)),
    notes="gpucnn.functional.tanh and sigmoid run on the same kernels",
    extra=["tests/test_kernels_numpy.py (ReLU chunks, sigmoid tails)"])


# ------------------------------------------------------------------------------ softmax family

def _softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _rows_sample(rows, k, scale=4.0):
    def make(rng):
        x = _normal(rng, rows, k, scale=scale)
        return dict(x=x, y=_softmax(x), ly=np.log(_softmax(x)), dy=_normal(rng, rows, k))

    return Sample(f"{rows}x{k}", make, True, True)


ROW_SAMPLES = [_rows_sample(5, 13), _rows_sample(3, 1), _rows_sample(2, 37)]   # K below, at and
                                                                                # above a block

def _rows_op(name, y, dx):
    """``name`` (softmax or log_softmax) of ``gpucnn.functional``: the forward's output is the
    sample's ``y`` entry, the backward's ``dx(dy, y)``."""
    return Op(name, f"gpucnn.functional.{name}", "gpucnn.functional.activation._Rows",
              kernels={f"{name}_forward": Kernel(lambda i: (i["x"],), lambda i: (i[y],)),
                       f"{name}_backward": Kernel(lambda i: (i["dy"], i[y]),
                                                  lambda i: (dx(i["dy"], i[y]),), GRAD)},
              samples=ROW_SAMPLES,
              grad=lambda i: (lambda x: getattr(F, name)(x, axis=-1), (i["x"],)))


SOFTMAX = _rows_op("softmax", "y", lambda dy, y: y * (dy - (dy * y).sum(1, keepdims=True)))
LOG_SOFTMAX = _rows_op("log_softmax", "ly", lambda dy, y: dy - np.exp(y) * dy.sum(1, keepdims=True))


# ------------------------------------------------------------------------------ losses

PROBABILITIES = ("bce", "cce", "sparse_cce")


def _loss_sample(loss, n, k, spread=False):
    """Predictions and targets for ``loss``; ``spread``: probabilities 10**U(-9, 0) with two on
    float32's clip bounds (inside float64's; the same numbers in both), no finite differences."""
    def make(rng):
        if loss in PROBABILITIES:
            p = 10.0 ** rng.uniform(-9, 0, (n, k)) if spread else rng.uniform(0.05, 0.9, (n, k))
            if spread:
                p[0, 0], p[-1, -1] = ref_loss_bounds(np.float32)
        else:
            p = _normal(rng, n, k, scale=3.0)
        if loss.startswith("sparse"):
            t = rng.integers(0, k, n)
        elif loss.startswith("cce"):
            t = rng.dirichlet(np.ones(k), n)            # soft targets: every entry counts
        elif loss.startswith("bce"):
            t = rng.random((n, k)).round()
        else:
            t = _normal(rng, n, k)
        value, stats, grad = ref_loss(loss, t, p)
        return dict(loss=loss, p=p, t=t, g=np.array(rng.uniform(0.5, 2.0)), value=value,
                    stats=stats, grad=grad)

    return Sample(f"{'spread-' if spread else ''}{n}x{k}", make, True, not spread)


def _loss_op(loss, public, fn):
    samples = [_loss_sample(loss, n, k) for n, k in ((5, 13), (3, 1), (2, 37), (1, 4))]
    if loss in PROBABILITIES:
        samples.append(_loss_sample(loss, 6, 4, spread=True))
    return Op(
        loss, public, "gpucnn.functional.loss.Loss",
        kernels={
            "loss_forward": Kernel(lambda i: (i["loss"], i["t"], i["p"]),
                                   lambda i: (np.asarray(i["value"]), i["stats"])),
            "loss_backward": Kernel(lambda i: (i["loss"], i["g"], i["t"], i["p"], i["stats"]),
                                    lambda i: (i["g"] * i["grad"],), GRAD),
        },
        samples=samples, grad=lambda i: (lambda p: fn(i["t"], p), (i["p"],)),
        extra=["tests/test_keras_losses.py", "tests/test_functional.py (losses)"])


LOSS_OPS = [
    _loss_op("mse", "gpucnn.functional.mse", F.mse),
    _loss_op("mae", "gpucnn.functional.loss.mae", F.loss.mae),
    _loss_op("bce", "gpucnn.functional.binary_crossentropy", F.binary_crossentropy),
    _loss_op("bce_logits", "gpucnn.functional.binary_crossentropy",
             lambda t, p: F.binary_crossentropy(t, p, from_logits=True)),
    _loss_op("cce", "gpucnn.functional.categorical_crossentropy", F.categorical_crossentropy),
    _loss_op("cce_logits", "gpucnn.functional.categorical_crossentropy",
             lambda t, p: F.categorical_crossentropy(t, p, from_logits=True)),
    _loss_op("sparse_cce", "gpucnn.functional.sparse_categorical_crossentropy",
             F.sparse_categorical_crossentropy),
    _loss_op("sparse_cce_logits", "gpucnn.functional.sparse_categorical_crossentropy",
             lambda t, p: F.sparse_categorical_crossentropy(t, p, from_logits=True)),
]


# ------------------------------------------------------------------------------ dropout

def _dropout_sample(shape, rate):
    def make(rng):
        return dict(shape=shape, rate=rate, seed=int(rng.integers(2**32)),
                    counter=int(rng.integers(100)), x=_normal(rng, *shape))

    return Sample(f"{rate}-{'x'.join(map(str, shape))}", make, True, rate > 0)


def _dropout_ref(i):
    u = uniform_np(i["seed"], i["counter"], math.prod(i["shape"])).reshape(i["shape"])
    keep = 1.0 / (1.0 - i["rate"])
    return (np.where(u >= i["rate"], keep, 0.0),)


DROPOUT = Op(
    "dropout", "gpucnn.functional.dropout", "gpucnn.functional.dense.Dropout",
    kernels={"dropout_mask": Kernel(lambda i: (i["shape"], i["rate"], i["seed"], i["counter"],
                                               np.float64), _dropout_ref, 0.0)},
    samples=[_dropout_sample((3, 5, 7), 0.3), _dropout_sample((2, 33), 0.9),
             _dropout_sample((11,), 0.0)],
    grad=lambda i: (lambda x: F.dropout(x, i["rate"], seed=7), (i["x"],)))


# ------------------------------------------------------------------------------ dense

DENSE = Op(
    "dense", "gpucnn.functional.dense", "gpucnn.functional.dense.Dense",
    kernels={},     # x @ w on the array module (BLAS, cuBLAS); the activation on act_forward
    samples=[Sample(f"{act}", (lambda act: lambda rng: dict(
        x=_normal(rng, 4, 6), w=_normal(rng, 6, 3), b=_normal(rng, 3), act=act))(act), False, True)
        for act in ("linear", "tanh", "relu")],
    grad=lambda i: (lambda x, w, b: F.dense(x, w, b, activation=i["act"]),
                    (i["x"], i["w"], i["b"])))


# ------------------------------------------------------------------------------ optimizers

def _flag(v=0):
    return np.array([v], np.int64)


def _bad(rng, *shape):
    """A gradient with a NaN and both infinities among finite values."""
    g = _normal(rng, *shape)
    g.flat[[1, 4, -1]] = np.nan, np.inf, -np.inf
    return g


def _optim(rng, g, fl, tag, sgd_v=None, plain=False):
    """The three updates' arguments (flag and tag last) with gradients ``g(rng, shape)``;
    ``plain``: no weight decay, no Nesterov, Adam's first step."""
    wd = (0.0, 0.0) if plain else (1e-2, 1e-3)
    return dict(
        sgd=(_normal(rng, 4, 9), g(rng, 4, 9), sgd_v, 0.05, 0.0 if sgd_v is None else 0.9,
             not plain, wd[0], _flag(fl), tag),
        adam=(_normal(rng, 3, 7), g(rng, 3, 7), 0.1 * _normal(rng, 3, 7), rng.random((3, 7)),
              1e-2, 0.9, 0.999, 1e-7, 1 if plain else 7, wd[0], None, _flag(fl), tag),
        rmsprop=(_normal(rng, 5, 6), g(rng, 5, 6), rng.random((5, 6)), 1e-2, 0.9, 1e-7, wd[1], None,
                 0.0, None, None, _flag(fl), tag))


def _update(slots, ref, in_place):
    """The Kernel of an update whose arguments are the sample's ``slots`` entry."""
    return Kernel(lambda i: i[slots], lambda i: ref_updated(ref, i[slots], in_place, in_place[-1]),
                  FWD, in_place, "tests/test_keras_optimizers.py, tests/test_optim_kernels.py")


OPTIMIZER_UPDATES = Op(
    "optimizer updates", "gpucnn.optimizers.Optimizer.apply_gradients", "",
    kernels={"sgd_update": _update("sgd", ref_sgd_update, (0, 2, 7)),
             "adam_update": _update("adam", ref_adam_update, (0, 2, 3, 11)),
             "rmsprop_update": _update("rmsprop", ref_rmsprop_update, (0, 2, 11))},
    samples=[
        Sample("plain", lambda rng: _optim(rng, _normal, 0, 1, plain=True), True, False),
        Sample("momentum-weight-decay",
               lambda rng: _optim(rng, _normal, 0, 1, sgd_v=_normal(rng, 4, 9)), True, False),
        # the contract's check: non-finite gradients refused element by element (the flag
        # takes the tag: 4 replaces a later 9), and an update after a refused one left alone
        Sample("non-finite-gradients-refused",
               lambda rng: _optim(rng, _bad, 9, 4, sgd_v=_normal(rng, 4, 9)), True, False),
        Sample("after-a-refused-update", lambda rng: _optim(rng, _normal, 3, 7), True, False),
    ],
    notes="SGD, Adam, AdamW, RMSprop and Adagrad (on the RMSprop kernel) of gpucnn.optimizers",
    extra=["tests/test_keras_optimizers.py", "tests/test_optim_kernels.py"])


OPS = [CONV2D, CONV2D_TRANSPOSE, MAX_POOL, AVG_POOL, ACTIVATION, SOFTMAX, LOG_SOFTMAX,
       *LOSS_OPS, DROPOUT, DENSE, OPTIMIZER_UPDATES]


def kernel_cases(only_cuda=False, with_ref=False):
    """``[(id, op, kernel name, Kernel, Sample)]`` over the registry."""
    return [(f"{op.name.split()[0]}-{name}-{s.id}", op, name, k, s) for op in OPS
            for name, k in op.kernels.items() if k.ref is not None or not with_ref
            for s in op.samples if s.cuda or not only_cuda]


def grad_cases():
    return [(f"{op.name.split()[0]}-{s.id}", op, s) for op in OPS if op.grad is not None
            for s in op.samples if s.grad]
