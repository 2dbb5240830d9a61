"""The generated SIMT conv kernels (kernels/cuda_set/gemm.py, "igemm2"), beside the registry's
parity tests (tests/test_ops.py runs the conv ops on whatever conv.py chooses):

- every mode and variant in Numba's simulator (small tiles of each shape: the wide tile's two
  LDS groups per side, the mid tile, the narrow tile with a reduction step of 2), forced tile by
  tile, against the plain loops of tests/_reference.py (float64), on odd sizes, strides > 1,
  'same' with even kernels, batch 1, a kernel larger than the image, strides larger than the
  kernel (residue classes without a tap), the fused activation and bias gradients; the launch
  record proves which compiled variant ran;
- the choice between igemm2 and the baseline kernels;
- the generated source: the reduction and register block unrolled, every division unsigned;
- the machine code, built for sm_90 as it runs (Numba's compiler, no GPU) in a subprocess:
  4 of the 19 igemm2 variants (the decomposed strided input gradient, plain and fused, on the mid
  and narrow tiles: 4-7 s each to build on an idle core, 40 s for the test here) and one
  baseline kernel as the detector's control.
  The other 15 are built by tests/test_compile.py like every registered kernel (sm_80 and
  sm_90: no stack frame, no float64); ``python -m gpucnn.bench.sass`` prints all of them.
"""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import _reference as R
from _ops import _act_derivative      # act'(y) from the definitions (independent of both sets)
from gpucnn.kernels import load_set
from gpucnn.kernels.cuda_set import _launch, conv, gemm

C = load_set("cuda")
SIM = _launch.launch_path() == "sim"
FWD_TOL, GRAD_TOL = 1e-5, 1e-4

# (N, H, W, C_in, KH, KW, C_out, stride, padding, activation)
GEOMETRIES = [
    (1, 5, 7, 3, 3, 3, 5, (1, 1), "same", "relu"),       # batch 1, odd sizes
    (2, 6, 5, 2, 2, 2, 3, (1, 1), "same", "tanh"),       # even kernel, 'same': pad bottom/right
    (2, 9, 7, 2, 4, 4, 3, (2, 2), "same", "sigmoid"),    # strided, even kernel: 4 classes
    (1, 13, 11, 2, 5, 5, 3, (4, 4), "valid", "relu"),    # AlexNet conv1's stride: 16 classes
    (2, 7, 8, 3, 2, 2, 4, (3, 3), "valid", "tanh"),      # stride > kernel: tapless classes
    (1, 5, 6, 3, 2, 3, 11, (2, 3), "same", "sigmoid"),   # non-square stride, 2+ column tiles
    (1, 4, 4, 2, 5, 5, 2, (1, 1), "same", "relu"),       # kernel larger than the image
]
TILES = ("TILE_WIDE", "TILE_MID", "TILE_NARROW")


def check(op, where, got, want, tol):
    """Relative error of ``got`` against the float64 ``want`` below ``tol``; a failure names the
    op and shows expected against received at the worst element."""
    got = np.asarray(C.to_host(got), np.float64)
    assert got.shape == want.shape, f"{op} {where}: shape {got.shape}, expected {want.shape}"
    nan = np.argwhere(np.isnan(got))
    assert nan.size == 0, (f"{op} {where}: {len(nan)} outputs never written (NaN), first at "
                           f"{tuple(nan[0])}, expected {want[tuple(nan[0])]:.6g} there")
    err = np.abs(got - want)
    idx = np.unravel_index(np.argmax(err), err.shape)
    rel = R.rel_err(got, want)
    assert rel < tol, (f"{op} {where}: relative error {rel:.2e} >= {tol:.0e}; worst at {idx}: "
                       f"expected {want[idx]:.7g}, received {got[idx]:.7g}")


@pytest.fixture
def launched(monkeypatch):
    """The names of the kernels launched during the test, in order."""
    names = []
    real = _launch.launch

    def record(spec, grid, block, *args):
        names.append(spec.name)
        return real(spec, grid, block, *args)

    monkeypatch.setattr(_launch, "launch", record)
    return names


def _inputs(rng, g):
    n, h, w, c, kh, kw, co, stride, padding, act = g
    pad = R.ref_pads(h, w, kh, kw, stride[0], stride[1], padding)
    ho = R.ref_out_size(h, kh, stride[0], pad[0], pad[1])
    wo = R.ref_out_size(w, kw, stride[1], pad[2], pad[3])
    f = lambda *s: rng.standard_normal(s).astype(np.float32)   # noqa: E731
    x, wt, b, dy = f(n, h, w, c), f(kh, kw, c, co), f(co), f(n, ho, wo, co)
    y = R.ref_act(f(n, ho, wo, co).astype(np.float64), act).astype(np.float32)
    return x, wt, b, dy, y, pad


