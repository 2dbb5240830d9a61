"""gpucnn.layers on the NumPy backend: each layer's forward and backward against the functional
op it wraps, output shapes against the TensorFlow formulas, Dropout's modes, naming, building,
initializers and the input errors."""
import math

import numpy as np
import pytest

import gpucnn
import gpucnn.functional as F
from gpucnn import initializers, layers, models
from gpucnn.autograd import Tensor
from test_models import f32


pytestmark = pytest.mark.usefixtures("numpy_backend")


def against_functional(layer, fn, x, rng, training=False, rtol=1e-5, atol=1e-6):
    """``layer(x)`` and its gradients (input and every weight) against ``fn(x, *weights)`` computed
    on fresh copies of the weights, both under the same random output gradient."""
    xt = Tensor(x, requires_grad=True)
    y = layer(xt, training=training)
    r = rng.standard_normal(y.shape).astype(np.float32)
    (y * Tensor(r)).sum().backward()
    ws = [Tensor(w.numpy().copy(), requires_grad=True) for w in layer.weights]
    xr = Tensor(x.copy(), requires_grad=True)
    yr = fn(xr, *ws)
    (yr * Tensor(r)).sum().backward()
    np.testing.assert_allclose(y.numpy(), yr.numpy(), rtol=rtol, atol=atol)
    np.testing.assert_allclose(xt.grad.numpy(), xr.grad.numpy(), rtol=rtol, atol=atol)
    for w, wr in zip(layer.weights, ws):
        assert w.grad is not None, f"no gradient reached {w.name}"
        np.testing.assert_allclose(w.grad.numpy(), wr.grad.numpy(), rtol=rtol, atol=atol,
                                   err_msg=w.name)
    return y


# -- output sizes: TensorFlow's formulas, written out here --------------------------------------
def tf_out(size, k, s, padding):
    return math.ceil(size / s) if padding == "same" else (size - k) // s + 1


def tf_transpose_out(size, k, s, padding):
    return size * s if padding == "same" else (size - 1) * s + max(k, s)


GEOMETRIES = [(7, 6, 3, 1, "valid"), (7, 6, 3, 2, "same"), (8, 5, 2, 2, "same"),
              (9, 9, 4, 3, "valid"), (5, 4, 5, 1, "same"), (6, 7, (3, 2), (2, 1), "valid")]


# What the conv and pool layers add to their functional op: TensorFlow's output sizes, the
# weights they create, and the wiring of kernel, bias and activation (one numeric case each; the
# ops themselves are tested by op in tests/test_ops.py).

@pytest.mark.parametrize("h,w,k,s,padding", GEOMETRIES)
def test_conv2d_output_and_weight_shapes(h, w, k, s, padding, rng):
    layer = layers.Conv2D(3, k, strides=s, padding=padding)
    y = layer(f32(rng, 2, h, w, 2))
    (kh, kw), (sh, sw) = layer.kernel_size, layer.strides
    assert y.shape == (2, tf_out(h, kh, sh, padding), tf_out(w, kw, sw, padding), 3)
    assert layer.kernel.shape == (kh, kw, 2, 3) and layer.bias.shape == (3,)
    assert layer.output_shape == (None,) + y.shape[1:]
    assert layer.compute_output_shape((None, h, w, 2)) == (None,) + y.shape[1:]


@pytest.mark.parametrize("activation", [None, "relu", "softmax"])
def test_conv2d_wires_kernel_bias_and_activation(activation, rng):
    layer = layers.Conv2D(3, (3, 2), strides=(2, 1), padding="same", activation=activation,
                          bias_initializer="he_uniform")
    fused = activation if activation != "softmax" else None

    def ref(x, kernel, bias):
        y = F.conv2d(x, kernel, bias, strides=(2, 1), padding="same", activation=fused)
        return F.softmax(y, axis=-1) if activation == "softmax" else y

    against_functional(layer, ref, f32(rng, 2, 7, 6, 2), rng)


def test_conv2d_runs_its_activation_fused(monkeypatch, rng):
    seen = []
    real = F.conv2d

    def spy(*a, **k):
        seen.append(a[5] if len(a) > 5 else k.get("activation"))
        return real(*a, **k)

    monkeypatch.setattr(F, "conv2d", spy)
    layers.Conv2D(2, 3, activation="relu")(f32(rng, 1, 5, 5, 1))
    layers.Conv2D(2, 3, activation="softmax")(f32(rng, 1, 5, 5, 1))
    assert seen == ["relu", None]


