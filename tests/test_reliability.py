"""Reliability cases, kept so that none comes back.

Issue 17:
- (1) The worker processes of fit never hang, collide or outlive their parent: four threads train
  four models at once, twenty times over, in a child process with a timeout; every model ends
  with the weights it gets when trained alone, and no process is left behind. A parent killed
  with SIGKILL in the middle of a step takes its workers with it within 2 s, even while another
  child of it keeps copies of their pipes open (Linux's parent-death signal; the workers also
  watch their parent's pid).
- (2) A layer object used twice is listed, counted, saved and updated once; its gradient is the
  sum over its uses (one SGD step against a hand computation in float64).
- (3) Saves respect the destination: a symlink's target is replaced (the link stays), a FIFO,
  device, socket or directory is refused, a read-only file only with ``overwrite=True`` (its
  mode kept); errors name the destination, never the temporary file; weights, pictures and
  benchmark reports all go through ``gpucnn.io.write_atomic``.
- (4) Importing gpucnn and loading the NumPy set leave glibc's allocator alone; ``fit`` tunes it
  while it trains and puts it back (measured: resident memory after freeing 2 MB arrays).
- (5) Errors name the call and the real problem (weights that are not an archive, a negative
  seed, MNIST paths, callbacks, ragged lists, GPUCNN_NUM_THREADS); the examples refuse a
  negative --seed and an --out they cannot write before training (rows of
  tests/test_examples.py's usage-error table).
- (6) A newcomer's first read: every ```python block of README.md runs as written, the README's
  picture table lists what the examples save, the CUDA install hint is the README's, the
  examples' --help says each default once.

Issue 24:
- (1) No update ever writes a non-finite weight. The kernels refuse such elements and flag the
  update (tests/test_ops.py runs the rule on both sets against tests/_reference.py); here the
  optimizer and ``fit`` on both backends (the cuda set in Numba's simulator): the error names
  the weight and the first refused step, and the weights are those of that step, compared with
  a run that stops there.
- (2-5) Files. Every writer a fit uses is checked before the first step (the error names the
  writer and the path); ``save(overwrite=True)`` replaces a read-only file as
  ``save_weights(overwrite=True)`` does; hostile model files (a FIFO, sizes beyond the file's
  bytes, an architecture asking for more than its arrays, a deep header, format_version < 1)
  are refused before anything is allocated or assigned; resume in a new process is exact with
  shuffling on, on both backends (the batch order's generator travels in the model file).
- (6-8) A Layer subclass defining only ``call`` trains in a Sequential (its output shape found
  by calling it on zeros, as Keras does; a failure names the layer and the method to add);
  arguments that were accepted or failed deep now get a clear error naming the call and what
  was expected against what was received; models pickle through the ``.npz`` file ``save``
  writes; a second thread fitting the same model is refused; the README's commands run from
  the shell it starts; an offline fetch says where to put the files by hand (checked in
  tests/test_datasets.py, with the failed download that leaves no empty folder).
"""
import errno
import json
import os
import pickle
import re
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

import gpucnn
import gpucnn.functional as F
from gpucnn import callbacks, datasets, io, layers, losses, models, optimizers, plots
from gpucnn.bench import report
from gpucnn.callbacks import LearningRateScheduler
from gpucnn.kernels import numpy_set
from gpucnn.models import saving
from gpucnn.optimizers import SGD, NonFiniteUpdateError, schedules
from gpucnn.optimizers.optimizer import Optimizer
from gpucnn.parallel import forked

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
needs_workers = pytest.mark.skipif(
    not forked.available(numpy_set) or not os.path.isdir("/proc/self"),
    reason="worker processes need Linux (fork) and /proc")


pytestmark = pytest.mark.usefixtures("numpy_backend")


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("GPUCNN_BACKEND", "GPUCNN_MALLOPT", "GPUCNN_NUM_THREADS", "GLIBC_TUNABLES",
                        "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "NUMBA_ENABLE_CUDASIM")}
    env.update(PYTHONPATH=str(ROOT), **extra)
    return env


def python(code, *argv, timeout=120, **env):
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                          timeout=timeout, env=clean_env(**env), cwd=ROOT)


def compiled(*middle, loss="sparse_categorical_crossentropy", dtype=None, seed=0, opt="sgd",
             activation=None):
    """Dense 'h' (4 -> 3, ``activation``), the ``middle`` layers, Dense 'out' (softmax, 2
    classes), compiled with the optimizer ``opt``."""
    gpucnn.manual_seed(seed)
    kw = {} if dtype is None else {"dtype": dtype}
    model = models.Sequential([layers.Dense(3, activation=activation, input_shape=(4,), name="h"),
                               *middle,
                               layers.Dense(2, activation="softmax", name="out")], **kw)
    model.compile(opt, loss, metrics=["accuracy"])
    return model


def data(n=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 4)).astype(np.float32), rng.integers(0, 2, n)


def read_only(path):
    path.write_text("old\n")
    path.chmod(0o444)
    return path


# -- issue 17, item 1: worker processes ------------------------------------------------------------

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


@needs_workers
def test_four_threads_train_four_models_at_once_twenty_times():
    proc = python(THREADS, timeout=300)
    assert proc.returncode == 0, (proc.returncode, proc.stdout[-2000:], proc.stderr[-4000:])
    assert proc.stdout.strip().endswith("OK")
    pids = [int(p) for p in proc.stdout.split("WORKERS", 1)[1].split("\n", 1)[0].split()]
    assert pids, "no round trained on worker processes: the test would prove nothing"
    assert all(_gone(p) for p in pids), [p for p in pids if not _gone(p)]


@needs_workers
def test_workers_die_with_a_parent_killed_mid_step():
    proc = subprocess.Popen([sys.executable, "-c", KILLED], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=clean_env())
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


# -- issue 17, item 2: shared layers -------------------------------------------------------------
def shared_model(seed=0):
    gpucnn.manual_seed(seed)
    d = layers.Dense(3, name="d")
    return models.Sequential([layers.Flatten(input_shape=(3,)), d, d], name="twice"), d