@pytest.mark.usefixtures("poisoned_small_launches")
@pytest.mark.parametrize("tile_name", TILES)
@pytest.mark.parametrize("g", GEOMETRIES, ids=lambda g: "{}x{}x{}x{}-k{}x{}x{}-s{}{}-{}".format(
    *g[:7], *g[7], g[8]))
def test_every_mode_matches_plain_loops(rng, g, tile_name, launched, monkeypatch):
    if not SIM:
        pytest.skip("small forced tiles are for the simulator; on a GPU test_ops covers it")
    tile = getattr(gemm, tile_name)          # the simulator's small tile (fixture)
    monkeypatch.setattr(gemm, "TILE_OVERRIDE", {m: tile for m in (0, 1, 2)})
    x, wt, b, dy, y, pad = _inputs(rng, g)
    st, act = g[7], g[9]
    x64, w64, dy64, y64 = (a.astype(np.float64) for a in (x, wt, dy, y))
    gy = dy64 * _act_derivative(y64, act)
    tag = f"{tile_name} {tile} geometry {g}"
    strided = st != (1, 1)
    # the input gradient reads 4 channels per load where C_out allows, on the wide and narrow
    # tiles whose step has groups of 4 (of the simulator's small tiles: the wide one)
    v = "v" if g[6] % 4 == 0 and tile_name != "TILE_MID" and gemm.vec_tile(tile) else ""
    vw = "_v" if g[6] % 4 == 0 and tile_name == "TILE_WIDE" else ""   # the weight gradient's
    cases = [
        ("conv2d_forward(+bias, act)", "gemm_fwd[", lambda: C.conv2d_forward(x, wt, b, st, pad, act),
         R.ref_conv2d(x64, w64, b.astype(np.float64), st, pad, act), FWD_TOL),
        ("conv2d_forward(no bias)", "gemm_fwd[", lambda: C.conv2d_forward(x, wt, None, st, pad,
                                                                        "linear"),
         R.ref_conv2d(x64, w64, None, st, pad), FWD_TOL),
        ("conv2d_backward_input", "gemm_bwd_input" + (f"_{v}s[" if strided else
                                                     f"_{v}[" if v else "["),
         lambda: C.conv2d_backward_input(dy, wt, x.shape, st, pad),
         R.ref_conv2d_backward_input(dy64, w64, x.shape, st, pad), GRAD_TOL),
        ("conv2d_backward_input_act", "gemm_bwd_input" + (f"_{v}sf[" if strided else
                                                         f"_{v}f["),
         lambda: C.conv2d_backward_input_act(dy, y, act, wt, x.shape, st, pad),
         R.ref_conv2d_backward_input(gy, w64, x.shape, st, pad), GRAD_TOL),
        ("conv2d_backward_weight", f"gemm_bwd_weight{vw}[",
         lambda: C.conv2d_backward_weight(x, dy, wt.shape, st, pad),
         R.ref_conv2d_backward_weight(x64, dy64, wt.shape, st, pad), GRAD_TOL),
    ]
    for op, family, call, want, tol in cases:
        del launched[:]
        check(op, tag, call(), want, tol)
        ran = [n for n in launched if "gemm" in n]
        assert len(ran) == 1 and ran[0].startswith(family), (op, tag, launched)
        assert f"{tile.bm}x{tile.bn}x{tile.bk}/{tile.tm}x{tile.tn}/" in ran[0], (op, ran)
    del launched[:]
    dw, db = C.conv2d_backward_weight_bias(x, dy, y, act, wt.shape, st, pad)
    check("conv2d_backward_weight_bias: dw", tag, dw,
          R.ref_conv2d_backward_weight(x64, gy, wt.shape, st, pad), GRAD_TOL)
    check("conv2d_backward_weight_bias: db", tag, db, gy.sum(axis=(0, 1, 2)), GRAD_TOL)
    assert [n for n in launched if "gemm" in n][0].startswith(f"gemm_bwd_weight{vw or '_'}f["), \
        launched


