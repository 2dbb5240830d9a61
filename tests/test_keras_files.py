"""Keras model files (``gpucnn.models.keras_files``) without TensorFlow: the files of
tests/data/keras were made by real Keras (3.15.1 on TensorFlow 2.21, and tf.keras 2.15 for the
legacy ``.h5``; MANIFEST.json, make_keras_files.py): the guide's five networks and one of the
layers they leave out, with Keras's predictions beside them, before
and after one more training step; gpucnn must give the same numbers, write back files laid out as
Keras's own, and refuse what it cannot load faithfully with the place in the file named."""
import io
import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

h5py = pytest.importorskip("h5py", reason="h5py is in the test extra (pip install -e '.[test]')")

import gpucnn  # noqa: E402
from gpucnn import datasets, layers, losses, models, optimizers, zoo  # noqa: E402
from gpucnn.models import keras_files, load_model  # noqa: E402
from test_models import TwoDense  # noqa: E402

pytestmark = pytest.mark.usefixtures("numpy_backend")

DATA = Path(__file__).parent / "data" / "keras"
PRED = np.load(DATA / "predictions.npz")
FILES = sorted(json.loads((DATA / "MANIFEST.json").read_text()))
# (optimizer, steps Keras had taken when it saved the file: 64 samples in batches of 32)
OPTIMIZERS = {"lenet5.keras": ("SGD", 45 * 20), "basic_cnn.keras": ("Adam", 2),
              "basic_cnn.h5": ("Adam", 2), "tf2_basic_cnn.h5": ("Adam", 2),
              "tf2_basic_cnn.keras": ("Adam", 2),
              "alexnet.keras": ("SGD", 2), "conv_autoencoder.keras": ("RMSprop", 2),
              "perceptron.keras": ("Adagrad", 2), "every_layer.keras": ("SGD", 2)}


def test_every_fixture_is_listed_with_the_keras_that_made_it():
    on_disk = sorted(p.name for p in DATA.iterdir() if p.suffix in (".keras", ".h5"))
    assert FILES == on_disk == sorted(OPTIMIZERS)
    versions = json.loads((DATA / "MANIFEST.json").read_text())
    assert versions["tf2_basic_cnn.h5"]["keras"].startswith("2.")
    assert versions["tf2_basic_cnn.keras"]["keras"].startswith("2.")
    assert all(v["keras"].startswith("3.") for k, v in versions.items() if "tf2" not in k)


@pytest.mark.parametrize("name", FILES)
def test_a_keras_file_predicts_and_trains_on_as_keras_did(name):
    """Keras's predictions and optimizer step count; then, where Keras trained the saved model
    one more step (every file but AlexNet's), gpucnn's step on the loaded one: a slot mapped to
    the wrong weight, or started afresh, moves the weights elsewhere."""
    model = load_model(DATA / name)
    x = PRED[f"x/{name}"]
    before = np.asarray(model.predict(x, verbose=0))
    diff = np.abs(before - PRED[f"y/{name}"]).max()
    assert diff <= 1e-5, f"{name}: largest |gpucnn - Keras| = {diff}"
    opt, steps = OPTIMIZERS[name]
    assert (type(model.optimizer).__name__, model.optimizer.iterations) == (opt, steps)
    if "alexnet" in name:
        return
    model.train_on_batch(x, PRED[f"t/{name}"])
    after = np.asarray(model.predict(x, verbose=0))
    assert np.abs(after - before).max() > 1e-4, f"{name}: the step changed nothing"
    diff = np.abs(after - PRED[f"y1/{name}"]).max()
    assert diff <= 1e-5, f"{name}: after one step, largest |gpucnn - Keras| = {diff}"


def test_on_the_cuda_backend_a_keras_file_trains_on_and_goes_back(tmp_path, cuda_backend):
    """Loaded onto the cuda kernels (the simulator without a GPU): Keras's predictions and its
    next Adam step, then saved as .keras from the device and read back on the NumPy set."""
    from gpucnn.kernels.cuda_set import _launch

    assert gpucnn.get_backend() == "cuda"
    name = "basic_cnn.keras"
    x, t = PRED[f"x/{name}"], PRED[f"t/{name}"]
    model = load_model(DATA / name)
    assert type(model.weights[0].data).__module__.split(".")[0] == (
        "numpy" if _launch.launch_path() == "sim" else "cupy")
    np.testing.assert_allclose(model.predict(x, verbose=0), PRED[f"y/{name}"], atol=1e-5)
    model.train_on_batch(x, t)
    after = np.asarray(model.predict(x, verbose=0))
    np.testing.assert_allclose(after, PRED[f"y1/{name}"], atol=1e-5)
    model.save(tmp_path / name)
    gpucnn.set_backend("numpy")
    np.testing.assert_allclose(load_model(tmp_path / name).predict(x, verbose=0), after,
                               atol=1e-6)


