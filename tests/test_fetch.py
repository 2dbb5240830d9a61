"""``python -m gpucnn.datasets fetch mnist``: checksummed downloads, without the network.

A local HTTP server (a thread of this process, on 127.0.0.1) plays the mirror. The files it
serves are IDX files written here with struct and gzip, independently of the loaders, and the
"published" checksums the command checks against are computed here with hashlib and put in place
of the real ones; one test serves copies of the shared MNIST test split and checks what
``gpucnn.datasets.mnist`` then reads against the label counts in that data's README.
"""
import gzip
import hashlib
import http.server
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from gpucnn import datasets
from gpucnn.datasets import __main__ as cli
from gpucnn.datasets import _fetch, _files, _mnist

ROOT = Path(__file__).resolve().parents[1]
TEST = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
TRAIN = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
# Per-digit counts of the real test split, from ../shared/data/mnist/README.md.
REAL_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
HOW_TO_GET = ("run `python -m gpucnn.datasets fetch mnist --split test` and set GPUCNN_MNIST_DIR "
              "to the folder it prints (CI sets it to ../shared/data/mnist)")


# ----------------------------------------------------------------------------- a local mirror

class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the mirror folder; logs every path asked for; cuts short the files in ``cut``."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        name = self.path.lstrip("/")
        self.server.requests.append(name)
        if name in self.server.cut:
            body = (Path(self.server.folder) / name).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])   # then the connection closes
            self.close_connection = True
            return
        super().do_GET()


class Mirror:
    def __init__(self, folder):
        self.folder = folder
        handler = lambda *a, **k: _Handler(*a, directory=str(folder), **k)  # noqa: E731
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.requests, self.httpd.cut, self.httpd.folder = [], set(), folder
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def requests(self):
        return self.httpd.requests

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def mirror(tmp_path):
    m = Mirror(tmp_path / "mirror")
    m.folder.mkdir()
    yield m
    m.close()


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty home and user cache, no GPUCNN_DATA: the default lookup touches nothing real."""
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("HOME", str(h))
    monkeypatch.setenv("XDG_CACHE_HOME", str(h / "cache"))
    monkeypatch.delenv("GPUCNN_DATA", raising=False)
    return h


# ----------------------------------------------------------------------------- files

def idx_bytes(array, magic):
    """IDX bytes of a uint8 array: the magic, big-endian uint32 dims, the values."""
    array = np.asarray(array, dtype=np.uint8)
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def serve_split(mirror, stems, n, rng):
    """A random split of ``n`` images as two gzip IDX files on the mirror; returns the arrays."""
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    for stem, blob in zip(stems, (idx_bytes(images, 2051), idx_bytes(labels, 2049))):
        (mirror.folder / (stem + ".gz")).write_bytes(gzip.compress(blob, mtime=0))
    return images, labels


def publish(monkeypatch, mirror, stems):
    """Make the mirror's files the 'published' ones: their SHA-256 and size in MNIST_REMOTE."""
    for stem in stems:
        blob = (mirror.folder / (stem + ".gz")).read_bytes()
        monkeypatch.setitem(_mnist.MNIST_REMOTE, stem, _files.RemoteFile(
            stem + ".gz", hashlib.sha256(blob).hexdigest(), len(blob)))


def leftovers(folder):
    return sorted(p.name for p in Path(folder).rglob("*") if ".part" in p.name)


def contents(folder):
    """Every name under ``folder``; [] when a failed download removed (or never made) it."""
    return sorted(p.name for p in Path(folder).rglob("*")) if Path(folder).exists() else []


def one_error_line(err):
    lines = [ln for ln in err.splitlines() if ln.startswith("python -m gpucnn.datasets")]
    assert len(lines) == 1, f"expected one error line on stderr, got:\n{err}"
    return lines[0]


# ----------------------------------------------------------------------------- downloads

