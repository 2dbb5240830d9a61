"""Fakes of CuPy, NCCL and the CUDA driver for machines without a GPU, held to the real libraries.

CuPy and NCCL install and import without a GPU, and their Cython functions carry their C
signatures (the first line of each docstring, ``allReduce(self, intptr_t sendbuf, ...)``). A
fake's method says which real function it stands in for with ``@mirrors(real)``: it must take
the real one's parameter names (checked by ``tests/test_fakes.py`` against the installed
library), and every call is checked against the real one's argument types as the real function
checks them before it touches a device (a C integer takes an ``int``, a ``bytes`` parameter
takes ``bytes``). Where the real object works without a device (NCCL's ids, version and
constants, CuPy's memory pools, allocator context and graph objects) the fakes use it.
"""
from __future__ import annotations

import functools
import inspect
import operator
import re

#: C types whose Python argument must be an integer (Cython converts with ``__index__``).
C_INTEGERS = {"int", "unsigned int", "intptr_t", "size_t", "long", "unsigned long", "ssize_t",
              "int64_t", "uint64_t"}


def real_parameters(real) -> list[tuple[str, str | None]]:
    """``[(name, C type or None)]`` of ``real``'s parameters after ``self``: from the signature
    line Cython writes at the top of the docstring, else from ``inspect.signature``."""
    doc = (getattr(real, "__doc__", None) or "").strip().splitlines()
    m = re.match(r"^[\w.]+\((.*)\)(\s*->.*)?$", doc[0]) if doc else None
    if m is None:
        sig = inspect.signature(real)
        return [(p.name, None) for p in sig.parameters.values() if p.name != "self"]
    out = []
    for part in filter(None, (p.strip() for p in m.group(1).split(","))):
        part = part.split("=")[0].strip()
        if part in ("self", "*args", "**kwargs"):
            continue
        words = part.split()
        out.append((words[-1].lstrip("*"), " ".join(words[:-1]) or None))
    return out


def check_call(what: str, params, args, kwargs) -> None:
    """TypeError or ValueError where the real function would refuse these arguments."""
    bound = dict(zip((n for n, _ in params), args))
    bound.update(kwargs)
    for name, ctype in params:
        if name not in bound or ctype is None:
            continue
        v = bound[name]
        if ctype in C_INTEGERS:
            operator.index(v)               # TypeError for a float, a tuple, None ...
        elif ctype == "bytes" and type(v) is not bytes:
            raise TypeError(f"{what}: Argument '{name}' has incorrect type (expected bytes, got "
                            f"{type(v).__name__})")


def mirrors(real):
    """Decorate a fake's method that stands in for ``real`` (see the module docstring)."""
    params = real_parameters(real)

    def wrap(fn):
        @functools.wraps(fn)
        def checked(*args, **kwargs):
            own = list(inspect.signature(fn).parameters)
            skip = 1 if own and own[0] == "self" else 0
            check_call(fn.__qualname__, params, args[skip:], kwargs)
            return fn(*args, **kwargs)

        checked.mirrors = real
        return checked

    return wrap


def mirrored_methods(cls) -> dict:
    """``{name: real}`` of the methods of fake class ``cls`` decorated with ``mirrors``."""
    return {n: f.mirrors for n, f in vars(cls).items() if hasattr(f, "mirrors")}


# -- CuPy's stream capture (the ``graphs`` capability's Device engine) --------------------------
def capture_cupy(launched: list):
    """A CuPy module for ``kernels.cuda_set.graphs.Device`` without a GPU: the real memory pool,
    allocator context, capture-mode constant and ``Graph`` class (without a ``__dict__``, like
    every CuPy Cython object); a stream whose capture returns a real ``Graph`` object; graph
    launches recorded in ``launched``."""
    import types

    import cupy
    from cupy.cuda import graph as cgraph

    class Graph(cgraph.Graph):
        __slots__ = ()                      # as the real class: no attribute can be added

        @mirrors(cgraph.Graph.launch)
        def launch(self, stream=None):
            launched.append(stream)

    class Stream:
        """Stands in for ``cupy.cuda.Stream``: capture begins and ends, nothing runs."""

        @mirrors(cupy.cuda.Stream.__init__)
        def __init__(self, null=False, non_blocking=False, ptds=False, priority=None):
            self.capturing = False

        @mirrors(cupy.cuda.Stream.wait_event)
        def wait_event(self, event):
            pass

        @mirrors(cupy.cuda.Stream.record)
        def record(self, event=None):
            return event

        @mirrors(cupy.cuda.Stream.begin_capture)
        def begin_capture(self, mode=None):
            self.capturing = True

        @mirrors(cupy.cuda.Stream.end_capture)
        def end_capture(self):
            self.capturing = False
            return Graph.__new__(Graph)

        def __enter__(self):
            return self

        def __exit__(self, *args):
            return False

    class MemoryPool(cupy.cuda.MemoryPool):
        """The real pool; as a Python subclass it can be referred to weakly, so a test can see
        when it is freed (CuPy's allocations refer weakly to the per-device pool inside it)."""

    cuda = types.SimpleNamespace(MemoryPool=MemoryPool, Stream=Stream,
                                 using_allocator=cupy.cuda.using_allocator,
                                 runtime=types.SimpleNamespace(
                                     streamCaptureModeRelaxed=cupy.cuda.runtime
                                     .streamCaptureModeRelaxed),
                                 get_current_stream=lambda device_id=-1: Stream())
    return types.SimpleNamespace(cuda=cuda, Stream=Stream, Graph=Graph)


