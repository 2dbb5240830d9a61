"""Small launch configurations for running the cuda set in Numba's CUDA simulator.

The simulator runs every CUDA thread as a Python thread and every ``syncthreads`` as a
rendezvous of those threads, so a kernel costs roughly (threads launched) + (blocks x
barriers). ``small_launches()`` swaps in tiles and block sizes that keep both small while still
exercising every code path (several tiles per grid, split-K, grid-stride loops, two-pass column
sums). The tests and ``python -m gpucnn.gpucheck --tiny`` use it; on a GPU nothing needs it.
"""
from __future__ import annotations

import contextlib
import sys

import numpy as np

from . import (_arrays, activation, conv, conv_tf32, dropout, gemm, loss, optim, pool, reduce,
               softmax)
from ._runtime import SIMULATOR

#: (module, name) -> the small value.
SMALL = {
    (conv, "TILE_WIDE"): conv.Tile(16, 8, 16, 4, 2),     # 16 threads, 4x2 register blocks
    (conv, "TILE_NARROW"): conv.Tile(16, 4, 16, 4, 1),   # 16 threads, 4x1 register blocks
    (conv, "TILE_WIDE_DW"): conv.Tile(16, 8, 8, 4, 2),   # 16 threads, reduction step 8
    (gemm, "TILE_WIDE"): gemm.GTile(16, 16, 4, 8, 8),     # 4 threads, two LDS groups each way
    (gemm, "TILE_MID"): gemm.GTile(16, 8, 4, 4, 4),       # 8 threads
    (gemm, "TILE_NARROW"): gemm.GTile(16, 4, 2, 4, 4),    # 4 threads, reduction step 2
    (conv_tf32, "TILE_WIDE"): conv_tf32.MmaTile(16, 16, 8, 1, 2),   # two warps
    (conv_tf32, "TILE_NARROW"): conv_tf32.MmaTile(16, 8, 8, 1, 1),  # one warp
    (conv_tf32, "TARGET_BLOCKS"): 6,
    (conv_tf32, "MIN_SPLIT_STEPS"): 1,
    (conv, "TARGET_BLOCKS"): 6,
    (conv, "MIN_SPLIT_STEPS"): 1,
    (_arrays, "MAX_BLOCKS"): 2,
    (activation, "EW_BLOCK"): 32,
    (reduce, "COLSUM_BLOCK"): (4, 2),
    (reduce, "COLSUM_ROWS"): 16,
    (pool, "POOL_BLOCK"): 32,
    (softmax, "SOFTMAX_BLOCK"): 8,
    (loss, "LOSS_BLOCK"): 8,
    (loss, "LOSS_BWD_BLOCK"): 32,
    (dropout, "DROPOUT_BLOCK"): 32,
    (optim, "OPTIM_BLOCK"): 32,
}

#: The simulator's block manager busy-polls its threads while holding the GIL; a short switch
#: interval lets the simulated threads run (about 7x faster than Python's default 5 ms).
SWITCH_INTERVAL = 5e-5


@contextlib.contextmanager
def small_launches(switch_interval: bool = True):
    """Use ``SMALL`` (and, in the simulator, a short GIL switch interval) inside the block."""
    saved = {key: getattr(*key) for key in SMALL}
    interval = sys.getswitchinterval()
    try:
        for (mod, name), value in SMALL.items():
            setattr(mod, name, value)
        if SIMULATOR and switch_interval:
            sys.setswitchinterval(SWITCH_INTERVAL)
        yield
    finally:
        sys.setswitchinterval(interval)
        for (mod, name), value in saved.items():
            setattr(mod, name, value)


def lock_shared_arrays():
    """Numba's CUDA simulator runs a block's threads as Python threads and gives them one shared
    array per source line, stored by the first thread that asks, with an unlocked look-up then
    store: a thread switch between the two gives some threads a private "shared" array, and the
    kernel a wrong result (seen in the test suite and in gpucheck's tiny run). The same
    allocation, done under a lock, so that simulated kernels are deterministic."""
    import threading

    from numba.cuda.simulator import kernelapi
    from numba.np import numpy_support
    from numba.core import types

    original = kernelapi.FakeCUDAShared.array
    if getattr(original, "_gpucnn_locked", False):
        return
    lock = threading.Lock()

    def array(self, shape, dtype, alignment=None):
        if shape == 0 or alignment is not None:       # dynamic shared memory, or an error
            return original(self, shape, dtype, alignment)
        frame = sys._getframe(1)
        caller = (frame.f_code.co_filename, frame.f_lineno)   # the key the simulator uses
        with lock:
            res = self._allocations.get(caller)
            if res is None:
                if isinstance(dtype, types.Type):
                    dtype = numpy_support.as_dtype(dtype)
                res = np.empty(shape, dtype)
                self._allocations[caller] = res
        return res

    array._gpucnn_locked = True
    kernelapi.FakeCUDAShared.array = array
