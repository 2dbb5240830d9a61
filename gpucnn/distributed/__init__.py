"""Data-parallel training over several processes, GPUs and machines, with the model code
unchanged.

MPI (through mpi4py) starts the processes, numbers them (ranks), carries the collectives on the
CPU and hands out the NCCL id; NCCL (through CuPy's ``cupy.cuda.nccl``) carries the collectives
between GPUs. gpucnn adds no transport of its own::

    # train.py
    import gpucnn
    from gpucnn import distributed

    distributed.init()                      # first: picks this rank's GPU, or its CPU cores
    model = gpucnn.zoo.lenet5()
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, batch_size=64, epochs=10)         # 64 images a step over all ranks

    $ mpiexec -n 2 python train.py

With ``size() > 1``, ``fit``, ``evaluate`` and ``predict`` work across the ranks: ``fit``
checks that every rank was called alike and starts them from rank 0's weights, optimizer and
random state; ``batch_size`` is the global batch, each rank computing its contiguous share and
one in-place sum a step adding the gradients, loss and metric sums; only rank 0 prints, draws
and writes. Every collective has a deadline (``GPUCNN_DIST_TIMEOUT`` seconds, default 300),
and an exception on one rank ends the job (``MPI_Abort``). On GPUs NCCL sums in device memory
(MPI through host memory where NCCL is missing or refuses). docs/distributed.md says what each
call does across ranks, how failures end the job, and the GPU path in full.

``python -m gpucnn.distributed.check`` measures a machine with GPUs (run it under mpiexec).
"""
from __future__ import annotations

import os
import sys
import traceback

import numpy as np

from gpucnn import backend as _backend
from gpucnn import parallel
from gpucnn.kernels import has, load_set
from gpucnn.distributed._mpi import Group, HostSum, NcclSum, timeout_from_env
from gpucnn.parallel import ranks as _ranks

_state = {"group": None, "hook": None, "device": None, "gpu": None}


