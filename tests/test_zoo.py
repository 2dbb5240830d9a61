"""gpucnn.zoo: each network of the guide has the guide's layers, sizes and parameter counts, and
computes what a plain-NumPy forward pass with the same weights computes."""
import numpy as np
import pytest

import gpucnn
from _reference import ref_avg_pool, ref_conv2d, ref_max_pool
from test_guide_lenet5 import SECTION_7_2
from gpucnn import layers, zoo


pytestmark = pytest.mark.usefixtures("numpy_backend")


# -- an independent forward pass: the plain loops of tests/_reference.py ----------------------
Z = (0, 0, 0, 0)


def ref_softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def randomize(model, rng):
    """Fresh random weights (non-zero biases too), returned as float64 arrays by layer name."""
    out = {}
    for layer in model.layers:
        ws = layer.weights
        for t in ws:
            t.data[...] = rng.uniform(-0.5, 0.5, t.shape).astype(np.float32)
        if ws:
            out[layer.name] = [t.numpy().astype(np.float64) for t in ws]
    return out


def shapes(model):
    return {layer.name: tuple(layer.output_shape[1:]) for layer in model.layers}


# -- LeNet-5 ------------------------------------------------------------------------------
def test_lenet5_has_the_guides_layers_sizes_and_61706_parameters():
    """Name, type, output shape and parameters of each layer: section 7.2's table."""
    model = zoo.lenet5()
    assert [(la.name, type(la).__name__, la.output_shape, la.count_params())
            for la in model.layers] == SECTION_7_2
    assert model.count_params() == 61_706


def test_lenet5_computes_tanh_convs_average_pools_and_softmax(rng):
    model = zoo.lenet5()
    w = randomize(model, rng)
    x = rng.random((3, 32, 32, 1)).astype(np.float32)
    got = np.asarray(model.predict(x, verbose=0))

    h = ref_conv2d(x, *w["C1"], (1, 1), Z, "tanh")
    h = ref_avg_pool(h, (2, 2), (2, 2), Z)
    h = ref_conv2d(h, *w["C3"], (1, 1), Z, "tanh")
    h = ref_avg_pool(h, (2, 2), (2, 2), Z)
    h = ref_conv2d(h, *w["C5"], (1, 1), Z, "tanh").reshape(3, -1)
    h = np.tanh(h @ w["F6"][0] + w["F6"][1])
    want = ref_softmax(h @ w["Output"][0] + w["Output"][1])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_lenet5_other_class_counts_and_larger_inputs():
    model = zoo.lenet5(input_shape=(36, 40, 3), classes=4)
    assert shapes(model)["C5"] == (2, 3, 120)  # 36 -> 32 -> 16 -> 12 -> 6 -> 2, 40 -> ... -> 3
    assert shapes(model)["Output"] == (4,)
    # C1 sees 3 channels, F6 sees the 2*3*120 flattened C5 maps.
    assert model.get_layer("C1").kernel.shape == (5, 5, 3, 6)
    assert model.get_layer("F6").kernel.shape == (2 * 3 * 120, 84)


# -- perceptron and basic CNN --------------------------------------------------------------
def test_perceptron_is_the_sigmoid_of_a_weighted_sum(rng):
    model = zoo.perceptron(7)
    assert model.count_params() == 8
    w = randomize(model, rng)["neuron"]
    x = rng.standard_normal((5, 7)).astype(np.float32)
    want = 1.0 / (1.0 + np.exp(-(x @ w[0] + w[1])))
    np.testing.assert_allclose(np.asarray(model.predict(x, verbose=0)), want, rtol=1e-5)


