"""TF32 tensor cores without a GPU: the emulated warp mma, the TF32 conv kernels, machine code.

- A NumPy TF32 reference (rounding written here, from frexp, independent of ``ptx``) and the
  error bound of a TF32 product relative to ``|A| |B|``.
- The simulator's ``mma.sync`` on one warp: a kernel loads the fragments as the PTX ISA lays them
  out and gets the reference's D; the same kernel with two fragment registers swapped, or
  without the TF32 conversion, does not (the check is shown to catch a layout error); a partial
  or divergent warp raises.
- The TF32 conv kernels (``conv_tf32``) in the simulator, with tiles of one or two warps,
  against the NumPy set in float64 within the TF32 bound, for the three modes, with strides,
  padding and odd sizes; and shown to round to TF32 (an error above float32's).
- Each TF32 kernel built for sm_80 and sm_90 as gpucnn builds what runs (``_cache.build``, in
  a subprocess without the simulator), disassembled: HMMA in its machine code, no spills.
"""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from numba import cuda   # a global: the simulator swaps its kernel API in by this name

from gpucnn.kernels import _precision
from gpucnn.kernels import numpy_set as ns
from gpucnn.kernels.cuda_set import _arrays, _launch, ptx
from gpucnn.kernels.cuda_set import conv_tf32 as ct

SIM = _launch.launch_path() == "sim"
needs_sim = pytest.mark.skipif(not SIM, reason="the emulated warp runs in Numba's simulator")
U = 2.0 ** -11           # relative rounding error of one operand rounded to TF32
F32 = 2.0 ** -24         # float32's unit roundoff


# ---------------------------------------------------------------------------------------------
# The NumPy TF32 reference
# ---------------------------------------------------------------------------------------------

def tf32_round(a, half=0.5):
    """float32 values rounded to TF32 (11 significant bits, to nearest, ties away from zero),
    computed from the mantissa and exponent in float64; ``half=0``: truncated instead."""
    m, e = np.frexp(np.asarray(a, dtype=np.float64))       # |m| in [0.5, 1)
    q = np.sign(m) * np.floor(np.abs(m) * 2.0 ** 11 + half)  # 11 bits, ties away from zero
    return np.ldexp(q, e - 11)


def tf32_truncate(a):
    """float32 values with their low 13 mantissa bits dropped (what the tensor cores read from
    a register that was not converted)."""
    return tf32_round(a, 0.0)


def tf32_bound(abs_a_abs_b, k):
    """|TF32 product - exact product| <= this, from ``sum_k |a_k||b_k|`` over K terms."""
    return (2 * U + U * U + k * F32) * abs_a_abs_b


def check_close(op, got, want, bound):
    """AssertionError naming the op and the worst element (expected, received, bound)."""
    got = np.asarray(got, dtype=np.float64)
    assert got.shape == want.shape, f"{op}: shape {got.shape}, expected {want.shape}"
    assert np.isfinite(got).all(), (f"{op}: {np.count_nonzero(~np.isfinite(got))} outputs not "
                                    "finite (an output never written keeps its NaN poison)")
    excess = np.abs(got - want) - bound
    i = np.unravel_index(np.argmax(excess), excess.shape)
    assert excess[i] <= 0, (f"{op}: at {tuple(int(v) for v in i)} expected {want[i]!r} "
                            f"+- {bound[i]:.3g}, received {got[i]!r} (off by "
                            f"{abs(got[i] - want[i]):.3g})")


