"""The ops section of the GPU check (``python -m gpucnn.gpucheck``): every kernel timed with
CUDA events beside PyTorch (cuDNN, fp32, TF32 off), the convolutions' GFLOP/s against the fp32
peak (again on the baseline conv kernels, and on gpucnn's TF32 kernels beside cuDNN with TF32
off and on), and the conv tile sweep.
"""
from __future__ import annotations

import contextlib
import math

import numpy as np

from gpucnn.bench import shapes, torch_ref
from gpucnn.bench.check_accuracy import GRAD_TOL, rel_err
from gpucnn.bench.check_context import ratio, torch_twins

#: A TF32 conv's result against the fp32 one (``rel_err``: the largest error over the largest
#: output). TF32 rounds each operand by up to 2**-11 relatively: about 1e-3 at these sizes.
TF32_TOL = 1e-2

def time_ops(ctx):
    """Rows (net, layer, op, shape, ours ms, GFLOP/s, % peak, torch ms, ratio)."""
    convs, pools = shapes.gpu_layers(ctx.tiny)
    rows = ctx.table("ops")

    def add(net, layer, op, shape, ours_fn, flops=None, torch_fn=None, ms=None):
        """One row; ``ms``: ours already timed (a second reference for the same call)."""
        if ms is None:
            ms = ctx.attempt(f"timing {net} {layer} {op}", lambda: ctx.median_ms(ours_fn))
        tms = math.nan if torch_fn is None else ctx.torch_try(
            f"[3] torch {net} {layer} {op}", lambda: ctx.torch_ms(torch_fn))
        gflops = ratio(flops or math.nan, ms * 1e6)
        pct = ratio(100.0 * gflops, ctx.info.get("fp32_peak_gflops") or math.nan)
        rows.append((net, layer, op, shape, ms, gflops, pct, tms, ratio(tms, ms)))
        print(f"  [2] {net:8s} {layer:6s} {op:22s} {ms:9.3f} ms"
              + (f"  torch {tms:9.3f} ms" if tms == tms else ""), flush=True)
        return ms

    for c in convs:
        with ctx.case(f"timing {c.net} {c.name}"):
            _time_conv(ctx, add, c)
    for p in pools:
        with ctx.case(f"timing {p.net} {p.name}"):
            _time_pool(ctx, add, p)
    _time_rows(ctx, add)
    return rows


def _conv_calls(ctx, c):
    """``(x, w, b, dy, output shape, pad)`` of conv row ``c`` made on the device, and its
    ``(forward, input gradient, weight gradient)`` calls."""
    C = ctx.C
    ys, pad = c.geometry()
    st = (c.stride, c.stride)
    x, w, b, dy = (ctx.dev(ctx.rand(*c.x)), ctx.dev(ctx.rand(*c.w, scale=0.1)),
                   ctx.dev(ctx.rand(c.filters)), ctx.dev(ctx.rand(*ys)))
    return (x, w, b, dy, ys, pad), (lambda: C.conv2d_forward(x, w, b, st, pad, c.act),
                                    lambda: C.conv2d_backward_input(dy, w, c.x, st, pad),
                                    lambda: C.conv2d_backward_weight(x, dy, c.w, st, pad))


def _time_conv(ctx, add, c):
    (x, w, b, dy, ys, pad), fns = _conv_calls(ctx, c)
    shape = f"x{c.x} k{c.k} s{c.stride} {c.padding} -> {ys}"
    t = torch_twins(ctx, torch_ref.gpu_conv_twins, x, w, b, dy, (c.stride,) * 2, pad, c.act,
                    c.filters)
    # a strided input gradient runs decomposed by residue class (gemm.py): its rows say so
    calls = tuple(zip((f"conv fwd+bias+{c.act}",
                       "conv bwd input" + (" (decomposed)" if c.stride > 1 else ""),
                       "conv bwd weight"), fns, ("fwd", "bwd_input", "bwd_weight")))
    for label, fn, key in calls:
        add(c.net, c.name, label, shape, fn, c.flops(), t.get(key))
    add(c.net, c.name, "bias grad", f"dy{ys}", lambda: ctx.C.bias_grad(dy), None, t.get("bias"))
    new = {}
    for label, fn, _ in calls:
        got = ctx.attempt(f"{c.net} {c.name} {label} (igemm2)", lambda: ctx.host(fn()),
                          default=None)
        if got is not None:
            new[label] = got
    _time_conv_variants(ctx, add, c, shape, calls, t, new)


