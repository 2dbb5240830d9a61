"""The fused optimizer kernels (``sgd_update``, ``adam_update``, ``rmsprop_update``) on their
own, every option on: the NumPy set against Keras 3's formulas (``tests/_reference.py``) in
float64 and float32 over a few steps; and the cuda set (in Numba's
simulator without a GPU) against the NumPy set, with poisoned absent slots, a parameter that is
not contiguous, float64, and the errors."""
import itertools

import numpy as np
import pytest

from _reference import ref_adam_update, ref_rmsprop_update, ref_sgd_update, rel_err
from gpucnn.kernels import load_set
from test_raw_launch import FakeArray, gpu  # noqa: F401 (the fake CuPy's fixture)

N = load_set("numpy")
SHAPE = (7, 10)      # 70 elements: more than the simulator's grid of 2 x 32 threads
STEPS = 3
F64 = dict(rtol=1e-12, atol=1e-14)
F32 = dict(rtol=2e-5, atol=2e-5)
DTYPES = [np.float64, np.float32]


def f(rng, *shape, dtype=np.float64, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(dtype)


def flat(*arrays):
    return [None if a is None else a.astype(np.float64).reshape(-1) for a in arrays]


def _tol(dtype):
    return F64 if dtype == np.float64 else F32


# ------------------------------------------------------------------ every option of the updates
# (family, options): SGD (momentum, nesterov, weight decay), Adam (amsgrad, weight decay),
# RMSprop (momentum, centered, weight decay)

CASES = ([("sgd", o) for o in itertools.product([0.0, 0.9], [False, True], [0.0, 0.05])]
         + [("adam", o) for o in itertools.product([False, True], [0.0, 0.1])]
         + [("rmsprop", o) for o in itertools.product([0.0, 0.9], [False, True], [0.0, 0.05])])


def _state(rng, family, opts, dtype, shape=SHAPE):
    """p and the slots of ``family`` (None where ``opts`` leave one out): SGD's v; Adam's m, v,
    vhat (zeros); RMSprop's s >= 0, u, mg."""
    p = f(rng, *shape, dtype=dtype)
    if family == "sgd":
        return [p, f(rng, *shape, dtype=dtype, scale=0.1) if opts[0] else None]
    if family == "adam":
        return [p, np.zeros(shape, dtype), np.zeros(shape, dtype),
                np.zeros(shape, dtype) if opts[0] else None]
    return [p, np.abs(f(rng, *shape, dtype=dtype))] + [
        f(rng, *shape, dtype=dtype, scale=0.01) if on else None for on in opts[:2]]


def _grads(rng, family, dtype, shape=SHAPE):
    """``(t, g)`` of each step: 3 steps; Adam 4, its gradients shrinking (amsgrad's max)."""
    if family == "adam":
        return [(t, f(rng, *shape, dtype=dtype, scale=10.0 ** (2 - 2 * t)))
                for t in range(1, STEPS + 2)]
    return [(t, f(rng, *shape, dtype=dtype)) for t in range(1, STEPS + 1)]


def _hyper(family, opts, lr):
    """The learning rate (0.05 for SGD, else 0.01, unless given) and weight decay, as NumPy
    float64 scalars: they must not upcast a float32 p."""
    return np.float64(lr or (0.05 if family == "sgd" else 0.01)), np.float64(opts[-1])


def _update(K, family, s, g, t, opts, lr=None, **flags):
    """Step ``t`` of ``family`` with ``opts`` in place on ``s`` by set ``K`` (``flags``: its flag
    and tag), or by the formulas of ``_reference`` (``K`` None: RMSprop's gain 0.1 given)."""
    lr, wd = _hyper(family, opts, lr)
    if family == "sgd":
        (ref_sgd_update if K is None else K.sgd_update)(s[0], g, s[1], lr, opts[0], opts[1], wd,
                                                        **flags)
    elif family == "adam":
        (ref_adam_update if K is None else K.adam_update)(s[0], g, s[1], s[2], lr, 0.8, 0.95,
                                                          1e-3, t, wd, vhat=s[3], **flags)
    else:
        gain = {"gain": 0.1} if K is None else {}
        (ref_rmsprop_update if K is None else K.rmsprop_update)(
            s[0], g, s[1], lr, 0.9, 1e-7, wd, u=s[2], momentum=opts[0], mg=s[3], **gain, **flags)


def _update_many(K, family, ss, gs, t, opts, lr=None, **flags):
    """``_update`` of every state of ``ss`` (gradients ``gs``) in one multi-tensor call."""
    lr, wd = _hyper(family, opts, lr)
    a = [None if ss[0][j] is None else [s[j] for s in ss] for j in range(len(ss[0]))]
    if family == "sgd":
        K.sgd_update_many(a[0], gs, a[1], lr, opts[0], opts[1], wd, **flags)
    elif family == "adam":
        K.adam_update_many(a[0], gs, a[1], a[2], lr, 0.8, 0.95, 1e-3, t, wd, vhats=a[3], **flags)
    else:
        K.rmsprop_update_many(a[0], gs, a[1], lr, 0.9, 1e-7, wd, us=a[2], momentum=opts[0],
                              mgs=a[3], **flags)


# ------------------------------------------------------------------ NumPy set against the formulas
# In float64 and float32 (the dtype kept, g read only), a few steps each.

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("family,opts", CASES + [("sgd", (0.8, True, 0.01))])
def test_numpy_update_is_keras(family, opts, dtype, rng):
    s = _state(rng, family, opts, dtype)
    ref = flat(*s)
    for t, g in _grads(rng, family, dtype):
        g0 = g.copy()
        _update(N, family, s, g, t, opts)
        _update(None, family, ref, *flat(g), t, opts)
        np.testing.assert_array_equal(g, g0)
    assert {a.dtype for a in s if a is not None} == {np.dtype(dtype)}
    for got, want in zip(s, ref):
        if got is not None:
            np.testing.assert_allclose(got.reshape(-1), want, **_tol(dtype))
    if family == "adam" and opts[0]:
        assert np.all(s[3] >= s[2]) and np.any(s[3] > s[2])


@pytest.mark.parametrize("call,err,match", [
    (lambda K, a: K.sgd_update(a(), a(), None, 0.1, 0.9, False, 0.0), ValueError,
     "sgd_update: v expected an array when momentum != 0"),
    (lambda K, a: K.rmsprop_update(a(), a(), a(), 0.1, 0.9, 1e-7, 0.0, momentum=0.9), ValueError,
     "rmsprop_update: u expected an array when momentum != 0"),
    (lambda K, a: K.adam_update(a(), a(), a(), a(), 0.1, 0.9, 0.99, 1e-7, 0, 0.0), ValueError,
     "adam_update: t expected the 1-based step >= 1, got 0"),
    (lambda K, a: K.adam_update(a(), a(), a(), a(), 0.1, 0.9, 0.99, 1e-7, 1, 0.0, vhat=a(3)),
     ValueError, r"adam_update: vhat .*\(4,\).*\(3,\)"),
    (lambda K, a: K.rmsprop_update(a(), a(), a(), 0.1, 0.9, 1e-7, 0.0, mg=a(2)), ValueError,
     r"rmsprop_update: mg .*\(4,\).*\(2,\)"),
    (lambda K, a: K.rmsprop_update(a(), a(), a(2), 0.1, 0.9, 1e-7, 0.05), ValueError,
     r"rmsprop_update: s .*\(4,\).*\(2,\)"),
])
@pytest.mark.parametrize("kset", ["numpy", "cuda"])
def test_bad_arguments_name_the_op(kset, call, err, match):
    K = _set(kset)

    def a(n=4):
        return K.asarray(np.ones(n, np.float32))

    with pytest.raises(err, match=match):
        call(K, a)


# ------------------------------------------------------------------ the cuda set against NumPy

def _set(name):
    if name == "numpy":
        return N
    try:
        return load_set("cuda")
    except Exception as e:  # noqa: BLE001 - the cuda set is not usable here
        pytest.skip(f"the cuda kernel set is not usable here: {type(e).__name__}: {e}")


@pytest.fixture
def C():
    cset = _set("cuda")
    from gpucnn.kernels.cuda_set import _launch, simulate

    if _launch.launch_path() == "sim":
        with simulate.small_launches():
            yield cset
    else:
        yield cset


def _both(C, arrays):
    """The arrays for the cuda set (copies on it) and for the NumPy set (copies)."""
    return ([None if a is None else C.asarray(a.copy()) for a in arrays],
            [None if a is None else a.copy() for a in arrays])


def _close(C, got, want, what, dtype):
    tol = dict(rtol=2e-6, atol=1e-7) if dtype == np.float32 else F64
    for i, (a, b) in enumerate(zip(got, want)):
        if b is not None:
            np.testing.assert_allclose(C.to_host(a), b, err_msg=f"{what}: array {i}", **tol)


@pytest.mark.parametrize("family,opts", CASES)
def test_cuda_update_matches_numpy(C, family, opts, rng):
    cs, ns = _both(C, _state(rng, family, opts, np.float32))
    for t, g in _grads(rng, family, np.float32):
        _update(C, family, cs, C.asarray(g), t, opts)
        _update(N, family, ns, g, t, opts)
    _close(C, cs, ns, f"{family} {opts}", np.float32)


def test_adagrad_is_rmsprop_with_rho_and_gain_one(C, rng):
    """In float64: the NumPy set against the formula, the cuda set against the NumPy set."""
    (pc, ac), (pn, an) = _both(C, [f(rng, *SHAPE), np.full(SHAPE, 0.1)])
    rp, ra = flat(pn, an)
    for _ in range(STEPS):
        g = f(rng, *SHAPE)
        C.rmsprop_update(pc, C.asarray(g), ac, 0.1, 1.0, 1e-7, 0.01, gain=1.0)
        N.rmsprop_update(pn, g, an, 0.1, 1.0, 1e-7, 0.01, gain=1.0)
        ref_rmsprop_update(rp, g.reshape(-1), ra, 0.1, 1.0, 1e-7, 0.01, gain=1.0)
    np.testing.assert_allclose(pn.reshape(-1), rp, **F64)
    np.testing.assert_allclose(an.reshape(-1), ra, **F64)
    _close(C, [pc, ac], [pn, an], "adagrad float64", np.float64)
    assert C.to_host(pc).dtype == np.float64


def test_cuda_leaves_g_and_absent_slots_alone(C, rng):
    """g is read only; with momentum 0 a given u is neither read nor written (NaN stays NaN),
    and a non-contiguous parameter is updated in place through its view (RMSprop, then SGD)."""
    p = f(rng, 8, 6, dtype=np.float32)
    g = f(rng, 4, 6, dtype=np.float32)
    s = np.abs(f(rng, 4, 6, dtype=np.float32))
    u = np.full((4, 6), np.nan, np.float32)
    pc, gc, sc, uc = C.asarray(p.copy()), C.asarray(g.copy()), C.asarray(s.copy()), C.asarray(u)
    view_c, view_n = pc[::2], p.copy()[::2]
    sn = s.copy()
    C.rmsprop_update(view_c, gc, sc, 0.01, 0.9, 1e-7, 0.1, u=uc, momentum=0.0)
    N.rmsprop_update(view_n, g, sn, 0.01, 0.9, 1e-7, 0.1)
    C.sgd_update(view_c, gc, None, 0.1, 0.0, False, 0.0)
    N.sgd_update(view_n, g, None, 0.1, 0.0, False, 0.0)
    np.testing.assert_allclose(C.to_host(pc)[::2], view_n, rtol=2e-6, atol=1e-7)
    np.testing.assert_array_equal(C.to_host(pc)[1::2], p[1::2])
    np.testing.assert_array_equal(C.to_host(gc), g)
    assert np.isnan(C.to_host(uc)).all()


def _multi_opts(family, nesterov=False):
    """The multi-tensor tests' options: SGD with momentum 0.9, RMSprop with 0.5; decay 0.01."""
    return {"sgd": (0.9, nesterov, 0.01), "adam": (False, 0.01), "rmsprop": (0.5, False, 0.01)}[
        family]


def _misaligned(C, a):
    """``a`` on the cuda set one float into a fresh buffer: a view not 16-byte aligned."""
    buf = C.xp.zeros(a.size + 1, a.dtype)
    buf[1:] = C.asarray(a)
    return buf[1:]


MULTI_SHAPES = [(5, 3), (7,), (2, 2, 3), (1,), (4, 4)] * 3       # 15 tensors: two launches


@pytest.mark.parametrize("family,opts", [
    ("sgd", (0.9, True, 1e-2)), ("sgd", (0.0, False, 0.0)), ("adam", (True, 0.0)),
    ("rmsprop", (0.5, True, 1e-3))],
    ids=["sgd-nesterov-wd", "sgd-plain", "adam-amsgrad", "rmsprop-centered-momentum"])
def test_cuda_multi_tensor_updates_match_one_update_a_tensor(C, family, opts, rng):
    """One launch per 12 tensors gives what the one-tensor update gives each tensor, at each
    step of ``_grads`` (Adam's shrinking gradients: amsgrad's max)."""
    dev, host = zip(*(_both(C, _state(rng, family, opts, np.float32, s)) for s in MULTI_SHAPES))
    for step in zip(*(_grads(rng, family, np.float32, s) for s in MULTI_SHAPES)):
        t, gs = step[0][0], [g for _, g in step]
        gd, before = [C.asarray(g.copy()) for g in gs], C.launch_count()
        _update_many(C, family, dev, gd, t, opts)
        assert C.launch_count() - before == 2                      # 12 + 3 tensors
        for h, g, d in zip(host, gs, gd):
            _update(N, family, h, g, t, opts)
            np.testing.assert_array_equal(C.to_host(d), g)         # g read only
    for d, h in zip(dev, host):
        for a, b in zip(d, h):
            assert b is None or rel_err(C.to_host(a), b) < 1e-5


@pytest.mark.parametrize("family", ["sgd", "adam", "rmsprop"])
def test_cuda_multi_tensor_any_alignment_and_refusals(C, family, rng):
    """Tensors of 13, 8 and 16 elements in one multi-tensor launch, the 8 a view one float into
    its buffers (not 16-byte aligned), a NaN gradient in the middle of the 16 (its neighbours
    updated, the element and its slots kept): against the NumPy set's one-tensor updates, and
    the flag holding the NaN's tag."""
    sizes, tag, opts = (13, 8, 16), 5, _multi_opts(family, nesterov=True)
    npos = [_state(rng, family, opts, np.float32, (n,)) for n in sizes]
    grads = [f(rng, n, dtype=np.float32) for n in sizes]
    grads[2][6] = np.nan
    pos = [[None if a is None else _misaligned(C, a) if n == 8 else C.asarray(a.copy())
            for a in nt] for n, nt in zip(sizes, npos)]
    if C.launch_path() == "sim":
        assert pos[1][0].__array_interface__["data"][0] % 16 != 0
        assert pos[2][0].__array_interface__["data"][0] % 16 == 0
    flag, nflag = C.xp.zeros(1, np.int64), np.zeros(1, np.int64)
    for k, nt in enumerate(npos):
        _update(N, family, nt, grads[k], 2, opts, flag=nflag, tag=tag + k)
    _update_many(C, family, pos, [C.asarray(g) for g in grads], 2, opts, flag=flag, tag=tag)
    assert int(C.to_host(flag)[0]) == int(nflag[0]) == tag + 2
    for k, (t, nt) in enumerate(zip(pos, npos)):
        _close(C, t, nt, f"{family} tensor {k}", np.float32)


@pytest.mark.parametrize("family", ["sgd", "adam", "rmsprop"])
def test_cuda_multi_tensor_repeated_steps_use_the_plan_and_stay_numpy(C, family, rng):
    """Steps of one multi-tensor update as an optimizer makes them (the same weights and slots,
    new gradient arrays, a learning rate and step that change): the prepared launch (kept from
    the second step) matches the NumPy set's one-tensor updates each step; a weight replaced by
    a new array is updated (not the old one), and a bad gradient after the plan exists still
    gets the checked path's error."""
    from gpucnn.kernels.cuda_set import optim

    shapes, opts = [(3, 5), (4,), (2, 3, 2)], _multi_opts(family)
    nw = [_state(rng, family, opts, np.float32, s) for s in shapes]
    cw = [_both(C, t)[0] for t in nw]
    flag, nflag = C.xp.zeros(1, np.int64), np.zeros(1, np.int64)

    def step(k):
        lr = 0.01 * (k + 1)
        grads = [f(rng, *s, dtype=np.float32) for s in shapes]
        for i, (t, g) in enumerate(zip(nw, grads)):
            _update(N, family, t, g, k + 1, opts, lr, flag=nflag, tag=1 + i)
        _update_many(C, family, cw, [C.asarray(g) for g in grads], k + 1, opts, lr, flag=flag,
                     tag=1)
        for i, (t, n) in enumerate(zip(cw, nw)):
            _close(C, t, n, f"{family} step {k} tensor {i}", np.float32)

    optim._MULTI_PLANS.table.clear()
    for k in range(3):
        step(k)
    assert len(optim._MULTI_PLANS.table) == 1
    plan = next(iter(optim._MULTI_PLANS.table.values()))
    old = cw[1][0]
    cw[1][0] = C.asarray(C.to_host(old).copy())        # a new weight array, the same values
    kept = C.to_host(old).copy()
    for k in range(3, 5):
        step(k)
    np.testing.assert_array_equal(C.to_host(old), kept)
    assert next(iter(optim._MULTI_PLANS.table.values())) is not plan
    assert int(C.to_host(flag)[0]) == int(nflag[0]) == 0
    bad = [C.asarray(f(rng, *s, dtype=np.float32)) for s in shapes]
    bad[2] = C.xp.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match=f"{family}_update_many: tensor 2: g must be a "
                                         "C-contiguous float32 array of p's shape"):
        _update_many(C, family, cw, bad, 9, opts, 0.01, flag=flag)


