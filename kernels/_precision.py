"""The float32 matrix-multiply precision: exact float32 by default, TF32 tensor cores on request.

The setting follows the frameworks a user of gpucnn knows:

- ``set_float32_matmul_precision("highest")`` (the default): exact float32, as PyTorch's
  ``torch.set_float32_matmul_precision("highest")`` / ``torch.backends.cuda.matmul.allow_tf32 =
  False`` and TensorFlow's ``tf.config.experimental.enable_tensor_float_32_execution(False)``.
- ``set_float32_matmul_precision("high")``: TF32 tensor cores, as PyTorch's ``"high"`` /
  ``allow_tf32 = True`` and TensorFlow's ``enable_tensor_float_32_execution(True)`` (also
  spelled so here).

``"medium"`` is accepted as in PyTorch (it allows bfloat16 there); gpucnn has no bfloat16
kernels yet and runs TF32 for it. Only the cuda kernel set on a GPU (and its simulator) acts
on the setting, and only for float32 convolutions (with the dense layers small enough to run
as 1x1 convolutions, ``gpucnn.functional.dense.CONV_MAX_MACS``; larger ones stay on CuPy's
matmul, exact float32); the NumPy set always computes in float32 / float64 with BLAS. float64
is never affected.

What TF32 costs in accuracy: each operand is rounded to 10 explicit mantissa bits (relative
error ``u = 2**-11``), products are exact and accumulated in float32. An output reducing ``K``
products then satisfies ``|out - exact| <= (2 u + u**2 + K * 2**-24) * sum_k |a_k| |b_k|``
(about ``1e-3`` of ``sum |a||b|`` when K is small; against float32's ``K * 2**-24`` alone).
Training converges as with float32 in the frameworks' experience; results differ in the third or
fourth significant digit, so exact float32 stays the default.

``GPUCNN_FLOAT32_MATMUL_PRECISION`` sets the start value (read once, at import).
"""
from __future__ import annotations

import contextlib
import os
import threading

PRECISIONS = ("highest", "high", "medium")
_lock = threading.Lock()


def _check(precision, op: str) -> str:
    p = precision.strip().lower() if isinstance(precision, str) else precision
    if p not in PRECISIONS:
        raise ValueError(f"{op}: precision must be one of {PRECISIONS}, got {precision!r}")
    return p


_state = {"precision": _check(os.environ.get("GPUCNN_FLOAT32_MATMUL_PRECISION") or "highest",
                              "GPUCNN_FLOAT32_MATMUL_PRECISION")}


def get_float32_matmul_precision() -> str:
    """``"highest"`` (exact float32, the default), ``"high"`` or ``"medium"`` (TF32)."""
    return _state["precision"]


def set_float32_matmul_precision(precision: str) -> str:
    """Set the precision of float32 convolutions (and matrix products) on the cuda kernel set:
    ``"highest"`` exact float32; ``"high"`` or ``"medium"`` TF32 tensor cores (see the module
    docstring for the error bound). Returns the previous value. Process-wide, like PyTorch's.

    >>> from gpucnn.kernels import _precision as p
    >>> old = p.set_float32_matmul_precision("high"); p.allow_tf32()
    True
    >>> _ = p.set_float32_matmul_precision(old)
    """
    p = _check(precision, "set_float32_matmul_precision")
    with _lock:
        old, _state["precision"] = _state["precision"], p
    return old


def allow_tf32() -> bool:
    """Whether float32 convolutions may use TF32 tensor cores (PyTorch's ``allow_tf32``)."""
    return _state["precision"] != "highest"


def enable_tensor_float_32_execution(enabled: bool) -> None:
    """TensorFlow's spelling: True is ``"high"``, False ``"highest"``."""
    set_float32_matmul_precision("high" if enabled else "highest")


def tensor_float_32_execution_enabled() -> bool:
    """TensorFlow's spelling of ``allow_tf32()``."""
    return allow_tf32()


@contextlib.contextmanager
def float32_matmul_precision(precision: str):
    """The precision inside a ``with`` block, the previous one after it."""
    old = set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        set_float32_matmul_precision(old)


def describe() -> dict:
    """For reports (``backend_info()``): the setting and what it does."""
    p = _state["precision"]
    return {"float32_matmul_precision": p,
            "tf32": allow_tf32(),
            "float32_conv": ("TF32 tensor cores (operands rounded to 10 mantissa bits)"
                             if allow_tf32() else "exact float32")}
