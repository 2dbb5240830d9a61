"""The backend switch: which kernel set runs, and which array module holds the data.

``set_backend("auto" | "numpy" | "cuda")`` chooses; ``GPUCNN_BACKEND`` gives the start value (read
once, at import). ``auto`` takes ``cuda`` when CuPy sees an NVIDIA device and Numba's CUDA target
works, otherwise ``numpy``; it never picks Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``),
which runs the CUDA kernels on the CPU only when ``cuda`` is asked for by name. Asking for ``cuda`` where it
cannot run raises ``RuntimeError`` with the reason; it never falls back to the CPU silently.

Everything above this module asks it for ``kernels()`` (the active kernel set) and ``xp()`` (its
array module) and never imports CuPy itself.
"""
from __future__ import annotations

import os
import platform

import numpy as np

from gpucnn import kernels as _kernels
from gpucnn.kernels import _precision, load_set
from gpucnn.kernels._precision import (  # noqa: F401 (the precision setting, re-exported)
    get_float32_matmul_precision, set_float32_matmul_precision)


def names() -> tuple:
    """The backends ``set_backend`` takes: 'auto' and every kernel set."""
    return ("auto",) + _kernels.set_names()


_state = {"name": None, "requested": None, "reason": "", "set": None}


def _probe_cuda():
    """``(ok, reason, info)`` of the cuda set on this machine, as the set's probe says."""
    kset = load_set("cuda")
    if not _kernels.has(kset, "probe"):
        return True, "the cuda set runs wherever it loads", {}
    return kset.probe()


def _probe_simulator() -> bool:
    """Whether the cuda set's kernels run in a simulator on the host (``auto`` never picks it)."""
    return bool(_probe_cuda()[2].get("simulator"))


def set_backend(name: str = "auto") -> str:
    """Select the backend and return the name of the one now active ('numpy' or 'cuda').

    >>> import gpucnn
    >>> gpucnn.set_backend("numpy")
    'numpy'
    """
    if not isinstance(name, str) or name.lower() not in names():
        raise ValueError(f"set_backend: unknown backend {name!r}; expected one of {names()}")
    name = name.lower()
    if name not in ("auto", "cuda"):
        chosen, reason = name, "requested explicitly"
    else:
        ok, why, _ = _probe_cuda()
        if name == "cuda":
            if not ok:
                raise RuntimeError(
                    f"set_backend('cuda'): the CUDA backend cannot run here: {why}. "
                    "Use set_backend('numpy') (or GPUCNN_BACKEND=numpy) to run on the CPU.")
            chosen, reason = "cuda", f"requested explicitly; {why}"
        elif ok and _probe_simulator():
            chosen = "numpy"
            reason = ("auto: only Numba's CUDA simulator is on (no GPU); auto never picks it, "
                      "ask for set_backend('cuda') to run the kernels in it")
        else:
            chosen = "cuda" if ok else "numpy"
            reason = f"auto: {why}" if ok else f"auto: no usable GPU ({why}); using the NumPy kernels"
    kset = load_set(chosen)
    _state.update(name=chosen, requested=name, reason=reason, set=kset)
    return chosen


def _ensure():
    if _state["set"] is None:
        start = os.environ.get("GPUCNN_BACKEND", "auto") or "auto"
        try:
            set_backend(start)
        except ValueError:
            raise ValueError(
                f"GPUCNN_BACKEND={start!r} is not a backend; expected one of {names()}") from None
    return _state["set"]


def get_backend() -> str:
    """The name of the active backend: 'numpy' or 'cuda'."""
    _ensure()
    return _state["name"]


def kernels():
    """The active kernel set (a module implementing ``gpucnn.kernels.CONTRACT``)."""
    s = _state["set"]
    return s if s is not None else _ensure()


def xp():
    """The array module of the active backend (NumPy, or CuPy on a GPU)."""
    return kernels().xp


def has(capability: str) -> bool:
    """Whether the active kernel set offers ``capability`` (see ``gpucnn.kernels.OPTIONAL``)."""
    return _kernels.has(kernels(), capability)


def backend_info() -> dict:
    """What was chosen and why, with device name and library versions."""
    _ensure()
    import numba

    info = {
        "backend": _state["name"],
        "requested": _state["requested"],
        "reason": _state["reason"],
        "numpy": np.__version__,
        "numba": numba.__version__,
        "python": platform.python_version(),
        "device": platform.processor() or platform.machine(),
    }
    ok, why, cuda = _probe_cuda()
    info["cuda_available"] = ok
    info["cuda_reason"] = why
    kset = _state["set"]
    if _state["name"] == "cuda":
        info["device"] = cuda.get("device", "?")
    if _kernels.has(kset, "launches"):
        cuda["launch_path"] = kset.launch_path()
        # kernels that could not be loaded through CuPy and run through Numba's launcher
        cuda["fell_back"] = dict(kset.fell_back())
    info["cuda"] = cuda
    info.update(_precision.describe())   # float32_matmul_precision, tf32, float32_conv
    return info
