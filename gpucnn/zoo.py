"""The networks of the guide, each built with one call.

Every function returns an uncompiled Keras-style model (as Keras' own applications do); compile it
with the optimizer and loss of your choice, as section 7 of the guide does:

>>> from gpucnn import zoo, optimizers                                   # doctest: +SKIP
>>> model = zoo.lenet5()                                                 # doctest: +SKIP
>>> model.compile(optimizer=optimizers.SGD(learning_rate=0.01),          # doctest: +SKIP
...               loss="sparse_categorical_crossentropy", metrics=["accuracy"])
"""
from __future__ import annotations

import math

import numpy as np

import gpucnn.layers as layers
import gpucnn.models as models
from gpucnn.autograd import Tensor, no_grad
from gpucnn.functional import _check

__all__ = ["perceptron", "basic_cnn", "lenet5", "alexnet", "conv_autoencoder", "feature_maps"]

# The input side below which alexnet() switches to its small-input stem: with the ImageNet stem
# (11 x 11 conv, stride 4, valid) the three 3 x 3 / 2 pools need a 15 x 15 map after the first
# conv, that is an input of at least 11 + 14 * 4 = 67 pixels.
ALEXNET_MIN_IMAGENET_SIDE = 67


_positive_int = _check.positive_int


def _shape(input_shape, op):
    """``input_shape`` as 3 positive ints ``(height, width, channels)``, or a ValueError."""
    try:
        shape = tuple(input_shape)
    except TypeError:
        shape = None
    if shape is None or len(shape) != 3 or not all(_check.is_int(d) and d > 0 for d in shape):
        raise ValueError(f"{op}: input_shape must be 3 positive ints (height, width, channels), "
                         f"got {input_shape!r}")
    return tuple(int(d) for d in shape)


def perceptron(n_features):
    """Rosenblatt's perceptron as in section 1: ``y = sigmoid(sum_i x_i w_i + b)``.

    One ``Dense(1, activation="sigmoid")`` neuron on ``n_features`` inputs (``n_features + 1``
    parameters); train it with ``binary_crossentropy`` on 0/1 labels.
    """
    n = _positive_int(n_features, "perceptron", "n_features")
    return models.Sequential([
        layers.Input(shape=(n,)),
        layers.Dense(units=1, activation="sigmoid", name="neuron"),
    ], name="perceptron")


def basic_cnn(input_shape=(32, 32, 1), classes=10, filters=8, kernel_size=3, units=32):
    """The basic CNN of section 3: one feature-learning block and a classifier.

    ``Conv2D(filters, kernel_size, relu)`` -> ``MaxPooling2D(2)`` -> ``Flatten`` ->
    ``Dense(units, relu)`` -> ``Dense(classes, softmax)``; layer names ``conv``, ``pool``,
    ``flatten``, ``dense``, ``output``.
    """
    op = "basic_cnn"
    h, w, c = _shape(input_shape, op)
    classes = _positive_int(classes, op, "classes", 2)
    filters = _positive_int(filters, op, "filters")
    kernel_size = _positive_int(kernel_size, op, "kernel_size")
    units = _positive_int(units, op, "units")
    if min(h, w) < kernel_size + 1:
        raise ValueError(f"{op}: input_shape {input_shape!r} is too small for a {kernel_size} x "
                         f"{kernel_size} conv and a 2 x 2 pool; expected at least "
                         f"{kernel_size + 1} x {kernel_size + 1}")
    return models.Sequential([
        layers.Input(shape=(h, w, c)),
        layers.Conv2D(filters, (kernel_size, kernel_size), activation="relu", name="conv"),
        layers.MaxPooling2D(pool_size=(2, 2), strides=(2, 2), name="pool"),
        layers.Flatten(name="flatten"),
        layers.Dense(units, activation="relu", name="dense"),
        layers.Dense(classes, activation="softmax", name="output"),
    ], name="basic_cnn")


def lenet5(input_shape=(32, 32, 1), classes=10):
    """The guide's modified LeNet-5 (section 7), layer for layer.

    ======  ==============================================  ================  ======
    name    layer                                           output            params
    ======  ==============================================  ================  ======
    C1      Conv2D 6 filters 5 x 5, stride 1, valid, tanh   28 x 28 x 6          156
    S2      AveragePooling2D 2 x 2, stride 2                14 x 14 x 6            0
    C3      Conv2D 16 filters 5 x 5, stride 1, valid, tanh  10 x 10 x 16       2,416
    S4      AveragePooling2D 2 x 2, stride 2                5 x 5 x 16             0
    C5      Conv2D 120 filters 5 x 5, stride 1, valid, tanh 1 x 1 x 120       48,120
    Flatten                                                 120                    0
    F6      Dense 84, tanh                                  84                10,164
    Output  Dense 10, softmax                               10                   850
    ======  ==============================================  ================  ======

    61,706 parameters at the default 32 x 32 x 1 input and 10 classes. Other input sizes work as
    long as C5 still gets at least a 5 x 5 map (inputs of 32 x 32 or more).
    """
    op = "lenet5"
    h, w, c = _shape(input_shape, op)
    classes = _positive_int(classes, op, "classes", 2)
    if min(h, w) < 32:
        raise ValueError(f"{op}: input_shape {input_shape!r} is too small; the guide's LeNet-5 "
                         f"needs at least 32 x 32 (pad 28 x 28 MNIST images to 32 x 32, e.g. "
                         f"datasets.mnist(pad_to_32=True))")
    return models.Sequential([
        layers.Input(shape=(h, w, c)),
        layers.Conv2D(filters=6, kernel_size=(5, 5), activation="tanh", name="C1"),
        layers.AveragePooling2D(pool_size=(2, 2), strides=(2, 2), name="S2"),
        layers.Conv2D(filters=16, kernel_size=(5, 5), activation="tanh", name="C3"),
        layers.AveragePooling2D(pool_size=(2, 2), strides=(2, 2), name="S4"),
        layers.Conv2D(filters=120, kernel_size=(5, 5), activation="tanh", name="C5"),
        layers.Flatten(name="Flatten"),
        layers.Dense(units=84, activation="tanh", name="F6"),
        layers.Dense(units=classes, activation="softmax", name="Output"),
    ], name="modifiedLeNet5")


