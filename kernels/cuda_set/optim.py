"""Optimizer updates in place on the parameter and its slots, one fused kernel per optimizer
family: each element is read once and written once. Formulas (Keras 3's, as the NumPy set has
them; ``lrwd = lr * weight_decay`` is Keras's decoupled weight decay, applied first):

SGD      p -= lrwd * p;  momentum 0: p -= lr * g;  else v = mu * v - lr * g and
         p += v (plain) or p += mu * v - lr * g (Nesterov, with the new v)
Adam     p -= lrwd * p;  m += (g - m)(1 - b1);  v += (g^2 - v)(1 - b2);
         amsgrad: vhat = max(vhat, v) stands for v;  p -= m * alpha / (sqrt(v) + eps),
         alpha = lr * sqrt(1 - b2^t) / (1 - b1^t)
RMSprop  p -= lrwd * p;  s = rho s + gain g^2 (gain = 1 - rho);  centered: mg = rho mg + gain g,
         d = s - mg^2 + eps, else d = s + eps;  step = lr g / sqrt(d);
         momentum: u = mu u + step, p -= u;  else p -= step.  Adagrad: rho = gain = 1.

Hyperparameters are combined on the host in float64 and passed in the parameter's dtype;
optional slots are switched by int64 flags (absent ones get a dummy array), so a float32 kernel
holds no float64 constant.

Every update is checked where it is computed, at no extra launch or synchronisation: an element
whose gradient or new weight is not finite keeps its weight and slots and records the launch's
``tag`` (one per tensor) in the one-element int64 ``flag`` in device memory (compare-and-swap,
the lowest tag kept); a launch that finds a lower tag there returns at once, so every update
after a refused one is refused too, inside a CUDA graph as well. The host reads the flag when it
reads the loss anyway (``Optimizer.check_updates``). Without a flag a launcher makes one and
reads it back at once (a synchronisation), raising FloatingPointError.
"""
from __future__ import annotations

import functools
import itertools
import math
import operator

import numpy as np
from numba import types

from ._launch import (NB_FLOAT, Bound, KernelSpec, Plans, arr, contig, dtname, dummy,
                      float_dtype, float_variants, kernel_factory, launch, to_host, xp)
from ._runtime import numba_cuda as cuda
from .vector import FULL, HALF, stream_grid

#: Threads per block of the grid-stride update kernels, and the blocks per SM each family is
#: compiled for (its launch bounds; ``stream_grid`` launches one wave of them): SGD fits 32
#: registers, Adam and RMSprop 64.
OPTIM_BLOCK = 256
PER_SM = {"sgd": FULL, "adam": HALF, "rmsprop": HALF}
#: The refusal flag's type: one int64 in device memory, 0 until an update is refused.
FLAG = arr("int64", 1)


@cuda.jit(device=True, inline="always")
def refused_before(flag, tag):
    """Whether an update tagged below ``tag`` was refused (then this one is too): one load,
    the same for every thread of a launch, so the launch changes nothing."""
    f = flag[0]
    return f != 0 and f < tag