@pytest.mark.usefixtures("poisoned_small_launches")
@pytest.mark.parametrize("stride", [(1, 1), (2, 2)])
def test_input_gradient_vector_loads(rng, stride, launched, monkeypatch):
    """BWD_INPUT's vector variants (dy, y and w read 4 channels per 128-bit load) on a tile
    shaped like the narrow one, whose w tile has fewer groups of 4 than threads (the first
    threads load, the others stage nothing), with C_out = 8 (two groups per tap), plain and
    fused, against the plain loops; without the override a C_out of 6 takes the mid tile."""
    if not SIM:
        pytest.skip("small forced tiles are for the simulator")
    g = (2, 7, 6, 3, 3, 3, 8, stride, "same", "tanh")
    x, wt, b, dy, y, pad = _inputs(rng, g)
    w64, dy64 = wt.astype(np.float64), dy.astype(np.float64)
    gy = dy64 * _act_derivative(y.astype(np.float64), "tanh")
    tile = gemm.GTile(32, 4, 4, 4, 4)
    assert gemm.vec_tile(tile) and tile.bn * tile.bk // 4 < tile.threads
    monkeypatch.setattr(gemm, "TILE_OVERRIDE", {gemm.BWD_INPUT: tile})
    s = "s" if stride != (1, 1) else ""
    for op, call, want, name in (
            ("conv2d_backward_input", lambda: C.conv2d_backward_input(dy, wt, x.shape, stride,
                                                                      pad), dy64, f"_v{s}["),
            ("conv2d_backward_input_act", lambda: C.conv2d_backward_input_act(
                dy, y, "tanh", wt, x.shape, stride, pad), gy, f"_v{s}f[")):
        del launched[:]
        check(op, g, call(), R.ref_conv2d_backward_input(want, w64, x.shape, stride, pad),
              GRAD_TOL)
        assert launched == [f"gemm_bwd_input{name}float32,32x4x4/4x4/1]"], launched
    monkeypatch.setattr(gemm, "TILE_OVERRIDE", {})
    g = (1, 5, 5, 3, 3, 3, 6, stride, "same", "relu")
    x, wt, b, dy, y, pad = _inputs(rng, g)
    del launched[:]
    check("conv2d_backward_input", g, C.conv2d_backward_input(dy, wt, x.shape, stride, pad),
          R.ref_conv2d_backward_input(dy, wt, x.shape, stride, pad), GRAD_TOL)   # (in float64)
    t = gemm.TILE_MID
    assert launched == [f"gemm_bwd_input{'_s' if s else ''}[float32,{t.bm}x{t.bn}x{t.bk}/"
                        f"{t.tm}x{t.tn}/{t.min_blocks}]"], launched


def test_unaligned_views_are_copied_for_the_vector_loads(monkeypatch):
    """On CuPy, an array whose data does not start on 16 bytes (a view) is copied before a
    gemm launch whose 128-bit loads would fault on it; an aligned one and None pass as they are."""
    class View:
        def __init__(self, ptr):
            self.data = type("Memory", (), {"ptr": ptr})()

        def copy(self):
            return "a copy"

    monkeypatch.setattr(conv, "xp", object())   # not NumPy: device arrays
    aligned, view = View(4096), View(4100)
    assert conv._aligned(aligned, view, None) == (aligned, "a copy", None)


@pytest.mark.usefixtures("poisoned_small_launches")
def test_linear_bias_gradient_reads_no_activation_output(rng, launched):
    """conv2d_backward_weight_bias with act='linear' passes no y: the fused kernel must not
    read it (the dummy has one element), and db is dy's column sums."""
    g = GEOMETRIES[2]
    x, wt, b, dy, y, pad = _inputs(rng, g)
    dw, db = C.conv2d_backward_weight_bias(x, dy, None, "linear", wt.shape, g[7], pad)
    dy64 = dy.astype(np.float64)
    check("conv2d_backward_weight_bias(linear): dw", g, dw,
          R.ref_conv2d_backward_weight(x.astype(np.float64), dy64, wt.shape, g[7], pad), GRAD_TOL)
    check("conv2d_backward_weight_bias(linear): db", g, db, dy64.sum(axis=(0, 1, 2)), GRAD_TOL)
    assert any(n.startswith("gemm_bwd_weight_f[") for n in launched), launched


@pytest.mark.usefixtures("poisoned_small_launches")
def test_baseline_stays_selectable_and_float64_uses_it(rng, launched):
    x, wt, b, dy, y, pad = _inputs(rng, GEOMETRIES[0])
    want = R.ref_conv2d(x, wt, b, (1, 1), pad, "relu")          # the loops run in float64
    before = conv.set_conv_kernels("igemm2")
    try:
        check("conv2d_forward (igemm2)", "", C.conv2d_forward(x, wt, b, (1, 1), pad, "relu"),
              want, FWD_TOL)
        assert launched[-1].startswith("gemm_fwd[float32"), launched
        assert conv.set_conv_kernels("baseline") == "igemm2"
        assert conv.conv_kernels() == "baseline"
        check("conv2d_forward (baseline)", "", C.conv2d_forward(x, wt, b, (1, 1), pad, "relu"),
              want, FWD_TOL)
        assert launched[-1].startswith("igemm_fwd[float32"), launched
    finally:
        conv.set_conv_kernels(before)
    got = C.conv2d_forward(x.astype(np.float64), wt.astype(np.float64), b.astype(np.float64),
                           (1, 1), pad, "relu")
    assert launched[-1].startswith("igemm_fwd[float64"), launched
    check("conv2d_forward (float64)", "", got, want, 1e-12)
    with pytest.raises(ValueError, match=r"set_conv_kernels: expected one of \('igemm2', "
                                         r"'baseline'\), got 'fast'"):
        conv.set_conv_kernels("fast")


