"""Make the Keras files gpucnn's tests load, with real Keras, and check gpucnn's files in Keras.

Not run by the tests (they need no TensorFlow): run it in an environment with Keras 3, and once
more in one with TensorFlow 2.15 (tf.keras 2, for its legacy ``.h5`` file)::

    python -m venv /tmp/k3 && /tmp/k3/bin/pip install tensorflow-cpu scikit-learn
    python -m venv /tmp/k2 && /tmp/k2/bin/pip install 'tensorflow-cpu==2.15.*' scikit-learn
    /tmp/k3/bin/python tests/data/keras/make_keras_files.py
    /tmp/k2/bin/python tests/data/keras/make_keras_files.py

(``make_keras_files.py make NAME...`` remakes only the files named.)

Each network of the guide is written with the layers of the guide's code (tiny sizes except
LeNet-5, which is trained on scikit-learn's digits as in examples/guide.ipynb). Beside the files,
``predictions.npz`` keeps fixed inputs and Keras's outputs for them (``x/<file>``, ``y/<file>``),
the targets of one more training step after saving and the outputs after it (``t/``, ``y1/``),
and ``MANIFEST.json`` says which Keras, TensorFlow, NumPy and h5py made each file.

``make_keras_files.py check DIR`` loads every ``*.keras`` file in DIR (written by gpucnn's
``write_gpucnn_files.py``, with its predictions in ``DIR/<file>.npz``) with
``keras.models.load_model`` and prints the largest absolute difference of Keras's predictions
from gpucnn's, before and after one more training step in each. ``make_keras_files.py write
DIR`` writes the guide's networks at full size for ``write_gpucnn_files.py check DIR``.
"""
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

KERAS2 = tf.__version__.startswith("2.") and int(tf.__version__.split(".")[1]) < 16
if KERAS2:
    keras = tf.keras
    KERAS_VERSION = keras.__version__ if hasattr(keras, "__version__") else tf.__version__
else:
    import keras  # noqa: E402
    KERAS_VERSION = keras.__version__
from tensorflow.keras import layers, models, optimizers  # noqa: E402

HERE = Path(__file__).resolve().parent


def digits32(seed=0):
    """scikit-learn's digits at 32 x 32 (bilinear on pixel centres) and the training part of a
    seeded 80/20 split: the data and split of examples/guide.ipynb."""
    from sklearn.datasets import load_digits

    d = load_digits()
    src = np.clip((np.arange(32) + 0.5) * 8 / 32 - 0.5, 0, 7)
    i0 = np.floor(src).astype(int)
    i1, w = np.minimum(i0 + 1, 7), src - i0
    a = np.zeros((32, 8))
    a[np.arange(32), i0] += 1 - w
    a[np.arange(32), i1] += w
    x = np.clip(a @ (d.images / 16.0) @ a.T, 0, 1).astype(np.float32)[..., None]
    order = np.random.default_rng(seed).permutation(len(x))
    train = order[round(0.2 * len(x)):]
    return x[train], d.target[train].astype(np.int64)


def create_LeNet5(input_shape):      # the guide's section 7, comments left out
    return models.Sequential([
        layers.Conv2D(filters=6, kernel_size=(5, 5), strides=(1, 1), activation='tanh',
                      input_shape=input_shape, padding="valid", name="C1"),
        layers.AveragePooling2D(pool_size=(2, 2), strides=(2, 2), name="S2"),
        layers.Conv2D(filters=16, kernel_size=(5, 5), strides=(1, 1), activation='tanh',
                      padding="valid", name="C3"),
        layers.AveragePooling2D(pool_size=(2, 2), strides=(2, 2), name="S4"),
        layers.Conv2D(filters=120, kernel_size=(5, 5), strides=(1, 1), activation='tanh',
                      padding="valid", name="C5"),
        layers.Flatten(name="Flatten"),
        layers.Dense(units=84, activation='tanh', name="F6"),
        layers.Dense(units=10, activation='softmax', name="Output"),
    ], name="modifiedLeNet5")


def basic_cnn(shape=(12, 12, 1), filters=4, units=16):
    return models.Sequential([
        layers.Input(shape=shape),
        layers.Conv2D(filters, (3, 3), activation="relu", name="conv"),
        layers.MaxPooling2D(pool_size=(2, 2), strides=(2, 2), name="pool"),
        layers.Flatten(name="flatten"),
        layers.Dense(units, activation="relu", name="dense"),
        layers.Dense(10, activation="softmax", name="output"),
    ], name="basic_cnn")


