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

def _import_cuda_array_support():
    """numba-cuda 0.30 and older register an overload of ``np.row_stack``, which NumPy 2.5
    removed: importing numba-cuda's array module (done at the first kernel compile) then raises
    ``AttributeError: module 'numpy' has no attribute 'row_stack'`` (seen on an H200 machine with
    numba-cuda 0.30.4 and NumPy 2.5.2). Import that module once here with the alias present, then
    remove the alias again, so that NumPy stays as the user has it."""
    import numpy as np

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
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") in ("", "0"):
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


_verdict: dict = {}


def nvvm_location() -> str:
    """Where numba-cuda finds NVVM (libnvvm), or why it cannot."""
    try:
        from numba.cuda import cuda_paths

        found = cuda_paths.get_cuda_paths().get("nvvm")
        path = getattr(found, "info", None)
        return f"{path} (by {found.by})" if path else "not found"
    except Exception as e:  # noqa: BLE001 - only reported
        return f"not found ({type(e).__name__}: {e})"


def _fix_for(error: str) -> str:
    low = error.lower()
    if "nvvm" in low or "libdevice" in low:
        return ("Numba's CUDA compiler (NVVM) is missing: install the extra of your CUDA version, "
                "`pip install -e '.[cuda12]'` or `pip install -e '.[cuda13]'` in the gpucnn "
                "checkout (`'gpucnn[cuda12]'` / `'gpucnn[cuda13]'` when installing gpucnn by "
                "name), or point CUDA_HOME at a CUDA toolkit; or fill the kernel cache on a machine that has NVVM "
                "(`python -m gpucnn.cache fill --cc X.Y`) and copy it into GPUCNN_CACHE_DIR here")
    if "nvjitlink" in low or "linker" in low:
        return ("the CUDA linker (nvJitLink or the driver's) failed: update the NVIDIA driver or "
                "install nvidia-nvjitlink for your CUDA version")
    if "driver" in low or "cuda_error" in low or "cudaerror" in low:
        return "the NVIDIA driver refused the kernel: update the driver (`nvidia-smi` shows it)"
    return "see the error above; `python -m gpucnn.gpucheck` checks the whole chain"


def _prove_chain(info: dict) -> tuple[bool, str]:
    """Compile (or load from the kernel cache) one real kernel, launch it through the launch
    path this process uses, read the result back and check it."""
    import numpy as np

    from . import _launch
    from .activation import act_forward

    x = np.array([-3.0, -0.5, 0.0, 0.25, 2.0], np.float32)
    try:
        got = cp.asnumpy(act_forward(cp.asarray(x), "tanh"))
    except Exception as e:  # noqa: BLE001 - the verdict carries the reason
        import traceback

        info["probe_traceback"] = traceback.format_exc()[-4000:]
        err = f"{type(e).__name__}: {e}".strip()
        return False, (f"compiling or launching a kernel failed ({err[:400]}); "
                       f"{_fix_for(err)}")
    if not np.allclose(got, np.tanh(x), rtol=1e-6, atol=1e-7):
        return False, (f"a test kernel ran but returned wrong numbers ({got.tolist()} for "
                       f"tanh({x.tolist()})): the driver or the compiler is broken")
    info["launch_path"] = _launch.launch_path()
    return True, ""


def probe() -> tuple[bool, str, dict]:
    """``(ok, reason, info)`` for the cuda backend on this machine. On a GPU the whole chain is
    proven once per process (a kernel compiled or loaded from the cache, launched, read back);
    the verdict is cached."""
    if "result" in _verdict:
        ok, why, info = _verdict["result"]
        return ok, why, dict(info)
    result = _probe()
    _verdict["result"] = result
    return result[0], result[1], dict(result[2])


def _probe() -> tuple[bool, str, dict]:
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
                       f"({_cupy_error}); install it with `pip install -e '.[cuda12]'` in the "
                       "gpucnn checkout, or `'.[cuda13]'` for a CUDA 13 driver (`'gpucnn[cuda12]'`"
                       " / `'gpucnn[cuda13]'` when installing gpucnn by name)"), info
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
    info["nvvm"] = nvvm_location()
    from . import _cache

    info["kernel_cache"] = str(_cache.cache_dir())
    try:
        if not numba_cuda.is_available():
            return False, ("Numba's CUDA target is not available (driver too old or libcuda not "
                           "found; `numba -s` shows why)"), info
    except Exception as e:
        return False, f"Numba's CUDA target failed ({type(e).__name__}: {e})", info
    ok, why = _prove_chain(info)
    if not ok:
        return False, why, info
    info["array_module"] = "cupy"
    return True, f"NVIDIA device found: {info['device']} (a test kernel ran)", info


def device_cc() -> tuple[int, int]:
    """The compute capability of this process's current GPU; a RuntimeError saying why there is
    none (the ``compile_cache`` capability)."""
    if SIMULATOR or cp is None:
        raise RuntimeError("no GPU to read the compute capability from here "
                           f"({_cupy_error or 'simulator on'})")
    from ._launch import device_cc as current

    return current()


def scatter_add(a, index, values) -> None:
    """``a[index] += values`` in place, repeated indices adding up (the ``scatter_add``
    capability): CuPy's ``cupyx.scatter_add`` on a GPU, NumPy's ``add.at`` on the simulator's
    arrays."""
    if cp is not None and isinstance(a, cp.ndarray):
        import cupyx

        cupyx.scatter_add(a, index, values)
    else:
        import numpy as np

        np.add.at(a, index, values)