def test_the_environment_variable_is_checked():
    code = "import gpucnn.kernels.cuda_set.conv"
    env = dict(os.environ, GPUCNN_CONV_KERNELS="fastest", NUMBA_ENABLE_CUDASIM="1")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode != 0
    assert "GPUCNN_CONV_KERNELS must be one of ('igemm2', 'baseline'), got 'fastest'" in r.stderr


@pytest.mark.parametrize("mode,strided,fused", [(0, False, False), (1, True, True),
                                                (2, False, True)])
def test_generated_source_is_unrolled_with_unsigned_divisions(mode, strided, fused):
    """Read from the source the generator writes for the 128x128x8 tile: the step's tile
    product is bk x tm x tn multiply-adds on named accumulators with no loop inside the step
    loop, every shared-memory index is a uint64 sum (S), and every division or remainder is
    of two uint32 values (a signed or 64-bit one would call a division routine)."""
    t = gemm.GTile(128, 128, 8, 8, 8, 1)
    src = gemm.generate(mode, t, strided, fused)
    body = src[src.index("while left > 0:"):]
    body = body[:body.index("\n    ty4 = ")]
    assert len(re.findall(r"\bc\d_\d \+= a\d \* b\d\b", body)) == t.bk * t.tm * t.tn
    assert body.count("range(") == 0 and body.count("while") == 1, "a loop inside the step"
    assert body.count("cuda.syncthreads()") == 1
    every = re.findall(r" (?://|%) ", src)
    unsigned = re.findall(r"U\([^()]*\) (?://|%) U\(", src)
    assert len(every) > 10 and len(unsigned) == len(every), [
        ln for ln in src.splitlines() if re.search(r" (//|%) ", ln)
        and not re.search(r"U\([^()]*\) (//|%) U\(", ln)]
    shared = re.findall(r"(?:As|Bs|Ds)\[([^\]]+)\]", src)
    assert shared and all(re.fullmatch(r"(\w+ [+-] )?S\(.+\)( [+*] S\(.+\))*", s)
                          or re.fullmatch(r"\w+ \+ S\(.+\)", s) for s in shared), shared