def alexnet(full=False):
    """Section 5's AlexNet; unless ``full``, at 1/16 of the width on 16 x 16 x 3 inputs with a
    3 x 3 first convolution (gpucnn.zoo's small stem)."""
    n = (96, 256, 384, 384, 256, 4096, 1000) if full else (6, 16, 24, 24, 16, 32, 10)
    first = (layers.Conv2D(n[0], (11, 11), strides=(4, 4), activation="relu", name="conv1")
             if full else layers.Conv2D(n[0], (3, 3), padding="same", activation="relu",
                                        name="conv1"))
    return models.Sequential([
        layers.Input(shape=(227, 227, 3) if full else (16, 16, 3)), first,
        layers.MaxPooling2D(pool_size=(3, 3), strides=(2, 2), name="pool1"),
        layers.Conv2D(n[1], (5, 5), padding="same", activation="relu", name="conv2"),
        layers.MaxPooling2D(pool_size=(3, 3), strides=(2, 2), name="pool2"),
        layers.Conv2D(n[2], (3, 3), padding="same", activation="relu", name="conv3"),
        layers.Conv2D(n[3], (3, 3), padding="same", activation="relu", name="conv4"),
        layers.Conv2D(n[4], (3, 3), padding="same", activation="relu", name="conv5"),
        layers.MaxPooling2D(pool_size=(3, 3), strides=(2, 2), name="pool5"),
        layers.Flatten(name="flatten"),
        layers.Dense(n[5], activation="relu", name="fc6"),
        layers.Dropout(0.5, name="drop6"),
        layers.Dense(n[5], activation="relu", name="fc7"),
        layers.Dropout(0.5, name="drop7"),
        layers.Dense(n[6], activation="softmax", name="output"),
    ], name="alexnet")


def conv_autoencoder(shape=(12, 12, 1), filters=(8, 16), latent=4):
    return models.Sequential([
        layers.Input(shape=shape),
        layers.Conv2D(filters[0], (3, 3), strides=(2, 2), padding="same", activation="relu",
                      name="enc1"),
        layers.Conv2D(filters[1], (3, 3), strides=(2, 2), padding="same", activation="relu",
                      name="enc2"),
        layers.Conv2D(latent, (3, 3), padding="same", activation="relu", name="latent"),
        layers.Conv2DTranspose(filters[1], (3, 3), strides=(2, 2), padding="same",
                               activation="relu", name="dec1"),
        layers.Conv2DTranspose(filters[0], (3, 3), strides=(2, 2), padding="same",
                               activation="relu", name="dec2"),
        layers.Conv2D(1, (3, 3), padding="same", activation="sigmoid", name="output"),
    ], name="conv_autoencoder")


def perceptron():
    return models.Sequential([layers.Input(shape=(64,)),
                              layers.Dense(units=1, activation="sigmoid", name="neuron")],
                             name="perceptron")


def every_layer():
    """The layers and settings gpucnn has that the guide's networks leave out (Dropout is in
    AlexNet; here it would make the training step after saving differ between libraries)."""
    return models.Sequential([
        layers.Input(shape=(64,)),
        layers.Reshape((8, 8, 1)),
        layers.Conv2D(3, 3, strides=2, padding="same", use_bias=False,
                      kernel_initializer="he_normal"),
        layers.Activation("tanh"),
        layers.AveragePooling2D(2, strides=1, padding="same"),
        layers.Conv2DTranspose(2, 3, strides=2, activation="sigmoid"),
        layers.MaxPooling2D(3, strides=2, padding="same"),
        layers.Flatten(),
        layers.Dense(3, activation="softmax"),
    ], name="every_layer")


def fit(model, optimizer, loss, metrics, x, y, epochs=1):
    model.compile(optimizer=optimizer, loss=loss, metrics=metrics)
    model.fit(x, y, batch_size=32, epochs=epochs, verbose=0)
    return model


def train_targets(model, x):
    """Targets for the one training step after saving: the input (autoencoder), 0/1, or labels."""
    out = model.output_shape[-1]
    if len(model.output_shape) == 4:
        return x
    labels = np.arange(len(x)) % max(out, 2)
    return labels[:, None].astype(np.float32) if out == 1 else labels


