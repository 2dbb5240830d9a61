"""``compile``, ``fit``, ``evaluate``, ``predict`` and the ``*_on_batch`` methods of ``Model``.

Everything that can be checked is checked once per call, on the host, before any weight changes
(``checks``). The data then moves to the active backend once (``data.Feed``: on a device, whole
where it fits the data's share of device memory, else streamed in chunks), and each step works on
a batch of it. Who computes each step is ``gpucnn.parallel``'s business, the one module of it
this one talks to; a ``fit`` call's settings travel to it as one ``parallel.FitCall``.

A step reads nothing back from the device unless the progress bar is about to show a value, the
epoch ends, or a callback asks for batch-level logs. The loss is checked for NaN/inf whenever it is
read (at every step on the NumPy backend, where reading is free, before the step's update), and
so is the optimizer's flag of refused updates (``Optimizer.check_updates``).
"""
from __future__ import annotations

import contextlib
import functools
import math
import numbers
import threading

import numpy as np

from gpucnn import backend
from gpucnn import callbacks as _callbacks
from gpucnn import losses as _losses
from gpucnn import metrics as _metrics
from gpucnn import optimizers as _optimizers
from gpucnn import parallel
from gpucnn import random as _random
from gpucnn._progbar import Progbar
from gpucnn.autograd import Tensor, no_grad
from gpucnn.data import Batches, Feed, batch_bounds, data_budget
from gpucnn.models.checks import InputChecks, callback_list, check_batch_size, check_verbose
from gpucnn.models.tracker import Tracker, results


class NonFiniteLossError(FloatingPointError, ValueError):
    """The training loss became NaN or infinite."""


_TRAINERS = threading.Lock()


