"""Optimizer updates in place on the parameter and its slots, one fused kernel per optimizer:
each element is read once and written once. Formulas (those of the NumPy set):

SGD      g' = g + wd * p;  momentum 0: p -= lr * g';  else v = mu * v - lr * g' and
         p += v (plain) or p += mu * v - lr * g' (Nesterov, with the new v)
Adam     p *= 1 - lr * wd (decoupled);  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
         p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
RMSprop  g' = g + wd * p;  s = rho s + (1 - rho) g'^2;  p -= lr * g' / (sqrt(s) + eps)

Hyperparameters are combined on the host in float64 and passed in the parameter's dtype.
"""
from __future__ import annotations

import math

import numpy as np
from numba import types

from ._launch import (NB_FLOAT, KernelSpec, arr, contig, dummy, float_dtype, float_variants,
                      grid_1d, kernel_factory, launch, to_host, xp)
from ._runtime import numba_cuda as cuda

#: Threads per block of the grid-stride update kernels.
OPTIM_BLOCK = 256


@kernel_factory(float_variants)
def sgd_kernel(dtype):
    def sgd_k(p, g, v, lr, mu, wd, nesterov, use_v):
        """In place on flat p (and v when use_v); g read only. One thread per element."""
        for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
            gi = g[i] + wd * p[i]
            if use_v != 0:
                vi = mu * v[i] - lr * gi
                v[i] = vi
                if nesterov != 0:
                    p[i] += mu * vi - lr * gi
                else:
                    p[i] += vi
            else:
                p[i] -= lr * gi

    a, f = arr(dtype, 1), NB_FLOAT[np.dtype(dtype)]
    return KernelSpec(f"sgd[{dtype}]", sgd_k, (a, a, a, f, f, f, types.int64, types.int64))


@kernel_factory(float_variants)
def adam_kernel(dtype):
    dt = NB_FLOAT[np.dtype(dtype)]

    def adam_k(p, g, m, v, decay, b1, omb1, b2, omb2, c1, c2, eps):
        """In place on flat p, m, v: decay = 1 - lr * wd, omb1 = 1 - b1, omb2 = 1 - b2,
        c1 = lr / (1 - b1^t), c2 = 1 / sqrt(1 - b2^t). One thread per element."""
        for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
            gi = g[i]
            mi = b1 * m[i] + omb1 * gi
            vi = b2 * v[i] + omb2 * (gi * gi)
            m[i] = mi
            v[i] = vi
            p[i] = p[i] * decay - c1 * mi / (dt(math.sqrt(vi)) * c2 + eps)

    a, f = arr(dtype, 1), NB_FLOAT[np.dtype(dtype)]
    return KernelSpec(f"adam[{dtype}]", adam_k, (a, a, a, a) + (f,) * 8)


@kernel_factory(float_variants)
def rmsprop_kernel(dtype):
    dt = NB_FLOAT[np.dtype(dtype)]

    def rmsprop_k(p, g, s, lr, rho, omrho, eps, wd):
        """In place on flat p and s; omrho = 1 - rho. One thread per element."""
        for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
            gi = g[i] + wd * p[i]
            si = rho * s[i] + omrho * (gi * gi)
            s[i] = si
            p[i] -= lr * gi / (dt(math.sqrt(si)) + eps)

    a, f = arr(dtype, 1), NB_FLOAT[np.dtype(dtype)]
    return KernelSpec(f"rmsprop[{dtype}]", rmsprop_k, (a, a, a) + (f,) * 5)


# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------

class _InPlace:
    """Flat contiguous views of the in-place arrays, copied back at the end when a view was
    not possible (a non-contiguous parameter)."""

    def __init__(self, op, p, **slots):
        self.dt = float_dtype(op, p)
        self.pairs = []
        self.flat = {}
        for name, a in (("p", p), *slots.items()):
            if a is None:
                continue
            if tuple(a.shape) != tuple(p.shape) or a.dtype != self.dt:
                raise ValueError(f"{op}: {name} must match p ({tuple(p.shape)}, {self.dt}), got "
                                 f"{tuple(a.shape)}, {a.dtype}")
            c = a if (a.flags.c_contiguous and isinstance(a, xp.ndarray)) else contig(a)
            self.pairs.append((a, c))
            self.flat[name] = c.reshape(-1)

    def done(self):
        for a, c in self.pairs:
            if c is not a:
                a[...] = c if isinstance(a, type(c)) else to_host(c)


def _grad(op, g, p_shape, dt):
    g = contig(g, dt)
    if tuple(g.shape) != tuple(p_shape):
        raise ValueError(f"{op}: g must have the shape of p {tuple(p_shape)}, got "
                         f"{tuple(g.shape)}")
    return g.reshape(-1)


def _grid(n):
    return grid_1d(n, OPTIM_BLOCK), (OPTIM_BLOCK,)


def sgd_update(p, g, v, lr, momentum, nesterov, weight_decay):
    """SGD with momentum (Keras formulation), in place on ``p`` and ``v``."""
    op = "sgd_update"
    momentum = float(momentum)
    if momentum != 0.0 and v is None:
        raise ValueError(f"{op}: v expected an array when momentum != 0, got None")
    use_v = momentum != 0.0
    io = _InPlace(op, p, v=v if use_v else None)
    dt = io.dt
    gf = _grad(op, g, p.shape, dt)
    pf = io.flat["p"]
    vf = io.flat["v"] if use_v else dummy(dt)
    launch(sgd_kernel(dt.name), *_grid(pf.size), pf, gf, vf, float(lr), momentum,
           float(weight_decay), int(bool(nesterov)), int(use_v))
    io.done()


def adam_update(p, g, m, v, lr, beta1, beta2, eps, t, weight_decay):
    """Adam with bias correction and decoupled weight decay, in place on ``p``, ``m``, ``v``."""
    op = "adam_update"
    lr, beta1, beta2 = float(lr), float(beta1), float(beta2)
    t = int(t)
    if t < 1:
        raise ValueError(f"{op}: t expected the 1-based step >= 1, got {t}")
    io = _InPlace(op, p, m=m, v=v)
    dt = io.dt
    gf = _grad(op, g, p.shape, dt)
    pf = io.flat["p"]
    launch(adam_kernel(dt.name), *_grid(pf.size), pf, gf, io.flat["m"], io.flat["v"],
           1.0 - lr * float(weight_decay), beta1, 1.0 - beta1, beta2, 1.0 - beta2,
           lr / (1.0 - beta1 ** t),
           1.0 / math.sqrt(1.0 - beta2 ** t), float(eps))
    io.done()


def rmsprop_update(p, g, s, lr, rho, eps, weight_decay):
    """RMSprop with L2 weight decay, in place on ``p`` and ``s``."""
    op = "rmsprop_update"
    io = _InPlace(op, p, s=s)
    dt = io.dt
    gf = _grad(op, g, p.shape, dt)
    pf = io.flat["p"]
    launch(rmsprop_kernel(dt.name), *_grid(pf.size), pf, gf, io.flat["s"], float(lr),
           float(rho), 1.0 - float(rho), float(eps), float(weight_decay))
    io.done()
