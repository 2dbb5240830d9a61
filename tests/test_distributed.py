"""gpucnn.distributed: data-parallel fit, evaluate and predict over two MPI ranks against one
process, failures that end the job instead of hanging it, and the GPU path's bookkeeping (a GPU
per local rank, the NCCL id made by rank 0 and broadcast, the host-staged sum) in Numba's
simulator with NCCL's sums done by MPI.

The MPI tests launch ``mpiexec -n 2 python tests/_distributed_job.py SCENARIO OUT`` with a
timeout (the ``distributed`` extra, in the ``test`` extra too, brings mpi4py and MPICH)."""
import importlib.util
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

import gpucnn
from gpucnn import distributed
from gpucnn.distributed import _mpi
from gpucnn.distributed._mpi import NcclSum
from gpucnn.kernels import numpy_set

HERE = os.path.dirname(os.path.abspath(__file__))
JOB = os.path.join(HERE, "_distributed_job.py")

MPIEXEC = os.path.join(os.path.dirname(sys.executable), "mpiexec")     # the venv's, else PATH's
MPIEXEC = MPIEXEC if os.access(MPIEXEC, os.X_OK) else shutil.which("mpiexec")
needs_mpi = pytest.mark.skipif(
    MPIEXEC is None or importlib.util.find_spec("mpi4py") is None,
    reason="needs mpi4py and mpiexec: pip install -e '.[distributed]'")


