"""Weights on disk: the .npz format, the round trip, refusal of mismatched, truncated, corrupted and
pickled files (leaving the model unchanged), atomic writes, get/set_weights."""
import os
import zipfile

import numpy as np
import pytest

import gpucnn
from gpucnn import io as wio
from gpucnn import layers, models


@pytest.fixture(autouse=True)
def _numpy_backend():
    gpucnn.set_backend("numpy")


def cnn(seed, filters=4, units=3):
    gpucnn.manual_seed(seed)
    return models.Sequential([
        layers.Conv2D(filters, 3, activation="tanh", input_shape=(8, 8, 1), name="C1"),
        layers.AveragePooling2D(name="S2"), layers.Flatten(name="Flatten"),
        layers.Dense(units, activation="softmax", name="Output")], name="net")


def weights_of(model):
    return [w.copy() for w in model.get_weights()]


def unchanged(model, before):
    return all(np.array_equal(a, b) for a, b in zip(model.get_weights(), before))


@pytest.fixture
def saved(tmp_path):
    model = cnn(1)
    path = tmp_path / "net.weights.npz"
    model.save_weights(path)
    return model, path


def test_round_trip_gives_identical_predictions(saved, rng):
    model, path = saved
    other = cnn(2)
    x = rng.standard_normal((5, 8, 8, 1)).astype(np.float32)
    assert not np.array_equal(other.predict(x, verbose=0), model.predict(x, verbose=0))
    other.load_weights(path)
    np.testing.assert_array_equal(other.predict(x, verbose=0), model.predict(x, verbose=0))
    for a, b in zip(other.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_the_file_is_a_plain_npz_of_named_arrays(saved):
    model, path = saved
    with np.load(path, allow_pickle=False) as z:
        names = sorted(z.files)
        assert names == sorted(["C1/kernel", "C1/bias", "Output/kernel", "Output/bias",
                                wio.FORMAT_KEY])
        np.testing.assert_array_equal(z["C1/kernel"], model.layers[0].kernel.numpy())
        assert all(z[n].dtype != object for n in names)


def test_mismatched_shapes_are_listed_and_nothing_changes(saved):
    _, path = saved
    other = cnn(3, filters=5, units=2)
    before = weights_of(other)
    with pytest.raises(ValueError) as e:
        other.load_weights(path)
    msg = str(e.value)
    assert "nothing was loaded" in msg and "4 mismatches" in msg
    assert "shape of C1/kernel: model (3, 3, 1, 5), file (3, 3, 1, 4)" in msg
    assert "shape of Output/bias: model (2,), file (3,)" in msg
    assert unchanged(other, before)


def test_missing_and_unexpected_names_are_listed(saved, tmp_path):
    model, _ = saved
    arrays = {n: model.layers[0].kernel.numpy() for n in ["C1/kernel"]}
    arrays["C9/kernel"] = np.zeros((2, 2), np.float32)
    path = tmp_path / "partial.npz"
    np.savez(path, **arrays)
    before = weights_of(model)
    with pytest.raises(ValueError) as e:
        model.load_weights(path)
    msg = str(e.value)
    for part in ("missing from the file: C1/bias (4,)", "missing from the file: Output/kernel",
                 "not in the model: C9/kernel (2, 2)"):
        assert part in msg
    assert unchanged(model, before)


def test_wrong_dtype_is_refused(saved, tmp_path):
    model, path = saved
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["Output/bias"] = arrays["Output/bias"].astype(np.float64)
    bad = tmp_path / "f64.npz"
    np.savez(bad, **arrays)
    other = cnn(4)
    before = weights_of(other)
    with pytest.raises(ValueError, match="dtype of Output/bias: model float32, file float64"):
        other.load_weights(bad)
    assert unchanged(other, before)


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "pickle", "single_array"])
def test_damaged_files_are_refused_and_nothing_changes(saved, tmp_path, damage):
    model, path = saved
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
    before = weights_of(other)
    with pytest.raises(ValueError, match="load_weights: cannot read .* as a gpucnn weights file"):
        other.load_weights(bad)
    assert unchanged(other, before)


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="no such file"):
        cnn(0).load_weights("/nonexistent/dir/w.npz")


def test_atomic_write_keeps_the_old_checkpoint_on_failure(saved, monkeypatch):
    model, path = saved
    good = path.read_bytes()
    real_savez = np.savez

    def crash(f, *a, **k):
        f.write(b"PK\x03\x04 half a file")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(OSError, match="disk full"):
        cnn(9).save_weights(path)
    monkeypatch.setattr(np, "savez", real_savez)
    assert path.read_bytes() == good
    assert sorted(os.listdir(path.parent)) == [path.name], "the temporary file was left behind"


def test_save_replaces_an_existing_file(saved, rng):
    model, path = saved
    other = cnn(6)
    other.save_weights(path)
    third = cnn(7)
    third.load_weights(path)
    x = rng.standard_normal((2, 8, 8, 1)).astype(np.float32)
    np.testing.assert_array_equal(third.predict(x, verbose=0), other.predict(x, verbose=0))
    with pytest.raises(FileExistsError):
        model.save_weights(path, overwrite=False)


def test_nested_model_weights_round_trip(tmp_path, rng):
    class Pair(models.Model):
        def __init__(self):
            super().__init__(name="pair")
            self.encoder = models.Sequential([layers.Dense(4, activation="relu")], name="encoder")
            self.decoder = models.Sequential([layers.Dense(3)], name="decoder")

        def call(self, x, training=False):
            return self.decoder(self.encoder(x))

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
    before = weights_of(b)
    bad = a.get_weights()
    bad[2] = np.zeros((35, 3), np.float32)
    with pytest.raises(ValueError, match=r"weight 2 \(Output/kernel\): model \(36, 3\), given \(35, 3\)"):
        b.set_weights(bad)
    with pytest.raises(ValueError, match="has 4 weights, got 3"):
        b.set_weights(bad[:3])
    assert unchanged(b, before)
