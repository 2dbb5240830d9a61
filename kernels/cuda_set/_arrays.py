"""Arrays of the cuda set: the array module, conversions, outputs, dtypes and grid sizes.

On a GPU the set's arrays are CuPy arrays; in Numba's simulator (and where CuPy is missing, so
that the set can still be imported to compile PTX) they are NumPy arrays.
"""
from __future__ import annotations

import functools

import numpy as np
from numba import types

from ._runtime import SIMULATOR, cp

#: The array module outputs live in (see the module docstring).
xp = cp if (cp is not None and not SIMULATOR) else np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

NB_FLOAT = {np.dtype(np.float32): types.float32, np.dtype(np.float64): types.float64}

_DT_NAMES = {dt: dt.name for dt in FLOAT_DTYPES}


def dtname(dt) -> str:
    """``dt.name`` of a float dtype, without NumPy's (Python-level, slow) name property: the
    launchers call it once a launch to pick a kernel variant."""
    return _DT_NAMES.get(dt) or np.dtype(dt).name


#: Grid-stride kernels (elementwise, pooling) launch at most this many blocks and let each
#: thread loop; about 30 blocks per SM of a 132-SM GPU. Tests lower it for the simulator, which
#: runs one Python thread per CUDA thread.
MAX_BLOCKS = 4096


def cdiv(a: int, b: int) -> int:
    """Ceiling division, for grid sizes (ints)."""
    return -(-a // b)


def asarray(a, dtype=None):
    """An array of this set (``a`` itself when it already is one with that dtype)."""
    if isinstance(a, xp.ndarray) and (dtype is None or a.dtype == np.dtype(dtype)):
        return a
    if xp is np:
        if cp is not None and isinstance(a, cp.ndarray):  # pragma: no cover - GPU only
            a = cp.asnumpy(a)
        return np.asarray(a, dtype=dtype)
    return cp.asarray(a, dtype=dtype)


_F32, _F64 = FLOAT_DTYPES


def float_dtype(op: str, a) -> np.dtype:
    """The dtype of a floating input; TypeError for anything but float32/float64."""
    dt = getattr(a, "dtype", None)
    if dt is _F32 or dt is _F64:
        return dt
    dt = np.dtype(np.float64 if dt is None else dt)
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"{op}: the cuda kernels take float32 or float64 arrays, got {dt}")
    return dt


def contig(a, dtype=None):
    """A C-contiguous array of this set with ``dtype`` (a copy only when needed)."""
    if type(a) is xp.ndarray and (dtype is None or a.dtype is dtype) and a.flags.c_contiguous:
        return a
    a = asarray(a)
    if dtype is not None and a.dtype != dtype:
        a = a.astype(dtype)
    return xp.ascontiguousarray(a)


#: Tests set this to prefill every output with NaN (float) or a negative sentinel (int), so that
#: an element a kernel forgets to write cannot pass as a value.
POISON = False


def empty(shape, dtype):
    """Allocate an output of this set (every launcher allocates through here)."""
    a = xp.empty(shape, dtype=dtype)
    if POISON:
        a.fill(np.nan if np.dtype(dtype).kind == "f" else -7)
    return a


@functools.lru_cache(maxsize=None)
def _sm_count(device: int) -> int:
    return int(cp.cuda.Device(device).attributes["MultiProcessorCount"])


def sm_count() -> int:
    """Streaming multiprocessors of the current device (132, an H100/H200, off a GPU)."""
    if xp is np:
        return 132
    return _sm_count(cp.cuda.runtime.getDevice())


_dummies: dict = {}     # (dtype as given, ndim, device) -> the array (the launchers' hot path)
_dummies_by_str: dict = {}   # (dtype.str, ndim, device) -> the array, one per real dtype


def dummy(dtype, ndim: int = 1):
    """A one-element array of ``dtype`` and rank ``ndim`` standing for an absent optional
    argument (no bias, no momentum slot); allocated once per dtype, rank and device, never read
    by the kernels. A repeated call is one dict look-up keyed on the dtype as given (a dtype
    object or a name: each spelling gets its own entry for the same array)."""
    dev = cp.cuda.runtime.getDevice() if xp is not np else -1
    key = (dtype, ndim, dev)
    try:
        return _dummies[key]
    except (KeyError, TypeError):
        pass
    canon = (np.dtype(dtype).str, ndim, dev)
    a = _dummies_by_str.get(canon)
    if a is None:
        a = _dummies_by_str[canon] = xp.zeros((1,) * ndim, dtype=dtype)
    try:
        if len(_dummies) < 256:
            _dummies[key] = a
    except TypeError:       # an unhashable dtype spelling: only the canonical entry
        pass
    return a


def check_rank(op: str, name: str, a, ndim: int, layout: str):
    if a.ndim != ndim:
        raise ValueError(f"{op}: {name} must be {ndim}-D {layout}, got shape {tuple(a.shape)}")
