"""The one place where the optional GPU libraries are imported.

Importing this module never fails: each import is tried, and ``probe()`` says whether the
``cuda`` backend can run here and, if not, which part is missing.

- ``SIMULATOR``: Numba's CUDA simulator is on (``NUMBA_ENABLE_CUDASIM=1``); kernels run on the CPU
  over NumPy arrays, and CuPy is not used.
- ``cp``: the CuPy module, or None.
- ``numba_cuda``: ``numba.cuda``, or None.
"""
from __future__ import annotations

import os

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")

try:
    from numba import cuda as numba_cuda
    _numba_error = None
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


def probe() -> tuple[bool, str, dict]:
    """``(ok, reason, info)`` for the cuda backend on this machine."""
    import numba

    info = {"numba": numba.__version__, "simulator": SIMULATOR}
    try:
        import numba_cuda as _nc

        info["numba_cuda"] = getattr(_nc, "__version__", "?")
    except Exception:
        pass
    if numba_cuda is None:
        return False, f"numba.cuda cannot be imported ({_numba_error})", info
    if SIMULATOR:
        info["device"] = "Numba CUDA simulator (CPU)"
        info["array_module"] = "numpy"
        return True, "NUMBA_ENABLE_CUDASIM=1: kernels run in Numba's CUDA simulator on NumPy arrays", info
    if cp is None:
        return False, ("CuPy is not installed or failed to import "
                       f"({_cupy_error}); install it with `pip install 'gpucnn[cuda]'`"), info
    info["cupy"] = cp.__version__
    try:
        n = cp.cuda.runtime.getDeviceCount()
    except Exception as e:
        return False, f"CuPy sees no usable NVIDIA device or driver ({type(e).__name__}: {e})", info
    if n < 1:
        return False, "CuPy sees no NVIDIA device (cudaGetDeviceCount() == 0)", info
    try:
        info["cuda_runtime"] = cp.cuda.runtime.runtimeGetVersion()
        info["cuda_driver"] = cp.cuda.runtime.driverGetVersion()
        props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
        name = props["name"]
        info["device"] = name.decode() if isinstance(name, bytes) else str(name)
        info["compute_capability"] = f"{props['major']}.{props['minor']}"
    except Exception as e:
        return False, f"CuPy cannot query the device ({type(e).__name__}: {e})", info
    try:
        if not numba_cuda.is_available():
            return False, ("Numba's CUDA target is not available (driver too old or libcuda not "
                           "found; `numba -s` shows why)"), info
    except Exception as e:
        return False, f"Numba's CUDA target failed ({type(e).__name__}: {e})", info
    info["array_module"] = "cupy"
    return True, f"NVIDIA device found: {info['device']}", info