def test_conv2d_without_bias_and_with_callable_activation(rng):
    layer = layers.Conv2D(2, 3, use_bias=False, activation=F.tanh)
    x = f32(rng, 2, 5, 5, 3)
    against_functional(layer, lambda x, k: F.conv2d(x, k, activation="tanh"), x, rng)
    assert len(layer.weights) == 1 and layer.bias is None
    custom = layers.Conv2D(2, 3, activation=lambda t: t * 2.0)
    against_functional(custom, lambda x, k, b: F.conv2d(x, k, b) * 2.0, x, rng)


@pytest.mark.parametrize("h,w,k,s,padding", GEOMETRIES)
def test_conv2d_transpose_output_and_weight_shapes(h, w, k, s, padding, rng):
    layer = layers.Conv2DTranspose(2, k, strides=s, padding=padding)
    x = f32(rng, 2, h // 2 + 1, w // 2 + 1, 3)
    y = layer(x)
    (kh, kw), (sh, sw) = layer.kernel_size, layer.strides
    assert layer.kernel.shape == (kh, kw, 2, 3)
    assert y.shape == (2, tf_transpose_out(x.shape[1], kh, sh, padding),
                       tf_transpose_out(x.shape[2], kw, sw, padding), 2)
    assert layer.compute_output_shape((None,) + x.shape[1:]) == (None,) + y.shape[1:]


def test_conv2d_transpose_wires_kernel_bias_and_activation(rng):
    layer = layers.Conv2DTranspose(2, 3, strides=2, padding="same", activation="sigmoid",
                                   bias_initializer="ones")
    ref = lambda x, kernel, bias: F.sigmoid(F.conv2d_transpose(x, kernel, bias, strides=2,  # noqa: E731
                                                               padding="same"))
    against_functional(layer, ref, f32(rng, 2, 4, 3, 3), rng)


@pytest.mark.parametrize("cls", [layers.MaxPooling2D, layers.AveragePooling2D])
@pytest.mark.parametrize("h,w,k,s,padding", GEOMETRIES)
def test_pooling_output_shapes(cls, h, w, k, s, padding, rng):
    layer = cls(pool_size=k, strides=s, padding=padding)
    y = layer(f32(rng, 2, h, w, 3))
    ph, pw = (k, k) if isinstance(k, int) else k
    sh, sw = (s, s) if isinstance(s, int) else s
    assert y.shape == (2, tf_out(h, ph, sh, padding), tf_out(w, pw, sw, padding), 3)
    assert layer.weights == []


@pytest.mark.parametrize("cls,fn", [(layers.MaxPooling2D, F.max_pool2d),
                                    (layers.AveragePooling2D, F.avg_pool2d)])
def test_pooling_wires_its_geometry(cls, fn, rng):
    layer = cls(pool_size=(3, 2), strides=(2, 1), padding="same")
    against_functional(layer, lambda x: fn(x, (3, 2), (2, 1), "same"), f32(rng, 2, 7, 6, 3), rng)


def test_pooling_strides_default_to_pool_size(rng):
    layer = layers.AveragePooling2D(pool_size=(2, 3))
    assert layer.strides == (2, 3)
    assert layer(f32(rng, 1, 6, 9, 1)).shape == (1, 3, 3, 1)


@pytest.mark.parametrize("activation", [None, "relu", "tanh", "sigmoid", "softmax", "log_softmax"])
def test_dense_against_functional(activation, rng):
    layer = layers.Dense(5, activation=activation, bias_initializer="glorot_normal")
    fused = activation if activation in ("relu", "tanh", "sigmoid") else None
    after = {"softmax": F.softmax, "log_softmax": F.log_softmax}.get(activation, lambda t: t)
    y = against_functional(layer, lambda x, k, b: after(F.dense(x, k, b, activation=fused)),
                           f32(rng, 4, 7), rng)
    assert y.shape == (4, 5) and layer.kernel.shape == (7, 5) and layer.bias.shape == (5,)


def test_flatten_reshape_activation_against_functional(rng):
    x = f32(rng, 3, 4, 5, 2)
    against_functional(layers.Flatten(), F.flatten, x, rng)
    against_functional(layers.Reshape((5, -1)), lambda t: t.reshape(3, 5, 8), x, rng)
    against_functional(layers.Reshape((40,)), lambda t: t.reshape(3, 40), x, rng)
    against_functional(layers.Activation("softmax"), lambda t: F.softmax(t, axis=-1), x, rng)
    against_functional(layers.Activation("tanh"), F.tanh, x, rng)
    assert layers.Flatten().compute_output_shape((None, 4, 5, 2)) == (None, 40)


def test_dropout_only_in_training(rng):
    layer = layers.Dropout(0.4)
    x = np.abs(f32(rng, 64, 50)) + 0.5
    np.testing.assert_array_equal(layer(x).numpy(), x)
    np.testing.assert_array_equal(layer(x, training=False).numpy(), x)
    xt = Tensor(x, requires_grad=True)
    y = layer(xt, training=True)
    yv = y.numpy()
    kept = yv != 0
    assert 0.3 < 1 - kept.mean() < 0.5, "about 40% dropped"
    np.testing.assert_allclose(yv[kept], x[kept] / 0.6, rtol=1e-6)
    y.sum().backward()
    np.testing.assert_allclose(xt.grad.numpy(), kept / 0.6, rtol=1e-6)
    # a new mask at every training call
    assert not np.array_equal(layer(x, training=True).numpy() != 0, kept)


def test_dropout_masks_follow_manual_seed(rng):
    x = np.ones((8, 32), np.float32)
    gpucnn.manual_seed(7)
    a = [layers.Dropout(0.5)(x, training=True).numpy() for _ in range(2)]
    gpucnn.manual_seed(7)
    b = [layers.Dropout(0.5)(x, training=True).numpy() for _ in range(2)]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a[0], a[1])
    seeded = layers.Dropout(0.5, seed=3)
    c = [seeded(x, training=True).numpy() for _ in range(2)]
    again = layers.Dropout(0.5, seed=3)
    np.testing.assert_array_equal(again(x, training=True).numpy(), c[0])
    assert not np.array_equal(c[0], c[1])


