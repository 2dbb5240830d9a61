"""``Conv2D`` and ``Conv2DTranspose`` (Keras arguments, channels-last ``(N, H, W, C)`` images).

>>> import numpy as np, gpucnn
>>> from gpucnn import layers
>>> gpucnn.manual_seed(0)
>>> C1 = layers.Conv2D(filters=6, kernel_size=(5, 5), activation="tanh", name="C1")
>>> C1(np.zeros((2, 32, 32, 1), np.float32)).shape, C1.kernel.shape
((2, 28, 28, 6), (5, 5, 1, 6))
"""
from __future__ import annotations

import math

import gpucnn.functional as F
from gpucnn.functional import _check
from gpucnn.kernels._geometry import check_padding, pair, transpose_out_1d, window_2d
from gpucnn.layers.core import _Activated, _channels_last


class _Conv(_Activated):
    def __init__(self, filters, kernel_size, strides, padding, data_format, dilation_rate,
                 activation, use_bias, kernel_initializer, bias_initializer, **kwargs):
        super().__init__(**kwargs)
        owner = type(self).__name__
        self.filters = _check.positive_int(filters, owner, "filters")
        self.kernel_size = pair(kernel_size, "kernel_size", owner)
        self.strides = pair(strides, "strides", owner)
        self.padding = check_padding(padding, owner)
        _channels_last(data_format, owner)
        if pair(dilation_rate, "dilation_rate", owner) != (1, 1):
            raise ValueError(f"{owner}: dilation_rate other than 1 is not supported, got "
                             f"{dilation_rate!r}")
        self._set_kernel_args(activation, use_bias, kernel_initializer, bias_initializer)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters,
                "kernel_size": list(self.kernel_size), "strides": list(self.strides),
                "padding": self.padding, **self._kernel_config()}

    def _check_input(self, shape):
        if len(shape) != 4:
            self._expect("(batch, height, width, channels) (rank 4, channels last)", shape)
        c_in = None if self.kernel is None else self.kernel.shape[self._c_axis]
        if c_in is not None and shape[3] != c_in:
            self._expect(f"(batch, height, width, {c_in}): {c_in} channels", shape)

    def build(self, input_shape):
        """Kernel ``(KH, KW, C_in, filters)``, or ``(KH, KW, filters, C_in)`` transposed."""
        shape = [*self.kernel_size, self.filters]
        shape.insert(self._c_axis, input_shape[-1])
        self._build_kernel(tuple(shape), self.filters)

    def _sample_flops(self) -> float:
        if self.kernel is None:
            return 0.0
        return 2.0 * math.prod(self._sites() or (1,)) * self.kernel.size


class Conv2D(_Conv):
    """2-D convolution: ``filters`` kernels of ``kernel_size`` over channels-last images.

    Kernel ``(KH, KW, C_in, filters)``, bias ``(filters,)``. ``relu``/``tanh``/``sigmoid`` run
    fused in the convolution kernel; ``softmax`` and callables run after it.
    """

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid", data_format=None,
                 dilation_rate=(1, 1), activation=None, use_bias=True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros", **kwargs):
        super().__init__(filters, kernel_size, strides, padding, data_format, dilation_rate,
                         activation, use_bias, kernel_initializer, bias_initializer, **kwargs)

    _c_axis = 2                   # the kernel's input-channel axis

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 4 or None in input_shape[1:3]:
            return None
        ho, wo, _ = window_2d(input_shape[1], input_shape[2], *self.kernel_size, *self.strides,
                              self.padding, "Conv2D")
        return (input_shape[0], ho, wo, self.filters)

    def call(self, x, training=False):
        return self._after(F.conv2d(x, self.kernel, self.bias, self.strides, self.padding,
                                    self._act.fused))

    def _call_logits(self, x, training):
        return F.conv2d(x, self.kernel, self.bias, self.strides, self.padding)

    def _sites(self):
        """The output positions, each a product with the whole kernel (None: unknown)."""
        return None if self.output_shape is None else self.output_shape[1:3]


class Conv2DTranspose(_Conv):
    """Transposed convolution (the decoder's upsampling), Keras ``Conv2DTranspose``.

    Kernel ``(KH, KW, filters, C_in)`` (Keras layout). Output ``H * stride`` for ``same``,
    ``(H - 1) * stride + max(KH, stride)`` for ``valid``.
    """

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid", output_padding=None,
                 data_format=None, dilation_rate=(1, 1), activation=None, use_bias=True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros", **kwargs):
        super().__init__(filters, kernel_size, strides, padding, data_format, dilation_rate,
                         activation, use_bias, kernel_initializer, bias_initializer, **kwargs)
        if output_padding is not None:
            raise ValueError(f"Conv2DTranspose: output_padding is not supported, got {output_padding!r}")

    _c_axis = 3

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 4 or None in input_shape[1:3]:
            return None
        (kh, kw), (sh, sw) = self.kernel_size, self.strides
        return (input_shape[0], transpose_out_1d(input_shape[1], kh, sh, self.padding),
                transpose_out_1d(input_shape[2], kw, sw, self.padding), self.filters)

    def call(self, x, training=False):
        return self._act.apply(self._call_logits(x, training))

    def _call_logits(self, x, training):
        return F.conv2d_transpose(x, self.kernel, self.bias, self.strides, self.padding)

    def _sites(self):
        """The input positions, each a product with the whole kernel (None: unknown)."""
        return None if self.input_shape is None else self.input_shape[1:3]


__all__ = ["Conv2D", "Conv2DTranspose"]