def test_a_layer_used_twice_is_listed_counted_and_saved_once(tmp_path):
    model, d = shared_model()
    assert model.count_params() == 12
    assert [id(t) for t in model.trainable_weights] == [id(d.kernel), id(d.bias)]
    assert [t.name for t in model.weights] == ["d/kernel", "d/bias"]
    assert len(model.get_weights()) == 2
    lines = []
    model.summary(print_fn=lines.append)
    assert "Total params: 12" in lines and "Trainable params: 12" in lines
    rows = [line for line in lines if line.startswith(" d (Dense)")]
    assert len(rows) == 2 and rows[0].endswith(" 12") and rows[1].endswith("0 (shared)"), rows

    path = tmp_path / "twice.weights.npz"
    model.save_weights(path)
    with np.load(path) as z:
        assert sorted(k for k in z.files if not k.startswith("__")) == ["d/bias", "d/kernel"]
    other, _ = shared_model(seed=1)
    assert not np.array_equal(other.get_weights()[0], model.get_weights()[0])
    other.load_weights(path)
    for a, b in zip(other.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    other.set_weights([w + 1 for w in model.get_weights()])
    np.testing.assert_array_equal(other.get_weights()[1], model.get_weights()[1] + 1)


def test_a_layer_shared_by_a_submodel_and_its_parent_is_listed_once():
    d = layers.Dense(4, name="d")

    class Net(models.Model):
        def __init__(self):
            super().__init__(name="net")
            self.inner = models.Sequential([d], name="inner")
            self.d = d

        def call(self, x, training=False):
            return self.d(self.inner(x, training))

    net = Net()
    net.build((None, 4))
    assert net.count_params() == 20 and len(net.trainable_weights) == 2
    assert [p for p, _ in net._weight_table()] == ["inner/d/kernel", "inner/d/bias"]


@pytest.mark.parametrize("how", ["train_on_batch", "fit"])
def test_one_sgd_step_applies_the_summed_gradient_once(how, rng):
    model, d = shared_model()
    lr = 0.1
    model.compile(optimizer=SGD(learning_rate=lr), loss="mse")
    x = rng.standard_normal((5, 3)).astype(np.float32)
    t = rng.standard_normal((5, 3)).astype(np.float32)
    w, b = (a.astype(np.float64) for a in model.get_weights())
    # by hand, float64: h = x W + b, y = h W + b, L = mean((y - t)^2) over all 15 numbers
    h = x @ w + b
    y = h @ w + b
    dy = 2.0 * (y - t) / y.size
    dh = dy @ w.T
    dw = h.T @ dy + x.T @ dh                    # the kernel's gradient, summed over its two uses
    db = dy.sum(0) + dh.sum(0)
    if how == "fit":
        model.fit(x, t, batch_size=5, epochs=1, shuffle=False, verbose=0)
    else:
        model.train_on_batch(x, t)
    w1, b1 = model.get_weights()
    np.testing.assert_allclose(w1, w - lr * dw, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b1, b - lr * db, rtol=1e-5, atol=1e-6)
    assert not np.allclose(w1, w - 2 * lr * dw, rtol=1e-5, atol=1e-6)     # not applied twice


# -- issue 17, item 3: saves that respect the destination ------------------------------------------
def no_temporaries(folder):
    left = [p.name for p in Path(folder).iterdir() if p.name.startswith(".")]
    assert not left, f"temporary files left behind: {left}"


def test_save_through_a_symlink_replaces_its_target(tmp_path):
    target = tmp_path / "checkpoints" / "best.weights.npz"
    target.parent.mkdir()
    compiled(seed=1).save_weights(target)
    target.chmod(0o640)
    link = tmp_path / "latest.weights.npz"
    link.symlink_to(target)
    model = compiled(seed=2)
    model.save_weights(link)
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert stat.S_IMODE(target.stat().st_mode) == 0o640          # the replaced file keeps its mode
    other = compiled(seed=3)
    other.load_weights(target)
    np.testing.assert_array_equal(other.get_weights()[0], model.get_weights()[0])
    dangling = tmp_path / "new.weights.npz"
    dangling.symlink_to(tmp_path / "checkpoints" / "created.npz")
    model.save_weights(dangling)
    assert dangling.is_symlink() and (tmp_path / "checkpoints" / "created.npz").is_file()
    no_temporaries(tmp_path)
    no_temporaries(target.parent)


def special_files(folder):
    """``{kind: path}`` of the non-regular files this process can make in ``folder``."""
    out = {"directory": folder / "adir"}
    out["directory"].mkdir()
    os.mkfifo(folder / "fifo")
    out["FIFO"] = folder / "fifo"
    try:
        os.mknod(folder / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))   # a /dev/null twin
        out["character device"] = folder / "null"
    except (PermissionError, OSError):
        pass
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(folder / "sock"))
    sock.close()
    out["socket"] = folder / "sock"
    return out


@pytest.fixture
def short_dir():
    with tempfile.TemporaryDirectory(dir="/tmp") as d:      # short: a socket path has 108 bytes
        yield Path(d)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs and Unix sockets")
def test_a_destination_that_is_not_a_regular_file_is_refused(short_dir):
    model = compiled()
    found = special_files(short_dir)
    for kind, path in found.items():
        before = path.lstat()
        for save in (lambda p: model.save_weights(p), lambda p: model.save_weights(p, overwrite=True),
                     lambda p: plots.curves({"loss": [1.0, 0.5]}, p),
                     lambda p: report.write_atomic(str(p), "text\n")):
            with pytest.raises(OSError) as e:
                save(path)
            assert repr(str(path)) in str(e.value) and kind in str(e.value), str(e.value)
            assert ".tmp" not in str(e.value)
        after = path.lstat()
        assert stat.S_IFMT(after.st_mode) == stat.S_IFMT(before.st_mode) and after.st_ino == before.st_ino
    held = os.open(found["FIFO"], os.O_RDWR)       # both ends open, bytes waiting: a load that
    try:                                           # opened it would fail here, not hang
        os.write(held, b"x" * 64)
        for load, kind in ((model.load_weights, "weights"), (models.load_model, "model")):
            with pytest.raises(OSError, match=rf"{load.__name__}\W.*fifo' is a FIFO \(named "
                                              rf"pipe\), not a {kind} file"):
                load(found["FIFO"])                # refused before it is opened
    finally:
        os.close(held)
    link = short_dir / "to_fifo"
    link.symlink_to(found["FIFO"])
    with pytest.raises(OSError, match="a symlink to .*FIFO"):
        model.save_weights(link)
    no_temporaries(short_dir)


