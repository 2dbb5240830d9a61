"""Issue 24, cases 6 and 7: a Layer subclass defining only ``call`` trains in a Sequential (its
output shape found by calling it on zeros, as Keras does; a failure names the layer and the
method to add); arguments that were accepted or failed deep now get a clear error naming the
call and what was expected against what was received; models pickle through the ``.npz`` file
``save`` writes; a second thread fitting the same model is refused."""
import pickle
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import gpucnn
import gpucnn.functional as F
from gpucnn import callbacks, layers, losses, models

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _numpy_backend():
    gpucnn.set_backend("numpy")


def compiled(*middle, loss="sparse_categorical_crossentropy", dtype=None):
    gpucnn.manual_seed(0)
    kw = {} if dtype is None else {"dtype": dtype}
    model = models.Sequential([layers.Dense(3, input_shape=(4,), name="h"), *middle,
                               layers.Dense(2, activation="softmax", name="out")], **kw)
    model.compile("sgd", loss)
    return model


def data(n=16):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, 4)).astype(np.float32), rng.integers(0, 2, n)


# -- case 6 -----------------------------------------------------------------------------------
class Squash(layers.Layer):
    """Keras-style: ``call`` alone."""

    def call(self, x, training=False):
        return F.tanh(x)


class NeedsData(layers.Layer):
    def call(self, x, training=False):
        if not np.any(x.data):
            raise ValueError("all zeros")
        return F.tanh(x)


def test_a_layer_with_call_alone_trains_in_a_sequential():
    model = compiled(Squash(name="squash"))
    x, y = data()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert model.layers[1].output_shape == (None, 3)
    reference = compiled(layers.Activation("tanh", name="squash"))   # the same network
    reference.fit(x, y, batch_size=8, epochs=1, verbose=0)
    for w, r in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(w, r, rtol=1e-6)


def test_a_layer_whose_shape_cannot_be_inferred_names_itself_and_the_method_to_add():
    with pytest.raises(ValueError, match=r"layer 'picky' \(NeedsData\): cannot infer the "
                                         r"output shape for input \(None, 3\) by calling the "
                                         r"layer on zeros \(ValueError: all zeros\); define "
                                         r"compute_output_shape\(self, input_shape\) in "
                                         r"NeedsData"):
        compiled(NeedsData(name="picky"))          # built from its input_shape: refused there


# -- case 7 -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,words", [
    (dict(validation_split="0.2"), r"validation_split expected a number in \[0, 1\), received "
                                   r"'0.2' \(str\)"),
    (dict(validation_split="abc"), r"validation_split expected a number in \[0, 1\), received "
                                   r"'abc' \(str\)"),
    (dict(initial_epoch=-3), r"initial_epoch expected an int >= 0 \(the epoch to start from\), "
                             r"received -3"),
], ids=["split-str", "split-abc", "initial-epoch-negative"])
def test_fit_arguments_are_refused_with_what_was_expected(kwargs, words):
    model = compiled()
    with pytest.raises(ValueError, match="fit: " + words):
        model.fit(*data(), epochs=1, verbose=0, **kwargs)
    assert model.optimizer.iterations == 0


def test_reduce_lr_on_plateau_refuses_a_nan_min_delta():
    with pytest.raises(ValueError, match=r"ReduceLROnPlateau: min_delta must be a number >= 0, "
                                         r"got nan"):
        callbacks.ReduceLROnPlateau(min_delta=float("nan"))


