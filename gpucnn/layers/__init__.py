"""Keras-style layers on gpucnn's autograd (``from gpucnn import layers``).

Images are channels-last ``(batch, height, width, channels)``. Every layer builds its weights on
the first call from the input shape, or when a ``Sequential`` model is given an ``input_shape``.
"""
from gpucnn.layers.base import Layer
from gpucnn.layers.conv import Conv2D, Conv2DTranspose
from gpucnn.layers.core import Activation, Dense, Dropout, Flatten, Input, InputLayer, Reshape
from gpucnn.layers.pool import AveragePooling2D, AvgPool2D, MaxPool2D, MaxPooling2D
from gpucnn.layers.registry import register_layer

register_layer(Conv2D, Conv2DTranspose, MaxPooling2D, AveragePooling2D, Dense, Flatten, Dropout,
               Activation, Reshape, InputLayer)

__all__ = [
    "Layer", "Conv2D", "Conv2DTranspose", "MaxPooling2D", "AveragePooling2D", "MaxPool2D",
    "AvgPool2D", "Dense", "Flatten", "Dropout", "Activation", "Reshape", "Input", "InputLayer",
]
