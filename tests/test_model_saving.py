"""Models on disk.

Weights files: the .npz format, the round trip, refusal of mismatched, truncated, corrupted and
pickled files (leaving the model unchanged), atomic writes, get/set_weights.

Whole-model files: ``model.save`` and ``gpucnn.models.load_model`` (architecture as JSON from
each layer's ``get_config``, weights, compile settings, optimizer state), no pickle, atomic
writes; a fit stopped halfway, reloaded and continued ends with the very weights of an
uninterrupted fit (numpy backend, and cuda in the simulator); files with an unknown layer type, a
newer format version, or missing or extra arrays are refused with the file named and nothing
changed; ``ModelCheckpoint`` saves the whole model."""
import contextlib
import json
import os
import zipfile

import numpy as np
import pytest

import gpucnn
import gpucnn.functional as F
from gpucnn import callbacks, layers, models, optimizers
from gpucnn import io as wio
from gpucnn.optimizers import schedules
from test_models import blobs, same_weights as same


pytestmark = pytest.mark.usefixtures("numpy_backend")


def small_cnn(input_shape=(8, 8, 1), dropout=0.0):
    stack = [layers.Conv2D(3, 3, activation="relu", padding="same", input_shape=input_shape,
                           name="C1"),
             layers.MaxPooling2D(name="S2"), layers.Flatten()]
    if dropout:
        stack.append(layers.Dropout(dropout, seed=3))
    stack.append(layers.Dense(3, activation="softmax", kernel_initializer="he_uniform",
                              name="F6"))
    return models.Sequential(stack, name="small")


def adam():
    return optimizers.Adam(schedules.ExponentialDecay(0.02, decay_steps=3, decay_rate=0.7),
                           amsgrad=True, weight_decay=0.01, clipnorm=2.0)


def slots_of(model):
    return model.optimizer.get_slot_arrays(model._trainable_table())


def arrays_of(path):
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@contextlib.contextmanager
def unchanged(model):
    """The block (a refused call) leaves the weights of ``model`` as they were."""
    before = model.get_weights()
    yield
    assert same(model.get_weights(), before)


# ------------------------------------------------------------------ weights files

def cnn(seed, filters=4, units=3):
    gpucnn.manual_seed(seed)
    return models.Sequential([
        layers.Conv2D(filters, 3, activation="tanh", input_shape=(8, 8, 1), name="C1"),
        layers.AveragePooling2D(name="S2"), layers.Flatten(name="Flatten"),
        layers.Dense(units, activation="softmax", name="Output")], name="net")


@pytest.fixture
def saved_weights(tmp_path):
    model = cnn(1)
    path = tmp_path / "net.weights.npz"
    model.save_weights(path)
    return model, path


def test_round_trip_gives_identical_predictions(saved_weights, rng):
    model, path = saved_weights
    other = cnn(2)
    x = rng.standard_normal((5, 8, 8, 1)).astype(np.float32)
    assert not np.array_equal(other.predict(x, verbose=0), model.predict(x, verbose=0))
    other.load_weights(path)
    np.testing.assert_array_equal(other.predict(x, verbose=0), model.predict(x, verbose=0))
    assert same(other.get_weights(), model.get_weights())


def test_the_file_is_a_plain_npz_of_named_arrays(saved_weights):
    model, path = saved_weights
    with np.load(path, allow_pickle=False) as z:
        names = sorted(z.files)
        assert names == sorted(["C1/kernel", "C1/bias", "Output/kernel", "Output/bias",
                                wio.FORMAT_KEY])
        np.testing.assert_array_equal(z["C1/kernel"], model.layers[0].kernel.numpy())
        assert all(z[n].dtype != object for n in names)


def test_mismatched_shapes_are_listed_and_nothing_changes(saved_weights):
    _, path = saved_weights
    other = cnn(3, filters=5, units=2)
    with unchanged(other), pytest.raises(ValueError) as e:
        other.load_weights(path)
    msg = str(e.value)
    assert "nothing was loaded" in msg and "4 mismatches" in msg
    assert "shape of C1/kernel: model (3, 3, 1, 5), file (3, 3, 1, 4)" in msg
    assert "shape of Output/bias: model (2,), file (3,)" in msg


def test_missing_and_unexpected_names_are_listed(saved_weights, tmp_path):
    model, _ = saved_weights
    arrays = {n: model.layers[0].kernel.numpy() for n in ["C1/kernel"]}
    arrays["C9/kernel"] = np.zeros((2, 2), np.float32)
    path = tmp_path / "partial.npz"
    np.savez(path, **arrays)
    with unchanged(model), pytest.raises(ValueError) as e:
        model.load_weights(path)
    for part in ("missing from the file: C1/bias (4,)", "missing from the file: Output/kernel",
                 "not in the model: C9/kernel (2, 2)"):
        assert part in str(e.value)


