"""Core layers: ``Dense``, ``Flatten``, ``Dropout``, ``Activation``, ``Reshape``, ``InputLayer``
and ``Input``.

>>> import numpy as np, gpucnn
>>> from gpucnn import layers
>>> F6 = layers.Dense(units=84, activation="tanh", name="F6")
>>> F6(np.ones((3, 120), np.float32)).shape, F6.kernel.shape, F6.bias.shape
((3, 84), (120, 84), (84,))
"""
from __future__ import annotations

import math

import gpucnn.functional as F
from gpucnn import initializers
from gpucnn import random as _random
from gpucnn.functional import _split
from gpucnn.functional._check import positive_int
from gpucnn.functional._check import rate as _check_rate
from gpucnn.functional.dense import Dropout as _DropoutFn
from gpucnn.layers import _activations
from gpucnn.layers.base import Layer, shape_tuple


def fits(declared, shape) -> bool:
    """Whether ``shape`` (batch axis first) has the ``declared`` sample shape (None: any size)."""
    rest = tuple(shape[1:])
    return len(rest) == len(declared) and all(d is None or d == s for d, s in zip(declared, rest))


def _channels_last(data_format, owner):
    if data_format not in (None, "channels_last"):
        raise ValueError(f"{owner}: only data_format='channels_last' (N, H, W, C) is supported, "
                         f"got {data_format!r}")


