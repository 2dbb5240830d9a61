"""The ranks of an MPI job as ``gpucnn.parallel.ranks`` uses them: rank, size, and collectives
(MPI's non-blocking ``Iallreduce``, ``Ibcast``, ``Ibarrier``) polled against a deadline,
``GPUCNN_DIST_TIMEOUT`` seconds (default 300), past which the rank says what it waited for and
where (``[rank 1/2] ... fit, epoch 1 of this call, step 3 ...``) and ends every process of the
job (``MPI_Abort``); docs/distributed.md ("Failures and deadlines") tells the whole of it.

On the CUDA backend device arrays are summed by NCCL on the GPUs (``NcclSum``, its communicator
made at the first sum from an id that rank 0 makes and MPI broadcasts), or through host memory
by MPI when NCCL cannot run (``HostSum``).
"""
from __future__ import annotations

import os
import sys
import threading
import time

import numpy as np

from gpucnn import backend

NCCL_ID_BYTES = 128   # ncclUniqueId, as cupy.cuda.nccl.get_unique_id() returns it
SPIN = 0.005          # seconds a wait polls before it starts sleeping between polls
NAP = 0.0005          # then between polls (a step's sum comes within a fraction of a ms)
ABORT_GRACE = 0.5     # seconds between a rank's last words and MPI_Abort


def timeout_from_env() -> float:
    """``GPUCNN_DIST_TIMEOUT`` in seconds (default 300)."""
    text = os.environ.get("GPUCNN_DIST_TIMEOUT", "").strip()
    if not text:
        return 300.0
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"GPUCNN_DIST_TIMEOUT must be a positive number of seconds, got "
                         f"{text!r}")
    return value


class Group:
    """``comm`` (an mpi4py communicator) with deadlines; see the module docstring."""

    def __init__(self, MPI, comm, timeout: float):
        self.MPI, self.comm, self.timeout = MPI, comm, float(timeout)
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        local = comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank, self.local_size = local.Get_rank(), local.Get_size()
        local.Free()
        self.device_sum = None            # NcclSum or HostSum, made at the first device sum
        self.make_device_sum = None       # () -> NcclSum or HostSum (given by init)

    @property
    def tag(self) -> str:
        return f"[rank {self.rank}/{self.size}]"

    # -- waiting ------------------------------------------------------------------------------
    def wait(self, req, what: str) -> None:
        """Poll ``req`` until it completes; past the deadline, end the job."""
        if req.Test():
            return
        start = time.monotonic()
        deadline, spin = start + self.timeout, start + SPIN
        while not req.Test():
            now = time.monotonic()
            if now > deadline:
                self.expire(what)
            if now > spin:
                time.sleep(NAP)

    def expire(self, what: str) -> None:
        """Say what this rank waited for, then end the whole job."""
        sys.stderr.write(
            f"{self.tag} gpucnn.distributed: {what}: the other ranks did not answer within "
            f"{self.timeout:g} s (GPUCNN_DIST_TIMEOUT); a rank may have hung or died. Ending "
            "the job.\n")
        sys.stderr.flush()
        self.abort(1)

    def abort(self, code: int = 1) -> None:
        # what this rank wrote to stderr reaches the launcher through its forwarding process,
        # which MPI_Abort may kill first: give the last lines a moment to go through
        time.sleep(ABORT_GRACE)
        self.comm.Abort(code)

    # -- collectives ---------------------------------------------------------------------------
    def allreduce_host_(self, a: np.ndarray, what: str) -> None:
        """The sum over the ranks of NumPy array ``a``, in place."""
        if not a.flags.c_contiguous:
            raise ValueError(f"{what}: expected a C-contiguous array, got strides {a.strides}")
        self.wait(self.comm.Iallreduce(self.MPI.IN_PLACE, a, op=self.MPI.SUM), what)

    def bcast_host_(self, a: np.ndarray, what: str) -> None:
        """Rank 0's NumPy array ``a`` into ``a`` on every rank."""
        if not a.flags.c_contiguous:
            raise ValueError(f"{what}: expected a C-contiguous array, got strides {a.strides}")
        self.wait(self.comm.Ibcast(a, root=0), what)

    def on_device(self) -> bool:
        """Whether backend arrays live on a GPU (the CUDA backend; its simulator too)."""
        return backend.get_backend() == "cuda" and self.make_device_sum is not None

    def allreduce_(self, a, what: str) -> None:
        """The sum over the ranks of a backend array ``a`` (host or device), in place."""
        if self.on_device():
            if self.device_sum is None:
                self.device_sum = self.make_device_sum()
            self.device_sum(a, what)
        else:
            self.allreduce_host_(a, what)

    def barrier(self, what: str) -> None:
        self.wait(self.comm.Ibarrier(), what)