def test_fetch_into_the_user_cache_then_mnist_finds_it(mirror, home, rng, monkeypatch, capsys):
    train = serve_split(mirror, TRAIN, 7, rng)
    test = serve_split(mirror, TEST, 4, rng)
    publish(monkeypatch, mirror, TRAIN + TEST)

    assert cli.main(["fetch", "mnist", "--mirror", mirror.url]) == 0
    out, err = capsys.readouterr()
    folder = home / "cache" / "gpucnn" / "datasets" / "mnist"
    for stem in TRAIN + TEST:
        got = (folder / (stem + ".gz")).read_bytes()
        assert got == (mirror.folder / (stem + ".gz")).read_bytes(), stem
        assert f"{stem}.gz  [" in err and "100%" in err      # its progress bar, completed
    assert f"are in {folder}" in out and f"GPUCNN_MNIST_DIR={folder}" in out
    assert sorted(mirror.requests) == sorted(s + ".gz" for s in TRAIN + TEST)
    assert leftovers(folder) == []

    (xtr, ytr), (xte, yte) = datasets.mnist(download=False, normalize=False)  # default lookup
    np.testing.assert_array_equal(xtr[..., 0], train[0])
    np.testing.assert_array_equal(ytr, train[1])
    np.testing.assert_array_equal(xte[..., 0], test[0])
    np.testing.assert_array_equal(yte, test[1])


def test_fetch_one_split_into_dir(mirror, tmp_path, rng, monkeypatch, capsys):
    serve_split(mirror, TEST, 3, rng)
    publish(monkeypatch, mirror, TEST)
    target = tmp_path / "new" / "mnist"
    assert cli.main(["fetch", "mnist", "--split", "test", "--dir", str(target),
                     "--mirror", mirror.url.rstrip("/")]) == 0
    assert sorted(p.name for p in target.iterdir()) == sorted(s + ".gz" for s in TEST)
    assert sorted(mirror.requests) == sorted(s + ".gz" for s in TEST)
    assert f"gpucnn.datasets.mnist({str(target)!r})" in capsys.readouterr().out


def test_verified_files_stay_and_altered_ones_are_replaced(mirror, tmp_path, rng, monkeypatch,
                                                           capsys):
    serve_split(mirror, TEST, 3, rng)
    publish(monkeypatch, mirror, TEST)
    argv = ["fetch", "mnist", "--split", "test", "--dir", str(tmp_path / "d"), "--mirror",
            mirror.url]
    assert cli.main(argv) == 0
    mirror.requests.clear()
    assert cli.main(argv) == 0
    assert mirror.requests == []                              # both already verified
    assert capsys.readouterr().out.count("present  t10k-") == 2

    labels = tmp_path / "d" / (TEST[1] + ".gz")
    blob = bytearray(labels.read_bytes())
    blob[-1] ^= 0xFF
    labels.write_bytes(bytes(blob))
    assert cli.main(argv) == 0
    assert mirror.requests == [TEST[1] + ".gz"]
    assert labels.read_bytes() == (mirror.folder / (TEST[1] + ".gz")).read_bytes()
    assert "is not the published file" in capsys.readouterr().err


