"""The ``Layer`` base class: weights built on first call from the input shape, Keras names,
input checks that name the layer and show the expected against the received shape.

A layer's ``__call__`` compares the non-batch shape of its input with the one it saw last (one tuple
comparison per call); only when it changes does it check the input (and build the weights on the
first call). Errors raised inside a layer are re-raised with the layer's name and type in front.
"""
from __future__ import annotations

import functools
import re

import numpy as np

from gpucnn import backend, initializers
from gpucnn.autograd import Tensor, no_grad
from gpucnn.layers.registry import charge

_SNAKE_1 = re.compile(r"(.)([A-Z][a-z]+)")
_SNAKE_2 = re.compile(r"([a-z])([A-Z])")


def snake_case(name: str) -> str:
    """``Conv2D`` -> ``conv2d``, ``MaxPooling2D`` -> ``max_pooling2d`` (Keras default names)."""
    return _SNAKE_2.sub(r"\1_\2", _SNAKE_1.sub(r"\1_\2", name)).lower()


def unique_name(base: str, taken) -> str:
    """``base``, else ``base_1``, ``base_2``, ... whichever is not in ``taken``."""
    if base not in taken:
        return base
    i = 1
    while f"{base}_{i}" in taken:
        i += 1
    return f"{base}_{i}"


def shape_tuple(shape, what: str, owner: str) -> tuple:
    """A tuple of positive ints (None allowed) from an int or a sequence."""
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
        shape = (int(shape),)
    try:
        out = tuple(None if s is None else int(s) for s in shape)
    except (TypeError, ValueError):
        raise TypeError(f"{owner}: {what} must be a tuple of ints, got {shape!r}") from None
    if any(s is not None and s < 1 for s in out) or any(
            s is not None and isinstance(s, bool) for s in shape):
        raise ValueError(f"{owner}: {what} must hold positive ints, got {shape!r}")
    return out


def once(layers) -> list:
    """Each of ``layers`` once, in order of first appearance (a layer may be used twice)."""
    return list({id(layer): layer for layer in layers}.values())


def fmt_shape(shape) -> str:
    inner = ", ".join("None" if s is None else str(s) for s in shape)
    return f"({inner},)" if len(shape) == 1 else f"({inner})"


def with_layer(layer, e: Exception) -> Exception:
    """``e`` re-made with ``layer '<name>' (<Type>):`` in front (once: the innermost layer wins)."""
    if getattr(e, "_gpucnn_layer", False) or type(e) not in (ValueError, TypeError):
        return e
    word = "model" if getattr(layer, "_is_model", False) else "layer"
    new = type(e)(f"{word} '{layer.name}' ({type(layer).__name__}): {e}")
    new._gpucnn_layer = True
    return new.with_traceback(e.__traceback__)