def _one_trainer(method):
    """``method`` (fit, train_on_batch) refused with a clear error while another thread trains
    the same model: their steps would interleave on the same weights and optimizer state."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        me = threading.current_thread()
        with _TRAINERS:
            owner = self.__dict__.get("_trainer")
            if owner is not None and owner is not me:
                raise RuntimeError(f"{method.__name__}: model '{self.name}' is being trained by "
                                   f"thread {owner.name!r}; train a model from one thread at a "
                                   "time (or give each thread a model of its own)")
            self.__dict__["_trainer"] = me
        try:
            return method(self, *args, **kwargs)
        finally:
            if owner is None:
                with _TRAINERS:
                    self.__dict__["_trainer"] = None
    return run


class TrainingMixin(InputChecks):
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

    # -- steps ---------------------------------------------------------------------------------------
    def _loss_value(self, yb, out, logits):
        return self.loss.call(yb, out, logits or self.loss.from_logits)

    def _eval_arrays(self, feed, batch_size, logits, bar=None, op="evaluate"):
        """The loss and metrics over the arrays of ``feed`` (a ``data.Feed``); with several
        ranks each takes its share of the rows and the sums are added (exact means for any
        count)."""
        tracker = Tracker(self, logits)
        g = parallel.group()
        lo, hi = parallel.shard(g, feed.n)
        bounds = [(lo + a, lo + b) for a, b in batch_bounds(hi - lo, batch_size)]
        fwd = parallel.forward_graphs(self, backend.kernels(), g)
        # the objects themselves, not their ids: a key keeps them alive, so no new loss or
        # metric can take an old one's id and be mistaken for it
        tag = ("evaluate", logits, self.loss, tuple(tracker.metrics))

        def batch(xb, yb):
            out = self._invoke(Tensor._wrap(xb), False, logits)
            loss = self._loss_value(yb, out, logits)
            return loss.data, (tracker.totals(yb, out.data) if tracker.metrics else None)

        with no_grad():
            for i, ((a, b), (xb, yb)) in enumerate(zip(bounds, feed.batches(bounds))):
                loss, totals = (batch(xb, yb) if fwd is None else fwd.run(tag, batch, xb, yb))
                tracker.add(loss, b - a, None, totals)
                if bar is not None and bar.due(i + 1):
                    bar.update(i + 1, tracker.values())
        if g is not None:
            tracker.summed(g, f"{op}: the sum of the ranks' losses and metrics")
        return tracker.values()

    # -- fit -------------------------------------------------------------------------------------------
    @_one_trainer
    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None,
            validation_split=0.0, validation_data=None, shuffle=True, initial_epoch=0):
        """Train for ``epochs`` passes over ``(x, y)``; returns a ``History`` (``.history`` holds
        the per-epoch ``loss``, metrics and ``val_*`` values)."""
        op = "fit"
        self._require_compiled(op)
        batch_size = check_batch_size(batch_size, op)
        verbose = check_verbose(verbose, op)
        callbacks = callback_list(callbacks, op)
        if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 0:
            raise ValueError(f"{op}: epochs must be an int >= 0, got {epochs!r}")
        if (isinstance(validation_split, (bool, str)) or not isinstance(validation_split, numbers.Real)
                or not 0.0 <= validation_split < 1.0):
            raise ValueError(f"{op}: validation_split expected a number in [0, 1), received "
                             f"{validation_split!r} ({type(validation_split).__name__})")
        if (isinstance(initial_epoch, bool) or not isinstance(initial_epoch, (int, np.integer))
                or initial_epoch < 0):
            raise ValueError(f"{op}: initial_epoch expected an int >= 0 (the epoch to start "
                             f"from), received {initial_epoch!r}")
        if y is None:
            raise ValueError(f"{op}: y is required (the targets of the loss)")
        x, y, _ = self._prepare(x, y, op)     # before the split: all of it checked
        val = None
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise ValueError(f"{op}: validation_data must be a pair (x_val, y_val)")
            val = self._prepare(*validation_data, f"{op} (validation data)")[:2]
        elif validation_split:
            split = int(x.shape[0] * (1.0 - float(validation_split)))
            if split == 0 or split == x.shape[0]:
                raise ValueError(f"{op}: validation_split={validation_split} leaves "
                                 f"{split} training and {x.shape[0] - split} validation samples of "
                                 f"{x.shape[0]}; both must be at least 1")
            val = (x[split:], y[split:])
            x, y = x[:split], y[:split]

        ks = backend.kernels()
        budget = data_budget(ks) if backend.has("streams") else None
        feed = Feed(op, x, y, batch_size, 2 if shuffle else 1, budget)
        xd, yd = feed.x, feed.y
        if val is not None:          # the validation data gets what the training data left
            val = Feed(f"{op} (validation data)", *val, batch_size, 1,
                       budget and (budget[0] - feed.used, budget[1]))
        resume = self.__dict__.pop("_random_state", None)   # a loaded model's (load_model)
        if resume is not None:
            _random.set_state(resume)
        batches = Batches(xd, yd, batch_size, shuffle=shuffle)
        steps = len(batches)
        history = _callbacks.History()
        if not parallel.is_main():         # several ranks: writers run on rank 0, nothing prints
            callbacks = [cb for cb in callbacks if not cb.main_rank_only]
            verbose = 0
        cbs = _callbacks.CallbackList(callbacks + [history], self,
                                      {"epochs": epochs, "steps": steps, "verbose": verbose,
                                       "metrics": self.metrics_names + [
                                           f"val_{n}" for n in self.metrics_names if val]})
        logits = self._fused_logits()
        tracker = Tracker(self, logits)
        batch_hooks = bool(cbs.batch_begin or cbs.batch_end)
        agreed = {"batch_size": batch_size, "epochs": int(epochs),
                  "initial_epoch": int(initial_epoch), "shuffle": bool(shuffle),
                  "x": [int(xd.shape[0]), list(xd.shape[1:]), str(xd.dtype)],
                  "y": [list(yd.shape[1:]), str(yd.dtype)],
                  "validation": None if val is None else [val.n, list(val.x.shape[1:])],
                  "backend": backend.get_backend(), "loss": repr(self.loss),
                  "optimizer": repr(self.optimizer), "metrics": self.metrics_names,
                  "weights": [list(t.shape) for t in self.weights],
                  "batch-level callbacks": batch_hooks}
        call = parallel.FitCall(
            batch_size=batch_size, epochs=int(epochs), initial_epoch=int(initial_epoch),
            verbose=verbose, logits=logits, steps=steps,
            largest=max(b - a for a, b in batches.bounds), x=xd, y=yd,
            validation=val,
            totals=tracker.totals if tracker.metrics else None, metrics=len(tracker.metrics),
            batch_hooks=batch_hooks, op=op, agreed=agreed)
        # the C allocator tuned for training while fit runs, where the kernel set offers it
        # (NumPy: freed blocks kept for the next step, put back after; see its _alloc), before
        # the runner forks its workers, which inherit it
        with ks.allocator_tuned() if backend.has("allocator") else contextlib.nullcontext():
            runner = parallel.runner_for(self, ks, call)
            self.stop_training = False
            self.history = history
            try:
                with parallel.quiet():
                    cbs.call("on_train_begin", None)
                    self._fit_epochs(call, feed, batches, cbs, ks, runner)
                    cbs.call("on_train_end", None)
            except BaseException:
                runner.close(failed=True)      # after a failure nothing of its workers is trusted
                raise
            runner.close()
        return history

    def _fit_epochs(self, call, feed, batches, cbs, ks, runner):
        """The epochs of the ``fit`` call ``call`` (a ``parallel.FitCall``)."""
        epochs = call.epochs
        for epoch in range(call.initial_epoch, epochs):
            if call.verbose:
                print(f"Epoch {epoch + 1}/{epochs}")
            cbs.call("on_epoch_begin", epoch, None)
            bar = Progbar(call.steps, call.verbose)
            try:
                with parallel.session(ks):
                    logs = self._fit_epoch(feed, batches, call.logits, bar, cbs, epoch, epochs,
                                           runner)
                    if call.validation is not None:
                        vlogs = self._eval_arrays(call.validation, call.batch_size, call.logits,
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

    def _fit_epoch(self, feed, batches, logits, bar, cbs, epoch, epochs, runner):
        params = self.trainable_weights
        opt = self.optimizer
        tracker = Tracker(self, logits)
        plan = batches.epoch_plan()      # host data: gathered batch by batch, or streamed
        begin, end = cbs.batch_begin, cbs.batch_end
        checked = 0
        step = 0
        for step, ((a, b), args) in enumerate(zip(batches.bounds,
                                                  feed.batches(batches.bounds, *plan)), 1):
            for cb in begin:
                cb.on_train_batch_begin(step - 1, None)
            loss, lv, totals = runner.step(*args)
            if lv is not None and not math.isfinite(lv):
                self._non_finite(lv, epoch, epochs, step, len(batches.bounds), checked, True)
            opt.apply_gradients(params)
            tracker.add(loss, b - a, lv, totals)
            if end or bar.due(step):
                logs = tracker.values()
                opt.check_updates("fit")           # the flag read with the loss
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
        opt.check_updates("fit")
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
        parallel.stop_workers(self)

    def _non_finite(self, value, epoch, epochs, step, steps, checked, before_update):
        where = f"epoch {epoch + 1}/{epochs}, step {step}/{steps}"
        if before_update:
            detail = ("training stopped before this step's update, so the weights are those after the "
                      "previous step")
        else:
            detail = (f"the loss is read only when it is shown, so it went bad after step {checked} "
                      "(no weight is ever given a NaN/inf: such updates are refused)")
        raise NonFiniteLossError(
            f"fit: the training loss is {value} at {where}; {detail}. Try a lower learning rate, "
            "check the data for extreme values, or use a loss that fits the model's output")

    # -- evaluate / predict ----------------------------------------------------------------------------
    def evaluate(self, x=None, y=None, batch_size=None, verbose="auto", return_dict=False):
        """The loss (and metrics) over ``(x, y)``, in batches. Returns the loss alone when no metric
        was compiled, else ``[loss, *metrics]`` (a dict with ``return_dict=True``)."""
        op = "evaluate"
        self._require_compiled(op)
        batch_size = check_batch_size(batch_size, op)
        verbose = check_verbose(verbose, op)
        if y is None:
            raise ValueError(f"{op}: y is required (the targets of the loss)")
        x, y, _ = self._prepare(x, y, op)
        ks = backend.kernels()
        feed = Feed(op, x, y, batch_size)
        g = parallel.checked_group(op, batch_size=batch_size, x=[feed.n, list(x.shape[1:])])
        lo, hi = parallel.shard(g, feed.n)
        bar = Progbar(len(batch_bounds(hi - lo, batch_size)), verbose if parallel.is_main() else 0)
        try:
            with parallel.session(ks):
                logs = self._eval_arrays(feed, batch_size, self._fused_logits(), bar)
        except BaseException:
            bar.abort()
            raise
        bar.finish(logs)
        return results(logs, return_dict)

    def predict(self, x, batch_size=None, verbose="auto"):
        """The model's outputs for ``x`` (inference mode), computed in batches; a NumPy array."""
        op = "predict"
        batch_size = check_batch_size(batch_size, op)
        verbose = check_verbose(verbose, op)
        x, _, out_shape = self._prepare(x, None, op)
        ks = backend.kernels()
        feed = Feed(op, x, None, batch_size)
        g = parallel.checked_group(op, batch_size=batch_size, x=[feed.n, list(x.shape[1:])])
        lo, hi = parallel.shard(g, feed.n)
        bounds = [(lo + a, lo + b) for a, b in batch_bounds(hi - lo, batch_size)]
        bar = Progbar(len(bounds), verbose if parallel.is_main() else 0)
        outs = []
        try:
            fwd = parallel.forward_graphs(self, backend.kernels(), g)
            batch = lambda xb: self._invoke(Tensor._wrap(xb), False, False).data  # noqa: E731
            with no_grad(), parallel.session(ks):
                for i, (xb, _) in enumerate(feed.batches(bounds)):
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
            out = parallel.gather_rows(g, out, feed.n, lo, f"{op}: the gather of the outputs")
        return out                         # a copy: never a view of the model's arrays

    def predict_on_batch(self, x):
        """``predict`` on ``x`` taken as one batch."""
        return self.predict(x, batch_size=max(len(x), 1), verbose=0)

    @_one_trainer
    def train_on_batch(self, x, y, return_dict=False):
        """One optimizer step on one batch; returns the loss (and metrics) of that batch."""
        op = "train_on_batch"
        self._require_compiled(op)
        x, y, _ = self._prepare(x, y, op)
        ks = backend.kernels()
        xd, yd = ks.asarray(x), ks.asarray(y)
        logits = self._fused_logits()
        tracker = Tracker(self, logits)
        # the step of this process alone (with several ranks too: no collective)
        totals = tracker.totals if tracker.metrics else None
        with parallel.batch_runner(self, ks, logits, totals) as runner, parallel.session(ks):
            loss, lv, totals = runner.step(xd, yd)
        if lv is None:
            lv = float(ks.to_host(loss))
        if not math.isfinite(lv):
            raise NonFiniteLossError(f"{op}: the loss is {lv}; the weights were not updated")
        self.optimizer.apply_gradients(runner.params)
        self.optimizer.check_updates(op)
        tracker.add(loss, xd.shape[0], lv, totals)
        return results(tracker.values(), return_dict)

    def test_on_batch(self, x, y, return_dict=False):
        """``evaluate`` on ``x`` and ``y`` taken as one batch."""
        self._require_compiled("test_on_batch")
        return self.evaluate(x, y, batch_size=max(len(x), 1), verbose=0, return_dict=return_dict)


__all__ = ["TrainingMixin", "NonFiniteLossError"]
