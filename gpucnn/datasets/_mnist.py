"""MNIST (Y. LeCun, C. Cortes, C. J. C. Burges): 70,000 handwritten digits in the IDX format."""
from __future__ import annotations

import numpy as np

from ._files import (DataFileError, DataNotFoundError, DownloadError, RemoteFile, data_dirs,
                     fetch, find_file)
from ._idx import IMAGES_MAGIC, LABELS_MAGIC, read_idx

# (images, labels) file names without the ".gz" of each split.
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# The published gzip files: SHA-256 sums and sizes as listed by TensorFlow Datasets, torchvision's
# mirror and others (the same bytes on both mirrors below).
MNIST_REMOTE = {
    "train-images-idx3-ubyte": RemoteFile(
        "train-images-idx3-ubyte.gz",
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609", 9_912_422),
    "train-labels-idx1-ubyte": RemoteFile(
        "train-labels-idx1-ubyte.gz",
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c", 28_881),
    "t10k-images-idx3-ubyte": RemoteFile(
        "t10k-images-idx3-ubyte.gz",
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6", 1_648_877),
    "t10k-labels-idx1-ubyte": RemoteFile(
        "t10k-labels-idx1-ubyte.gz",
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6", 4_542),
}
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)


def mnist(path=None, download=True, *, split=None, pad_to_32=False, normalize=True):
    """Load MNIST as channels-last NumPy arrays.

    Files: ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
    ``t10k-labels-idx1-ubyte``, each uncompressed or with ``.gz``, looked for in the folders of
    ``gpucnn.datasets``. When a split is missing and ``download`` is true, its two ``.gz`` files
    are downloaded into the first of those folders and checked against their published SHA-256
    sums; offline (or with ``download=False``) a DataNotFoundError says which files to put where.

    Every file's IDX header is checked (magic number, 28 x 28 images, sizes against the file
    length, as many labels as images, labels 0-9): a truncated, corrupt or mislabelled file
    raises DataFileError naming it.

    Args:
        path: folder holding the files (str or os.PathLike), or None for the default lookup.
        download: fetch missing files from the public mirrors.
        split: None for both splits, ``"train"`` (60,000 images) or ``"test"`` (10,000 images);
            a single split needs only its own two files.
        pad_to_32: pad each image with 2 zero pixels on every side to 32 x 32, the input size of
            the guide's LeNet-5.
        normalize: float32 pixels in [0, 1] (value / 255); False keeps the uint8 values 0-255.

    Returns:
        ``(x, y)`` for one split, ``((x_train, y_train), (x_test, y_test))`` for ``split=None``;
        ``x`` is ``(N, 28, 28, 1)`` (or ``(N, 32, 32, 1)``), ``y`` int64 digits ``(N,)``.

    >>> x, y = mnist(split="test", pad_to_32=True)    # doctest: +SKIP
    >>> x.shape, x.dtype, y[:4]                        # doctest: +SKIP
    ((10000, 32, 32, 1), dtype('float32'), array([7, 2, 1, 0]))
    """
    if split not in (None, "train", "test"):
        raise ValueError(f"mnist: split must be None, 'train' or 'test', got {split!r}")
    splits = ("train", "test") if split is None else (split,)
    dirs = data_dirs("mnist", path)
    found = {s: _locate(dirs, MNIST_FILES[s]) for s in splits}
    missing = [s for s in splits if found[s] is None]
    if missing:
        found.update(_obtain(missing, dirs, download, explicit=path is not None))
    out = [_load_split(*found[s], pad_to_32, normalize) for s in splits]
    return out[0] if split is not None else tuple(out)


def _locate(dirs, stems):
    """(images, labels) paths from the first folder that holds both, or None."""
    for folder in dirs:
        paths = [find_file(folder, stem) for stem in stems]
        if all(paths):
            return tuple(paths)
    return None


def _obtain(missing, dirs, download, explicit):
    """Download the missing splits into dirs[0], or raise the message saying where to put them."""
    target = dirs[0]
    stems = [stem for s in missing for stem in MNIST_FILES[s]]
    reason = "download=False"
    if download:
        try:
            for stem in stems:
                if find_file(target, stem) is None:
                    fetch(MNIST_REMOTE[stem], [m + MNIST_REMOTE[stem].name for m in MNIST_MIRRORS],
                          target)
        except DownloadError as e:
            reason = str(e)
        else:
            return {s: _locate([target], MNIST_FILES[s]) for s in missing}
    absent = [stem for stem in stems if find_file(target, stem) is None] or stems
    names = ", ".join(stem + ".gz" for stem in absent)
    have = [find_file(target, stem).name for stem in stems if stem not in absent]
    where = (f" (it holds {', '.join(have)} already)" if have else "") + ("" if explicit else (
        f" (or set GPUCNN_DATA=<dir> and put them in <dir>/mnist, or pass path=<folder>;"
        f" looked in {', '.join(map(str, dirs))})"))
    raise DataNotFoundError(
        f"mnist: MNIST {' and '.join(missing)} files not found and not downloaded ({reason}): "
        f"put {names} (gzip or uncompressed) into {target}{where}; "
        f"`python -m gpucnn.datasets fetch mnist` downloads them into the user cache")


def _load_split(images_path, labels_path, pad_to_32, normalize):
    x = read_idx(images_path, IMAGES_MAGIC)
    if x.ndim != 3 or x.shape[1:] != (28, 28) or x.dtype != np.uint8:
        raise DataFileError(f"{images_path}: holds {x.dtype} values of shape {x.shape}, "
                            f"expected uint8 images (N, 28, 28)")
    y = read_idx(labels_path, LABELS_MAGIC)
    if y.ndim != 1 or y.dtype != np.uint8:
        raise DataFileError(f"{labels_path}: holds {y.dtype} values of shape {y.shape}, "
                            f"expected uint8 labels (N,)")
    if len(y) != len(x):
        raise DataFileError(f"{labels_path}: {len(y):,} labels for the {len(x):,} images of "
                            f"{images_path}; the two files do not belong together")
    if len(y) and y.max() > 9:
        i = int(np.argmax(y > 9))
        raise DataFileError(f"{labels_path}: label {y[i]} at index {i}, expected digits 0-9")
    x = x[..., None]
    if pad_to_32:
        x = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
    if normalize:
        x = x.astype(np.float32) / np.float32(255)
    else:
        x = x.copy()
    return x, y.astype(np.int64)
