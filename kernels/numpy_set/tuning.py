"""Every threshold and override of the NumPy kernel set, in one table.

The kernels read ``TUNING.<name>`` when they run; ``tuning(**changes)`` changes some for the
duration of a ``with`` block (tests force an algorithm or tiny blocks this way, benchmarks
compare settings) and restores them after. How each default was measured is in
``docs/benchmarks.md`` ("The NumPy set's thresholds").
"""
from __future__ import annotations

import contextlib
import threading

#: name -> (default, what it decides). A value of None means "chosen by shape".
FIELDS = {
    # -- im2col convolution (``_im2col``) ------------------------------------------------------
    "col_block_bytes": (256 * 1024, "bytes of one im2col block, sized for a core's L2 cache"),
    "col_min_rows": (256, "fewest rows of an im2col block"),
    "wide_k": (512, "im2col row length from which a layer counts as wide"),
    "wide_min_rows": (512, "fewest rows of an im2col block of a wide layer"),
    "border_min_saving": (0.04, "share of window cells in padding from which a 'same' conv is "
                                "split into border classes that skip the zero padding"),
    "border_many_classes_min_work": (4096, "least KH*KW*C_in*C_out for border classes when "
                                           "there are more than 9 of them"),
    "planar_max_c": (4, "input channels up to which an im2col block is built channel-planar"),
    # -- the kernels' own threads (``_parallel``) ---------------------------------------------
    "min_parallel_flops": (50e6, "work below which a kernel runs on one thread"),
    "min_blas_limit_flops": (1e6, "work below which BLAS's threads are not limited at all"),
    "threaded_block_scale": (4, "block size factor on a thread of a split over threads"),
    # -- input gradient methods -----------------------------------------------------------------
    "row_gather_max_c": (32, "input channels below which the row gather may be used"),
    "row_gather_min_k": (800, "least KH*KW*C_out for the row gather"),
    "scatter_block_bytes": (1 << 20, "bytes of one block of the scatter input gradient"),
    "toeplitz_block_bytes": (2 << 20, "bytes of one block of the row-Toeplitz input gradient"),
    # -- forward alternatives, kept blocks -----------------------------------------------------
    "shift_block_bytes": (1 << 20, "bytes of one block of the shifted-product convolution"),
    "keep_max_bytes": (2 << 20, "largest im2col matrix the forward keeps for the kernel gradient"),
    # -- pooling ------------------------------------------------------------------------------
    "pool_block_bytes": (4 << 20, "bytes of input per block of the pooling kernels"),
    "gemm_pool_max_c": (16, "channels up to which a tiling average pool's columns are a GEMM"),
    # -- overrides ----------------------------------------------------------------------------
    "forward_method": (None, "force the forward/kernel-gradient method: 'im2col' or 'shifted'"),
    "dx_method": (None, "force the input-gradient method: 'scatter', 'gather', 'rowgather' or "
                        "'toeplitz'"),
    "dense": (True, "False: no dense-layer path for kernels that cover the whole input"),
}
METHODS = {"forward_method": (None, "im2col", "shifted"),
           "dx_method": (None, "scatter", "gather", "rowgather", "toeplitz")}


class Tuning:
    """The current values (attributes named as in ``FIELDS``)."""

    __slots__ = tuple(FIELDS)

    def __init__(self):
        for name, (default, _) in FIELDS.items():
            setattr(self, name, default)


TUNING = Tuning()
_lock = threading.Lock()


def _check(name, value):
    if name not in FIELDS:
        raise ValueError(f"numpy_set.tuning: unknown setting {name!r}; expected one of "
                         f"{sorted(FIELDS)}")
    if name in METHODS:
        if value not in METHODS[name]:
            raise ValueError(f"numpy_set.tuning: {name} must be one of {METHODS[name]}, "
                             f"got {value!r}")
        return value
    default = FIELDS[name][0]
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise TypeError(f"numpy_set.tuning: {name} must be True or False, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise TypeError(f"numpy_set.tuning: {name} must be a number >= 0, got {value!r}")
    return type(default)(value) if isinstance(default, float) else value


@contextlib.contextmanager
def tuning(**changes):
    """Change settings of ``FIELDS`` inside the ``with`` block, then restore them::

        with numpy_set.tuning(dx_method="scatter", scatter_block_bytes=1):
            ...
    """
    checked = {name: _check(name, value) for name, value in changes.items()}
    with _lock:
        saved = {name: getattr(TUNING, name) for name in checked}
        for name, value in checked.items():
            setattr(TUNING, name, value)
    try:
        yield TUNING
    finally:
        with _lock:
            for name, value in saved.items():
                setattr(TUNING, name, value)
