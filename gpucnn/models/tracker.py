"""The running loss and metrics of one epoch or evaluation, kept where the data lives."""
from __future__ import annotations

from gpucnn import backend, parallel


class Tracker:
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
            pred, logits = probabilities(out_data, self.final), False
        return [m.batch_total(yb, pred, logits) for m in self.metrics]

    def add(self, loss_data, n, host_loss=None, totals=None):
        """Add a batch of ``n`` samples: its loss (host float when given) and metric sums."""
        self.total = self.total + (host_loss * n if host_loss is not None else loss_data * n)
        self.count += n
        for m, (s, c) in zip(self.metrics, totals or ()):
            m._total = m._total + s
            m._count += c

    def summed(self, g, what) -> None:
        """The sums of every rank of ``g`` in place of this rank's (loss, count, metrics)."""
        ks = backend.kernels()
        mine = [float(ks.to_host(self.total)) if not isinstance(self.total, float) else self.total,
                self.count]
        for m in self.metrics:
            mine += [float(ks.to_host(m._total)) if not isinstance(m._total, (int, float))
                     else float(m._total), m._count]
        got = parallel.sum_host(g, mine, what)
        self.total, self.count = float(got[0]), int(round(got[1]))
        for j, m in enumerate(self.metrics):
            m._total, m._count = float(got[2 + 2 * j]), int(round(got[3 + 2 * j]))

    def values(self) -> dict:
        total = self.total if isinstance(self.total, float) else float(backend.kernels().to_host(self.total))
        out = {"loss": total / max(self.count, 1)}
        for m in self.metrics:
            out[m.name] = m.result()
        return out


def probabilities(z, final):
    ks = backend.kernels()
    if final == "sigmoid":
        return ks.act_forward(z, "sigmoid")
    return ks.softmax_forward(z.reshape(-1, z.shape[-1])).reshape(z.shape)


def results(logs, return_dict):
    if return_dict:
        return dict(logs)
    vals = list(logs.values())
    return vals[0] if len(vals) == 1 else vals


__all__ = ["Tracker", "probabilities", "results"]
