"""CUDA graphs for the runners above the kernels: capture a function's launches once, replay them.

``graph_engine()`` is the cuda set's ``graphs`` capability. Its engine has three methods:

- ``capture(fn) -> (graph, out)``: ``fn()`` run once while its launches are recorded; ``out`` is
  what ``fn`` returned, arrays that every replay writes again;
- ``launch(graph)``: replay on the current stream (no host synchronisation);
- ``copy(dst, src)``: ``src`` (host or device) copied into the device array ``dst``, in stream
  order (how new inputs reach a captured buffer).

On a GPU, ``Device`` records ``fn`` on a side stream with CuPy's stream capture, its allocations
drawn from a memory pool of the graph's own. A CuPy array refers to its pool only weakly, so the
pool must live exactly as long as the graph: ``Captured`` holds both (``cupy.cuda.graph.Graph``
is a Cython class without a ``__dict__``; nothing can be hung on it).

In Numba's simulator (no GPU), ``Recorded`` keeps ``fn`` itself as the "graph": a replay calls
it again and copies its results into the arrays the capture returned, as a real replay rewrites
its buffers. Everything above the engine runs the same code on both.
"""
from __future__ import annotations

import numpy as np

from . import _launch, _runtime


class Captured:
    """A CUDA graph and the memory pool its buffers came from (see the module docstring)."""

    __slots__ = ("graph", "pool")

    def __init__(self, graph, pool):
        self.graph, self.pool = graph, pool

    def launch(self, stream) -> None:
        self.graph.launch(stream)


class Device:
    """Stream capture and graph launch on a GPU, through the CuPy module ``cp``."""

    def __init__(self, cp):
        self.cp = cp

    def capture(self, fn):
        """``(Captured, fn())``: ``fn`` recorded on a side stream (see the module docstring)."""
        cp = self.cp
        pool = cp.cuda.MemoryPool()
        stream = cp.cuda.Stream(non_blocking=True)
        stream.wait_event(cp.cuda.get_current_stream().record())
        mode = cp.cuda.runtime.streamCaptureModeRelaxed
        with stream, cp.cuda.using_allocator(pool.malloc):
            stream.begin_capture(mode)
            try:
                out = fn()
            except BaseException:
                stream.end_capture()
                raise
            graph = stream.end_capture()
        return Captured(graph, pool), out

    def launch(self, graph) -> None:
        graph.launch(self.cp.cuda.get_current_stream())

    def copy(self, dst, src) -> None:
        self.cp.copyto(dst, self.cp.asarray(src))


class Recorded:
    """Capture without a GPU (see the module docstring)."""

    def capture(self, fn):
        out = _arrays(fn())
        return (lambda: _copy_into(out, fn())), out

    def launch(self, graph) -> None:
        graph()

    def copy(self, dst, src) -> None:
        np.copyto(dst, src)


def graph_engine():
    """The engine for this process: ``Device`` over CuPy on a GPU, ``Recorded`` in the
    simulator."""
    if _launch.launch_path() == "sim" or _runtime.cp is None:
        return Recorded()
    return Device(_runtime.cp)


def _arrays(v):
    """Nested tuples and lists with NumPy scalars made 0-d arrays (a replay writes into them)."""
    if isinstance(v, (tuple, list)):
        return type(v)(_arrays(u) for u in v)
    return np.array(v) if isinstance(v, np.generic) else v


def _copy_into(dst, src):
    """Copy nested tuples and lists of arrays ``src`` into the same structure ``dst``."""
    if isinstance(dst, (tuple, list)):
        for d, v in zip(dst, src):
            _copy_into(d, v)
    elif dst is not None and hasattr(dst, "shape"):
        np.copyto(dst, src)