def test_wrong_dtype_is_refused(saved_weights, tmp_path):
    model, path = saved_weights
    arrays = arrays_of(path)
    arrays["Output/bias"] = arrays["Output/bias"].astype(np.float64)
    bad = tmp_path / "f64.npz"
    np.savez(bad, **arrays)
    other = cnn(4)
    with unchanged(other), pytest.raises(ValueError, match="dtype of Output/bias: model float32, "
                                                           "file float64"):
        other.load_weights(bad)


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "pickle", "single_array"])
def test_damaged_files_are_refused_and_nothing_changes(saved_weights, tmp_path, damage):
    model, path = saved_weights
    data = path.read_bytes()
    bad = tmp_path / "bad.npz"
    if damage == "truncate":
        bad.write_bytes(data[: len(data) // 2])
    elif damage == "flip":  # corrupt the stored bytes of one member: the zip CRC check fails
        with zipfile.ZipFile(path) as z:
            info = z.getinfo("Output/kernel.npy")
        start = info.header_offset + 30 + len(info.filename) + len(info.extra) + 200
        bad.write_bytes(data[:start] + bytes(b ^ 0xFF for b in data[start:start + 16])
                        + data[start + 16:])
    elif damage == "garbage":
        bad.write_bytes(b"this is not a weights file\n" * 10)
    elif damage == "pickle":
        np.savez(bad, **{"C1/kernel": np.array([{"x": 1}], dtype=object)})
    else:
        np.save(bad.with_suffix(".npy"), np.zeros(3))
        os.replace(bad.with_suffix(".npy"), bad)
    other = cnn(5)
    with unchanged(other), pytest.raises(ValueError, match="load_weights: cannot read .* as a "
                                                           "gpucnn weights file"):
        other.load_weights(bad)


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="no such file"):
        cnn(0).load_weights("/nonexistent/dir/w.npz")


def half_a_file(f, *args, **kwargs):
    """``np.savez`` failing halfway through (a full disk)."""
    f.write(b"PK\x03\x04 half a file")
    raise OSError("disk full (simulated)")


def test_atomic_write_keeps_the_old_checkpoint_on_failure(saved_weights, monkeypatch):
    model, path = saved_weights
    good = path.read_bytes()
    with monkeypatch.context() as patch, pytest.raises(OSError, match="disk full"):
        patch.setattr(np, "savez", half_a_file)
        cnn(9).save_weights(path)
    assert path.read_bytes() == good
    assert sorted(os.listdir(path.parent)) == [path.name], "the temporary file was left behind"


def test_save_replaces_an_existing_file(saved_weights, rng):
    model, path = saved_weights
    other = cnn(6)
    other.save_weights(path)
    third = cnn(7)
    third.load_weights(path)
    x = rng.standard_normal((2, 8, 8, 1)).astype(np.float32)
    np.testing.assert_array_equal(third.predict(x, verbose=0), other.predict(x, verbose=0))
    with pytest.raises(FileExistsError):
        model.save_weights(path, overwrite=False)


class Pair(models.Model):
    """A Model subclass of two nested Sequentials (``name`` is its one constructor argument)."""

    def __init__(self, name="pair"):
        super().__init__(name=name)
        self.encoder = models.Sequential([layers.Dense(4, activation="relu")], name="encoder")
        self.decoder = models.Sequential([layers.Dense(3)], name="decoder")

    def call(self, x, training=False):
        return self.decoder(self.encoder(x, training), training)


def test_nested_model_weights_round_trip(tmp_path, rng):
    gpucnn.manual_seed(0)
    a = Pair()
    a.build((None, 5))
    a.save_weights(tmp_path / "pair.npz")
    with np.load(tmp_path / "pair.npz") as z:
        assert "encoder/dense/kernel" in z.files and "decoder/dense/bias" in z.files
    b = Pair()
    with pytest.raises(ValueError, match="not been built"):
        b.load_weights(tmp_path / "pair.npz")
    b.build((None, 5))
    b.load_weights(tmp_path / "pair.npz")
    x = rng.standard_normal((3, 5)).astype(np.float32)
    np.testing.assert_array_equal(a(x).numpy(), b(x).numpy())


def test_get_and_set_weights(rng):
    a, b = cnn(1), cnn(2)
    w = a.get_weights()
    assert [x.shape for x in w] == [(3, 3, 1, 4), (4,), (36, 3), (3,)]
    w[0][...] = 0  # a copy, not a view of the model
    assert not np.array_equal(a.get_weights()[0], w[0])
    b.set_weights(a.get_weights())
    x = rng.standard_normal((2, 8, 8, 1)).astype(np.float32)
    np.testing.assert_array_equal(a.predict(x, verbose=0), b.predict(x, verbose=0))
    bad = a.get_weights()
    bad[2] = np.zeros((35, 3), np.float32)
    with unchanged(b):
        with pytest.raises(ValueError, match=r"weight 2 \(Output/kernel\): model \(36, 3\), "
                                             r"given \(35, 3\)"):
            b.set_weights(bad)
        with pytest.raises(ValueError, match="has 4 weights, got 3"):
            b.set_weights(bad[:3])


# ------------------------------------------------------------------ whole-model round trip

def test_save_and_load_round_trip(tmp_path, rng):
    x, y = blobs(rng, 12)
    m = small_cnn(dropout=0.25)
    m.compile(adam(), "sparse_categorical_crossentropy", ["accuracy"])
    m.fit(x, y, batch_size=4, epochs=1, verbose=0)
    path = tmp_path / "model.npz"
    m.save(path)
    back = models.load_model(path)
    assert type(back) is models.Sequential and back.name == "small"
    assert back.get_config() == m.get_config()
    assert [la.name for la in back.layers] == ["C1", "S2", "flatten", "dropout", "F6"]
    assert back.layers[3].seed == 3 and back.layers[0].padding == "same"
    assert same(back.get_weights(), m.get_weights())
    np.testing.assert_array_equal(back.predict(x, verbose=0), m.predict(x, verbose=0))
    assert optimizers.serialize(back.optimizer) == optimizers.serialize(m.optimizer)
    assert back.optimizer.iterations == m.optimizer.iterations == 3
    got, want = slots_of(back), slots_of(m)
    assert sorted(got) == sorted(want) and len(want) == 4 * 3
    assert all(np.array_equal(got[k], want[k]) for k in want)
    assert back.loss.get_config() == m.loss.get_config()
    assert [(type(a), a.name) for a in back.compiled_metrics] == \
        [(type(a), a.name) for a in m.compiled_metrics]
    assert back.evaluate(x, y, verbose=0) == m.evaluate(x, y, verbose=0)


def test_the_file_is_plain_npy_arrays_without_pickle(tmp_path, rng):
    m = small_cnn()
    m.compile(optimizers.SGD(0.1, momentum=0.9), "sparse_categorical_crossentropy")
    path = tmp_path / "m.npz"
    m.save(path)
    with zipfile.ZipFile(path) as z:
        assert all(n.endswith(".npy") for n in z.namelist())
    arrays = arrays_of(path)
    assert all(a.dtype != object for a in arrays.values())
    header = json.loads(str(arrays["__gpucnn_model__"][()]))
    assert header["format"] == "gpucnn.model" and header["format_version"] == 1
    assert header["model"]["config"]["layers"][0]["config"]["input_shape"] == [8, 8, 1]
    assert header["optimizer_state"] == {"iterations": 0, "slots": ["momentum"]}
    assert sorted(k for k in arrays if k.startswith("optimizer/")) == [
        "optimizer/C1/bias/momentum", "optimizer/C1/kernel/momentum",
        "optimizer/F6/bias/momentum", "optimizer/F6/kernel/momentum"]


def test_uncompiled_and_subclassed_models(tmp_path, rng):
    x = rng.standard_normal((5, 3)).astype(np.float32)
    net = Pair(name="net")
    net(x)
    net.save(tmp_path / "net.npz")
    with pytest.raises(ValueError, match=r"unknown model type 'Pair'.*"
                                         r"custom_objects=\{'Pair': Pair\}"):
        models.load_model(tmp_path / "net.npz")
    back = models.load_model(tmp_path / "net.npz", custom_objects={"Pair": Pair})
    assert back.name == "net" and back.optimizer is None
    np.testing.assert_array_equal(back.predict(x, verbose=0), net.predict(x, verbose=0))


def test_a_custom_loss_function_needs_custom_objects(tmp_path, rng):
    def halved_mse(y_true, y_pred):
        return F.mse(y_true, y_pred) * 0.5

    m = models.Sequential([layers.Dense(2, input_shape=(3,))])
    m.compile("adagrad", halved_mse)
    path = tmp_path / "m.npz"
    m.save(path)
    with pytest.raises(ValueError, match="loss function 'halved_mse'.*custom_objects"):
        models.load_model(path)
    assert models.load_model(path, compile=False).optimizer is None
    back = models.load_model(path, custom_objects={"halved_mse": halved_mse})
    assert back.loss.fn is halved_mse and type(back.optimizer) is optimizers.Adagrad


def test_loading_leaves_the_random_generator_alone(tmp_path):
    m = small_cnn()
    m.save(tmp_path / "m.npz")
    gpucnn.manual_seed(5)
    before = gpucnn.random.generator().bit_generator.state
    models.load_model(tmp_path / "m.npz")
    assert gpucnn.random.generator().bit_generator.state == before


# ------------------------------------------------------------------ resume where it stopped

class StopAfter(callbacks.Callback):
    def __init__(self, epochs):
        super().__init__()
        self.epochs = epochs

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epochs:
            self.model.stop_training = True


def resume_matches(tmp_path, x, y, build, epochs, half, batch_size):
    """Weights, optimizer state and step count of an uninterrupted fit against a fit stopped
    after ``half`` epochs (whole-model checkpoint each epoch), reloaded and continued."""
    gpucnn.manual_seed(11)
    straight = build()
    straight.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0)

    gpucnn.manual_seed(11)
    first = build()
    ckpt = tmp_path / "ckpt-{epoch}.npz"
    first.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0,
              callbacks=[callbacks.ModelCheckpoint(str(ckpt), monitor="loss"), StopAfter(half)])
    assert sorted(os.listdir(tmp_path)) == [f"ckpt-{e + 1}.npz" for e in range(half)]
    resumed = models.load_model(tmp_path / f"ckpt-{half}.npz")
    assert resumed.optimizer.iterations == first.optimizer.iterations
    resumed.fit(x, y, batch_size=batch_size, epochs=epochs, initial_epoch=half, verbose=0)
    assert resumed.optimizer.iterations == straight.optimizer.iterations
    assert same(resumed.get_weights(), straight.get_weights()), "weights differ from an " \
        "uninterrupted fit"
    s, r = slots_of(straight), slots_of(resumed)
    assert sorted(s) == sorted(r) and all(np.array_equal(s[k], r[k]) for k in s)
    assert not same(first.get_weights(), straight.get_weights())   # the second half did train