def _plain(label):
    """A row's label for kernels that do not decompose the strided input gradient."""
    return label.replace(" (decomposed)", "")


def _err(ctx, family, c, label, fn, new):
    """``fn()``'s relative error against igemm2's fp32 result ``new[label]`` (0 where there is
    none; NaN, said and the device checked, when ``fn`` raises)."""
    return ctx.attempt(f"[2] {family} {c.name} {label}",
                       lambda: rel_err(ctx, fn(), new[label]) if label in new else 0.0, quiet=True)


def _time_conv_variants(ctx, add, c, shape, calls, t, new):
    """The conv calls again in the same run, each result first checked against igemm2's fp32
    one (``new``): on the baseline conv kernels (``conv.set_conv_kernels``; within ``GRAD_TOL``,
    fewer repeats: it is the reference point), so that the igemm2 kernels' speed-up is the ratio
    of two rows of one table; then on gpucnn's TF32 kernels (``float32_matmul_precision("high")``;
    within ``TF32_TOL``): a row ``[tf32]`` beside cuDNN with TF32 off (the fp32 rows'
    reference) and a row ``[tf32 vs cuDNN tf32]`` beside cuDNN with TF32 on, from one timing of
    ours."""
    from gpucnn.kernels import _precision

    @contextlib.contextmanager
    def baseline():
        with ctx.C.instruments().conv_kernels("baseline"), ctx.fewer_repeats():
            yield

    torch = ctx.torch
    for family, kernels, tol, what in (
            ("baseline", baseline, GRAD_TOL, "baseline and igemm2 differ by {:.2e}"),
            ("tf32", lambda: _precision.float32_matmul_precision("high"), TF32_TOL,
             f"TF32 and fp32 differ by {{:.2e}} (expected <= {TF32_TOL:.0e})")):
        for label, fn, key in calls:
            with kernels():
                err = _err(ctx, family, c, label, fn, new)
                if not err <= tol:
                    ctx.fail(f"{c.net} {c.name} {label}: " + what.format(err))
                ms = add(c.net, c.name, f"{_plain(label)} [{family}]", shape, fn, c.flops(),
                         t.get(key))
            if family == "baseline" or torch is None:
                continue
            before = torch.backends.cudnn.allow_tf32
            torch.backends.cudnn.allow_tf32 = True
            try:
                add(c.net, c.name, f"{_plain(label)} [tf32 vs cuDNN tf32]", shape, fn, c.flops(),
                    t.get(key), ms=ms)
            finally:
                torch.backends.cudnn.allow_tf32 = before


def _time_pool(ctx, add, p):
    C = ctx.C
    ys, pad = p.geometry()
    geo = ((p.k, p.k), (p.stride, p.stride), pad)
    x, dy = ctx.dev(ctx.rand(*p.x)), ctx.dev(ctx.rand(*ys))
    shape = f"x{p.x} {p.k}x{p.k}/{p.stride}"
    t = torch_twins(ctx, torch_ref.gpu_pool_twins, p.kind, x, dy, p.k, p.stride)
    if p.kind == "max":
        _, idx = C.max_pool_forward(x, *geo)
        fns = (lambda: C.max_pool_forward(x, *geo), lambda: C.max_pool_backward(dy, idx, p.x, *geo))
    else:
        fns = (lambda: C.avg_pool_forward(x, *geo), lambda: C.avg_pool_backward(dy, p.x, *geo))
    for way, fn in zip(("fwd", "bwd"), fns):
        add(p.net, p.name, f"{p.kind} pool {way}", shape, fn, None, t.get(way))