def init(backend: str | None = None, timeout: float | None = None) -> None:
    """Join the MPI job this process belongs to (``COMM_WORLD``; a job of one without a
    launcher). Idempotent. Call it first, before choosing a backend or building a model:

    - on a machine with GPUs (unless the NumPy backend was chosen), this process takes the GPU
      of its local rank, before any CUDA context exists;
    - ``backend`` (``"auto"``, ``"numpy"``, ``"cuda"``): then ``gpucnn.set_backend`` it;
    - the NumPy kernels get the machine's cores divided by its ranks (unless
      ``GPUCNN_NUM_THREADS`` says otherwise);
    - ``timeout``: the deadline of every collective in seconds (default
      ``GPUCNN_DIST_TIMEOUT``, else 300).
    """
    if _state["group"] is not None:
        if backend is not None:
            _backend.set_backend(backend)
        return
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or not timeout > 0):
        raise ValueError(f"gpucnn.distributed.init: timeout must be a positive number of "
                         f"seconds, got {timeout!r}")
    if backend is not None and (not isinstance(backend, str)
                                or backend.lower() not in _backend.names()):
        raise ValueError(f"gpucnn.distributed.init: unknown backend {backend!r}; expected "
                         f"one of {_backend.names()}")
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ImportError(
            "gpucnn.distributed.init: mpi4py cannot be imported "
            f"({e}); install it with pip install 'gpucnn[distributed]' (mpi4py and MPICH), or "
            "build mpi4py against your cluster's MPI (see the README)") from None
    g = Group(MPI, MPI.COMM_WORLD, timeout if timeout is not None else timeout_from_env())
    gpu = _gpus()
    count = gpu.device_count() if _may_use_gpu(backend) else 0
    if count > 0:
        _state["device"] = g.local_rank % count
        gpu.use_device(_state["device"])
    g.make_device_sum = lambda: _device_sum(g, _backend.kernels(), gpu, count)
    cpu = load_set("numpy")
    if has(cpu, "threads") and not os.environ.get("GPUCNN_NUM_THREADS", "").strip():
        cpu.set_num_threads(max(1, min(8, _cpus() // g.local_size)))
    _state["group"] = g
    parallel.set_group(g)
    if g.size > 1:
        _state["hook"] = sys.excepthook
        sys.excepthook = _abort_on_exception
    if backend is not None:
        _backend.set_backend(backend)


class _NoDevices:
    """No GPU here: ``device_count()`` is 0, so nothing else is asked."""

    def device_count(self) -> int:
        return 0

    def synchronize(self) -> None:
        pass


def _gpus():
    """The GPUs as the kernel set offers them (its ``devices`` capability: device count and
    choice, NCCL, the stream NCCL runs on, events), asked of the cuda set the first time and
    kept in ``_state["gpu"]``, where tests put another object with the same methods. Where no
    kernel set offers devices (or the cuda set cannot be loaded) the answer sees no GPU
    (``_NoDevices``), and the ranks sum through MPI on the host."""
    if _state["gpu"] is None:
        try:
            ks = load_set("cuda")
        except Exception:  # noqa: BLE001 - a set that cannot load offers no devices
            ks = None
        _state["gpu"] = ks.devices() if ks is not None and has(ks, "devices") else _NoDevices()
    return _state["gpu"]


def _may_use_gpu(backend) -> bool:
    """Whether the backend may be (or is) cuda: not when NumPy was asked for."""
    if backend is not None:
        return backend.lower() != "numpy"
    chosen = _backend._state["name"]
    if chosen is not None:
        return chosen == "cuda"
    return (os.environ.get("GPUCNN_BACKEND", "auto") or "auto").lower() != "numpy"


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def _device_sum(g, ks, gpu, count):
    """How device arrays are summed: NCCL, or MPI through host memory (the reason said once)."""
    nccl, why = gpu.nccl()
    if nccl is not None and g.local_size > count:
        nccl, why = _ranks_per_gpu(nccl, g.local_size, count)
    if nccl is None:
        if g.rank == 0:
            print(f"gpucnn.distributed: gradients are summed through host memory by MPI: {why}",
                  file=sys.stderr)
        return HostSum(g, ks, why)
    return NcclSum(g, gpu, nccl)


#: The first NCCL release whose ``NCCL_MULTI_RANK_GPU_ENABLE=1`` lets two ranks share a GPU, as
#: ``ncclGetVersion`` codes it (major * 10000 + minor * 100 + patch).
NCCL_MULTI_RANK_VERSION = 23000


def _nccl_version_text(code: int) -> str:
    return f"{code // 10000}.{code // 100 % 100}.{code % 100}"


def _ranks_per_gpu(nccl, local_size: int, count: int):
    """``(nccl, None)`` when NCCL accepts ``local_size`` ranks on ``count`` GPUs, else ``(None,
    why)``: one rank per GPU, or two where ``NCCL_MULTI_RANK_GPU_ENABLE=1`` is set and the
    loaded NCCL is recent enough to honour it (an older one would answer
    ``NCCL_ERROR_INVALID_USAGE`` on every rank)."""
    share = f"{local_size} ranks share {count} GPU(s) on this machine"
    if os.environ.get("NCCL_MULTI_RANK_GPU_ENABLE") != "1":
        return None, (f"{share}, which NCCL refuses (NCCL_MULTI_RANK_GPU_ENABLE=1 allows two "
                      f"ranks per GPU from NCCL {_nccl_version_text(NCCL_MULTI_RANK_VERSION)} on)")
    version = int(nccl.get_version())
    if version < NCCL_MULTI_RANK_VERSION:
        return None, (f"{share}; NCCL_MULTI_RANK_GPU_ENABLE=1 is set, but the loaded NCCL is "
                      f"{_nccl_version_text(version)} and only "
                      f"{_nccl_version_text(NCCL_MULTI_RANK_VERSION)} and later accept two "
                      "ranks on one GPU")
    if local_size > 2 * count:
        return None, f"{share}, more than the two per GPU NCCL accepts"
    return nccl, None


def _abort_on_exception(exc_type, exc, tb):
    """The exception hook of a job of several ranks: the traceback with ``[rank r/R]`` in front
    of every line, then the end of the whole job (the other ranks would wait for this one)."""
    g = _state["group"]
    tag = g.tag if g is not None else "[rank ?]"
    text = "".join(traceback.format_exception(exc_type, exc, tb)).rstrip("\n")
    sys.stderr.write("".join(f"{tag} {line}\n" for line in text.split("\n")))
    sys.stderr.write(f"{tag} gpucnn.distributed: this rank failed; ending the job.\n")
    sys.stderr.flush()
    if g is not None:
        g.abort(1)


def _group():
    g = _state["group"]
    if g is None:
        raise RuntimeError("gpucnn.distributed: call gpucnn.distributed.init() first")
    return g


def rank() -> int:
    """This process's rank in the job (0 before ``init()``)."""
    return getattr(_state["group"], "rank", 0)


def size() -> int:
    """The number of ranks in the job (1 before ``init()``)."""
    return getattr(_state["group"], "size", 1)


def local_rank() -> int:
    """This process's rank among the ranks of its machine (0 before ``init()``)."""
    return getattr(_state["group"], "local_rank", 0)


def is_main() -> bool:
    """Whether this process is rank 0, the one that prints and writes for the job."""
    return rank() == 0


def barrier() -> None:
    """Wait until every rank is here (with the deadline)."""
    _group().barrier("barrier()")


def broadcast_weights(model) -> None:
    """Give every rank rank 0's weights of ``model`` (``fit`` does this by itself)."""
    _ranks.broadcast_model(_group(), model, "broadcast_weights()")


def allreduce(array):
    """The sum over the ranks of ``array`` (a NumPy array, or an array of the backend), as a
    new array of the same kind; NCCL sums device arrays."""
    g = _group()
    xp = _backend.xp()
    if g.on_device() and isinstance(array, xp.ndarray):      # the CUDA backend's
        out = xp.array(array, copy=True, order="C")
        g.allreduce_(out, "allreduce()")
        return out
    if not isinstance(array, np.ndarray):
        raise TypeError(f"allreduce: expected a NumPy array or an array of the active backend "
                        f"({xp.__name__}), got {type(array).__name__}")
    out = np.array(array, copy=True, order="C")
    g.allreduce_host_(out, "allreduce()")
    return out


def info() -> dict:
    """Rank, size, local rank, the GPU this process uses (or None) and how sums travel."""
    g = _state["group"]
    return {"rank": rank(), "size": size(), "local_rank": local_rank(),
            "local_size": getattr(g, "local_size", 1), "device": _state["device"],
            "transport": _transport(g), "timeout": getattr(g, "timeout", None)}


def _transport(g) -> str:
    """How sums of the backend's arrays travel: none, mpi, nccl or mpi (host)."""
    if g is None:
        return "none"
    if not g.on_device():
        return "mpi"
    if g.device_sum is None:
        g.device_sum = g.make_device_sum()
    return "nccl" if isinstance(g.device_sum, NcclSum) else "mpi (host)"


def shutdown() -> None:
    """Leave distributed training: ``fit`` trains alone again; the exception hook goes back.
    MPI itself ends with the process (mpi4py finalizes it)."""
    g = _state["group"]
    if g is None:
        return
    parallel.set_group(None)
    if isinstance(g.device_sum, NcclSum):
        g.device_sum.close()
    if _state["hook"] is not None and sys.excepthook is _abort_on_exception:
        sys.excepthook = _state["hook"]
    _state.update(group=None, hook=None, device=None)


__all__ = ["allreduce", "barrier", "broadcast_weights", "info", "init", "is_main",
           "local_rank", "rank", "shutdown", "size"]