def test_basic_cnn_is_conv_relu_maxpool_dense_softmax(rng):
    model = zoo.basic_cnn(input_shape=(9, 11, 2), classes=3, filters=4, kernel_size=3, units=5)
    assert shapes(model) == {"conv": (7, 9, 4), "pool": (3, 4, 4), "flatten": (48,),
                             "dense": (5,), "output": (3,)}
    w = randomize(model, rng)
    x = rng.random((2, 9, 11, 2)).astype(np.float32)
    h = ref_conv2d(x, *w["conv"], (1, 1), Z, "relu")
    h = ref_max_pool(h, (2, 2), (2, 2), Z)[0].reshape(2, -1)
    h = np.maximum(h @ w["dense"][0] + w["dense"][1], 0)
    want = ref_softmax(h @ w["output"][0] + w["output"][1])
    np.testing.assert_allclose(np.asarray(model.predict(x, verbose=0)), want, rtol=1e-4,
                               atol=1e-6)


# -- AlexNet -------------------------------------------------------------------------------
def alexnet_params(c_in, side_after_pool5, width_filters, dense, classes, conv1_k):
    f1, f2, f3, f4, f5 = width_filters
    convs = [(conv1_k, c_in, f1), (5, f1, f2), (3, f2, f3), (3, f3, f4), (3, f4, f5)]
    n = sum(k * k * ci * co + co for k, ci, co in convs)
    flat = side_after_pool5 ** 2 * f5
    return n + flat * dense + dense + dense * dense + dense + dense * classes + classes


def test_alexnet_at_the_default_size_has_62378344_parameters_and_trains_at_227(rng):
    model = zoo.alexnet()
    assert model.count_params() == 62_378_344
    assert model.count_params() == alexnet_params(3, 6, (96, 256, 384, 384, 256), 4096, 1000, 11)
    assert shapes(model) == {
        "conv1": (55, 55, 96), "pool1": (27, 27, 96), "conv2": (27, 27, 256),
        "pool2": (13, 13, 256), "conv3": (13, 13, 384), "conv4": (13, 13, 384),
        "conv5": (13, 13, 256), "pool5": (6, 6, 256), "flatten": (9216,), "fc6": (4096,),
        "drop6": (4096,), "fc7": (4096,), "drop7": (4096,), "output": (1000,)}
    conv1 = model.get_layer("conv1")
    assert conv1.kernel.shape == (11, 11, 3, 96) and tuple(conv1.strides) == (4, 4)
    assert [model.get_layer(n).rate for n in ("drop6", "drop7")] == [0.5, 0.5]

    # One SGD step at full size, batch 2: every weight, conv1's included, receives a gradient.
    from gpucnn import optimizers

    model.compile(optimizer=optimizers.SGD(learning_rate=0.01),
                  loss="sparse_categorical_crossentropy")
    before = [w.numpy().copy() for w in model.weights]
    loss = float(model.train_on_batch(rng.random((2, 227, 227, 3)).astype(np.float32),
                                      np.array([3, 917])))
    assert abs(loss - np.log(1000)) < 1.0          # near-uniform softmax at initialisation
    changed = [not np.array_equal(b, w.numpy()) for b, w in zip(before, model.weights)]
    assert len(changed) == 16 and all(changed)


def test_alexnet_small_configuration_for_32x32_images(rng):
    model = zoo.alexnet((32, 32, 3), classes=10, width=0.25, dense_units=32, dropout=0.25)
    assert model.get_layer("conv1").kernel.shape == (3, 3, 3, 24)  # the small-input stem
    assert shapes(model)["pool1"] == (15, 15, 24)
    assert shapes(model)["pool5"] == (3, 3, 64)
    assert model.count_params() == alexnet_params(3, 3, (24, 64, 96, 96, 64), 32, 10, 3)
    p = np.asarray(model.predict(rng.random((2, 32, 32, 3)).astype(np.float32), verbose=0))
    assert p.shape == (2, 10)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)


def test_alexnet_stem_choice():
    assert zoo.alexnet((67, 67, 3), classes=10, width=0.1).get_layer("conv1").kernel.shape[0] == 11
    assert zoo.alexnet((66, 66, 3), classes=10, width=0.1).get_layer("conv1").kernel.shape[0] == 3
    forced = zoo.alexnet((96, 96, 3), classes=10, width=0.1, stem="small")
    assert forced.get_layer("conv1").kernel.shape[0] == 3


