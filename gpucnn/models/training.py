"""``compile``, ``fit``, ``evaluate``, ``predict`` and the ``*_on_batch`` methods of ``Model``.

Everything that can be checked is checked once per call, on the host, before any weight changes:
the input shape against the model (the first layer that refuses it is named), x/y lengths, an
empty dataset, targets against the model's output (labels inside ``[0, classes)``). The data then
moves to the active backend once, and each step works on slices of it.

A step reads nothing back from the device unless the progress bar is about to show a value, the
epoch ends, or a callback asks for batch-level logs. The loss is checked for NaN/inf whenever it is
read (at every step on the NumPy backend, where reading is free, before the step's update).
"""
from __future__ import annotations

import contextlib
import math

import numpy as np

from gpucnn import backend
from gpucnn import callbacks as _callbacks
from gpucnn import losses as _losses
from gpucnn import metrics as _metrics
from gpucnn import optimizers as _optimizers
from gpucnn._progbar import Progbar
from gpucnn.autograd import Tensor, no_grad
from gpucnn import parallel
from gpucnn.data import Batches, as_array, batch_bounds
from gpucnn.parallel import graphed as _graphed
from gpucnn.parallel import ranks as _ranks


class NonFiniteLossError(FloatingPointError, ValueError):
    """The training loss became NaN or infinite."""


def _verbose(v, op):
    if v == "auto":
        return 1
    if isinstance(v, bool) or v not in (0, 1, 2):
        raise ValueError(f"{op}: verbose must be 0, 1, 2 or 'auto', got {v!r}")
    return int(v)


def _batch_size(b, op):
    if b is None:
        return 32
    if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 1:
        raise ValueError(f"{op}: batch_size must be a positive int, got {b!r}")
    return int(b)


def _host(a):
    return a if isinstance(a, np.ndarray) else backend.kernels().to_host(a)


def _data_array(a, what, op):
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


def _allocator_tuned(ks):
    """The C allocator tuned for training while ``fit`` runs, where the kernel set offers it
    (NumPy: freed blocks kept for the next step, put back after; see its ``_alloc``)."""
    return ks.allocator_tuned() if backend.has("allocator") else contextlib.nullcontext()


def _callback_list(callbacks, op) -> list:
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


class _Tracker:
    """Running loss and metrics of one epoch, kept where the data lives."""

    def __init__(self, model, logits):
        self.metrics = model.compiled_metrics
        for m in self.metrics:
            m.reset_state()
        self.logits = logits
        self.final = model._final_activation() if logits else None
        self.need_probs = logits and any(m.needs_probabilities for m in self.metrics)
        self.total = 0.0
        self.count = 0

    def totals(self, yb, out_data) -> list:
        """The metric partial sums ``[(sum, count), ...]`` of one batch."""
        pred, logits = out_data, self.logits
        if self.need_probs:
            pred, logits = _probabilities(out_data, self.final), False
        return [m.batch_total(yb, pred, logits) for m in self.metrics]

    def add(self, loss_data, n, host_loss=None, totals=None):
        """Add a batch of ``n`` samples: its loss (host float when given) and metric sums."""
        self.total = self.total + (host_loss * n if host_loss is not None else loss_data * n)
        self.count += n
        for m, (s, c) in zip(self.metrics, totals or ()):
            m._total = m._total + s
            m._count += c

    def update(self, loss_data, out_data, yb, n, host_loss=None):
        self.add(loss_data, n, host_loss, self.totals(yb, out_data) if self.metrics else None)

    def summed(self, g, what) -> None:
        """The sums of every rank of ``g`` in place of this rank's (loss, count, metrics)."""
        ks = backend.kernels()
        mine = [float(ks.to_host(self.total)) if not isinstance(self.total, float) else self.total,
                self.count]
        for m in self.metrics:
            mine += [float(ks.to_host(m._total)) if not isinstance(m._total, (int, float))
                     else float(m._total), m._count]
        got = _ranks.sum_host(g, mine, what)
        self.total, self.count = float(got[0]), int(round(got[1]))
        for j, m in enumerate(self.metrics):
            m._total, m._count = float(got[2 + 2 * j]), int(round(got[3 + 2 * j]))

    def values(self) -> dict:
        total = self.total if isinstance(self.total, float) else float(backend.kernels().to_host(self.total))
        out = {"loss": total / max(self.count, 1)}
        for m in self.metrics:
            out[m.name] = m.result()
        return out


