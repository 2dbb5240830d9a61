"""gpucnn.datasets: MNIST (real test split + generated IDX files), digits, CIFAR-10, split; and
``python -m gpucnn.datasets fetch mnist``: checksummed downloads, without the network.

Generated files are written here with struct/gzip/tarfile, independently of the loaders; the
real MNIST test split is found through GPUCNN_MNIST_DIR (CI sets it) and never copied.

For the fetch command a local HTTP server (a thread of this process, on 127.0.0.1) plays the
mirror. It serves IDX files written here, and the "published" checksums the command checks
against are computed here with hashlib and put in place of the real ones; one test serves copies
of the shared MNIST test split and checks what ``gpucnn.datasets.mnist`` then reads against the
label counts in that data's README.
"""
import gzip
import hashlib
import http.server
import io
import os
import shutil
import socket
import struct
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

from gpucnn import datasets
from gpucnn.datasets import ChecksumError, DataFileError, DataNotFoundError
from gpucnn.datasets import __main__ as cli
from gpucnn.datasets import _cifar, _fetch, _files, _mnist

ROOT = Path(__file__).resolve().parents[1]
MNIST_TEST = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
MNIST_TRAIN = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
TEST_GZ = sorted(s + ".gz" for s in MNIST_TEST)
# Per-digit counts of the real test split, from ../shared/data/mnist/README.md.
REAL_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
HOW_TO_GET = ("run `python -m gpucnn.datasets fetch mnist --split test` and set GPUCNN_MNIST_DIR "
              "to the folder it prints (CI sets it to ../shared/data/mnist)")


# ----------------------------------------------------------------------------- helpers

def idx_bytes(array, magic):
    """IDX bytes of a uint8 array: the magic, big-endian uint32 dims, the values."""
    array = np.asarray(array, dtype=np.uint8)
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_mnist(folder, stems, n, rng, gz=True, labels=None):
    """Random 28x28 images and labels as an IDX pair in ``folder``; returns (images, labels)."""
    folder.mkdir(parents=True, exist_ok=True)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8) if labels is None else labels
    for stem, blob in zip(stems, (idx_bytes(images, 2051), idx_bytes(labels, 2049))):
        if gz:
            (folder / (stem + ".gz")).write_bytes(gzip.compress(blob))
        else:
            (folder / stem).write_bytes(blob)
    return images, labels


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a URL fails the test."""
    def refuse(url, *a, **k):
        raise AssertionError(f"unexpected download of {url}")
    monkeypatch.setattr(_files, "urlopen", refuse)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty home and user cache, no GPUCNN_DATA: the default lookup touches nothing real."""
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("HOME", str(h))
    monkeypatch.setenv("XDG_CACHE_HOME", str(h / "cache"))
    monkeypatch.delenv("GPUCNN_DATA", raising=False)
    return h


def leftovers(folder):
    return sorted(p.name for p in Path(folder).rglob("*") if ".part" in p.name)


# ----------------------------------------------------------------------------- real MNIST

def test_real_mnist_test_split(no_network, mnist_dir):
    x, y = datasets.mnist(mnist_dir, split="test")
    assert x.shape == (10000, 28, 28, 1) and x.dtype == np.float32
    assert y.shape == (10000,) and y.dtype == np.int64
    assert np.bincount(y, minlength=10).tolist() == REAL_COUNTS
    assert y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]   # the well-known first test digits
    assert x.min() == 0.0 and x.max() == 1.0
    assert 0.10 < x.mean() < 0.16                               # MNIST's mean intensity ~0.13
    # pixels against a plain parse of the decompressed file
    with gzip.open(mnist_dir / "t10k-images-idx3-ubyte.gz") as f:
        raw = f.read()
    for i in (0, 4321, 9999):
        start = 16 + i * 784
        expected = [[raw[start + r * 28 + c] / 255 for c in range(28)] for r in range(28)]
        np.testing.assert_allclose(x[i, :, :, 0], expected, rtol=0, atol=1e-7)


