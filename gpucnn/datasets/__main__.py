"""``python -m gpucnn.datasets fetch mnist [--dir DIR]``: download MNIST ahead of time.

    python -m gpucnn.datasets fetch mnist                 # into ~/.cache/gpucnn/datasets/mnist
    python -m gpucnn.datasets fetch mnist --dir ~/mnist   # into a folder of your choice
    python -m gpucnn.datasets fetch mnist --split test    # only the 10,000 test images

The four gzip files (or the two of ``--split``) come from the public mirrors (``--mirror URL``
for another one, tried first to last), each checked against its published size and SHA-256 sum
and renamed into place only then, with a progress bar on stderr. Files that are already there
with the right checksum are not downloaded again. Without ``--dir`` the files go to the user
cache (``$XDG_CACHE_HOME/gpucnn/datasets/mnist``, else ``~/.cache/gpucnn/datasets/mnist``), where
``gpucnn.datasets.mnist()`` looks for them. Point ``GPUCNN_MNIST_DIR`` at the folder for the tests
that use real data, or pass it as ``--data`` to the example scripts.

Exit status: 0 when every file is there and verified, 1 when a download failed (one line on
stderr says why; nothing half-written is left), 2 for a usage error.
"""
from __future__ import annotations

import argparse
import sys

from ._files import ChecksumError, DownloadError, user_cache_dir
from ._fetch import SPLITS, fetch_mnist

PROG = "python -m gpucnn.datasets"


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error on one line: ``prog: error: message (see --help)``."""

    def error(self, message):
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Download data sets for gpucnn ahead of time.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    f = sub.add_parser("fetch", help="download a data set and verify its checksums",
                       description="Download a data set and verify its published SHA-256 sums.")
    f.add_argument("dataset", choices=("mnist",), help="the data set to download")
    f.add_argument("--dir", default=None, metavar="DIR",
                   help=f"target folder (default: {user_cache_dir('mnist')})")
    f.add_argument("--split", choices=SPLITS, default=None,
                   help="only this split (default: both, 4 files, 11.6 MB)")
    f.add_argument("--mirror", action="append", default=None, metavar="URL",
                   help="a mirror to download from instead of the public ones (repeatable); "
                        "the file names are appended to it")
    return p


def _fail(message) -> int:
    print(f"{PROG}: error: {' '.join(str(message).split())}", file=sys.stderr)
    return 1


def main(argv=None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    splits = SPLITS if args.split is None else (args.split,)
    try:
        files = fetch_mnist(args.dir, splits, args.mirror)
    except (ChecksumError, DownloadError) as e:
        return _fail(e)
    except OSError as e:             # reading an existing file or the folder failed
        return _fail(f"{e.filename or ''}: {e.strerror or e}")
    except KeyboardInterrupt:
        return _fail("interrupted; no partial file was left behind")
    folder = files[0][0].parent
    for path, status in files:
        print(f"{status:>10}  {path.name}")
    which = " and ".join(splits)
    print(f"MNIST {which} files are in {folder}")
    if args.dir is None:
        print("gpucnn.datasets.mnist() finds them there by itself")
    else:
        print(f"load them with gpucnn.datasets.mnist({str(folder)!r})")
    print(f"tests: export GPUCNN_MNIST_DIR={folder}   examples: --data {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
