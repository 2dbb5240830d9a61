"""``MaxPooling2D`` and ``AveragePooling2D`` (Keras arguments; ``strides=None`` means ``pool_size``).

With ``padding="same"`` padded cells never win a max and are not counted in a mean (Keras).
"""
from __future__ import annotations

import gpucnn.functional as F
from gpucnn.kernels._geometry import check_padding, pair, window_2d
from gpucnn.layers.base import Layer
from gpucnn.layers.core import _channels_last


class _Pool(Layer):
    _op = None
    per_sample = True

    def __init__(self, pool_size=(2, 2), strides=None, padding="valid", data_format=None, **kwargs):
        super().__init__(**kwargs)
        owner = type(self).__name__
        self.pool_size = pair(pool_size, "pool_size", owner)
        self.strides = self.pool_size if strides is None else pair(strides, "strides", owner)
        self.padding = check_padding(padding, owner)
        _channels_last(data_format, owner)

    def get_config(self):
        return {**super().get_config(), "pool_size": list(self.pool_size),
                "strides": list(self.strides), "padding": self.padding}

    def _check_input(self, shape):
        if len(shape) != 4:
            self._expect("(batch, height, width, channels) (rank 4, channels last)", shape)

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 4 or None in input_shape[1:3]:
            return None
        ho, wo, _ = window_2d(input_shape[1], input_shape[2], *self.pool_size, *self.strides,
                              self.padding, type(self).__name__)
        return (input_shape[0], ho, wo, input_shape[3])

    def call(self, x, training=False):
        return type(self)._op(x, self.pool_size, self.strides, self.padding)


class MaxPooling2D(_Pool):
    """The largest value of each ``pool_size`` window (the guide's Figure 10)."""

    _op = staticmethod(F.max_pool2d)


class AveragePooling2D(_Pool):
    """The mean of each ``pool_size`` window (LeNet-5's S2 and S4)."""

    _op = staticmethod(F.avg_pool2d)


MaxPool2D = MaxPooling2D
AvgPool2D = AveragePooling2D

__all__ = ["MaxPooling2D", "AveragePooling2D", "MaxPool2D", "AvgPool2D"]