def test_the_guides_lenet5_from_keras_is_the_guides_network():
    model = load_model(DATA / "lenet5.keras")
    reference = zoo.lenet5()
    assert [(la.name, type(la).__name__, la.output_shape) for la in model.layers] == \
        [(la.name, type(la).__name__, la.output_shape) for la in reference.layers]
    assert model.count_params() == 61_706 and model.name == "modifiedLeNet5"
    assert (model.loss.name, [m.name for m in model.compiled_metrics]) == \
        ("sparse_categorical_crossentropy", ["accuracy"])
    x, y = datasets.digits(32)
    _, (x_test, y_test) = datasets.split(x, y, 0.2, seed=0)
    assert model.evaluate(x_test, y_test, verbose=0)[1] > 0.9      # Keras trained it


def test_compile_false_gives_an_uncompiled_model():
    model = load_model(DATA / "basic_cnn.keras", compile=False)
    assert model.optimizer is None and model.loss is None


# ------------------------------------------------------------------ gpucnn's .keras files

def archive(path):
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        config = json.loads(z.read("config.json"))
        meta = json.loads(z.read("metadata.json"))
        h5 = h5py.File(io.BytesIO(z.read("model.weights.h5")), "r")
    arrays = {}
    h5.visititems(lambda n, o: arrays.update({n: o.shape}) if hasattr(o, "shape") else None)
    return names, config, meta, arrays


@pytest.mark.parametrize("name", ["lenet5.keras", "basic_cnn.keras", "alexnet.keras",
                                  "conv_autoencoder.keras", "perceptron.keras",
                                  "every_layer.keras"])
def test_gpucnn_writes_what_keras_wrote(name, tmp_path):
    """Loaded from Keras's file and saved again, the archive has Keras's members, every array
    at Keras's path with Keras's shape (weights and optimizer variables), and each layer's
    settings as Keras wrote them."""
    model = load_model(DATA / name)
    model.save(tmp_path / name)
    names, config, meta, arrays = archive(tmp_path / name)
    k_names, k_config, _, k_arrays = archive(DATA / name)
    assert names == k_names == ["metadata.json", "config.json", "model.weights.h5"]
    assert meta["keras_version"].startswith("3.")
    assert arrays == k_arrays
    layers_, k_layers = config["config"]["layers"], k_config["config"]["layers"]
    assert [la["class_name"] for la in layers_] == [la["class_name"] for la in k_layers]
    for ours, theirs in zip(layers_, k_layers):
        assert ours["module"] == theirs["module"]
        if "build_config" in theirs:
            assert ours["build_config"] == theirs["build_config"]
        for key, value in ours["config"].items():
            if key not in ("dtype", "kernel_initializer", "bias_initializer", "name"):
                assert value == theirs["config"][key], (theirs["config"]["name"], key)
    ours, theirs = config["compile_config"], k_config["compile_config"]
    assert ours["optimizer"]["class_name"] == theirs["optimizer"]["class_name"]
    assert (ours["loss"], ours["metrics"]) == (theirs["loss"], theirs["metrics"])


def test_a_loss_is_written_as_keras_takes_it(tmp_path):
    model = load_model(DATA / "perceptron.keras")
    for loss, written in [(losses.MeanSquaredError(name="se"), {"name": "se"}),
                          (losses.BinaryCrossentropy(from_logits=True),
                           {"name": "binary_crossentropy", "from_logits": True})]:
        model.compile(optimizer="adam", loss=loss)
        model.save(tmp_path / "p.keras")
        got = archive(tmp_path / "p.keras")[1]["compile_config"]["loss"]
        assert (got["class_name"], got["config"]) == (type(loss).__name__, written)
        assert load_model(tmp_path / "p.keras").loss.get_config() == loss.get_config()


