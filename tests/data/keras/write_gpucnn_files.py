"""Write the guide's five networks from gpucnn as Keras ``.keras`` files, for Keras to load.

Run with gpucnn's Python, then check the folder with Keras's (see make_keras_files.py)::

    .venv/bin/python tests/data/keras/write_gpucnn_files.py /tmp/from_gpucnn
    /tmp/k3/bin/python tests/data/keras/make_keras_files.py check /tmp/from_gpucnn

and the other way (the same networks written by Keras, loaded by gpucnn)::

    /tmp/k3/bin/python tests/data/keras/make_keras_files.py write /tmp/from_keras
    .venv/bin/python tests/data/keras/write_gpucnn_files.py check /tmp/from_keras

Each network (``gpucnn.zoo`` at its default size, AlexNet's 62 million parameters included) takes
one training step, is saved as ``<name>.keras`` with its predictions on fixed inputs beside it
(``<name>.keras.npz``: ``x``, ``y``), then takes one more step on ``(x, t)`` whose predictions
(``y1``) Keras must reproduce from the saved optimizer state (not AlexNet: its dropout masks
differ between the libraries).
"""
import sys
from pathlib import Path

import numpy as np

import gpucnn
from gpucnn import optimizers, zoo
from gpucnn.models import load_model

NETWORKS = {
    "perceptron": (lambda: zoo.perceptron(64), optimizers.Adagrad, "binary_crossentropy"),
    "basic_cnn": (zoo.basic_cnn, optimizers.Adam, "sparse_categorical_crossentropy"),
    "lenet5": (zoo.lenet5, lambda: optimizers.SGD(0.01, momentum=0.9),
               "sparse_categorical_crossentropy"),
    "conv_autoencoder": (zoo.conv_autoencoder, optimizers.RMSprop, "mse"),
    "alexnet": (zoo.alexnet, optimizers.SGD, "sparse_categorical_crossentropy"),
}


def main(folder):
    gpucnn.manual_seed(0)
    rng = np.random.default_rng(0)
    for name, (build, optimizer, loss) in NETWORKS.items():
        model = build()
        x = rng.random((2,) + model.input_shape[1:], dtype=np.float32)
        t = x if name == "conv_autoencoder" else (
            np.array([[0.0], [1.0]], np.float32) if name == "perceptron" else np.array([1, 3]))
        model.compile(optimizer=optimizer(), loss=loss)
        model.train_on_batch(x, t)
        model.save(f"{folder}/{name}.keras")
        out = {"x": x, "y": np.asarray(model.predict(x, verbose=0))}
        if name != "alexnet":
            model.train_on_batch(x, t)
            out.update(t=t, y1=np.asarray(model.predict(x, verbose=0)))
        np.savez(f"{folder}/{name}.keras.npz", **out)
        print(f"{name}: {model.count_params():,} parameters written", flush=True)


def check(folder):
    """Load every ``*.keras`` file Keras wrote into ``folder`` (``make_keras_files.py write``)
    and compare gpucnn's predictions with Keras's; returns the largest difference."""
    worst = 0.0
    for path in sorted(Path(folder).glob("*.keras")):
        ref = np.load(f"{path}.npz")
        model = load_model(path)
        diff = float(np.abs(np.asarray(model.predict(ref["x"], verbose=0)) - ref["y"]).max())
        worst = max(worst, diff)
        print(f"{path.name}: {model.count_params():,} parameters, "
              f"{type(model.optimizer).__name__} at step {model.optimizer.iterations}; largest "
              f"|gpucnn - Keras| = {diff:.3g}")
    return worst


if __name__ == "__main__":
    if sys.argv[1:2] == ["check"]:
        sys.exit(0 if check(sys.argv[2]) <= 1e-5 else 1)
    main(sys.argv[-1])
