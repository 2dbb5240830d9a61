"""Where data files are looked for, how they are read, and how they are downloaded safely.

A download goes to a temporary file in the target folder, is checked against its SHA-256 sum and
only then renamed to its final name: an interrupted or wrong download never leaves a file behind.
"""
from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import sys
import tempfile
import zlib
from pathlib import Path
from typing import NamedTuple
from urllib.request import urlopen

TIMEOUT_S = 60          # seconds a connection or a single read may stall before a mirror is given up
CHUNK = 1 << 20         # bytes read from the network at a time
GZIP_MAGIC = b"\x1f\x8b"


class DataFileError(ValueError):
    """A data file is truncated, corrupt, or not the file its name says."""


class ChecksumError(DataFileError):
    """A downloaded file does not have the published SHA-256 sum (nothing was saved)."""


class DataNotFoundError(FileNotFoundError):
    """The data files are not where the loader looked, and could not be downloaded."""


class DownloadError(OSError):
    """Every mirror failed for a network reason (internal; loaders turn it into DataNotFoundError)."""


class RemoteFile(NamedTuple):
    """A file on the public mirrors: its name there, published SHA-256 sum and size in bytes."""

    name: str
    sha256: str
    size: int | None = None


def user_cache_dir(dataset: str) -> Path:
    """``$XDG_CACHE_HOME/gpucnn/datasets/<dataset>``, else ``~/.cache/gpucnn/datasets/<dataset>``:
    where ``python -m gpucnn.datasets fetch`` puts files when no ``--dir`` is given."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "gpucnn" / "datasets" / dataset


def data_dirs(dataset: str, path=None) -> list[Path]:
    """The folders searched for ``dataset``, first one first; downloads go into the first.

    An explicit ``path`` is the only folder; otherwise ``$GPUCNN_DATA/<dataset>`` (when the
    variable is set), then ``~/.gpucnn/datasets/<dataset>``, then the user cache that
    ``python -m gpucnn.datasets fetch`` fills (``user_cache_dir``).
    """
    if path is not None:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"{dataset}: path must be a str or os.PathLike, got {type(path).__name__}")
        folder = Path(path).expanduser()
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(f"{dataset}: path={os.fspath(path)!r} is a file, not a folder: "
                                     f"give the folder that holds the {dataset} files (perhaps "
                                     f"{os.fspath(folder.parent)!r})")
        return [folder]
    dirs = []
    root = os.environ.get("GPUCNN_DATA")
    if root:
        dirs.append(Path(root).expanduser() / dataset)
    dirs.append(Path.home() / ".gpucnn" / "datasets" / dataset)
    dirs.append(user_cache_dir(dataset))
    return dirs


def find_file(folder: Path, stem: str) -> Path | None:
    """``folder/stem`` (uncompressed) if it exists, else ``folder/stem.gz``, else None."""
    for name in (stem, stem + ".gz"):
        candidate = folder / name
        if candidate.is_file():
            return candidate
    return None


def read_bytes(path: Path) -> bytes:
    """The content of ``path``, decompressed when it is gzip (recognised by its magic bytes)."""
    raw = Path(path).read_bytes()
    if raw[:2] != GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as e:
        raise DataFileError(
            f"{path}: damaged gzip file ({e}); delete it and put a good copy in its place") from None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


class _Mismatch(Exception):
    """The bytes a mirror sent are not the published file."""


def _fetch_to_temp(url: str, folder: Path, remote: RemoteFile, progress=None) -> Path:
    """Download ``url`` into a temporary file in ``folder`` and verify it; the caller renames it.
    ``progress(done, total)``, when given, is called after every chunk (``total`` may be None)."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{remote.name}.", suffix=".part")
    try:
        digest, n = hashlib.sha256(), 0
        with os.fdopen(fd, "wb") as out, urlopen(url, timeout=TIMEOUT_S) as response:
            while chunk := response.read(CHUNK):
                n += len(chunk)
                if remote.size is not None and n > remote.size:
                    raise _Mismatch(f"sent more than the expected {remote.size:,} bytes")
                digest.update(chunk)
                out.write(chunk)
                if progress is not None:
                    progress(n, remote.size)
            length = response.headers.get("Content-Length") if response.headers else None
            if length is not None and length.isdigit() and n < int(length):
                raise ConnectionError(f"the connection closed after {n:,} of {int(length):,} bytes")
        if remote.size is not None and n != remote.size:
            raise _Mismatch(f"sent {n:,} bytes, expected {remote.size:,}")
        got = digest.hexdigest()
        if got != remote.sha256:
            raise _Mismatch(f"SHA-256 {got}, expected {remote.sha256}")
        os.chmod(tmp, 0o644)
    except BaseException:  # also KeyboardInterrupt: never leave a partial file behind
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return Path(tmp)


def download_to_temp(remote: RemoteFile, urls, folder: Path, progress=None) -> Path:
    """Download ``remote`` from the first of ``urls`` that serves the published file.

    Returns the verified file under a temporary name in ``folder``; the caller renames or deletes
    it. Raises ChecksumError when a mirror answered with other bytes and no mirror gave the right
    ones, DownloadError when every mirror failed for a network reason.
    """
    errors, mismatched = [], False
    created = [p for p in (folder, *folder.parents) if not p.exists()]   # removed again on failure
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(f"cannot create {folder}: {e}") from None
    try:
        for url in urls:
            print(f"gpucnn.datasets: downloading {url}", file=sys.stderr)
            try:
                tmp = _fetch_to_temp(url, folder, remote, progress)
                created = []
                return tmp
            except _Mismatch as e:
                mismatched = True
                errors.append(f"{url} {e}")
            except (OSError, http.client.HTTPException, ValueError) as e:
                errors.append(f"{url}: {e}")
        detail = "; ".join(errors) or "no mirror given"
        if mismatched:
            raise ChecksumError(
                f"download of {remote.name} refused, it is not the published file ({detail}); "
                f"nothing was saved in {folder}")
        raise DownloadError(f"download of {remote.name} failed ({detail}); without a network, "
                            f"put the file by hand at {folder / remote.name} (from "
                            f"{urls[0] if urls else 'a mirror'}; its SHA-256 is checked)")
    finally:
        for p in created:              # no empty folder left by a failed or interrupted download
            try:
                p.rmdir()
            except OSError:
                break


def fetch(remote: RemoteFile, urls, folder: Path, progress=None) -> Path:
    """Download and verify ``remote`` (see download_to_temp), then rename it to ``folder/name``."""
    tmp = download_to_temp(remote, urls, folder, progress)
    dest = folder / remote.name
    os.replace(tmp, dest)
    return dest