@pytest.mark.parametrize("method", ["save_weights", "save"])     # save: issue 24, case 3
def test_a_read_only_file_is_replaced_only_with_overwrite_true(tmp_path, method):
    path = tmp_path / "frozen.weights.npz"
    getattr(compiled(seed=1), method)(path)
    path.chmod(0o444)
    good = path.read_bytes()
    model = compiled(seed=2)
    save = getattr(model, method)
    with pytest.raises(PermissionError, match=rf"{method}: will not replace .*frozen.* read-only "
                                              r"\(mode 0444\); pass overwrite=True"):
        save(path, overwrite=None)                 # save_weights' default
    assert path.read_bytes() == good and stat.S_IMODE(path.stat().st_mode) == 0o444
    with pytest.raises(FileExistsError):
        save(path, overwrite=False)
    save(path, overwrite=True)
    assert path.read_bytes() != good and stat.S_IMODE(path.stat().st_mode) == 0o444
    probe = compiled(seed=1)
    probe.load_weights(path)
    for w, b in zip(probe.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(w, b)
    if method == "save_weights":
        with pytest.raises(PermissionError, match="read-only"):
            io.write_atomic(path, lambda f: f.write(b"x"))
        io.write_atomic(path, lambda f: f.write(b"x"), overwrite=True)
        assert path.read_bytes() == b"x" and stat.S_IMODE(path.stat().st_mode) == 0o444
    no_temporaries(tmp_path)


def test_write_errors_name_the_destination_not_the_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "w.weights.npz"

    def disk_full(f, *args, **kw):          # as the OS reports it: naming the file written
        tmp = os.readlink(f"/proc/self/fd/{f.fileno()}")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), tmp)

    monkeypatch.setattr(np, "savez", disk_full)
    with pytest.raises(OSError) as e:
        compiled().save_weights(path)
    text = str(e.value)
    assert e.value.errno == errno.ENOSPC and text.count(repr(str(path))) == 1, text
    assert "save_weights" in text and ".tmp" not in text and "No space left" in text
    monkeypatch.undo()
    with pytest.raises(FileNotFoundError, match=r"save_weights: cannot write .*nowhere.*the folder"):
        compiled().save_weights(tmp_path / "nowhere" / "w.npz")
    no_temporaries(tmp_path)


def test_pictures_and_reports_go_through_write_atomic(tmp_path):
    target = tmp_path / "real.png"
    target.write_bytes(b"old")
    link = tmp_path / "curves.png"
    link.symlink_to(target)
    plots.curves({"loss": [1.0, 0.5]}, link)
    assert link.is_symlink() and target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = read_only(tmp_path / "report.md")
    with pytest.raises(PermissionError, match="read-only"):
        report.write_atomic(str(out), "new\n")
    assert out.read_text() == "old\n"
    no_temporaries(tmp_path)


#: Every place in gpucnn/ that opens a file for writing other than through gpucnn.io.write_atomic,
#: and why it may: (file, what it writes).
DIRECT_WRITERS = {
    ("gpucnn/models/saving.py", "a copy's bytes into a private temporary folder"),
    ("gpucnn/datasets/_files.py", "a download into its temporary file, renamed when verified"),
    ("gpucnn/parallel/ranks.py", "os.devnull"),
    ("gpucnn/bench/e2e.py", "/proc/self/clear_refs"),
    ("gpucnn/bench/gpu.py", "the compile log, streamed while the kernels build"),
    ("gpucnn/bench/check_context.py", "a section's results, to a .tmp file then os.replace"),
    ("gpucnn/bench/sass.py", "a cubin for nvdisasm, to a file of its own process id"),
}
WRITE_CALL = re.compile(
    r"""open\([^)]*["'][wax]b?["']|\.write_(text|bytes)\(|fdopen\([^)]*["'][wax]""")


def test_every_file_gpucnn_writes_goes_through_write_atomic_or_is_listed():
    root = Path(__file__).resolve().parent.parent
    found = set()
    for path in sorted((root / "gpucnn").rglob("*.py")):
        rel = str(path.relative_to(root))
        if WRITE_CALL.search(path.read_text()):
            found.add(rel)
    listed = {rel for rel, _ in DIRECT_WRITERS}
    assert found <= listed, f"writes without gpucnn.io.write_atomic: {sorted(found - listed)}"
    assert listed <= found, f"listed but no longer writing directly: {sorted(listed - found)}"
    assert WRITE_CALL.search('pathlib.Path(out).write_text(text)')
    assert WRITE_CALL.search('with open(args.out, "w") as f:')
    assert not WRITE_CALL.search('with open(path, "rb") as f:')