def test_tf32_rounding_matches_cvt_rna(rng):
    """ptx's emulated ``cvt.rna.tf32.f32`` against the reference, ties and signs included."""
    x = rng.standard_normal(4000).astype(np.float32) * np.float32(1e3)
    bits = x.view(np.uint32)
    ties = ((bits & np.uint32(0xFFFFE000)) | np.uint32(0x1000)).view(np.float32)  # exactly half
    below = ((bits & np.uint32(0xFFFFE000)) | np.uint32(0x0FFF)).view(np.float32)
    vals = np.concatenate([x, ties, below, -ties, [0.0, -0.0, 1.0, 3.4e38]]).astype(np.float32)
    got = ptx.tf32_round_bits(vals).view(np.float32).astype(np.float64)
    want = tf32_round(vals)
    bad = np.flatnonzero(got != want)
    assert bad.size == 0, (f"cvt_tf32: {bad.size} values rounded wrongly, first "
                           f"{vals[bad[0]]!r}: expected {want[bad[0]]!r}, received {got[bad[0]]!r}")
    assert (ptx.tf32_round_bits(vals) & np.uint32(0x1FFF) == 0).all(), "low 13 bits not zero"
    assert np.isnan(ptx.tf32_round_bits(np.float32("nan")).view(np.float32))


def test_tf32_bound_holds_and_is_not_float32(rng):
    """The bound holds for the reference product, and TF32 is visibly coarser than float32."""
    a = rng.standard_normal((64, 96))
    b = rng.standard_normal((96, 48))
    exact = a @ b
    got = (tf32_round(a.astype(np.float32)) @ tf32_round(b.astype(np.float32))).astype(np.float32)
    ab = np.abs(a) @ np.abs(b)
    check_close("tf32 matmul reference", got, exact, tf32_bound(ab, 96))
    assert (np.abs(got - exact) > 96 * F32 * ab).any(), "no error beyond float32's bound"


# ---------------------------------------------------------------------------------------------
# One warp's mma in the simulator
# ---------------------------------------------------------------------------------------------

# the fragment layout of mma.m16n8k8 .tf32 (PTX ISA), written out here for the test kernel
A_AT = ((0, 0), (8, 0), (0, 4), (8, 4))      # (row - g, col - t) of a0..a3
B_AT = ((0, 0), (4, 0))                      # (row - t, col - g) of b0, b1
C_AT = ((0, 0), (0, 1), (8, 0), (8, 1))      # (row - g, col - 2t) of c0..c3 / d0..d3


def warp_kernel(order=tuple(range(10)), convert=True, divergent=None):
    """A kernel of one warp: fragments from A (16x8), B (8x8), C (16x8) by the PTX layout, the
    registers passed to the mma in ``order`` (a swap breaks the layout), D stored by the
    layout. ``convert=False`` passes A and B as raw float32 bits (no cvt.rna);
    ``divergent``: 'exit' (lane 5 returns first) or 'site' (lanes 16-31 call from elsewhere)."""

    def bits(v):
        return ptx.cvt_tf32(v) if convert else np.float32(v).view(np.uint32)

    @cuda.jit
    def k(a, b, c, d):
        lane = cuda.threadIdx.x
        if divergent == "exit" and lane == 5:
            return
        g, t = lane >> 2, lane & 3
        regs = ([bits(a[g + i, t + j]) for i, j in A_AT] + [bits(b[t + i, g]) for i, _ in B_AT]
                + [c[g + i, 2 * t + j] for i, j in C_AT])
        regs = [regs[i] for i in order]
        if divergent == "site" and lane >= 16:
            out = ptx.mma_tf32_m16n8k8(*regs)
        else:
            out = ptx.mma_tf32_m16n8k8(*regs)
        for r, (i, j) in enumerate(C_AT):
            d[g + i, 2 * t + j] = out[r]

    return k


def warp_inputs(rng, shapes=((16, 8), (8, 8), (16, 8))):
    return [rng.standard_normal(s).astype(np.float32) for s in shapes]


def run_warp(kernel, a, b, c, threads=32):
    d = np.full((16, 8), np.nan, np.float32)
    kernel[1, threads](a, b, c, d)
    return d


def check_mma(op, d, a, b, c, rounding=tf32_round):
    """D against the reference: the TF32 inputs' product, exact in float64, plus C, rounded
    once to float32 (within one float32 rounding of the exact sum)."""
    want = rounding(a) @ rounding(b) + c
    check_close(op, d, want, F32 * (np.abs(rounding(a)) @ np.abs(rounding(b)) + np.abs(c)))


