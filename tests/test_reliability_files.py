"""Issue 24, cases 2-5: files. Every writer a fit uses is checked before the first step (the
error names the writer and the path); ``save(overwrite=True)`` replaces a read-only file as
``save_weights(overwrite=True)`` does; hostile model files (a FIFO, sizes beyond the file's
bytes, an architecture asking for more than its arrays, a deep header, format_version < 1) are
refused before anything is allocated or assigned; resume in a new process is exact with
shuffling on, on both backends (the batch order's generator travels in the model file)."""
import json
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import gpucnn
from gpucnn import callbacks, layers, models
from gpucnn.models import saving

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _numpy_backend():
    gpucnn.set_backend("numpy")


def compiled(seed=0):
    gpucnn.manual_seed(seed)
    model = models.Sequential([layers.Dense(3, activation="relu", input_shape=(4,), name="h"),
                               layers.Dense(2, activation="softmax", name="out")], name="m")
    model.compile("sgd", "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def data(seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((24, 4)).astype(np.float32), rng.integers(0, 2, 24)


# -- case 2: writers checked before the first step -------------------------------------------
def read_only(path):
    path.write_text("old\n")
    path.chmod(0o444)
    return path


@pytest.mark.parametrize("make,error,words", [
    (lambda d: callbacks.ModelCheckpoint(str(d / "no" / "ckpt.npz")), FileNotFoundError,
     "ModelCheckpoint: cannot write '.*no/ckpt.npz': the folder .* does not exist"),
    (lambda d: callbacks.ModelCheckpoint(str(read_only(d / "ckpt.npz")), monitor="loss"),
     PermissionError, "ModelCheckpoint: will not replace '.*ckpt.npz': it is read-only"),
    (lambda d: callbacks.ModelCheckpoint(str(d / "ckpt-{val_accuracy:.2f}.npz")), ValueError,
     "ModelCheckpoint: cannot format filepath '.*ckpt-{val_accuracy:.2f}.npz' with epoch and "
     "the logs .*'accuracy'.*KeyError: 'val_accuracy'"),
    (lambda d: callbacks.ModelCheckpoint("/sys/ckpt.npz"), PermissionError,
     "ModelCheckpoint: cannot write '/sys/ckpt.npz': cannot create a file in its folder"),
    (lambda d: callbacks.CSVLogger(d / "no" / "log.csv"), FileNotFoundError,
     "CSVLogger: cannot write '.*no/log.csv': the folder .* does not exist"),
    (lambda d: callbacks.CSVLogger(read_only(d / "log.csv")), PermissionError,
     "CSVLogger: will not replace '.*log.csv': it is read-only"),
], ids=["checkpoint-no-folder", "checkpoint-read-only", "checkpoint-format-key",
        "checkpoint-folder-not-writable", "csv-no-folder", "csv-read-only"])
def test_a_writer_that_would_fail_stops_fit_before_the_first_step(make, error, words, tmp_path):
    model, (x, y) = compiled(), data()
    before = model.get_weights()
    with pytest.raises(error, match=words):
        model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[make(tmp_path)])
    assert model.optimizer.iterations == 0
    for w, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(w, b)


def test_the_examples_check_the_picture_folder_before_training():
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "perceptron.py"), "--out",
                        "/sys/gpucnn-pictures", "--epochs", "1", "--backend", "numpy"],
                       capture_output=True, text=True, timeout=120, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 2, r.stderr
    assert "--out /sys/gpucnn-pictures: cannot create the folder or write in it" in r.stderr
    assert "Epoch" not in r.stdout and "Traceback" not in r.stderr


# -- case 3: save(overwrite=True) ------------------------------------------------------------
def test_save_with_overwrite_true_replaces_a_read_only_file_as_save_weights_does(tmp_path):
    model = compiled()
    for save in (model.save, model.save_weights):
        path = read_only(tmp_path / f"{save.__name__}.npz")
        with pytest.raises(PermissionError, match="read-only"):
            save(path, overwrite=None)
        save(path, overwrite=True)
        assert stat.S_IMODE(path.stat().st_mode) == 0o444      # replaced, its mode kept
        probe = compiled(seed=1)
        probe.load_weights(path)
        for w, b in zip(probe.get_weights(), model.get_weights()):
            np.testing.assert_array_equal(w, b)


# -- case 4: hostile model files ---------------------------------------------------------------
def test_load_model_refuses_a_fifo_without_opening_it(tmp_path):
    fifo = tmp_path / "m.npz"
    os.mkfifo(fifo)
    held = os.open(fifo, os.O_RDWR)                # a load that opened it would read, not fail
    try:
        for load in (models.load_model, compiled().load_weights):
            with pytest.raises(OSError, match=r"m.npz' is a FIFO \(named pipe\), not a"):
                load(fifo)
    finally:
        os.close(held)