# -- issue 17, item 4: no process-wide side effect at import ---------------------------------------
ALLOC_PROBE = """
import sys
import numpy as np
mode = sys.argv[1]

def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) * 1024

def retained():
    before = rss()
    blocks = [np.ones(2 << 17) for _ in range(150)]        # 150 arrays of 2 MiB, touched
    del blocks
    return (rss() - before) >> 20

if mode != "bare":
    import gpucnn
    from gpucnn import backend, layers, models
    gpucnn.set_backend("numpy")
    ks = backend.kernels()                                  # the NumPy set, loaded
    model = models.Sequential([layers.Dense(2, input_shape=(3,))])
    model.compile("sgd", "mse")
    model.predict(np.ones((4, 3), np.float32), verbose=0)
    x, y = np.ones((64, 3), np.float32), np.ones((64, 2), np.float32)
if mode == "fit":
    model.fit(x, y, batch_size=16, verbose=0)
if mode == "during":
    from gpucnn.callbacks import LambdaCallback
    seen = []
    model.fit(x, y, batch_size=16, verbose=0,
              callbacks=[LambdaCallback(on_epoch_end=lambda e, logs: seen.append(retained()))])
    print(seen[0])
elif mode == "tune":
    from gpucnn.kernels.numpy_set import _alloc
    _alloc.tune()                                           # the old behaviour: for good
    print(retained())
else:
    print(retained())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator, /proc")
def test_importing_gpucnn_leaves_the_allocator_alone_and_fit_puts_it_back():
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").gnu_get_libc_version
    except (OSError, AttributeError):
        pytest.skip("not glibc")
    mib = {}
    for mode in ("bare", "import", "fit", "during", "tune"):
        r = python(ALLOC_PROBE, mode)
        assert r.returncode == 0, r.stderr
        mib[mode] = int(r.stdout.split()[-1])
    # 300 MiB freed: glibc gives it back, the raised thresholds keep it (1 GiB trim threshold),
    # the thresholds fit leaves (glibc's adaptive ceiling, 64 MiB trim threshold) keep far less
    assert mib["tune"] > 250 and mib["during"] > 250, mib       # the probe sees the tuning
    assert mib["bare"] < 50 and mib["import"] < 50 and mib["fit"] < 100, mib


# -- issue 17, item 5: errors that point the right way ---------------------------------------------
@pytest.mark.parametrize("content,words", [
    (bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)), "not an .npz archive"),
    (b"", "empty"),
    (b"\x80\x04\x95" + b"\x00" * 64, "a Python pickle"),
    (b"\x93NUMPY\x01\x00" + b"\x00" * 64, "a single .npy array"),
])
def test_loading_what_is_not_a_weights_file_says_what_it_is(tmp_path, content, words):
    path = tmp_path / "w.npz"
    path.write_bytes(content)
    model = compiled()
    before = model.get_weights()
    with pytest.raises(ValueError) as e:
        model.load_weights(path)
    text = str(e.value)
    assert text.startswith(f"load_weights: cannot read {str(path)!r}") and words in text, text
    assert "allow_pickle" not in text
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), before))


def test_an_archive_holding_objects_is_refused_without_advising_allow_pickle(tmp_path):
    path = tmp_path / "w.npz"
    np.savez(path, **{"out/kernel": np.array([{"x": 1}], dtype=object)})
    with pytest.raises(ValueError, match="pickled Python objects, which gpucnn never loads") as e:
        compiled().load_weights(path)
    assert "allow_pickle" not in str(e.value)


def test_a_negative_seed_is_refused_by_manual_seed():
    with pytest.raises(ValueError, match=r"manual_seed: seed must be an int >= 0, got -1"):
        gpucnn.manual_seed(-1)
    gpucnn.manual_seed(2**40)                  # any non-negative int is a seed


def test_mnist_path_that_is_a_file(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("MNIST lives here\n")
    with pytest.raises(NotADirectoryError) as e:
        datasets.mnist(readme, download=False)
    text = str(e.value)
    assert text.startswith("mnist: ") and "is a file, not a folder" in text and str(tmp_path) in text
    assert "put " not in text


def test_mnist_folder_with_only_the_images_asks_for_the_labels(tmp_path):
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b")
    with pytest.raises(datasets.DataNotFoundError) as e:
        datasets.mnist(tmp_path, download=False, split="test")
    text = str(e.value)
    assert "put t10k-labels-idx1-ubyte.gz (gzip or uncompressed) into" in text, text
    assert "holds t10k-images-idx3-ubyte.gz already" in text
    assert "put t10k-images" not in text


def test_one_callback_not_in_a_list_is_accepted_as_keras_does():
    model = compiled()
    history = callbacks.History()
    out = model.fit(np.ones((4, 4), np.float32), np.zeros(4), epochs=2, verbose=0,
                    callbacks=history)
    assert len(history.history["loss"]) == 2 and history.history == out.history
    with pytest.raises(TypeError, match=r"fit: callbacks must be Callback instances; callbacks"
                                        r"\[0\] is .*History.*: pass an instance, History\(\)"):
        model.fit(np.ones((4, 4)), np.zeros(4), verbose=0, callbacks=[callbacks.History])
    with pytest.raises(TypeError, match="fit: callbacks must be a list of Callback instances "
                                        r"\(or one Callback\), got int"):
        model.fit(np.ones((4, 4)), np.zeros(4), verbose=0, callbacks=3)


def test_a_ragged_nested_list_names_the_call_and_the_rows():
    model = compiled()
    ragged = [[1.0, 2.0, 3.0], [1.0, 2.0]]
    for call, op in ((lambda: model.fit(ragged, [0, 1], verbose=0), "fit"),
                     (lambda: model.predict(ragged, verbose=0), "predict"),
                     (lambda: model.evaluate(ragged, [0, 1], verbose=0), "evaluate")):
        with pytest.raises(ValueError, match=rf"^{op}: x is a nested list whose rows differ in "
                                             r"length \(x\[0\] has 3 items, x\[1\] has 2 items\)"):
            call()
    with pytest.raises(ValueError, match=r"fit: y is a nested list .*y\[1\]\[0\] has 1 item, "
                                         r"y\[1\]\[1\] has 2 items"):
        model.fit(np.ones((2, 4)), [[[0], [1]], [[1], [0, 1]]], verbose=0)
    with pytest.raises(ValueError, match=r"model 'sequential\w*' \(Sequential\): x is a nested list"):
        model(ragged)


def test_more_threads_than_cpus_are_clamped_with_a_warning():
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    r = python("import gpucnn; from gpucnn import backend; gpucnn.set_backend('numpy'); "
               "print(backend.kernels().get_num_threads())", GPUCNN_NUM_THREADS=str(cpus + 62))
    assert r.returncode == 0, r.stderr
    assert int(r.stdout.split()[-1]) == cpus
    assert (f"GPUCNN_NUM_THREADS={cpus + 62} is more than the {cpus} CPU" in r.stderr
            and f"using {cpus}" in r.stderr), r.stderr


# -- issue 17, item 6: a newcomer's first read -----------------------------------------------------
def test_readme_python_blocks_run_as_written(tmp_path):
    blocks = re.findall(r"^```python\n(.*?)^```", README, re.S | re.M)
    assert len(blocks) >= 2 and any("x_train" in b for b in blocks)
    for i, code in enumerate(blocks):
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           timeout=240, env=clean_env(GPUCNN_BACKEND="numpy"), cwd=tmp_path)
        assert r.returncode == 0, f"README ```python block {i + 1} failed:\n{code}\n{r.stderr[-3000:]}"
        if "LeNet5.summary()" in code:
            assert "Total params: 61,706" in r.stdout


def test_readme_says_how_to_get_mnist_for_the_tests_that_need_it():
    assert "GPUCNN_MNIST_DIR" in README and "python -m gpucnn.datasets fetch mnist" in README


def test_the_cuda_install_hint_is_the_readmes(monkeypatch):
    from gpucnn.kernels.cuda_set import _probe, _runtime

    commands = set(re.findall(r"`(?:\.venv/bin/)?(pip install -e '\.\[cuda1[23]\]')`", README))
    assert commands == {"pip install -e '.[cuda12]'", "pip install -e '.[cuda13]'"}, commands
    nvvm = _probe._fix_for("NvvmSupportError: libNVVM cannot be found")
    assert all(c in nvvm for c in commands), nvvm
    monkeypatch.setattr(_runtime, "SIMULATOR", False)
    monkeypatch.setattr(_runtime, "cp", None)
    monkeypatch.setattr(_runtime, "numba_cuda", object())
    ok, why, _ = _probe._probe()
    assert not ok and "pip install -e '.[cuda12]'" in why and "'.[cuda13]'" in why, why


def readme_pictures():
    """``{script: [file name patterns]}`` from the README's table of example scripts."""
    out = {}
    for line in README.splitlines():
        m = re.match(r"\| `examples/(\w+)\.py` \|.*\|([^|]*)\|\s*$", line)
        if m:
            out[m.group(1)] = re.findall(r"`([^`]+\.png)`", m.group(2))
    return out