class Layer:
    """Base class of every layer and model.

    Subclasses define ``build(input_shape)`` (create weights with ``add_weight``; the shape has
    ``None`` for the batch), ``call(x, training=False)`` on Tensors and, for ``summary()`` before any
    data, ``compute_output_shape(input_shape)``. ``_check_input(shape)`` may refuse an input shape.

    Common arguments (Keras): ``name``, ``input_shape`` (the shape of one sample; used by
    ``Sequential`` to build the model at construction), ``trainable``, ``dtype`` (float32).
    """

    _wrap_build = True
    #: Whether each sample's output depends on that sample alone, in training too (random masks
    #: drawn through ``gpucnn.functional._split``): ``fit`` may then compute a training step as
    #: parts of the batch on several processes (``gpucnn.parallel``). A subclass whose ``call``
    #: mixes the samples of a batch sets it to False.
    per_sample = False

    def __init__(self, name=None, input_shape=None, trainable=True, dtype=None,
                 batch_input_shape=None, input_dim=None):
        owner = type(self).__name__
        if name is not None and (not isinstance(name, str) or not name or "/" in name):
            raise ValueError(f"{owner}: name must be a non-empty string without '/', got {name!r}")
        object.__setattr__(self, "_children", {})
        self._auto_name = name is None
        self.name = name if name is not None else snake_case(owner)
        self._trainable = bool(trainable)
        self.dtype = np.dtype(dtype if dtype is not None else "float32")
        if self.dtype.kind != "f":
            raise TypeError(f"{owner}: dtype must be a floating type, got {self.dtype}")
        self.built = False
        self._weights = []  # [short_name, Tensor, trainable]
        self._in_shape = None  # non-batch input shape last accepted
        self._out_shape = None  # output shape with None for the batch
        if input_dim is not None:
            input_shape = (input_dim,)
        if batch_input_shape is not None:
            input_shape = tuple(batch_input_shape)[1:]
        self._declared = None if input_shape is None else shape_tuple(input_shape, "input_shape", owner)

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        b = cls.__dict__.get("build")
        if b is not None and cls._wrap_build and not getattr(b, "_gpucnn_wrapped", False):
            @functools.wraps(b)
            def build(self, input_shape, _b=b):
                if self.built:
                    return
                _b(self, input_shape)
                self.built = True

            build._gpucnn_wrapped = True
            cls.build = build

    # -- sublayers -------------------------------------------------------------------------
    def __setattr__(self, name, value):
        children = self.__dict__.get("_children")
        tracked = isinstance(value, Layer) or (
            isinstance(value, (list, tuple)) and value and all(isinstance(v, Layer) for v in value))
        if tracked:
            if children is None:
                raise RuntimeError(f"{type(self).__name__}: call super().__init__() before assigning "
                                   f"layers to attributes (assigning {name!r})")
            children.pop(name, None)
            for v in (value if isinstance(value, (list, tuple)) else (value,)):
                self._adopt(v)
            children[name] = value
        elif children and name in children:
            del children[name]
        object.__setattr__(self, name, value)

    def _adopt(self, layer: "Layer") -> None:
        """Give ``layer`` a name unique among this layer's children (auto names get a suffix)."""
        if layer is self:
            raise ValueError(f"{type(self).__name__}: a layer cannot contain itself")
        others = {c.name for c in self._sublayers() if c is not layer}
        if layer.name in others:
            if not layer._auto_name:
                raise ValueError(f"{type(self).__name__} '{self.name}': all layer names should be "
                                 f"unique; '{layer.name}' is used twice")
            layer._rename(unique_name(snake_case(type(layer).__name__), others))

    def _rename(self, name: str) -> None:
        self.name = name
        for short, t, _ in self._weights:
            t.name = f"{name}/{short}"

    def _sublayers(self) -> list:
        return once(la for v in self._children.values()
                    for la in (v if isinstance(v, (list, tuple)) else (v,)))

    # -- weights ----------------------------------------------------------------------------
    def add_weight(self, shape=None, initializer="glorot_uniform", dtype=None, trainable=True,
                   name=None):
        """Create a weight Tensor, initialised on the host and moved to the active backend.

        Keras 3 argument order; a string first argument is taken as the name (Keras 2 order).
        """
        if isinstance(shape, str):
            shape, name = name, shape
        if shape is None:
            raise ValueError(f"{type(self).__name__}.add_weight: shape is required")
        shape = tuple(int(s) for s in (shape if isinstance(shape, (tuple, list)) else (shape,)))
        if name is None:
            name = f"weight_{len(self._weights)}"
        if any(short == name for short, _, _ in self._weights):
            raise ValueError(f"layer '{self.name}': a weight named {name!r} already exists")
        dtype = np.dtype(dtype) if dtype is not None else self.dtype
        charge(self.name, name, shape, dtype)          # a model file's budget, when loading one
        init = initializers.get(initializer if initializer is not None else "glorot_uniform")
        value = np.asarray(init(shape, dtype), dtype=dtype)
        if value.shape != shape:
            raise ValueError(f"layer '{self.name}': initializer for {name!r} returned shape "
                             f"{value.shape}, expected {shape}")
        t = Tensor(value, requires_grad=bool(trainable) and self._trainable, dtype=dtype)
        t.name = f"{self.name}/{name}"
        self._weights.append([name, t, bool(trainable)])
        return t

    @property
    def trainable(self) -> bool:
        """Whether ``fit`` updates the layer's weights (setting it also sets every sublayer's)."""
        return self._trainable

    @trainable.setter
    def trainable(self, value: bool) -> None:
        self._trainable = bool(value)
        for _, t, flag in self._weights:
            t.requires_grad = flag and self._trainable
        for c in self._sublayers():
            c.trainable = value

    def _named_weights(self, prefix: str = "", seen=None) -> list:
        """``[(path, Tensor, trainable)]``: own weights as ``<prefix><name>/<short>``, then the
        sublayers' under ``<prefix><name>/``. A weight reached twice (a layer used twice, as
        Keras allows) is listed once, under its first path: it is counted, saved and updated
        once, with the gradient summed over its uses (``seen`` holds the ids already listed)."""
        seen = set() if seen is None else seen
        out = []
        for short, t, flag in self._weights:
            if id(t) not in seen:
                seen.add(id(t))
                out.append((f"{prefix}{self.name}/{short}", t, flag and self._trainable))
        for c in self._sublayers():
            out.extend(c._named_weights(f"{prefix}{self.name}/", seen))
        return out

    @property
    def weights(self) -> list:
        """Every weight Tensor: the layer's own, then its sublayers'."""
        return [t for _, t, _ in self._named_weights()]

    @property
    def trainable_weights(self) -> list:
        """The weights that ``fit`` updates."""
        return [t for _, t, f in self._named_weights() if f]

    @property
    def non_trainable_weights(self) -> list:
        """The weights that ``fit`` leaves alone (those of frozen layers)."""
        return [t for _, t, f in self._named_weights() if not f]

    def get_weights(self) -> list:
        """Host copies of every weight, in ``weights`` order."""
        ks = backend.kernels()
        return [np.array(ks.to_host(t.data), copy=True) for t in self.weights]

    def set_weights(self, weights) -> None:
        """Set every weight from host arrays (as ``get_weights`` returns); all are checked first."""
        own = self.weights
        weights = list(weights)
        if len(weights) != len(own):
            raise ValueError(f"set_weights: '{self.name}' has {len(own)} weights, got "
                             f"{len(weights)} arrays")
        arrays = [np.asarray(w) for w in weights]
        bad = [f"weight {i} ({t.name}): model {t.shape}, given {a.shape}"
               for i, (t, a) in enumerate(zip(own, arrays)) if tuple(a.shape) != t.shape]
        if bad:
            raise ValueError("set_weights: shapes do not match; nothing was set:\n  " + "\n  ".join(bad))
        for t, a in zip(own, arrays):
            assign(t, a.astype(t.dtype, copy=False))

    def count_params(self) -> int:
        """The number of scalars in the layer's weights (an error before the layer is built)."""
        if not self.built:
            raise ValueError(f"layer '{self.name}' ({type(self).__name__}) is not built yet, so it has "
                             "no weights to count; call it on data or build it with an input shape")
        return int(sum(t.size for t in self.weights))

    # -- shapes -----------------------------------------------------------------------------
    @property
    def input_shape(self):
        """The input shape with the batch axis as None, or None before the layer is built."""
        return None if self._in_shape is None else (None,) + self._in_shape

    @property
    def output_shape(self):
        """The output shape with the batch axis as None, or None while it is unknown."""
        return self._out_shape

    def build(self, input_shape) -> None:
        """Create the weights for inputs of ``input_shape`` (batch axis ``None``)."""

    def compute_output_shape(self, input_shape):
        """The output shape for ``input_shape`` (batch axis ``None``); None when unknown."""
        return None

    def _check_input(self, shape) -> None:
        """Raise ValueError when inputs of ``shape`` cannot go through this layer."""

    def _expect(self, expected: str, shape) -> None:
        raise ValueError(f"expected input shape {expected}, received {fmt_shape(shape)}")

    def _build_from(self, input_shape) -> None:
        self.build(input_shape)
        self.built = True

    def _accept(self, shape) -> None:
        """Check a new input shape (building on the first one) and remember it."""
        s = (None,) + tuple(shape[1:])
        self._check_input(shape)
        if not self.built:
            self._build_from(s)
        self._in_shape = tuple(shape[1:])

    def _shape_pass(self, shape):
        """Accept ``shape`` without data and return the output shape (None when unknown); the
        batch entry of ``shape`` is carried through, the stored ``output_shape`` has None."""
        shape = tuple(shape)
        if shape[1:] != self._in_shape or self._out_shape is None:
            try:
                self._accept(shape)
                out = self.compute_output_shape((None,) + shape[1:])
                if out is None and type(self).compute_output_shape is Layer.compute_output_shape:
                    out = self._shape_by_calling(shape)
            except (ValueError, TypeError) as e:
                raise with_layer(self, e) from None
            self._out_shape = None if out is None else (None,) + tuple(out[1:])
        out = self._out_shape
        return None if out is None else (shape[0],) + out[1:]

    def _shape_by_calling(self, shape):
        """Keras's way for a layer that defines only ``call``: call it on a batch of zeros."""
        try:
            with no_grad():
                y = self.call(Tensor(backend.xp().zeros((1,) + tuple(shape[1:]), self.dtype)))
        except Exception as e:
            raise ValueError(f"cannot infer the output shape for input {fmt_shape(shape)} by "
                             f"calling the layer on zeros ({type(e).__name__}: {e}); define "
                             f"compute_output_shape(self, input_shape) in {type(self).__name__}")
        return (None,) + tuple(y.shape[1:])

    # -- calling ------------------------------------------------------------------------------
    def _as_input(self, x) -> Tensor:
        if isinstance(x, (list, tuple)):
            from gpucnn.data import as_array

            word = "model" if getattr(self, "_is_model", False) else "layer"
            x = as_array(x, "x", f"{word} '{self.name}' ({type(self).__name__})", self.dtype)
        dt = getattr(x, "dtype", None)
        if dt is None or np.dtype(dt).kind not in "biuf":
            raise TypeError(f"layer '{self.name}' ({type(self).__name__}): expected a Tensor or a "
                            f"numeric array, got {type(x).__name__}"
                            + (f" of dtype {dt}" if dt is not None else ""))
        return Tensor(x, dtype=self.dtype)

    def __call__(self, x, training=False):
        return self._invoke(x, training, False)

    def _invoke(self, x, training, logits):
        if not isinstance(x, Tensor):
            x = self._as_input(x)
        shape = x.data.shape
        new = shape[1:] != self._in_shape
        try:
            if new:
                if len(shape) == 0:
                    raise ValueError("expected an input with a batch axis, received a scalar")
                self._accept(shape)
            out = self._call_logits(x, training) if logits else self.call(x, training)
        except (ValueError, TypeError) as e:
            raise with_layer(self, e) from None
        if new:
            self._out_shape = (None,) + tuple(out.shape[1:])
        return out

    def call(self, x, training=False):  # pragma: no cover - abstract
        """The layer's computation on a Tensor ``x``; ``training`` is True inside ``fit``."""
        raise NotImplementedError(f"{type(self).__name__} must define call(self, x, training=False)")

    # -- the fused loss path: the output before a final softmax/sigmoid ------------------------
    def _final_activation(self):
        """The name of the activation this layer ends with (``softmax``, ``sigmoid``, ...) or None."""
        return None

    def _call_logits(self, x, training):
        return self.call(x, training)

    # -- what a training step split into parts needs (``gpucnn.parallel``) ----------------------
    def _sample_flops(self) -> float:
        """Forward FLOPs of one sample through the layer (0 for a layer without products)."""
        return 0.0

    def _step_keys(self) -> list:
        """The random keys one training call of this layer draws, drawn now, in the order the
        call would draw them; a split step draws them before its parts run."""
        return []

    def _draws_keys(self) -> bool:
        """Whether a training call of this layer draws random keys (``_step_keys`` not empty),
        without drawing them."""
        return False

    # -- configuration (Keras): what whole-model saving writes as JSON ---------------------------
    def get_config(self) -> dict:
        """The constructor arguments that rebuild this layer, JSON-ready: ``name``,
        ``trainable``, ``dtype``, ``input_shape`` when one was declared, and each layer's own.
        ``type(layer).from_config(layer.get_config())`` has the same settings (fresh weights).
        A setting that cannot be written (a custom activation function or initializer) is a
        ValueError naming the layer."""
        config = {"name": self.name, "trainable": self.trainable, "dtype": self.dtype.name}
        if self._declared is not None:
            config["input_shape"] = list(self._declared)
        return config

    @classmethod
    def from_config(cls, config):
        """The layer ``get_config`` describes; initializers written as
        ``{"class_name": ..., "config": ...}`` are rebuilt from ``gpucnn.initializers``."""
        config = dict(config)
        for key, value in config.items():
            if key.endswith("_initializer") and isinstance(value, dict):
                found = getattr(initializers, str(value.get("class_name")), None)
                if not (isinstance(found, type) and issubclass(found, initializers.Initializer)):
                    raise ValueError(f"{cls.__name__}.from_config: unknown initializer "
                                     f"{value.get('class_name')!r} for {key}; expected a class of "
                                     "gpucnn.initializers")
                config[key] = found.from_config(value.get("config") or {})
        return cls(**config)

    def __repr__(self):
        return f"<{type(self).__name__} name={self.name!r} built={self.built}>"


def assign(t: Tensor, host_array) -> None:
    """Copy ``host_array`` into the weight ``t`` (in place when it lives on the active backend, so
    optimizer state and references stay valid; replaced when it lives on another one)."""
    new = backend.kernels().asarray(host_array)
    if type(new) is type(t.data) and new.shape == t.data.shape:
        t.data[...] = new
    else:
        t.data = new.copy()
    t.grad = None
