"""The worker processes of fit never hang, collide or outlive their parent (issue 17, item 1).

Four threads train four models at once, twenty times over, in a child process with a timeout:
every model ends with the weights it gets when trained alone, and no process is left behind.
A parent killed with SIGKILL in the middle of a step takes its workers with it within 2 s, even
while another child of it keeps copies of their pipes open (Linux's parent-death signal; the
workers also watch their parent's pid)."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from gpucnn.kernels import numpy_set
from gpucnn.parallel import forked

pytestmark = pytest.mark.skipif(
    not forked.available(numpy_set) or not os.path.isdir("/proc/self"),
    reason="worker processes need Linux (fork) and /proc")

COMMON = textwrap.dedent("""
    import os
    import sys

    import numpy as np

    import gpucnn
    from gpucnn import layers, models, optimizers
    from gpucnn.kernels import numpy_set
    from gpucnn.parallel import step

    gpucnn.set_backend("numpy")
    numpy_set.set_num_threads(2)
    step.PROCESS_MIN_FLOPS = 0.0            # every batch may go to worker processes
    step.THREAD_MIN_FLOPS = 0.0             # and, where not, to the kernel threads

    def children():
        # every process whose parent is this one (zombies too: a child not reaped is left)
        me, found = str(os.getpid()), []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if fields[1] == me:
                    found.append(int(entry))
        return found

    def net(seed, units):
        gpucnn.manual_seed(seed)
        model = models.Sequential([
            layers.Input(shape=(12, 12, 1)),
            layers.Conv2D(4, 3, activation="relu"),
            layers.MaxPooling2D(2),
            layers.Flatten(),
            layers.Dense(units, activation="tanh"),
            layers.Dense(3, activation="softmax"),
        ])
        model.compile(optimizers.SGD(0.05, momentum=0.5), "sparse_categorical_crossentropy",
                      metrics=["accuracy"])
        return model

    def data(seed):
        rng = np.random.default_rng(seed)
        return rng.standard_normal((48, 12, 12, 1)).astype(np.float32), rng.integers(0, 3, 48)
""")

THREADS = COMMON + textwrap.dedent("""
    import threading

    ROUNDS, MODELS = 20, 4
    sets = [data(k) for k in range(MODELS)]

    def train(model, k):
        x, y = sets[k]
        return model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0).history

    want = []                               # each model trained alone, on this thread
    for k in range(MODELS):
        model = net(k, 8 + k)
        history = train(model, k)
        want.append((model.get_weights(), history["loss"]))
        model.release_workers()
    assert children() == [], children()

    seen = set()
    for r in range(ROUNDS):
        nets = [net(k, 8 + k) for k in range(MODELS)]
        got, errors = [None] * MODELS, []

        def run(k):
            try:
                got[k] = train(nets[k], k)
                procs = nets[k].__dict__.get("_fit_workers")
                if procs is not None:
                    seen.update(w.pid for w in procs.workers)
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(f"model {k}: {type(e).__name__}: {e}")

        threads = [threading.Thread(target=run, args=(k,)) for k in range(MODELS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        if any(t.is_alive() for t in threads):
            print(f"HANG in round {r}", flush=True)
            os._exit(3)
        assert not errors, f"round {r}: {errors}"
        for k, model in enumerate(nets):
            weights, loss = want[k]
            np.testing.assert_allclose(got[k]["loss"], loss, rtol=1e-5,
                                       err_msg=f"round {r}, model {k}: loss")
            for i, (a, b) in enumerate(zip(model.get_weights(), weights)):
                np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5,
                                           err_msg=f"round {r}, model {k}: weight {i}")
        for model in nets:
            model.release_workers()
        left = children()
        assert left == [], f"round {r}: processes left: {left}"
    print("WORKERS", " ".join(str(p) for p in sorted(seen)), flush=True)
    print("OK", flush=True)
""")

KILLED = COMMON + textwrap.dedent("""
    from gpucnn import callbacks

    numpy_set.set_num_threads(3)            # two workers, each holding pipes the other made
    model = net(0, 256)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2048, 12, 12, 1)).astype(np.float32)
    y = rng.integers(0, 3, 2048)

    def said(epoch, logs):
        procs = model.__dict__.get("_fit_workers")
        pids = [w.pid for w in procs.workers] if procs is not None else []
        if epoch == 0:
            # a child of the user's own, alive after the parent dies, holding a copy of every
            # pipe end the parent had: the workers cannot count on their pipes closing
            bystander = os.fork()
            if bystander == 0:
                import time
                time.sleep(60)
                os._exit(0)
            print("BYSTANDER", bystander, flush=True)
            print("WORKERS", " ".join(map(str, pids)), flush=True)

    model.fit(x, y, batch_size=512, epochs=100000, verbose=0,
              callbacks=[callbacks.LambdaCallback(on_epoch_end=said)])
""")


def _gone(pid) -> bool:
    """No such process, or a zombie (dead; its new parent may not reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


def _env():
    env = dict(os.environ)
    env.pop("GPUCNN_NUM_THREADS", None)
    return env


def test_four_threads_train_four_models_at_once_twenty_times():
    proc = subprocess.run([sys.executable, "-c", THREADS], capture_output=True, text=True,
                          timeout=300, env=_env())
    assert proc.returncode == 0, (proc.returncode, proc.stdout[-2000:], proc.stderr[-4000:])
    assert proc.stdout.strip().endswith("OK")
    pids = [int(p) for p in proc.stdout.split("WORKERS", 1)[1].split("\n", 1)[0].split()]
    assert pids, "no round trained on worker processes: the test would prove nothing"
    assert all(_gone(p) for p in pids), [p for p in pids if not _gone(p)]


def test_workers_die_with_a_parent_killed_mid_step():
    proc = subprocess.Popen([sys.executable, "-c", KILLED], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env())
    bystander = None
    try:
        line = ""
        deadline = time.monotonic() + 120
        while not line.startswith("WORKERS") and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line.startswith("BYSTANDER"):
                bystander = int(line.split()[1])
            if not line and proc.poll() is not None:
                break
        assert line.startswith("WORKERS"), (line, proc.stderr.read()[-3000:])
        pids = [int(p) for p in line.split()[1:]]
        assert pids and not any(_gone(p) for p in pids)
        time.sleep(0.1)                          # in the middle of the next epoch's steps
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        start = time.monotonic()
        while time.monotonic() - start < 2.0 and not all(_gone(p) for p in pids):
            time.sleep(0.01)
        assert all(_gone(p) for p in pids), f"workers alive 2 s after the parent died: {pids}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if bystander is not None and not _gone(bystander):
            os.kill(bystander, signal.SIGKILL)