def test_readme_picture_table_lists_what_the_examples_save(tmp_path):
    table = readme_pictures()
    assert set(table) == {"perceptron", "basic_cnn", "lenet5", "alexnet", "autoencoder"}, table
    smaller = {"alexnet": ["--width", "0.05", "--dense-units", "16"]}     # the same pictures
    procs = {}
    for script in table:
        out = tmp_path / script
        procs[script] = subprocess.Popen(
            [sys.executable, str(ROOT / "examples" / f"{script}.py"), "--backend", "numpy",
             "--epochs", "1", "--limit", "32", "--batch-size", "16", "--verbose", "0",
             "--out", str(out), *smaller.get(script, [])], stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True, env=clean_env(GPUCNN_NUM_THREADS="1"))
    for script, patterns in table.items():
        err = procs[script].communicate(timeout=240)[1]
        assert procs[script].returncode == 0, err
        saved = sorted(p.name for p in (tmp_path / script).glob("*.png"))
        regexes = [re.compile(re.escape(p).replace("<i>", r"\d+").replace("<layer>", r"\w+") + "$")
                   for p in patterns]
        unlisted = [n for n in saved if not any(r.match(n) for r in regexes)]
        unsaved = [p for p, r in zip(patterns, regexes) if not any(r.match(n) for n in saved)]
        assert not unlisted and not unsaved, (script, "saved but not in the README:", unlisted,
                                              "in the README but not saved:", unsaved)


