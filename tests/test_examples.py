"""The example scripts, run as a user runs them: a subprocess on the NumPy backend.

Each trains for one epoch on a few images and must print its metrics and save readable PNG
pictures; bad input (wrong backend, a --data folder without the files, truncated or mislabelled
files) must end with one line on stderr, exit status 2, no traceback and nothing in --out.
"""
import gzip
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
QUICK = ["--backend", "numpy", "--epochs", "1", "--limit", "48", "--batch-size", "16",
         "--verbose", "0"]


def run(script, *args, cwd, timeout=180):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("GPUCNN_BACKEND", None)
    return subprocess.run([sys.executable, str(EXAMPLES / script), *map(str, args)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=timeout)


def check_png(path):
    """A PNG file (signature, IHDR) that decodes to a picture that is not blank."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path.name} is not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert 200 <= width <= 4000 and 100 <= height <= 4000, (path.name, width, height)
    import matplotlib.image

    pixels = matplotlib.image.imread(path)
    assert pixels.shape[:2] == (height, width)
    assert pixels[..., :3].std() > 0.02, f"{path.name} is (nearly) blank"


CASES = {
    "perceptron.py": ["curves", "weights", "confusion_matrix"],
    "basic_cnn.py": ["curves", "filters_conv", "feature_maps_1_conv", "feature_maps_2_pool",
                     "confusion_matrix"],
    "lenet5.py": ["curves", "filters_C1", "feature_maps_1_C1", "feature_maps_2_S2",
                  "feature_maps_3_C3", "feature_maps_4_S4", "feature_maps_5_C5",
                  "confusion_matrix"],
    "alexnet.py": ["curves", "filters_conv1", "feature_maps_1_conv1", "feature_maps_2_pool1",
                   "feature_maps_3_conv2", "feature_maps_4_pool2", "feature_maps_5_conv3",
                   "feature_maps_6_conv4", "feature_maps_7_conv5", "feature_maps_8_pool5",
                   "confusion_matrix"],
    "autoencoder.py": ["curves", "reconstructions", "filters_enc1", "feature_maps_1_enc1",
                       "feature_maps_2_enc2", "feature_maps_3_latent", "feature_maps_4_dec1",
                       "feature_maps_5_dec2", "feature_maps_6_output"],
}


@pytest.mark.parametrize("script", sorted(CASES))
def test_example_trains_on_the_embedded_digits_and_saves_its_pictures(script, tmp_path):
    out = tmp_path / "pictures"
    r = run(script, *QUICK, "--out", out, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert "backend: numpy" in r.stdout
    assert "handwritten digits" in r.stdout          # it says what it trains on
    if script == "autoencoder.py":
        assert "test MSE against the clean images" in r.stdout
    else:
        assert "test accuracy" in r.stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(n + ".png" for n in CASES[script])
    for name in CASES[script]:
        check_png(out / (name + ".png"))
        assert f"saved {out / (name + '.png')}" in r.stdout
    assert not (tmp_path / "runs").exists()          # --out was used, not the default


def test_lenet5_example_on_the_mnist_test_split(tmp_path, mnist_dir):
    out = tmp_path / "o"
    r = run("lenet5.py", *QUICK, "--data", mnist_dir, "--out", out, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "MNIST test split" in r.stdout and "images 0-7,999 for training" in r.stdout
    assert "test accuracy" in r.stdout
    check_png(out / "feature_maps_1_C1.png")


def write_cifar_batch(path, labels, rng):
    """A file in CIFAR-10's binary format: per record one label byte and 3,072 pixel bytes."""
    records = np.empty((len(labels), 3073), np.uint8)
    records[:, 0] = labels
    records[:, 1:] = rng.integers(0, 256, (len(labels), 3072))
    path.write_bytes(records.tobytes())


def test_alexnet_example_on_cifar10_binary_files(tmp_path, rng):
    data = tmp_path / "cifar"
    data.mkdir()
    for i in range(1, 6):
        write_cifar_batch(data / f"data_batch_{i}.bin", rng.integers(0, 10, 12), rng)
    write_cifar_batch(data / "test_batch.bin", np.arange(20) % 10, rng)
    out = tmp_path / "o"
    r = run("alexnet.py", *QUICK, "--data", data, "--out", out, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "CIFAR-10 (binary version)" in r.stdout
    assert "48 training and 20 test images" in r.stdout
    check_png(out / "confusion_matrix.png")


# -- bad input ------------------------------------------------------------------------------
def idx_images(n, rows=28, cols=28, keep=None):
    data = struct.pack(">IIII", 2051, n, rows, cols) + bytes(n * rows * cols)
    return data if keep is None else data[:keep]


def idx_labels(labels):
    return struct.pack(">II", 2049, len(labels)) + bytes(labels)


def assert_one_line_error(r, prog, out, *words):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"{prog}: error: "), lines[0]
    assert "Traceback" not in r.stderr and "Epoch" not in r.stdout      # refused before training
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert not Path(out).exists(), "something was written to --out before the data was checked"


@pytest.mark.parametrize("script,args,words", [
    ("lenet5.py", ["--backend", "tpu"], ["--backend tpu", "'numpy'", "'cuda'"]),
    ("basic_cnn.py", ["--data", "{tmp}/nowhere"], ["nowhere", "no such folder"]),
    ("lenet5.py", ["--data", "{tmp}/empty"],
     ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", "{tmp}/empty"]),
    ("alexnet.py", ["--data", "{tmp}/empty"], ["data_batch_1.bin", "test_batch.bin"]),
    ("perceptron.py", ["--epochs", "0"], ["--epochs", "positive integer", "--help"]),
    ("perceptron.py", ["--seed", "-5"], ["argument --seed: expected an integer >= 0, got '-5'"]),
    ("perceptron.py", ["--out", "/sys/gpucnn-pictures", "--epochs", "1"],       # after the --out
     ["--out /sys/gpucnn-pictures: cannot create the folder or write in it"]),  # below: it wins
], ids=["unknown-backend", "data-folder-missing", "no-mnist-files", "no-cifar-files",
        "epochs-0", "seed-negative", "out-not-writable"])
def test_bad_backend_data_folder_or_option_value(tmp_path, script, args, words):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "o"
    args = [a.format(tmp=tmp_path) for a in args]
    backend = [] if "--backend" in args else ["--backend", "numpy"]
    r = run(script, *backend, "--out", out, *args, cwd=tmp_path)
    assert_one_line_error(r, script, out, *(w.format(tmp=tmp_path) for w in words))


@pytest.mark.parametrize("case", ["truncated", "mislabelled", "gzip-corrupt"])
def test_bad_mnist_files(tmp_path, case):
    data = tmp_path / "mnist"
    data.mkdir()
    if case == "truncated":
        (data / "t10k-images-idx3-ubyte").write_bytes(idx_images(10, keep=16 + 9 * 784 + 100))
        (data / "t10k-labels-idx1-ubyte").write_bytes(idx_labels([1] * 10))
        words = ["t10k-images-idx3-ubyte"]
    elif case == "mislabelled":
        (data / "t10k-images-idx3-ubyte").write_bytes(idx_images(3))
        (data / "t10k-labels-idx1-ubyte").write_bytes(idx_labels([1, 12, 3]))
        words = ["t10k-labels-idx1-ubyte", "12"]
    else:
        good = gzip.compress(idx_images(4))
        (data / "t10k-images-idx3-ubyte.gz").write_bytes(good[:len(good) // 2])
        (data / "t10k-labels-idx1-ubyte").write_bytes(idx_labels([0, 1, 2, 3]))
        words = ["t10k-images-idx3-ubyte.gz"]
    out = tmp_path / "o"
    r = run("autoencoder.py", "--backend", "numpy", "--data", data, "--out", out, cwd=tmp_path)
    assert_one_line_error(r, "autoencoder.py", out, f"--data {data}", *words)

