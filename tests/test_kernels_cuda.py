"""The cuda kernel set beyond the op registry's table (tests/test_ops.py runs every contract
function against the NumPy set, which is itself held to plain loops): float64, errors, split-K
partitions, the dropout hash, empty batches, random and full-size geometries, the capabilities
only this set offers (fused backward; the multi-tensor updates and in-place updates of views are
tests/test_optim_kernels.py's), and a LeNet-5 pass. In Numba's CUDA simulator, or on a GPU with
GPUCNN_TEST_REAL_GPU=1; every output is poisoned with NaN before the kernel writes it.
"""

import numpy as np
import pytest

import _reference
from gpucnn.kernels import CONTRACT, load_set
from gpucnn.kernels._geometry import window_2d
from gpucnn.kernels.cuda_set import _launch, conv

C = load_set("cuda")
N = load_set("numpy")
FWD, GRAD = 1e-5, 1e-4
SIM = _launch.launch_path() == "sim"
HW_TILES = (conv.TILE_WIDE, conv.TILE_NARROW, conv.TILE_WIDE_DW)   # read before the fixture swaps in small ones

pytestmark = pytest.mark.usefixtures("poisoned_small_launches")


def rel_err(got, want):
    return _reference.rel_err(C.to_host(got), want)


def _to_set(a):
    return C.asarray(a) if isinstance(a, np.ndarray) else a


