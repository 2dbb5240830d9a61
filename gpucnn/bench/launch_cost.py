"""Host time of one cuda-set call, measured on the CPU: ``python -m gpucnn.bench.launch_cost``.

What a GPU step pays on the host for each kernel is gpucnn's own Python (argument checks, the
output allocation, the launch plan, the packed parameters) plus the driver's launch. This
measures the first part on any machine: the cuda set runs its raw launch path in a fresh process
where CuPy is hidden (outputs are NumPy arrays, whose allocation costs about what CuPy's
memory-pool allocation does), a device array's address is a constant (CuPy's ``a.data.ptr`` is an
attribute read), and the driver's ``cuLaunchKernel`` is a no-op. The time is the median of
single calls, each timed alone, so that a call the machine's other work interrupts is one slow
sample rather than a slower average; and as a shared machine also has slower stretches of whole
seconds, the calls run in 7 rounds over all rows in turn (3,000 calls a round; 200 for a whole
training step) and each row reports its quietest round. The kernels themselves are never
compiled: a fake cubin stands in. On a GPU, ``python -m gpucnn.gpucheck`` measures the real
per-launch time beside it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

#: The targets of the step-speed work: microseconds of gpucnn's own host time per call.
TARGETS = {"conv": 8.0, "elementwise": 4.0}

_CHILD = r"""
import json, statistics, sys, time
sys.modules["cupy"] = None                      # no CuPy: outputs are NumPy arrays
import numpy as np
from gpucnn.kernels import load_set

C = load_set("cuda")
C.instruments().fake_device()     # the raw launch path; the driver's launch does nothing


ROUNDS = 7


def per_call_us(fn, calls):
    # the median of single calls (see the module docstring), the timer's own cost taken off
    clock = time.perf_counter_ns
    for _ in range(20):
        fn()

    def samples(f):
        out = [0] * calls
        for i in range(calls):
            t = clock()
            f()
            out[i] = clock() - t
        return out

    nothing = lambda: None
    timer = statistics.median(samples(nothing))
    return max(statistics.median(samples(fn)) - timer, 0.0) / 1e3


rng = np.random.default_rng(0)
f = lambda *s: rng.standard_normal(s).astype(np.float32)
x1, tiny = f(1), f(8)
x3, w3, b3, dy3 = f(32, 14, 14, 6), f(5, 5, 6, 16), f(16), f(32, 10, 10, 16)
xp, dyp = f(32, 28, 28, 6), f(32, 14, 14, 6)
z, lab, g0, d84 = f(32, 10), np.arange(32) % 10, np.array(1.0, np.float32), f(32, 84)
z1, s, v = (0, 0, 0, 0), (1, 1), (2, 2)
_, stats = C.loss_forward("sparse_cce_logits", lab, z)
n0 = C.launch_count()
rows = [
    ("act_forward (1 element)", "elementwise", lambda: C.act_forward(x1, "tanh")),
    ("act_backward (8 elements)", "elementwise",
     lambda: C.act_backward(tiny, tiny, "tanh")),
    ("conv2d_forward (LeNet-5 C3, batch 32)", "conv",
     lambda: C.conv2d_forward(x3, w3, b3, s, z1, "tanh")),
    ("conv2d_backward_input (C3)", "conv",
     lambda: C.conv2d_backward_input(dy3, w3, x3.shape, s, z1)),
    ("avg_pool_forward (S2)", "elementwise",
     lambda: C.avg_pool_forward(xp, v, v, z1)),
    ("loss_forward sparse CE from logits (32 x 10)", "elementwise",
     lambda: C.loss_forward("sparse_cce_logits", lab, z)),
    ("conv2d_backward_weight_bias (C3, tanh fused)", "conv",
     lambda: C.conv2d_backward_weight_bias(x3, dy3, dy3, "tanh", w3.shape, s, z1)),
    ("avg_pool_backward (S2)", "elementwise",
     lambda: C.avg_pool_backward(dyp, xp.shape, v, v, z1)),
    ("act_backward_bias (32 x 84, tanh)", "elementwise",
     lambda: C.act_backward_bias(d84, d84, "tanh")),
    ("loss_backward sparse CE from logits (32 x 10)", "elementwise",
     lambda: C.loss_backward("sparse_cce_logits", g0, lab, z, stats)),
]
# a whole LeNet-5 training step on the cuda set (autograd, layers, optimizer, launches), the
# GPU's work left out: what a step costs the host when it is not replayed as a CUDA graph
import gpucnn
from gpucnn import backend, optimizers, zoo
from gpucnn.autograd import Tensor
backend._probe_cuda = lambda: (True, "the driver faked for the host-time benchmark", None)
backend._probe_simulator = lambda: False
gpucnn.set_backend("cuda")
model = zoo.lenet5()
model.compile(optimizer=optimizers.SGD(0.01), loss="sparse_categorical_crossentropy")
xs, ys = rng.random((32, 32, 32, 1)).astype(np.float32), np.arange(32) % 10
logits, params = model._fused_logits(), model.trainable_weights


def train_step():
    with np.errstate(all="ignore"):     # the kernels do not run: outputs hold whatever was there
        out = model._invoke(Tensor._wrap(xs), True, logits)
        loss = model._loss_value(ys, out, logits)
        for p in params:
            p.grad = None
        loss.backward()
        model.optimizer.apply_gradients(params)


rows.append(("LeNet-5 training step (batch 32, SGD), eager", "step", train_step))

launches = []
for label, kind, fn in rows:
    fn()
    before = C.launch_count()
    fn()
    launches.append(C.launch_count() - before)
# per row, the median call of its quietest round: a slow stretch of seconds hits every row alike
best = [float("inf")] * len(rows)
for _ in range(ROUNDS):
    for i, (label, kind, fn) in enumerate(rows):
        best[i] = min(best[i], per_call_us(fn, 200 if kind == "step" else 3000))
out = [(label, kind, n, us) for (label, kind, _), n, us in zip(rows, launches, best)]
print("LAUNCH-COST " + json.dumps(out))
"""


def measure() -> list:
    """``[(call, kind, launches per call, host microseconds per call)]`` from a fresh process."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    r = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True,
                       timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"bench launch: the measuring process failed:\n{r.stderr[-3000:]}")
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("LAUNCH-COST ")][-1]
    return [tuple(row) for row in json.loads(line[len("LAUNCH-COST "):])]


def table(rows) -> list:
    """Markdown lines: each call's host time per launch against its target."""
    out = ["### Host time per cuda-set call (raw launch path, CPU, the driver's launch a no-op)",
           "", "| call | launches | µs per call | µs per launch | target per launch |",
           "|---|---:|---:|---:|---|"]
    for label, kind, launches, us in rows:
        per, verdict = us / max(launches, 1), "-"     # a whole step: no per-launch target
        if kind in TARGETS:
            verdict = f"<= {TARGETS[kind]:g} µs: {'met' if per <= TARGETS[kind] else 'NOT met'}"
        out.append(f"| {label} | {launches} | {us:.1f} | {per:.1f} | {verdict} |")
    return out


if __name__ == "__main__":
    print("\n".join(table(measure())))