def test_a_model_round_trips_through_a_keras_file(tmp_path):
    gpucnn.manual_seed(1)
    model = zoo.conv_autoencoder((8, 8, 1), latent_channels=2, filters=(3, 4))
    lr = optimizers.schedules.ExponentialDecay(0.01, decay_steps=3, decay_rate=0.5)
    model.compile(optimizer=optimizers.Adam(lr, amsgrad=True), loss="mse")
    x = np.random.default_rng(0).random((6, 8, 8, 1), dtype=np.float32)
    model.fit(x, x, batch_size=3, epochs=1, verbose=0)
    model.save(tmp_path / "ae.keras")
    back = load_model(tmp_path / "ae.keras")
    assert back.get_config() == model.get_config()
    for a, b in zip(back.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert back.optimizer.get_config() == model.optimizer.get_config()
    assert back.optimizer.iterations == model.optimizer.iterations == 2
    ours = model.optimizer.get_slot_arrays(model._weight_table())
    theirs = back.optimizer.get_slot_arrays(back._weight_table())
    assert sorted(ours) == sorted(theirs) and len(ours) == 3 * 12
    for k in ours:
        np.testing.assert_array_equal(ours[k], theirs[k], err_msg=k)


def test_a_nested_and_partly_frozen_model_round_trips(tmp_path):
    """Laid out as Keras 3.15.1 loads it (checked with make_keras_files.py check): the inner
    Sequential's layers under its own ``layers/``, only trainable weights in the optimizer."""
    encoder = models.Sequential([layers.Input(shape=(8, 8, 1)),
                                 layers.Conv2D(3, 3, activation="relu", name="c")],
                                name="encoder")
    model = models.Sequential([layers.Input(shape=(8, 8, 1)), encoder, layers.Flatten(),
                               layers.Dense(2, activation="softmax", name="d")], name="nested")
    encoder.trainable = False
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    x = np.random.default_rng(0).random((4, 8, 8, 1), dtype=np.float32)
    model.train_on_batch(x, np.array([0, 1, 0, 1]))
    model.save(tmp_path / "nested.keras")
    arrays = archive(tmp_path / "nested.keras")[3]
    assert arrays == {"layers/sequential/layers/conv2d/vars/0": (3, 3, 1, 3),
                      "layers/sequential/layers/conv2d/vars/1": (3,),
                      "layers/dense/vars/0": (108, 2), "layers/dense/vars/1": (2,),
                      **{f"optimizer/vars/{i}": s for i, s in
                         enumerate([(), (), (108, 2), (108, 2), (2,), (2,)])}}
    back = load_model(tmp_path / "nested.keras")
    assert [la.trainable for la in back.layers] == [False, True, True]
    np.testing.assert_array_equal(back.predict(x, verbose=0), model.predict(x, verbose=0))


def test_a_keras_file_is_told_by_content_not_name(tmp_path):
    model = load_model(DATA / "perceptron.keras")
    (tmp_path / "weights.npz").write_bytes((DATA / "perceptron.keras").read_bytes())
    (tmp_path / "model.bin").write_bytes((DATA / "basic_cnn.h5").read_bytes())
    assert keras_files.kind(tmp_path / "weights.npz") == "keras"
    assert load_model(tmp_path / "weights.npz").get_config() == model.get_config()
    assert type(load_model(tmp_path / "model.bin").optimizer).__name__ == "Adam"
    model.save(tmp_path / "native.npz")                    # gpucnn's own zip archive
    assert keras_files.kind(tmp_path / "native.npz") is None
    assert load_model(tmp_path / "native.npz").get_config() == model.get_config()


def test_only_sequential_models_of_keras_layers_are_written(tmp_path):
    net = TwoDense()
    net.build((None, 3))
    with pytest.raises(ValueError, match="Sequential model.*is a TwoDense"):
        net.save(tmp_path / "net.keras")
    assert not (tmp_path / "net.keras").exists()


# ------------------------------------------------------------------ refusals

def rewrite(tmp_path, source, edit=None, weights=None):
    """A copy of a Keras archive with its config changed by ``edit`` (or weights replaced)."""
    with zipfile.ZipFile(DATA / source) as z:
        members = {n: z.read(n) for n in z.namelist()}
    if edit is not None:
        config = json.loads(members["config.json"])
        edit(config)
        members["config.json"] = json.dumps(config).encode()
    if weights is not None:
        members["model.weights.h5"] = weights
    out = tmp_path / "edited.keras"
    with zipfile.ZipFile(out, "w") as z:
        for n, data in members.items():
            z.writestr(n, data)
    return out


def layer_list(config):
    return config["config"]["layers"]


def test_a_lambda_layer_is_refused_by_name_and_place(tmp_path):
    def add_lambda(c):
        layer_list(c).insert(2, {"module": "keras.layers", "class_name": "Lambda",
                                 "config": {"name": "evil", "function": "4wEAAAAAAAA="}})
    path = rewrite(tmp_path, "basic_cnn.keras", add_lambda)
    with pytest.raises(ValueError, match=r"config.json: config.layers\[2\] \(Lambda 'evil'\): "
                                         "a Lambda layer holds Python code"):
        load_model(path)


def test_an_unknown_class_is_refused_unless_custom_objects_gives_it(tmp_path):
    def rename(c):
        layer_list(c)[4]["class_name"] = "MyDense"
    with zipfile.ZipFile(DATA / "basic_cnn.keras") as z:
        blob = io.BytesIO(z.read("model.weights.h5"))
    with h5py.File(blob, "a") as f:                  # where Keras keeps a MyDense's weights
        f.move("layers/dense", "layers/my_dense")
        f.move("layers/dense_1", "layers/dense")
    path = rewrite(tmp_path, "basic_cnn.keras", rename, blob.getvalue())
    with pytest.raises(ValueError, match=r"config.layers\[4\] \(MyDense 'dense'\): unknown layer "
                                         "class 'MyDense'"):
        load_model(path)

    class MyDense(layers.Dense):
        @classmethod
        def from_config(cls, config):
            return cls(config["units"], activation=config["activation"], name=config["name"])

    model = load_model(path, custom_objects={"MyDense": MyDense})
    assert type(model.get_layer("dense")) is MyDense
    got = np.asarray(model.predict(PRED["x/basic_cnn.keras"], verbose=0))
    np.testing.assert_allclose(got, PRED["y/basic_cnn.keras"], atol=1e-5)


@pytest.mark.parametrize("key, value, message", [
    ("kernel_regularizer", {"class_name": "L2", "config": {"l2": 0.01}}, "kernel_regularizer="),
    ("groups", 2, r"groups=2 has no gpucnn equivalent \(gpucnn takes only Keras's default, 1\)"),
    ("dtype", "mixed_float16", "dtype 'mixed_float16' is not supported"),
    ("activation", "gelu", "unknown activation 'gelu'"),
])
def test_a_setting_gpucnn_lacks_is_refused(tmp_path, key, value, message):
    def set_it(c):
        layer_list(c)[1]["config"][key] = value
    with pytest.raises(ValueError, match=message) as e:
        load_model(rewrite(tmp_path, "basic_cnn.keras", set_it))
    assert "config.layers[1] (Conv2D 'conv')" in str(e.value)


def test_weights_that_do_not_fit_the_config_are_refused_before_the_model_is_made(
        tmp_path, monkeypatch):
    def wider(c):
        layer_list(c)[4]["config"]["units"] = 10 ** 9          # 64 GB of Dense kernel
    made = []
    monkeypatch.setattr(keras_files.Pending, "assemble", lambda self: made.append(self))
    with pytest.raises(ValueError, match=r"layer 'dense' \(Dense\): its config makes weights "
                       r"\[\(100, 1000000000\), \(1000000000,\)\], the file holds "
                       r"\[\(100, 16\), \(16,\)\] at layers/dense"):
        load_model(rewrite(tmp_path, "basic_cnn.keras", wider))
    assert made == []


def test_arrays_that_do_not_match_are_listed_and_nothing_is_loaded(tmp_path):
    with zipfile.ZipFile(DATA / "basic_cnn.keras") as z:
        blob = io.BytesIO(z.read("model.weights.h5"))
    with h5py.File(blob, "a") as f:
        del f["optimizer/vars/13"]                                   # one Adam slot gone
    path = rewrite(tmp_path, "basic_cnn.keras", weights=blob.getvalue())
    with pytest.raises(ValueError, match=r"has 12 slot variables .* the file 11; load with "
                                         "compile=False"):
        load_model(path)
    assert load_model(path, compile=False).optimizer is None


def test_a_truncated_or_foreign_archive_gets_a_clear_error(tmp_path):
    data = (DATA / "lenet5.keras").read_bytes()
    (tmp_path / "cut.keras").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="is a Keras .keras archive that cannot be read "
                                         r"\(truncated or corrupted\?\)"):
        load_model(tmp_path / "cut.keras")
    with zipfile.ZipFile(tmp_path / "other.keras", "w") as z:
        z.writestr("config.json", "{}")
        z.writestr("notes.txt", "hello")
    with pytest.raises(ValueError, match=r"not a Keras model archive: expected members "
                                         r"\['metadata.json', 'config.json', 'model.weights.h5'\], "
                                         r"found \['config.json', 'notes.txt'\]"):
        load_model(tmp_path / "other.keras")
    h5 = (DATA / "basic_cnn.h5").read_bytes()
    (tmp_path / "cut.h5").write_bytes(h5[:4000])
    with pytest.raises(ValueError, match="is not a readable HDF5 file"):
        load_model(tmp_path / "cut.h5")


def test_a_member_declaring_more_than_the_file_holds_is_refused_unread(tmp_path):
    data = bytearray((DATA / "perceptron.keras").read_bytes())
    at = data.rfind(b"PK\x01\x02")                 # the central entry of the last member
    data[at + 24:at + 28] = (2 ** 32 - 1).to_bytes(4, "little")        # its declared size
    (tmp_path / "big.keras").write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"member model.weights.h5 declares 4294967295 bytes"):
        load_model(tmp_path / "big.keras")


def test_without_h5py_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "h5py", None)          # import h5py: an ImportError
    with pytest.raises(ImportError, match=r"pip install 'gpucnn\[keras\]'"):
        load_model(DATA / "perceptron.keras")