def test_real_mnist_padding_and_uint8(no_network, mnist_dir):
    x8, _ = datasets.mnist(mnist_dir, split="test", normalize=False)
    xp, _ = datasets.mnist(mnist_dir, split="test", pad_to_32=True)
    assert x8.dtype == np.uint8 and x8.max() == 255
    assert xp.shape == (10000, 32, 32, 1)
    np.testing.assert_array_equal(xp[:, 2:30, 2:30], x8 / np.float32(255))
    border = np.ones((32, 32), bool)
    border[2:30, 2:30] = False
    assert not xp[:, border].any()


def test_real_mnist_both_splits_missing_train_says_where(no_network, mnist_dir):
    with pytest.raises(DataNotFoundError) as e:
        datasets.mnist(mnist_dir, download=False)
    msg = str(e.value)
    assert "train-images-idx3-ubyte.gz" in msg and "train-labels-idx1-ubyte.gz" in msg
    assert str(mnist_dir) in msg and "t10k" not in msg and "\n" not in msg


def test_real_mnist_truncated_copies_refused(tmp_path, mnist_dir):
    gz = (mnist_dir / "t10k-images-idx3-ubyte.gz").read_bytes()
    raw = gzip.decompress(gz)
    labels = (mnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes()
    cases = {
        "raw_cut": (MNIST_TEST[0], raw[: len(raw) - 784]),          # one image short
        "gz_of_cut": (MNIST_TEST[0] + ".gz", gzip.compress(raw[:5000])),
        "gz_cut": (MNIST_TEST[0] + ".gz", gz[: len(gz) // 2]),       # broken gzip stream
    }
    for case, (name, blob) in cases.items():
        d = tmp_path / case
        d.mkdir()
        (d / name).write_bytes(blob)
        (d / (MNIST_TEST[1] + ".gz")).write_bytes(labels)
        with pytest.raises(DataFileError, match="t10k-images-idx3-ubyte") as e:
            datasets.mnist(d, download=False, split="test")
        assert "truncated" in str(e.value) or "gzip" in str(e.value), case


# ----------------------------------------------------------------------------- generated MNIST

@pytest.mark.parametrize("gz", [True, False])
def test_mnist_reads_gzip_and_raw(tmp_path, rng, gz, no_network):
    images, labels = write_mnist(tmp_path, MNIST_TEST, 7, rng, gz=gz)
    x, y = datasets.mnist(str(tmp_path), split="test")
    assert x.shape == (7, 28, 28, 1) and x.dtype == np.float32
    np.testing.assert_allclose(x[..., 0], images / 255.0, rtol=0, atol=1e-7)
    assert y.tolist() == labels.tolist()


def test_mnist_both_splits(tmp_path, rng, no_network):
    tr = write_mnist(tmp_path, MNIST_TRAIN, 5, rng)
    te = write_mnist(tmp_path, MNIST_TEST, 3, rng, gz=False)
    (xa, ya), (xb, yb) = datasets.mnist(tmp_path)
    assert xa.shape == (5, 28, 28, 1) and xb.shape == (3, 28, 28, 1)
    assert ya.tolist() == tr[1].tolist() and yb.tolist() == te[1].tolist()


@pytest.mark.parametrize("case,pattern", [
    ("short", r"t10k-images.*truncated"), ("long", r"t10k-images.*extra bytes"),
    ("header", r"t10k-labels.*truncated"), ("dims", r"t10k-images.*\(N, 28, 28\)"),
    ("count", r"t10k-labels.*5 labels for the 6 images"), ("label", r"t10k-labels.*label 10"),
    ("labels", r"t10k-images.*magic number 2049, expected 2051"),
    ("ndim", "magic number 2052, expected 2051"),
], ids=["short", "long", "header", "dims", "count", "label", "labels", "ndim"])
def test_mnist_bad_files_refused(tmp_path, rng, case, pattern):
    images, labels = write_mnist(tmp_path, MNIST_TEST, 6, rng, gz=False)
    img, lbl = (tmp_path / s for s in MNIST_TEST)
    path, blob = {
        "short": (img, img.read_bytes()[:-1]),
        "long": (img, img.read_bytes() + b"\x00"),
        "header": (lbl, lbl.read_bytes()[:6]),
        "dims": (img, idx_bytes(images[:, :, :27], 2051)),
        "count": (lbl, idx_bytes(labels[:5], 2049)),
        "label": (lbl, idx_bytes(np.r_[labels[:5], 10], 2049)),
        "labels": (img, lbl.read_bytes()),                  # a label file named as the images
        "ndim": (img, b"\x00\x00\x08\x04" + img.read_bytes()[4:]),  # the type byte, 4 dims
    }[case]
    path.write_bytes(blob)
    with pytest.raises(DataFileError, match=pattern):
        datasets.mnist(tmp_path, split="test", download=False)


def test_mnist_lookup_order(tmp_path, rng, home, monkeypatch, no_network):
    _, in_home = write_mnist(home / ".gpucnn" / "datasets" / "mnist", MNIST_TEST, 3, rng)
    assert datasets.mnist(split="test")[1].tolist() == in_home.tolist()
    _, in_env = write_mnist(tmp_path / "data" / "mnist", MNIST_TEST, 4, rng)
    monkeypatch.setenv("GPUCNN_DATA", str(tmp_path / "data"))
    assert datasets.mnist(split="test")[1].tolist() == in_env.tolist()


def test_mnist_offline_message(tmp_path, home, monkeypatch):
    monkeypatch.setattr(_mnist, "MNIST_MIRRORS", ((tmp_path / "no-mirror").as_uri() + "/",))
    with pytest.raises(DataNotFoundError) as e:
        datasets.mnist()
    msg = str(e.value)
    folder = home / ".gpucnn" / "datasets" / "mnist"
    for stem in MNIST_TRAIN + MNIST_TEST:
        assert stem + ".gz" in msg
    assert f"into {folder}" in msg and "GPUCNN_DATA" in msg and "\n" not in msg
    assert "no-mirror" in msg                             # the reason the download failed
    assert leftovers(home) == []
    with pytest.raises(DataNotFoundError, match=r"download=False.*t10k-images-idx3-ubyte\.gz"):
        datasets.mnist(tmp_path / "empty", download=False, split="test")


def serve_mnist(server, rng, monkeypatch, n=5, stems=MNIST_TEST):
    """Random gzip IDX files of ``stems`` in the folder ``server``, made the 'published' ones
    (their SHA-256 and size in MNIST_REMOTE), and ``server`` the only (file://) mirror of
    ``datasets.mnist``; returns (images, labels)."""
    out = write_mnist(server, stems, n, rng)
    for stem in stems:
        blob = (server / (stem + ".gz")).read_bytes()
        monkeypatch.setitem(_mnist.MNIST_REMOTE, stem, _files.RemoteFile(
            stem + ".gz", hashlib.sha256(blob).hexdigest(), len(blob)))
    monkeypatch.setattr(_mnist, "MNIST_MIRRORS", (server.as_uri() + "/",))
    return out


def test_mnist_download_verified_and_atomic(tmp_path, rng, monkeypatch):
    images, labels = serve_mnist(tmp_path / "server", rng, monkeypatch)
    dead = (tmp_path / "dead").as_uri() + "/"
    monkeypatch.setattr(_mnist, "MNIST_MIRRORS", (dead, (tmp_path / "server").as_uri() + "/"))
    target = tmp_path / "target"
    x, y = datasets.mnist(target, split="test")
    np.testing.assert_allclose(x[..., 0], images / 255.0, rtol=0, atol=1e-7)
    assert y.tolist() == labels.tolist()
    assert contents(target) == TEST_GZ


@pytest.mark.parametrize("i,change,words", [
    (0, lambda r: r._replace(sha256=r.sha256[::-1]), "t10k-images-idx3-ubyte.gz.*SHA-256"),
    (1, lambda r: r._replace(size=r.size - 1), "more than the expected"),   # one byte more
], ids=["checksum", "size"])
def test_mnist_download_of_other_bytes_refused(tmp_path, rng, monkeypatch, i, change, words):
    serve_mnist(tmp_path / "server", rng, monkeypatch)
    stem = MNIST_TEST[i]
    monkeypatch.setitem(_mnist.MNIST_REMOTE, stem, change(_mnist.MNIST_REMOTE[stem]))
    target = tmp_path / "target"
    with pytest.raises(ChecksumError, match=words):
        datasets.mnist(target, split="test")
    assert leftovers(target) == []
    if i == 0:
        assert not target.exists()      # nothing half-written, not even the folder it made


@pytest.mark.parametrize("error", [OSError("connection reset"), KeyboardInterrupt()])
def test_mnist_interrupted_download_leaves_nothing(tmp_path, rng, monkeypatch, error):
    serve_mnist(tmp_path / "server", rng, monkeypatch)
    monkeypatch.setattr(_mnist, "MNIST_MIRRORS", ("https://mirror.invalid/",))

    class Broken(io.BytesIO):
        def read(self, n=-1):
            if self.tell():
                raise error
            return super().read(100)

    monkeypatch.setattr(_files, "urlopen", lambda url, timeout: Broken(b"\x1f\x8b" * 500))
    expected = DataNotFoundError if isinstance(error, OSError) else KeyboardInterrupt
    words = "not downloaded" if expected is DataNotFoundError else None
    with pytest.raises(expected, match=words):
        datasets.mnist(tmp_path / "new" / "mnist", split="test")
    assert not (tmp_path / "new").exists()          # no empty folder left, at either level


def test_mnist_only_downloads_what_is_missing(tmp_path, rng, monkeypatch):
    images, labels = serve_mnist(tmp_path / "server", rng, monkeypatch)
    target = tmp_path / "target"
    target.mkdir()
    (target / MNIST_TEST[0]).write_bytes(idx_bytes(images, 2051))   # images already there, raw
    opened = []
    real_open = _files.urlopen
    monkeypatch.setattr(_files, "urlopen", lambda url, timeout: opened.append(url) or
                        real_open(url, timeout=timeout))
    x, y = datasets.mnist(target, split="test")
    assert [u.rsplit("/", 1)[1] for u in opened] == [MNIST_TEST[1] + ".gz"]
    assert y.tolist() == labels.tolist()


# ----------------------------------------------------------------------------- digits

def bilinear_reference(img, size):
    """Plain-loop bilinear resize on pixel centres, clamped at the borders."""
    n = img.shape[0]
    out = np.zeros((size, size))
    for i in range(size):
        for j in range(size):
            sy = min(max((i + 0.5) * n / size - 0.5, 0), n - 1)
            sx = min(max((j + 0.5) * n / size - 0.5, 0), n - 1)
            y0, x0 = int(sy), int(sx)
            y1, x1 = min(y0 + 1, n - 1), min(x0 + 1, n - 1)
            ty, tx = sy - y0, sx - x0
            out[i, j] = ((1 - ty) * (1 - tx) * img[y0, x0] + (1 - ty) * tx * img[y0, x1]
                         + ty * (1 - tx) * img[y1, x0] + ty * tx * img[y1, x1])
    return out


def test_digits():
    sk = pytest.importorskip("sklearn.datasets")
    raw = sk.load_digits()
    x, y = datasets.digits()
    assert x.shape == (1797, 32, 32, 1) and x.dtype == np.float32
    assert y.dtype == np.int64 and y.tolist() == raw.target.tolist()
    assert np.bincount(y).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    assert x.min() == 0.0 and x.max() == 1.0
    for i in (0, 1000, 1796):
        np.testing.assert_allclose(x[i, :, :, 0], bilinear_reference(raw.images[i] / 16, 32),
                                   rtol=0, atol=1e-6)
    x8, _ = datasets.digits(size=8)
    np.testing.assert_allclose(x8[..., 0], raw.images / 16, rtol=0, atol=1e-7)
    x13, _ = datasets.digits(size=13)
    np.testing.assert_allclose(x13[5, :, :, 0], bilinear_reference(raw.images[5] / 16, 13),
                               rtol=0, atol=1e-6)


def test_digits_without_sklearn(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match="pip install scikit-learn"):
        datasets.digits()


# ----------------------------------------------------------------------------- CIFAR-10

def cifar_records(rng, n):
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    pixels = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    return labels, pixels, np.concatenate([labels[:, None], pixels], axis=1).tobytes()


def write_cifar(folder, rng, n=3):
    """Five train batches of n records and a test batch of n+1; returns the (labels, pixels)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        labels, pixels, blob = cifar_records(rng, n + (name == "test_batch.bin"))
        (folder / name).write_bytes(blob)
        out[name] = (labels, pixels)
    return out


def check_cifar_pixels(x, labels, pixels):
    """x[n, r, c, ch] against the record byte 1 + ch * 1024 + r * 32 + c, by plain indexing."""
    for n in range(len(labels)):
        for r, c in ((0, 0), (5, 31), (31, 7), (17, 17)):
            for ch in range(3):
                assert x[n, r, c, ch] == np.float32(pixels[n, ch * 1024 + r * 32 + c] / 255)


def test_cifar10_binary(tmp_path, rng, no_network):
    files = write_cifar(tmp_path, rng)
    (xa, ya), (xb, yb) = datasets.cifar10(tmp_path)
    assert xa.shape == (15, 32, 32, 3) and xb.shape == (4, 32, 32, 3)
    assert xa.dtype == np.float32 and ya.dtype == np.int64
    train_labels = np.concatenate([files[f"data_batch_{i}.bin"][0] for i in range(1, 6)])
    train_pixels = np.concatenate([files[f"data_batch_{i}.bin"][1] for i in range(1, 6)])
    assert ya.tolist() == train_labels.tolist()
    check_cifar_pixels(xa, train_labels, train_pixels)
    check_cifar_pixels(xb, *files["test_batch.bin"])
    x8, _ = datasets.cifar10(tmp_path, split="test", normalize=False)
    assert x8.dtype == np.uint8 and x8.flags.c_contiguous
    assert len(datasets.CIFAR10_CLASSES) == 10


def test_cifar10_subfolder_and_env(tmp_path, rng, home, monkeypatch, no_network):
    files = write_cifar(tmp_path / "d" / "cifar10" / "cifar-10-batches-bin", rng)
    monkeypatch.setenv("GPUCNN_DATA", str(tmp_path / "d"))
    x, y = datasets.cifar10(split="test")
    assert y.tolist() == files["test_batch.bin"][0].tolist()


def test_cifar10_bad_files(tmp_path, rng):
    write_cifar(tmp_path, rng)
    batch = tmp_path / "test_batch.bin"
    good = batch.read_bytes()
    batch.write_bytes(good[:-1])
    with pytest.raises(DataFileError, match=r"test_batch\.bin.*not a whole number of 3,073-byte"):
        datasets.cifar10(tmp_path, split="test", download=False)
    batch.write_bytes(b"\x80" + good[1:])               # 0x80 starts a pickle, never a label
    with pytest.raises(DataFileError, match=r"test_batch\.bin: label byte 128.*pickled"):
        datasets.cifar10(tmp_path, split="test", download=False)


def test_cifar10_missing_message(tmp_path, home):
    with pytest.raises(DataNotFoundError) as e:
        datasets.cifar10(download=False, split="train")
    msg = str(e.value)
    for i in range(1, 6):
        assert f"data_batch_{i}.bin" in msg
    assert str(home / ".gpucnn" / "datasets" / "cifar10") in msg
    assert "cifar-10-binary.tar.gz" in msg and "\n" not in msg


def make_cifar_archive(path, rng):
    """A small cifar-10-binary.tar.gz of the real layout; returns the test (labels, pixels)."""
    src = path.parent / "src"
    files = write_cifar(src, rng, n=2)
    (src / "batches.meta.txt").write_text("\n".join(datasets.CIFAR10_CLASSES) + "\n")
    with tarfile.open(path, "w:gz") as tar:
        for f in sorted(src.iterdir()):
            tar.add(f, arcname=f"cifar-10-batches-bin/{f.name}")
    blob = path.read_bytes()
    return files["test_batch.bin"], _files.RemoteFile(path.name, hashlib.sha256(blob).hexdigest(),
                                                      len(blob))


def test_cifar10_download_and_extract(tmp_path, rng, monkeypatch):
    archive = tmp_path / "server" / "cifar-10-binary.tar.gz"
    archive.parent.mkdir()
    (labels, pixels), remote = make_cifar_archive(archive, rng)
    monkeypatch.setattr(_cifar, "CIFAR10_ARCHIVE", remote)
    monkeypatch.setattr(_cifar, "CIFAR10_URLS", (archive.as_uri(),))
    target = tmp_path / "target"
    x, y = datasets.cifar10(target, split="test")
    assert y.tolist() == labels.tolist()
    check_cifar_pixels(x, labels, pixels)
    assert "cifar-10-binary.tar.gz" not in {p.name for p in target.iterdir()}
    assert leftovers(target) == [] and (target / "data_batch_5.bin").is_file()

    monkeypatch.setattr(_cifar, "CIFAR10_ARCHIVE", remote._replace(sha256="0" * 64))
    with pytest.raises(ChecksumError, match="cifar-10-binary.tar.gz"):
        datasets.cifar10(tmp_path / "target2")
    assert not (tmp_path / "target2").exists()


def test_cifar10_local_archive(tmp_path, rng, monkeypatch, no_network):
    folder = tmp_path / "data"
    folder.mkdir()
    (labels, _), remote = make_cifar_archive(folder / "cifar-10-binary.tar.gz", rng)
    monkeypatch.setattr(_cifar, "CIFAR10_ARCHIVE", remote._replace(sha256="f" * 64))
    with pytest.raises(DataFileError, match="SHA-256"):
        datasets.cifar10(folder, split="test")
    monkeypatch.setattr(_cifar, "CIFAR10_ARCHIVE", remote)
    assert datasets.cifar10(folder, split="test")[1].tolist() == labels.tolist()


# ----------------------------------------------------------------------------- split

def test_split(rng):
    n = int(rng.integers(20, 50))
    x = np.arange(n)[:, None] * np.ones((1, 3))
    y = np.arange(n)
    (xt, yt), (xv, yv) = datasets.split(x, y, 0.25, seed=3)
    assert len(yv) == round(0.25 * n) and len(yt) + len(yv) == n
    assert sorted(np.r_[yt, yv].tolist()) == list(range(n))         # disjoint and complete
    np.testing.assert_array_equal(xt[:, 0], yt)                        # pairs stay together
    np.testing.assert_array_equal(xv[:, 2], yv)
    again = datasets.split(x, y, 0.25, seed=3)
    np.testing.assert_array_equal(again[1][1], yv)
    other = datasets.split(x, y, 0.25, seed=4)
    assert other[1][1].tolist() != yv.tolist()


@pytest.mark.parametrize("call, error, pattern", [
    (lambda d: datasets.mnist(d, split="val"), ValueError,
     "split must be None, 'train' or 'test', got 'val'"),
    (lambda d: datasets.mnist(3), TypeError, "path must be a str or os.PathLike, got int"),
    (lambda d: datasets.digits(size=0), ValueError, "size must be an int >= 1, got 0"),
    (lambda d: datasets.split(np.zeros((4, 2)), np.zeros(5), 0.5), ValueError,
     "same number of samples"),
    (lambda d: datasets.split(np.zeros((4, 2)), np.zeros(4), 1.0), ValueError,
     "fraction must be between 0 and 1"),
    (lambda d: datasets.split(np.zeros((4, 2)), np.zeros(4), 0.05), ValueError, "0 held out"),
], ids=["mnist-split", "mnist-path", "digits-size", "split-lengths", "split-1", "split-none"])
def test_bad_arguments_refused(tmp_path, call, error, pattern):
    with pytest.raises(error, match=pattern):
        call(tmp_path)


# ============================================================================= the fetch command
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


def fetch_test(target, *mirrors):
    """``python -m gpucnn.datasets fetch mnist --split test --dir target --mirror ...``."""
    return cli.main(["fetch", "mnist", "--split", "test", "--dir", str(target),
                     *[a for m in mirrors for a in ("--mirror", m)]])


def contents(folder):
    """Every name under ``folder``; [] when a failed download removed (or never made) it."""
    return sorted(p.name for p in Path(folder).rglob("*")) if Path(folder).exists() else []


def one_error_line(err):
    lines = [ln for ln in err.splitlines() if ln.startswith("python -m gpucnn.datasets")]
    assert len(lines) == 1, f"expected one error line on stderr, got:\n{err}"
    return lines[0]


# ----------------------------------------------------------------------------- downloads

def test_fetch_into_the_user_cache_then_mnist_finds_it(mirror, home, rng, monkeypatch, capsys):
    train = serve_mnist(mirror.folder, rng, monkeypatch, 7, MNIST_TRAIN)
    test = serve_mnist(mirror.folder, rng, monkeypatch, 4)

    assert cli.main(["fetch", "mnist", "--mirror", mirror.url]) == 0
    out, err = capsys.readouterr()
    folder = home / "cache" / "gpucnn" / "datasets" / "mnist"
    for stem in MNIST_TRAIN + MNIST_TEST:
        got = (folder / (stem + ".gz")).read_bytes()
        assert got == (mirror.folder / (stem + ".gz")).read_bytes(), stem
        assert f"{stem}.gz  [" in err and "100%" in err      # its progress bar, completed
    assert f"are in {folder}" in out and f"GPUCNN_MNIST_DIR={folder}" in out
    assert sorted(mirror.requests) == sorted(s + ".gz" for s in MNIST_TRAIN + MNIST_TEST)
    assert leftovers(folder) == []

    (xtr, ytr), (xte, yte) = datasets.mnist(download=False, normalize=False)  # default lookup
    for got, want in zip((xtr[..., 0], ytr, xte[..., 0], yte), (*train, *test)):
        np.testing.assert_array_equal(got, want)


def test_verified_files_stay_and_altered_ones_are_replaced(mirror, tmp_path, rng, monkeypatch,
                                                           capsys):
    serve_mnist(mirror.folder, rng, monkeypatch, 3)
    target = tmp_path / "new" / "mnist"
    assert fetch_test(target, mirror.url.rstrip("/")) == 0      # one split, into a new folder
    assert contents(target) == TEST_GZ and sorted(mirror.requests) == TEST_GZ
    assert f"gpucnn.datasets.mnist({str(target)!r})" in capsys.readouterr().out
    mirror.requests.clear()
    assert fetch_test(target, mirror.url) == 0
    assert mirror.requests == []                              # both already verified
    assert capsys.readouterr().out.count("present  t10k-") == 2

    labels = target / (MNIST_TEST[1] + ".gz")
    blob = bytearray(labels.read_bytes())
    blob[-1] ^= 0xFF
    labels.write_bytes(bytes(blob))
    assert fetch_test(target, mirror.url) == 0
    assert mirror.requests == [MNIST_TEST[1] + ".gz"]
    assert labels.read_bytes() == (mirror.folder / (MNIST_TEST[1] + ".gz")).read_bytes()
    assert "is not the published file" in capsys.readouterr().err


@pytest.mark.parametrize("how", ["other-bytes", "cut-short"])
def test_a_failed_download_is_one_line_and_saves_nothing(mirror, tmp_path, rng, monkeypatch,
                                                         capsys, how):
    serve_mnist(mirror.folder, rng, monkeypatch, 50)
    served = mirror.folder / (MNIST_TEST[0] + ".gz")
    blob = bytearray(served.read_bytes())
    if how == "cut-short":                                      # the connection closes halfway
        mirror.httpd.cut.add(served.name)
        words = [f"download of {MNIST_TEST[0]}.gz failed", mirror.url]
    else:
        blob[len(blob) // 2] ^= 0x01                            # same size, other bytes
        served.write_bytes(bytes(blob))
        words = ["not the published file", f"SHA-256 {hashlib.sha256(bytes(blob)).hexdigest()}, "
                 f"expected {_mnist.MNIST_REMOTE[MNIST_TEST[0]].sha256}"]
    assert fetch_test(tmp_path / "d", mirror.url) == 1
    line = one_error_line(capsys.readouterr().err)
    assert all(w in line for w in words), line
    assert contents(tmp_path / "d") == []                      # no file, no .part


def test_second_mirror_is_used_when_the_first_fails(mirror, tmp_path, rng, monkeypatch):
    serve_mnist(mirror.folder, rng, monkeypatch, 3)
    empty = Mirror(tmp_path / "empty")
    empty.folder.mkdir()
    try:
        assert fetch_test(tmp_path / "d", empty.url, mirror.url) == 0
    finally:
        empty.close()
    assert sorted(empty.requests) == TEST_GZ      # 404 there
    assert contents(tmp_path / "d") == TEST_GZ


def test_unreachable_mirror_is_one_clear_line(tmp_path, capsys):
    with socket.socket() as s:              # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert fetch_test(tmp_path / "d", f"http://127.0.0.1:{port}/") == 1
    line = one_error_line(capsys.readouterr().err)
    assert f"download of {MNIST_TEST[0]}.gz failed" in line and f"127.0.0.1:{port}" in line
    assert (f"without a network, put the file by hand at {tmp_path / 'd'}/t10k-images-idx3-ubyte"
            f".gz (from http://127.0.0.1:{port}/t10k-images-idx3-ubyte.gz; its SHA-256 is "
            "checked)") in line, line
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
    class Stream(io.StringIO):
        def __init__(self, tty):
            super().__init__()
            self.isatty = lambda: tty

        text = property(io.StringIO.getvalue)

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
    if not all((Path(folder) / (s + ".gz")).is_file() for s in MNIST_TEST):
        pytest.skip(f"no MNIST test split in {folder}: {HOW_TO_GET}")
    return Path(folder)


def test_python_m_fetches_the_shared_test_split(mirror, tmp_path):
    """``python -m gpucnn.datasets`` in a fresh process, the cache under XDG_CACHE_HOME; the
    checksums it checks are those of the shared copies (patched in before the module runs)."""
    for stem in MNIST_TEST:
        shutil.copyfile(shared_mnist() / (stem + ".gz"), mirror.folder / (stem + ".gz"))
    sums = {stem: (hashlib.sha256((mirror.folder / (stem + ".gz")).read_bytes()).hexdigest(),
                   (mirror.folder / (stem + ".gz")).stat().st_size) for stem in MNIST_TEST}
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
