"""Weights on disk: a NumPy ``.npz`` archive of named float arrays, never pickled.

Format: one array per weight, named by its path in the model (``"C1/kernel"``, ``"C1/bias"``,
``"encoder/conv2d/kernel"``), plus ``"__gpucnn_weights__"`` (the format version, a string array).
Files are read with ``allow_pickle=False``: loading never runs code from the file. Any ``.npz``
reader (NumPy, or a zip tool and a ``.npy`` reader) can open them.

Every file gpucnn writes (weights, benchmark reports, pictures) goes through ``write_atomic``:
atomic (renamed over the destination with ``os.replace``, so a failure leaves an existing
checkpoint untouched) and respecting the destination, as its docstring says.
"""
from __future__ import annotations

import math
import os
import stat
import tempfile
import zipfile

import numpy as np

FORMAT_KEY = "__gpucnn_weights__"
FORMAT_VERSION = "1"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


def _kind(mode: int) -> str:
    for test, words in _KINDS:
        if test(mode):
            return words
    return "not a regular file"


def _where(path: str, dest: str) -> str:
    """``'path'``, with the file a symlink leads to when that is another one."""
    return f"{path!r} (a symlink to {dest!r})" if os.path.islink(path) else repr(path)


def _check_destination(path: str, dest: str, overwrite: bool, op: str):
    """The mode to give the new file (the existing file's, or None for a new one), after
    refusing a destination that is not a regular file, or a read-only one without
    ``overwrite``."""
    try:
        st = os.stat(dest)
    except FileNotFoundError:
        return None
    except OSError as e:                                   # a symlink loop, a denied folder, ...
        raise type(e)(e.errno, f"{op}: cannot write {_where(path, dest)}: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        err = IsADirectoryError if stat.S_ISDIR(st.st_mode) else OSError
        raise err(f"{op}: will not replace {_where(path, dest)}: it is {_kind(st.st_mode)}, "
                  "not a regular file; give the path of a file to create or replace")
    mode = stat.S_IMODE(st.st_mode)
    if not overwrite and (not mode & 0o222 or not os.access(dest, os.W_OK)):
        raise PermissionError(f"{op}: will not replace {_where(path, dest)}: it is read-only (mode "
                              f"{mode:04o}); pass overwrite=True to replace it (its mode is kept), "
                              "or make it writable first")
    return mode


def write_atomic(path, write, mode: str = "wb", *, overwrite: bool = False, op: str = None) -> str:
    """Create or replace ``path`` through ``write(file)`` on a temporary file in the same folder,
    flushed to disk and then renamed over ``path``: a reader sees the old file or the whole new
    one, never half of it; on any failure the temporary file is removed. Returns the path.

    The destination is respected: a symlink is followed and the file it leads to is replaced
    (the link stays a link); a destination that is not a regular file (a directory, FIFO,
    device or socket) is refused, and so is a read-only file unless ``overwrite=True`` (the
    replacement then keeps its mode). A replaced file keeps its permission bits; a new one gets
    ``0o666`` less the umask. Errors start with ``op`` (the caller's name, e.g.
    ``"save_weights"``) and name ``path``, never the temporary file.
    """
    path = os.fspath(path)
    op = op or "write_atomic"
    dest, keep, fd, tmp = _open_beside(path, overwrite, op)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, keep if keep is not None else 0o666 & ~_umask())
        os.replace(tmp, dest)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):                     # name the destination, not the temporary
            text = e.strerror if e.strerror else str(e).replace(tmp, dest)
            raise _os_error(e, f"{op}: writing {_where(path, dest)} failed: {text}") from None
        raise
    return path


def _open_beside(path: str, overwrite: bool, op: str):
    """``(dest, mode to keep, fd, name)``: the real destination checked (``_check_destination``,
    its folder) and a new temporary file open beside it."""
    dest = os.path.realpath(path)                      # through every symlink, to the real file
    keep = _check_destination(path, dest, overwrite, op)
    folder = os.path.dirname(dest)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{op}: cannot write {_where(path, dest)}: the folder {folder!r} "
                                "does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(dest) + ".", suffix=".tmp",
                                   dir=folder)
    except OSError as e:
        raise type(e)(e.errno, f"{op}: cannot write {_where(path, dest)}: cannot create a file in "
                      f"its folder {folder!r}: {e.strerror}") from None
    return dest, keep, fd, tmp


def check_writable(path, op: str, overwrite: bool = False) -> None:
    """Raise now what ``write_atomic(path, ..., overwrite=overwrite, op=op)`` would raise about
    the destination (its folder missing or not writable, a file it may not replace), so that a
    writer is checked before the work whose result it keeps."""
    _, _, fd, tmp = _open_beside(os.fspath(path), overwrite, op)
    os.close(fd)
    os.unlink(tmp)