@functools.lru_cache(maxsize=None)
def element_updates(dtype: str):
    """The per-element updates of the three families as device functions, shared by the
    one-tensor kernels and the multi-tensor ones: ``*_elem(arrays..., i, scalars...)`` updates
    element ``i`` in place."""
    dt = NB_FLOAT[np.dtype(dtype)]

    @cuda.jit(device=True, inline="always")
    def refuse(flag, tag):
        """Record the refused update ``tag`` in ``flag[0]`` unless an earlier tag is there."""
        old = flag[0]
        while old == 0 or old > tag:
            seen = cuda.atomic.cas(flag, 0, old, tag)
            if seen == old:
                break
            old = seen

    @cuda.jit(device=True, inline="always")
    def sgd_elem(p, g, v, i, lr, mu, lrwd, nesterov, use_v, use_wd, flag, tag):
        pi = p[i]
        if use_wd != 0:
            pi = pi - pi * lrwd                          # decoupled weight decay
        gi = g[i]
        vi = gi
        if use_v != 0:
            vi = mu * v[i] - lr * gi
            if nesterov != 0:
                pi = pi + (mu * vi - lr * gi)
            else:
                pi = pi + vi
        else:
            pi = pi - lr * gi
        if math.isfinite(gi) and math.isfinite(pi):      # else the element stays as it was
            p[i] = pi
            if use_v != 0:
                v[i] = vi
        else:
            refuse(flag, tag)

    @cuda.jit(device=True, inline="always")
    def adam_elem(p, g, m, v, vhat, i, lrwd, omb1, omb2, alpha, eps, use_vhat, use_wd, flag, tag):
        pi = p[i]
        if use_wd != 0:
            pi = pi - pi * lrwd                          # decoupled weight decay
        gi = g[i]
        mi = m[i]
        mi = mi + (gi - mi) * omb1
        vi = v[i]
        vi = vi + (gi * gi - vi) * omb2
        vh = vi
        if use_vhat != 0:                                # amsgrad: the running maximum of v
            vh = vhat[i]
            if vi > vh:
                vh = vi
        pi = pi - mi * alpha / (dt(math.sqrt(vh)) + eps)
        if math.isfinite(gi) and math.isfinite(pi):      # else the element stays as it was
            p[i] = pi
            m[i] = mi
            v[i] = vi
            if use_vhat != 0:
                vhat[i] = vh
        else:
            refuse(flag, tag)

    @cuda.jit(device=True, inline="always")
    def rmsprop_elem(p, g, s, mg, u, i, lr, rho, gain, mu, eps, lrwd, use_mg, use_u, use_wd,
                     flag, tag):
        pi = p[i]
        if use_wd != 0:
            pi = pi - pi * lrwd                          # decoupled weight decay
        gi = g[i]
        si = rho * s[i] + gain * (gi * gi)
        mgi = gi
        if use_mg != 0:
            mgi = rho * mg[i] + gain * gi
            d = si - mgi * mgi + eps
        else:
            d = si + eps
        step = lr * gi / dt(math.sqrt(d))
        if use_u != 0:
            step = mu * u[i] + step
        pi = pi - step
        if math.isfinite(gi) and math.isfinite(pi):      # else the element stays as it was
            p[i] = pi
            s[i] = si
            if use_mg != 0:
                mg[i] = mgi
            if use_u != 0:
                u[i] = step
        else:
            refuse(flag, tag)

    return {"sgd": sgd_elem, "adam": adam_elem, "rmsprop": rmsprop_elem}


#: family -> (arrays per tensor, scalar argument types as "f"/"n") of its update.
FAMILIES = {"sgd": (3, "fffnnn"), "adam": (5, "fffffnn"), "rmsprop": (5, "ffffffnnn")}


def _variants():
    return [{"family": f, "dtype": d} for f in FAMILIES for d in ("float32", "float64")]


def _argtypes(family, dtype, arrays, ints):
    a, f, n = arr(dtype, 1), NB_FLOAT[np.dtype(dtype)], types.int64
    return ((a,) * arrays + (n,) * ints + tuple(f if c == "f" else n for c in FAMILIES[family][1])
            + (FLAG, n))


def _compiled(family, dtype, name, lines):
    env = {"cuda": cuda, "elem": element_updates(dtype)[family], "refused_before": refused_before}
    exec(compile("\n".join(lines) + "\n", f"<gpucnn {name} {family}>", "exec"), env)
    return env[name]