# -- convolutional autoencoder ---------------------------------------------------------------
def test_conv_autoencoder_shapes_and_sigmoid_output(rng):
    model = zoo.conv_autoencoder((28, 28, 1), latent_channels=5)
    assert shapes(model) == {"enc1": (14, 14, 16), "enc2": (7, 7, 32), "latent": (7, 7, 5),
                             "dec1": (14, 14, 32), "dec2": (28, 28, 16), "output": (28, 28, 1)}
    for name in ("dec1", "dec2"):
        assert isinstance(model.get_layer(name), layers.Conv2DTranspose)
    y = np.asarray(model.predict(rng.random((2, 28, 28, 1)).astype(np.float32), verbose=0))
    assert y.shape == (2, 28, 28, 1)
    assert 0.0 < y.min() and y.max() < 1.0
    assert shapes(zoo.conv_autoencoder((32, 32, 3)))["output"] == (32, 32, 3)


@pytest.mark.parametrize("build, kwargs, words", [
    *[(zoo.perceptron, {"n_features": bad}, ["perceptron: n_features"])
      for bad in (0, -3, 2.5, True, None)],
    (zoo.lenet5, {"input_shape": (28, 28, 1)}, ["lenet5", "32 x 32", "pad_to_32"]),
    (zoo.lenet5, {"input_shape": (32, 32)}, ["lenet5", "(height, width, channels)", "(32, 32)"]),
    (zoo.lenet5, {"classes": 1}, ["lenet5", "classes", ">= 2"]),
    (zoo.lenet5, {"input_shape": (32, 32.0, 1)}, ["lenet5", "input_shape"]),
    (zoo.alexnet, {"input_shape": (40, 40, 3), "stem": "imagenet"},
     ["alexnet", "67 x 67", "stem='small'"]),
    (zoo.alexnet, {"input_shape": (14, 14, 3)}, ["alexnet", "15 x 15"]),
    (zoo.alexnet, {"dropout": 1.0}, ["alexnet", "dropout", "[0, 1)"]),
    (zoo.alexnet, {"width": 0}, ["alexnet", "width", "positive"]),
    (zoo.alexnet, {"stem": "big"}, ["alexnet", "stem", "'big'"]),
    (zoo.conv_autoencoder, {"input_shape": (30, 28, 1)},
     ["conv_autoencoder", "multiples of 4", "(30, 28, 1)"]),
    (zoo.conv_autoencoder, {"latent_channels": 0}, ["conv_autoencoder", "latent_channels"]),
    (zoo.conv_autoencoder, {"filters": (8,)}, ["conv_autoencoder", "filters", "(8,)"]),
])
def test_the_builders_reject_bad_arguments(build, kwargs, words):
    with pytest.raises(ValueError) as e:
        build(**kwargs)
    for word in words:
        assert word in str(e.value)


