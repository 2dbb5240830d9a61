"""Input checks shared by the functional ops: every message names the op and shows what was
expected against what was received."""
from __future__ import annotations

import numpy as np

from gpucnn.autograd import Tensor


def signature(tensors, params):
    """What a call's checks depend on: the shape and dtype of each of ``tensors`` (Tensors or
    None) and ``params`` (None, str, int or tuples of ints); None when anything else is given
    (an array, a list, a bool, a float), so that such a call is checked in full every time."""
    key = []
    for t in tensors:
        if t is None:
            key.append(None)
        elif type(t) is Tensor:
            key += (t.data.shape, t.data.dtype)
        else:
            return None
    for p in params:
        kind = type(p)
        if kind is tuple:
            for v in p:
                if type(v) is not int:
                    return None
        elif kind is not str and kind is not int and p is not None:
            return None
        key.append(p)
    return tuple(key)


def remember(table: dict, key, checked):
    """``checked`` (what a call's checks produced), kept in ``table`` under ``key`` (from
    ``signature``) so that the next call with that key skips the checks."""
    if key is not None and len(table) < 4096:
        table[key] = checked
    return checked


def is_int(v) -> bool:
    """A Python or NumPy integer (not a bool)."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def positive_int(value, op: str, name: str, minimum: int = 1) -> int:
    """``value`` as an int, or a ValueError naming ``op`` and ``name``."""
    if not is_int(value) or value < minimum:
        raise ValueError(f"{op}: {name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def tensor(x, op: str, name: str = "x") -> Tensor:
    """``x`` as a Tensor (arrays and lists become constants)."""
    if isinstance(x, Tensor):
        return x
    if x is None:
        raise TypeError(f"{op}: {name} is None; expected a Tensor or an array")
    return Tensor(x)


def floating(t: Tensor, op: str, name: str = "x") -> None:
    if t.dtype.kind != "f":
        raise TypeError(f"{op}: {name} must be a float32 (or float64) array, got dtype {t.dtype}; "
                        f"convert it first, e.g. x.astype('float32') / 255")


def rank(t: Tensor, n: int, op: str, name: str, layout: str) -> None:
    if t.ndim != n:
        raise ValueError(f"{op}: {name} must have rank {n} {layout}, got shape {t.shape} (rank {t.ndim})")


def image(x, op: str, name: str = "x") -> Tensor:
    """A float ``(N, H, W, C)`` Tensor."""
    t = tensor(x, op, name)
    rank(t, 4, op, name, "(N, H, W, C)")
    floating(t, op, name)
    return t


def same_dtype(a: Tensor, b: Tensor, op: str, an: str, bn: str) -> None:
    if a.dtype != b.dtype:
        raise TypeError(f"{op}: {an} has dtype {a.dtype} but {bn} has dtype {b.dtype}; "
                        "expected both the same")


def bias(b, c_out: int, like: Tensor, op: str):
    if b is None:
        return None
    b = tensor(b, op, "b")
    if b.shape != (c_out,):
        raise ValueError(f"{op}: bias must have shape ({c_out},), got {b.shape}")
    same_dtype(like, b, op, "x", "b")
    return b


def rate(r, op: str) -> float:
    if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 <= float(r) < 1.0:
        raise ValueError(f"{op}: rate must be a number in [0, 1), got {r!r}")
    return float(r)