def test_resume_after_reload_equals_an_uninterrupted_fit(tmp_path, rng):
    x, y = blobs(rng, 24)

    def build():
        m = small_cnn()
        m.compile(adam(), "sparse_categorical_crossentropy", ["accuracy"])
        return m

    resume_matches(tmp_path, x, y, build, epochs=4, half=2, batch_size=8)


def test_resume_on_the_cuda_backend(tmp_path, rng, cuda_backend):
    """The same on the cuda kernels (the simulator without a GPU): a tiny model, 2 steps per
    epoch, stopped after one of two epochs."""
    assert gpucnn.get_backend() == "cuda"
    x, y = blobs(rng, 6, shape=(4, 4, 1))

    def build():
        m = models.Sequential([
            layers.Conv2D(2, 3, activation="relu", padding="same", input_shape=(4, 4, 1)),
            layers.Flatten(), layers.Dense(3, activation="softmax")])
        m.compile(optimizers.RMSprop(schedules.PiecewiseConstantDecay([1], [0.02, 0.01]),
                                     momentum=0.5, centered=True, weight_decay=0.01),
                  "sparse_categorical_crossentropy")
        return m

    resume_matches(tmp_path, x, y, build, epochs=2, half=1, batch_size=3)


# ------------------------------------------------------------------ refusals

