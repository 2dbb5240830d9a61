"""``Tensor`` and a minimal define-by-run reverse-mode autograd.

A ``Tensor`` wraps an array of the active backend (a NumPy array, or a CuPy array on a GPU). Every
differentiable op is a ``Function`` subclass with a ``forward`` on arrays and a ``backward`` that
maps the output gradient to one gradient per input; ``Function.apply`` runs the forward and, when a
gradient is needed and recording is on, links the output to its inputs. ``Tensor.backward`` runs
the ops of that graph once, latest first, accumulates into the ``.grad`` of the leaves, and
frees the graph as it goes.

>>> import gpucnn
>>> x = gpucnn.Tensor([1.0, 2.0, 3.0], requires_grad=True)
>>> (x * x).sum().backward()
>>> x.grad.numpy()
array([2., 4., 6.], dtype=float32)
"""
from __future__ import annotations

import heapq
import itertools
import threading

import numpy as np

from gpucnn import backend


class _GradMode(threading.local):
    enabled = True          # each thread starts recording; no_grad sets its own copy


_grad_mode = _GradMode()
_seq = itertools.count()    # recorded ops are numbered in the order they run


def is_grad_enabled() -> bool:
    """Whether tensor operations are recorded for ``backward`` now (False inside ``no_grad``)."""
    return _grad_mode.enabled


class no_grad:
    """Context manager (and decorator) under which no graph is recorded."""

    def __enter__(self):
        self._prev = is_grad_enabled()
        _grad_mode.enabled = False

    def __exit__(self, *exc):
        _grad_mode.enabled = self._prev
        return False

    def __call__(self, fn):
        def wrapper(*a, **k):
            with no_grad():
                return fn(*a, **k)

        wrapper.__name__ = fn.__name__
        wrapper.__doc__ = fn.__doc__
        return wrapper


def _to_array(data, dtype=None):
    """An array of the active backend from ``data`` (float32 unless a float64 array is given)."""
    ks = backend.kernels()
    if isinstance(data, Tensor):
        data = data.data
    if dtype is not None:
        return ks.asarray(data).astype(dtype, copy=False)
    if isinstance(data, (list, tuple, int, float, np.number)) or isinstance(data, bool):
        return ks.asarray(np.asarray(data, dtype=np.float32))
    arr = ks.asarray(data)
    if arr.dtype.kind == "f" and arr.dtype.itemsize < 4:
        arr = arr.astype(np.float32)
    return arr


class Tensor:
    """An array with an optional gradient.

    ``Tensor(data, requires_grad=False, dtype=None)``: ``data`` is an array or nested list; lists and
    Python numbers become float32, float arrays keep float32/float64, integer arrays stay integer
    (labels). On the ``cuda`` backend host data is copied to the device once, here.
    """

    __slots__ = ("data", "grad", "requires_grad", "_ctx", "name", "__weakref__")
    __array_priority__ = 1000  # numpy scalars and arrays defer to Tensor's operators

    def __init__(self, data, requires_grad: bool = False, dtype=None, name: str | None = None):
        self.data = _to_array(data, dtype)
        if requires_grad and self.data.dtype.kind != "f":
            raise TypeError(
                f"Tensor: only floating tensors can require gradients, got dtype {self.data.dtype}")
        self.requires_grad = bool(requires_grad)
        self.grad = None
        self._ctx = None
        self.name = name

    @classmethod
    def _wrap(cls, data, requires_grad=False):
        t = cls.__new__(cls)
        t.data = data
        t.requires_grad = requires_grad
        t.grad = None
        t._ctx = None
        t.name = None
        return t

    # -- array-like properties ---------------------------------------------------------------
    @property
    def shape(self) -> tuple:
        """The shape of the data, a tuple of ints."""
        return tuple(self.data.shape)

    @property
    def dtype(self):
        """The dtype of the data (float32 unless created from float64)."""
        return self.data.dtype

    @property
    def ndim(self) -> int:
        """The number of axes."""
        return self.data.ndim

    @property
    def size(self) -> int:
        """The number of elements."""
        return int(self.data.size)

    def __len__(self):
        return self.data.shape[0]

    def numpy(self) -> np.ndarray:
        """The data as a host NumPy array (a copy from the GPU; the array itself on the CPU)."""
        return backend.kernels().to_host(self.data)

    def item(self) -> float:
        """The value of a one-element tensor as a Python number (read back to the host)."""
        return self.numpy().item()

    def __float__(self):
        return float(self.item())

    def detach(self) -> "Tensor":
        """The same data, cut from the graph."""
        return Tensor._wrap(self.data, False)

    def zero_grad(self) -> None:
        """Forget the accumulated gradient: ``.grad`` becomes None."""
        self.grad = None

    @property
    def is_leaf(self) -> bool:
        """True for a tensor no recorded op produced (an input or a weight)."""
        return self._ctx is None

    def __repr__(self):
        extra = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor({np.array2string(self.numpy(), precision=4, threshold=20)}, dtype={self.dtype}{extra})"

    # -- backward ----------------------------------------------------------------------------
    def backward(self, grad=None) -> None:
        """Accumulate d(self)/d(leaf) into every leaf's ``.grad`` and free the graph.

        ``grad`` defaults to 1 for a one-element tensor and is required otherwise.
        """
        if not self.requires_grad:
            raise RuntimeError("backward: this tensor does not require grad (no graph was recorded "
                               "to it: are its inputs requires_grad=False, or was it made under no_grad?)")
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(f"backward: an implicit gradient needs a one-element tensor, "
                                   f"got shape {self.shape}; pass backward(grad) explicitly")
            g = backend.xp().ones(self.data.shape, dtype=self.data.dtype)
        else:
            g = grad.data if isinstance(grad, Tensor) else _to_array(grad, self.data.dtype)
            if tuple(g.shape) != self.shape:
                raise ValueError(f"backward: gradient shape {tuple(g.shape)} does not match the "
                                 f"tensor's shape {self.shape}")
        _run_backward(self, g)

    # the arithmetic operators (+, *, @, sum, reshape, ...) are attached by gpucnn/__init__.py
    # from gpucnn._math, which defines them as Functions on top of this engine