@kernel_factory(_variants)
def update_kernel(family: str, dtype: str):
    """The one-tensor update of ``family``, in place on flat arrays, one thread per element (a
    grid-stride loop): ``k(arrays..., scalars..., flag, tag)`` with the arrays and scalars of
    ``element_updates``' ``*_elem`` (SGD p, g, v, then lr, mu, lrwd, nesterov, use_v, use_wd;
    Adam p, g, m, v, vhat, then lrwd, omb1 = 1 - b1, omb2 = 1 - b2, alpha = lr * sqrt(1 - b2^t)
    / (1 - b1^t), eps, use_vhat, use_wd; RMSprop p, g, s, mg, u, then lr, rho, gain, mu, eps,
    lrwd, use_mg (centered), use_u (momentum), use_wd); g is read only, a slot is touched only
    when its flag says so."""
    nk, scal = FAMILIES[family]
    args = ", ".join([f"a{k}" for k in range(nk)])
    scalars = ", ".join(f"s{j}" for j in range(len(scal)))
    kern = _compiled(family, dtype, f"{family}_k", [
        f"def {family}_k({args}, {scalars}, flag, tag):",
        "    if refused_before(flag, tag):",
        "        return",
        "    for i in range(cuda.grid(1), a0.size, cuda.gridsize(1)):",
        f"        elem({args}, i, {scalars}, flag, tag)"])
    return KernelSpec(f"{family}[{dtype}]", kern, _argtypes(family, dtype, nk, 0),
                      (OPTIM_BLOCK, PER_SM[family]))


#: Tensors one multi-tensor launch updates (their arrays and sizes are kernel parameters:
#: 12 tensors of Adam's 5 arrays take 3.4 KB of the 4 KB a launch may carry).
MULTI = 12


@kernel_factory(_variants)
def multi_update_kernel(family: str, dtype: str):
    """One launch updating up to ``MULTI`` tensors of an optimizer family: tensor t's arrays are
    parameters ``a{t}_{k}`` and its elements the flat indices ``[e{t-1}, e{t})`` of a grid-stride
    loop over all of them (``e`` the running sums of their sizes; unused slots have e equal to
    the total). The source is generated once per family: Numba kernels take a fixed list of
    arrays, and an ``if`` chain picks the tensor an index falls in."""
    nk, scal = FAMILIES[family]
    arrays = [[f"a{t}_{k}" for k in range(nk)] for t in range(MULTI)]
    ends = [f"e{t}" for t in range(MULTI)]
    scalars = [f"s{j}" for j in range(len(scal))]
    params = [a for group in arrays for a in group] + ends + scalars + ["flag", "tag"]
    lines = [f"def multi_k({', '.join(params)}):",
             "    if refused_before(flag, tag):",
             "        return",
             f"    for i in range(cuda.grid(1), e{MULTI - 1}, cuda.gridsize(1)):"]
    for t in range(MULTI):
        head = "if" if t == 0 else "elif"
        start = "i" if t == 0 else f"i - e{t - 1}"
        lines.append(f"        {head} i < e{t}:")
        lines.append(f"            elem({', '.join(arrays[t])}, {start}, {', '.join(scalars)}, "
                     f"flag, tag + {t})")
    return KernelSpec(f"multi_{family}[{dtype},{MULTI}]",
                      _compiled(family, dtype, "multi_k", lines),
                      _argtypes(family, dtype, nk * MULTI, MULTI), (OPTIM_BLOCK, PER_SM[family]))


# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------

def _grid(n, family):
    return stream_grid(n, OPTIM_BLOCK, PER_SM[family]), (OPTIM_BLOCK,)


def _own_flag(flag):
    """The refusal flag to launch with: ``flag``, or a new one the launcher reads back."""
    return xp.zeros(1, np.int64) if flag is None else flag


def _read_own(op, flag, own):
    """Without a caller's flag, read the launcher's own (a synchronisation) and raise."""
    if flag is None and int(to_host(own)[0]):
        raise FloatingPointError(f"{op}: the new weight is not finite at some elements; they "
                                 "were left as they were")


def _sgd_scalars(lr, momentum, nesterov, weight_decay):
    """The SGD kernels' scalars (``use_v``, the fifth, is ``momentum != 0``)."""
    lr, momentum, lrwd = float(lr), float(momentum), float(lr) * float(weight_decay)
    return lr, momentum, lrwd, int(bool(nesterov)), int(momentum != 0.0), int(lrwd != 0.0)


