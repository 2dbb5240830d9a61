"""CIFAR-10 (A. Krizhevsky, 2009) from its binary version; the pickled version is never read.

Each binary batch is a sequence of 3,073-byte records: one label byte (0-9), then the 32 x 32
image as 1,024 red, 1,024 green and 1,024 blue bytes, each plane row by row (channels first).
"""
from __future__ import annotations

import shutil
import tarfile
from pathlib import Path

import numpy as np

from gpucnn import io

from ._files import (DataFileError, DataNotFoundError, DownloadError, RemoteFile,
                     data_dirs, download_to_temp, sha256_of)

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
CIFAR10_FILES = {
    "train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
    "test": ("test_batch.bin",),
}
RECORD = 1 + 3 * 32 * 32
SUBFOLDER = "cifar-10-batches-bin"   # the folder inside the archive
# The published archive; SHA-256 as listed by TensorFlow Datasets and others.
CIFAR10_ARCHIVE = RemoteFile(
    "cifar-10-binary.tar.gz",
    "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd", 170_052_171)
CIFAR10_URLS = ("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",)


def cifar10(path=None, download=True, *, split=None, normalize=True):
    """Load CIFAR-10 (binary version) as channels-last NumPy arrays.

    Files: ``data_batch_1.bin`` ... ``data_batch_5.bin`` (train, 50,000 images) and
    ``test_batch.bin`` (test, 10,000 images), looked for in the folders of ``gpucnn.datasets``,
    in each directly or in its ``cifar-10-batches-bin`` subfolder (the archive's layout). A ``cifar-10-binary.tar.gz``
    lying in such a folder is used when its SHA-256 sum is the published one. When files are
    missing and ``download`` is true, that archive (163 MiB) is downloaded into the first folder,
    verified, and its batches extracted; offline a DataNotFoundError says what to put where.
    Loading never unpickles anything: the Python version of the data set is not accepted.

    Args:
        path: folder holding the files, or None for the default lookup.
        download: fetch the archive when files are missing.
        split: None for both, ``"train"`` or ``"test"``.
        normalize: float32 pixels in [0, 1]; False keeps uint8 values 0-255.

    Returns:
        ``(x, y)`` for one split, ``((x_train, y_train), (x_test, y_test))`` for ``split=None``;
        ``x`` is ``(N, 32, 32, 3)`` RGB, ``y`` int64 class indices into ``CIFAR10_CLASSES``.
    """
    if split not in (None, "train", "test"):
        raise ValueError(f"cifar10: split must be None, 'train' or 'test', got {split!r}")
    splits = ("train", "test") if split is None else (split,)
    dirs = data_dirs("cifar10", path)
    found = {s: _locate(dirs, CIFAR10_FILES[s]) for s in splits}
    missing = [s for s in splits if found[s] is None]
    if missing:
        _obtain(missing, dirs, download, explicit=path is not None)
        found.update({s: _locate(dirs, CIFAR10_FILES[s]) for s in missing})
    out = [_load_split(found[s], normalize) for s in splits]
    return out[0] if split is not None else tuple(out)


def _folders(dirs):
    return [f for d in dirs for f in (d, d / SUBFOLDER)]


def _locate(dirs, names):
    """The paths of ``names`` in the first folder that holds them all, or None."""
    for folder in _folders(dirs):
        paths = [folder / n for n in names]
        if all(p.is_file() for p in paths):
            return paths
    return None


def _obtain(missing, dirs, download, explicit):
    """Extract a local verified archive, or download one, or raise where to put the files."""
    for folder in _folders(dirs):
        archive = folder / CIFAR10_ARCHIVE.name
        if archive.is_file():
            got = sha256_of(archive)
            if got != CIFAR10_ARCHIVE.sha256:
                raise DataFileError(f"{archive}: SHA-256 {got}, expected {CIFAR10_ARCHIVE.sha256}"
                                    f" (the binary CIFAR-10 archive); delete it or replace it")
            _extract(archive, folder)
            return
    reason = "download=False"
    if download:
        target = dirs[0]
        try:
            tmp = download_to_temp(CIFAR10_ARCHIVE, CIFAR10_URLS, target)
        except DownloadError as e:
            reason = str(e)
        else:
            try:
                _extract(tmp, target)
            finally:
                tmp.unlink()
            return
    names = ", ".join(n for s in missing for n in CIFAR10_FILES[s])
    where = "" if explicit else (
        f" (or set GPUCNN_DATA=<dir> and use <dir>/cifar10, or pass path=<folder>;"
        f" looked in {', '.join(map(str, dirs))})")
    raise DataNotFoundError(
        f"cifar10: CIFAR-10 {' and '.join(missing)} files not found and not downloaded ({reason}):"
        f" put {names} (from {CIFAR10_ARCHIVE.name}, the binary version) into {dirs[0]}, or the"
        f" archive itself{where}")


def _extract(archive: Path, folder: Path):
    """Write the batches of the verified ``archive`` into ``folder``, each file atomically
    (``gpucnn.io.write_atomic``).

    Only the known member names are read (never a path taken from the archive), and only as
    regular files.
    """
    names = CIFAR10_FILES["train"] + CIFAR10_FILES["test"] + ("batches.meta.txt",)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for name in names:
                try:
                    member = tar.getmember(f"{SUBFOLDER}/{name}")
                except KeyError:
                    raise DataFileError(f"{archive}: no {SUBFOLDER}/{name} inside") from None
                if not member.isfile():
                    raise DataFileError(f"{archive}: {SUBFOLDER}/{name} is not a regular file")
                src = tar.extractfile(member)
                io.write_atomic(folder / name, lambda out: shutil.copyfileobj(src, out, 1 << 20),
                                overwrite=True, op="cifar10")
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DataFileError(f"{archive}: cannot be unpacked ({e})") from None


def read_cifar_batch(path) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images ``(N, 32, 32, 3)`` and uint8 labels ``(N,)`` of one binary batch file."""
    path = Path(path)
    data = path.read_bytes()
    if len(data) == 0 or len(data) % RECORD:
        raise DataFileError(
            f"{path}: {len(data):,} bytes is not a whole number of {RECORD:,}-byte records "
            f"(1 label byte + 3,072 pixel bytes): truncated, or not a CIFAR-10 binary batch")
    records = np.frombuffer(data, np.uint8).reshape(-1, RECORD)
    labels = records[:, 0]
    if labels.max() > 9:
        i = int(np.argmax(labels > 9))
        raise DataFileError(
            f"{path}: label byte {labels[i]} in record {i}, expected 0-9: not a CIFAR-10 binary "
            f"batch (the pickled Python version is not read; use {CIFAR10_ARCHIVE.name})")
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, labels


def _load_split(paths, normalize):
    parts = [read_cifar_batch(p) for p in paths]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts]).astype(np.int64)
    x = x.astype(np.float32) / np.float32(255) if normalize else np.ascontiguousarray(x)
    return x, y