def _probabilities(z, final):
    ks = backend.kernels()
    if final == "sigmoid":
        return ks.act_forward(z, "sigmoid")
    return ks.softmax_forward(z.reshape(-1, z.shape[-1])).reshape(z.shape)


def _first_non_finite(a):
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


class TrainingMixin:
    """Keras' training API; mixed into ``Model``."""

    # -- compile -----------------------------------------------------------------------------------
    def compile(self, optimizer="rmsprop", loss=None, metrics=None):
        """Choose the optimizer, the loss and the metrics (objects or Keras names)."""
        if loss is None:
            raise ValueError("compile: a loss is required, e.g. loss='sparse_categorical_crossentropy'")
        self.optimizer = _optimizers.get(optimizer)
        self.loss = _losses.get(loss)
        if metrics is None:
            metrics = []
        elif isinstance(metrics, (str, _metrics.Metric)):
            metrics = [metrics]
        self.compiled_metrics = [_metrics.get(m, self.loss.kind) for m in metrics]
        names = ["loss"] + [m.name for m in self.compiled_metrics]
        if len(set(names)) != len(names):
            raise ValueError(f"compile: metric names must be unique, got {names}")

    def _require_compiled(self, op):
        if self.loss is None:
            raise RuntimeError(f"{op}: the model must be compiled first: "
                               "model.compile(optimizer, loss, metrics)")

    def _fused_logits(self) -> bool:
        """Whether the loss can be computed from the logits of the model's final softmax/sigmoid."""
        loss = self.loss
        return (not loss.from_logits and loss.fuses is not None
                and self._final_activation() == loss.fuses)

    # -- checks --------------------------------------------------------------------------------------
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
        x = _data_array(x, "x", op)
        if x.dtype != self.dtype:
            x = x.astype(self.dtype)
        if isinstance(x, np.ndarray):
            x = np.ascontiguousarray(x)
            bad = _first_non_finite(x)
            if bad is not None:
                raise ValueError(f"{op}: x holds NaN or infinite values (first at index {bad})")
        return x

    def _prepare_y(self, y, n, out_shape, op):
        """Targets as the loss wants them, checked against the model's output on the host."""
        y = _data_array(y, "y", op)
        if y.shape[0] != n:
            raise ValueError(f"{op}: x and y have different lengths: {n} samples in x, {y.shape[0]} in y")
        yh = _host(y)
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
        else:
            yh = yh.astype(self.dtype)
            if kind is not None:
                if yh.shape[1:] != per and yh.shape[1:] in ((), (1,)) and per in ((), (1,)):
                    yh = yh.reshape((n,) + per)
                if yh.shape[1:] != per:
                    hint = (" (integer labels go with loss='sparse_categorical_crossentropy')"
                            if kind == "categorical" and yh.ndim == 1 else "")
                    raise ValueError(f"{op}: {name} needs targets shaped like the output "
                                     f"{(None,) + per}, got y of shape {y.shape}{hint}")
            if _first_non_finite(yh) is not None:
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

    def _prepare(self, x, y, op):
        """Checked ``(x, y, output_shape)``; y is None when not given."""
        self._check_backend(op)
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

    # -- steps ---------------------------------------------------------------------------------------
    def _loss_value(self, yb, out, logits):
        return self.loss.call(yb, out, logits or self.loss.from_logits)

    def _eval_arrays(self, xd, yd, batch_size, logits, bar=None, op="evaluate"):
        """The loss and metrics over ``(xd, yd)``; with several ranks each takes its share of
        the rows and the sums are added (exact means for any count)."""
        tracker = _Tracker(self, logits)
        g = parallel.group()
        lo, hi = _shard(g, xd.shape[0])
        fwd = self._forward_graphs(g)
        # the objects themselves, not their ids: a key keeps them alive, so no new loss or
        # metric can take an old one's id and be mistaken for it
        tag = ("evaluate", logits, self.loss, tuple(tracker.metrics))

        def batch(xb, yb):
            out = self._invoke(Tensor._wrap(xb), False, logits)
            loss = self._loss_value(yb, out, logits)
            return loss.data, (tracker.totals(yb, out.data) if tracker.metrics else None)

        with no_grad():
            for i, (a, b) in enumerate(batch_bounds(hi - lo, batch_size)):
                xb, yb = xd[lo + a:lo + b], yd[lo + a:lo + b]
                loss, totals = (batch(xb, yb) if fwd is None else fwd.run(tag, batch, xb, yb))
                tracker.add(loss, b - a, None, totals)
                if bar is not None and bar.due(i + 1):
                    bar.update(i + 1, tracker.values())
        if g is not None:
            tracker.summed(g, f"{op}: the sum of the ranks' losses and metrics")
        return tracker.values()

    def _forward_graphs(self, group):
        """The model's ``graphed.Forward`` where forward passes are replayed as CUDA graphs (the
        cuda set, one process, ``GPUCNN_CUDA_GRAPHS`` not 0), else None."""
        if group is not None or not _graphed.enabled(backend.kernels()):
            return None
        fwd = self.__dict__.get("_gpucnn_forward")
        if fwd is None:
            fwd = self.__dict__["_gpucnn_forward"] = _graphed.Forward(self)
        return fwd

    # -- fit -------------------------------------------------------------------------------------------
    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None,
            validation_split=0.0, validation_data=None, shuffle=True, initial_epoch=0):
        """Train for ``epochs`` passes over ``(x, y)``; returns a ``History`` (``.history`` holds
        the per-epoch ``loss``, metrics and ``val_*`` values)."""
        op = "fit"
        self._require_compiled(op)
        batch_size = _batch_size(batch_size, op)
        verbose = _verbose(verbose, op)
        callbacks = _callback_list(callbacks, op)
        if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 0:
            raise ValueError(f"{op}: epochs must be an int >= 0, got {epochs!r}")
        if not 0.0 <= float(validation_split) < 1.0:
            raise ValueError(f"{op}: validation_split must lie in [0, 1), got {validation_split!r}")
        x = _data_array(x, "x", op)
        if y is None:
            raise ValueError(f"{op}: y is required (the targets of the loss)")
        y = _data_array(y, "y", op)
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"{op}: x and y have different lengths: {x.shape[0]} samples in x, "
                             f"{y.shape[0]} in y")
        val = None
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise ValueError(f"{op}: validation_data must be a pair (x_val, y_val)")
            val = validation_data
        elif validation_split:
            split = int(x.shape[0] * (1.0 - float(validation_split)))
            if split == 0 or split == x.shape[0]:
                raise ValueError(f"{op}: validation_split={validation_split} leaves "
                                 f"{split} training and {x.shape[0] - split} validation samples of "
                                 f"{x.shape[0]}; both must be at least 1")
            val = (x[split:], y[split:])
            x, y = x[:split], y[:split]
        x, y, _ = self._prepare(x, y, op)
        xv = yv = None
        if val is not None:
            xv, yv, _ = self._prepare(val[0], val[1], f"{op} (validation data)")

        ks = backend.kernels()
        xd, yd = ks.asarray(x), ks.asarray(y)
        if val is not None:
            xv, yv = ks.asarray(xv), ks.asarray(yv)
        batches = Batches(xd, yd, batch_size, shuffle=shuffle)
        steps = len(batches)
        history = _callbacks.History()
        if not parallel.is_main():         # several ranks: writers run on rank 0, nothing prints
            callbacks = [cb for cb in callbacks if not cb.main_rank_only]
            verbose = 0
        cbs = _callbacks.CallbackList(callbacks + [history], self,
                                      {"epochs": epochs, "steps": steps, "verbose": verbose})
        logits = self._fused_logits()
        tracker = _Tracker(self, logits)
        settings = {"batch_size": batch_size, "epochs": int(epochs),
                    "initial_epoch": int(initial_epoch), "shuffle": bool(shuffle),
                    "x": [int(xd.shape[0]), list(xd.shape[1:]), str(xd.dtype)],
                    "y": [list(yd.shape[1:]), str(yd.dtype)],
                    "validation": None if xv is None else [int(xv.shape[0]), list(xv.shape[1:])],
                    "backend": backend.get_backend(), "loss": repr(self.loss),
                    "optimizer": repr(self.optimizer), "metrics": self.metrics_names,
                    "weights": [list(t.shape) for t in self.weights],
                    "batch-level callbacks": bool(cbs.batch_begin or cbs.batch_end)}
        # the allocator is tuned before the runner forks its workers, which inherit it
        with _allocator_tuned(ks):
            runner = parallel.runner_for(
                self, ks, logits=logits, totals=tracker.totals if tracker.metrics else None,
                metrics=len(tracker.metrics), steps=steps,
                largest=max(b - a for a, b in batches.bounds), x=xd, y=yd,
                batch_hooks=bool(cbs.batch_begin or cbs.batch_end), op=op, settings=settings)
            self.stop_training = False
            self.history = history
            try:
                with _ranks.quiet():
                    cbs.call("on_train_begin", None)
                    self._fit_epochs(batches, xv, yv, val, batch_size, logits, cbs, steps,
                                     initial_epoch, epochs, verbose, ks, runner)
                    cbs.call("on_train_end", None)
            except BaseException:
                runner.close(failed=True)      # after a failure nothing of its workers is trusted
                raise
            runner.close()
        return history

    def _fit_epochs(self, batches, xv, yv, val, batch_size, logits, cbs, steps, initial_epoch,
                    epochs, verbose, ks, runner):
        for epoch in range(int(initial_epoch), epochs):
            if verbose:
                print(f"Epoch {epoch + 1}/{epochs}")
            cbs.call("on_epoch_begin", epoch, None)
            bar = Progbar(steps, verbose)
            try:
                with parallel.session(ks):
                    logs = self._fit_epoch(batches, logits, bar, cbs, epoch, epochs, runner)
                    if val is not None:
                        vlogs = self._eval_arrays(xv, yv, batch_size, logits,
                                                  op="fit (validation)")
                        logs.update({f"val_{k}": v for k, v in vlogs.items()})
            except BaseException:
                bar.abort()
                raise
            bar.finish(logs)
            cbs.call("on_epoch_end", epoch, logs)
            self.stop_training = parallel.any_rank(
                self.stop_training, f"fit: whether a rank stops (end of epoch {epoch + 1})")
            if self.stop_training:
                break

    def _fit_epoch(self, batches, logits, bar, cbs, epoch, epochs, runner):
        params = self.trainable_weights
        opt = self.optimizer
        tracker = _Tracker(self, logits)
        xe, ye, order = batches.epoch_plan()      # host data: gathered batch by batch
        begin, end = cbs.batch_begin, cbs.batch_end
        checked = 0
        step = 0
        for step, (a, b) in enumerate(batches.bounds, 1):
            for cb in begin:
                cb.on_train_batch_begin(step - 1, None)
            if order is None:
                loss, lv, totals = runner.step(xe[a:b], ye[a:b])
            else:
                loss, lv, totals = runner.step(xe, ye, order[a:b])
            if lv is not None and not math.isfinite(lv):
                self._non_finite(lv, epoch, epochs, step, len(batches.bounds), checked, True)
            opt.apply_gradients(params)
            tracker.add(loss, b - a, lv, totals)
            if end or bar.due(step):
                logs = tracker.values()
                if not math.isfinite(logs["loss"]):
                    self._non_finite(logs["loss"], epoch, epochs, step, len(batches.bounds),
                                     checked, False)
                checked = step
                bar.update(step, logs)
                for cb in end:
                    cb.on_train_batch_end(step - 1, logs)
            if begin or end:               # a batch callback may stop: the same step on every rank
                self.stop_training = parallel.any_rank(
                    self.stop_training, f"fit: whether a rank stops (epoch {epoch + 1}, "
                                        f"step {step})")
            if self.stop_training:
                break
        logs = tracker.values()
        if not math.isfinite(logs["loss"]):
            self._non_finite(logs["loss"], epoch, epochs, step, len(batches.bounds), checked, False)
        return logs

    def release_workers(self) -> None:
        """End the worker processes ``fit`` keeps for this model on the NumPy backend (they
        otherwise serve the next ``fit`` call of the same thread and end with the model or its
        thread, when another model trains, or at exit); an idle worker holds the memory of its
        last step. Also ends the workers of models already collected and of threads that have
        ended (they wait for the next ``fit`` otherwise)."""
        parallel.release(self)

    def _stop_workers(self):
        parallel.forked.release(self)

    def _non_finite(self, value, epoch, epochs, step, steps, checked, before_update):
        where = f"epoch {epoch + 1}/{epochs}, step {step}/{steps}"
        if before_update:
            detail = ("training stopped before this step's update, so the weights are those after the "
                      "previous step")
        else:
            detail = (f"the loss is read only when it is shown, so it went bad after step {checked}; "
                      "the weights may hold NaN/inf now")
        raise NonFiniteLossError(
            f"fit: the training loss is {value} at {where}; {detail}. Try a lower learning rate, "
            "check the data for extreme values, or use a loss that fits the model's output")

    # -- evaluate / predict ----------------------------------------------------------------------------
    def evaluate(self, x=None, y=None, batch_size=None, verbose="auto", return_dict=False):
        """The loss (and metrics) over ``(x, y)``, in batches. Returns the loss alone when no metric
        was compiled, else ``[loss, *metrics]`` (a dict with ``return_dict=True``)."""
        op = "evaluate"
        self._require_compiled(op)
        batch_size = _batch_size(batch_size, op)
        verbose = _verbose(verbose, op)
        if y is None:
            raise ValueError(f"{op}: y is required (the targets of the loss)")
        x, y, _ = self._prepare(x, y, op)
        ks = backend.kernels()
        xd, yd = ks.asarray(x), ks.asarray(y)
        g = _checked_group(op, batch_size=batch_size, x=[int(xd.shape[0]), list(xd.shape[1:])])
        lo, hi = _shard(g, xd.shape[0])
        bar = Progbar(len(batch_bounds(hi - lo, batch_size)), verbose if _ranks.is_main() else 0)
        try:
            with parallel.session(ks):
                logs = self._eval_arrays(xd, yd, batch_size, self._fused_logits(), bar)
        except BaseException:
            bar.abort()
            raise
        bar.finish(logs)
        return _results(logs, return_dict)

    def predict(self, x, batch_size=None, verbose="auto"):
        """The model's outputs for ``x`` (inference mode), computed in batches; a NumPy array."""
        op = "predict"
        batch_size = _batch_size(batch_size, op)
        verbose = _verbose(verbose, op)
        x, _, out_shape = self._prepare(x, None, op)
        ks = backend.kernels()
        xd = ks.asarray(x)
        g = _checked_group(op, batch_size=batch_size, x=[int(xd.shape[0]), list(xd.shape[1:])])
        lo, hi = _shard(g, xd.shape[0])
        bounds = batch_bounds(hi - lo, batch_size)
        bar = Progbar(len(bounds), verbose if _ranks.is_main() else 0)
        outs = []
        try:
            fwd = self._forward_graphs(g)
            batch = lambda xb: self._invoke(Tensor._wrap(xb), False, False).data  # noqa: E731
            with no_grad(), parallel.session(ks):
                for i, (a, b) in enumerate(bounds):
                    xb = xd[lo + a:lo + b]
                    outs.append(batch(xb) if fwd is None
                                else fwd.run(("predict",), batch, xb, copy=True))
                    if bar.due(i + 1):
                        bar.update(i + 1)
        except BaseException:
            bar.abort()
            raise
        bar.finish()
        if not outs:                       # a rank with no rows (fewer samples than ranks)
            out = np.zeros((0,) + tuple(out_shape[1:]), self.dtype)
        else:
            out = np.array(ks.to_host(ks.xp.concatenate(outs) if len(outs) > 1 else outs[0]))
        if g is not None:                  # every rank returns every row
            out = _ranks.gather_rows(g, out, xd.shape[0], lo, f"{op}: the gather of the outputs")
        return out                         # a copy: never a view of the model's arrays

    def predict_on_batch(self, x):
        """``predict`` on ``x`` taken as one batch."""
        return self.predict(x, batch_size=max(len(x), 1), verbose=0)

    def train_on_batch(self, x, y, return_dict=False):
        """One optimizer step on one batch; returns the loss (and metrics) of that batch."""
        op = "train_on_batch"
        self._require_compiled(op)
        x, y, _ = self._prepare(x, y, op)
        ks = backend.kernels()
        xd, yd = ks.asarray(x), ks.asarray(y)
        logits = self._fused_logits()
        tracker = _Tracker(self, logits)
        # the step of this process alone (with several ranks too: no collective)
        with self._batch_runner(ks, logits, tracker) as runner, parallel.session(ks):
            loss, lv, totals = runner.step(xd, yd)
        if lv is None:
            lv = float(ks.to_host(loss))
        if not math.isfinite(lv):
            raise NonFiniteLossError(f"{op}: the loss is {lv}; the weights were not updated")
        self.optimizer.apply_gradients(runner.params)
        tracker.add(loss, xd.shape[0], lv, totals)
        return _results(tracker.values(), return_dict)

    def _batch_runner(self, ks, logits, tracker):
        """``train_on_batch``'s runner: on the cuda set a ``Graphed`` kept with the model between
        calls (its graphs are per batch shape; a new loss or metrics makes a new one), else a
        ``Whole`` for this call."""
        totals = tracker.totals if tracker.metrics else None
        if not _graphed.enabled(ks):
            return parallel.Whole(self, logits, totals)
        key = (logits, self.loss, tuple(tracker.metrics))
        kept = self.__dict__.get("_gpucnn_batch_runner")
        if kept is None or kept[0] != key:
            kept = self.__dict__["_gpucnn_batch_runner"] = (
                key, _graphed.Graphed(self, logits, totals))
            return kept[1]
        return kept[1].reopen()

    def test_on_batch(self, x, y, return_dict=False):
        """``evaluate`` on ``x`` and ``y`` taken as one batch."""
        self._require_compiled("test_on_batch")
        return self.evaluate(x, y, batch_size=max(len(x), 1), verbose=0, return_dict=return_dict)


def _shard(g, n):
    """The rows ``(lo, hi)`` of ``n`` this process evaluates or predicts (all without ranks)."""
    return (0, n) if g is None else _ranks.share(n, g.rank, g.size)


def _checked_group(op, **settings):
    """The group of ranks, its ranks checked to have been called with the same ``settings``; or
    None with one process."""
    g = parallel.group()
    if g is not None:
        _ranks.check_settings(g, op, settings)
    return g


def _results(logs, return_dict):
    if return_dict:
        return dict(logs)
    vals = list(logs.values())
    return vals[0] if len(vals) == 1 else vals


__all__ = ["TrainingMixin", "NonFiniteLossError"]