def _adam_scalars(op, lr, beta1, beta2, eps, t, weight_decay, amsgrad):
    lr, beta1, beta2, t = float(lr), float(beta1), float(beta2), int(t)
    if t < 1:
        raise ValueError(f"{op}: t expected the 1-based step >= 1, got {t}")
    lrwd = lr * float(weight_decay)
    alpha = lr * math.sqrt(1.0 - beta2 ** t) / (1.0 - beta1 ** t)
    return lrwd, 1.0 - beta1, 1.0 - beta2, alpha, float(eps), int(amsgrad), int(lrwd != 0.0)


def _rmsprop_scalars(lr, rho, eps, weight_decay, momentum, gain, centered):
    """The RMSprop kernels' scalars (``use_u``, the eighth, is ``momentum != 0``)."""
    lr, rho, momentum = float(lr), float(rho), float(momentum)
    gain = 1.0 - rho if gain is None else float(gain)
    lrwd = lr * float(weight_decay)
    return (lr, rho, gain, momentum, float(eps), lrwd, int(centered), int(momentum != 0.0),
            int(lrwd != 0.0))


def _run_one(op, family, p, g, slots, optional, scalars, flag, tag):
    """The one-tensor update of ``p`` with ``slots`` (name -> array, in the kernel's order;
    those in ``optional`` may be None, then a dummy goes in their place), on flat contiguous
    views of the in-place arrays, copied back at the end when a view was not possible (a
    non-contiguous parameter)."""
    dt = float_dtype(op, p)
    pairs, flat = [], {}
    for name, a in (("p", p), *slots.items()):
        if a is None:
            continue
        if tuple(a.shape) != tuple(p.shape) or a.dtype != dt:
            raise ValueError(f"{op}: {name} must match p ({tuple(p.shape)}, {dt}), got "
                             f"{tuple(a.shape)}, {a.dtype}")
        c = a if (a.flags.c_contiguous and isinstance(a, xp.ndarray)) else contig(a)
        pairs.append((a, c))
        flat[name] = c.reshape(-1)
    g = contig(g, dt)
    if tuple(g.shape) != tuple(p.shape):
        raise ValueError(f"{op}: g must have the shape of p {tuple(p.shape)}, got "
                         f"{tuple(g.shape)}")
    own = _own_flag(flag)
    arrays = [flat[n] if n in flat or n not in optional else dummy(dt) for n in slots]
    launch(update_kernel(family, dtname(dt)), *_grid(flat["p"].size, family), flat["p"],
           g.reshape(-1), *arrays, *scalars, own, int(tag))
    for a, c in pairs:
        if c is not a:
            a[...] = c if isinstance(a, type(c)) else to_host(c)
    _read_own(op, flag, own)


def sgd_update(p, g, v, lr, momentum, nesterov, weight_decay, flag=None, tag=1):
    """SGD as Keras 3 writes it (decoupled weight decay), in place on ``p`` and ``v``."""
    scalars = _sgd_scalars(lr, momentum, nesterov, weight_decay)
    if scalars[4] and v is None:
        raise ValueError("sgd_update: v expected an array when momentum != 0, got None")
    _run_one("sgd_update", "sgd", p, g, {"v": v if scalars[4] else None}, ("v",), scalars,
             flag, tag)


def adam_update(p, g, m, v, lr, beta1, beta2, eps, t, weight_decay, vhat=None, flag=None,
                tag=1):
    """Adam as Keras 3 writes it (amsgrad when ``vhat`` is given), in place on ``p``, ``m``,
    ``v`` (and ``vhat``)."""
    op = "adam_update"
    scalars = _adam_scalars(op, lr, beta1, beta2, eps, t, weight_decay, vhat is not None)
    _run_one(op, "adam", p, g, {"m": m, "v": v, "vhat": vhat}, ("vhat",), scalars, flag, tag)