def rewrite(path, change, text=lambda t: t):
    """The model file at ``path`` rewritten with ``change(arrays, header)`` applied, and then
    ``text`` to the header's JSON text."""
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    header = json.loads(str(arrays[saving.HEADER_KEY][()]))
    change(arrays, header)
    arrays[saving.HEADER_KEY] = np.array(text(json.dumps(header)))
    np.savez(path, **arrays)


def test_an_architecture_asking_for_more_than_the_file_holds_is_refused_before_it_allocates(
        tmp_path, monkeypatch):
    path = tmp_path / "m.npz"
    compiled().save(path)
    rewrite(path, lambda a, h: h["model"]["config"]["layers"][0]["config"].update(units=10**10))
    made = []
    monkeypatch.setattr(np, "zeros", lambda *a, **k: made.append(a) or np.empty(0))
    with pytest.raises(ValueError, match=r"load_model\('.*m.npz'\): layer 'h' asks for a weight "
                                         r"'kernel' of shape \(4, 10000000000\) \(160000000000 "
                                         r"bytes\), more than the file's arrays account for"):
        models.load_model(path)
    assert not made


def test_an_entry_declaring_more_bytes_than_it_holds_is_refused_before_reading(tmp_path):
    path = tmp_path / "m.npz"
    compiled().save(path)
    with zipfile.ZipFile(path) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    raw = entries["weights/h/kernel.npy"]              # the header's shape made 2e7 times larger
    entries["weights/h/kernel.npy"] = raw.replace(b"(4, 3)", b"(80000000, 3)".ljust(6))
    with zipfile.ZipFile(path, "w") as z:
        for n, b in entries.items():
            z.writestr(n, b)
    for load in (models.load_model, compiled().load_weights):
        with pytest.raises(ValueError, match=r"entry 'weights/h/kernel.npy' declares an array of "
                                             r"shape \(80000000, 3\) float32 \(960000000 bytes\) "
                                             r"but holds \d+ bytes"):
            load(path)


def test_a_deeply_nested_header_is_refused_without_a_recursion_error(tmp_path):
    path = tmp_path / "m.npz"
    compiled().save(path)
    rewrite(path, lambda a, h: None, lambda t: t[:-1] + ', "deep": ' + "[" * 3000 + "]" * 3000
            + "}")
    with pytest.raises(ValueError, match="nests deeper than 64 levels"):
        models.load_model(path)
    compiled().save(path)
    rewrite(path, lambda a, h: h.update(note='"[[[[ \\" {{{{' * 100))
    models.load_model(path)                        # brackets and quotes inside strings are text


@pytest.mark.parametrize("version", [0, -7])
def test_a_format_version_below_1_is_refused(version, tmp_path):
    path = tmp_path / "m.npz"
    compiled().save(path)
    rewrite(path, lambda a, h: h.update(format_version=version))
    with pytest.raises(ValueError, match=rf"no valid format_version: expected an int from 1 to "
                                         rf"1, got {version}"):
        models.load_model(path)


# -- case 5: resume in a new process is exact ------------------------------------------------
RESUME = r"""
import sys, numpy as np, gpucnn
from gpucnn import layers, models
backend, mode, path = sys.argv[1:]
if backend == "cuda":
    from gpucnn.kernels.cuda_set import simulate
    simulate.small_launches().__enter__()
gpucnn.set_backend(backend)
rng = np.random.default_rng(3)
x, y = rng.standard_normal((20, 4)).astype(np.float32), rng.integers(0, 2, 20)
if mode == "resume":
    model = models.load_model(path)
    state = gpucnn.random.generator().bit_generator.state
    model.fit(x, y, batch_size=6, epochs=3, initial_epoch=1, verbose=0)
    assert state != gpucnn.random.generator().bit_generator.state
else:
    gpucnn.manual_seed(0)
    model = models.Sequential([layers.Dense(3, activation="relu", input_shape=(4,)),
                               layers.Dropout(0.3), layers.Dense(2, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=6, epochs=1 if mode == "first" else 3, verbose=0)
    if mode == "first":
        model.save(path)
        gpucnn.manual_seed(99)                     # what the saving process does next is its own
np.save(path + f".{mode}.npy", np.concatenate([w.ravel() for w in model.get_weights()]))
"""


@pytest.mark.parametrize("backend", ["numpy", "cuda"])
def test_resume_in_a_new_process_is_exact_with_shuffling(backend, tmp_path):
    path = str(tmp_path / "m.npz")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NUMBA_ENABLE_CUDASIM": "1"}
    for mode in ("whole", "first", "resume"):
        r = subprocess.run([sys.executable, "-c", RESUME, backend, mode, path], env=env,
                           capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert r.returncode == 0, r.stderr[-3000:]
    np.testing.assert_array_equal(np.load(path + ".resume.npy"), np.load(path + ".whole.npy"))


def test_load_model_leaves_the_global_generator_alone(tmp_path):
    path = tmp_path / "m.npz"
    compiled().save(path)
    gpucnn.manual_seed(7)
    state = gpucnn.random.generator().bit_generator.state
    models.load_model(path)
    assert gpucnn.random.generator().bit_generator.state == state