def test_a_model_pickles_through_the_npz_file_with_no_code_in_it():
    model = compiled()
    model.fit(*data(), batch_size=8, epochs=1, verbose=0)
    blob = pickle.dumps(model)
    start = blob.index(b"PK\x03\x04")              # the archive save writes, as bytes
    assert b"c__builtin__" not in blob and b"builtins" not in blob
    copy = pickle.loads(blob)
    assert copy.__dict__.get("_random_state") is None     # a copy is no resume: fit draws anew
    for w, r in zip(copy.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(w, r)
    assert copy.optimizer.iterations == model.optimizer.iterations == 2 and start > 0
    x, y = data()
    np.testing.assert_array_equal(copy.predict(x, verbose=0), model.predict(x, verbose=0))


def test_layers_of_another_dtype_than_the_model_are_named_before_training():
    model = compiled(layers.Dense(3, dtype="float64", name="wide"))
    with pytest.raises(TypeError, match=r"fit: layer 'wide' \(Dense\) has dtype float64, model "
                                        r"'sequential.*' computes in float32; give the model the "
                                        r"same dtype"):
        model.fit(*data(), verbose=0)


def test_a_loss_of_ones_own_gets_integer_labels_as_they_are():
    seen = []

    def my_loss(y_true, y_pred):
        seen.append(y_true.dtype)
        return losses.sparse_categorical_crossentropy(y_true, y_pred)

    model = compiled(loss=my_loss)
    model.fit(*data(), batch_size=8, epochs=1, verbose=0)
    assert seen and all(np.dtype(d).kind == "i" for d in seen), seen


def test_a_second_thread_fitting_the_same_model_gets_a_clear_error():
    model = compiled()
    started, release = threading.Event(), threading.Event()
    hold = callbacks.LambdaCallback(on_train_begin=lambda logs: (started.set(), release.wait(30)))
    first = threading.Thread(target=lambda: model.fit(*data(), verbose=0, callbacks=[hold]),
                             name="trainer-1")
    first.start()
    assert started.wait(30)
    try:
        for call in (lambda: model.fit(*data(), verbose=0), lambda: model.train_on_batch(*data())):
            with pytest.raises(RuntimeError, match=r"model 'sequential.*' is being trained by "
                                                   r"thread 'trainer-1'; train a model from one "
                                                   r"thread at a time"):
                call()
    finally:
        release.set()
        first.join(60)
    model.fit(*data(), verbose=0)                  # free again once the first fit is done


def test_the_examples_refuse_a_negative_seed_in_one_line():
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "perceptron.py"), "--seed", "-5"],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "argument --seed: expected an integer >= 0, got '-5'" in r.stderr


# -- case 8: the README's commands and the offline fetch --------------------------------------
def readme_commands():
    """Every shell command of the README (two words or more): the lines of its shell blocks and
    its inline code spans, split at ``&&``, comments removed."""
    lines, lang, prose = [], None, []
    for ln in (ROOT / "README.md").read_text().splitlines():
        if ln.startswith("```"):
            lang = ln[3:].strip() if lang is None else None
        elif lang is None:
            prose.append(ln)
        elif lang in ("", "sh"):
            lines.append(ln)
    lines += re.findall(r"`([^`]+)`", "\n".join(prose))
    commands = [c.split("#")[0].split() for ln in lines for c in ln.split("&&")]
    return [c for c in commands if len(c) > 1]          # a lone word is a name, not a command


def test_every_readme_command_runs_from_the_shell_of_the_first_two():
    tools = {"python", "pip", "pytest", "mpiexec", "mkdocs"}
    bare = [" ".join(c) for c in readme_commands() if c[0] in tools
            or (c[0] in {".venv/bin/mpiexec", "srun"} and "python" in c)]
    assert not bare, f"commands that need an activated venv: {bare}"
    assert any(c[:1] == [".venv/bin/mpiexec"] for c in readme_commands())
    assert "about 15 minutes on 2 cores" in (ROOT / "README.md").read_text()


def test_an_offline_fetch_says_where_to_put_the_files_by_hand(tmp_path, capsys):
    from gpucnn.datasets import __main__ as cli

    with socket.socket() as s:              # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert cli.main(["fetch", "mnist", "--split", "test", "--dir", str(tmp_path / "d"),
                     "--mirror", f"http://127.0.0.1:{port}/"]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert (f"without a network, put the file by hand at {tmp_path / 'd'}/t10k-images-idx3-ubyte"
            f".gz (from http://127.0.0.1:{port}/t10k-images-idx3-ubyte.gz; its SHA-256 is "
            "checked)") in err, err
