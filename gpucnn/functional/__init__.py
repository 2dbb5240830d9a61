"""Differentiable ops of the guide, on ``Tensor``s, running on the active kernel set.

Import as ``import gpucnn.functional as F``. Images are channels-last ``(N, H, W, C)``; conv
kernels ``(KH, KW, C_in, C_out)``; transposed-conv kernels ``(KH, KW, C_out, C_in)``; dense
kernels ``(in, out)``. Arrays given where a Tensor is expected become constants.
"""
from gpucnn.functional.activation import log_softmax, relu, sigmoid, softmax, tanh
from gpucnn.functional.conv import conv2d, conv2d_transpose
from gpucnn.functional.dense import dense, dropout, flatten
from gpucnn.functional.loss import (binary_crossentropy, categorical_crossentropy, mse,
                                    sparse_categorical_crossentropy)
from gpucnn.functional.pool import avg_pool2d, max_pool2d

__all__ = [
    "conv2d", "conv2d_transpose", "max_pool2d", "avg_pool2d",
    "relu", "tanh", "sigmoid", "softmax", "log_softmax",
    "dense", "flatten", "dropout",
    "mse", "binary_crossentropy", "categorical_crossentropy", "sparse_categorical_crossentropy",
]