def f32(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


# --------------------------------------------------------------------------- beyond the registry

def test_contract_complete_and_array_module():
    assert [name for name in CONTRACT if not hasattr(C, name)] == []
    a = C.asarray(np.arange(3.0))
    assert C.asarray(a) is a
    assert isinstance(C.to_host(a), np.ndarray)
    if SIM:
        assert C.xp is np


def f64(rng, *shape):
    return f32(rng, *shape).astype(np.float64)


@pytest.mark.parametrize("fn,build", [
    ("conv2d_forward", lambda rng: (f64(rng, 2, 6, 5, 3), f64(rng, 3, 2, 3, 4), None, (2, 1),
                                    (1, 1, 0, 1), "tanh")),
    ("conv2d_backward_weight", lambda rng: (f64(rng, 1, 5, 5, 2), f64(rng, 1, 3, 3, 3),
                                            (3, 3, 2, 3), (1, 1), (0, 0, 0, 0))),
    ("loss_forward", lambda rng: ("sparse_cce_logits", np.array([1, 0, 9]), f64(rng, 3, 10))),
    ("avg_pool_backward", lambda rng: (f64(rng, 1, 2, 2, 2), (1, 5, 5, 2), (3, 3), (2, 2),
                                       (0, 0, 0, 0))),
])
def test_float64(fn, build, rng):
    args = build(rng)
    got = getattr(C, fn)(*[_to_set(a) for a in args])
    want = getattr(N, fn)(*args)
    got, want = (got, want) if isinstance(want, tuple) else ((got,), (want,))
    for g, w in zip(got, want):
        assert C.to_host(g).dtype == np.float64
        assert rel_err(g, w) < 1e-12


@pytest.mark.parametrize("call,err,match", [
    (lambda: C.conv2d_forward(np.ones((1, 4, 4, 2), np.float32), np.ones((3, 3, 3, 1), np.float32),
                              None, (1, 1), (0, 0, 0, 0), "linear"),
     ValueError, "conv2d_forward: x has 2 channels but w .* expects 3"),
    (lambda: C.conv2d_forward(np.ones((1, 2, 2, 1), np.float32), np.ones((3, 3, 1, 1), np.float32),
                              None, (1, 1), (0, 0, 0, 0), "linear"),
     ValueError, "conv2d_forward: a 3x3 window does not fit"),
    (lambda: C.conv2d_forward(np.ones((1, 4, 4, 1), np.float32), np.ones((3, 3, 1, 1), np.float32),
                              None, (1, 1), (0, 0, 0, 0), "swish"),
     ValueError, "conv2d_forward: act must be one of"),
    (lambda: C.conv2d_backward_input(np.ones((1, 3, 3, 1), np.float32),
                                     np.ones((3, 3, 1, 1), np.float32), (1, 4, 4, 1), (1, 1),
                                     (0, 0, 0, 0)),
     ValueError, r"conv2d_backward_input: dy \(1, 3, 3, 1\) .*expected dy \(1, 2, 2, 1\)"),
    (lambda: C.max_pool_forward(np.ones((4, 4), np.float32), (2, 2), (2, 2), (0, 0, 0, 0)),
     ValueError, r"max_pool_forward: x must be 4-D \(N, H, W, C\), got shape \(4, 4\)"),
    (lambda: C.dropout_mask((2, 2), 1.0, 0, 0, np.float32),
     ValueError, r"dropout_mask: rate must be in \[0, 1\)"),
    (lambda: C.max_pool_backward(np.ones((1, 2, 2, 3), np.float32),
                                 np.zeros((1, 2, 2, 3), np.int32), (1, 6, 4, 3), (2, 2), (2, 2),
                                 (0, 0, 0, 0)),
     ValueError, r"max_pool_backward: dy \(1, 2, 2, 3\)"),
    (lambda: C.max_pool_backward(np.ones((1, 2, 2, 3), np.float32),       # the geometry required
                                 np.zeros((1, 2, 2, 3), np.int32), (1, 4, 4, 3)),
     TypeError, "pool"),
    (lambda: C.conv2d_forward(np.ones((1, 3, 3, 1), np.float16),
                              np.ones((3, 3, 1, 1), np.float16), None, (1, 1), (0, 0, 0, 0),
                              "linear"),
     TypeError, "conv2d_forward: .*float32 or float64.*float16"),
    (lambda: C.act_forward(np.arange(4), "relu"), TypeError, "act_forward"),
])
def test_bad_input_names_the_op(call, err, match):
    with pytest.raises(err, match=match):
        call()


def test_weight_gradient_split_k_partitions(rng, monkeypatch):
    """dw with one split and with as many splits as reduction steps agree with the NumPy set."""
    x, dy = f32(rng, 2, 6, 5, 2), f32(rng, 2, 4, 3, 3)
    want = N.conv2d_backward_weight(x, dy, (3, 3, 2, 3), (1, 1), (0, 0, 0, 0))
    for target in (1, 10_000):
        monkeypatch.setattr(conv, "TARGET_BLOCKS", target)
        got = C.conv2d_backward_weight(x, dy, (3, 3, 2, 3), (1, 1), (0, 0, 0, 0))
        assert rel_err(got, want) < GRAD, f"TARGET_BLOCKS={target}"


def test_dropout_mask_is_the_shared_hash(rng):
    """Independently of the NumPy set: the kept elements are exactly uniform >= rate."""
    from gpucnn.kernels._rng import uniform_np

    seed, counter, rate = int(rng.integers(2**32)), 12345, 0.4
    mask = C.to_host(C.dropout_mask((7, 9), rate, seed, counter, np.float32))
    keep = uniform_np(seed, counter, 63).reshape(7, 9) >= rate
    assert np.array_equal(mask != 0, keep)
    assert np.all(mask[keep] == np.float32(1 / 0.6))
    other = C.to_host(C.dropout_mask((7, 9), rate, seed, counter + 1, np.float32))
    assert not np.array_equal(mask, other)


def test_dropout_keeps_an_element_whose_uniform_equals_the_rate_exactly(rng):
    """The device compares integers (u >= ceil(rate * 2**32)): at a rate equal to one element's
    u * 2**-32 that element is kept, at the next float64 above it dropped, as in float64."""
    from gpucnn.kernels._rng import random_u32_np

    seed, counter = int(rng.integers(2**32)), 7
    u = int(random_u32_np(seed, counter, np.arange(5, dtype=np.uint64))[3])
    for rate, kept in ((u * 2.0**-32, True), (np.nextafter(u * 2.0**-32, 1.0), False)):
        mask = C.to_host(C.dropout_mask((5,), rate, seed, counter, np.float32))
        assert (mask[3] != 0) == kept, (rate, u)


def test_empty_batch_launches_nothing():
    y = C.conv2d_forward(np.ones((0, 4, 4, 1), np.float32), np.ones((3, 3, 1, 2), np.float32),
                         None, (1, 1), (0, 0, 0, 0), "relu")
    assert y.shape == (0, 2, 2, 2)
    dw = C.conv2d_backward_weight(np.ones((0, 4, 4, 1), np.float32),
                                  np.ones((0, 2, 2, 2), np.float32), (3, 3, 1, 2), (1, 1),
                                  (0, 0, 0, 0))
    assert np.array_equal(C.to_host(dw), np.zeros((3, 3, 1, 2), np.float32))


@pytest.mark.parametrize("draw", range(8))
def test_conv_random_geometries(draw, rng):
    """Random kernel sizes, strides, paddings, channel counts and image sizes (including 1x1
    outputs and channel counts below and above the reduction step) for all three conv GEMMs."""
    n, cin, cout = int(rng.integers(1, 3)), int(rng.integers(1, 7)), int(rng.integers(1, 12))
    kh, kw = int(rng.integers(1, 6)), int(rng.integers(1, 6))
    sh, sw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    padding = ("valid", "same")[int(rng.integers(2))]
    h, w = int(rng.integers(kh, kh + 7)), int(rng.integers(kw, kw + 7))
    ho, wo, pad = window_2d(h, w, kh, kw, sh, sw, padding)
    x, wt, b = f32(rng, n, h, w, cin), f32(rng, kh, kw, cin, cout), f32(rng, cout)
    dy = f32(rng, n, ho, wo, cout)
    geo = f"x{x.shape} w{wt.shape} s{(sh, sw)} pad{pad}"
    assert rel_err(C.conv2d_forward(x, wt, b, (sh, sw), pad, "tanh"),
                   N.conv2d_forward(x, wt, b, (sh, sw), pad, "tanh")) < FWD, geo
    assert rel_err(C.conv2d_backward_input(dy, wt, x.shape, (sh, sw), pad),
                   N.conv2d_backward_input(dy, wt, x.shape, (sh, sw), pad)) < GRAD, geo
    assert rel_err(C.conv2d_backward_weight(x, dy, wt.shape, (sh, sw), pad),
                   N.conv2d_backward_weight(x, dy, wt.shape, (sh, sw), pad)) < GRAD, geo


@pytest.mark.parametrize("mode", [conv.FWD, conv.BWD_INPUT, conv.BWD_WEIGHT],
                         ids=conv.MODE_NAMES)
def test_full_size_tiles(mode, rng, monkeypatch):
    """The GPU's default tiles and the candidates gpucheck may time compute the right numbers
    too (one block of 256 threads each here: a few seconds in the simulator)."""
    x, wt, b = f32(rng, 1, 6, 5, 3), f32(rng, 3, 3, 3, 5), f32(rng, 5)
    pad, st = (1, 1, 1, 1), (1, 1)
    dy = f32(rng, 1, 6, 5, 5)
    run = {conv.FWD: lambda K: K.conv2d_forward(x, wt, b, st, pad, "sigmoid"),
           conv.BWD_INPUT: lambda K: K.conv2d_backward_input(dy, wt, x.shape, st, pad),
           conv.BWD_WEIGHT: lambda K: K.conv2d_backward_weight(x, dy, wt.shape, st, pad)}[mode]
    for tile in HW_TILES + conv.CANDIDATE_TILES[mode]:
        monkeypatch.setattr(conv, "TILE_OVERRIDE", {mode: tile})
        assert rel_err(run(C), run(N)) < GRAD, tile


def _lenet5_pass(K, x, params, labels):
    """LeNet-5 (the guide's, batch 2) forward and backward through the kernel contract of set K;
    the two dense layers use host matmuls (the layers above the kernels do the same with xp)."""
    (w1, b1), (w3, b3), (w5, b5), (w6, b6), (w7, b7) = params
    one, valid, pool = (1, 1), (0, 0, 0, 0), ((2, 2), (2, 2), (0, 0, 0, 0))
    h = K.to_host
    c1 = K.conv2d_forward(x, w1, b1, one, valid, "tanh")
    s2 = K.avg_pool_forward(c1, *pool)
    c3 = K.conv2d_forward(s2, w3, b3, one, valid, "tanh")
    s4 = K.avg_pool_forward(c3, *pool)
    c5 = K.conv2d_forward(s4, w5, b5, one, valid, "tanh")
    f6 = K.act_forward(K.asarray(h(c5).reshape(2, 120) @ w6 + b6), "tanh")
    z = K.asarray(h(f6) @ w7 + b7)
    loss, stats = K.loss_forward("sparse_cce_logits", labels, z)
    dz = h(K.loss_backward("sparse_cce_logits", K.asarray(np.array(1.0, np.float32)), labels, z,
                           stats))
    df6 = K.act_backward(K.asarray(dz @ w7.T), f6, "tanh")
    dc5 = K.act_backward(K.asarray((h(df6) @ w6.T).reshape(2, 1, 1, 120)), c5, "tanh")
    ds4 = K.conv2d_backward_input(dc5, w5, s4.shape, one, valid)
    dc3 = K.act_backward(K.avg_pool_backward(ds4, c3.shape, *pool), c3, "tanh")
    ds2 = K.conv2d_backward_input(dc3, w3, s2.shape, one, valid)
    dc1 = K.act_backward(K.avg_pool_backward(ds2, c1.shape, *pool), c1, "tanh")
    return {"loss": loss, "stats": stats,
            "dw5": K.conv2d_backward_weight(s4, dc5, w5.shape, one, valid), "db5": K.bias_grad(dc5),
            "dw3": K.conv2d_backward_weight(s2, dc3, w3.shape, one, valid), "db3": K.bias_grad(dc3),
            "dw1": K.conv2d_backward_weight(x, dc1, w1.shape, one, valid), "db1": K.bias_grad(dc1)}


def test_lenet5_forward_and_backward_batch_2(rng):
    """A LeNet-5-shaped forward and backward pass (batch 2, 32x32x1) on the cuda set matches the
    NumPy set: the mean loss, its per-row stats and every conv weight and bias gradient."""
    x, labels = rng.random((2, 32, 32, 1)).astype(np.float32), rng.integers(0, 10, 2)
    shapes = [((5, 5, 1, 6), 0.2), ((5, 5, 6, 16), 0.1), ((5, 5, 16, 120), 0.05), ((120, 84), 0.1),
              ((84, 10), 0.1)]
    params = [(scale * f32(rng, *shape), f32(rng, shape[-1])) for shape, scale in shapes]
    got = _lenet5_pass(C, C.asarray(x), params, C.asarray(labels))
    want = _lenet5_pass(N, x, params, labels)
    for name, w in want.items():
        tol = FWD if name in ("loss", "stats") else GRAD
        assert rel_err(got[name], w) < tol, name


# ---------------------------------------------------------------- pools: the 4-channel variant

POOL_GEOMETRIES = [((3, 3), (2, 2), (0, 0, 0, 0)), ((2, 2), (2, 2), (0, 1, 0, 1)),
                   ((3, 3), (1, 1), (1, 1, 1, 1)), ((2, 3), (1, 2), (1, 0, 2, 1))]


def _pool_runs(x, dy_of, geo):
    """The pools of a set at ``x``: max forward's y and idx, max backward, avg forward, avg
    backward (the backwards of ``dy_of(y shape)``), as a function of the set ``K``."""
    def run(K, xin):
        y, idx = K.max_pool_forward(xin, *geo)
        dy = _to_set(dy_of(y.shape)) if K is C else dy_of(y.shape)
        out = (y, idx, K.max_pool_backward(dy, idx, x.shape, *geo), K.avg_pool_forward(xin, *geo),
               K.avg_pool_backward(dy, x.shape, *geo))
        return [C.to_host(v) if K is C else v for v in out]
    return run


def _picked(monkeypatch):
    """The spec names of the plans the pool launchers pick, recorded."""
    from gpucnn.kernels.cuda_set import pool

    names, pick = [], pool._pick

    def spy(plans, a):
        plan = pick(plans, a)
        names.append(plan.spec.name)
        return plan

    monkeypatch.setattr(pool, "_pick", spy)
    return names


@pytest.mark.parametrize("geo", POOL_GEOMETRIES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("c", [4, 8, 3, 6])
def test_pool_vector_and_scalar_variants_agree(c, dtype, geo, rng, monkeypatch):
    """C % 4 == 0 takes the 4-channel variant (128-bit loads), other C the scalar one. The max
    pool (y, idx, the backward's dx, in the dtype) equals the NumPy set exactly (a NaN in x
    included: its window's y is NaN, its idx the window's first real cell), the averages within
    FWD (the NumPy set sums in another order); the vector variant's results equal the scalar
    variant's bit for bit."""
    from gpucnn.kernels.cuda_set import pool

    x = rng.standard_normal((2, 7, 6, c)).astype(dtype)
    x[1, 3, 2, c - 1] = np.nan
    dy = rng.standard_normal((2, 8, 8, c)).astype(dtype)
    run = _pool_runs(x, lambda s: dy[:, :s[1], :s[2]].copy(), geo)
    names = _picked(monkeypatch)
    got = run(C, _to_set(x))
    assert names and all(n.endswith(",v4]") == (c % 4 == 0) for n in names), names
    want = run(N, x)
    assert got[2].dtype == dtype
    for g, w in zip(got[:3], want[:3]):
        np.testing.assert_array_equal(g, w)
    for g, w in zip(got[3:], want[3:]):
        ok = ~np.isnan(w)
        assert np.array_equal(np.isnan(g), ~ok) and rel_err(g[ok], w[ok]) < FWD
    monkeypatch.setattr(pool, "_on16", lambda a: False)      # the scalar variant everywhere
    names.clear()
    scalar = run(C, _to_set(x))
    assert not any(n.endswith(",v4]") for n in names), names
    for g, s in zip(got, scalar):
        np.testing.assert_array_equal(g, s)


def test_pool_misaligned_input_takes_the_scalar_variant(rng, monkeypatch):
    """A C-contiguous view starting 4 bytes into a buffer (C % 4 == 0; x, or dy for the
    backwards): the scalar variant, the same results; the aligned array the vector one (the
    emulated 128-bit loads fault on a misaligned address, so the vector variant could not run
    on it)."""
    geo = POOL_GEOMETRIES[0]
    x = rng.standard_normal((2, 7, 6, 8)).astype(np.float32)
    base = _to_set(np.zeros(x.size + 1, np.float32))
    view = base[1:].reshape(x.shape)
    view[...] = _to_set(x)
    names = _picked(monkeypatch)
    y_v, idx_v = C.max_pool_forward(view, *geo)
    a_v = C.avg_pool_forward(view, *geo)
    dy = _to_set(np.zeros(a_v.size + 1, np.float32))[1:].reshape(a_v.shape)
    dy[...] = _to_set(rng.standard_normal(a_v.shape).astype(np.float32))
    dx_v = C.avg_pool_backward(dy, x.shape, *geo)
    mx_v = C.max_pool_backward(dy, idx_v, x.shape, *geo)
    assert names == ["max_pool_fwd[float32]", "avg_pool_fwd[float32]", "avg_pool_bwd[float32]",
                     "max_pool_bwd[float32]"]
    names.clear()
    y, idx = C.max_pool_forward(_to_set(x), *geo)
    dx = C.avg_pool_backward(dy.copy(), x.shape, *geo)
    mx = C.max_pool_backward(dy.copy(), idx, x.shape, *geo)
    assert names == ["max_pool_fwd[float32,v4]", "avg_pool_bwd[float32,v4]",
                     "max_pool_bwd[float32,v4]"]
    for g, w in ((y_v, y), (idx_v, idx), (dx_v, dx), (mx_v, mx)):
        np.testing.assert_array_equal(C.to_host(g), C.to_host(w))
    assert rel_err(a_v, N.avg_pool_forward(x, *geo)) < FWD


POOL_VECTOR_KERNELS = tuple(f"{k}[{d},v4]" for d in ("float32", "float64")
                            for k in ("max_pool_fwd", "avg_pool_fwd", "avg_pool_bwd"))


@pytest.fixture(scope="module")
def pool_sass():
    """The sm_90 SASS summary of the pools' 4-channel variants, built with Numba's real compiler
    in a process without the simulator (as tests/test_bandwidth.py builds the activations')."""
    from gpucnn.bench import bandwidth

    return bandwidth._child("--sass", False, ";".join(POOL_VECTOR_KERNELS))


@pytest.mark.parametrize("name", POOL_VECTOR_KERNELS)
def test_pool_vector_variants_load_and_store_128_bits(pool_sass, name):
    """Every load of x (dy) is an LDG.E.128, y (dx) is stored by STG.E.128 (the max-pool's int32
    idx by 32-bit stores); no spills, and the float32 variants fit their launch bounds with no
    float64 instruction."""
    from gpucnn.kernels.cuda_set import pool

    r = pool_sass[name]
    mem = r["mem"]
    assert mem.get("LDG.128", 0) >= 1 and mem.get("STG.128", 0) >= 1, mem
    assert "LDG" not in mem, mem
    assert r["frame"] == 0, f"{name} spills {r['frame']} bytes"
    if "float32" in name:
        spec = getattr(pool, name.split("[")[0] + "_kernel")("float32", vec=True)
        assert spec.name == name
        assert r["registers"] <= 65536 // (spec.launch_bounds[1] * pool.POOL_BLOCK), r
        assert r["fp64"] == [], r["fp64"]


# ---------------------------------------------------------------- fused backward (cuda only)
# The "fused_backward" capability against the contract functions it stands for, composed on the
# NumPy set: act_backward, then the conv gradients and the bias gradient.
FUSED_GEOMS = [((2, 7, 5, 3), (3, 3, 4), (1, 1), "valid", "relu"),
               ((1, 6, 5, 2), (4, 4, 3), (1, 1), "same", "tanh"),
               ((2, 9, 8, 2), (3, 3, 5), (2, 3), "same", "sigmoid"),
               ((1, 5, 6, 3), (2, 2, 11), (2, 2), "same", "linear"),
               ((1, 13, 11, 2), (5, 5, 3), (4, 4), "valid", "relu")]


@pytest.mark.parametrize("xs,k,stride,padding,act", FUSED_GEOMS,
                         ids=[f"{g[4]}-s{g[2][0]}{g[2][1]}-{g[3]}" for g in FUSED_GEOMS])
@pytest.mark.parametrize("target", [None, 1], ids=["split-k", "one-split"])
def test_fused_conv_backward_matches_the_composition(xs, k, stride, padding, act, target, rng,
                                                     monkeypatch):
    if target is not None:
        monkeypatch.setattr(conv, "TARGET_BLOCKS", target)
    kh, kw, co = k
    _, _, pad = window_2d(xs[1], xs[2], kh, kw, *stride, padding)
    x, w = f32(rng, *xs), f32(rng, kh, kw, xs[3], co)
    y = N.conv2d_forward(x, w, None, stride, pad, act)
    dy = f32(rng, *y.shape)
    g = N.act_backward(dy, y, act) if act != "linear" else dy
    yy = _to_set(y) if act != "linear" else None
    dx = C.conv2d_backward_input_act(C.asarray(dy), yy, act, C.asarray(w), xs, stride, pad)
    assert rel_err(dx, N.conv2d_backward_input(g, w, xs, stride, pad)) < GRAD
    dw, db = C.conv2d_backward_weight_bias(C.asarray(x), C.asarray(dy), yy, act, w.shape, stride,
                                           pad)
    assert rel_err(dw, N.conv2d_backward_weight(x, g, w.shape, stride, pad)) < GRAD
    assert rel_err(db, N.bias_grad(g)) < GRAD


@pytest.mark.parametrize("rows", [1, 37], ids=["1row", "37rows"])
@pytest.mark.parametrize("act", ["relu", "tanh", "sigmoid", "linear"])
def test_fused_dense_activation_and_bias_gradient(rows, act, rng):
    y = N.act_forward(f32(rng, rows, 13), act)
    dy = f32(rng, rows, 13)
    g, db = C.act_backward_bias(C.asarray(dy), C.asarray(y), act)
    want = N.act_backward(dy, y, act)
    assert rel_err(g, want) < FWD and rel_err(db, N.bias_grad(want)) < GRAD