# -- NCCL (gpucnn.distributed's NcclSum) ----------------------------------------------------------
def nccl_module():
    """The real ``cupy.cuda.nccl`` (ImportError where CuPy is missing)."""
    from cupy.cuda import nccl

    return nccl


class FakeNccl:
    """``cupy.cuda.nccl`` for ranks on a machine without GPUs: the real module's constants,
    unique ids and version; communicators whose sums MPI does (``FakeComm``). ``on_comm(comm)``
    is called with every communicator made; ``version`` replaces NCCL's version."""

    def __init__(self, on_comm=None, version=None, comm_class=None):
        real = nccl_module()
        self.real, self.on_comm, self.version = real, on_comm, version
        self.comm_class = comm_class or FakeComm
        self.ids_made = 0
        for name in ("NCCL_FLOAT32", "NCCL_FLOAT64", "NCCL_SUM"):
            setattr(self, name, getattr(real, name))

    def get_unique_id(self):
        self.ids_made += 1
        return self.real.get_unique_id()

    def get_version(self):
        return self.real.get_version() if self.version is None else self.version

    def NcclCommunicator(self, ndev, commId, rank, config=None):
        comm = self.comm_class(ndev, commId, rank, config)
        if self.on_comm is not None:
            self.on_comm(comm)
        return comm


try:
    _COMM = nccl_module().NcclCommunicator
except ImportError:                        # pragma: no cover - test_fakes fails then
    _COMM = None


def _comm_method(name):
    return getattr(_COMM, name) if _COMM is not None else (lambda *a: None)


class FakeComm:
    """``NcclCommunicator`` whose ``allReduce`` is MPI's sum over host memory (the simulator's
    arrays); it refuses the arguments the real constructor refuses."""

    @mirrors(_COMM if _COMM is not None else (lambda ndev, commId, rank, config=None: None))
    def __init__(self, ndev, commId, rank, config=None):
        if len(commId) != 128:
            raise ValueError(f"commId length {len(commId)} != 128.")
        self.size, self.uid, self.rank, self.sums = ndev, commId, rank, 0

    @mirrors(_comm_method("allReduce"))
    def allReduce(self, sendbuf, recvbuf, count, datatype, op, stream):
        import ctypes

        import numpy as np
        from mpi4py import MPI

        real = nccl_module()
        assert sendbuf == recvbuf and op == real.NCCL_SUM, (sendbuf, recvbuf, op)
        ctype = ctypes.c_float if datatype == real.NCCL_FLOAT32 else ctypes.c_double
        a = np.ctypeslib.as_array((ctype * count).from_address(recvbuf))
        MPI.COMM_WORLD.Allreduce(MPI.IN_PLACE, a, op=MPI.SUM)
        self.sums += 1


for _name in ("check_async_error", "destroy", "abort"):      # no-ops on the fake communicator
    setattr(FakeComm, _name, mirrors(_comm_method(_name))(lambda self: None))


class FakeGpu:
    """The CuPy side of gpucnn.distributed on a machine without GPUs: two devices, arrays on
    the host (Numba's simulator), and the real NCCL module's ids and constants with
    communicators whose sums MPI does (tests/test_fakes.py holds this class to
    ``cuda_set._devices.Devices`` and the NCCL fakes to the installed NCCL)."""

    def __init__(self, with_nccl):
        self.with_nccl, self.used, self.comms = with_nccl, [], []
        self.fake_nccl = FakeNccl(on_comm=self.comms.append)

    @property
    def ids_made(self):
        return self.fake_nccl.ids_made

    def device_count(self):
        return 2

    def use_device(self, index):
        self.used.append(index)

    def current_device(self):
        return self.used[-1]

    def nccl(self):
        return (self.fake_nccl, None) if self.with_nccl else (None, "no NCCL in this test")

    def pointer(self, a):
        return a.ctypes.data

    def stream(self):
        return 0

    def record_event(self):
        return None

    def event_done(self, ev):
        return True

    def synchronize(self):
        pass
