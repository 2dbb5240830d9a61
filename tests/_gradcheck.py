"""Finite-difference gradient checks in float64.

``gradcheck(fn, *arrays)`` projects the output of ``fn`` onto a fixed random tensor R (so every
output element matters), then compares the autograd gradient of ``sum(fn(*xs) * R)`` with central
differences (``_reference.finite_diff``) on a sample of indices of every input. A failure names
the argument and the index.
"""
from __future__ import annotations

import numpy as np

import gpucnn
from _reference import finite_diff


def gradcheck(fn, *arrays, eps=1e-6, tol=1e-6, samples=40, seed=0):
    rng = np.random.default_rng(seed)
    arrays = [np.asarray(a, dtype=np.float64) for a in arrays]
    tensors = [gpucnn.Tensor(a.copy(), requires_grad=True) for a in arrays]
    out = fn(*tensors)
    r = rng.standard_normal(out.shape)
    (out * gpucnn.Tensor(r)).sum().backward()

    def f(xs):
        with gpucnn.no_grad():
            return fn(*[gpucnn.Tensor(x) for x in xs]).numpy()

    for k, (a, t) in enumerate(zip(arrays, tensors)):
        assert t.grad is not None, f"argument {k}: no gradient was computed"
        analytic = t.grad.numpy()
        assert analytic.shape == a.shape, f"argument {k}: grad shape {analytic.shape} != {a.shape}"
        assert analytic.dtype == np.float64, f"argument {k}: grad dtype {analytic.dtype}"
        idx = np.arange(a.size) if a.size <= samples else rng.choice(a.size, samples, replace=False)
        xs = [x.copy() for x in arrays]        # finite_diff moves xs[k] and puts it back
        for i, num in zip(idx, finite_diff(lambda _: f(xs), xs[k], r, idx, eps)):
            ana = analytic.reshape(-1)[i]
            where = np.unravel_index(i, a.shape)
            assert abs(num - ana) <= tol * max(1.0, abs(num), abs(ana)), (
                f"argument {k} at index {where}: autograd {ana!r} vs finite difference {num!r}")
