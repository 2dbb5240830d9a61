"""Weights on disk: a NumPy ``.npz`` archive of named float arrays, never pickled.

Format: one array per weight, named by its path in the model (``"C1/kernel"``, ``"C1/bias"``,
``"encoder/conv2d/kernel"``), plus ``"__gpucnn_weights__"`` (the format version, a string array).
Files are read with ``allow_pickle=False``: loading never runs code from the file. Any ``.npz``
reader (NumPy, or a zip tool and a ``.npy`` reader) can open them.

Writes are atomic: the archive goes to a temporary file in the destination's folder, is flushed
to disk, then renamed over the destination (``os.replace``); on any failure the temporary file is
removed and an existing checkpoint is left untouched.
"""
from __future__ import annotations

import os
import tempfile
import zipfile

import numpy as np

FORMAT_KEY = "__gpucnn_weights__"
FORMAT_VERSION = "1"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path, write, mode: str = "wb") -> str:
    """Create or replace ``path`` through ``write(file)`` on a temporary file in the same folder,
    flushed to disk and then renamed over ``path``: a reader sees the old file or the whole new
    one, never half of it; on any failure the temporary file is removed. Returns the path."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def save_arrays(path, arrays: dict) -> str:
    """Write ``{name: array}`` to ``path`` atomically; returns the path written."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"save_weights: the folder {folder!r} does not exist")
    return write_atomic(path, lambda f: np.savez(f, **{FORMAT_KEY: np.array(FORMAT_VERSION)},
                                                  **arrays))


def load_arrays(path) -> dict:
    """``{name: array}`` read fully from a weights file, or a ValueError saying why not."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"load_weights: no such file: {path!r}")
    why = "cannot read {!r} as a gpucnn weights file (.npz); it may be truncated or corrupted"
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"load_weights: {why.format(path)}: {type(e).__name__}: {e}") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise ValueError(f"load_weights: {why.format(path)}: it holds a single array, not an archive")
    try:
        with z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise ValueError(f"load_weights: {why.format(path)}: {type(e).__name__}: {e}") from None
    arrays.pop(FORMAT_KEY, None)
    return arrays


def check_arrays(owner: str, expected: dict, arrays: dict) -> None:
    """Raise ValueError listing every difference between ``expected`` ``{name: (shape, dtype)}``
    and the ``arrays`` read; nothing is assigned by this function."""
    problems = []
    for name in expected:
        if name not in arrays:
            problems.append(f"missing from the file: {name} {expected[name][0]}")
    for name, a in arrays.items():
        if name not in expected:
            problems.append(f"not in the model: {name} {tuple(a.shape)}")
            continue
        shape, dtype = expected[name]
        if tuple(a.shape) != tuple(shape):
            problems.append(f"shape of {name}: model {tuple(shape)}, file {tuple(a.shape)}")
        elif a.dtype != dtype:
            problems.append(f"dtype of {name}: model {np.dtype(dtype)}, file {a.dtype}")
    if problems:
        raise ValueError(f"{owner}: the weights do not match the model ({len(problems)} "
                         "mismatch" + ("es" if len(problems) > 1 else "") + "); nothing was loaded:\n  "
                         + "\n  ".join(problems))


__all__ = ["save_arrays", "load_arrays", "check_arrays", "FORMAT_KEY"]
