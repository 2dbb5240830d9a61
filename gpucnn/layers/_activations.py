"""Resolving a layer's ``activation`` argument: a Keras name or a callable on Tensors.

``relu``, ``tanh`` and ``sigmoid`` run fused in the conv/dense kernels' epilogue; ``softmax`` and
``log_softmax`` (over the last axis) and any callable run after.
"""
from __future__ import annotations

import gpucnn.functional as F

FUSED = ("relu", "tanh", "sigmoid")
_AFTER = {
    "softmax": lambda y: F.softmax(y, axis=-1),
    "log_softmax": lambda y: F.log_softmax(y, axis=-1),
}
_BY_FUNCTION = {F.relu: "relu", F.tanh: "tanh", F.sigmoid: "sigmoid", F.softmax: "softmax",
                F.log_softmax: "log_softmax"}
NAMES = ("linear", *FUSED, *_AFTER)


class Act:
    """``name``; ``fused`` (a kernel epilogue name or None); ``after`` (a callable or None)."""

    __slots__ = ("name", "fused", "after")

    def __init__(self, name, fused=None, after=None):
        self.name, self.fused, self.after = name, fused, after

    def apply(self, y):
        """The activation applied on its own to a pre-activation Tensor ``y``."""
        if self.fused is not None:
            return getattr(F, self.fused)(y)
        return self.after(y) if self.after is not None else y


def get(activation, owner: str) -> Act:
    if activation is None:
        return Act("linear")
    if isinstance(activation, str):
        key = activation.lower()
        if key == "linear":
            return Act("linear")
        if key in FUSED:
            return Act(key, fused=key)
        if key in _AFTER:
            return Act(key, after=_AFTER[key])
        raise ValueError(f"{owner}: unknown activation {activation!r}; expected one of {NAMES}, "
                         "None, or a callable on Tensors")
    if callable(activation):
        name = _BY_FUNCTION.get(activation)
        if name is not None:
            return get(name, owner)
        return Act(getattr(activation, "__name__", "custom"), after=activation)
    raise TypeError(f"{owner}: activation must be a name, None or a callable, got {activation!r}")