def test_a_bound_launch_writes_the_live_arrays_and_scalars_of_each_call(gpu):
    """The multi-tensor update's prepared raw launch (``_launch.Bound``) over a fake CuPy: each
    call writes the new gradients' addresses and the new scalars (floats and the int64 tag) into
    a buffer filled once, and the driver gets the full flat list Numba's ABI wants for all the
    arguments, the bound weights and slots included."""
    import struct

    from gpucnn.kernels.cuda_set import _abi, _launch, optim

    spec = optim.multi_update_kernel("adam", "float32")
    gpu.slots = len(_abi.flat_param_types(spec.argtypes))
    nk, m = 5, optim.MULTI
    sizes = [3, 4, 5]
    arrays = [FakeArray(np.zeros(sizes[t] if t < 3 else 1, np.float32))
              for t in range(m) for _ in range(nk)]
    ends = [3, 7, 12] + [12] * (m - 3)
    live = [t * nk + 1 for t in range(3)] + list(range(nk * m + m, len(spec.argtypes)))

    def full(grads, scalars, tag):
        args = list(arrays) + ends + list(scalars) + [FakeArray(np.zeros(1, np.int64)), tag]
        for t, g in enumerate(grads):
            args[t * nk + 1] = g
        return args

    first = full([arrays[t * nk + 1] for t in range(3)], (0.1, 0.2, 0.3, 0.4, 0.5, 1, 0), 1)
    plan = _launch.Bound(spec, (1,), (256,), first, live)
    for k in range(4):      # the first through launch(), then the prepared buffer
        grads = [FakeArray(np.zeros(n, np.float32)) for n in sizes]
        args = full(grads, (0.5 / (k + 1), 0.2, 0.3 + k, 0.25 * k, 1e-7, k % 2, 1), 1000 + k)
        plan(*[args[i] for i in live])
        *_, raw = gpu.launches[-1]
        got = list(struct.unpack(_abi.param_format(spec.argtypes), raw))
        want = [v.item() for v in _abi.flatten_args(spec.argtypes, args)]
        assert got == pytest.approx(want, rel=1e-7), k
    assert callable(plan.raw[0]) and len(gpu.launches) == 4
