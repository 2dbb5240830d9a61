"""The accuracy section of the GPU check (``python -m gpucnn.gpucheck``): every contract
function of the cuda set at the guide's layer sizes against the NumPy set, and on a GPU the
cheap CuPy launch path against Numba's own launcher (bitwise).
"""
from __future__ import annotations

import math

import numpy as np

from gpucnn.bench import shapes
from gpucnn.bench.check_context import DeviceLost

FWD_TOL, GRAD_TOL, BUG_TOL = 1e-5, 1e-4, 1e-3


def rel_err(ctx, got, want):
    got = np.asarray(ctx.host(got), np.float64)
    want = np.asarray(want, np.float64)
    if got.shape != want.shape:
        return math.inf
    nan = np.isnan(want)
    if not np.array_equal(np.isnan(got), nan):
        return math.inf
    if nan.all():
        return 0.0
    return float(np.abs(got[~nan] - want[~nan]).max() / max(np.abs(want[~nan]).max(), 1e-30))


def accuracy_cases(ctx):
    """(label, shape text, contract name, args, tolerance) at realistic sizes (batch cut for the
    CPU reference: 16 for LeNet-5, 4 for AlexNet)."""
    convs, pools = shapes.gpu_layers(ctx.tiny)
    r = ctx.rand
    out = []
    for c in convs:
        c = c.batch(16 if c.net == "lenet" else 4)
        ys, pad = c.geometry()
        st = (c.stride, c.stride)
        tag = f"{c.net} {c.name}"
        shp = f"x{c.x} w{c.w}"
        out += [(f"{tag} conv2d_forward (+bias, {c.act})", shp, "conv2d_forward",
                 (r(*c.x), r(*c.w, scale=0.1), r(c.filters), st, pad, c.act), FWD_TOL),
                (f"{tag} conv2d_backward_input", shp, "conv2d_backward_input",
                 (r(*ys), r(*c.w, scale=0.1), c.x, st, pad), GRAD_TOL),
                (f"{tag} conv2d_backward_weight", shp, "conv2d_backward_weight",
                 (r(*c.x), r(*ys), c.w, st, pad), GRAD_TOL),
                (f"{tag} bias_grad", f"dy{ys}", "bias_grad", (r(*ys),), GRAD_TOL)]
    for p in pools:
        p = p.batch(16 if p.net == "lenet" else 4)
        ys, pad = p.geometry()
        geo = ((p.k, p.k), (p.stride, p.stride), pad)
        tag, shp = f"{p.net} {p.name}", f"x{p.x} {p.k}x{p.k}/{p.stride}"
        xv, dy = r(*p.x), r(*ys)
        back = (dy, ctx.N.max_pool_forward(xv, *geo)[1], p.x, *geo) if p.kind == "max" else \
            (dy, p.x, *geo)
        fwd, bwd = f"{p.kind}_pool_forward", f"{p.kind}_pool_backward"
        out += [(f"{tag} {fwd}", shp, fwd, (xv, *geo), FWD_TOL),
                (f"{tag} {bwd}", shp, bwd, back, GRAD_TOL)]
    rows, k = (4, 7) if ctx.tiny else (128, 1000)
    e = (3, 5, 7) if ctx.tiny else (32, 55, 55, 96)
    z = r(rows, k, scale=3.0)
    lab = ctx.rng.integers(0, k, rows)
    p = ctx.N.softmax_forward(z)
    for act in ("relu", "tanh", "sigmoid"):
        y = ctx.N.act_forward(r(*e), act)
        out += [(f"act_forward {act}", f"{e}", "act_forward", (r(*e), act), FWD_TOL),
                (f"act_backward {act}", f"{e}", "act_backward", (r(*e), y, act), GRAD_TOL)]
    out += [("softmax_forward", f"({rows}, {k})", "softmax_forward", (z,), FWD_TOL),
            ("softmax_backward", f"({rows}, {k})", "softmax_backward", (r(rows, k), p), GRAD_TOL),
            ("log_softmax_forward", f"({rows}, {k})", "log_softmax_forward", (z,), FWD_TOL),
            ("log_softmax_backward", f"({rows}, {k})", "log_softmax_backward",
             (r(rows, k), ctx.N.log_softmax_forward(z)), GRAD_TOL)]
    d = (5, 9) if ctx.tiny else (128, 4096)
    soft, yd, yb = ctx.N.softmax_forward(r(rows, k)), r(*d), (r(*d) > 0).astype(np.float32)
    for loss, t, y in (("sparse_cce", lab, p), ("sparse_cce_logits", lab, z), ("cce", soft, p),
                       ("cce_logits", soft, z), ("bce", yb, ctx.N.act_forward(r(*d), "sigmoid")),
                       ("bce_logits", yb, r(*d)), ("mse", yd, r(*d)), ("mae", yd, r(*d))):
        _, stats = ctx.N.loss_forward(loss, t, y)
        out += [(f"loss_forward {loss}", f"{y.shape}", "loss_forward", (loss, t, y), FWD_TOL),
                (f"loss_backward {loss}", f"{y.shape}", "loss_backward",
                 (loss, np.array(0.5, np.float32), t, y, stats), GRAD_TOL)]
    out.append(("dropout_mask (bit-exact)", f"{d} rate 0.5", "dropout_mask",
                (d, 0.5, 1234, 7, np.float32), 0.0))
    n = 50 if ctx.tiny else 1 << 20
    out += [("sgd_update (momentum, nesterov, wd)", f"({n},)", "sgd_update",
             (r(n), r(n), r(n), 0.01, 0.9, True, 1e-4), FWD_TOL),
            ("adam_update (t=3, wd)", f"({n},)", "adam_update",
             (r(n), r(n), r(n, scale=0.1), np.abs(r(n)), 1e-3, 0.9, 0.999, 1e-7, 3, 1e-2),
             FWD_TOL),
            ("rmsprop_update (wd)", f"({n},)", "rmsprop_update",
             (r(n), r(n), np.abs(r(n)), 1e-3, 0.9, 1e-7, 1e-4), FWD_TOL)]
    return out