def mpirun(*args, timeout, cwd=None, **env):
    """``python *args`` on two ranks; ``(completed process, seconds)``."""
    full = dict(os.environ, **env)
    full.pop("GPUCNN_BACKEND", None)
    start = time.monotonic()
    proc = subprocess.run([MPIEXEC, "-n", "2", sys.executable, *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=full, cwd=cwd)
    return proc, time.monotonic() - start


def agree(r0, r1, prefix, weights):
    """Both ranks hold the same weights under ``prefix``, those of one process (``weights``)."""
    for i, w in enumerate(weights):
        a, b = r0[f"{prefix}/w{i}"], r1[f"{prefix}/w{i}"]
        np.testing.assert_array_equal(a, b, err_msg=f"{prefix}: weight {i}, rank 0 vs rank 1")
        np.testing.assert_allclose(a, w, rtol=1e-4, atol=1e-5,
                                   err_msg=f"{prefix}: weight {i}, two ranks vs one process")


def ranks(out):
    return [np.load(os.path.join(out, f"rank{r}.npz")) for r in (0, 1)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    proc, _ = mpirun(JOB, "train", out, timeout=240)
    assert proc.returncode == 0, f"mpiexec exited with {proc.returncode}:\n{proc.stderr[-3000:]}"
    return out, proc, ranks(out)


@pytest.fixture
def job():
    """The job script as a module, for building the same models in this process (on the NumPy
    backend)."""
    gpucnn.set_backend("numpy")
    spec = importlib.util.spec_from_file_location("_distributed_job", JOB)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _alone(job, name):
    """Weights and history of the case trained by one process (rank 0's seeds)."""
    opt, batch, dropout = job.CASES[name]
    x, y = job.data()
    model = job.lenet(opt(), 100, dropout)
    gpucnn.manual_seed(7)
    h = model.fit(x, y, batch_size=batch, epochs=2, verbose=0)
    model.release_workers()
    return model.get_weights(), h.history


@needs_mpi
@pytest.mark.parametrize("name", ["sgd", "adam", "dropout"])
def test_two_ranks_train_as_one_process(trained, job, name):
    _, _, (r0, r1) = trained
    # rank 1 started from other weights (and another random state) and ends on rank 0's path
    assert not np.array_equal(r0[f"{name}/start"], r1[f"{name}/start"])
    weights, history = _alone(job, name)
    agree(r0, r1, name, weights)
    np.testing.assert_allclose(r0[f"{name}/loss"], history["loss"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(r0[f"{name}/accuracy"], history["accuracy"], rtol=0, atol=1e-6)
    assert r0[f"{name}/loss"][1] != r0[f"{name}/loss"][0]          # it did train


@needs_mpi
def test_fit_starts_every_rank_from_rank_0s_optimizer_state(trained, job):
    """Rank 1's Adam moments were overwritten before the second fit; the ranks still end on
    the weights of one process that fitted twice."""
    _, _, (r0, r1) = trained
    x, y = job.data()
    model = job.resumed_adam(x, y)
    model.fit(x[:256], y[:256], batch_size=32, epochs=1, verbose=0, shuffle=False)
    model.release_workers()
    agree(r0, r1, "resumed", model.get_weights())


@needs_mpi
def test_evaluate_and_predict_on_an_odd_count_equal_one_process(trained, job):
    _, _, (r0, r1) = trained
    x, y = job.data()
    model = job.lenet(gpucnn.optimizers.SGD(0.05), 100)
    want = np.array(model.evaluate(x[:999], y[:999], batch_size=64, verbose=0))
    for r in (r0, r1):
        np.testing.assert_allclose(r["evaluate"], want, rtol=1e-6, atol=1e-6)
        got = r["predict"]
        assert got.shape == (999, 10)
        np.testing.assert_allclose(got, model.predict(x[:999], batch_size=64, verbose=0),
                                   rtol=1e-6, atol=1e-7)


@needs_mpi
def test_only_rank_0_writes_checkpoints_and_prints(trained):
    out, proc, _ = trained
    assert os.path.exists(os.path.join(out, "ckpt-rank0.npz"))
    assert not os.path.exists(os.path.join(out, "ckpt-rank1.npz"))
    assert proc.stdout.count("Epoch 1/1") == 1, proc.stdout
    assert "callback of rank 0 after epoch 1" in proc.stdout
    assert "callback of rank 1" not in proc.stdout, proc.stdout


@needs_mpi
@pytest.mark.parametrize("how, env, within, said", [
    ("raise", {}, (0, 10), ["[rank 1/2] ArithmeticError: boom on rank 1"]),
    ("hang", {"GPUCNN_DIST_TIMEOUT": "5"}, (5, 15),      # at the deadline
     ["[rank 0/2]", "did not answer within 5 s", "epoch 1, step 3"]),
    ("kill", {}, (0, 10), []),
])
def test_a_rank_that_raises_hangs_or_is_killed_ends_the_job(tmp_path, how, env, within, said):
    proc, seconds = mpirun(JOB, how, tmp_path, timeout=60, **env)
    assert proc.returncode != 0 and within[0] <= seconds < within[1], (proc.returncode, seconds)
    for text in said:
        assert text in proc.stderr, proc.stderr[-2000:]
    assert "finished" not in proc.stdout


@needs_mpi
def test_mismatched_settings_and_a_non_finite_loss_raise_on_both_ranks(tmp_path):
    proc, _ = mpirun(JOB, "refuse", tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for r in (0, 1):
        assert (f"rank {r} raised ValueError: fit: the 2 ranks were called with different "
                f"settings") in proc.stdout, proc.stdout
        assert "batch_size: rank 0 has 32, rank 1 has 16" in proc.stdout
        assert f"rank {r} raised NonFiniteLossError: fit: the training loss is inf at epoch " \
               f"1/1, step 1/4" in proc.stdout, proc.stdout


@needs_mpi
def test_the_gpu_path_bookkeeping_in_the_simulator(tmp_path, job):
    proc, _ = mpirun(JOB, "gpu", tmp_path, timeout=240, NUMBA_ENABLE_CUDASIM="1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = ranks(tmp_path)
    # a GPU per local rank
    assert list(r0["nccl/used"]) == [0] and list(r1["nccl/used"]) == [1]
    # the NCCL id made once, by rank 0, and the same on both ranks; the sums went through NCCL
    assert int(r0["nccl/ids_made"]) == 1 and int(r1["nccl/ids_made"]) == 0
    np.testing.assert_array_equal(r0["nccl/uid"], r1["nccl/uid"])
    assert r0["nccl/uid"].shape == (128,)
    assert int(r0["nccl/sums"]) == 4 and int(r1["nccl/sums"]) == 4   # 3 steps + allreduce()
    # without NCCL, the host-staged sum: no NCCL call, the same training
    assert int(r0["host/sums"]) == 0 and r0["host/uid"].size == 0
    assert "summed through host memory by MPI: no NCCL in this test" in proc.stderr
    assert "rank 0: transport nccl, device 0" in proc.stdout
    assert "rank 1: transport mpi (host), device 1" in proc.stdout
    for key in ("nccl", "host"):
        np.testing.assert_array_equal(r0[f"{key}/allreduce"], np.full(4, 3.0, np.float32))
    # the same weights as one process on the NumPy backend (the job fixture's)
    x, y, model = job.small()
    threads = numpy_set.get_num_threads()
    numpy_set.set_num_threads(1)
    try:
        h = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    finally:
        numpy_set.set_num_threads(threads)
    for key in ("nccl", "host"):
        for r in (r0, r1):
            for i, w in enumerate(model.get_weights()):
                np.testing.assert_allclose(r[f"{key}/w{i}"], w, rtol=1e-5, atol=1e-6,
                                           err_msg=f"{key}: weight {i}")
            np.testing.assert_allclose(r[f"{key}/loss"], h.history["loss"], rtol=1e-5)


@needs_mpi
def test_an_example_script_trains_on_two_ranks(tmp_path):
    root = os.path.dirname(HERE)
    proc, seconds = mpirun(os.path.join(root, "examples", "lenet5.py"), "--distributed",
                           "--backend", "numpy", "--epochs", "1", "--limit", "200",
                           "--verbose", "2", "--out", tmp_path / "out", timeout=240, cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "backend: numpy, rank 0 of 2 (MPI)" in proc.stdout, proc.stdout
    assert proc.stdout.count("test accuracy") == 1, proc.stdout        # rank 0 alone prints
    assert (tmp_path / "out" / "curves.png").is_file()
    assert seconds < 120


@needs_mpi
def test_the_gpu_check_script_runs_on_the_cpu(tmp_path):
    report = tmp_path / "check.md"
    proc, _ = mpirun("-m", "gpucnn.distributed.check", "--backend", "numpy", "--quick", "--out",
                     report, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = report.read_text()
    assert "2 rank(s), backend numpy, sums by mpi" in text
    assert "| 61,706 |" in text and "| 1,000,000 |" in text
    diff = float(text.split("largest weight difference ")[1].split()[0])
    assert diff < 1e-5, text                                   # 2 ranks train as one process
    assert "RuntimeWarning" not in proc.stderr, proc.stderr[-2000:]


def test_before_init_a_process_is_a_job_of_one_and_bad_settings_are_refused(monkeypatch):
    assert (distributed.rank(), distributed.size(), distributed.local_rank()) == (0, 1, 0)
    assert distributed.is_main() and distributed.info()["transport"] == "none"
    with pytest.raises(RuntimeError, match=r"call gpucnn.distributed.init\(\) first"):
        distributed.barrier()
    with pytest.raises(ValueError, match="timeout must be a positive number of seconds, got -1"):
        distributed.init(timeout=-1)
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        distributed.init(backend="tpu")
    monkeypatch.setenv("GPUCNN_DIST_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="GPUCNN_DIST_TIMEOUT must be a positive number of "
                                         "seconds, got 'soon'"):
        _mpi.timeout_from_env()
    monkeypatch.setenv("GPUCNN_DIST_TIMEOUT", "7.5")
    assert _mpi.timeout_from_env() == 7.5
    monkeypatch.delenv("GPUCNN_DIST_TIMEOUT")
    assert _mpi.timeout_from_env() == 300.0


# -- NCCL in one process: a fake group, the real NCCL module's ids and argument rules ----------
sys.path.insert(0, HERE)
import _fakes  # noqa: E402


class Expired(Exception):
    pass


class OneRank:
    """A group of one rank whose deadline is short and whose expiry raises (instead of
    ``MPI_Abort``) saying what was waited for."""

    rank, size, timeout = 0, 1, 0.3

    def bcast_host_(self, a, what):
        self.sent = a.copy()

    def expire(self, what):
        raise Expired(what)


def test_the_nccl_id_travels_as_the_bytes_cupy_14_makes_and_takes():
    """CuPy 14's ``get_unique_id()`` returns 128 bytes and ``NcclCommunicator`` takes bytes: the
    id rank 0 made is broadcast as 128 uint8 and handed over as the same bytes."""
    comms = []
    nccl = _fakes.FakeNccl(on_comm=comms.append)
    g = OneRank()
    s = NcclSum(g, _fakes.FakeGpu(True), nccl)
    a = np.ones(5, np.float32)
    with pytest.MonkeyPatch.context() as mp:       # a one-rank "sum" without MPI
        mp.setattr(_fakes.FakeComm, "allReduce",
                   _fakes.mirrors(_fakes._COMM.allReduce)(lambda self, *args: None))
        s(a, "sum")
    (comm,) = comms
    assert type(comm.uid) is bytes and len(comm.uid) == 128
    assert g.sent.dtype == np.uint8 and g.sent.tobytes() == comm.uid
    assert nccl.ids_made == 1


def test_a_peer_lost_while_joining_nccl_or_at_the_first_sum_ends_the_job_at_the_deadline():
    class Stuck(_fakes.FakeComm):
        block_init = True

        def __init__(self, *args):
            super().__init__(*args)
            if Stuck.block_init:
                time.sleep(30)

        def allReduce(self, *args):
            time.sleep(30)

    s = NcclSum(OneRank(), _fakes.FakeGpu(True), _fakes.FakeNccl(comm_class=Stuck))
    t0 = time.monotonic()
    with pytest.raises(Expired, match="joining NCCL: ncclCommInitRank"):
        s(np.ones(3, np.float32), "fit step 1")
    Stuck.block_init = False
    with pytest.raises(Expired, match="the first NCCL sum"):
        s(np.ones(3, np.float32), "fit step 1")
    assert time.monotonic() - t0 < 5


def test_an_asynchronous_nccl_error_is_raised_while_a_sum_is_awaited():
    class Failing(_fakes.FakeComm):
        def allReduce(self, *args):
            pass

        def check_async_error(self):
            raise RuntimeError("NCCL_ERROR_REMOTE_ERROR: a peer failed")

    class Busy(_fakes.FakeGpu):
        def event_done(self, ev):
            return False

    s = NcclSum(OneRank(), Busy(True), _fakes.FakeNccl(comm_class=Failing))
    with pytest.raises(RuntimeError, match="REMOTE_ERROR"):
        s(np.ones(3, np.float32), "sum")
    with pytest.raises(RuntimeError, match="REMOTE_ERROR"):   # later sums too, not just the first
        s(np.ones(3, np.float32), "sum")


@pytest.mark.parametrize("env,version,want", [
    (None, 23203, "NCCL_MULTI_RANK_GPU_ENABLE=1 allows two ranks per GPU from NCCL 2.30.0 on"),
    ("1", 22105, "the loaded NCCL is 2.21.5 and only 2.30.0 and later accept two ranks"),
    ("1", 23000, None),
])
def test_two_ranks_on_one_gpu_go_to_nccl_only_where_its_version_honours_the_setting(
        monkeypatch, env, version, want):
    if env is None:
        monkeypatch.delenv("NCCL_MULTI_RANK_GPU_ENABLE", raising=False)
    else:
        monkeypatch.setenv("NCCL_MULTI_RANK_GPU_ENABLE", env)
    nccl = _fakes.FakeNccl(version=version)
    got, why = distributed._ranks_per_gpu(nccl, 2, 1)
    if want is None:
        assert got is nccl and why is None
    else:
        assert got is None and want in why
    assert distributed._ranks_per_gpu(nccl, 3, 1)[0] is None      # never three on one GPU


def test_the_nccl_wheel_named_matches_cupys_cuda_version(monkeypatch):
    from importlib import metadata

    from gpucnn.kernels.cuda_set import _devices

    installed = {"cupy-cuda13x"}

    def version(name):
        if name not in installed:
            raise metadata.PackageNotFoundError(name)
        return "14.2.0"

    monkeypatch.setattr(metadata, "version", version)
    assert _devices.nccl_wheel() == ("nvidia-nccl-cu13", "distributed-cuda13")
    installed.clear()
    installed.add("cupy-cuda12x")
    assert _devices.nccl_wheel() == ("nvidia-nccl-cu12", "distributed-cuda")
