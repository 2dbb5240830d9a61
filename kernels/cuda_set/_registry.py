"""The kernel registry of the cuda set.

Every ``@cuda.jit`` kernel of the set is made by a *factory* registered with
``@kernel_factory(variants)``: the factory takes compile-time parameters (dtype, tile or block
sizes) and returns a ``KernelSpec``, i.e. the kernel's Python function plus its explicit Numba
argument types. ``all_kernels()`` lists every kernel the launchers use with the default
parameters; the PTX test compiles that list, so a new kernel cannot be forgotten (a test also
checks that no module of the set calls ``cuda.jit`` on a kernel outside a factory).

This module imports no op module: the package's ``__init__`` imports every one of them, and so
every factory has registered before any module of the set (this one included) can be used.
"""
from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import numpy as np
from numba import types
from numba.np import numpy_support


class KernelSpec(NamedTuple):
    """One compiled-once kernel: a Python function (not yet jitted) and its argument types."""

    name: str                 # unique, with its compile-time parameters, e.g. "act_fwd[float32]"
    pyfunc: Callable
    argtypes: tuple           # Numba types, one per kernel argument
    launch_bounds: tuple | None = None   # (max threads per block, min blocks per SM) or None

    @property
    def sig(self):
        return types.void(*self.argtypes)


_FACTORIES: list = []


def kernel_factory(variants: Callable[[], list]):
    """Register a kernel factory; ``variants()`` gives the keyword sets the launchers use."""
    def deco(fn):
        cached = functools.lru_cache(maxsize=None)(fn)
        _FACTORIES.append((f"{fn.__module__}.{fn.__name__}", cached, variants))
        return cached
    return deco


def all_kernels() -> list[KernelSpec]:
    """Every kernel of the set with the launchers' default compile-time parameters."""
    out, seen = [], set()
    for _, factory, variants in _FACTORIES:
        for kw in variants():
            spec = factory(**kw)
            if spec.name not in seen:
                seen.add(spec.name)
                out.append(spec)
    return out


def arr(dtype, ndim: int):
    """The Numba type of a C-contiguous array argument."""
    nb = dtype if isinstance(dtype, types.Type) else numpy_support.from_dtype(np.dtype(dtype))
    return types.Array(nb, ndim, "C")


def float_variants():
    return [{"dtype": "float32"}, {"dtype": "float64"}]
