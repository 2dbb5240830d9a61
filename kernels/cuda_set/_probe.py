"""Whether the cuda set can run on this machine (its ``probe`` capability).

On a GPU the whole chain is proven once per process: one real kernel compiled (or loaded from
the kernel cache), launched through the launch path this process uses, read back and checked.
Without one, the verdict names the missing part and the fix.
"""
from __future__ import annotations

import numpy as np

from . import _cache, _launch, _runtime, activation

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
    """The chain of the module docstring, proven with the tanh kernel."""
    x = np.array([-3.0, -0.5, 0.0, 0.25, 2.0], np.float32)
    try:
        got = _runtime.cp.asnumpy(activation.act_forward(_runtime.cp.asarray(x), "tanh"))
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
    """``(ok, reason, info)`` for the cuda backend on this machine (the verdict of the module
    docstring, cached)."""
    if "result" not in _verdict:
        _verdict["result"] = _probe()
    ok, why, info = _verdict["result"]
    return ok, why, dict(info)


def _probe() -> tuple[bool, str, dict]:
    import numba

    info = {"numba": numba.__version__, "simulator": _runtime.SIMULATOR}
    if _runtime.numba_cuda is None:
        return False, f"numba.cuda cannot be imported ({_runtime._numba_error})", info
    if _runtime.SIMULATOR:
        info["device"] = "Numba CUDA simulator (CPU)"
        info["array_module"] = "numpy"
        return True, "NUMBA_ENABLE_CUDASIM=1: kernels run in Numba's CUDA simulator on NumPy arrays", info
    if _runtime.cp is None:
        return False, ("CuPy is not installed or failed to import "
                       f"({_runtime._cupy_error}); install it with `pip install -e '.[cuda12]'` in the "
                       "gpucnn checkout, or `'.[cuda13]'` for a CUDA 13 driver (`'gpucnn[cuda12]'`"
                       " / `'gpucnn[cuda13]'` when installing gpucnn by name)"), info
    info["cupy"] = _runtime.cp.__version__
    try:
        n = _runtime.cp.cuda.runtime.getDeviceCount()
    except Exception as e:
        return False, f"CuPy sees no usable NVIDIA device or driver ({type(e).__name__}: {e})", info
    if n < 1:
        return False, "CuPy sees no NVIDIA device (cudaGetDeviceCount() == 0)", info
    try:
        info["cuda_runtime"] = _runtime.cp.cuda.runtime.runtimeGetVersion()
        info["cuda_driver"] = _runtime.cp.cuda.runtime.driverGetVersion()
        props = _runtime.cp.cuda.runtime.getDeviceProperties(_runtime.cp.cuda.Device().id)
        name = props["name"]
        info["device"] = name.decode() if isinstance(name, bytes) else str(name)
        info["compute_capability"] = f"{props['major']}.{props['minor']}"
    except Exception as e:
        return False, f"CuPy cannot query the device ({type(e).__name__}: {e})", info
    info["nvvm"] = nvvm_location()
    info["kernel_cache"] = str(_cache.cache_dir())
    try:
        if not _runtime.numba_cuda.is_available():
            return False, ("Numba's CUDA target is not available (driver too old or libcuda not "
                           "found; `numba -s` shows why)"), info
    except Exception as e:
        return False, f"Numba's CUDA target failed ({type(e).__name__}: {e})", info
    ok, why = _prove_chain(info)
    if not ok:
        return False, why, info
    info["array_module"] = "cupy"
    return True, f"NVIDIA device found: {info['device']} (a test kernel ran)", info