def test_wrong_checksum_is_refused_and_nothing_is_saved(mirror, tmp_path, rng, monkeypatch,
                                                        capsys):
    serve_split(mirror, TEST, 3, rng)
    publish(monkeypatch, mirror, TEST)
    served = mirror.folder / (TEST[0] + ".gz")
    blob = bytearray(served.read_bytes())
    blob[len(blob) // 2] ^= 0x01                                # same size, other bytes
    served.write_bytes(bytes(blob))
    target = tmp_path / "d"
    assert cli.main(["fetch", "mnist", "--split", "test", "--dir", str(target),
                     "--mirror", mirror.url]) == 1
    line = one_error_line(capsys.readouterr().err)
    expected = _mnist.MNIST_REMOTE[TEST[0]].sha256
    received = hashlib.sha256(bytes(blob)).hexdigest()
    assert "not the published file" in line and f"SHA-256 {received}, expected {expected}" in line
    assert contents(target) == []                              # no file, no .part


def test_interrupted_download_leaves_nothing(mirror, tmp_path, rng, monkeypatch, capsys):
    serve_split(mirror, TEST, 50, rng)
    publish(monkeypatch, mirror, TEST)
    mirror.httpd.cut.add(TEST[0] + ".gz")
    target = tmp_path / "d"
    assert cli.main(["fetch", "mnist", "--split", "test", "--dir", str(target),
                     "--mirror", mirror.url]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert f"download of {TEST[0]}.gz failed" in line and mirror.url in line
    assert contents(target) == []


def test_second_mirror_is_used_when_the_first_fails(mirror, tmp_path, rng, monkeypatch):
    serve_split(mirror, TEST, 3, rng)
    publish(monkeypatch, mirror, TEST)
    empty = Mirror(tmp_path / "empty")
    empty.folder.mkdir()
    try:
        assert cli.main(["fetch", "mnist", "--split", "test", "--dir", str(tmp_path / "d"),
                         "--mirror", empty.url, "--mirror", mirror.url]) == 0
    finally:
        empty.close()
    assert sorted(empty.requests) == sorted(s + ".gz" for s in TEST)      # 404 there
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == sorted(s + ".gz" for s in TEST)


def test_unreachable_mirror_is_one_clear_line(tmp_path, capsys):
    with socket.socket() as s:              # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert cli.main(["fetch", "mnist", "--split", "test", "--dir", str(tmp_path / "d"),
                     "--mirror", f"http://127.0.0.1:{port}/"]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert f"download of {TEST[0]}.gz failed" in line and f"127.0.0.1:{port}" in line
    assert leftovers(tmp_path) == []


def test_usage_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["fetch", "cifar100"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "invalid choice: 'cifar100'" in err and "mnist" in err
    a_file = tmp_path / "f"
    a_file.write_text("")
    assert cli.main(["fetch", "mnist", "--dir", str(a_file), "--mirror", "http://127.0.0.1:9/"]) == 1
    assert f"cannot create {a_file}" in one_error_line(capsys.readouterr().err)


def test_progress_bar_redraws_on_a_terminal_and_writes_one_line_elsewhere():
    class Stream:
        def __init__(self, tty):
            self.tty, self.text = tty, ""

        def isatty(self):
            return self.tty

        def write(self, s):
            self.text += s

        def flush(self):
            pass

    log = Stream(tty=False)
    bar = _fetch.ProgressBar("f.gz", log, width=10)
    for done in (1_000_000, 2_000_000, 4_000_000):
        bar(done, 4_000_000)
    assert log.text == ""
    bar.close(True)
    assert log.text == "f.gz  [==========] 100%  4.0/4.0 MB\n"

    tty = Stream(tty=True)
    bar = _fetch.ProgressBar("f.gz", tty, width=10, interval=0.0)
    bar(1_000_000, 4_000_000)
    assert tty.text == "\rf.gz  [==........]  25%  1.0/4.0 MB"
    bar.close(False)                         # a failed download: the line is ended, not faked
    assert tty.text.endswith("1.0/4.0 MB\n") and "100%" not in tty.text


# ----------------------------------------------------------------------------- python -m, real data

def shared_mnist():
    folder = os.environ.get("GPUCNN_MNIST_DIR") or str(ROOT.parent / "shared" / "data" / "mnist")
    if not all((Path(folder) / (s + ".gz")).is_file() for s in TEST):
        pytest.skip(f"no MNIST test split in {folder}: {HOW_TO_GET}")
    return Path(folder)


def test_python_m_fetches_the_shared_test_split(mirror, tmp_path):
    """``python -m gpucnn.datasets`` in a fresh process, the cache under XDG_CACHE_HOME; the
    checksums it checks are those of the shared copies (patched in before the module runs)."""
    for stem in TEST:
        shutil.copyfile(shared_mnist() / (stem + ".gz"), mirror.folder / (stem + ".gz"))
    sums = {stem: (hashlib.sha256((mirror.folder / (stem + ".gz")).read_bytes()).hexdigest(),
                   (mirror.folder / (stem + ".gz")).stat().st_size) for stem in TEST}
    code = ("import runpy, sys\n"
            "from gpucnn.datasets import _files, _mnist\n"
            f"for stem, (sha, size) in {sums!r}.items():\n"
            "    _mnist.MNIST_REMOTE[stem] = _files.RemoteFile(stem + '.gz', sha, size)\n"
            "sys.argv = ['gpucnn.datasets'] + sys.argv[1:]\n"
            "runpy.run_module('gpucnn.datasets', run_name='__main__', alter_sys=True)\n")
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"), HOME=str(tmp_path))
    r = subprocess.run([sys.executable, "-c", code, "fetch", "mnist", "--split", "test",
                        "--mirror", mirror.url], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    folder = tmp_path / "cache" / "gpucnn" / "datasets" / "mnist"
    assert f"GPUCNN_MNIST_DIR={folder}" in r.stdout
    x, y = datasets.mnist(folder, split="test", download=False)
    assert x.shape == (10_000, 28, 28, 1)
    assert np.bincount(y, minlength=10).tolist() == REAL_COUNTS

    h = subprocess.run([sys.executable, "-m", "gpucnn.datasets", "fetch", "--help"],
                       capture_output=True, text=True, timeout=120)
    assert h.returncode == 0 and "--dir" in h.stdout and "--split" in h.stdout, h.stderr
