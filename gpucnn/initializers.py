"""Weight initializers with Keras names and formulas.

Each initializer is a callable ``init(shape, dtype="float32")`` returning a host NumPy array; layers
move it to the active backend. Random ones draw from ``gpucnn.random.generator()`` (reset by
``gpucnn.manual_seed``) unless given their own ``seed``, in which case every call gives the same
values.

Fans follow Keras: for a kernel of shape ``(..., fan_in_axis, fan_out_axis)`` the receptive field
is the product of the leading axes, ``fan_in = shape[-2] * receptive`` and
``fan_out = shape[-1] * receptive``; a dense kernel ``(in, out)`` has ``fan_in = in``.

>>> import gpucnn
>>> from gpucnn import initializers
>>> gpucnn.manual_seed(0)
>>> w = initializers.get("glorot_uniform")((5, 5, 1, 6))
>>> w.shape, w.dtype, bool(abs(w).max() <= (6 / (25 + 150)) ** 0.5)
((5, 5, 1, 6), dtype('float32'), True)
"""
from __future__ import annotations

import math

import numpy as np

from gpucnn import random as _random

# The standard deviation of a unit normal truncated to [-2, 2] (Keras divides by it so that
# the truncated draw keeps the intended variance).
_TRUNC_STD = 0.87962566103423978


def compute_fans(shape) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a weight of ``shape``, as Keras counts them (module docstring)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


class Initializer:
    """Base class: subclasses implement ``sample(shape, gen)`` returning float64 or float32 values."""

    def __init__(self, seed=None):
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise TypeError(f"{type(self).__name__}: seed must be an int or None, got {seed!r}")
        self.seed = seed

    def _gen(self):
        return np.random.default_rng(self.seed) if self.seed is not None else _random.generator()

    def __call__(self, shape, dtype="float32"):
        shape = tuple(int(s) for s in shape)
        return np.asarray(self.sample(shape, self._gen()), dtype=dtype).reshape(shape)

    def sample(self, shape, gen):  # pragma: no cover - abstract
        """Values of ``shape`` drawn with the NumPy generator ``gen`` (float32 or float64)."""
        raise NotImplementedError

    def get_config(self) -> dict:
        """The constructor arguments (read from the attributes of the same names), JSON-ready;
        ``type(init).from_config(init.get_config())`` draws the same way."""
        import inspect

        names = [n for n, prm in inspect.signature(type(self).__init__).parameters.items()
                 if n != "self" and prm.kind not in (prm.VAR_POSITIONAL, prm.VAR_KEYWORD)]
        values = {n: getattr(self, n) for n in names}
        return {n: int(v) if isinstance(v, np.integer) else v for n, v in values.items()}

    @classmethod
    def from_config(cls, config):
        """The initializer ``get_config`` describes."""
        return cls(**config)

    def __repr__(self):
        return f"{type(self).__name__}()"


class Zeros(Initializer):
    """Every value 0 (the default bias initializer)."""
    def sample(self, shape, gen):
        return np.zeros(shape)


class Ones(Initializer):
    """Every value 1."""
    def sample(self, shape, gen):
        return np.ones(shape)


class Constant(Initializer):
    """Every value ``value``."""
    def __init__(self, value=0.0):
        super().__init__()
        self.value = float(value)

    def sample(self, shape, gen):
        return np.full(shape, self.value)


class RandomUniform(Initializer):
    """Uniform on ``[minval, maxval)``."""
    def __init__(self, minval=-0.05, maxval=0.05, seed=None):
        super().__init__(seed)
        self.minval, self.maxval = float(minval), float(maxval)

    def sample(self, shape, gen):
        return gen.uniform(self.minval, self.maxval, size=shape)


def _truncated_normal(gen, shape, std):
    """Normal draws of ``std`` redrawn until all lie within two standard deviations."""
    z = gen.standard_normal(size=shape)
    bad = np.abs(z) > 2.0
    while bad.any():
        z[bad] = gen.standard_normal(size=int(bad.sum()))
        bad = np.abs(z) > 2.0
    return z * std


class RandomNormal(Initializer):
    """Normal with ``mean`` and ``stddev``."""
    def __init__(self, mean=0.0, stddev=0.05, seed=None):
        super().__init__(seed)
        self.mean, self.stddev = float(mean), float(stddev)

    def sample(self, shape, gen):
        return gen.normal(self.mean, self.stddev, size=shape)


class TruncatedNormal(RandomNormal):
    """Normal with ``mean`` and ``stddev``; draws beyond two ``stddev`` are drawn again."""
    def sample(self, shape, gen):
        return self.mean + _truncated_normal(gen, shape, self.stddev)