# -- feature maps ---------------------------------------------------------------------------
def test_feature_maps_are_the_outputs_after_each_conv_and_pool(rng):
    model = zoo.lenet5()
    w = randomize(model, rng)
    image = rng.random((32, 32, 1)).astype(np.float32)
    maps = zoo.feature_maps(model, image)
    assert [(n, m.shape) for n, m in maps] == [
        ("C1", (28, 28, 6)), ("S2", (14, 14, 6)), ("C3", (10, 10, 16)), ("S4", (5, 5, 16)),
        ("C5", (1, 1, 120))]
    c1 = ref_conv2d(image[None], *w["C1"], (1, 1), Z, "tanh")
    np.testing.assert_allclose(maps[0][1], c1[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(maps[1][1], ref_avg_pool(c1, (2, 2), (2, 2), Z)[0], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=r"feature_maps: expected one image of shape \(32, 32, 1\)"):
        zoo.feature_maps(model, image[None])


# -- the cuda backend (Numba's simulator in CI: tiny shapes only) ---------------------------
@pytest.mark.gpu_check
def test_a_zoo_model_gives_the_same_output_on_the_cuda_backend(rng):
    from gpucnn.kernels.cuda_set import _probe

    if not _probe.probe()[0]:
        pytest.skip(f"the cuda backend cannot run here: {_probe.probe()[1]}")
    x = rng.random((2, 8, 8, 1)).astype(np.float32)
    model = zoo.conv_autoencoder((8, 8, 1), latent_channels=2, filters=(2, 3))
    randomize(model, rng)
    want = np.asarray(model.predict(x, verbose=0))
    try:
        gpucnn.set_backend("cuda")
        on_cuda = zoo.conv_autoencoder((8, 8, 1), latent_channels=2, filters=(2, 3))
        on_cuda.set_weights(model.get_weights())
        got = np.asarray(on_cuda.predict(x, verbose=0))
    finally:
        gpucnn.set_backend("numpy")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_numpy_integers_are_accepted_as_sizes():
    shape = tuple(np.array([32, 32, 1]))
    assert zoo.lenet5(shape, classes=np.int64(3)).count_params() == 61_706 - 7 * (84 + 1)


# -- gpucnn.plots -----------------------------------------------------------------------------
def check_png(path):
    import matplotlib.image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[0] >= 100 and pixels.shape[1] >= 100
    assert pixels[..., :3].std() > 0.02


def test_confusion_counts_against_a_loop(rng):
    from gpucnn import plots

    t, p = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    want = np.zeros((4, 4), int)
    for a, b in zip(t, p):
        want[a, b] += 1
    np.testing.assert_array_equal(plots.confusion_counts(t, p, 4), want)
    with pytest.raises(ValueError, match=r"confusion_counts: y_pred must hold ints in \[0, 4\)"):
        plots.confusion_counts(t, p + 1, 4)


def test_every_plot_writes_a_readable_png(tmp_path, rng):
    from gpucnn import plots

    h = {"loss": [1.0, 0.5, 0.3], "accuracy": [0.5, 0.8, 0.9], "val_loss": [0.9, 0.6, 0.5],
         "val_accuracy": [0.6, 0.7, 0.8]}
    written = [
        plots.curves(h, tmp_path / "c.png"),
        plots.filters(rng.standard_normal((5, 5, 1, 6)), tmp_path / "f1.png"),
        plots.filters(rng.standard_normal((3, 3, 3, 10)), tmp_path / "f3.png"),
        plots.filters(rng.standard_normal((3, 3, 4, 5)), tmp_path / "f4.png"),
        plots.feature_maps(rng.random((10, 10, 16)), tmp_path / "m.png", image=rng.random((12, 12))),
        plots.feature_maps(rng.standard_normal((1, 1, 120)), tmp_path / "m1.png"),
        plots.confusion_matrix(rng.integers(0, 3, 50), rng.integers(0, 3, 50), tmp_path / "cm.png"),
        plots.reconstructions({"a": rng.random((4, 8, 8, 1)), "b": rng.random((4, 8, 8))},
                              tmp_path / "r.png"),
        plots.weights_image(rng.standard_normal(64), (8, 8), tmp_path / "w.png"),
    ]
    for path in written:
        check_png(path)
    with pytest.raises(ValueError, match=r"filters: kernel must be a numeric array of rank 4"):
        plots.filters(np.zeros((3, 3, 1)), tmp_path / "bad.png")
    with pytest.raises(ValueError, match="curves: expected a History"):
        plots.curves({}, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_plots_say_how_to_get_matplotlib(monkeypatch, tmp_path):
    import sys

    from gpucnn import plots

    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    with pytest.raises(ImportError, match=r"pip install matplotlib"):
        plots.curves({"loss": [1.0]}, tmp_path / "c.png")
