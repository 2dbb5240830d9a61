"""The one place where the optional GPU libraries are imported.

Importing this module never fails: each import is tried, and ``_probe.probe()`` says whether the
``cuda`` backend can run here and, if not, which part is missing. This module imports nothing of
the set.

- ``SIMULATOR``: Numba's CUDA simulator is on (``NUMBA_ENABLE_CUDASIM=1``); kernels run on the CPU
  over NumPy arrays, and CuPy is not used.
- ``cp``: the CuPy module, or None.
- ``numba_cuda``: ``numba.cuda``, or None.
"""
from __future__ import annotations

import os

import numpy as np

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


def _import_cuda_array_support():
    """numba-cuda 0.30 and older register an overload of ``np.row_stack``, which NumPy 2.5
    removed: importing numba-cuda's array module (done at the first kernel compile) then raises
    ``AttributeError: module 'numpy' has no attribute 'row_stack'`` (seen on an H200 machine with
    numba-cuda 0.30.4 and NumPy 2.5.2). Import that module once here with the alias present, then
    remove the alias again, so that NumPy stays as the user has it."""
    if hasattr(np, "row_stack"):
        return
    np.row_stack = np.vstack
    try:
        from numba.cuda.np import arraymath, arrayobj  # noqa: F401
    except Exception:  # noqa: BLE001 - another numba-cuda layout: nothing to work around
        pass
    finally:
        del np.row_stack


try:
    from numba import cuda as numba_cuda
    _numba_error = None
    if not SIMULATOR:
        _import_cuda_array_support()
except Exception as e:  # pragma: no cover - numba is a hard dependency
    numba_cuda = None
    _numba_error = f"{type(e).__name__}: {e}"

cp = None
_cupy_error = None
if not SIMULATOR:
    try:
        import cupy as cp  # noqa: F811
    except Exception as e:
        _cupy_error = f"{type(e).__name__}: {e}"


def scatter_add(a, index, values) -> None:
    """``a[index] += values`` in place, repeated indices adding up (the ``scatter_add``
    capability): CuPy's ``cupyx.scatter_add`` on a GPU, NumPy's ``add.at`` on the simulator's
    arrays."""
    if cp is not None and isinstance(a, cp.ndarray):
        import cupyx

        cupyx.scatter_add(a, index, values)
    else:
        np.add.at(a, index, values)
