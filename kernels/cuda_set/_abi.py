"""Numba's kernel ABI, written by hand for the raw launch path.

Numba lowers a kernel's array argument to a struct of ``meminfo, parent, nitems, itemsize,
data, shape[ndim], strides[ndim]`` and a scalar to its value. The raw path fills a parameter
buffer with these (one 8-byte slot each) and hands it to ``cuLaunchKernel``; the functions here
say what goes in the slots (``flat_param_types``, ``flatten_args``, ``param_format``) and build
the per-kernel packer that writes them (``make_packer``). ``tests/test_compile.py`` compares
them with what Numba's own dispatcher passes, for every kernel.
"""
from __future__ import annotations

import ctypes
import struct
import sys

import numpy as np
from numba import types


def _scalar(ty, v):
    """A Python/NumPy scalar converted to the exact NumPy type of the kernel argument."""
    return np.dtype(str(ty)).type(v)


#: Per scalar kernel type: its PTX parameter type, its slot in the parameter buffer's ``struct``
#: format (8 bytes, a 4-byte value padded) and the ctypes type of that slot (``Bound``'s scalars).
SCALARS = {"int64": ("u64", "q", ctypes.c_int64), "int32": ("u32", "i4x", ctypes.c_int32),
           "uint64": ("u64", "Q", ctypes.c_uint64), "float32": ("f32", "f4x", ctypes.c_float),
           "float64": ("f64", "d", ctypes.c_double)}


def scalar_kind(ty) -> tuple:
    """``SCALARS`` of a scalar kernel argument type."""
    try:
        return SCALARS[str(ty)]
    except KeyError:  # pragma: no cover - the set only uses arrays, these ints and floats
        raise NotImplementedError(f"kernel argument type {ty}") from None


def flat_param_types(argtypes) -> list[str]:
    """The kernel's PTX parameter types ('u64', 'u32', 'f32', 'f64'), as Numba lowers them (the
    module docstring: pointers and int64s for an array, strides in bytes)."""
    out = []
    for ty in argtypes:
        out += ["u64"] * (5 + 2 * ty.ndim) if isinstance(ty, types.Array) else [scalar_kind(ty)[0]]
    return out


def rank_shape(shape, ndim: int) -> tuple:
    """The shape of a C-contiguous array of ``shape`` seen with ``ndim`` axes: its leading axes
    merged into the first (``(N, H, W, C)`` as 2 axes is ``(N*H*W, C)``). Kernels declare the
    rank they index with; launchers pass contiguous arrays of that rank or higher, no reshape."""
    shape = tuple(shape)
    if len(shape) == ndim:
        return shape
    if len(shape) < ndim or ndim < 1:
        raise TypeError(f"kernel argument: an array of shape {shape} cannot be seen with {ndim} "
                        "axes")
    lead = 1
    for d in shape[:len(shape) - ndim + 1]:
        lead *= d
    return (lead,) + shape[len(shape) - ndim + 1:]


def c_strides(shape, itemsize: int) -> tuple:
    """Byte strides of a C-contiguous array of ``shape``."""
    out, step = [], itemsize
    for d in reversed(shape):
        out.append(step)
        step *= d
    return tuple(reversed(out))


_SEEN: dict = {}


def _seen(shape, itemsize, ndim):
    """``(rank_shape(shape, ndim), its C strides)``, remembered per shape (a step meets the same
    few shapes again and again)."""
    key = (shape, itemsize, ndim)
    v = _SEEN.get(key)
    if v is None:
        s = rank_shape(shape, ndim)
        v = (s, c_strides(s, itemsize))
        if len(_SEEN) < 4096:
            _SEEN[key] = v
    return v


def as_declared(ty, a):
    """``a`` reshaped to the rank ``ty`` declares (a view; for the simulator's and Numba's
    launchers, which take arrays as they are)."""
    return a if a.ndim == ty.ndim else a.reshape(rank_shape(a.shape, ty.ndim))