class _Activated(Layer):
    """A layer with an ``activation`` (``Activation``) and, for ``Dense`` and the convolutions,
    a kernel, an optional bias and their initializers."""

    def _set_activation(self, activation):
        self._act = _activations.get(activation, type(self).__name__)
        self.activation = activation

    def _set_kernel_args(self, activation, use_bias, kernel_initializer, bias_initializer):
        self._set_activation(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.kernel = None
        self.bias = None

    def _activation_config(self):
        """The name of the layer's activation, for ``get_config`` (a custom function cannot be
        written)."""
        act, names = self._act, _activations.NAMES
        if act.name not in names or act.after not in (None, _activations._AFTER.get(act.name)):
            raise ValueError(f"layer '{self.name}' ({type(self).__name__}): its activation "
                             f"{self.activation!r} is a custom function, which a model file cannot "
                             f"hold; use one of {names}, or keep the architecture in code "
                             "and save the weights alone (save_weights)")
        return act.name

    def _kernel_config(self):
        """The activation, ``use_bias`` and each initializer as ``{"class_name": ..., "config":
        ...}``, for ``get_config``."""
        config = {"activation": self._activation_config(), "use_bias": self.use_bias}
        for attr in ("kernel_initializer", "bias_initializer"):
            init = getattr(self, attr)
            if not isinstance(init, initializers.Initializer):
                raise ValueError(f"layer '{self.name}' ({type(self).__name__}): its {attr} "
                                 f"{init!r} is a function, which a model file cannot hold; use an "
                                 "initializer of gpucnn.initializers, or save the weights alone "
                                 "(save_weights)")
            config[attr] = {"class_name": type(init).__name__, "config": init.get_config()}
        return config

    def _build_kernel(self, shape, units):
        self.kernel = self.add_weight(shape, self.kernel_initializer, name="kernel")
        if self.use_bias:
            self.bias = self.add_weight((units,), self.bias_initializer, name="bias")

    def _after(self, y):
        """The activation's part that runs after a kernel (softmax, a callable), if any."""
        after = self._act.after
        return y if after is None else after(y)

    def _final_activation(self):
        return self._act.name

    @property
    def per_sample(self) -> bool:
        """True with a named activation (a function of your own might mix the samples)."""
        return self._act.name in _activations.NAMES


class Dense(_Activated):
    """Fully connected: ``activation(x @ kernel + bias)`` on ``(batch, features)`` inputs.

    Kernel ``(features, units)``, bias ``(units,)``. ``relu``/``tanh``/``sigmoid`` are fused;
    ``softmax`` and callables run after.
    """

    def __init__(self, units, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        self.units = positive_int(units, "Dense", "units")
        self._set_kernel_args(activation, use_bias, kernel_initializer, bias_initializer)

    def get_config(self):
        return {**super().get_config(), "units": self.units, **self._kernel_config()}

    def _check_input(self, shape):
        if len(shape) != 2:
            self._expect("(batch, features) (rank 2; put a Flatten layer before Dense for images)",
                         shape)
        if self.kernel is not None and shape[1] != self.kernel.shape[0]:
            self._expect(f"(batch, {self.kernel.shape[0]})", shape)

    def build(self, input_shape):
        self._build_kernel((input_shape[-1], self.units), self.units)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.units)

    def call(self, x, training=False):
        return self._after(F.dense(x, self.kernel, self.bias, self._act.fused))

    def _call_logits(self, x, training):
        return F.dense(x, self.kernel, self.bias)

    def _sample_flops(self) -> float:
        return 0.0 if self.kernel is None else 2.0 * self.kernel.size


class Flatten(Layer):
    """``(batch, ...)`` to ``(batch, features)`` in C order (Keras on channels-last data)."""

    per_sample = True

    def __init__(self, data_format=None, **kwargs):
        super().__init__(**kwargs)
        _channels_last(data_format, "Flatten")

    def compute_output_shape(self, input_shape):
        rest = input_shape[1:]
        return (input_shape[0], None if None in rest else math.prod(rest))

    def call(self, x, training=False):
        return F.flatten(x)


class Dropout(Layer):
    """Zeroes a fraction ``rate`` of its inputs in training (scaling the rest by ``1 / (1 - rate)``);
    the identity at inference. Masks follow ``gpucnn.manual_seed``, or the layer's own ``seed``.
    """

    def __init__(self, rate, noise_shape=None, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.rate = _check_rate(rate, "Dropout")
        if noise_shape is not None:
            raise ValueError(f"Dropout: noise_shape is not supported, got {noise_shape!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"Dropout: seed must be an int or None, got {seed!r}")
        self.seed = seed
        self._counter = 0

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}

    def compute_output_shape(self, input_shape):
        return input_shape

    def call(self, x, training=False):
        if not training or self.rate == 0.0:
            return x
        if self.seed is None:
            return F.dropout(x, self.rate, training=True)
        counter = _split.draw(self._next_counter)
        return _DropoutFn.apply(x, rate=self.rate, seed=self.seed & 0xFFFFFFFF, counter=counter)

    per_sample = True             # each part of a split step takes its rows of the batch's mask

    def _draws_keys(self) -> bool:
        return self.rate != 0.0

    def _step_keys(self) -> list:
        if self.rate == 0.0:
            return []
        return [_random.next_dropout_key() if self.seed is None else self._next_counter()]

    def _next_counter(self):
        counter = self._counter
        self._counter = (counter + 1) & 0xFFFFFFFF
        return counter


class Activation(_Activated):
    """Applies an activation: a name (``relu``, ``tanh``, ``sigmoid``, ``softmax``, ...) or a callable."""

    def __init__(self, activation, **kwargs):
        super().__init__(**kwargs)
        self._set_activation(activation)

    def get_config(self):
        return {**super().get_config(), "activation": self._activation_config()}

    def compute_output_shape(self, input_shape):
        return input_shape

    def call(self, x, training=False):
        return self._act.apply(x)

    def _call_logits(self, x, training):
        return x


class Reshape(Layer):
    """Reshape each sample to ``target_shape`` (one entry may be -1)."""

    per_sample = True

    def __init__(self, target_shape, **kwargs):
        super().__init__(**kwargs)
        try:
            t = tuple(int(s) for s in target_shape)
        except TypeError:
            raise TypeError(f"Reshape: target_shape must be a tuple of ints, got {target_shape!r}") from None
        if sum(s == -1 for s in t) > 1 or any(s < 1 and s != -1 for s in t):
            raise ValueError(f"Reshape: target_shape must hold positive ints and at most one -1, "
                             f"got {target_shape!r}")
        self.target_shape = t

    def get_config(self):
        return {**super().get_config(), "target_shape": list(self.target_shape)}

    def _resolve(self, shape):
        n = math.prod(shape[1:])
        t = self.target_shape
        known = math.prod(s for s in t if s != -1)
        if -1 in t:
            if n % known:
                self._expect(f"(batch, ...) with a multiple of {known} values per sample "
                             f"to reshape to {t}", shape)
            return tuple(n // known if s == -1 else s for s in t)
        if n != known:
            self._expect(f"(batch, ...) with {known} values per sample to reshape to {t}", shape)
        return t

    def _check_input(self, shape):
        if None not in shape[1:]:
            self._target = self._resolve(shape)

    def compute_output_shape(self, input_shape):
        if None in input_shape[1:]:
            return None
        return (input_shape[0],) + self._resolve(input_shape)

    def call(self, x, training=False):
        return x.reshape((x.shape[0],) + self._target)


class InputLayer(Layer):
    """Declares the shape of one sample (first in a ``Sequential``); passes data through after
    checking its shape strictly."""

    per_sample = True

    def __init__(self, input_shape=None, batch_size=None, dtype=None, name=None, shape=None, **kw):
        shape = shape if shape is not None else input_shape
        if shape is None:
            raise ValueError("InputLayer: shape is required (the shape of one sample, e.g. (32, 32, 1))")
        super().__init__(name=name, input_shape=shape, dtype=dtype, **kw)
        self.batch_size = batch_size

    def get_config(self):
        return {**super().get_config(), "batch_size": self.batch_size}

    def _check_input(self, shape):
        if not fits(self._declared, shape):
            self._expect(str((None,) + self._declared), shape)

    def compute_output_shape(self, input_shape):
        return input_shape

    def call(self, x, training=False):
        return x


def Input(shape=None, batch_size=None, name=None, dtype=None, batch_shape=None):
    """The input of a model: ``Sequential([layers.Input(shape=(32, 32, 1)), ...])``."""
    if shape is None and batch_shape is not None:
        shape = tuple(batch_shape)[1:]
    if shape is None:
        raise ValueError("Input: shape is required (the shape of one sample, e.g. (32, 32, 1))")
    return InputLayer(shape=shape_tuple(shape, "shape", "Input"), batch_size=batch_size,
                      name=name, dtype=dtype)


__all__ = ["Dense", "Flatten", "Dropout", "Activation", "Reshape", "InputLayer", "Input"]