def test_examples_help_documents_each_option_and_says_each_default_once():
    scripts = ["perceptron.py", "basic_cnn.py", "lenet5.py", "alexnet.py", "autoencoder.py",
               "accuracy_report.py"]
    procs = {s: subprocess.Popen([sys.executable, str(ROOT / "examples" / s), "--help"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env=clean_env(COLUMNS="200")) for s in scripts}
    for script, p in procs.items():
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        for line in out.splitlines():
            assert line.count("(default:") <= 1, (script, line)
        if script == "accuracy_report.py":
            text = " ".join(out.split())
            for option in ("--seeds SEED [SEED ...] seeds to train", "--backend {auto,numpy,cuda} "
                           "kernel set", "--mnist DIR folder with the MNIST test split"):
                assert option in text, (script, option, out)
            assert text.count("(default:") == 3, out
        else:
            line = next(line for line in out.splitlines() if line.strip().startswith("--data DIR"))
            assert line.count("(default:") == 1 and "None" not in line, (script, line)


def test_a_larger_kernel_pool_leaves_the_one_another_thread_holds_usable(monkeypatch):
    """One thread holds the NumPy set's thread pool while another asks for a larger one: the
    first can still submit to the pool it holds (it was replaced, not shut down)."""
    from gpucnn.kernels.numpy_set import _parallel
    monkeypatch.setattr(_parallel, "_pool", None)
    monkeypatch.setattr(_parallel, "_pool_size", 0)
    held = _parallel._get_pool(1)
    larger = _parallel._get_pool(2)
    assert larger is not held and _parallel._get_pool(2) is larger
    assert held.submit(lambda: 3).result(timeout=10) == 3
    held.shutdown(wait=True)
    larger.shutdown(wait=True)


# -- issue 24, case 1: no non-finite weight ----------------------------------------------------
@pytest.fixture(params=["numpy", "cuda"])
def backend(request):
    if request.param == "cuda":
        request.getfixturevalue("cuda_backend")
    return request.param


@pytest.mark.parametrize("make", [
    lambda: (optimizers.SGD(np.inf), NonFiniteUpdateError),
    lambda: (optimizers.Adam(epsilon=0.0), NonFiniteUpdateError),   # 0 / 0 at a dead unit
    # the rate grows a millionfold a step: the loss overflows first (and says the weights are
    # those of the step before, which is now true), the rate later (inf, not an OverflowError)
    lambda: (optimizers.SGD(schedules.ExponentialDecay(0.1, 1, 1e6)), FloatingPointError),
], ids=["lr-inf", "adam-epsilon-0", "exponential-decay-1e6"])
def test_fit_never_writes_a_non_finite_weight_and_names_it(make, backend):
    opt, error = make()
    model, (x, y) = compiled(opt=opt, activation="relu"), data()
    if isinstance(opt, optimizers.Adam):
        model.layers[0].kernel.data[:, 0] = 0.0      # a unit dead on every sample: g = 0
        model.layers[0].bias.data[0] = -1.0
    with pytest.raises(error, match=r"the update of '(h|out)/(kernel|bias)' at optimizer step "
                                    r"\d+ was refused|the training loss is"):
        model.fit(x, y, batch_size=4, epochs=3, verbose=0, shuffle=False)
    assert all(np.isfinite(w).all() for w in model.get_weights())
    assert schedules.ExponentialDecay(0.1, 1, 1e6)(60) == np.inf


def test_a_scheduler_returning_inf_is_refused_before_any_weight_changes(backend):
    model, (x, y) = compiled(opt=optimizers.SGD(0.1), activation="relu"), data()
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(NonFiniteUpdateError, match="optimizer step 1 was refused"):
        model.fit(x, y, batch_size=4, epochs=2, verbose=0, shuffle=False,
                  callbacks=[LearningRateScheduler(lambda epoch: np.inf)])
    for w, b in zip(model.get_weights(), before):          # lr = inf: every element refused
        np.testing.assert_array_equal(w, b)


def test_on_a_device_the_flag_is_read_with_the_loss_and_names_the_first_refused_step(
        backend, monkeypatch):
    """With the flag read only when the loss is (a device's way), the steps after the first
    refused one are refused too: the weights are those after step 2, as a run of two steps
    leaves them, and the error names step 3."""
    lr = schedules.PiecewiseConstantDecay([1], [0.05, np.inf])     # inf from the third step
    monkeypatch.setattr(Optimizer, "_flag_on_host", lambda self: False)
    model, (x, y) = compiled(opt=optimizers.SGD(lr), activation="relu"), data()
    with pytest.raises(NonFiniteUpdateError, match="optimizer step 3 was refused"):
        model.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False)
    reference = compiled(opt=optimizers.SGD(0.05), activation="relu")
    reference.fit(x[:8], y[:8], batch_size=4, epochs=1, verbose=0, shuffle=False)
    for w, r in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(w, r)
    assert model.optimizer.iterations == 4                 # every step ran, two were refused


def test_train_on_batch_and_a_direct_update_raise_at_once(backend):
    model, (x, y) = compiled(opt=optimizers.SGD(np.inf), activation="relu"), data()
    with pytest.raises(NonFiniteUpdateError, match="SGD: the update of 'h/kernel' at optimizer "
                                                   "step 1"):
        model.train_on_batch(x, y)
    opt = optimizers.RMSprop(0.1)
    p = gpucnn.Tensor(np.ones(3, np.float32), requires_grad=True)
    p.grad = gpucnn.Tensor(np.array([1.0, np.nan, 1.0], np.float32))
    with pytest.raises(NonFiniteUpdateError, match="RMSprop: the update of 'weight 0' at "
                                                   "optimizer step 1"):
        opt.apply_gradients([p])
    got = p.numpy()
    assert got[1] == 1.0 and got[0] < 1.0 and got[2] < 1.0   # only the NaN's element kept


@pytest.mark.parametrize("name", ["sgd_update", "adam_update", "rmsprop_update"])
def test_an_update_without_a_flag_raises(name, backend):
    ks = gpucnn.backend.kernels()
    p = ks.asarray(np.ones(5, np.float32))
    g = ks.asarray(np.array([0.1, np.inf, 0.2, 0.3, 0.4], np.float32))
    slots = [ks.asarray(np.zeros(5, np.float32)) for _ in range(2)]
    args = {"sgd_update": (p, g, None, 0.1, 0.0, False, 0.0),
            "adam_update": (p, g, *slots, 0.1, 0.9, 0.999, 1e-7, 1, 0.0),
            "rmsprop_update": (p, g, slots[0], 0.1, 0.9, 1e-7, 0.0)}[name]
    with pytest.raises(FloatingPointError, match=f"{name}: the new weight is not finite"):
        getattr(ks, name)(*args)
    assert ks.to_host(p)[1] == 1.0


# -- issue 24, case 2: writers checked before the first step ---------------------------------------
@pytest.mark.parametrize("make,error,words", [
    (lambda d: callbacks.ModelCheckpoint(str(d / "no" / "ckpt.npz")), FileNotFoundError,
     "ModelCheckpoint: cannot write '.*no/ckpt.npz': the folder .* does not exist"),
    (lambda d: callbacks.ModelCheckpoint(str(read_only(d / "ckpt.npz")), monitor="loss"),
     PermissionError, "ModelCheckpoint: will not replace '.*ckpt.npz': it is read-only"),
    (lambda d: callbacks.ModelCheckpoint(str(d / "ckpt-{val_accuracy:.2f}.npz")), ValueError,
     "ModelCheckpoint: cannot format filepath '.*ckpt-{val_accuracy:.2f}.npz' with epoch and "
     "the logs .*'accuracy'.*KeyError: 'val_accuracy'"),
    (lambda d: callbacks.ModelCheckpoint("/sys/ckpt.npz"), PermissionError,
     "ModelCheckpoint: cannot write '/sys/ckpt.npz': cannot create a file in its folder"),
    (lambda d: callbacks.CSVLogger(d / "no" / "log.csv"), FileNotFoundError,
     "CSVLogger: cannot write '.*no/log.csv': the folder .* does not exist"),
    (lambda d: callbacks.CSVLogger(read_only(d / "log.csv")), PermissionError,
     "CSVLogger: will not replace '.*log.csv': it is read-only"),
], ids=["checkpoint-no-folder", "checkpoint-read-only", "checkpoint-format-key",
        "checkpoint-folder-not-writable", "csv-no-folder", "csv-read-only"])
