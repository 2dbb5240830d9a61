"""Finite-difference gradient checks in float64.

``gradcheck(fn, *arrays)`` projects the output of ``fn`` onto a fixed random tensor R (so every
output element matters), then compares the autograd gradient of ``sum(fn(*xs) * R)`` with central
differences on a sample of indices of every input. A failure names the argument and the index.
"""
from __future__ import annotations

import numpy as np

import gpucnn


def gradcheck(fn, *arrays, eps=1e-6, tol=1e-6, samples=40, seed=0):
    rng = np.random.default_rng(seed)
    arrays = [np.asarray(a, dtype=np.float64) for a in arrays]
    tensors = [gpucnn.Tensor(a.copy(), requires_grad=True) for a in arrays]
    out = fn(*tensors)
    r = rng.standard_normal(out.shape)
    (out * gpucnn.Tensor(r)).sum().backward()

    def f(xs):
        with gpucnn.no_grad():
            y = fn(*[gpucnn.Tensor(x) for x in xs]).numpy()
        return float((y * r).sum())

    for k, (a, t) in enumerate(zip(arrays, tensors)):
        assert t.grad is not None, f"argument {k}: no gradient was computed"
        analytic = t.grad.numpy()
        assert analytic.shape == a.shape, f"argument {k}: grad shape {analytic.shape} != {a.shape}"
        assert analytic.dtype == np.float64, f"argument {k}: grad dtype {analytic.dtype}"
        flat = a.reshape(-1)
        idx = np.arange(flat.size) if flat.size <= samples else rng.choice(flat.size, samples, replace=False)
        for i in idx:
            xs = [x.copy() for x in arrays]
            xs[k].reshape(-1)[i] += eps
            up = f(xs)
            xs[k].reshape(-1)[i] -= 2 * eps
            down = f(xs)
            num = (up - down) / (2 * eps)
            ana = analytic.reshape(-1)[i]
            where = np.unravel_index(i, a.shape)
            assert abs(num - ana) <= tol * max(1.0, abs(num), abs(ana)), (
                f"argument {k} at index {where}: autograd {ana!r} vs finite difference {num!r}")