SASS_WORKER = r"""
import json, sys
from gpucnn.bench import sass
from gpucnn.kernels.cuda_set import gemm, conv
t_mid, t_narrow = gemm.TILE_MID, gemm.TILE_NARROW
specs = [(gemm.gemm_kernel(gemm.BWD_INPUT, t, True, f, t == t_narrow), "igemm2", tuple(t[:5]))
         for t in (t_mid, t_narrow) for f in (False, True)]
specs.append((conv.igemm_kernel(conv.BWD_INPUT, conv.TILE_NARROW, "float32"), "baseline",
              tuple(conv.TILE_NARROW[:5])))
out = []
for spec, family, tile in specs:
    r = sass.analyse(spec, family, tile)
    out.append({k: r[k] for k in ("name", "family", "share", "lds", "frame", "fp64", "calls",
                                  "total", "ffma")})
print("SASS-REPORT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def sass_report():
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    r = subprocess.run([sys.executable, "-c", SASS_WORKER], env=env, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("SASS-REPORT ")][-1]
    return json.loads(line[len("SASS-REPORT "):])


def test_decomposed_strided_gradient_machine_code(sass_report):
    """sm_90 machine code of the decomposed strided input gradient: no call at all (no 64-bit
    division routine, no float division), no stack frame, no float64, 128-bit shared loads only
    in the reduction step, and FFMA shares above floors just under the table's. The baseline's
    strided input gradient is the control: the same reading finds its division calls."""
    new = [r for r in sass_report if r["family"] == "igemm2"]
    assert len(new) == 4
    for r in new:
        assert r["calls"] == [], (r["name"], r["calls"])
        assert r["frame"] == 0 and r["fp64"] == [], r
        assert set(r["lds"]) == {"LDS.128"}, (r["name"], r["lds"])
        # the target, met in docs/instruction-mix.md: the baseline's strided gradient spends
        # 6% of its step on FFMA
        assert r["share"] >= 50.0, (r["name"], r["ffma"], r["total"])
    base = [r for r in sass_report if r["family"] == "baseline"][0]
    assert base["calls"], "the detector finds no call in the baseline: it cannot fail"
    assert "LDS.32" in base["lds"]


@pytest.mark.usefixtures("poisoned_small_launches")
@pytest.mark.parametrize("stride,padding", [((2, 2), "same"), ((3, 2), "valid")])
def test_transposed_convolution_runs_on_the_decomposed_gradient(rng, stride, padding, launched):
    """gpucnn.functional.conv2d_transpose on the cuda backend: the strided input gradient's
    residue classes (one launch, a class per grid z), against the plain loop of the input
    gradient (its definition) plus the bias."""
    import gpucnn
    import gpucnn.functional as F

    x = rng.standard_normal((2, 3, 4, 3)).astype(np.float32)
    w = rng.standard_normal((3, 2, 5, 3)).astype(np.float32)     # (KH, KW, C_out, C_in)
    b = rng.standard_normal(5).astype(np.float32)
    before = gpucnn.get_backend()
    gpucnn.set_backend("cuda")
    try:
        got = F.conv2d_transpose(x, w, b, strides=stride, padding=padding).numpy()
    finally:
        gpucnn.set_backend(before)
    sh, sw = stride
    ho = 3 * sh if padding == "same" else 2 * sh + max(3, sh)
    wo = 4 * sw if padding == "same" else 3 * sw + max(2, sw)
    pad = R.ref_pads(ho, wo, 3, 2, sh, sw, padding)
    want = R.ref_conv2d_backward_input(x, w, (2, ho, wo, 5), stride, pad) + b    # float64
    check("conv2d_transpose", (stride, padding), got, want, GRAD_TOL)
    assert any(n.startswith("gemm_bwd_input_s[") for n in launched), launched


def test_the_bench_counts_a_reduction_step_by_trip_counts():
    """python -m gpucnn.bench.sass on a listing written here: the reduction loop is the
    outermost loop holding a barrier; in a baseline kernel its first nested FFMA loop (the
    full step's kk loop) counts bk times and a second one (the partial step's) not at all; in
    an igemm2 kernel a nested loop counts once and is named in the notes; HMMA (the TF32
    kernels' math) is counted beside FFMA."""
    from gpucnn.bench import sass

    def ins(op, target=None, label=None):
        return (0, op, f" `({target})" if target else "", label)

    listing = [ins("MOV"),                                     # before the loop: not counted
               ins("LDG.E", label=".L_x_1"), ins("STS"), ins("BAR.SYNC"),
               ins("LDS.128", label=".L_x_2"), ins("FFMA"), ins("FFMA"), ins("BRA", ".L_x_2"),
               ins("FFMA", label=".L_x_3"), ins("BRA", ".L_x_3"),     # partial step
               ins("IADD3"), ins("BAR.SYNC"), ins("BRA", ".L_x_1"),
               ins("EXIT")]
    listing = [(4 * i,) + t[1:] for i, t in enumerate(listing)]
    base = sass.reduction_step(listing, 8, baseline=True)
    # 6 instructions around the nested loops, the kk loop's 4 eight times, the partial step's 0
    assert (base["total"], base["ffma"], base["bar"], base["ldg"]) == (6 + 8 * 4, 16, 2, 1)
    assert base["lds"] == {"LDS.128": 8}
    new = sass.reduction_step(listing, 8, baseline=False)
    assert (new["total"], new["ffma"]) == (6 + 4 + 2, 3) and len(new["notes"]) == 2
    tf32 = listing[:4] + [ins("HMMA.1688.F32.TF32"), ins("HMMA.1688.F32.TF32")] + listing[4:]
    tf32 = [(4 * i,) + t[1:] for i, t in enumerate(tf32)]
    got = sass.reduction_step(tf32, 8, baseline=False)
    assert (got["hmma"], got["ffma"], got["total"]) == (2, 3, 6 + 4 + 2 + 2)
    assert sass.threads_of("tf32", (128, 128, 16, 2, 4)) == 256
    assert sass.threads_of("igemm2", (128, 16, 8, 8, 4)) == 64
    assert sass._width("LDS.U.64") == "LDS.64" and sass._width("LDS") == "LDS.32"
    assert sass.occupancy(128, 34816, 256) == (2, 16)
    with pytest.raises(RuntimeError, match="no loop with a barrier"):
        sass.reduction_step(listing[4:8], 8, baseline=True)