def alexnet(input_shape=(227, 227, 3), classes=1000, dropout=0.5, width=1.0, dense_units=None,
            stem="auto"):
    """AlexNet (section 5): 5 conv layers, 3 overlapping max-pools, 2 dense layers with dropout.

    At the defaults it is the single-tower network of the ImageNet 2012 entry, 62,378,344
    parameters::

        conv1  Conv2D 96 11 x 11, stride 4, valid, relu     55 x 55 x 96
        pool1  MaxPooling2D 3 x 3, stride 2                 27 x 27 x 96
        conv2  Conv2D 256 5 x 5, same, relu                 27 x 27 x 256
        pool2  MaxPooling2D 3 x 3, stride 2                 13 x 13 x 256
        conv3  Conv2D 384 3 x 3, same, relu                 13 x 13 x 384
        conv4  Conv2D 384 3 x 3, same, relu                 13 x 13 x 384
        conv5  Conv2D 256 3 x 3, same, relu                 13 x 13 x 256
        pool5  MaxPooling2D 3 x 3, stride 2                 6 x 6 x 256
        flatten                                             9216
        fc6    Dense 4096, relu; drop6 Dropout(dropout)
        fc7    Dense 4096, relu; drop7 Dropout(dropout)
        output Dense classes, softmax

    Small inputs: ``width`` scales every conv's filter count and (unless ``dense_units`` is given)
    the two dense layers, each rounded and at least 1. ``stem`` chooses the first conv:
    ``"imagenet"`` is the 11 x 11 / 4 valid conv above; ``"small"`` is a 3 x 3 / 1 same conv, for
    inputs such as CIFAR-10's 32 x 32 (then the maps are 32 -> 15 -> 7 -> 3 across the three
    pools); ``"auto"`` picks ``"imagenet"`` when height and width are both at least 67 pixels (the
    least for which the ImageNet stem leaves a map for each pool) and ``"small"`` otherwise.
    A configuration that trains on 32 x 32 x 3 in minutes on a CPU::

        alexnet((32, 32, 3), classes=10, width=0.25, dense_units=256)    # stem "small"

    Args:
        input_shape: ``(height, width, channels)``.
        classes: size of the softmax output.
        dropout: rate of the two dropout layers (0 <= dropout < 1).
        width: multiplier of the filter counts 96, 256, 384, 384, 256 (and of 4096 units).
        dense_units: units of fc6 and fc7; default ``round(4096 * width)``.
        stem: ``"auto"``, ``"imagenet"`` or ``"small"``.
    """
    op = "alexnet"
    h, w, c = _shape(input_shape, op)
    classes = _positive_int(classes, op, "classes", 2)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float, np.floating)) \
            or not 0 <= dropout < 1:
        raise ValueError(f"{op}: dropout must be a number in [0, 1), got {dropout!r}")
    if (isinstance(width, bool) or not isinstance(width, (int, float, np.floating))
            or not math.isfinite(width) or width <= 0):
        raise ValueError(f"{op}: width must be a positive number, got {width!r}")
    if dense_units is None:
        dense_units = max(1, round(4096 * width))
    dense_units = _positive_int(dense_units, op, "dense_units")
    if stem not in ("auto", "imagenet", "small"):
        raise ValueError(f"{op}: stem must be 'auto', 'imagenet' or 'small', got {stem!r}")
    if stem == "auto":
        stem = "imagenet" if min(h, w) >= ALEXNET_MIN_IMAGENET_SIDE else "small"
    least = ALEXNET_MIN_IMAGENET_SIDE if stem == "imagenet" else 15
    if min(h, w) < least:
        raise ValueError(f"{op}: input_shape {input_shape!r} is too small for the {stem!r} stem; "
                         f"expected at least {least} x {least}"
                         + (" (use stem='small' or 'auto')" if stem == "imagenet" else ""))

    def n(filters):
        return max(1, round(filters * width))

    k, s, padding = ((11, 11), (4, 4), "valid") if stem == "imagenet" else ((3, 3), (1, 1), "same")
    return models.Sequential([
        layers.Input(shape=(h, w, c)),
        layers.Conv2D(n(96), k, strides=s, padding=padding, activation="relu", name="conv1"),
        layers.MaxPooling2D(pool_size=(3, 3), strides=(2, 2), name="pool1"),
        layers.Conv2D(n(256), (5, 5), padding="same", activation="relu", name="conv2"),
        layers.MaxPooling2D(pool_size=(3, 3), strides=(2, 2), name="pool2"),
        layers.Conv2D(n(384), (3, 3), padding="same", activation="relu", name="conv3"),
        layers.Conv2D(n(384), (3, 3), padding="same", activation="relu", name="conv4"),
        layers.Conv2D(n(256), (3, 3), padding="same", activation="relu", name="conv5"),
        layers.MaxPooling2D(pool_size=(3, 3), strides=(2, 2), name="pool5"),
        layers.Flatten(name="flatten"),
        layers.Dense(dense_units, activation="relu", name="fc6"),
        layers.Dropout(dropout, name="drop6"),
        layers.Dense(dense_units, activation="relu", name="fc7"),
        layers.Dropout(dropout, name="drop7"),
        layers.Dense(classes, activation="softmax", name="output"),
    ], name="alexnet")