def rmsprop_update(p, g, s, lr, rho, eps, weight_decay, u=None, momentum=0.0, mg=None,
                   gain=None, flag=None, tag=1):
    """RMSprop as Keras 3 writes it (momentum with ``u``, centered with ``mg``; Adagrad with
    ``rho = gain = 1``), in place on ``p``, ``s`` (and ``u``, ``mg``)."""
    scalars = _rmsprop_scalars(lr, rho, eps, weight_decay, momentum, gain, mg is not None)
    if scalars[7] and u is None:
        raise ValueError("rmsprop_update: u expected an array when momentum != 0, got None")
    slots = {"s": s, "mg": mg, "u": u if scalars[7] else None}
    _run_one("rmsprop_update", "rmsprop", p, g, slots, ("mg", "u"), scalars, flag, tag)


# ---------------------------------------------------------------------------------------------
# Multi-tensor launchers (capability "multi_update"): one launch per MULTI tensors
# ---------------------------------------------------------------------------------------------

def _multi_arrays(op, groups, names):
    """Checked flat views of each tensor's arrays (``groups``: per tensor, the arrays in
    ``names`` order, None for an absent slot), and the dtype. Every array must be
    C-contiguous (model weights and slots are); a ValueError names the tensor otherwise."""
    dt = float_dtype(op, groups[0][0])
    out = []
    for t, arrays in enumerate(groups):
        p = arrays[0]
        flat = []
        for name, a in zip(names, arrays):
            if a is None:
                flat.append(dummy(dt))
                continue
            a = contig(a, dt) if name == "g" else a
            if tuple(a.shape) != tuple(p.shape) or a.dtype != dt or not a.flags.c_contiguous:
                raise ValueError(f"{op}: tensor {t}: {name} must be a C-contiguous {dt} array "
                                 f"of p's shape {tuple(p.shape)}, got {tuple(a.shape)} "
                                 f"{a.dtype} (contiguous={a.flags.c_contiguous})")
            flat.append(a)
        out.append(flat)
    return out, dt


#: The multi-tensor launches prepared so far (``_MultiPlan``), keyed by family, tensor count,
#: slot presence and the first weight's ``id`` (a look-up hint only: a plan holds its weights
#: and slots by reference, which fixes their shapes and dtype, and is used only while a call
#: passes those same objects). At most ``_MULTI_PLANS_MAX`` plans, then the table starts over.
_MULTI_PLANS = Plans("multi_update")
_MULTI_PLANS_MAX = 32


class _MultiPlan:
    """The prepared launches of one multi-tensor update: ``fixed`` the weights and present slots
    they were bound to (identity-checked each call), ``shapes`` the weights' shapes (what each
    call's gradients must have), ``chunks`` one ``Bound`` per MULTI tensors (its live arguments:
    the gradients, the scalars, the flag and the tag)."""

    __slots__ = ("fixed", "shapes", "dt", "chunks")

    def __init__(self, family, groups, dt, scalars, fixed):
        nk = FAMILIES[family][0]
        spec = multi_update_kernel(family, dtname(dt))
        filler = [dummy(dt)] * nk
        self.fixed, self.dt = fixed, dt
        self.shapes = tuple(arrays[0].shape for arrays in groups)
        self.chunks = []
        for c0 in range(0, len(groups), MULTI):
            chunk = groups[c0:c0 + MULTI]
            ends = list(itertools.accumulate(arrays[0].size for arrays in chunk))
            total = ends[-1]
            if total == 0:
                continue
            ends += [total] * (MULTI - len(chunk))
            args = ([a for arrays in chunk for a in arrays] + filler * (MULTI - len(chunk))
                    + ends + list(scalars) + [None, 0])
            n = len(args)
            live = ([t * nk + 1 for t in range(len(chunk))]
                    + list(range(n - 2 - len(scalars), n)))
            self.chunks.append((c0, len(chunk), Bound(spec, *_grid(total, family), args, live)))

    def __call__(self, gs, scalars, own, tag):
        for c0, n, plan in self.chunks:
            plan(*gs[c0:c0 + n], *scalars, own, tag + c0)


