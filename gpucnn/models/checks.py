"""What ``fit``, ``evaluate``, ``predict`` and the ``*_on_batch`` methods check, once per call.

Everything that can be checked is checked on the host, before any weight changes: the input
shape against the model (the first layer that refuses it is named), x/y lengths, an empty
dataset, targets against the model's output (labels inside ``[0, classes)``), the callbacks, the
batch size and verbosity. ``InputChecks`` is mixed into ``Model`` with the training API.
"""
from __future__ import annotations

import numpy as np

from gpucnn import backend
from gpucnn import callbacks as _callbacks
from gpucnn.autograd import Tensor
from gpucnn.data import as_array


def check_verbose(v, op):
    if v == "auto":
        return 1
    if isinstance(v, bool) or v not in (0, 1, 2):
        raise ValueError(f"{op}: verbose must be 0, 1, 2 or 'auto', got {v!r}")
    return int(v)


def check_batch_size(b, op):
    if b is None:
        return 32
    if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 1:
        raise ValueError(f"{op}: batch_size must be a positive int, got {b!r}")
    return int(b)


def data_array(a, what, op):
    """``a`` (array, Tensor or nested list) as an array with a batch axis (host or device)."""
    if isinstance(a, Tensor):
        a = a.data
    elif isinstance(a, (list, tuple)):
        a = as_array(a, what, op)
    if a is None:
        raise ValueError(f"{op}: {what} is required")
    dt = getattr(a, "dtype", None)
    if dt is None or not hasattr(a, "shape"):
        raise TypeError(f"{op}: {what} must be an array or a Tensor, got {type(a).__name__}")
    if np.dtype(dt).kind not in "biuf":
        raise TypeError(f"{op}: {what} must hold numbers, got dtype {dt}")
    if a.ndim == 0:
        raise ValueError(f"{op}: {what} must have a batch axis, got a scalar")
    if a.shape[0] == 0:
        raise ValueError(f"{op}: the dataset is empty ({what} has 0 samples, shape {tuple(a.shape)})")
    return a


def callback_list(callbacks, op) -> list:
    """``callbacks`` as a list of Callback instances; one Callback alone is taken as a list of
    one, as Keras does."""
    if callbacks is None:
        return []
    if isinstance(callbacks, _callbacks.Callback):
        return [callbacks]
    if isinstance(callbacks, (str, bytes, dict)) or not hasattr(callbacks, "__iter__"):
        raise TypeError(f"{op}: callbacks must be a list of Callback instances (or one Callback), "
                        f"got {type(callbacks).__name__}")
    out = list(callbacks)
    for i, cb in enumerate(out):
        if not isinstance(cb, _callbacks.Callback):
            hint = (f": pass an instance, {cb.__name__}()" if isinstance(cb, type)
                    and issubclass(cb, _callbacks.Callback) else "")
            raise TypeError(f"{op}: callbacks must be Callback instances; callbacks[{i}] is "
                            f"{cb!r} ({type(cb).__name__}){hint}")
    return out


def first_non_finite(a):
    """Index of the first NaN or infinity of float array ``a``, or None. A sum is NaN or
    infinite when any element is, so a finite sum rules them out without the elementwise pass
    and its temporary (a quarter of x's size, in fresh pages on a first fit: 23 ms on a 64 MB x
    against 3 ms for the sum); only a sum that overflowed or met a bad value is followed by the
    exact search."""
    if a.size == 0:
        return None
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(a.sum()):
            return None
    found = np.argwhere(~np.isfinite(a))
    return tuple(int(i) for i in found[0]) if len(found) else None