def conv_autoencoder(input_shape=(28, 28, 1), latent_channels=8, filters=(16, 32)):
    """The convolutional autoencoder of section 6.

    Encoder: ``Conv2D(filters[0], 3 x 3, stride 2, same, relu)`` (``enc1``, halves the size),
    ``Conv2D(filters[1], 3 x 3, stride 2, same, relu)`` (``enc2``, halves it again) and the
    bottleneck ``Conv2D(latent_channels, 3 x 3, same, relu)`` (``latent``): a 28 x 28 x 1 image
    becomes a 7 x 7 x ``latent_channels`` code. Decoder: ``Conv2DTranspose(filters[1], 3 x 3,
    stride 2, same, relu)`` (``dec1``), ``Conv2DTranspose(filters[0], ...)`` (``dec2``), each
    doubling the size, then ``Conv2D(channels, 3 x 3, same, sigmoid)`` (``output``) back to the
    input shape with pixels in (0, 1). Train it with ``loss="mse"``; to denoise, feed noisy
    images as the input and the clean ones as the target.

    Height and width must be multiples of 4 (28 x 28 MNIST, 32 x 32 digits).
    """
    op = "conv_autoencoder"
    h, w, c = _shape(input_shape, op)
    if h % 4 or w % 4:
        raise ValueError(f"{op}: height and width must be multiples of 4 (two stride-2 convs "
                         f"down and two stride-2 transposed convs up), got {input_shape!r}")
    latent_channels = _positive_int(latent_channels, op, "latent_channels")
    try:
        f1, f2 = (_positive_int(f, op, "filters[i]") for f in filters)
    except (TypeError, ValueError):
        raise ValueError(f"{op}: filters must be two positive ints, got {filters!r}") from None
    return models.Sequential([
        layers.Input(shape=(h, w, c)),
        layers.Conv2D(f1, (3, 3), strides=(2, 2), padding="same", activation="relu", name="enc1"),
        layers.Conv2D(f2, (3, 3), strides=(2, 2), padding="same", activation="relu", name="enc2"),
        layers.Conv2D(latent_channels, (3, 3), padding="same", activation="relu", name="latent"),
        layers.Conv2DTranspose(f2, (3, 3), strides=(2, 2), padding="same", activation="relu",
                               name="dec1"),
        layers.Conv2DTranspose(f1, (3, 3), strides=(2, 2), padding="same", activation="relu",
                               name="dec2"),
        layers.Conv2D(c, (3, 3), padding="same", activation="sigmoid", name="output"),
    ], name="conv_autoencoder")


_MAP_LAYERS = (layers.Conv2D, layers.Conv2DTranspose, layers.MaxPooling2D, layers.AveragePooling2D)


def feature_maps(model, image, kinds=_MAP_LAYERS):
    """What one image looks like after each conv and pooling layer of a ``Sequential`` model.

    Runs ``image`` (``(H, W, C)``, one sample without the batch axis) through ``model.layers``
    one layer at a time in inference mode, and returns ``[(layer name, (H', W', C') array)]`` for
    every layer that is an instance of ``kinds`` -- the guide's Figures 6-10 made from a real
    network. For LeNet-5: C1 28x28x6, S2 14x14x6, C3 10x10x16, S4 5x5x16, C5 1x1x120.
    """
    x = np.asarray(image, dtype=np.float32)
    want = tuple(model.input_shape[1:]) if getattr(model, "input_shape", None) else None
    if want is not None and x.shape != want:
        raise ValueError(f"feature_maps: expected one image of shape {want}, got {x.shape}")
    out = []
    with no_grad():
        t = Tensor(x[None])
        for layer in model.layers:
            t = layer(t, training=False)
            if isinstance(layer, kinds):
                out.append((layer.name, t.numpy()[0]))
    return out