@needs_sim
def test_emulated_mma_matches_the_tf32_reference(rng):
    a, b, c = warp_inputs(rng)
    d = run_warp(warp_kernel(), a, b, c)
    check_mma("mma_tf32_m16n8k8", d, a, b, c)
    exact = a.astype(np.float64) @ b + c
    check_close("mma_tf32_m16n8k8 vs exact", d, exact,
                tf32_bound(np.abs(a) @ np.abs(b), 8) + F32 * np.abs(exact))
    assert (np.abs(d - exact) > 16 * F32 * (np.abs(a) @ np.abs(b) + np.abs(c))).any(), \
        "mma_tf32_m16n8k8: no element shows TF32 rounding (a float32 product?)"


@pytest.mark.parametrize("order, what", [
    ((1, 0, 2, 3, 4, 5, 6, 7, 8, 9), "a0 <-> a1"),
    ((0, 2, 1, 3, 4, 5, 6, 7, 8, 9), "a1 <-> a2"),
    ((0, 1, 2, 3, 5, 4, 6, 7, 8, 9), "b0 <-> b1"),
    ((0, 1, 2, 3, 4, 5, 7, 6, 8, 9), "c0 <-> c1"),
    ((0, 1, 2, 3, 4, 5, 6, 7, 9, 8), "c2 <-> c3"),
])
@needs_sim
def test_a_swapped_fragment_register_is_caught(rng, order, what):
    a, b, c = warp_inputs(rng)
    d = run_warp(warp_kernel(order), a, b, c)
    with pytest.raises(AssertionError, match="mma_tf32_m16n8k8"):
        check_mma("mma_tf32_m16n8k8", d, a, b, c)


@needs_sim
def test_registers_are_read_as_tf32_so_a_missing_conversion_shows(rng):
    """Raw float32 bits in the A and B registers are truncated to TF32 (the low 13 bits
    dropped), not rounded: the result is the truncation's, and not the rounding's."""
    a, b, c = warp_inputs(rng)
    d = run_warp(warp_kernel(convert=False), a, b, c)
    check_mma("mma_tf32_m16n8k8 (unconverted)", d, a, b, c, rounding=tf32_truncate)
    with pytest.raises(AssertionError, match="unconverted"):
        check_mma("mma_tf32_m16n8k8 (unconverted)", d, a, b, c)


@needs_sim
def test_a_float_register_is_refused(rng):
    @cuda.jit
    def k(d):
        v = np.float32(1.5)
        out = ptx.mma_tf32_m16n8k8(v, v, v, v, v, v, v, v, v, v)
        d[cuda.threadIdx.x] = out[0]

    with pytest.raises(TypeError, match="uint32"):
        k[1, 32](np.zeros(32, np.float32))


@pytest.mark.parametrize("how, threads, why", [
    (None, 24, "partial warp: the block has 24 threads"),
    ("exit", 32, "lane 5 finished the kernel"), ("site", 32, "divergent warp 0")])
@needs_sim
def test_a_partial_or_divergent_warp_raises(rng, how, threads, why):
    a, b, c = warp_inputs(rng)
    with pytest.raises(ptx.WarpError, match=why):
        run_warp(warp_kernel(divergent=how), a, b, c, threads=threads)


def bf16_pack(x):
    """(rows, 2k) float32 -> (rows, k) uint32: bf16 pairs (the top 16 bits of each value, the
    even column in the low half), and the float64 values the pairs hold."""
    top = np.asarray(x, np.float32).view(np.uint32) >> 16
    packed = (top[:, 0::2] | (top[:, 1::2] << 16)).astype(np.uint32)
    return packed, (top << 16).astype(np.uint32).view(np.float32).astype(np.float64)