def test_default_names_unique_per_model():
    def build():
        return models.Sequential([layers.Conv2D(2, 3, input_shape=(8, 8, 1)), layers.Conv2D(2, 3),
                                  layers.MaxPooling2D(), layers.Flatten(), layers.Dense(4),
                                  layers.Dense(2)])

    names = [la.name for la in build().layers]
    assert names == ["conv2d", "conv2d_1", "max_pooling2d", "flatten", "dense", "dense_1"]
    assert [la.name for la in build().layers] == names  # per model, not global
    m = build()
    assert [t.name for t in m.weights][:2] == ["conv2d/kernel", "conv2d/bias"]
    assert layers.Conv2DTranspose(1, 2).name == "conv2d_transpose"
    assert layers.AveragePooling2D().name == "average_pooling2d"
    with pytest.raises(ValueError, match="'C1' is used twice"):
        models.Sequential([layers.Dense(2, name="C1"), layers.Dense(2, name="C1")])


def test_layer_builds_on_first_call_from_the_input_shape(rng):
    layer = layers.Dense(3)
    assert not layer.built and layer.weights == []
    with pytest.raises(ValueError, match="not built"):
        layer.count_params()
    layer(f32(rng, 2, 6))
    assert layer.built and layer.count_params() == 6 * 3 + 3
    assert layer.input_shape == (None, 6) and layer.output_shape == (None, 3)


def test_sequential_with_input_shape_builds_at_construction():
    m = models.Sequential([layers.Conv2D(4, 3, padding="same", input_shape=(10, 10, 2)),
                           layers.MaxPooling2D(), layers.Flatten(), layers.Dense(3)])
    assert m.built and all(la.built for la in m.layers)
    assert [la.output_shape for la in m.layers] == [(None, 10, 10, 4), (None, 5, 5, 4),
                                                    (None, 100), (None, 3)]
    assert m.count_params() == 3 * 3 * 2 * 4 + 4 + 100 * 3 + 3
    m2 = models.Sequential([layers.Input(shape=(10, 10, 2)), layers.Conv2D(4, 3)])
    assert m2.built and m2.output_shape == (None, 8, 8, 4) and len(m2.layers) == 1


@pytest.mark.parametrize("make,first,bad,match", [
    (lambda: layers.Conv2D(6, 5, name="C1"), (1, 32, 32, 1), (2, 32, 32, 3),
     r"layer 'C1' \(Conv2D\): expected input shape \(batch, height, width, 1\).*"
     r"received \(2, 32, 32, 3\)"),
    (lambda: layers.Conv2D(6, 5, name="C1"), (1, 32, 32, 1), (2, 32),
     r"layer 'C1' \(Conv2D\).*rank 4.*received \(2, 32\)"),
    (lambda: layers.Dense(84, name="F6"), None, (2, 5, 5, 16),
     r"layer 'F6' \(Dense\).*Flatten.*received \(2, 5, 5, 16\)"),
    (lambda: layers.Dense(3, name="d"), (2, 4), (2, 5),
     r"layer 'd' \(Dense\): expected input shape \(batch, 4\), received \(2, 5\)"),
    (lambda: layers.Conv2D(8, 5, name="C5"), None, (1, 4, 4, 2),
     r"layer 'C5' \(Conv2D\).*window 5.*H=4"),
    (lambda: layers.Reshape((7, -1)), None, (2, 3, 4),
     r"layer 'reshape' \(Reshape\).*7 values.*received \(2, 3, 4\)"),
], ids=["channels", "rank", "images-into-dense", "features", "window", "reshape"])
def test_bad_input_names_the_layer_with_expected_and_received(make, first, bad, match, rng):
    """After an accepted input of shape ``first`` (None: none), an input of shape ``bad``."""
    layer = make()
    if first is not None:
        layer(f32(rng, *first))
    with pytest.raises(ValueError, match=match):
        layer(f32(rng, *bad))