IN_PLACE = {"sgd_update": (0, 2), "adam_update": (0, 2, 3), "rmsprop_update": (0, 2)}


def _run_case(ctx, fn, args):
    """``(cuda outputs, numpy outputs)`` as tuples of arrays."""
    dev = [ctx.dev(a.copy()) if isinstance(a, np.ndarray) else a for a in args]
    ref = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
    got = getattr(ctx.C, fn)(*dev)
    want = getattr(ctx.N, fn)(*ref)
    if fn in IN_PLACE:
        return tuple(dev[i] for i in IN_PLACE[fn]), tuple(ref[i] for i in IN_PLACE[fn])
    if not isinstance(want, tuple):
        got, want = (got,), (want,)
    return zip(*[(g, w) for g, w in zip(got, want) if w is not None])   # a loss's absent stats


def check_accuracy(ctx):
    rows = ctx.table("accuracy")
    for label, shape, fn, args, tol in accuracy_cases(ctx):
        lost = None
        try:
            got, want = _run_case(ctx, fn, args)
            ctx.sync()
            if tol == 0.0:
                err = 0.0 if all(np.array_equal(ctx.host(g), w) for g, w in zip(got, want)) \
                    else math.inf
            else:
                err = max(rel_err(ctx, g, w) for g, w in zip(got, want) if w.dtype.kind == "f")
                if any(w.dtype.kind in "iu" and not np.array_equal(ctx.host(g), w)
                       for g, w in zip(got, want)):
                    err = math.inf
            verdict = "ok" if err <= tol else ("high" if err <= BUG_TOL else "WRONG")
        except Exception as e:  # noqa: BLE001 - report and go on
            err, verdict = math.nan, f"ERROR {type(e).__name__}: {e}"[:160]
            try:
                ctx.check_device()
            except DeviceLost as d:
                lost = d
        if verdict not in ("ok", "high"):
            ctx.fail(f"accuracy: {label}: {verdict} (rel err {err:.2e})")
        rows.append((label, shape, err, tol, verdict))
        print(f"  [1] {label:48s} rel err {err:.2e} {verdict}", flush=True)
        if lost is not None:
            raise lost
    _launch_path_agreement(ctx, rows)
    return rows


def _launch_path_agreement(ctx, rows):
    """On a GPU: the same calls through CuPy's launcher (raw) and Numba's give identical bits."""
    if not ctx.gpu:
        return
    C = ctx.C
    c = shapes.gpu_layers(ctx.tiny)[0][1]
    ys, pad = c.geometry()
    x, w, b = (ctx.dev(ctx.rand(*c.batch(8).x)), ctx.dev(ctx.rand(*c.w)),
               ctx.dev(ctx.rand(c.filters)))
    z = ctx.dev(ctx.rand(64, 1000))
    calls = {
        "conv2d_forward": lambda: C.conv2d_forward(x, w, b, (c.stride,) * 2, pad, c.act),
        "conv2d_backward_weight": lambda: C.conv2d_backward_weight(
            x, C.conv2d_forward(x, w, b, (c.stride,) * 2, pad, c.act), c.w, (c.stride,) * 2, pad),
        "loss_forward": lambda: C.loss_forward("sparse_cce_logits", ctx.dev(np.arange(64) % 1000),
                                               z),
        "dropout_mask": lambda: C.dropout_mask((256, 1000), 0.5, 99, 3, np.float32),
    }
    before = C.launch_path()
    try:
        for name, call in calls.items():
            outs = {}
            try:
                for path in ("raw", "numba"):
                    C.set_launch_path(path)
                    r = call()
                    outs[path] = [ctx.host(a) for a in (r if isinstance(r, tuple) else (r,))]
                same = all(np.array_equal(a, b, equal_nan=True)
                           for a, b in zip(outs["raw"], outs["numba"]))
                verdict = "ok" if same else "WRONG"
            except Exception as e:  # noqa: BLE001 - report and go on
                same, verdict = False, f"ERROR {type(e).__name__}: {e}"[:160]
            if not same:
                ctx.fail(f"launch paths: {name}: {verdict}")
            rows.append((f"raw launch == Numba launch: {name}", "bitwise",
                         0.0 if same else math.nan, 0.0, verdict))
            print(f"  [1] raw vs numba launch {name}: {verdict}", flush=True)
            if not same:
                ctx.check_device()
    finally:
        C.set_launch_path(before)