def bf16_warp_kernel(ap, btp, c, d):
    """One warp's mma.m16n8k16 bf16 from packed A (16 x 8 pairs along k) and packed B^T
    (8 x 8 pairs along k), by the PTX ISA layout."""
    lane = cuda.threadIdx.x
    g = lane >> 2
    t = lane & 3
    out = ptx.mma_bf16_m16n8k16(ap[g, t], ap[g + 8, t], ap[g, t + 4], ap[g + 8, t + 4],
                                btp[g, t], btp[g, t + 4],
                                c[g, 2 * t], c[g, 2 * t + 1], c[g + 8, 2 * t], c[g + 8, 2 * t + 1])
    d[g, 2 * t] = out[0]
    d[g, 2 * t + 1] = out[1]
    d[g + 8, 2 * t] = out[2]
    d[g + 8, 2 * t + 1] = out[3]


@needs_sim
def test_the_bf16_mma_follows_its_table(rng):
    """The m16n8k16 bf16 instruction (for the kernels that follow) from the same table."""
    a, b, c = warp_inputs(rng, ((16, 16), (16, 8), (16, 8)))
    ap, ta = bf16_pack(a)
    btp, tbt = bf16_pack(b.T.copy())
    d = np.full((16, 8), np.nan, np.float32)
    cuda.jit(bf16_warp_kernel)[1, 32](ap, btp, c, d)
    check_close("mma_bf16_m16n8k16", d, ta @ tbt.T + c,
                F32 * (np.abs(ta) @ np.abs(tbt.T) + np.abs(c)))


# ---------------------------------------------------------------------------------------------
# The TF32 conv kernels in the simulator
# ---------------------------------------------------------------------------------------------

ONE_WARP = ct.MmaTile(16, 8, 8, 1, 1)
TWO_WARPS = ct.MmaTile(16, 16, 8, 1, 2)
WARP_OF_FOUR = ct.MmaTile(32, 16, 8, 1, 1)     # 2 x 2 mma tiles in one warp

#: (x shape, w shape, stride, pad (top, bottom, left, right)): odd sizes, strides, padding
GEOMETRIES = [
    ((2, 5, 6, 3), (3, 3, 3, 5), (1, 1), (1, 1, 1, 1)),
    ((1, 7, 5, 2), (3, 2, 2, 9), (2, 3), (0, 1, 1, 0)),
    ((2, 4, 4, 5), (2, 2, 5, 3), (2, 2), (0, 0, 0, 0)),
]

#: (tile, geometry): each geometry with another tile, one or two warps (a few seconds each)
CASES = [(ONE_WARP, 0), (TWO_WARPS, 1), (WARP_OF_FOUR, 2)]
CASE_IDS = ["one-warp-s1-pad", "two-warps-s2x3", "2x2-mma-s2"]


@pytest.fixture
def sim_speed():
    """Outputs poisoned (NaN) before the kernels write them; a short GIL switch interval (the
    simulator's threads run about 7x faster)."""
    from gpucnn.kernels.cuda_set import simulate

    interval = sys.getswitchinterval()
    sys.setswitchinterval(simulate.SWITCH_INTERVAL)
    _arrays.POISON = True
    try:
        yield
    finally:
        _arrays.POISON = False
        sys.setswitchinterval(interval)


def f64(*arrays):
    return [np.asarray(a, dtype=np.float64) for a in arrays]


def assert_rounds_to_tf32(op, got, want, abs_ab):
    assert (np.abs(got - want) > 8 * F32 * abs_ab).any(), \
        f"{op}: every output is within float32's error: the kernel does not round to TF32"