def flatten_args(argtypes, args) -> list:
    """The raw path's argument list: each array expanded to Numba's array struct (an array of
    higher rank than declared is seen with its leading axes merged: ``rank_shape``)."""
    flat = []
    for ty, a in zip(argtypes, args):
        if isinstance(ty, types.Array):
            _check_array("kernel argument", (np.dtype(str(ty.dtype)), ty.ndim), a)
            shape = rank_shape(a.shape, ty.ndim)
            flat += [np.uint64(0), np.uint64(0), np.int64(a.size), np.int64(a.itemsize),
                     np.uint64(_pointer(a))]
            flat += [np.int64(s) for s in (*shape, *c_strides(shape, a.itemsize))]
        else:
            flat.append(_scalar(ty, a))
    return flat


def param_format(argtypes) -> str:
    """The ``struct`` format of the raw path's parameter buffer: one 8-byte slot per flat
    parameter (``flat_param_types``), little-endian."""
    return "<" + "".join("QQqqQ" + "q" * (2 * ty.ndim) if isinstance(ty, types.Array)
                         else scalar_kind(ty)[1] for ty in argtypes)


def _pointer(a) -> int:
    """A device array's address (CuPy); a host NumPy array's for the CPU tests and benchmarks."""
    try:
        return a.data.ptr
    except AttributeError:
        return a.ctypes.data


def _check_array(name, kind, a):
    """TypeError unless ``a`` is a C-contiguous array of the declared dtype and at least the
    declared rank: the kernels index by shape, so a strided view would be read wrongly."""
    dt, nd = kind
    if a.dtype != dt or a.ndim < nd or not a.flags.c_contiguous:
        raise TypeError(f"{name}: expected a C-contiguous {nd}-D {dt} array, got {a.dtype} "
                        f"{a.ndim}-D (C-contiguous: {a.flags.c_contiguous}, strides "
                        f"{a.strides})")


def make_packer(name, argtypes):
    """``pack(args, buf)``: writes the flat parameters of ``args`` into ``buf`` with one
    ``struct.pack_into``, from a function generated once per kernel (unrolled over its
    arguments: no loop, no list, a dtype identity test and a contiguity test per array). A
    slower exact check, which refuses the array with a TypeError, runs only when one fails."""
    lines, items = [], []
    env = {"pack_into": struct.pack_into, "fmt": param_format(argtypes), "check": _check_array,
           "name": name, "seen": _seen, "abi": sys.modules[__name__]}
    names = [f"a{i}" for i in range(len(argtypes))]
    for i, ty in enumerate(argtypes):
        a = names[i]
        if isinstance(ty, types.Array):
            dt, nd = np.dtype(str(ty.dtype)), ty.ndim
            env[f"k{i}"], env[f"d{i}"] = (dt, nd), dt
            lines.append(f"    if {a}.dtype is not d{i} or {a}.ndim < {nd} "
                         f"or not {a}.flags.c_contiguous: check(name, k{i}, {a})")
            lines.append(f"    n{i} = {a}.size")
            if nd == 1:     # seen flat: shape (size,), stride itemsize (rank_shape, c_strides)
                shape = f"n{i}, {dt.itemsize}"
            else:
                lines.append(f"    if {a}.ndim == {nd}:\n        s{i} = {a}.shape\n"
                             f"        t{i} = {a}.strides\n    else:\n"
                             f"        s{i}, t{i} = seen({a}.shape, {dt.itemsize}, {nd})")
                shape = f"*s{i}, *t{i}"
            # the address late-bound (abi._pointer: the CPU benchmark replaces it)
            items.append(f"0, 0, n{i}, {dt.itemsize}, abi._pointer({a}), {shape}")
        else:
            items.append(a)
    src = (f"def pack(args, buf):\n    {', '.join(names)}, = args\n" + "\n".join(lines)
           + f"\n    pack_into(fmt, buf, 0, {', '.join(items)})\n")
    exec(compile(src, f"<gpucnn packer {name}>", "exec"), env)
    return env["pack"]