def make(only=()):
    tf.keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    img = lambda *s: rng.random(s, dtype=np.float32)          # noqa: E731
    labels = lambda n, k: rng.integers(0, k, n)               # noqa: E731
    made = {}
    if KERAS2:      # tf.keras 2's legacy HDF5 whole-model file, and its .keras archive
        x = img(64, 12, 12, 1)
        made["tf2_basic_cnn.h5"] = made["tf2_basic_cnn.keras"] = fit(basic_cnn(), optimizers.Adam(),
                                       "sparse_categorical_crossentropy", ["accuracy"], x,
                                       labels(64, 10)), x[:4]
    else:
        x, y = digits32()
        lenet = fit(create_LeNet5((32, 32, 1)), optimizers.SGD(learning_rate=0.01),
                    "sparse_categorical_crossentropy", ["accuracy"], x, y, epochs=20)
        made["lenet5.keras"] = lenet, x[:4]
        x = img(64, 12, 12, 1)
        cnn = fit(basic_cnn(), optimizers.Adam(), "sparse_categorical_crossentropy", ["accuracy"],
                  x, labels(64, 10))
        made["basic_cnn.keras"] = made["basic_cnn.h5"] = cnn, x[:4]
        x = img(64, 16, 16, 3)
        made["alexnet.keras"] = fit(alexnet(), optimizers.SGD(0.01, momentum=0.9, nesterov=True),
                                    "sparse_categorical_crossentropy", ["accuracy"], x,
                                    labels(64, 10)), x[:4]
        x = img(64, 12, 12, 1)
        made["conv_autoencoder.keras"] = fit(conv_autoencoder(), optimizers.RMSprop(), "mse", [],
                                             x, x), x[:4]
        x = img(64, 64)
        made["perceptron.keras"] = fit(perceptron(), optimizers.Adagrad(), "binary_crossentropy",
                                       ["accuracy"], x, labels(64, 2)[:, None].astype(np.float32)
                                       ), x[:4]
        x = img(64, 64)
        made["every_layer.keras"] = fit(every_layer(), optimizers.SGD(0.05, momentum=0.5),
                                        "sparse_categorical_crossentropy", ["accuracy"], x,
                                        labels(64, 3)), x[:4]
    made = {k: v for k, v in made.items() if not only or k in only}
    pred_file = HERE / "predictions.npz"
    preds = dict(np.load(pred_file)) if pred_file.exists() else {}
    manifest_file = HERE / "MANIFEST.json"
    manifest = json.loads(manifest_file.read_text()) if manifest_file.exists() else {}
    import h5py
    step = {}           # one more training step after saving tells whether a loader got the
    for name, (model, x) in made.items():    # optimizer's state (not AlexNet: its dropout)
        model.save(HERE / name)
        preds[f"x/{name}"], preds[f"y/{name}"] = x, model.predict(x, verbose=0)
        if "alexnet" not in name:
            step.setdefault(id(model), (model, x, train_targets(model, x)))
            preds[f"t/{name}"] = step[id(model)][2]
    for model, x, t in step.values():
        model.train_on_batch(x, t)
    for name, (model, x) in made.items():
        if "alexnet" not in name:
            preds[f"y1/{name}"] = model.predict(x, verbose=0)
        manifest[name] = {"keras": KERAS_VERSION, "tensorflow": tf.__version__,
                          "numpy": np.__version__, "h5py": h5py.__version__,
                          "made_by": "tests/data/keras/make_keras_files.py"}
        print(f"{name}: {(HERE / name).stat().st_size} bytes, Keras {KERAS_VERSION}")
    np.savez(pred_file, **preds)
    manifest_file.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def write(folder):
    """The guide's five networks at gpucnn.zoo's default sizes (AlexNet's 62 million parameters
    included), one training step each, saved as ``<name>.keras`` with ``<name>.keras.npz``
    (``x``, ``y``): what ``write_gpucnn_files.py check`` compares gpucnn with."""
    rng = np.random.default_rng(0)
    nets = {"perceptron": (perceptron(), optimizers.Adagrad(), "binary_crossentropy"),
            "basic_cnn": (basic_cnn((32, 32, 1), 8, 32), optimizers.Adam(),
                          "sparse_categorical_crossentropy"),
            "lenet5": (create_LeNet5((32, 32, 1)), optimizers.SGD(0.01, momentum=0.9),
                       "sparse_categorical_crossentropy"),
            "conv_autoencoder": (conv_autoencoder((28, 28, 1), (16, 32), 8),
                                 optimizers.RMSprop(), "mse"),
            "alexnet": (alexnet(full=True), optimizers.SGD(), "sparse_categorical_crossentropy")}
    for name, (model, optimizer, loss) in nets.items():
        x = rng.random((2,) + model.input_shape[1:], dtype=np.float32)
        model.compile(optimizer=optimizer, loss=loss)
        model.train_on_batch(x, train_targets(model, x))
        model.save(f"{folder}/{name}.keras")
        np.savez(f"{folder}/{name}.keras.npz", x=x, y=model.predict(x, verbose=0))
        print(f"{name}: {model.count_params():,} parameters written by Keras {KERAS_VERSION}")


def check(folder):
    worst = 0.0
    for path in sorted(Path(folder).glob("*.keras")):
        ref = np.load(f"{path}.npz")
        model = keras.models.load_model(path)
        diff = float(np.abs(model.predict(ref["x"], verbose=0) - ref["y"]).max())
        opt, step, first = model.optimizer, "", diff
        if "y1" in ref:             # one more step from the saved optimizer state, as gpucnn did
            model.train_on_batch(ref["x"], ref["t"])
            after = float(np.abs(model.predict(ref["x"], verbose=0) - ref["y1"]).max())
            step = f" (before), {after:.3g} after one more training step in each"
            diff = max(diff, after)
        worst = max(worst, diff)
        print(f"{path.name}: Keras {KERAS_VERSION} loads it; largest |Keras - gpucnn| = {first:.3g}"
              f"{step}; {type(opt).__name__}, {len(opt.variables)} variables, iterations "
              f"{int(opt.iterations.numpy())}")
    return worst


if __name__ == "__main__":
    if sys.argv[1:2] == ["check"]:
        sys.exit(0 if check(sys.argv[2]) <= 1e-5 else 1)
    if sys.argv[1:2] == ["write"]:
        sys.exit(write(sys.argv[2]))
    make(sys.argv[2:] if sys.argv[1:2] == ["make"] else ())