@pytest.fixture
def saved(tmp_path, rng):
    m = small_cnn()
    m.compile(optimizers.SGD(0.1, momentum=0.9), "sparse_categorical_crossentropy")
    x, y = blobs(rng, 8)
    m.fit(x, y, batch_size=4, epochs=1, verbose=0)
    path = tmp_path / "m.npz"
    m.save(path)
    return m, path


def rewrite(path, change):
    """Write ``change(arrays, header)``'s result back (arrays and header as the test edits)."""
    arrays = arrays_of(path)
    header = json.loads(str(arrays.pop("__gpucnn_model__")[()]))
    change(arrays, header)
    arrays["__gpucnn_model__"] = np.array(json.dumps(header))
    with open(path, "wb") as f:
        np.savez(f, **arrays)


# (change(arrays, header), the error, whether load_weights refuses the file too)
@pytest.mark.parametrize("change,match,weights", [
    (lambda a, h: h["model"]["config"]["layers"][0].update(class_name="Conv3D"),
     r"unknown layer type 'Conv3D' \(layer 'C1'\); expected one of \[.*'Conv2D'", False),
    (lambda a, h: h.update(format_version=2),
     r"model format version 2, written by a newer gpucnn; this gpucnn reads versions up to 1",
     False),
    (lambda a, h: a.pop("weights/C1/bias"), r"missing from the file: weights/C1/bias \(3,\)",
     True),
    (lambda a, h: a.update({"weights/C9/kernel": np.zeros(3, np.float32)}),
     r"not in the model: weights/C9/kernel \(3,\)", True),
    (lambda a, h: a.pop("optimizer/F6/kernel/momentum"),
     r"missing from the file: optimizer/F6/kernel/momentum \(48, 3\)", False),
    (lambda a, h: a.update({"weights/F6/kernel": np.zeros((5, 3), np.float32)}),
     r"shape of weights/F6/kernel: model \(48, 3\), file \(5, 3\)", True),
], ids=["unknown-layer", "newer-version", "missing-weight", "extra-array", "missing-slot",
        "wrong-shape"])
