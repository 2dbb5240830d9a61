"""Check the accuracies gpucnn promises by running the example scripts as a user would.

    python examples/accuracy_report.py [--mnist DIR] [--seeds 0 1 2] [--backend numpy]

For each seed it runs, each in its own process with the pictures going to a temporary folder:

- ``lenet5.py --data DIR`` with Adam(1e-3) and with ``--optimizer sgd`` (the guide's
  SGD(0.01)): LeNet-5 on the MNIST test split in DIR, trained on images 0-7,999, evaluated on
  8,000-9,999, batch 32, 10 epochs; needs >= 96.5% and >= 92.5%;
- ``lenet5.py``: LeNet-5 on the embedded digits, a held-out fifth; needs >= 95%;
- ``perceptron.py``: digits 0 against 1; needs >= 99%;
- ``autoencoder.py``: the denoising autoencoder; its MSE against the clean images needs to be at
  most a third of the noisy input's;

then it times ``lenet5.py`` with no arguments (must finish in under 2 minutes on a 2-core CPU
with the NumPy backend) and, in this process, builds ``zoo.alexnet()`` (62,378,344 parameters)
and times one training step at 227 x 227 x 3 with batch 2. Exit status 1 if any check fails.

DIR defaults to $GPUCNN_MNIST_DIR, else ../shared/data/mnist beside the repository.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def run_example(script, args, backend):
    """Run an example; return (stdout, seconds). Raises with its stderr if it fails."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, str(HERE / script), "--backend", backend, "--verbose", "0",
               "--out", out, *args]
        t0 = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")
    return r.stdout, seconds


def accuracy_of(stdout):
    return float(re.search(r"test accuracy ([\d.]+)%", stdout).group(1)) / 100


def mse_ratio_of(stdout):
    m = re.search(r"noisy input ([\d.]+), reconstruction ([\d.]+)", stdout)
    return float(m.group(2)) / float(m.group(1)), float(m.group(1)), float(m.group(2))


class Report:
    def __init__(self):
        self.rows = []

    def check(self, name, values, ok, need, fmt):
        self.rows.append(ok)
        shown = ", ".join(fmt(v) for v in values)
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {shown}  (need {need})", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(prog="accuracy_report.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    default_mnist = os.environ.get("GPUCNN_MNIST_DIR") or str(
        HERE.parent.parent / "shared" / "data" / "mnist")
    p.add_argument("--mnist", default=default_mnist, metavar="DIR",
                   help="folder with the MNIST test split (t10k-images-idx3-ubyte.gz and "
                        "t10k-labels-idx1-ubyte.gz); $GPUCNN_MNIST_DIR sets the default")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], metavar="SEED",
                   help="seeds to train each network with; every seed must reach the number")
    p.add_argument("--backend", default="numpy", choices=("auto", "numpy", "cuda"),
                   help="kernel set the example scripts train on")
    args = p.parse_args(argv)
    seeds = args.seeds
    rep = Report()
    pct = "{:.2%}".format
    print(f"seeds {seeds}, backend {args.backend}, MNIST split from {args.mnist}", flush=True)

    def accs(script, extra):
        return [accuracy_of(run_example(script, [*extra, "--seed", str(s)], args.backend)[0])
                for s in seeds]

    if (Path(args.mnist) / "t10k-images-idx3-ubyte.gz").is_file():
        a = accs("lenet5.py", ["--data", args.mnist])
        rep.check("LeNet-5, MNIST 0-7,999 -> 8,000-9,999, batch 32, 10 epochs, Adam(1e-3)",
                  a, min(a) >= 0.965, ">= 96.50% each", pct)
        a = accs("lenet5.py", ["--data", args.mnist, "--optimizer", "sgd"])
        rep.check("LeNet-5, MNIST 0-7,999 -> 8,000-9,999, batch 32, 10 epochs, SGD(0.01)",
                  a, min(a) >= 0.925, ">= 92.50% each", pct)
    else:
        print(f"FAIL  MNIST test split not found in {args.mnist} (use --mnist DIR)")
        rep.rows.append(False)
    a = accs("lenet5.py", [])
    rep.check("LeNet-5, digits, held-out fifth, 10 epochs, Adam(1e-3)", a, min(a) >= 0.95,
              ">= 95.00% each", pct)
    a = accs("perceptron.py", [])
    rep.check("perceptron, digits 0 vs 1, held-out fifth", a, min(a) >= 0.99, ">= 99.00% each",
              pct)
    ratios = [mse_ratio_of(run_example("autoencoder.py", ["--seed", str(s)], args.backend)[0])
              for s in seeds]
    rep.check("denoising autoencoder, digits, noise std 0.4: reconstruction MSE / noisy MSE",
              ratios, max(r[0] for r in ratios) <= 1 / 3, "<= 0.333 each",
              lambda r: f"{r[0]:.3f} ({r[2]:.4f}/{r[1]:.4f})")

    _, seconds = run_example("lenet5.py", [], args.backend)
    rep.check(f"examples/lenet5.py, embedded default data, backend {args.backend}, wall time "
              f"on {os.cpu_count()} CPUs",
              [seconds], seconds < 120, "< 120 s", "{:.1f} s".format)

    import gpucnn
    from gpucnn import optimizers, zoo

    gpucnn.set_backend(args.backend)
    gpucnn.manual_seed(0)
    model = zoo.alexnet()
    n = model.count_params()
    rep.check("zoo.alexnet() parameters", [n], n == 62_378_344, "62,378,344", "{:,}".format)
    model.compile(optimizer=optimizers.SGD(learning_rate=0.01),
                  loss="sparse_categorical_crossentropy")
    x = np.random.default_rng(0).random((2, 227, 227, 3), dtype=np.float32)
    t0 = time.perf_counter()
    loss = float(model.train_on_batch(x, np.array([1, 2])))
    seconds = time.perf_counter() - t0
    rep.check(f"zoo.alexnet() one training step, 227x227x3, batch 2, {args.backend}",
              [seconds], np.isfinite(loss), "runs, finite loss",
              lambda s: f"{s:.2f} s, loss {loss:.3f}")
    failed = rep.rows.count(False)
    print(f"{len(rep.rows) - failed} of {len(rep.rows)} checks pass")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