def _time_rows(ctx, add):
    """Softmax, cross-entropy, activations, dropout and optimizers at the networks' sizes."""
    C = ctx.C
    for net, rows_, k in (("lenet", 128, 10), ("alexnet", 32, 1000)):
        if ctx.tiny:
            rows_, k = 2, 5
        with ctx.case(f"timing {net} softmax"):
            z = ctx.dev(ctx.rand(rows_, k))
            lab = ctx.dev(ctx.rng.integers(0, k, rows_))
            _, stats = C.loss_forward("sparse_cce_logits", lab, z)
            g = ctx.dev(np.array(1.0, np.float32))
            t = torch_twins(ctx, torch_ref.gpu_softmax_twins, z, lab)
            add(net, "output", "sparse CE from logits fwd", f"({rows_}, {k})",
                lambda: C.loss_forward("sparse_cce_logits", lab, z), None, t.get("xent"))
            add(net, "output", "sparse CE from logits bwd", f"({rows_}, {k})",
                lambda: C.loss_backward("sparse_cce_logits", g, lab, z, stats), None, None)
            add(net, "output", "softmax fwd", f"({rows_}, {k})", lambda: C.softmax_forward(z),
                None, t.get("softmax"))
    e = (2, 5, 5, 4) if ctx.tiny else (32, 55, 55, 96)
    with ctx.case("timing relu"):
        x = ctx.dev(ctx.rand(*e))
        y = C.act_forward(x, "relu")
        t = torch_twins(ctx, torch_ref.gpu_relu_twins, x, y)
        add("alexnet", "conv1", "relu fwd", f"{e}", lambda: C.act_forward(x, "relu"), None,
            t.get("fwd"))
        add("alexnet", "conv1", "relu bwd", f"{e}", lambda: C.act_backward(x, y, "relu"), None,
            t.get("bwd"))
    d = (2, 16) if ctx.tiny else (128, 4096)
    add("alexnet", "fc6", "dropout mask", f"{d}", lambda: C.dropout_mask(d, 0.5, 1, 2, np.float32),
        None, None)
    n = 64 if ctx.tiny else 9216 * 4096
    with ctx.case("timing optimizer updates"):
        p, g, m, v = (ctx.dev(ctx.rand(n)) for _ in range(4))
        v = abs(v)
        tadam = torch_twins(ctx, torch_ref.gpu_adam_twin, n).get("step")
        add("alexnet", "fc6", "adam update", f"({n},)",
            lambda: C.adam_update(p, g, m, v, 1e-4, 0.9, 0.999, 1e-7, 10, 0.0), None, tadam)
        add("alexnet", "fc6", "sgd momentum update", f"({n},)",
            lambda: C.sgd_update(p, g, m, 1e-4, 0.9, False, 0.0), None, None)


def tile_sweep(ctx):
    """The conv tiles of ``conv.CANDIDATE_TILES`` against the default choice, per GEMM mode, on
    the AlexNet layers (checked against the default tile's result, then timed)."""
    cv = ctx.C.instruments()
    convs, _ = shapes.gpu_layers(ctx.tiny)
    chosen = [c for c in convs if c.net == "alexnet"]
    if not ctx.tiny:
        chosen = [c for c in chosen if c.name in ("conv1", "conv2", "conv4")]
    rows = ctx.table("sweep")
    with ctx.fewer_repeats():                   # extra information: fewer runs
        for c in chosen:
            _sweep_layer(ctx, cv, c, rows)
    return rows


def _sweep_layer(ctx, cv, c, rows):
    _, (fwd, bwd_input, bwd_weight) = _conv_calls(ctx, c)
    fwd_mode, bwd_input_mode, bwd_weight_mode = cv.CONV_MODES
    calls = {fwd_mode: (c.filters, fwd), bwd_input_mode: (c.x[3], bwd_input),
             bwd_weight_mode: (c.filters, bwd_weight)}
    if c.stride > 1 and not ctx.tiny:
        del calls[bwd_input_mode]   # the first layer's input gradient: never needed, very slow
    for mode, (ncols, call) in calls.items():
        default = cv.choose_tile(mode, ncols)
        want = ctx.attempt(f"tile sweep {c.name} {cv.MODE_NAMES[mode]}: the default tile failed",
                           lambda: ctx.host(call()), default=None)
        if want is None:
            continue
        base = math.nan
        tiles = (default,) + tuple(t for t in ([] if ctx.tiny else cv.CANDIDATE_TILES[mode])
                                   if t != default)
        for tile in tiles:
            with cv.tile(mode, tile):
                err, ms = ctx.attempt(f"[4] tile {tile}", lambda: (rel_err(ctx, call(), want),
                                                                    ctx.median_ms(call)),
                                      quiet=True, default=(math.nan, math.nan))
            if tile == default:
                base = ms
            if not err <= GRAD_TOL:
                ctx.fail(f"tile sweep {c.name} {cv.MODE_NAMES[mode]} {tile}: "
                         f"rel err {err:.2e} against the default tile")
            label = "/".join(map(str, tile[:3])) + f" {tile.tm}x{tile.tn} " \
                f"b{tile.min_blocks}" + (" (default)" if tile == default else "")
            rows.append((f"{c.net} {c.name}", cv.MODE_NAMES[mode], label, ms,
                         ratio(c.flops(), ms * 1e6), ratio(base, ms), err))
            print(f"  [4] {c.name} {cv.MODE_NAMES[mode]:10s} {label:28s} {ms:9.3f} ms",
                  flush=True)
