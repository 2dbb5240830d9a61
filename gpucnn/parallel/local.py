"""The runner interface, and the runner that computes each step whole in this process.

Every runner keeps the trainable weights it fills with gradients (``params``) and refreshes them
at the start of each epoch (every ``steps`` steps): an epoch callback may freeze a layer.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from gpucnn import backend
from gpucnn.parallel import _calls
from gpucnn.parallel import step as _step


@dataclasses.dataclass(frozen=True)
class FitCall:
    """The settings of one ``fit`` call, fixed for the call: what its epochs and its step
    runner need (``runner_for``)."""

    batch_size: int = 32
    epochs: int = 1
    initial_epoch: int = 0
    verbose: int = 0
    logits: bool = False         # the loss is computed from the logits of the final activation
    steps: int = 0               # batches per epoch
    largest: int = 0             # samples of the largest batch
    x: object = None             # the training arrays, on the backend
    y: object = None
    validation: tuple | None = None  # (x_val, y_val) on the backend
    totals: object = None        # totals(yb, out): a batch's metric partial sums, or None
    metrics: int = 0             # how many pairs ``totals`` returns
    batch_hooks: bool = False    # batch-level callbacks run (they may change the model between
    #                              steps: no worker processes)
    op: str = "fit"
    agreed: dict = dataclasses.field(default_factory=dict)  # checked equal over MPI ranks


class Runner:
    """Computes the forward and backward pass of one training step at a time.

    ``step(x, y, rows=None)`` runs the batch ``(x, y)`` (``(x[rows], y[rows])`` when ``rows``,
    an index array, is given; host arrays only) and returns ``(loss, lv, totals)``: the loss as
    an array of the backend, the loss as a float (None where reading it would cost a device
    synchronisation), and the metric partial sums ``[(sum, count), ...]`` of the batch (None
    without metrics). The gradients are then in ``.grad`` of ``params`` unless the loss is not
    finite. ``close(failed=False)`` ends the runner's part in the training call.
    """

    def __init__(self, model, logits, totals=None, steps=0):
        self.model, self.logits, self.totals = model, logits, totals
        self.steps = int(steps)
        self.ks = backend.kernels()
        self.params = model.trainable_weights
        self._count = 0
        self._buf = None
        self._closed = False
        _calls.enter()

    def _tick(self) -> None:
        """Called at the start of every step: the start of an epoch refreshes ``params``."""
        if self._count and self.steps and self._count % self.steps == 0:
            self.refresh()
        self._count += 1

    def refresh(self) -> None:
        """Take the model as it is now (an epoch callback may have changed it)."""
        self.params = self.model.trainable_weights

    def _gather(self, x, y, rows):
        """``(x[rows], y[rows])`` with x's rows in a buffer reused every step, or ``(x, y)``."""
        if rows is None:
            return x, y
        n = len(rows)
        if self._buf is None or len(self._buf) < n or self._buf.shape[1:] != x.shape[1:]:
            self._buf = np.empty((n,) + x.shape[1:], x.dtype)
        return np.take(x, rows, axis=0, out=self._buf[:n]), y[rows]

    def _totals(self, yb, out):
        return None if self.totals is None else self.totals(yb, out)

    def step(self, x, y, rows=None):  # pragma: no cover - abstract
        """One training step of the batch: ``(loss, lv, totals)`` (see the class docstring)."""
        raise NotImplementedError

    def reopen(self) -> "Runner":
        """Take part in a new call, with the model as it is now (a runner kept between
        ``train_on_batch`` calls)."""
        if self._closed:
            self._closed = False
            _calls.enter()
        self.refresh()
        return self

    def close(self, failed: bool = False) -> None:
        """End this runner's part in the training call (twice is fine)."""
        if not self._closed:
            self._closed = True
            _calls.leave()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        self.close(failed=exc_type is not None)
        return False


class Whole(Runner):
    """The whole step in this process. On the NumPy set with two or more kernel threads, a
    batch large enough (``step.THREAD_MIN_FLOPS``) runs as parts on those threads."""

    def __init__(self, model, logits, totals=None, steps=0):
        super().__init__(model, logits, totals, steps)
        self.per_sample = _step.sample_flops(model)

    def refresh(self) -> None:
        super().refresh()
        self.per_sample = _step.sample_flops(self.model)

    def step(self, x, y, rows=None):
        """One training step of the batch, whole (see ``Runner``)."""
        self._tick()
        return self._whole(x, y, rows)

    def _whole(self, x, y, rows):
        xb, yb = self._gather(x, y, rows)
        parts = _step.parts_for(self.ks, self.per_sample, xb.shape[0])
        loss, out, lv = _step.forward_backward(self.model, xb, yb, self.logits, self.params,
                                               parts, self.totals is not None)
        return loss, lv, self._totals(yb, out)