@pytest.mark.parametrize("make,error,match", [
    (lambda: layers.Conv2D(0, 3), ValueError, "filters"),
    (lambda: layers.Conv2D(2, 3, padding="full"), ValueError, "padding"),
    (lambda: layers.Dense(2, activation="swishy"), ValueError, "unknown activation 'swishy'"),
    (lambda: layers.Dropout(1.0), ValueError, "rate"),
    (lambda: layers.MaxPooling2D(data_format="channels_first"), ValueError, "channels_last"),
    (lambda: layers.Dense(2, kernel_initializer="glorot_uniformish"), ValueError,
     "unknown initializer"),
    (lambda: models.Sequential([layers.Dense]), TypeError, "class Dense"),
])
def test_bad_layer_arguments(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_inputs_are_cast_to_the_layer_dtype(rng):
    layer = layers.Dense(2)
    assert layer(rng.integers(0, 255, (3, 4)).astype(np.uint8)).dtype == np.float32
    assert layer(rng.standard_normal((3, 4))).dtype == np.float32


def test_trainable_false_freezes_weights(rng):
    m = models.Sequential([layers.Dense(3, input_shape=(4,)), layers.Dense(2)])
    m.layers[0].trainable = False
    assert len(m.trainable_weights) == 2 and len(m.non_trainable_weights) == 2
    assert not m.layers[0].kernel.requires_grad
    m.compile("sgd", "mse")
    before = m.layers[0].kernel.numpy().copy()
    m.fit(f32(rng, 8, 4), f32(rng, 8, 2), epochs=1, verbose=0)
    np.testing.assert_array_equal(m.layers[0].kernel.numpy(), before)


# -- initializers: Keras' formulas, written out here ----------------------------------------------
def test_initializers_follow_keras_formulas():
    shape = (5, 5, 16, 120)  # fan_in 400, fan_out 3000
    gu = initializers.get("glorot_uniform")(shape)
    assert gu.dtype == np.float32 and gu.shape == shape
    limit = math.sqrt(6 / (400 + 3000))
    assert np.abs(gu).max() <= limit and np.abs(gu).max() > 0.95 * limit
    assert abs(gu.std() - limit / math.sqrt(3)) < 0.02 * limit
    he = initializers.get("he_normal")(shape)
    assert abs(he.std() - math.sqrt(2 / 400)) < 0.03 * math.sqrt(2 / 400)
    assert np.abs(he).max() <= 2 * math.sqrt(2 / 400) / 0.87962566103423978 + 1e-6
    hu = initializers.get("he_uniform")(shape)
    assert np.abs(hu).max() <= math.sqrt(6 / 400)
    gn = initializers.get("glorot_normal")((300, 200))
    assert abs(gn.std() - math.sqrt(2 / 500)) < 0.03 * math.sqrt(2 / 500)
    np.testing.assert_array_equal(initializers.get("zeros")((2, 3)), np.zeros((2, 3)))
    np.testing.assert_array_equal(initializers.get("ones")((4,)), np.ones(4))


def test_initialisation_follows_manual_seed():
    def kernel():
        layer = layers.Dense(4)
        layer(np.ones((1, 3), np.float32))
        return layer.kernel.numpy()

    gpucnn.manual_seed(5)
    a = kernel()
    gpucnn.manual_seed(5)
    np.testing.assert_array_equal(kernel(), a)
    assert not np.array_equal(kernel(), a)


def test_functional_checks_remembered_per_signature_still_refuse(rng):
    x, w = Tensor(f32(rng, 1, 6, 6, 2)), Tensor(f32(rng, 3, 3, 2, 4))
    F.conv2d(x, w, strides=1)
    F.max_pool2d(x, 2, strides=1)
    for call in (lambda: F.conv2d(x, w, strides=True), lambda: F.conv2d(x, w, strides=[1, 0]),
                 lambda: F.max_pool2d(x, 2, strides=(True, 1)),
                 lambda: F.conv2d(Tensor(np.ones((1, 6, 6, 2))), w)):
        with pytest.raises((TypeError, ValueError), match="conv2d|max_pool2d"):
            call()