def _os_error(e: OSError, message: str) -> OSError:
    try:
        return type(e)(e.errno, message) if e.errno is not None else type(e)(message)
    except TypeError:                                  # a subclass with another constructor
        return OSError(e.errno, message)


def save_arrays(path, arrays: dict, overwrite: bool = False, op: str = "save_weights") -> str:
    """Write ``{name: array}`` to ``path`` atomically (``write_atomic``); returns the path."""
    return write_atomic(path, lambda f: np.savez(f, **{FORMAT_KEY: np.array(FORMAT_VERSION)},
                                                  **arrays), overwrite=overwrite, op=op)


def load_arrays(path) -> dict:
    """``{name: array}`` read fully from a weights file, or a ValueError saying why not."""
    arrays = read_npz(path, "load_weights", "weights file")
    arrays.pop(FORMAT_KEY, None)
    return arrays


#: The most bytes a deflated zip entry may expand to, per byte stored (deflate's limit, 1032:1).
_DEFLATE_RATIO = 1032


def read_npz(path, op: str, what: str) -> dict:
    """``{name: array}`` of the ``.npz`` archive at ``path`` (a gpucnn ``what``: "weights file",
    "model file"), read without unpickling. Refused before anything is allocated: what is not a
    regular file (a FIFO would block the read), and an entry whose sizes (the zip's, the array
    header's shape and dtype) ask for more bytes than the file holds."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{op}: no such file: {path!r}")
    why = f"cannot read {path!r} as a gpucnn {what} (.npz); it may be truncated or corrupted"
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        err = IsADirectoryError if stat.S_ISDIR(st.st_mode) else OSError
        raise err(f"{op}: {path!r} is {_kind(st.st_mode)}, not a {what}")
    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except OSError as e:
        raise type(e)(e.errno, f"{op}: cannot read {path!r}: {e.strerror}") from None
    if not head.startswith(b"PK"):                     # np.load would try to unpickle it
        raise ValueError(f"{op}: {why}: it is {_not_npz(head)}")
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                _check_entry(zf, info, st.st_size)
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        detail = (f"{type(e).__name__}: {e}" if "allow_pickle" not in str(e) else
                  "it holds pickled Python objects, which gpucnn never loads")
        raise ValueError(f"{op}: {why}: {detail}") from None


def _check_entry(zf, info, size: int) -> None:
    """ValueError when the zip entry ``info`` of a ``size``-byte file claims more bytes than
    the file has, or its ``.npy`` header a shape larger than the entry's bytes."""
    name = info.filename
    if info.header_offset + info.compress_size > size:
        raise ValueError(f"entry {name!r} claims {info.compress_size} bytes from offset "
                         f"{info.header_offset}, past the end of the file ({size} bytes)")
    ratio = 1 if info.compress_type == zipfile.ZIP_STORED else _DEFLATE_RATIO
    if info.file_size > info.compress_size * ratio:
        raise ValueError(f"entry {name!r} claims {info.file_size} bytes from "
                         f"{info.compress_size} stored, more than {ratio}x")
    if not name.endswith(".npy"):
        return
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                else np.lib.format.read_array_header_2_0)
        shape, _, dtype = read(f)
        need = math.prod(shape) * dtype.itemsize
        have = info.file_size - f.tell()
    if need > have:
        raise ValueError(f"entry {name!r} declares an array of shape {shape} {dtype} "
                         f"({need} bytes) but holds {have} bytes")


def _not_npz(head: bytes) -> str:
    """What a file that does not start like a zip archive is, from its first bytes."""
    if not head:
        return "empty"
    if head.startswith(b"\x93NUMPY"):
        return "a single .npy array, not an .npz archive of named weights"
    if head[:1] == b"\x80":
        return "a Python pickle, which gpucnn never loads (weights files are .npz archives)"
    return f"not an .npz archive (a zip file starts with b'PK'; this one starts with {head[:4]!r})"


def check_arrays(owner: str, expected: dict, arrays: dict) -> None:
    """Raise ValueError listing every difference between ``expected`` ``{name: (shape, dtype)}``
    and the ``arrays`` read; nothing is assigned by this function."""
    problems = [f"missing from the file: {name} {expected[name][0]}" for name in expected
                if name not in arrays]
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


__all__ = ["save_arrays", "load_arrays", "read_npz", "check_arrays", "check_writable",
           "FORMAT_KEY"]
