"""``Sequential``: a stack of layers, each feeding the next (the guide's LeNet-5).

>>> from gpucnn import layers, models
>>> model = models.Sequential([
...     layers.Conv2D(6, (5, 5), activation="tanh", input_shape=(32, 32, 1), name="C1"),
...     layers.AveragePooling2D((2, 2), name="S2"),
...     layers.Flatten(),
...     layers.Dense(10, activation="softmax"),
... ], name="tiny")
>>> model.output_shape, model.count_params()
((None, 10), 11926)
"""
from __future__ import annotations

from gpucnn.layers.base import Layer, fmt_shape, once
from gpucnn.layers.core import InputLayer, fits
from gpucnn.layers.registry import deserialize_layer, register_model
from gpucnn.models.model import Model


@register_model
class Sequential(Model):
    """``Sequential(layers=None, name=None)``: layers applied in order.

    When the first layer has an ``input_shape`` (or the list starts with ``layers.Input(shape)``),
    the model is built at once (``summary()`` works before any data) and inputs of any other shape
    are refused, naming the first layer; otherwise it is built on its first call.
    """

    def __init__(self, layers=None, name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        self._layers = []
        self._prop_out = None
        if layers is not None:
            if isinstance(layers, Layer):
                layers = [layers]
            for layer in layers:
                self.add(layer)

    @property
    def layers(self) -> list:
        return list(self._layers)

    def _sublayers(self) -> list:
        """Each layer once, in order of first use (``layers`` lists a layer used twice twice)."""
        return once(self._layers)

    def add(self, layer) -> None:
        """Append a layer (an instance such as ``layers.Dense(10)``)."""
        if isinstance(layer, type):
            raise TypeError(f"Sequential.add: expected a layer instance such as {layer.__name__}(...), "
                            f"got the class {layer.__name__}")
        if not isinstance(layer, Layer):
            raise TypeError(f"Sequential.add: expected a Layer, got {type(layer).__name__}")
        if isinstance(layer, InputLayer):
            if self._layers or self._declared is not None:
                raise ValueError("Sequential.add: an Input must come first, and only once")
            self._declared = layer._declared
            self._input_layer = layer
            return
        self._adopt(layer)
        self._layers.append(layer)
        if len(self._layers) == 1 and self._declared is None and layer._declared is not None:
            self._declared = layer._declared
        self._rebuild()

    def pop(self) -> Layer:
        """Remove and return the last layer."""
        if not self._layers:
            raise IndexError("Sequential.pop: the model has no layers")
        layer = self._layers.pop()
        self._rebuild()
        return layer

    def _rebuild(self) -> None:
        self.built = False
        self._in_shape = None
        self._out_shape = None
        if self._declared is not None and self._layers:
            self._shape_pass((None,) + self._declared)

    # -- shapes -----------------------------------------------------------------------------------
    _shape_pass = Layer._shape_pass

    def build(self, input_shape=None):
        """Build every layer for inputs of ``input_shape``, batch axis included: ``(None, 32, 32, 1)``."""
        if input_shape is None:
            if self._declared is None:
                raise ValueError(f"model '{self.name}': build() needs an input_shape")
            input_shape = (None,) + self._declared
        self._shape_pass(tuple(input_shape))

    def _check_input(self, shape):
        if not self._layers:
            raise ValueError("the model has no layers; add some with model.add(layer)")
        if self._declared is not None and not fits(self._declared, shape):
            first = self._layers[0]
            raise ValueError(f"expected input shape {fmt_shape((None,) + self._declared)} (the input "
                             f"shape of its first layer '{first.name}' ({type(first).__name__})), "
                             f"received {fmt_shape(shape)}")
        if self.built:
            self._propagate(shape)

    def _build_from(self, input_shape):
        self._propagate(input_shape)
        self.built = True

    def _propagate(self, shape):
        s = tuple(shape)
        for layer in self._layers:
            s = layer._shape_pass(s)
            if s is None:  # a layer that cannot tell its output shape: the rest builds on first call
                break
        self._prop_out = s

    def compute_output_shape(self, input_shape):
        return self._prop_out

    # -- calling ----------------------------------------------------------------------------------
    def call(self, x, training=False):
        for layer in self._layers:
            x = layer._invoke(x, training, False)
        return x

    def _call_logits(self, x, training):
        for layer in self._layers[:-1]:
            x = layer._invoke(x, training, False)
        return self._layers[-1]._invoke(x, training, True)

    def _final_activation(self):
        return self._layers[-1]._final_activation() if self._layers else None

    # -- a training step split into parts (``gpucnn.parallel``) ------------------------------------
    @property
    def per_sample(self) -> bool:
        """True when the model is the plain chain of its layers (``call`` not overridden) and
        every layer is ``per_sample``."""
        cls = type(self)
        return (cls.call is Sequential.call and cls._call_logits is Sequential._call_logits
                and bool(self._layers) and all(layer.per_sample for layer in self._layers))

    def _sample_flops(self) -> float:
        return sum(layer._sample_flops() for layer in self._layers)

    def _step_keys(self) -> list:
        return [key for layer in self._layers for key in layer._step_keys()]

    def _draws_keys(self) -> bool:
        return any(layer._draws_keys() for layer in self._layers)

    # -- configuration (whole-model saving) ---------------------------------------------------------
    def get_config(self) -> dict:
        """``name``, ``trainable``, ``dtype`` and ``layers``: each layer as
        ``{"class_name": ..., "config": ...}`` (an ``Input`` first when the model has one)."""
        config = super().get_config()
        config.pop("input_shape", None)          # the first layer (or the Input) declares it
        first = [self._input_layer] if getattr(self, "_input_layer", None) is not None else []
        config["layers"] = [{"class_name": type(layer).__name__, "config": layer.get_config()}
                            for layer in first + self._layers]
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        """The model ``get_config`` describes (fresh weights); ``custom_objects`` maps the class
        names of your own layers to their classes."""
        config = dict(config)
        layers = [deserialize_layer(d, custom_objects) for d in config.pop("layers", [])]
        return cls(layers=layers, **config)
