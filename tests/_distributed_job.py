"""One job of tests/test_distributed.py, run by ``mpiexec -n 2 python tests/_distributed_job.py
SCENARIO OUT``. Each rank writes what it computed under the folder OUT (``rank<r>.npz``) and
prints what the test reads; the test compares it with one process.

Scenarios: ``train`` (three trainings, evaluate and predict on an odd count, a checkpoint),
``raise`` / ``hang`` / ``kill`` (rank 1 fails mid-epoch), ``refuse`` (a batch_size mismatch
and a non-finite loss), ``gpu`` (the CUDA path in Numba's simulator with NCCL's calls done by
MPI, then without NCCL).
"""
import os
import signal
import sys
import time

import numpy as np

import gpucnn
from gpucnn import callbacks, distributed, layers, models, optimizers, zoo

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _fakes import FakeGpu  # noqa: E402  (tests/ is not a package)

N = 1000


def data(n=N, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 32, 32, 1), dtype=np.float32), rng.integers(0, 10, n)


def lenet(opt, seed, dropout=False):
    """LeNet-5 from seed ``seed`` (a dropout layer before its output with ``dropout``)."""
    gpucnn.manual_seed(seed)
    model = zoo.lenet5()
    if dropout:
        model = models.Sequential(model.layers[:-1] + [layers.Dropout(0.3),
                                                       model.layers[-1]])
    model.compile(opt, "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


CASES = {   # name: (optimizer, batch size, dropout)
    "sgd": (lambda: optimizers.SGD(0.05, momentum=0.9), 32, False),
    "adam": (lambda: optimizers.Adam(1e-3), 33, False),
    "dropout": (lambda: optimizers.SGD(0.05), 32, True),
}


def resumed_adam(x, y):
    """LeNet-5 with Adam after one epoch on 256 samples (in order): its optimizer has moments."""
    model = lenet(optimizers.Adam(1e-3), 100)
    model.fit(x[:256], y[:256], batch_size=32, epochs=1, verbose=0, shuffle=False)
    return model


def train(out):
    r = distributed.rank()
    x, y = data()
    saved = {}
    for name, (opt, batch, dropout) in CASES.items():
        # rank 1 starts from other weights (seed 100 + rank): fit gives it rank 0's
        model = lenet(opt(), 100 + r, dropout)
        saved[f"{name}/start"] = model.get_weights()[0]
        gpucnn.manual_seed(7 + r)           # and another random state: rank 0's wins
        h = model.fit(x, y, batch_size=batch, epochs=2, verbose=0)
        for i, w in enumerate(model.get_weights()):
            saved[f"{name}/w{i}"] = w
        saved[f"{name}/loss"] = np.array(h.history["loss"])
        saved[f"{name}/accuracy"] = np.array(h.history["accuracy"])
    # optimizer state that rank 0 alone has (as when rank 0 alone loaded a saved model): fit
    # starts every rank from rank 0's moments
    model = resumed_adam(x, y)
    if r == 1:
        named = [(str(i), p) for i, p in enumerate(model.trainable_weights)]
        state = model.optimizer.get_slot_arrays(named)
        model.optimizer.set_slot_arrays(named, {k: np.full_like(v, 0.5) for k, v in state.items()})
    model.fit(x[:256], y[:256], batch_size=32, epochs=1, verbose=0, shuffle=False)
    for i, w in enumerate(model.get_weights()):
        saved[f"resumed/w{i}"] = w
    # evaluate and predict on a count that does not split evenly; a checkpoint; prints
    model = lenet(optimizers.SGD(0.05), 100)
    xo, yo = x[:999], y[:999]
    saved["evaluate"] = np.array(model.evaluate(xo, yo, batch_size=64, verbose=0))
    saved["predict"] = model.predict(xo, batch_size=64, verbose=0)
    ckpt = callbacks.ModelCheckpoint(os.path.join(out, f"ckpt-rank{r}.npz"),
                                     save_weights_only=True)
    said = callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: print(f"callback of rank {r} after epoch {epoch + 1}"))
    model.fit(x[:96], y[:96], batch_size=32, epochs=1, verbose=2, callbacks=[ckpt, said])
    np.savez(os.path.join(out, f"rank{r}.npz"), **saved)