class VarianceScaling(Initializer):
    """Keras ``VarianceScaling``: variance ``scale / n`` with ``n`` the fan_in, fan_out or their mean."""

    MODES = ("fan_in", "fan_out", "fan_avg")
    DISTRIBUTIONS = ("truncated_normal", "untruncated_normal", "uniform")

    def __init__(self, scale=1.0, mode="fan_in", distribution="truncated_normal", seed=None):
        super().__init__(seed)
        if mode not in self.MODES:
            raise ValueError(f"VarianceScaling: mode must be one of {self.MODES}, got {mode!r}")
        if distribution == "normal":
            distribution = "truncated_normal"
        if distribution not in self.DISTRIBUTIONS:
            raise ValueError(f"VarianceScaling: distribution must be one of {self.DISTRIBUTIONS}, "
                             f"got {distribution!r}")
        if scale <= 0:
            raise ValueError(f"VarianceScaling: scale must be > 0, got {scale!r}")
        self.scale, self.mode, self.distribution = float(scale), mode, distribution

    def sample(self, shape, gen):
        fan_in, fan_out = compute_fans(shape)
        n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2.0}[self.mode]
        var = self.scale / max(1.0, n)
        if self.distribution == "uniform":
            limit = math.sqrt(3.0 * var)
            return gen.uniform(-limit, limit, size=shape)
        if self.distribution == "untruncated_normal":
            return gen.normal(0.0, math.sqrt(var), size=shape)
        return _truncated_normal(gen, shape, math.sqrt(var) / _TRUNC_STD)

    def __repr__(self):
        return (f"{type(self).__name__}(scale={self.scale}, mode={self.mode!r}, "
                f"distribution={self.distribution!r})")


def _preset(name, scale, mode, distribution, doc):
    """A ``VarianceScaling`` of fixed settings that takes only ``seed`` (Keras's named ones)."""
    def __init__(self, seed=None):
        VarianceScaling.__init__(self, scale, mode, distribution, seed)

    return type(name, (VarianceScaling,), {"__init__": __init__, "__doc__": doc,
                                           "__module__": __name__})


GlorotUniform = _preset("GlorotUniform", 1.0, "fan_avg", "uniform", "Uniform on ``[-l, l]``, "
                        "``l = sqrt(6 / (fan_in + fan_out))`` (the Keras default kernel init).")
GlorotNormal = _preset("GlorotNormal", 1.0, "fan_avg", "truncated_normal",
                       "Truncated normal with ``std = sqrt(2 / (fan_in + fan_out))``.")
HeNormal = _preset("HeNormal", 2.0, "fan_in", "truncated_normal",
                   "Truncated normal with ``std = sqrt(2 / fan_in)`` (for ReLU networks).")
HeUniform = _preset("HeUniform", 2.0, "fan_in", "uniform",
                    "Uniform on ``[-l, l]``, ``l = sqrt(6 / fan_in)``.")
LecunNormal = _preset("LecunNormal", 1.0, "fan_in", "truncated_normal",
                      "Truncated normal with variance ``1 / fan_in``.")
LecunUniform = _preset("LecunUniform", 1.0, "fan_in", "uniform",
                       "Uniform on ``[-l, l]``, ``l = sqrt(3 / fan_in)``.")


def _snake(name: str) -> str:
    """``HeNormal`` -> ``he_normal``: a ``_`` before each capital that follows a small letter."""
    return "".join("_" + ch.lower() if ch.isupper() and i and not name[i - 1].isupper()
                   else ch.lower() for i, ch in enumerate(name))


_NAMES = {_snake(c.__name__): c for c in (
    Zeros, Ones, Constant, RandomUniform, RandomNormal, TruncatedNormal, GlorotUniform,
    GlorotNormal, HeNormal, HeUniform, LecunNormal, LecunUniform)}


def get(identifier):
    """An initializer from a name (``'glorot_uniform'``, ``'HeNormal'``, ...), an instance, or a
    callable ``f(shape, dtype)``."""
    if isinstance(identifier, Initializer):
        return identifier
    if isinstance(identifier, str):
        key = identifier if identifier in _NAMES else _snake(identifier)
        if key not in _NAMES:
            raise ValueError(f"unknown initializer {identifier!r}; expected one of "
                             f"{sorted(_NAMES)}, an Initializer or a callable f(shape, dtype)")
        return _NAMES[key]()
    if callable(identifier):
        return identifier
    raise TypeError(f"an initializer must be a name, an Initializer or a callable f(shape, dtype), "
                    f"got {identifier!r}")


__all__ = ["Initializer", "get", "compute_fans", "Zeros", "Ones", "Constant", "RandomUniform",
           "RandomNormal", "TruncatedNormal", "VarianceScaling", "GlorotUniform", "GlorotNormal",
           "HeNormal", "HeUniform", "LecunNormal", "LecunUniform"]