def _send(t: Tensor, g, heap, leaves) -> None:
    """Add ``g`` to the gradient ``t`` receives: a leaf's into ``leaves[id(t)] = [t, sum]``; an op
    output's onto its op (``ctx._grad_out``), which goes on the heap at its first gradient."""
    ctx = t._ctx
    if ctx is None:
        entry = leaves.get(id(t))
        if entry is None:
            leaves[id(t)] = [t, g]
        else:
            entry[1] = entry[1] + g
        return
    if ctx.parents is None:
        raise RuntimeError(
            "backward: the graph through this tensor was already freed by an earlier "
            "backward(); recompute the forward pass to differentiate again")
    prev = ctx._grad_out
    if prev is None:
        ctx._grad_out = g
        heapq.heappush(heap, (-ctx._order, ctx))
    else:
        ctx._grad_out = prev + g


def _run_backward(root: Tensor, g, sink=None) -> None:
    """Backpropagate ``g`` from ``root``. Leaf gradients accumulate into ``.grad``, or, when
    ``sink`` (a dict) is given, into ``sink[id(leaf)] = [leaf, array]`` and no ``.grad`` is
    touched (so that several threads can each backpropagate a part of a batch).

    The ops run latest first (their recording number, ``_order``): every consumer of a tensor was
    recorded after the op that made it, so each op has its whole output gradient when it runs."""
    leaves = {} if sink is None else sink
    heap = []
    pop = heapq.heappop
    _send(root, g, heap, leaves)
    while heap:
        ctx = pop(heap)[1]
        pgrads = ctx.backward(ctx._grad_out)
        if not isinstance(pgrads, tuple):
            pgrads = (pgrads,)
        for p, pg in zip(ctx.parents, pgrads):
            if pg is None or not p.requires_grad:
                continue
            if pg.shape != p.data.shape:
                raise RuntimeError(f"{type(ctx).__name__}.backward returned a gradient of shape "
                                   f"{tuple(pg.shape)} for an input of shape {p.shape}")
            _send(p, pg, heap, leaves)
        ctx.release()  # free the graph: saved arrays and inputs go
        ctx.parents = None  # marks the node as freed
    if sink is None:
        for t, g in leaves.values():
            if t.grad is None:
                t.grad = Tensor._wrap(g)
            else:
                t.grad.data = t.grad.data + g


class Function:
    """One differentiable op: ``forward`` on arrays, ``backward`` from the output gradient.

    Subclasses keep what backward needs on ``self`` (save only that). ``backward`` returns one
    gradient per tensor input (``None`` where there is none).
    """

    parents = ()
    _grad_out = None    # the output's gradient, summed while backward runs

    def forward(self, *arrays):  # pragma: no cover - abstract
        """The output array from the input arrays; keep on ``self`` what ``backward`` needs."""
        raise NotImplementedError

    def backward(self, g):  # pragma: no cover - abstract
        """One gradient per tensor input (None where there is none) from the output's ``g``."""
        raise NotImplementedError

    def release(self) -> None:
        """Drop saved arrays after backward."""
        self.__dict__.clear()

    @classmethod
    def apply(cls, *inputs, **kwargs) -> Tensor:
        """Run the op on tensors (``inputs``) with non-differentiable ``kwargs``."""
        fn = cls()
        out = fn.forward(*[t.data for t in inputs], **kwargs)
        for t in inputs:
            if t.requires_grad:
                if _grad_mode.enabled:
                    fn.parents, fn._order = inputs, next(_seq)
                    res = Tensor._wrap(out, True)
                    res._ctx = fn
                    return res
                break
        return Tensor._wrap(out, False)


def as_tensor(x, like: Tensor | None = None) -> Tensor:
    """``x`` if it is a Tensor, else a constant Tensor (of ``like``'s dtype when given)."""
    if isinstance(x, Tensor):
        return x
    return Tensor(x, dtype=like.dtype if like is not None and like.dtype.kind == "f" else None)

