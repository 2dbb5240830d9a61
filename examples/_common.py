"""What the example scripts share: the command line, data selection, the output folder, pictures.

Order of work in every example, so that a mistake costs nothing: parse the arguments, select the
backend, load and check the data, and only then create ``--out`` and train. A wrong backend name,
a ``--data`` folder without the expected files, or a truncated or corrupt file ends the script
with one line on stderr saying what to do, and exit status 2 (no traceback, nothing written).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

import gpucnn
from gpucnn import datasets, io


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line: ``prog: error: message (see prog --help)``."""

    def error(self, message):
        fail(self.prog, f"{message} (see {self.prog} --help)")


def fail(prog, message):
    """Print ``prog: error: message`` on one line to stderr and exit with status 2."""
    message = " ".join(str(message).split())
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(2)


def _int_at_least(lo, words):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < lo:
            raise argparse.ArgumentTypeError(f"expected {words}, got {text!r}")
        return value
    return parse


_positive_int, _seed = _int_at_least(1, "a positive integer"), _int_at_least(0, "an integer >= 0")


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _fraction(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return value


positive_int, positive_float, fraction = _positive_int, _positive_float, _fraction


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: ...)`` after a help line, unless the line says its default already."""

    def _get_help_string(self, action):
        if "(default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def parser(name, description, *, epochs, batch_size, data_help):
    """The common command line of the examples; each script may add its own options."""
    p = Parser(prog=f"{name}.py", description=description, formatter_class=_Formatter)
    p.add_argument("--backend", default=os.environ.get("GPUCNN_BACKEND") or "auto",
                   help="kernel set: auto (CUDA when a GPU is usable, else NumPy), numpy or cuda")
    p.add_argument("--epochs", type=_positive_int, default=epochs, help="training epochs")
    p.add_argument("--batch-size", type=_positive_int, default=batch_size, help="batch size")
    p.add_argument("--data", default=None, metavar="DIR", help=data_help)
    p.add_argument("--out", default=os.path.join("runs", name), metavar="DIR",
                   help="folder for the pictures (created once the data has loaded)")
    p.add_argument("--seed", type=_seed, default=0,
                   help="seed of the initial weights, the shuffling, the split and dropout")
    p.add_argument("--limit", type=_positive_int, default=None, metavar="N",
                   help="use at most N training and N test images (quick runs) (default: all)")
    p.add_argument("--verbose", type=int, choices=(0, 1, 2), default=1,
                   help="fit() output: 0 silent, 1 progress bar, 2 one line per epoch")
    p.add_argument("--distributed", action="store_true",
                   help="train on every process of an MPI job, each on its share of every "
                        "batch: mpiexec -n 2 python <script> --distributed (rank 0 prints and "
                        "draws)")
    return p


def start(args, prog):
    """Select the backend and seed everything; a bad backend ends the script with one line.
    With ``--distributed``, join the MPI job first (each rank takes its GPU before the backend
    starts); ranks other than 0 print nothing from then on."""
    try:
        if getattr(args, "distributed", False):
            from gpucnn import distributed

            distributed.init(backend=args.backend)
            if not distributed.is_main():
                sys.stdout = open(os.devnull, "w")
            name = gpucnn.get_backend()
        else:
            name = gpucnn.set_backend(args.backend)
    except ImportError as e:
        fail(prog, f"--distributed: {e}")
    except (ValueError, RuntimeError) as e:
        fail(prog, f"--backend {args.backend}: {e}")
    gpucnn.manual_seed(args.seed)
    print(f"backend: {name}" + (f", rank 0 of {_ranks()} (MPI)" if getattr(
        args, "distributed", False) else ""))
    return name


def _ranks():
    from gpucnn import distributed

    return distributed.size()


def main_rank() -> bool:
    """Whether this process draws and writes: rank 0 of a ``--distributed`` job, or the only
    process."""
    from gpucnn import parallel

    return parallel.is_main()


class Data:
    """Training and test arrays with a description of where they came from."""

    def __init__(self, x_train, y_train, x_test, y_test, source, class_names=None):
        self.x_train, self.y_train = x_train, y_train
        self.x_test, self.y_test = x_test, y_test
        self.source = source
        self.class_names = class_names

    def limit(self, n):
        if n is not None:
            self.x_train, self.y_train = self.x_train[:n], self.y_train[:n]
            self.x_test, self.y_test = self.x_test[:n], self.y_test[:n]
        return self

    def describe(self):
        return (f"data: {self.source}: {len(self.x_train):,} training and {len(self.x_test):,} "
                f"test images of shape {self.x_train.shape[1:]}")


def _folder(prog, data):
    path = Path(data).expanduser()
    if not path.is_dir():
        fail(prog, f"--data {data}: no such folder")
    return path


def _loading(prog, what, fn):
    """Run a loader; its DataNotFoundError / DataFileError / OSError becomes the one-line error."""
    try:
        return fn()
    except (OSError, ValueError, ImportError) as e:
        fail(prog, f"{what}: {e}")


def mnist_data(prog, data, pad_to_32):
    """MNIST from the folder ``data``.

    With the four files there: the 60,000 training and 10,000 test images. With only the test
    split's two files (as in the repository's shared test data): images 0-7,999 of the test
    split for training and 8,000-9,999 for evaluation.
    """
    folder = _folder(prog, data)
    names = [n for n in _loading(prog, f"--data {data}", lambda: os.listdir(folder))
             if n.startswith(("train-", "t10k-"))]
    has_train = any(n.startswith("train-images") for n in names) and any(
        n.startswith("train-labels") for n in names)
    if has_train:
        (xtr, ytr), (xte, yte) = _loading(prog, f"--data {data}", lambda: datasets.mnist(
            folder, download=False, pad_to_32=pad_to_32))
        return Data(xtr, ytr, xte, yte, f"MNIST in {folder}")
    x, y = _loading(prog, f"--data {data}", lambda: datasets.mnist(
        folder, download=False, split="test", pad_to_32=pad_to_32))
    if len(x) != 10_000:
        fail(prog, f"--data {data}: the MNIST test split has {len(x):,} images, expected 10,000")
    return Data(x[:8000], y[:8000], x[8000:], y[8000:],
                f"MNIST test split in {folder} (no training files there): images 0-7,999 for "
                f"training, 8,000-9,999 for evaluation")


def digits_data(prog, size=32, seed=0):
    """scikit-learn's handwritten digits at ``size`` x ``size``, a seeded held-out fifth."""
    x, y = _loading(prog, "the embedded digits", lambda: datasets.digits(size))
    (xtr, ytr), (xte, yte) = datasets.split(x, y, 0.2, seed=seed)
    return Data(xtr, ytr, xte, yte,
                f"scikit-learn's handwritten digits upscaled to {size}x{size} (embedded; "
                f"held-out fifth for evaluation)" if size != 8 else
                "scikit-learn's 8x8 handwritten digits (embedded; held-out fifth for evaluation)")


