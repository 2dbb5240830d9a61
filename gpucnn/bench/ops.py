"""Per-op timings at the shapes of the zoo's networks, gpucnn's kernel set beside PyTorch.

Each case calls the active backend's kernel set directly (the arrays already where the backend
keeps them), so the times are the kernels' own, without autograd: the convolution's forward
(bias and activation fused, as the layers run it), input gradient and kernel gradient, the
transposed convolution, max and average pooling forward and backward, softmax + cross-entropy.
PyTorch runs the same ops on NCHW tensors (its default layout): ``conv2d`` plus the activation,
``torch.nn.grad.conv2d_input`` / ``conv2d_weight``, ``conv_transpose2d``, the pooling functions
and their autograd backward, ``cross_entropy``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from gpucnn import backend
from gpucnn.bench import _timing, shapes, torch_ref
from gpucnn.kernels import has
from gpucnn.kernels._geometry import transpose_out_1d, window_2d

@dataclass
class OpCase:
    net: str
    op: str                 # "C3 input gradient"
    shape: str              # what it works on
    flops: float            # per call (multiply-adds count 2)
    gpucnn: callable
    torch: callable = None
    kernel: str = ""        # which algorithm the kernel set chose
    results: dict = field(default_factory=dict)   # side name -> median seconds


def _algo(ks, what, *args):
    return ks.conv_algorithm(what, *args) if has(ks, "conv_algorithm") else ""


def _conv_cases(ks, tr, rng, net, n, spec):
    name, (h, w, c), k, co, s, padding, act, kind, *_ = spec
    ys, pad = spec._replace(n=n).geometry()
    x = rng.random((n, h, w, c), dtype=np.float32)
    wt = (rng.standard_normal((k, k, c, co), dtype=np.float32) * 0.1)
    b = rng.standard_normal(co, dtype=np.float32) * 0.1
    dy = rng.standard_normal(ys, dtype=np.float32)
    xd, wd, bd, dyd = (ks.asarray(a) for a in (x, wt, b, dy))
    stride, act_name = (s, s), act or "linear"
    shape = f"{n}x{h}x{w}x{c} * {k}x{k}x{c}x{co} /{s} {padding}"
    torch_fns = (None, None, None) if tr is None else torch_ref.conv_ops(
        tr.torch, tr.device, x, wt, b, stride, pad, act)
    calls = [(f"forward (+bias, {act_name})", "forward",
              lambda: ks.conv2d_forward(xd, wd, bd, stride, pad, act_name), torch_fns[0]),
             ("input gradient", "input",
              lambda: ks.conv2d_backward_input(dyd, wd, x.shape, stride, pad), torch_fns[1]),
             ("kernel gradient", "weight",
              lambda: ks.conv2d_backward_weight(xd, dyd, wt.shape, stride, pad), torch_fns[2])]
    return [OpCase(net, f"{name} {op}", shape, spec._replace(n=n).flops(), fn, t_fn,
                   _algo(ks, what, x.shape, wt.shape, stride, pad))
            for op, what, fn, t_fn in calls if what != "input" or kind != "first"]


def _transpose_cases(ks, tr, rng, net, n, spec):
    """A Conv2DTranspose: its forward is the conv input gradient; its input gradient is a conv
    forward of the output gradient and its kernel gradient a conv kernel gradient."""
    name, (h, w, c), k, co, s, padding, *_ = spec
    ho, wo = transpose_out_1d(h, k, s, padding), transpose_out_1d(w, k, s, padding)
    _, _, pad = window_2d(ho, wo, k, k, s, s, padding)
    x = rng.random((n, h, w, c), dtype=np.float32)
    wk = rng.standard_normal((k, k, co, c), dtype=np.float32) * 0.1      # (KH, KW, C_out, C_in)
    g = rng.standard_normal((n, ho, wo, co), dtype=np.float32)
    xd, wd, gd = ks.asarray(x), ks.asarray(wk), ks.asarray(g)
    stride = (s, s)
    flops = 2.0 * n * h * w * k * k * c * co
    shape = f"{n}x{h}x{w}x{c} -> {n}x{ho}x{wo}x{co}, {k}x{k} /{s} {padding}"
    out_shape = (n, ho, wo, co)
    t_fwd = t_dx = t_dw = None
    if tr is not None:
        t_fwd = torch_ref.conv_transpose_op(tr.torch, tr.device, x, wk, stride, (ho, wo), pad)
        # as a conv: g (N, Ho, Wo, C_out) with the kernel read as (KH, KW, C_out, C_in)
        t_dx, _, t_dw = torch_ref.conv_ops(tr.torch, tr.device, g, wk, None, stride, pad, None)
    return [
        OpCase(net, f"{name} transposed conv forward", shape, flops,
               lambda: ks.conv2d_backward_input(xd, wd, out_shape, stride, pad), t_fwd,
               _algo(ks, "input", out_shape, wk.shape, stride, pad)),
        OpCase(net, f"{name} input gradient (a conv)", shape, flops,
               lambda: ks.conv2d_forward(gd, wd, None, stride, pad, "linear"), t_dx,
               _algo(ks, "forward", out_shape, wk.shape, stride, pad)),
        OpCase(net, f"{name} kernel gradient", shape, flops,
               lambda: ks.conv2d_backward_weight(gd, xd, wk.shape, stride, pad), t_dw,
               _algo(ks, "weight", out_shape, wk.shape, stride, pad)),
    ]


def _pool_cases(ks, tr, rng, net, n, spec):
    name, (h, w, c), p, _, s, padding, _, kind, *_ = spec
    ho, wo, pad = window_2d(h, w, p, p, s, s, padding)
    x = rng.standard_normal((n, h, w, c), dtype=np.float32)
    dy = rng.standard_normal((n, ho, wo, c), dtype=np.float32)
    xd, dyd = ks.asarray(x), ks.asarray(dy)
    pool, stride = (p, p), (s, s)
    flops = float(n * ho * wo * c * p * p)
    shape = f"{n}x{h}x{w}x{c}, {p}x{p} /{s}"
    t_f = t_b = None
    if tr is not None:
        t_f, t_b = torch_ref.pool_ops(tr.torch, tr.device, x, kind, pool, stride)
    if kind == "max":
        _, idx = ks.max_pool_forward(xd, pool, stride, pad)
        fwd = lambda: ks.max_pool_forward(xd, pool, stride, pad)  # noqa: E731
        bwd = lambda: ks.max_pool_backward(dyd, idx, x.shape, pool, stride, pad)  # noqa: E731
    else:
        fwd = lambda: ks.avg_pool_forward(xd, pool, stride, pad)  # noqa: E731
        bwd = lambda: ks.avg_pool_backward(dyd, x.shape, pool, stride, pad)  # noqa: E731
    return [OpCase(net, f"{name} {kind} pool forward", shape, flops, fwd, t_f),
            OpCase(net, f"{name} {kind} pool backward", shape, flops, bwd, t_b)]


def _xent_cases(ks, tr, rng, net, n, spec):
    name, (k,), *_ = spec
    z = rng.standard_normal((n, k), dtype=np.float32)
    labels = rng.integers(0, k, n).astype(np.int64)
    zd, ld = ks.asarray(z), ks.asarray(labels)
    _, stats = ks.loss_forward("sparse_cce_logits", ld, zd)
    g = ks.asarray(np.array(1.0, dtype=np.float32))
    t_f = t_b = None
    if tr is not None:
        t_f, t_b = torch_ref.xent_ops(tr.torch, tr.device, z, labels)
    flops = 5.0 * n * k
    shape = f"{n}x{k}"
    return [OpCase(net, f"{name} sparse CE from logits forward", shape, flops,
                   lambda: ks.loss_forward("sparse_cce_logits", ld, zd), t_f),
            OpCase(net, f"{name} sparse CE from logits backward", shape, flops,
                   lambda: ks.loss_backward("sparse_cce_logits", g, ld, zd, stats), t_b)]


def cases(names, tr=None, batch_scale=1.0, seed=0):
    """Every op case of the zoo networks ``names`` (``shapes.NETWORKS`` keys; their layer rows
    read off the zoo's models by ``shapes.net_table``) on the active backend (batch sizes times
    ``batch_scale``); ``tr`` (a ``TorchSide`` or None) adds the PyTorch closures."""
    ks = backend.kernels()
    rng = np.random.default_rng(seed)
    out = []
    for net, n, specs in map(shapes.net_table, names):
        n = max(1, int(round(n * batch_scale)))
        for spec in specs:
            kind = spec.kind
            if kind in ("conv", "first"):
                out += _conv_cases(ks, tr, rng, net, n, spec)
            elif kind == "transpose":
                out += _transpose_cases(ks, tr, rng, net, n, spec)
            elif kind in ("max", "avg"):
                out += _pool_cases(ks, tr, rng, net, n, spec)
            else:
                out += _xent_cases(ks, tr, rng, net, n, spec)
    return out


# Each timed sample of an op is a burst of back-to-back calls lasting about this long, after
# untimed calls for LEAD_SECONDS (the other side's spinning threads settle; see
# ``_timing.interleaved``).
BURST_SECONDS = 0.02
LEAD_SECONDS = 0.02


def run(op_cases, gpucnn_sync, torch_sync, warmup, repeats, budget, lead=None):
    """Time every case, gpucnn and PyTorch interleaved; fills ``case.results`` (the median of
    ``repeats`` samples, or as many as fit in ``budget`` seconds per side, 5 to 15)."""
    lead = LEAD_SECONDS if lead is None else lead
    for case in op_cases:
        sides = [_timing.Side("gpucnn", case.gpucnn, gpucnn_sync)]
        if case.torch is not None:
            sides.append(_timing.Side("torch", case.torch, torch_sync))
        # one call each to size the bursts (after compilation/caches on the first call)
        probe = _timing.interleaved(
            [_timing.Side(s.name, s.run, s.sync) for s in sides], warmup, 1, lead=lead)
        longest = max(p.median for p in probe)
        burst = max(1, int(BURST_SECONDS / max(longest, 1e-6))) if lead else 1
        reps = repeats or _timing.repeat_count(longest * burst, budget, 5, 15)
        _timing.interleaved(sides, 0, reps, lead=lead, burst=burst)
        case.results = {s.name: s.median for s in sides}
    return op_cases
