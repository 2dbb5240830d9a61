"""Downloading a data set ahead of time: ``python -m gpucnn.datasets fetch mnist``.

Each file goes through ``_files.fetch`` (checked, then renamed: nothing half-written is left). A
``.gz`` already in the folder is downloaded again unless its checksum is the published one; an
uncompressed copy has none and is kept, since ``mnist()`` checks its header when it loads it.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from ._files import fetch, find_file, sha256_of, user_cache_dir
from ._mnist import MNIST_FILES, MNIST_MIRRORS, MNIST_REMOTE

SPLITS = ("train", "test")


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f}"


class ProgressBar:
    """The progress of one download on one line of ``stream`` (stderr by default).

    On a terminal the line is redrawn in place at most every ``interval`` seconds; elsewhere (a
    log file, CI) a single line is written once the file is complete, so logs stay short.
    """

    def __init__(self, name: str, stream=None, width: int = 30, interval: float = 0.1):
        self.name = name
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.interval = interval
        isatty = getattr(self.stream, "isatty", None)
        self.dynamic = bool(isatty and isatty())
        self.done, self.total = 0, None
        self._drawn = 0.0
        self._open = False

    def line(self) -> str:
        """The bar as text: name, bar, percentage and megabytes (no bar when the size is unknown)."""
        if not self.total:
            return f"{self.name}  {_megabytes(self.done)} MB"
        frac = min(self.done / self.total, 1.0)
        filled = int(round(frac * self.width))
        bar = "=" * filled + "." * (self.width - filled)
        return (f"{self.name}  [{bar}] {100 * frac:3.0f}%  "
                f"{_megabytes(self.done)}/{_megabytes(self.total)} MB")

    def __call__(self, done: int, total: int | None) -> None:
        """Record ``done`` bytes of ``total``; a smaller ``done`` than before starts over (the
        next mirror)."""
        self.done, self.total = int(done), total
        if self.dynamic:
            now = time.monotonic()
            if now - self._drawn >= self.interval or (total and done >= total):
                self._drawn = now
                self.stream.write("\r" + self.line())
                self.stream.flush()
                self._open = True

    def close(self, complete: bool) -> None:
        """End the line: the final bar when the file is complete, only a newline otherwise."""
        if complete:
            self.stream.write(("\r" if self.dynamic else "") + self.line() + "\n")
        elif self._open:
            self.stream.write("\n")
        self.stream.flush()
        self._open = False


def mnist_files(splits=SPLITS) -> list[str]:
    """The file stems (without ``.gz``) of the MNIST ``splits``, images before labels."""
    bad = [s for s in splits if s not in SPLITS]
    if bad or not splits:
        raise ValueError(f"fetch mnist: splits must be some of {SPLITS}, got {tuple(splits)!r}")
    return [stem for s in SPLITS if s in splits for stem in MNIST_FILES[s]]


def fetch_mnist(folder=None, splits=SPLITS, mirrors=None, stream=None) -> list[tuple[Path, str]]:
    """Download the MNIST ``splits`` into ``folder`` (default: the user cache) and verify them.

    Returns ``[(path, status)]`` per file, ``status`` being ``"downloaded"``, ``"present"`` (a
    ``.gz`` with the published checksum was there already) or ``"present, uncompressed"``.
    Raises ChecksumError when every mirror sent other bytes than the published file, and
    DownloadError when no mirror could be reached or the folder cannot be created; in both cases
    no file of that name was written.
    """
    folder = Path(folder).expanduser() if folder is not None else user_cache_dir("mnist")
    urls = tuple(mirrors) if mirrors else MNIST_MIRRORS
    stream = stream if stream is not None else sys.stderr
    out = []
    for stem in mnist_files(splits):
        remote = MNIST_REMOTE[stem]
        have = find_file(folder, stem)
        if have is not None and have.suffix != ".gz":
            out.append((have, "present, uncompressed"))
            continue
        if have is not None:
            if sha256_of(have) == remote.sha256:
                out.append((have, "present"))
                continue
            print(f"gpucnn.datasets: {have} is not the published file (SHA-256 differs); "
                  f"downloading it again", file=stream)
        bar = ProgressBar(remote.name, stream)
        complete = False
        try:
            path = fetch(remote, [u.rstrip("/") + "/" + remote.name for u in urls], folder,
                         progress=bar)
            complete = True
        finally:
            bar.close(complete)
        out.append((path, "downloaded"))
    return out