@needs_sim
@pytest.mark.parametrize("tile, geo", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("mode", ["forward", "backward_input", "backward_weight"])
def test_tf32_conv(rng, sim_speed, monkeypatch, tile, geo, mode):
    """Each mode within the TF32 bound of the NumPy set in float64, and rounding to TF32; the
    kernel gradient split over the reduction too (several blocks along z, then the column sum)."""
    x_shape, w_shape, stride, pad = GEOMETRIES[geo]
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    y_shape = ns.conv2d_forward(np.zeros(x_shape), np.zeros(w_shape), None, stride, pad,
                                "linear").shape
    dy = rng.standard_normal(y_shape).astype(np.float32)
    if mode == "forward":
        b = rng.standard_normal(w_shape[3]).astype(np.float32)
        k = int(np.prod(w_shape[:3]))
        abs_ab = ns.conv2d_forward(*f64(np.abs(x), np.abs(w)), None, stride, pad, "linear")
        for act, bias in (("linear", b), ("relu", None), ("tanh", b), ("sigmoid", b)):
            got = ct.tf32_conv2d_forward(x, w, bias, stride, pad, act, tile=tile)
            want = ns.conv2d_forward(*f64(x, w), None if bias is None else f64(bias)[0], stride,
                                     pad, act)
            # the activations are 1-Lipschitz: the bound of the sum holds after them
            check_close(f"tf32_conv2d_forward[{act}]", got, want,
                        tf32_bound(abs_ab, k) + 2 * F32 * np.abs(want))
            if act == "linear":
                assert_rounds_to_tf32("tf32_conv2d_forward", got, want, abs_ab)
        return
    if mode == "backward_input":
        got = ct.tf32_conv2d_backward_input(dy, w, x_shape, stride, pad, tile=tile)
        want = ns.conv2d_backward_input(*f64(dy, w), x_shape, stride, pad)
        abs_ab = ns.conv2d_backward_input(*f64(np.abs(dy), np.abs(w)), x_shape, stride, pad)
        k = w_shape[0] * w_shape[1] * w_shape[3]
    else:
        monkeypatch.setattr(ct, "TARGET_BLOCKS", 6)
        monkeypatch.setattr(ct, "MIN_SPLIT_STEPS", 1)
        k = int(np.prod(y_shape[:3]))
        splits = ct.split_k(tile, int(np.prod(w_shape[:3])), w_shape[3], k, 6, 1)
        if geo == 0:
            assert splits[0] > 1, f"geometry 0 should split the reduction, got {splits}"
        got = ct.tf32_conv2d_backward_weight(x, dy, w_shape, stride, pad, tile=tile)
        want = ns.conv2d_backward_weight(*f64(x, dy), w_shape, stride, pad)
        abs_ab = ns.conv2d_backward_weight(*f64(np.abs(x), np.abs(dy)), w_shape, stride, pad)
    check_close(f"tf32_conv2d_{mode}", got, want, tf32_bound(abs_ab, k))
    assert_rounds_to_tf32(f"tf32_conv2d_{mode}", got, want, abs_ab)


def test_tf32_launchers_refuse_what_they_cannot_do():
    x = np.ones((1, 4, 4, 2))
    w = np.ones((3, 3, 2, 4), np.float32)
    with pytest.raises(TypeError, match="tf32_conv2d_forward: the TF32 kernels take float32"):
        ct.tf32_conv2d_forward(x, w, None, (1, 1), (0, 0, 0, 0), "linear")
    with pytest.raises(ValueError, match="16 \\* wm"):
        ct.MmaTile(24, 8, 8, 1, 1).check()
    with pytest.raises(ValueError, match="x has 3 channels but w"):
        ct.tf32_conv2d_forward(np.ones((1, 4, 4, 3), np.float32), w, None, (1, 1),
                               (0, 0, 0, 0), "linear")


# ---------------------------------------------------------------------------------------------
# The precision setting
# ---------------------------------------------------------------------------------------------

def test_precision_is_exact_by_default_and_follows_the_frameworks():
    assert _precision.get_float32_matmul_precision() == "highest"
    assert not _precision.allow_tf32()
    with _precision.float32_matmul_precision("high"):
        assert _precision.allow_tf32() and _precision.tensor_float_32_execution_enabled()
        _precision.enable_tensor_float_32_execution(False)
        assert _precision.get_float32_matmul_precision() == "highest"
    assert _precision.get_float32_matmul_precision() == "highest"
    with pytest.raises(ValueError, match="precision must be one of"):
        _precision.set_float32_matmul_precision("tf32")
    assert not ct.use_tf32(np.float32)       # use_tf32 follows the setting and the dtype
    with _precision.float32_matmul_precision("high"):
        assert ct.use_tf32(np.float32) and not ct.use_tf32(np.float64)


@needs_sim
def test_the_cuda_sets_convs_run_on_tf32_when_the_precision_allows(rng, sim_speed):
    """The public conv functions of the cuda set (fused variants included) take the TF32 kernels
    under ``float32_matmul_precision("high")``: their results are the TF32 kernels' own, within
    the TF32 bound of the exact ones and not within float32's; "highest" keeps exact float32."""
    from gpucnn.kernels import load_set
    from gpucnn.kernels.cuda_set import simulate

    C = load_set("cuda")
    x_shape, w_shape, stride, pad = GEOMETRIES[1]
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    b = rng.standard_normal(w_shape[3]).astype(np.float32)
    def convs(K, prefix=""):
        """The three linear convs of set or module ``K`` (``prefix``: the TF32 launchers')."""
        return [getattr(K, prefix + "conv2d_forward")(x, w, b, stride, pad, "linear"),
                getattr(K, prefix + "conv2d_backward_input")(dy, w, x_shape, stride, pad),
                getattr(K, prefix + "conv2d_backward_weight")(x, dy, w_shape, stride, pad)]

    with simulate.small_launches():
        y32 = C.conv2d_forward(x, w, b, stride, pad, "tanh")
        dy = rng.standard_normal(y32.shape).astype(np.float32)
        exact = convs(C)
        with _precision.float32_matmul_precision("high"):
            got, own = convs(C), convs(ct, "tf32_")
            g = C.act_backward(dy, y32, "tanh")
            fused_dx = C.conv2d_backward_input_act(dy, y32, "tanh", w, x_shape, stride, pad)
            fused_dw, fused_db = C.conv2d_backward_weight_bias(x, dy, y32, "tanh", w_shape,
                                                               stride, pad)
            np.testing.assert_array_equal(
                fused_dx, ct.tf32_conv2d_backward_input(g, w, x_shape, stride, pad))
            np.testing.assert_array_equal(
                fused_dw, ct.tf32_conv2d_backward_weight(x, g, w_shape, stride, pad))
            np.testing.assert_allclose(fused_db, g.sum(axis=(0, 1, 2)), rtol=1e-5, atol=1e-5)
    names = ("forward", "backward_input", "backward_weight")
    for name, a, mine, ref in zip(names, got, own, exact):
        np.testing.assert_array_equal(a, mine, err_msg=name)
        assert not np.allclose(a, ref, rtol=1e-6, atol=1e-6), f"{name}: not TF32"
        np.testing.assert_allclose(a, ref, rtol=2e-2, atol=2e-2, err_msg=name)


def test_backend_reports_and_sets_the_precision():
    import gpucnn.backend as backend

    assert backend.get_float32_matmul_precision() == "highest"
    old = backend.set_float32_matmul_precision("high")
    try:
        assert old == "highest"
        info = backend.backend_info()
        assert info["float32_matmul_precision"] == "high" and info["tf32"] is True
    finally:
        backend.set_float32_matmul_precision(old)
    assert backend.backend_info()["float32_matmul_precision"] == "highest"


# ---------------------------------------------------------------------------------------------
# Machine code: every TF32 kernel built for sm_80 and sm_90, disassembled
# ---------------------------------------------------------------------------------------------

WORKER = r"""
import json, re, sys, tempfile, pathlib
from gpucnn.bench.sass import disassemble
from gpucnn.kernels.cuda_set import _cache, conv_tf32
sys.path.insert(0, sys.argv[2])
from _cubin import Cubin

cc = tuple(int(v) for v in sys.argv[1].split("."))
out = []
with tempfile.TemporaryDirectory() as tmp:
    for kw in conv_tf32._variants():
        spec = conv_tf32.tf32_kernel(**kw)
        built = _cache.build(spec, cc)
        ops = [op for _, op, _, _ in disassemble(built.cubin, built.entry, pathlib.Path(tmp))]
        rec = {"name": spec.name, "tile": list(kw["tile"]), "sm": Cubin(built.cubin).sm,
               "hmma": sum(op.startswith("HMMA.1688.F32.TF32") for op in ops),
               "local": sum(op.startswith(("STL", "LDL")) for op in ops),
               "ptx_mma": len(re.findall(r"mma\.sync\.aligned\.m16n8k8\.row\.col\.f32\.tf32"
                                         r"\.tf32\.f32", built.ptx)),
               "ptx_cvt": len(re.findall(r"cvt\.rna\.tf32\.f32", built.ptx)),
               "local_depot": "__local_depot" in built.ptx,
               "f64": sorted(set(re.findall(r"\b[a-z]+(?:\.[a-z0-9]+)*\.f64\b", built.ptx)))}
        rec.update(Cubin(built.cubin).function_info(built.entry))
        out.append(rec)
    # the bf16 mma of ptx.py, in a one-warp kernel (test_mma.bf16_warp_kernel)
    from numba import types
    from gpucnn.kernels.cuda_set import _launch
    import test_mma
    u2, f2 = _launch.arr(types.uint32, 2), _launch.arr("float32", 2)
    spec = _launch.KernelSpec("bf16_probe", test_mma.bf16_warp_kernel, (u2, u2, f2, f2))
    built = _cache.build(spec, cc)
    ops = [op for _, op, _, _ in disassemble(built.cubin, built.entry, pathlib.Path(tmp))]
    bf16 = sum(op.startswith("HMMA.16816.F32.BF16") for op in ops)
print("TF32-REPORT " + json.dumps({"kernels": out, "bf16_hmma": bf16}))
"""


@pytest.fixture(scope="module")
def machine_code():
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    here = str(pathlib.Path(__file__).parent)
    procs = {cc: subprocess.Popen([sys.executable, "-c", WORKER, cc, here], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for cc in ("8.0", "9.0")}
    out = {}
    for cc, p in procs.items():
        stdout, stderr = p.communicate(timeout=1200)
        assert p.returncode == 0, f"TF32 compile worker for cc {cc} failed:\n{stderr[-4000:]}"
        line = [ln for ln in stdout.splitlines() if ln.startswith("TF32-REPORT ")][-1]
        out[cc] = json.loads(line[len("TF32-REPORT "):])
    return out


@pytest.mark.parametrize("cc", ["8.0", "9.0"])
def test_the_bf16_mma_compiles_to_hmma(machine_code, cc):
    assert machine_code[cc]["bf16_hmma"] == 1, machine_code[cc]["bf16_hmma"]


@pytest.mark.parametrize("cc", ["8.0", "9.0"])
def test_tf32_kernels_issue_hmma_without_spills(machine_code, cc):
    recs = machine_code[cc]["kernels"]
    assert len(recs) == len(ct._variants())
    for r in recs:
        tile = ct.MmaTile(*r["tile"])
        per_step = tile.mi * tile.ni * tile.bk // 8     # mma of one warp per reduction step
        assert r["sm"] == int(cc.replace(".", "")), r["name"]
        assert r["ptx_mma"] == per_step and r["ptx_cvt"] > 0, (r["name"], r["ptx_mma"])
        assert r["hmma"] >= per_step and r["hmma"] % per_step == 0, (r["name"], r["hmma"])
        assert r["local"] == 0 and r["frame_bytes"] == 0 and not r["local_depot"], \
            f"{r['name']} spills at sm_{cc}: frame {r['frame_bytes']} B, {r['local']} STL/LDL"
        assert r["f64"] == [], f"{r['name']} does float64 math: {r['f64']}"
        assert 0 < r["registers"] <= 255, r["name"]