def test_a_file_that_does_not_match_is_refused(saved, change, match, weights):
    m, path = saved
    rewrite(path, change)
    with pytest.raises(ValueError, match=match) as err:
        models.load_model(path)
    assert f"load_model({str(path)!r})" in str(err.value)
    if weights:                                        # the weights: load_weights refuses too
        with unchanged(m), pytest.raises(ValueError, match="nothing was loaded"):
            m.load_weights(path)


def test_weights_only_and_foreign_files_are_refused(saved, tmp_path):
    m, _ = saved
    w = tmp_path / "w.npz"
    m.save_weights(w)
    with pytest.raises(ValueError, match="holds weights alone.*load_weights"):
        models.load_model(w)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="cannot read .*junk.npz' as a gpucnn model file"):
        models.load_model(junk)
    with pytest.raises(FileNotFoundError, match="no such file"):
        models.load_model(tmp_path / "nope.npz")


def test_a_failed_save_leaves_the_old_file(saved, tmp_path, monkeypatch):
    m, path = saved
    before = path.read_bytes()
    odd = models.Sequential([layers.Dense(2, activation=lambda t: F.relu(t) * 2,
                                          input_shape=(3,))])
    with pytest.raises(ValueError, match="layer 'dense' .*custom function"):
        odd.save(path)
    with pytest.raises(FileExistsError, match="overwrite=False"):
        m.save(path, overwrite=False)
    with monkeypatch.context() as patch, pytest.raises(OSError, match="disk full"):
        patch.setattr(np, "savez", half_a_file)
        m.save(path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["m.npz"]
    with pytest.raises(ValueError, match="has not been built"):
        models.Sequential([layers.Dense(2)]).save(tmp_path / "x.npz")


# ------------------------------------------------------------------ ModelCheckpoint

def test_model_checkpoint_whole_model_or_weights_only(tmp_path, rng):
    x, y = blobs(rng, 8)
    m = small_cnn()
    m.compile(adam(), "sparse_categorical_crossentropy")
    m.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[
        callbacks.ModelCheckpoint(tmp_path / "whole.npz", monitor="loss"),
        callbacks.ModelCheckpoint(tmp_path / "w.npz", monitor="loss", save_weights_only=True)])
    back = models.load_model(tmp_path / "whole.npz")
    assert same(back.get_weights(), m.get_weights()) and back.optimizer.iterations == 2
    with pytest.raises(ValueError, match="holds weights alone"):
        models.load_model(tmp_path / "w.npz")
    probe = small_cnn()
    probe.load_weights(tmp_path / "w.npz")
    assert same(probe.get_weights(), m.get_weights())


def test_model_checkpoint_refuses_an_unsavable_model_before_training(tmp_path, rng):
    x = rng.standard_normal((4, 3)).astype(np.float32)
    m = models.Sequential([layers.Dense(2, activation=lambda t: F.tanh(t), input_shape=(3,))])
    m.compile("sgd", "mse")
    before = m.get_weights()
    with pytest.raises(ValueError, match="ModelCheckpoint: cannot save the whole model: layer "
                                         "'dense' .*save_weights_only=True"):
        m.fit(x, x[:, :2], epochs=1, verbose=0,
              callbacks=[callbacks.ModelCheckpoint(tmp_path / "c.npz", monitor="loss")])
    assert same(m.get_weights(), before) and os.listdir(tmp_path) == []
    m.fit(x, x[:, :2], epochs=1, verbose=0, callbacks=[
        callbacks.ModelCheckpoint(tmp_path / "c.npz", monitor="loss", save_weights_only=True)])
    assert os.listdir(tmp_path) == ["c.npz"]
