"""The number check of the optimizers' and schedules' arguments, and the class lookup of their
files."""
from __future__ import annotations

import math
import numbers


def number(v, name, owner, lo=0.0, hi=math.inf, lo_open=False, hi_open=False):
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or math.isnan(v):
        raise TypeError(f"{owner}: {name} must be a number, got {v!r}")
    v = float(v)
    if v < lo or v > hi or (lo_open and v == lo) or (hi_open and v == hi):
        lb, rb = "(" if lo_open else "[", ")" if hi_open else "]"
        raise ValueError(f"{owner}: {name} must lie in {lb}{lo}, {hi}{rb}, got {v!r}")
    return v


def class_of(d, what, kind, known, custom_objects):
    """The class a ``{'class_name': ..., 'config': ...}`` dict names, from ``custom_objects``
    first, then from ``known``; a clear error for anything else."""
    if not isinstance(d, dict) or "class_name" not in d:
        raise TypeError(f"{what} must be given as {{'class_name': ..., 'config': ...}}, "
                        f"got {d!r}")
    name = d["class_name"]
    cls = (custom_objects or {}).get(name) or known.get(name)
    if cls is None:
        raise ValueError(f"unknown {kind} {name!r}; expected one of {sorted(known)} or a "
                         "class given in custom_objects")
    return cls