def test_a_writer_that_would_fail_stops_fit_before_the_first_step(make, error, words, tmp_path):
    model, (x, y) = compiled(), data()
    before = model.get_weights()
    with pytest.raises(error, match=words):
        model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[make(tmp_path)])
    assert model.optimizer.iterations == 0
    for w, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(w, b)


# -- issue 24, case 4: hostile model files ---------------------------------------------------------
def saved(tmp_path, change=None, text=lambda t: t):
    """``compiled()`` saved at ``tmp_path / "m.npz"``, returned; with ``change``, the file then
    rewritten with ``change(header)`` applied, and then ``text`` to the header's JSON text."""
    path = tmp_path / "m.npz"
    compiled().save(path)
    if change is not None:
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        header = json.loads(str(arrays[saving.HEADER_KEY][()]))
        change(header)
        arrays[saving.HEADER_KEY] = np.array(text(json.dumps(header)))
        np.savez(path, **arrays)
    return path


def test_an_architecture_asking_for_more_than_the_file_holds_is_refused_before_it_allocates(
        tmp_path, monkeypatch):
    path = saved(tmp_path, lambda h: h["model"]["config"]["layers"][0]["config"].update(
        units=10**10))
    made = []
    monkeypatch.setattr(np, "zeros", lambda *a, **k: made.append(a) or np.empty(0))
    with pytest.raises(ValueError, match=r"load_model\('.*m.npz'\): layer 'h' asks for a weight "
                                         r"'kernel' of shape \(4, 10000000000\) \(160000000000 "
                                         r"bytes\), more than the file's arrays account for"):
        models.load_model(path)
    assert not made


def test_an_entry_declaring_more_bytes_than_it_holds_is_refused_before_reading(tmp_path):
    path = saved(tmp_path)
    with zipfile.ZipFile(path) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    raw = entries["weights/h/kernel.npy"]              # the header's shape made 2e7 times larger
    entries["weights/h/kernel.npy"] = raw.replace(b"(4, 3)", b"(80000000, 3)".ljust(6))
    with zipfile.ZipFile(path, "w") as z:
        for n, b in entries.items():
            z.writestr(n, b)
    for load in (models.load_model, compiled().load_weights):
        with pytest.raises(ValueError, match=r"entry 'weights/h/kernel.npy' declares an array of "
                                             r"shape \(80000000, 3\) float32 \(960000000 bytes\) "
                                             r"but holds \d+ bytes"):
            load(path)


def test_a_deeply_nested_header_is_refused_without_a_recursion_error(tmp_path):
    path = saved(tmp_path, lambda h: None, lambda t: t[:-1] + ', "deep": ' + "[" * 3000
                 + "]" * 3000 + "}")
    with pytest.raises(ValueError, match="nests deeper than 64 levels"):
        models.load_model(path)
    models.load_model(saved(tmp_path, lambda h: h.update(note='"[[[[ \\" {{{{' * 100)))
    # brackets and quotes inside strings are text


@pytest.mark.parametrize("version", [0, -7])
def test_a_format_version_below_1_is_refused(version, tmp_path):
    path = saved(tmp_path, lambda h: h.update(format_version=version))
    with pytest.raises(ValueError, match=rf"no valid format_version: expected an int from 1 to "
                                         rf"1, got {version}"):
        models.load_model(path)


# -- issue 24, case 5: resume in a new process is exact --------------------------------------------
RESUME = r"""
import sys, numpy as np, gpucnn
from gpucnn import layers, models
backend, mode, path = sys.argv[1:]
if backend == "cuda":
    from gpucnn.kernels.cuda_set import simulate
    simulate.small_launches().__enter__()
gpucnn.set_backend(backend)
rng = np.random.default_rng(3)
x, y = rng.standard_normal((20, 4)).astype(np.float32), rng.integers(0, 2, 20)
if mode == "resume":
    model = models.load_model(path)
    state = gpucnn.random.generator().bit_generator.state
    model.fit(x, y, batch_size=6, epochs=3, initial_epoch=1, verbose=0)
    assert state != gpucnn.random.generator().bit_generator.state
else:
    gpucnn.manual_seed(0)
    model = models.Sequential([layers.Dense(3, activation="relu", input_shape=(4,)),
                               layers.Dropout(0.3), layers.Dense(2, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=6, epochs=1 if mode == "first" else 3, verbose=0)
    if mode == "first":
        model.save(path)
        gpucnn.manual_seed(99)                     # what the saving process does next is its own
np.save(path + f".{mode}.npy", np.concatenate([w.ravel() for w in model.get_weights()]))
"""


def test_resume_in_a_new_process_is_exact_with_shuffling(backend, tmp_path):
    path = str(tmp_path / "m.npz")
    for mode in ("whole", "first", "resume"):
        r = python(RESUME, backend, mode, path, timeout=300, NUMBA_ENABLE_CUDASIM="1")
        assert r.returncode == 0, r.stderr[-3000:]
    np.testing.assert_array_equal(np.load(path + ".resume.npy"), np.load(path + ".whole.npy"))


def test_load_model_leaves_the_global_generator_alone(tmp_path):
    path = saved(tmp_path)
    gpucnn.manual_seed(7)
    state = gpucnn.random.generator().bit_generator.state
    models.load_model(path)
    assert gpucnn.random.generator().bit_generator.state == state


# -- issue 24, case 6 ------------------------------------------------------------------------------
class Squash(layers.Layer):
    """Keras-style: ``call`` alone."""

    def call(self, x, training=False):
        return F.tanh(x)