def fail(how):
    """Rank 1 raises, hangs or is killed at the third step of the first epoch."""
    r = distributed.rank()
    x, y = data(256)

    def batch_end(batch, logs):
        if r == 1 and batch == 2:
            if how == "raise":
                raise ArithmeticError("boom on rank 1")
            if how == "hang":
                time.sleep(3600)
            os.kill(os.getpid(), signal.SIGKILL)

    model = lenet(optimizers.SGD(0.01), 1)
    print(f"rank {r} training", flush=True)
    model.fit(x, y, batch_size=32, epochs=3, verbose=0,
              callbacks=[callbacks.LambdaCallback(on_train_batch_end=batch_end)])
    print(f"rank {r} finished (should not happen)", flush=True)


def refuse():
    """A batch_size mismatch, then a loss that overflows: both raise on both ranks."""
    r = distributed.rank()
    x, y = data(64)
    model = lenet(optimizers.SGD(0.01), 1)
    try:
        model.fit(x, y, batch_size=32 if r == 0 else 16, epochs=1, verbose=0)
    except ValueError as e:
        print(f"rank {r} raised {type(e).__name__}: {e}", flush=True)
    big = models.Sequential([layers.Input(shape=(32, 32, 1)), layers.Flatten(),
                             layers.Dense(3)])
    big.compile(optimizers.SGD(0.1), "mse")
    big.set_weights([np.full((1024, 3), 1e30, np.float32), np.zeros(3, np.float32)])
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            big.fit(x + 1, np.zeros((64, 3), np.float32), batch_size=16, verbose=0)
    except FloatingPointError as e:
        print(f"rank {r} raised {type(e).__name__}: {e}", flush=True)
    distributed.barrier()


def small():
    """The data and the model of the ``gpu`` scenario."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((24, 6)).astype(np.float32)
    y = rng.integers(0, 3, 24)
    gpucnn.manual_seed(4)
    model = models.Sequential([layers.Input(shape=(6,)), layers.Dense(5, activation="tanh"),
                               layers.Dense(3, activation="softmax")])
    model.compile(optimizers.SGD(0.1), "sparse_categorical_crossentropy", metrics=["accuracy"])
    return x, y, model


def gpu(out):
    from gpucnn.kernels.cuda_set import simulate

    simulate.lock_shared_arrays()
    saved = {}
    rank = None
    gpucnn.set_backend("cuda")
    for with_nccl in (True, False):
        fake = FakeGpu(with_nccl)
        distributed._state["gpu"] = fake
        distributed.init()
        info = distributed.info()
        rank = info["rank"]
        x, y, model = small()
        with simulate.small_launches():
            h = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
            total = distributed.allreduce(gpucnn.backend.xp().full(4, distributed.rank() + 1.0,
                                                                   np.float32))
        key = "nccl" if with_nccl else "host"
        saved[f"{key}/loss"] = np.array(h.history["loss"])
        for i, w in enumerate(model.get_weights()):
            saved[f"{key}/w{i}"] = w
        saved[f"{key}/used"] = np.array(fake.used)
        saved[f"{key}/ids_made"] = np.array(fake.ids_made)
        saved[f"{key}/uid"] = np.frombuffer(fake.comms[0].uid if fake.comms else b"", np.uint8)
        saved[f"{key}/sums"] = np.array(sum(c.sums for c in fake.comms))
        saved[f"{key}/allreduce"] = np.asarray(total)
        print(f"rank {info['rank']}: transport {info['transport']}, device {info['device']}",
              flush=True)
        distributed.shutdown()
    np.savez(os.path.join(out, f"rank{rank}.npz"), **saved)


def main():
    scenario, out = sys.argv[1], sys.argv[2]
    if scenario != "gpu":
        gpucnn.set_backend("numpy")
        distributed.init()
    if scenario == "train":
        train(out)
    elif scenario in ("raise", "hang", "kill"):
        fail(scenario)
    elif scenario == "refuse":
        refuse()
    elif scenario == "gpu":
        gpu(out)
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")


if __name__ == "__main__":
    main()
