"""The layer shapes both benchmarks time, read off the zoo's models (never typed in twice).

``net_table(name)`` builds the zoo network ``name`` and walks its layers: every convolution,
transposed convolution and pooling layer becomes a row with its input shape (one sample) and
geometry, and the softmax output a cross-entropy row. ``python -m gpucnn.bench`` (the CPU and GPU
benchmark) and ``python -m gpucnn.gpucheck`` (the GPU check) both take their shapes from here;
``gpu_layers(tiny)`` gives the GPU check's rows, each with its network and batch.
"""
from __future__ import annotations

from typing import NamedTuple

from gpucnn import layers, zoo
from gpucnn.kernels._geometry import window_2d


class LayerRow(NamedTuple):
    """One timed layer: ``kind`` is "first" (a conv whose input needs no gradient), "conv",
    "transpose", "max", "avg" or "xent"; ``hwc`` the input of one sample; ``k`` the square
    kernel or pool side, ``filters`` the output channels (None for pools), ``stride`` one int;
    ``net`` and ``n`` (the batch) where the GPU check gives them."""

    name: str
    hwc: tuple
    k: int | None
    filters: int | None
    stride: int | None
    padding: str | None
    act: str | None
    kind: str
    net: str = ""
    n: int = 1

    @property
    def x(self):
        """The input ``(N, H, W, C)``."""
        return (self.n,) + self.hwc

    @property
    def w(self):
        """A convolution's kernel ``(KH, KW, C_in, C_out)``."""
        return (self.k, self.k, self.hwc[-1], self.filters)

    def geometry(self):
        """``(output shape, pad)`` of a convolution or pooling row."""
        ho, wo, pad = window_2d(self.hwc[0], self.hwc[1], self.k, self.k, self.stride,
                                self.stride, self.padding)
        return (self.n, ho, wo, self.filters or self.hwc[-1]), pad

    def flops(self):
        (n, ho, wo, co), _ = self.geometry()
        return 2.0 * n * ho * wo * co * self.k * self.k * self.hwc[-1]

    def batch(self, n):
        """The row at a batch of at most ``n``."""
        return self._replace(n=min(self.n, n))


#: name -> (label, batch, builder). AlexNet-small is what trains on the CPU in minutes; AlexNet
#: is the guide's network at 227 x 227 (timed on a GPU).
NETWORKS = {
    "lenet5": ("LeNet-5", 128, lambda: zoo.lenet5()),
    "alexnet_small": ("AlexNet-small", 128,
                      lambda: zoo.alexnet((32, 32, 3), 10, width=0.25, dense_units=256)),
    "autoencoder": ("Autoencoder", 128, lambda: zoo.conv_autoencoder()),
    "alexnet": ("AlexNet", 32, lambda: zoo.alexnet()),
}


def _square(pair, what, layer):
    a, b = (int(v) for v in pair)
    if a != b:
        raise ValueError(f"bench: {layer.name}: the benchmark times square {what}s, got {pair}")
    return a


def _act(layer):
    act = getattr(layer, "activation", None)
    name = act if isinstance(act, str) or act is None else getattr(act, "__name__", str(act))
    return None if name in (None, "linear") else name


def rows(model) -> list[LayerRow]:
    """The timed rows of a built ``Sequential`` model, in order."""
    out, first = [], True
    for layer in model.layers:
        hwc = tuple(int(v) for v in layer.input_shape[1:])
        if isinstance(layer, (layers.Conv2D, layers.Conv2DTranspose)):
            kind = "transpose" if isinstance(layer, layers.Conv2DTranspose) else \
                ("first" if first else "conv")
            out.append(LayerRow(layer.name, hwc, _square(layer.kernel_size, "kernel", layer),
                                int(layer.filters), _square(layer.strides, "stride", layer),
                                layer.padding, _act(layer), kind))
            first = False
        elif isinstance(layer, (layers.MaxPooling2D, layers.AveragePooling2D)):
            kind = "max" if isinstance(layer, layers.MaxPooling2D) else "avg"
            out.append(LayerRow(layer.name, hwc, _square(layer.pool_size, "pool", layer), None,
                                _square(layer.strides, "stride", layer), layer.padding, None,
                                kind))
        elif isinstance(layer, layers.Dense) and _act(layer) == "softmax":
            out.append(LayerRow(layer.name, (int(layer.units),), None, None, None, None, None,
                                "xent"))
    return out


def net_table(name: str, batch: int | None = None):
    """``(label, batch, rows)`` of the zoo network ``name`` (a key of ``NETWORKS``)."""
    if name not in NETWORKS:
        raise ValueError(f"bench: unknown network {name!r}; expected one of {sorted(NETWORKS)}")
    label, default_batch, build = NETWORKS[name]
    return label, batch or default_batch, rows(build())


def gpu_layers(tiny: bool):
    """``(convs, pools)``: the conv and pool rows of LeNet-5 (batch 128) and AlexNet (227 x 227
    x 3, batch 32), read off the zoo's models; tiny stand-ins for the simulator."""
    if tiny:
        return ([LayerRow("C1", (9, 9, 1), 5, 6, 1, "valid", "tanh", "first", "lenet", 2),
                 LayerRow("conv1", (15, 15, 3), 11, 4, 4, "valid", "relu", "first", "alexnet", 1),
                 LayerRow("conv2", (5, 5, 4), 5, 6, 1, "same", "relu", "conv", "alexnet", 1)],
                [LayerRow("S2", (5, 5, 6), 2, None, 2, "valid", None, "avg", "lenet", 2),
                 LayerRow("pool1", (5, 5, 4), 3, None, 2, "valid", None, "max", "alexnet", 1)])
    convs, pools = [], []
    for net, key in (("lenet", "lenet5"), ("alexnet", "alexnet")):
        _, batch, found = net_table(key)
        convs += [r._replace(net=net, n=batch, act=r.act or "linear") for r in found
                  if r.kind in ("first", "conv")]
        pools += [r._replace(net=net, n=batch) for r in found if r.kind in ("max", "avg")]
    return convs, pools