class InputChecks:
    """The checks of the training API on the model's own inputs and targets."""

    def _output_shape_for(self, x, op):
        """Run the input shape through the model (no data) and return the output shape."""
        try:
            out = self._shape_pass(tuple(x.shape))
        except (ValueError, TypeError) as e:
            raise type(e)(f"{op}: {e}").with_traceback(e.__traceback__) from None
        if out is None:
            raise ValueError(f"{op}: cannot tell the output shape of model '{self.name}'")
        return out

    def _prepare_x(self, x, op):
        x = data_array(x, "x", op)
        if x.dtype != self.dtype:
            x = x.astype(self.dtype)
        if isinstance(x, np.ndarray):
            x = np.ascontiguousarray(x)
            bad = first_non_finite(x)
            if bad is not None:
                raise ValueError(f"{op}: x holds NaN or infinite values (first at index {bad})")
        return x

    def _prepare_y(self, y, n, out_shape, op):
        """Targets as the loss wants them, checked against the model's output on the host."""
        y = data_array(y, "y", op)        # its length checked against x by _prepare
        yh = backend.kernels().to_host(y)
        kind, name = self.loss.kind, self.loss.name
        per = tuple(out_shape[1:])
        if kind == "sparse":
            if len(per) != 1:
                raise ValueError(f"{op}: {name} needs outputs of shape (batch, classes); model "
                                 f"'{self.name}' outputs {out_shape}")
            k = per[0]
            if yh.ndim == 2 and yh.shape[1] == 1:
                yh = yh.reshape(-1)
            if yh.ndim != 1:
                hint = (" (these look like one-hot rows: use loss='categorical_crossentropy')"
                        if yh.ndim == 2 and yh.shape[1] == k else "")
                raise ValueError(f"{op}: {name} expects integer labels of shape ({n},), got y of shape "
                                 f"{yh.shape}{hint}")
            if yh.dtype.kind == "f":
                if not (np.isfinite(yh).all() and (yh == np.round(yh)).all()):
                    raise ValueError(f"{op}: {name} expects integer class labels; y holds non-integer "
                                     "values")
            lo, hi = int(yh.min()), int(yh.max())
            if lo < 0 or hi >= k:
                i = int(np.argmax((yh < 0) | (yh >= k)))
                raise ValueError(f"{op}: labels must lie in [0, {k}) for the {k} outputs of model "
                                 f"'{self.name}', got values in [{lo}, {hi}] (first bad: y[{i}] = {yh[i]})")
            yh = yh.astype(np.int64)
        else:                      # a loss of the user's own gets integer labels as they are
            yh = yh if kind is None and yh.dtype.kind in "biu" else yh.astype(self.dtype)
            if kind is not None:
                if yh.shape[1:] != per and yh.shape[1:] in ((), (1,)) and per in ((), (1,)):
                    yh = yh.reshape((n,) + per)
                if yh.shape[1:] != per:
                    hint = (" (integer labels go with loss='sparse_categorical_crossentropy')"
                            if kind == "categorical" and yh.ndim == 1 else "")
                    raise ValueError(f"{op}: {name} needs targets shaped like the output "
                                     f"{(None,) + per}, got y of shape {y.shape}{hint}")
            if first_non_finite(yh) is not None:
                raise ValueError(f"{op}: y holds NaN or infinite values")
            if kind in ("binary", "categorical") and (yh.min() < 0 or yh.max() > 1):
                raise ValueError(f"{op}: {name} needs targets in [0, 1], got values in "
                                 f"[{yh.min()}, {yh.max()}]")
        return yh

    def _check_backend(self, op):
        """Refuse weights that live on another backend than the active one (built before a
        ``set_backend`` call)."""
        xp = backend.xp()
        for t in self.weights:
            if not isinstance(t.data, xp.ndarray):
                raise RuntimeError(
                    f"{op}: the weights of model '{self.name}' are {type(t.data).__module__} arrays, "
                    f"but the active backend '{backend.get_backend()}' works on {xp.__name__} arrays; "
                    "build the model after set_backend(...), or move its weights with "
                    "model.set_weights(model.get_weights())")

    def _check_dtypes(self, layer, op):
        """Every layer computes in the model's dtype (a clear error rather than a deep one)."""
        for c in layer._sublayers():
            if c.dtype != self.dtype:
                raise TypeError(f"{op}: layer '{c.name}' ({type(c).__name__}) has dtype {c.dtype}, "
                                f"model '{self.name}' computes in {self.dtype}; give the model the "
                                f"same dtype (e.g. Sequential([...], dtype='{c.dtype}')) or drop "
                                "the layer's")
            self._check_dtypes(c, op)

    def _prepare(self, x, y, op):
        """Checked ``(x, y, output_shape)``; y is None when not given."""
        self._check_backend(op)
        self._check_dtypes(self, op)
        x = self._prepare_x(x, op)
        if y is not None:
            yl = len(y) if not hasattr(y, "shape") else (y.shape[0] if len(y.shape) else 0)
            if yl != x.shape[0]:
                raise ValueError(f"{op}: x and y have different lengths: {x.shape[0]} samples in x, "
                                 f"{yl} in y")
        out_shape = self._output_shape_for(x, op)
        if y is not None:
            y = self._prepare_y(y, x.shape[0], out_shape, op)
        return x, y, out_shape


__all__ = ["InputChecks", "callback_list", "check_batch_size", "check_verbose", "data_array",
           "first_non_finite"]