class HostSum:
    """Device arrays summed through host memory by MPI (NCCL absent or refused)."""

    def __init__(self, group, ks, reason: str):
        self.group, self.ks, self.reason = group, ks, reason

    def __call__(self, a, what: str) -> None:
        host = np.ascontiguousarray(self.ks.to_host(a))
        self.group.allreduce_host_(host, what)
        a[...] = self.ks.asarray(host)


class NcclSum:
    """Device arrays summed in place by NCCL; the communicator is made at the first sum.

    Every host call into NCCL that can wait on the other ranks (``ncclCommInitRank``, which
    connects to them, and the first ``allReduce``, which may connect lazily) runs on a watcher
    thread while this thread polls it against the deadline; the sum itself is then polled
    through an event recorded after it, and NCCL's asynchronous error state is read at every
    poll, so a peer lost at any point ends the job at the deadline with what was waited for,
    and an NCCL error is raised as soon as NCCL reports it."""

    def __init__(self, group, gpu, nccl):
        self.group, self.gpu, self.nccl = group, gpu, nccl
        self.comm = None
        self.sums = 0

    def _connect(self, what: str):
        g = self.group
        uid = np.zeros(NCCL_ID_BYTES, np.uint8)
        if g.rank == 0:
            made = self.nccl.get_unique_id()           # 128 bytes (CuPy 14 and later)
            if not isinstance(made, bytes) or len(made) != NCCL_ID_BYTES:
                raise TypeError(f"{what}: expected nccl.get_unique_id() to return "
                                f"{NCCL_ID_BYTES} bytes, got {type(made).__name__} of length "
                                f"{len(made)}")
            uid[:] = np.frombuffer(made, np.uint8)
        g.bcast_host_(uid, f"{what} (the broadcast of the NCCL id)")
        self.comm = self._watched(lambda: self.nccl.NcclCommunicator(g.size, uid.tobytes(),
                                                                      g.rank),
                                  f"{what} (joining NCCL: ncclCommInitRank)")

    def _watched(self, fn, what: str):
        """``fn()`` run on a watcher thread, polled against the deadline (see the class)."""
        box = {}

        def run():
            try:
                box["value"] = fn()
            except BaseException as e:  # noqa: BLE001 - handed to the polling thread
                box["error"] = e

        t = threading.Thread(target=run, name="gpucnn-nccl", daemon=True)
        t.start()
        start = time.monotonic()
        deadline, spin = start + self.group.timeout, start + SPIN
        while t.is_alive():
            now = time.monotonic()
            if now > deadline:
                self.group.expire(what)
            t.join(0 if now <= spin else NAP)
        if "error" in box:
            raise box["error"]
        return box.get("value")

    def __call__(self, a, what: str) -> None:
        if self.comm is None:
            self._connect(what)
        kinds = {np.dtype(np.float32): self.nccl.NCCL_FLOAT32,
                 np.dtype(np.float64): self.nccl.NCCL_FLOAT64}
        kind = kinds.get(np.dtype(a.dtype))
        if kind is None or not a.flags.c_contiguous:
            raise TypeError(f"{what}: NCCL sums C-contiguous float32 or float64 arrays, got "
                            f"{a.dtype} with strides {a.strides}")
        ptr = self.gpu.pointer(a)
        args = (ptr, ptr, a.size, kind, self.nccl.NCCL_SUM, self.gpu.stream())
        if self.sums == 0:                   # the first sum may connect to the peers
            self._watched(lambda: self.comm.allReduce(*args), f"{what} (the first NCCL sum)")
        else:
            self.comm.allReduce(*args)
        self.sums += 1
        ev = self.gpu.record_event()
        start = time.monotonic()
        deadline, spin = start + self.group.timeout, start + SPIN
        while not self.gpu.event_done(ev):
            self.comm.check_async_error()     # raises NcclError when NCCL has failed
            now = time.monotonic()
            if now > deadline:
                self.comm.abort()             # frees the GPU from the stuck collective
                self.group.expire(what)
            if now > spin:
                time.sleep(NAP)

    def close(self) -> None:
        if self.comm is not None:
            self.comm.destroy()
            self.comm = None