class NeedsData(layers.Layer):
    def call(self, x, training=False):
        if not np.any(x.data):
            raise ValueError("all zeros")
        return F.tanh(x)


def test_a_layer_with_call_alone_trains_in_a_sequential():
    model = compiled(Squash(name="squash"))
    x, y = data()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert model.layers[1].output_shape == (None, 3)
    reference = compiled(layers.Activation("tanh", name="squash"))   # the same network
    reference.fit(x, y, batch_size=8, epochs=1, verbose=0)
    for w, r in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(w, r, rtol=1e-6)


def test_a_layer_whose_shape_cannot_be_inferred_names_itself_and_the_method_to_add():
    with pytest.raises(ValueError, match=r"layer 'picky' \(NeedsData\): cannot infer the "
                                         r"output shape for input \(None, 3\) by calling the "
                                         r"layer on zeros \(ValueError: all zeros\); define "
                                         r"compute_output_shape\(self, input_shape\) in "
                                         r"NeedsData"):
        compiled(NeedsData(name="picky"))          # built from its input_shape: refused there


# -- issue 24, case 7 ------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,words", [
    (dict(validation_split="0.2"), r"validation_split expected a number in \[0, 1\), received "
                                   r"'0.2' \(str\)"),
    (dict(validation_split="abc"), r"validation_split expected a number in \[0, 1\), received "
                                   r"'abc' \(str\)"),
    (dict(initial_epoch=-3), r"initial_epoch expected an int >= 0 \(the epoch to start from\), "
                             r"received -3"),
], ids=["split-str", "split-abc", "initial-epoch-negative"])
def test_fit_arguments_are_refused_with_what_was_expected(kwargs, words):
    model = compiled()
    with pytest.raises(ValueError, match="fit: " + words):
        model.fit(*data(), epochs=1, verbose=0, **kwargs)
    assert model.optimizer.iterations == 0


def test_reduce_lr_on_plateau_refuses_a_nan_min_delta():
    with pytest.raises(ValueError, match=r"ReduceLROnPlateau: min_delta must be a number >= 0, "
                                         r"got nan"):
        callbacks.ReduceLROnPlateau(min_delta=float("nan"))


def test_a_model_pickles_through_the_npz_file_with_no_code_in_it():
    model = compiled()
    model.fit(*data(), batch_size=8, epochs=1, verbose=0)
    blob = pickle.dumps(model)
    start = blob.index(b"PK\x03\x04")              # the archive save writes, as bytes
    assert b"c__builtin__" not in blob and b"builtins" not in blob
    copy = pickle.loads(blob)
    assert copy.__dict__.get("_random_state") is None     # a copy is no resume: fit draws anew
    for w, r in zip(copy.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(w, r)
    assert copy.optimizer.iterations == model.optimizer.iterations == 2 and start > 0
    x, y = data()
    np.testing.assert_array_equal(copy.predict(x, verbose=0), model.predict(x, verbose=0))


def test_layers_of_another_dtype_than_the_model_are_named_before_training():
    model = compiled(layers.Dense(3, dtype="float64", name="wide"))
    with pytest.raises(TypeError, match=r"fit: layer 'wide' \(Dense\) has dtype float64, model "
                                        r"'sequential.*' computes in float32; give the model the "
                                        r"same dtype"):
        model.fit(*data(), verbose=0)


def test_a_loss_of_ones_own_gets_integer_labels_as_they_are():
    seen = []

    def my_loss(y_true, y_pred):
        seen.append(y_true.dtype)
        return losses.sparse_categorical_crossentropy(y_true, y_pred)

    model = compiled(loss=my_loss)
    model.fit(*data(), batch_size=8, epochs=1, verbose=0)
    assert seen and all(np.dtype(d).kind == "i" for d in seen), seen


def test_a_second_thread_fitting_the_same_model_gets_a_clear_error():
    model = compiled()
    started, release = threading.Event(), threading.Event()
    hold = callbacks.LambdaCallback(on_train_begin=lambda logs: (started.set(), release.wait(30)))
    first = threading.Thread(target=lambda: model.fit(*data(), verbose=0, callbacks=[hold]),
                             name="trainer-1")
    first.start()
    assert started.wait(30)
    try:
        for call in (lambda: model.fit(*data(), verbose=0), lambda: model.train_on_batch(*data())):
            with pytest.raises(RuntimeError, match=r"model 'sequential.*' is being trained by "
                                                   r"thread 'trainer-1'; train a model from one "
                                                   r"thread at a time"):
                call()
    finally:
        release.set()
        first.join(60)
    model.fit(*data(), verbose=0)                  # free again once the first fit is done


# -- issue 24, case 8: the README's commands ----------------------------------------------------
def readme_commands():
    """Every shell command of the README (two words or more): the lines of its shell blocks and
    its inline code spans, split at ``&&``, comments removed."""
    lines, lang, prose = [], None, []
    for ln in (ROOT / "README.md").read_text().splitlines():
        if ln.startswith("```"):
            lang = ln[3:].strip() if lang is None else None
        elif lang is None:
            prose.append(ln)
        elif lang in ("", "sh"):
            lines.append(ln)
    lines += re.findall(r"`([^`]+)`", "\n".join(prose))
    commands = [c.split("#")[0].split() for ln in lines for c in ln.split("&&")]
    return [c for c in commands if len(c) > 1]          # a lone word is a name, not a command


def test_every_readme_command_runs_from_the_shell_of_the_first_two():
    tools = {"python", "pip", "pytest", "mpiexec", "mkdocs"}
    bare = [" ".join(c) for c in readme_commands() if c[0] in tools
            or (c[0] in {".venv/bin/mpiexec", "srun"} and "python" in c)]
    assert not bare, f"commands that need an activated venv: {bare}"
    assert any(c[:1] == [".venv/bin/mpiexec"] for c in readme_commands())
    assert "about 20 minutes on 2 cores" in (ROOT / "README.md").read_text()