def _run_multi(op, family, ps, gs, slots, names, scalars, flag, tag):
    """The multi-tensor update of ``ps`` with gradients ``gs`` and slot lists ``slots`` (in
    ``names[2:]`` order, None for an absent slot kind): through the prepared launches when this
    call passes the very weights and slots a plan was made with and gradients of their shapes
    (C-contiguous arrays of this set, of the dtype), else checked (``_multi_arrays``: every
    error message) and launched, a plan made from it when every array went on as it came."""
    own = _own_flag(flag)
    tag = int(tag)
    fixed = list(ps) + [a for lst in slots if lst is not None for a in lst]
    key = (family, len(ps), tuple(lst is not None for lst in slots), id(ps[0]) if ps else 0)
    plan = _MULTI_PLANS.table.get(key)
    if plan is not None and len(gs) == len(ps) and all(map(operator.is_, fixed, plan.fixed)):
        nd, dt = xp.ndarray, plan.dt
        for g, shape in zip(gs, plan.shapes):
            if not (type(g) is nd and g.dtype is dt and g.shape == shape
                    and g.flags.c_contiguous):
                break
        else:
            plan(gs, scalars, own, tag)
            _read_own(op, flag, own)
            return
    present = [lst if lst is not None else [None] * len(ps) for lst in slots]
    groups, dt = _multi_arrays(op, list(zip(ps, gs, *present)), names)
    plan = _MultiPlan(family, groups, dt, scalars, fixed)
    plan([arrays[1] for arrays in groups], scalars, own, tag)
    nd = xp.ndarray
    if (all(type(a) is nd for a in fixed) and all(type(g) is nd for g in gs)
            and all(arrays[1] is g for arrays, g in zip(groups, gs))):
        if len(_MULTI_PLANS.table) >= _MULTI_PLANS_MAX:
            _MULTI_PLANS.table.clear()
        _MULTI_PLANS.table[key] = plan
    _read_own(op, flag, own)


def sgd_update_many(ps, gs, vs, lr, momentum, nesterov, weight_decay, flag=None, tag=1):
    """``sgd_update`` of every tensor of ``ps`` (gradients ``gs``, momentum slots ``vs`` or
    None) with the same hyperparameters, MULTI tensors a launch."""
    op = "sgd_update_many"
    scalars = _sgd_scalars(lr, momentum, nesterov, weight_decay)
    use_v = bool(scalars[4])
    if use_v and (vs is None or any(v is None for v in vs)):
        raise ValueError(f"{op}: vs expected an array per tensor when momentum != 0")
    _run_multi(op, "sgd", ps, gs, (list(vs) if use_v else None,), ("p", "g", "v"), scalars,
               flag, tag)


def adam_update_many(ps, gs, ms, vs, lr, beta1, beta2, eps, t, weight_decay, vhats=None,
                     flag=None, tag=1):
    """``adam_update`` of every tensor, MULTI tensors a launch."""
    op = "adam_update_many"
    vhats = list(vhats) if vhats is not None and vhats[0] is not None else None
    scalars = _adam_scalars(op, lr, beta1, beta2, eps, t, weight_decay, vhats is not None)
    _run_multi(op, "adam", ps, gs, (list(ms), list(vs), vhats), ("p", "g", "m", "v", "vhat"),
               scalars, flag, tag)


def rmsprop_update_many(ps, gs, ss, lr, rho, eps, weight_decay, us=None, momentum=0.0,
                        mgs=None, gain=None, flag=None, tag=1):
    """``rmsprop_update`` of every tensor, MULTI tensors a launch."""
    op = "rmsprop_update_many"
    use_u = float(momentum) != 0.0
    if use_u and (us is None or any(u is None for u in us)):
        raise ValueError(f"{op}: us expected an array per tensor when momentum != 0")
    us = list(us) if use_u else None
    mgs = list(mgs) if mgs is not None and mgs[0] is not None else None
    scalars = _rmsprop_scalars(lr, rho, eps, weight_decay, momentum, gain, mgs is not None)
    _run_multi(op, "rmsprop", ps, gs, (list(ss), mgs, us), ("p", "g", "s", "mg", "u"), scalars,
               flag, tag)
