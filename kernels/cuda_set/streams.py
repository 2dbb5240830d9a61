"""Data larger than the device: pinned host memory, a copy stream, events, and the one place the
set reads its arrays back (the cuda set's ``streams`` capability, and its ``to_host``).

``streams()`` returns the engine that ``gpucnn.data`` streams a data set through:

- ``free_bytes()``: device memory free now (the driver's free bytes and the blocks CuPy's pool
  holds unused);
- ``pinned(shape, dtype)``: a NumPy array in page-locked host memory (an asynchronous copy's
  source); ``empty(shape, dtype)``: a device array;
- ``upload(pairs, after)``: each ``(device, pinned)`` pair of ``pairs`` copied on the engine's
  own stream, which first waits (on the device) for event ``after`` (None: nothing); returns an
  event recorded after the copies. The host does not wait;
- ``record()``: an event recorded on the current stream (where the kernels run);
  ``wait(event)``: the current stream waits for ``event``, on the device; ``finish(event)``: the
  host waits for ``event`` (before it writes a pinned buffer a copy may still read);
- ``read(a)``: ``a`` as a NumPy array, the host waiting for the device: ``to_host`` is this.

On a GPU ``Device`` does each with CuPy. In Numba's simulator the "device" is the host: ``Host``
copies at once and has no events. ``tests/test_streaming.py`` runs ``Device`` over a fake CuPy
held to the real one, whose copies run as late as CUDA allows.
"""
from __future__ import annotations

import os

import numpy as np

from ._arrays import xp
from ._runtime import cp


class Device:
    """The engine on a GPU, through the CuPy module ``cp``."""

    def __init__(self, cp):
        self.cp = cp
        self._stream = None

    def free_bytes(self) -> int:
        free, _ = self.cp.cuda.runtime.memGetInfo()
        return int(free) + int(self.cp.get_default_memory_pool().free_bytes())

    def pinned(self, shape, dtype):
        dtype, n = np.dtype(dtype), int(np.prod(shape))
        mem = self.cp.cuda.alloc_pinned_memory(max(n * dtype.itemsize, 1))
        return np.frombuffer(mem, dtype, n).reshape(shape)

    def empty(self, shape, dtype):
        return self.cp.empty(shape, dtype)

    def upload(self, pairs, after=None):
        if self._stream is None:
            self._stream = self.cp.cuda.Stream(non_blocking=True)
        if after is not None:
            self._stream.wait_event(after)
        for dst, src in pairs:
            self.cp.ndarray.set(dst, src, self._stream)
        return self._stream.record()

    def record(self):
        return self.cp.cuda.get_current_stream().record()

    def wait(self, event) -> None:
        if event is not None:
            self.cp.cuda.get_current_stream().wait_event(event)

    def finish(self, event) -> None:
        if event is not None:
            event.synchronize()

    def read(self, a):
        return self.cp.asnumpy(a)


class Host:
    """The engine in the simulator: the device is the host, copies are immediate."""

    def free_bytes(self) -> int:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")

    def pinned(self, shape, dtype):
        return np.empty(shape, dtype)

    empty = pinned

    def upload(self, pairs, after=None):
        for dst, src in pairs:
            np.copyto(dst, src)

    def record(self):
        return None

    def wait(self, event) -> None:
        pass

    finish = wait

    def read(self, a):
        return np.asarray(a)


_engine = Device(cp) if xp is not np else Host()


def streams():
    """The ``streams`` capability: this process's engine (see the module docstring)."""
    return _engine


def to_host(a):
    """A NumPy array of ``a`` (the contract's ``to_host``): ``streams().read(a)``."""
    return _engine.read(a)