def cifar10_data(prog, data):
    folder = _folder(prog, data)
    (xtr, ytr), (xte, yte) = _loading(prog, f"--data {data}", lambda: datasets.cifar10(
        folder, download=False))
    return Data(xtr, ytr, xte, yte, f"CIFAR-10 (binary version) in {folder}",
                class_names=list(datasets.CIFAR10_CLASSES))


def build(prog, fn, **kwargs):
    """``fn(**kwargs)`` (a zoo function); a ValueError from bad options ends with one line."""
    try:
        return fn(**kwargs)
    except (ValueError, TypeError) as e:
        fail(prog, e)


def output_dir(prog, out):
    """Create ``--out`` (called only once the data is known to be good)."""
    path = Path(out).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        io.check_writable(path / "picture.png", "--out")  # before training, not after it
    except OSError as e:
        fail(prog, f"--out {out}: cannot create the folder or write in it ({e.strerror or e})")
    return path


class Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        return False


def saved(paths):
    """Print the pictures written, one per line."""
    for p in paths:
        print(f"saved {p}")


def optimizer(name, learning_rate):
    """``Adam(learning_rate)`` or the guide's ``SGD(learning_rate)``."""
    from gpucnn import optimizers

    return optimizers.Adam(learning_rate=learning_rate) if name == "adam" else \
        optimizers.SGD(learning_rate=learning_rate)


def classifier_report(model, data, batch_size):
    """Evaluate on the test images; print and return ``(loss, accuracy, predicted labels)``."""
    loss, acc = model.evaluate(data.x_test, data.y_test, batch_size=batch_size, verbose=0)
    pred = np.asarray(model.predict(data.x_test, batch_size=batch_size, verbose=0))
    labels = pred.argmax(axis=1) if pred.ndim == 2 and pred.shape[1] > 1 else \
        (pred.reshape(-1) > 0.5).astype(np.int64)
    print(f"test loss {loss:.4f}  test accuracy {100 * acc:.2f}% "
          f"({int((labels == data.y_test).sum()):,} of {len(labels):,} right)")
    return loss, acc, labels


def cnn_pictures(model, data, history, predicted, out, first_conv, title):
    """Curves, first-layer filters, feature maps of one test image, confusion matrix (none on
    the ranks other than 0 of a ``--distributed`` job: rank 0 draws)."""
    from gpucnn import plots, zoo

    if not main_rank():
        return []

    paths = [plots.curves(history, out / "curves.png", title=title)]
    kernel = model.get_layer(first_conv).kernel.numpy()
    paths.append(plots.filters(kernel, out / f"filters_{first_conv}.png",
                               title=f"{first_conv}: learned filters"))
    image = data.x_test[0]
    for i, (name, fmap) in enumerate(zoo.feature_maps(model, image), 1):
        paths.append(plots.feature_maps(fmap, out / f"feature_maps_{i}_{name}.png",
                                        title=f"after {name}", image=image))
    n_classes = len(data.class_names) if data.class_names else 10
    names = data.class_names or [str(c) for c in range(n_classes)]
    paths.append(plots.confusion_matrix(data.y_test, predicted, out / "confusion_matrix.png",
                                        class_names=names, title=title))
    return paths
