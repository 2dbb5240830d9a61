"""The SIMT float32 implicit-GEMM conv kernels ("igemm2"), generated from their tile parameters.

Each variant's source is written out by ``generate(mode, tile, strided, fused)`` and compiled:
the reduction step (``bk``) and the ``tm x tn`` register block are fully unrolled, so that every
shared-memory address is a base plus a constant and every accumulator is a register. The kernel
is assembled from named parts (CUTLASS's split, DESIGN item 10), each a function here that emits
its lines: ``loader_a``/``loader_b`` (global to registers to shared memory, the implicit im2col),
``mainloop`` (the reduction, double buffered by register prefetch: the next step's global loads
are issued before the current step's tile product, one barrier per step) and ``epilogue``.

=============  ===================  ==========  ==================================  =========
mode           rows (M)             cols (N)    reduction (K), fastest digit last   loads
=============  ===================  ==========  ==================================  =========
FWD            (n, oh, ow) of y     c_out       (ky, kx, c_in)                      A k-lane
BWD_INPUT      (n, qy, qx), class   c_in        (j, i, c_out): sub-kernel taps      A,B k-lane
BWD_WEIGHT     (ky, kx, c_in)       c_out       (n, oh, ow), split over z           A,B cols
=============  ===================  ==========  ==================================  =========

The input gradient is decomposed by residue class: a dx pixel ``ih`` only receives the taps
``ky = py + sh * j`` with ``py = (ih + pt) mod sh``, from ``oh = qy - j`` where
``qy = (ih + pt) // sh``. Class ``(py, px) = divmod(blockIdx.z, sw)`` is a stride-1 correlation
of dy with the sub-kernel ``w[py::sh, px::sw]``: no wasted taps, no division in the loop. The
stride-1 variant is the same code with ``sh = sw = 1`` written in as constants.

Layout rules: every array is passed flat (C-contiguous, seen 1-D); offsets are 32-bit (the
launcher refuses arrays of 2**31 elements or more), indices unsigned (no negative-index fix-up);
the shared tiles are k-major (``As[k][m]``, rows padded by 4 words: conflict-free stores,
16-byte aligned rows), and a thread's rows are ``tm/4`` groups of 4 consecutive ones, so each
group is one 128-bit shared load (LDS.128). Every output is written once, after the reduction.
BWD_INPUT's variants on the wide and narrow tiles (tag ``v``) read dy, y and w 4 channels per
128-bit global load (``ptx.ldg_f32x4``): C_out a multiple of 4 and the arrays 16-byte aligned
(the launcher copies a view that is not); any other C_out takes the mid tile's scalar loads.

float32 only: the float64 conv runs on the baseline kernels of ``conv`` (gradient checks).
"""
from __future__ import annotations

import linecache
import re
from typing import NamedTuple

from numba import types

from ._launch import KernelSpec, Prepared, arr, kernel_factory, sm_count
from ._runtime import SIMULATOR
from ._runtime import numba_cuda as cuda
from .activation import RELU, SIGMOID, TANH, act_device_fns
from .ptx import ldg_f32x4

FWD, BWD_INPUT, BWD_WEIGHT = 0, 1, 2
MODE_NAMES = ("fwd", "bwd_input", "bwd_weight")
PAD = 4          # words of padding per shared row: keeps rows 16-byte aligned


class GTile(NamedTuple):
    """Block tile ``bm x bn``, reduction step ``bk``, register block ``tm x tn`` (multiples of
    4: one LDS.128 per 4 rows or columns), ``min_blocks`` resident blocks asked of ptxas."""

    bm: int
    bn: int
    bk: int
    tm: int
    tn: int
    min_blocks: int = 1

    @property
    def threads(self) -> int:
        return (self.bm // self.tm) * (self.bn // self.tn)

    def check(self):
        nt = self.threads
        ok = (self.tm % 4 == 0 and self.tn % 4 == 0 and self.bm % self.tm == 0
              and self.bn % self.tn == 0 and nt % self.bk == 0
              and (self.bm * self.bk) % nt == 0 and (self.bn * self.bk) % nt == 0
              and all(nt % x == 0 or x % nt == 0 for x in (self.bm, self.bn))
              and self.tn * nt <= 2 * self.bk * (self.bm + PAD))   # the FWD epilogue's rows
        if not ok:
            raise ValueError(f"gemm tile {self}: need 4 | tm, tn; tm | bm, tn | bn; the {nt} "
                             "threads dividing bk, bm*bk and bn*bk, and dividing or divided by "
                             "bm and bn")
        return self


#: The tiles: 128x128 with 8x8 register blocks for big GEMMs, 64x64 with 4x4 for mid-sized
#: ones (more blocks), 128x16 with 8x4 for LeNet's 6 and 16 channels (64 threads: each staged
#: A element feeds only 16 columns, so the thread's share of the step's fixed work is what
#: the larger register block buys). Tests use small ones.
TILE_WIDE = GTile(128, 128, 8, 8, 8, 1)
TILE_MID = GTile(64, 64, 16, 4, 4, 2)
TILE_NARROW = GTile(128, 16, 8, 8, 4, 4)


class _Src:
    """Lines of generated source with an indentation level."""

    def __init__(self):
        self.lines, self.ind = [], 1

    def __call__(self, *lines):
        for ln in lines:
            self.lines.append("    " * self.ind + ln)

    def block(self, head):
        self(head)
        self.ind += 1
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.ind -= 1


def udiv(a, b):
    """Source of ``a // b`` for non-negative ints as a 32-bit unsigned division (no 64-bit
    division call), typed back to signed."""
    return f"I(U({a}) // U({b}))"


def umod(a, b):
    return f"I(U({a}) % U({b}))"


def _lane_rows(t: GTile, x: int):
    """The k-lane pattern over a ``bk x x`` tile: the thread's lane ``tid % bk`` and its
    elements' tile columns ``tid // bk + i * (nt // bk)``."""
    nt = t.threads
    return [(udiv("tid", t.bk), i * (nt // t.bk)) for i in range(x * t.bk // nt)]


def _vec_groups(t: GTile, x: int):
    """The vector pattern over a ``bk x x`` tile (BWD_INPUT's ``vec`` variants): a thread's lane
    is the 4 consecutive k from ``4 * (tid % (bk/4))``, its groups' tile columns
    ``tid // (bk/4) + i * (nt // (bk/4))``; ``(groups, guarded)``: with fewer groups than
    threads, only the first threads take one (``tid < x * bk / 4``)."""
    nt, q = t.threads, t.bk // 4
    return ([(udiv("tid", q), i * (nt // q)) for i in range(max(x * q // nt, 1))],
            x * q < nt)


def _col_rows(t: GTile, x: int):
    """The column pattern over a ``bk x x`` tile (consecutive threads, consecutive columns):
    element i of a thread at ``(krow, col) = (tid // x + ki, tid % x + ci)``."""
    nt = t.threads
    return [(i * nt // x, (i * nt) % x) for i in range(x * t.bk // nt)]


# ------------------------------------------------------------------------------ the parts

def setup(s: _Src, mode, t: GTile, strided):
    """Block and class coordinates, the GEMM's extents (M, K range)."""
    s("tid = I(cuda.threadIdx.x)",
      f"tx = {umod('tid', t.bn // t.tn)}",
      f"ty = {udiv('tid', t.bn // t.tn)}",
      f"m0 = I(cuda.blockIdx.x) * {t.bm}",
      f"n0 = I(cuda.blockIdx.y) * {t.bn}")
    if mode == FWD:
        s("M = NB * HO * WO", "NCOL = CO", "kbeg = 0", "kend = KH * KW * C")
    elif mode == BWD_WEIGHT:
        s("M = KH * KW * C", "NCOL = CO", "split = I(cuda.blockIdx.z)",
          "kbeg = split * CHUNK", "kend = NB * HO * WO", "klim = kbeg + CHUNK",
          "if klim < kend:   # 32-bit (min() of Numba's widened sums is 64-bit)",
          "    kend = klim")
    else:
        if strided:
            s("z = I(cuda.blockIdx.z)", f"py = {udiv('z', 'SW')}", f"px = {umod('z', 'SW')}",
              "SHv = SH", "SWv = SW")
        else:
            s("py = 0", "px = 0", "SHv = 1", "SWv = 1")
        # dx rows of the class: ih = qy * sh + py - pt in [0, H), qy >= 0
        for q, p, pad, size, k in (("qy", "py", "PT", "H", "KH"), ("qx", "px", "PL", "W", "KW")):
            sv = "SHv" if q == "qy" else "SWv"
            s(f"{q}0 = 0",
              f"if {pad} > {p}:",
              f"    {q}0 = {udiv(f'{pad} - {p} + {sv} - 1', sv)}",
              f"{q}n = {udiv(f'{size} + {pad} - {p} + {sv} - 1', sv)} - {q}0",
              f"if {q}n < 0:", f"    {q}n = 0",
              f"k{q} = 0",
              f"if {p} < {k}:",
              f"    k{q} = {udiv(f'{k} - {p} + {sv} - 1', sv)}",
              f"k{q}d = max(k{q}, 1)   # a divisor (an empty class reduces over nothing)")
        s("if kqx == 0:", "    kqy = 0   # no tap of the class: ky < kqy never holds",
          "M = NB * qyn * qxn", "NCOL = C", "kbeg = 0", "kend = kqy * kqx * CO")
        s("if m0 >= M:", "    return   # the whole block: no barrier is reached")


def loader_a(s: _Src, mode, t: GTile, fused, vec, phase):
    """The A tile (BK x BM): ``phase`` 'init' (per-row gathers, once per tile), 'load' (the
    step's global loads into registers va_i, or va_i_e with ``vec``: 128-bit loads of 4
    consecutive channels), 'advance' (the thread's reduction digits by BK)."""
    if mode == BWD_WEIGHT:
        return _loader_a_weight(s, t, phase)
    rows = _vec_groups(t, t.bm)[0] if vec else _lane_rows(t, t.bm)
    lanes = 4 if vec else 1
    # k digits (ky, kx, kc) in the radix (KW-or-sub, CIN-or-CO), the thread's lane
    rad, kwv, khv = ("C", "KW", "KH") if mode == FWD else ("CO", "kqxd", "kqy")
    if phase == "init":
        s(f"lane = {umod('tid', t.bk // 4)} * 4" if vec else f"lane = {umod('tid', t.bk)}",
          "k = kbeg + lane",
          f"kc = {umod('k', rad)}", f"kt = {udiv('k', rad)}",
          f"kx = {umod('kt', kwv)}", f"ky = {udiv('kt', kwv)}",
          f"dc = {umod(t.bk, rad)}", f"dt_ = {udiv(t.bk, rad)}",
          f"dx = {umod('dt_', kwv)}", f"dy = {udiv('dt_', kwv)}")
        for i, (base, off) in enumerate(rows):
            s(f"m = m0 + {base} + {off}")
            if mode == FWD:
                s(f"ow = {umod('m', 'WO')}", f"mt = {udiv('m', 'WO')}",
                  f"oh = {umod('mt', 'HO')}", f"nn = {udiv('mt', 'HO')}",
                  f"hb{i} = oh * SH - PT", f"wb{i} = ow * SW - PL",
                  f"ro{i} = I(((nn * H + hb{i}) * W + wb{i}) * C)",
                  f"if m >= M:", f"    hb{i} = H    # never inside the image")
            else:
                s(f"qx = {umod('m', 'qxn')} + qx0", f"mt = {udiv('m', 'qxn')}",
                  f"qy = {umod('mt', 'qyn')} + qy0", f"nn = {udiv('mt', 'qyn')}",
                  f"hb{i} = qy", f"wb{i} = qx",
                  f"ro{i} = I(((nn * HO + qy) * WO + qx) * CO)",
                  f"if m >= M:", f"    hb{i} = -1   # never inside dy")
    elif phase == "load":
        s(f"kin = ky < {khv}")
        if mode == FWD:
            s("ko = (ky * W + kx) * C + kc")
            test = "(U(hb{i} + ky) < U(H)) & (U(wb{i} + kx) < U(W))"
        else:
            s("ko = kc - (ky * WO + kx) * CO")
            test = "(U(hb{i} - ky) < U(HO)) & (U(wb{i} - kx) < U(WO))"
        for i in range(len(rows)):
            va = [f"va{i}_{e}" for e in range(4)] if vec else [f"va{i}"]
            s(*(f"{v} = zero" for v in va))
            with s.block(f"if kin & {test.format(i=i)}:"):
                s(f"o = U(ro{i} + ko)")
                s(f"{', '.join(va)} = ldg4(src, o)" if vec else f"{va[0]} = src[o]")
                if fused:
                    ys = [f"yv{e}" for e in range(len(va))]
                    s(f"{', '.join(ys)} = ldg4(yact, o)" if vec else "yv0 = yact[o]")
                    for v, y in zip(va, ys):
                        act_grad(s, v, y)
    elif phase == "advance":
        s("kc += dc", "kx += dx", "ky += dy",
          f"if kc >= {rad}:", f"    kc -= {rad}", "    kx += 1",
          f"if kx >= {kwv}:", f"    kx -= {kwv}", "    ky += 1")
    elif phase == "store":
        for i, (base, off) in enumerate(rows):
            for e in range(lanes):
                s(f"As[sw_a + S({e * (t.bm + PAD) + off})] = va{i}{f'_{e}' if vec else ''}")
    elif phase == "store_init":
        s(f"sw_a = S(lane) * S({t.bm + PAD}) + S({rows[0][0]})")


def _loader_a_weight(s: _Src, t: GTile, phase):
    """BWD_WEIGHT's A tile: x patches. A thread stages one reduction row (n, oh, ow), kept as its
    window's corner ``(ohs0, ows0) = (oh * sh, ow * sw)`` and flat offset ``xb0`` and advanced by
    BK per step with one carry per digit, for ``bm * bk / threads`` columns (ky, kx, ci) whose
    gather offsets are computed once per tile; consecutive threads take consecutive columns."""
    tpr = t.threads // t.bk                  # threads per reduction row
    cols = [j * tpr for j in range(t.bm // tpr)]
    if phase == "init":
        for j, c in enumerate(cols):
            s(f"m = m0 + {umod('tid', tpr)} + {c}",
              f"wc = {umod('m', 'C')}", "mt = " + udiv("m", "C"),
              f"eky{j} = {udiv('mt', 'KW')} - PT", f"ekx{j} = {umod('mt', 'KW')} - PL",
              f"rp{j} = (eky{j} * W + ekx{j}) * C + wc",
              "if m >= M:", f"    eky{j} = H   # never inside the image")
        s(f"dw_ = {umod(t.bk, 'WO')}", f"dt_ = {udiv(t.bk, 'WO')}",
          f"dh_ = {umod('dt_', 'HO')}", f"dn_ = {udiv('dt_', 'HO')} * H",
          f"r = kbeg + {udiv('tid', tpr)}", f"kal = kend - r   # the row is in range: kal > 0",
          f"ows0 = {umod('r', 'WO')} * SW", "rt = " + udiv("r", "WO"),
          f"ohs0 = {umod('rt', 'HO')} * SH", f"xb0 = (({udiv('rt', 'HO')} * H + ohs0) * W + "
          "ows0) * C",
          "dws = dw_ * SW", "dhs = dh_ * SH", "dxb = ((dn_ + dhs) * W + dws) * C",
          "wend = WO * SW", "hend = HO * SH",
          "wcy = (SH * W - wend) * C   # ow wraps: one row of windows down",
          "hcy = (H - hend) * W * C    # oh wraps: the next image")
    elif phase == "load":
        s("kv = kal > 0")
        for j in range(len(cols)):
            s(f"va{j} = zero",
              f"if kv & (U(ohs0 + eky{j}) < U(H)) & (U(ows0 + ekx{j}) < U(W)):",
              f"    va{j} = src[U(xb0 + rp{j})]")
    elif phase == "advance":
        s(f"kal -= {t.bk}", "ows0 += dws", "ohs0 += dhs", "xb0 += dxb",
          "if ows0 >= wend:", "    ows0 -= wend", "    ohs0 += SH", "    xb0 += wcy",
          "if ohs0 >= hend:", "    ohs0 -= hend", "    xb0 += hcy")
    elif phase == "store_init":
        s(f"sw_a = S({udiv('tid', tpr)}) * S({t.bm + PAD}) + S({umod('tid', tpr)})")
    elif phase == "store":
        for j, c in enumerate(cols):
            s(f"As[sw_a + S({c})] = va{j}")


def act_grad_setup(s: _Src, mode):
    """The activation's gradient without a branch per element: ``g * (g2 y^2 + g1 y + g0)``
    from the forward output y (tanh: 1 - y^2, sigmoid: y - y^2, linear: 1), and ReLU's
    ``y > 0`` as a select; the coefficients are chosen once per thread. Without an activation
    (the bias gradient of a linear layer) y is a dummy: every read goes to its element 0."""
    s("g0 = f32(1)", "g1 = zero", "g2 = zero", f"norelu = ACT != {RELU}")
    if mode == BWD_WEIGHT:      # the input gradient's fused variant always has an activation
        s("ym = U(0)   # linear: y is a one-element dummy, read at 0",
          "if ACT != 0:", "    ym = U(0xFFFFFFFF)")
    s(f"if ACT == {TANH}:", "    g2 = f32(-1)",
      f"if ACT == {SIGMOID}:", "    g0 = zero", "    g1 = f32(1)", "    g2 = f32(-1)")


def act_grad(s: _Src, v: str, y: str):
    """``v`` times the activation's gradient at ``y``, the forward output."""
    s(f"{v} = {v} * ((g2 * {y} + g1) * {y} + g0) if ({y} > zero) | norelu else zero")


def loader_b(s: _Src, mode, t: GTile, fused, db, vec, phase):
    """The B tile (BK x BN): the kernel (FWD: rows k, columns c_out; BWD_INPUT: the sub-kernel
    read along c_out, the k-lane pattern) or dy (BWD_WEIGHT, with the fused activation gradient
    and the bias gradient's column sums)."""
    bnp = t.bn + PAD
    if mode == BWD_INPUT:
        rows, guarded = _vec_groups(t, t.bn) if vec else (_lane_rows(t, t.bn), False)
        vb = [[f"vb{i}_{e}" for e in range(4)] if vec else [f"vb{i}"] for i in range(len(rows))]
        if phase == "init":
            for i, (base, off) in enumerate(rows):
                s(f"ci = n0 + {base} + {off}", f"bo{i} = ci * CO",
                  f"cv{i} = (ci < C) & (tid < {t.bn * t.bk // 4})" if guarded else
                  f"cv{i} = ci < C")
        elif phase == "load":
            s("kb = ((py + SHv * ky) * KW + px + SWv * kx) * C * CO + kc")
            for i, v in enumerate(vb):
                s(*(f"{x} = zero" for x in v), f"if kin & cv{i}:",
                  f"    {', '.join(v)} = ldg4(wmat, U(kb + bo{i}))" if vec else
                  f"    {v[0]} = wmat[U(kb + bo{i})]")
        elif phase == "store_init":
            s(f"sw_b = S(lane) * S({bnp}) + S({rows[0][0]})")
        elif phase == "store":
            if guarded:      # the other threads' columns lie past the tile
                s(f"if tid < {t.bn * t.bk // 4}:")
            s.ind += guarded
            for (_, off), v in zip(rows, vb):
                for e, x in enumerate(v):
                    s(f"Bs[sw_b + S({e * bnp + off})] = {x}")
            s.ind -= guarded
        return
    # the column pattern (scalar: element i at row tb + kr_i, column tid % bn + c_i), or with
    # ``vec`` (BWD_WEIGHT) groups of 4 columns: group i at row tb + kr_i, columns bc .. bc + 3
    if vec:
        q = t.bn // 4
        rows = [(i * (t.threads // q), 0) for i in range(max(t.bk * q // t.threads, 1))]
        tb, col, width = udiv("tid", q), f"{umod('tid', q)} * 4", 4
    else:
        rows, tb, col, width = _col_rows(t, t.bn), udiv("tid", t.bn), umod("tid", t.bn), 1
    vb = [[f"vb{i}_{e}" for e in range(4)] if vec else [f"vb{i}"] for i in range(len(rows))]
    if phase == "init":
        s(f"kbl = kend - kbeg - {tb}   # rows left below the thread's first: kr_i < kbl")
        for i, (kr, c) in enumerate(rows):
            s(f"bc = n0 + {col} + {c}", f"cv{i} = bc < CO", f"bo{i} = ({tb} + {kr}) * CO + bc")
        s("kco = kbeg * CO" if mode == BWD_WEIGHT else "kco = 0")
        if db:
            s(*(f"dbs{e} = zero" for e in range(width)) if vec else
              (f"dbs{i} = zero" for i in range(len(rows))))
            s("with_db = cuda.blockIdx.x == 0")
    elif phase == "load":
        for i, (kr, c) in enumerate(rows):
            s(*(f"{v} = zero" for v in vb[i]))
            with s.block(f"if cv{i} & ({kr} < kbl):"):
                s(f"o = U(bo{i} + kco)")
                s(f"{', '.join(vb[i])} = ldg4(wmat, o)" if vec else f"{vb[i][0]} = wmat[o]")
                if fused:
                    ys = [f"yv{e}" for e in range(width)]
                    s(f"{', '.join(ys)} = ldg4(yact, o & ym)" if vec else "yv0 = yact[o & ym]")
                    for v, y in zip(vb[i], ys):
                        act_grad(s, v, y)
        if db:
            with s.block("if with_db:"):
                for i, v in enumerate(vb):   # vec: a thread's groups share their 4 columns
                    s(*(f"dbs{e if vec else i} += {x}" for e, x in enumerate(v)))
    elif phase == "advance":
        s(f"kco += {t.bk} * CO", f"kbl -= {t.bk}")
    elif phase == "store_init":
        s(f"sw_b = S({tb}) * S({bnp}) + S({col})")
    elif phase == "store":
        for (kr, c), v in zip(rows, vb):
            for e, x in enumerate(v):
                s(f"Bs[sw_b + S({kr * bnp + c + e})] = {x}")


def tile_product(s: _Src, t: GTile):
    """acc += As[buf]^T Bs[buf] over one BK step, unrolled: per k, tm/4 + tn/4 LDS.128 and
    tm * tn FFMA. Thread rows ``g * bm / (tm/4) + 4 * ty + v``, columns likewise with tx."""
    ga, gb = t.tm // 4, t.tn // 4
    bmp, bnp = t.bm + PAD, t.bn + PAD
    for kk in range(t.bk):
        for i in range(t.tm):
            g, v = divmod(i, 4)
            s(f"a{i} = As[pa + S({kk * bmp + g * (t.bm // ga) + v})]")
        for j in range(t.tn):
            g, v = divmod(j, 4)
            s(f"b{j} = Bs[pb + S({kk * bnp + g * (t.bn // gb) + v})]")
        for i in range(t.tm):
            for j in range(t.tn):
                s(f"c{i}_{j} += a{i} * b{j}")


def mainloop(s: _Src, mode, t: GTile, fused, db, vec):
    """Prologue (stage step 0 into buffer 0), then per step: the next step's global loads into
    registers, the tile product on the current buffer, the registers stored into the other
    buffer, one barrier."""
    A = lambda ph: loader_a(s, mode, t, fused, vec, ph)   # noqa: E731
    B = lambda ph: loader_b(s, mode, t, fused, db, vec, ph)   # noqa: E731
    sa, sb = t.bk * (t.bm + PAD), t.bk * (t.bn + PAD)
    if fused:
        act_grad_setup(s, mode)
    A("init")
    B("init")
    A("store_init")
    B("store_init")
    s(f"ra = S({udiv('tid', t.bn // t.tn)}) * S(4)", f"rb = S({umod('tid', t.bn // t.tn)}) * S(4)")
    for i in range(t.tm):
        for j in range(t.tn):
            s(f"c{i}_{j} = zero")
    A("load")
    B("load")
    A("store")
    B("store")
    s("cuda.syncthreads()  # buffer 0 staged before any thread reads it",
      f"nsteps = {udiv(f'kend - kbeg + {t.bk - 1}', t.bk)}",
      "cur_a = S(0)", "cur_b = S(0)")
    s("left = nsteps")
    with s.block("while left > 0:   # int32 count: no 64-bit induction variable"):
        s("left -= 1", "more = left > 0")
        with s.block("if more:"):
            A("advance")
            B("advance")
            A("load")
            B("load")
        s("pa = ra + cur_a", "pb = rb + cur_b")
        tile_product(s, t)
        s(f"cur_a = S({sa}) - cur_a", f"cur_b = S({sb}) - cur_b")
        with s.block("if more:"):
            s("sw_a = sw_a + cur_a", "sw_b = sw_b + cur_b")
            A("store")
            B("store")
            s("sw_a = sw_a - cur_a", "sw_b = sw_b - cur_b")
        s("cuda.syncthreads()  # the other buffer is staged, and this one read by all")


def epilogue(s: _Src, mode, t: GTile, db, vec):
    """One global write per output: FWD adds the bias and applies the activation; BWD_INPUT
    maps class rows back to dx pixels; BWD_WEIGHT writes its split's partial (and db row)."""
    ga, gb = t.tm // 4, t.tn // 4
    s(f"ty4 = {udiv('tid', t.bn // t.tn)} * 4", f"tx4 = {umod('tid', t.bn // t.tn)} * 4")
    for i in range(t.tm):
        g, v = divmod(i, 4)
        s(f"m = m0 + ty4 + {g * (t.bm // ga) + v}")
        if mode == FWD:
            _act_row(s, t, i)
            continue
        with s.block("if m < M:"):
            if mode == BWD_INPUT:
                s(f"qx = {umod('m', 'qxn')} + qx0", f"mt = {udiv('m', 'qxn')}",
                  f"qy = {umod('mt', 'qyn')} + qy0", f"nn = {udiv('mt', 'qyn')}",
                  "orow = ((nn * H + qy * SHv + py - PT) * W + qx * SWv + px - PL) * C")
            elif mode == BWD_WEIGHT:
                s("orow = (split * (M + HB) + m) * CO")
            for j in range(t.tn):
                gj, vj = divmod(j, 4)
                s(f"c = n0 + tx4 + {gj * (t.bn // gb) + vj}")
                with s.block("if c < NCOL:"):
                    s(f"out[U(orow + c)] = c{i}_{j}")
    if db:
        _db_sums(s, t, vec)


def _act_row(s: _Src, t: GTile, i: int):
    """FWD: row i of the register block through the thread's own column of the (now free)
    A buffer, then a run-time loop adds the bias and applies the activation: its code appears
    once per row instead of once per output (an unrolled 8x8 epilogue of tanh and sigmoid
    takes ptxas most of a minute)."""
    gb = t.tn // 4
    for j in range(t.tn):
        s(f"As[S({j * t.threads}) + S(tid)] = c{i}_{j}")
    with s.block("if m < M:"):
        s("orow = m * CO")
        with s.block(f"for j in range(min({t.tn}, CO)):   # a run-time trip count: not "
                     "unrolled"):
            s(f"c = n0 + tx4 + (j >> 2) * {t.bn // gb} + (j & 3)")
            with s.block("if c < CO:"):
                s(f"v = As[S(j) * S({t.threads}) + S(tid)]", "if HB != 0:",
                  "    v += bias[U(c)]", "out[U(orow + c)] = act_fwd(v, ACT)")


def _db_sums(s: _Src, t: GTile, vec):
    """BWD_WEIGHT with the bias: the first row tile's blocks sum their staged dy columns (kept
    per thread in dbs_i, with ``vec`` dbs_e of its columns bc + e) through shared memory, in a
    fixed order, into the split's db row."""
    nt, q = t.threads, t.bn // 4
    sums = 4 if vec else len(_col_rows(t, t.bn))
    with s.block("if with_db:"):
        for i in range(sums):
            s(f"Ds[S({i * nt}) + S(tid)] = dbs{i}")
    s("cuda.syncthreads()  # every thread's column sums are in Ds")
    for part in range(-(-t.bn // nt)):       # column col of the tile: thread col % nt
        with s.block(f"if with_db & (tid + {part * nt} < {t.bn}):"):
            s("tot = zero", f"col = tid + {part * nt}")
            if vec:       # threads with tid % q == col // 4 hold column col as their e = col % 4
                s(f"e4 = {umod('col', 4)} * {nt} + {udiv('col', 4)}")
                for r in range(nt // q):
                    s(f"tot += Ds[S(e4) + S({r * q})]")
            for i, (_, c) in enumerate([] if vec else _col_rows(t, t.bn)):
                for r in range(max(1, nt // t.bn)):
                    s(f"tt = col - {c} + {r * t.bn}",
                      f"if (tt >= 0) & (tt < {nt}):", f"    tot += Ds[S({i * nt}) + S(tt)]")
            s("c = n0 + col",
              "if c < CO:", "    out[U((split * (M + 1) + M) * CO + c)] = tot")


# ------------------------------------------------------------------------------ generator

ARGS = ("src, wmat, bias, ysrc, ymat, out, NB, H, W, C, HO, WO, CO, KH, KW, SH, SW, PT, PL, ACT, HB, "
        "CHUNK")


def generate(mode: int, tile: GTile, strided: bool, fused: bool, vec: bool = False) -> str:
    """The kernel's source (see the module docstring). ``strided``: BWD_INPUT with stride > 1
    (residue classes on blockIdx.z); ``fused``: the activation's gradient read with dy (BWD
    modes; in BWD_WEIGHT also db); ``vec``: BWD_INPUT's dy, y and w read 4 channels per 128-bit
    load (``ptx.ldg_f32x4``; C_out a multiple of 4, the arrays 16-byte aligned)."""
    t = tile
    db = fused and mode == BWD_WEIGHT
    s = _Src()
    sa, sb = t.bk * (t.bm + PAD), t.bk * (t.bn + PAD)
    align = "" if SIMULATOR else ", alignment=16"
    s(f"As = cuda.shared.array({2 * sa}, f32{align})",
      f"Bs = cuda.shared.array({2 * sb}, f32{align})")
    if db:
        s(f"Ds = cuda.shared.array({(4 if vec else len(_col_rows(t, t.bn))) * t.threads}, f32)")
    s("zero = f32(0)", "yact = ymat" if mode == BWD_WEIGHT else "yact = ysrc")
    setup(s, mode, t, strided)
    mainloop(s, mode, t, fused, db, vec)
    epilogue(s, mode, t, db, vec)
    return f"def kernel({ARGS}):\n" + "\n".join(_int32(ln) for ln in s.lines) + "\n"


_INT_VAR = re.compile(r"^(\s*)(k0|k|kc|kx|ky|kt|lane|m|mt|ow|oh|nn|qx|qy|ko|kb|kco|kr0|ohs|ows|"
                      r"dc|dt_|dx|dy|dw_|dh_|dn_|bc|ci|wc|r|rt|orow|c|col|tt|M|NCOL|kbeg|kend|"
                      r"nsteps|left|kal|kbl|e4|klim|dws|dhs|dxb|wend|hend|wcy|hcy|split|z|py|px|SHv|SWv|qy0|qx0|qyn|qxn|kqy|kqx|kqyd|kqxd|tid|tx|ty|"
                      r"m0|n0|ty4|tx4|(?:hb|wb|ro|bo|ow|oh|nb|eky|ekx|rp|ohs|ows|xb|kl)\d+)"
                      r" (=|\+=|-=) (.+?)(\s+#.*)?$")


def _int32(line: str) -> str:
    """Every integer variable assigned as int32 (``I``): Numba widens int32 arithmetic to
    int64, and a variable that stays int64 keeps its 64-bit adds and compares in the loop."""
    m = _INT_VAR.match(line)
    if not m:
        return line
    ind, var, op, expr, comment = m.groups()
    if op != "=":
        expr = f"{var} {op[0]} ({expr})"
    elif expr.startswith("I(") and expr.endswith(")") and expr.count("(") == 1:
        return line
    return f"{ind}{var} = I({expr}){comment or ''}"


def _int_helpers():
    """``I`` (int32), ``U`` (uint32, wraps), ``S`` (uint64 shared-memory index): Numba casts in
    compiled code; in the simulator plain Python ints with the same wrap-around."""
    if SIMULATOR:
        return int, (lambda v: int(v) & 0xFFFFFFFF), int
    return types.int32, types.uint32, types.uint64


def spec_name(mode, tile, strided, fused, vec=False):
    t = tile
    tags = ("v" if vec else "") + ("s" if strided else "") + ("f" if fused else "")
    return (f"gemm_{MODE_NAMES[mode]}{'_' + tags if tags else ''}[float32,"
            f"{t.bm}x{t.bn}x{t.bk}/{t.tm}x{t.tn}/{t.min_blocks}]")


def _variants():
    """What the launchers use: FWD per tile; BWD_INPUT per tile, fused or not, strided only on
    the mid and narrow tiles (a strided GEMM's classes are small), with vector loads on the
    wide and narrow tiles (``vectorized``: the mid tile takes every C_out that is not a
    multiple of 4); BWD_WEIGHT per tile, plain or fused (activation gradient + db), with vector
    loads of dy on the wide tile. 19 kernels, 3-15 s each to build on an idle core (Numba's
    front end on the unrolled source; ptxas under 1 s): the compile tests, which build every
    registered kernel for sm_80 and sm_90, pay that twice."""
    tiles = (TILE_WIDE, TILE_MID, TILE_NARROW)
    out = [dict(mode=FWD, tile=t, strided=False, fused=False) for t in tiles]
    out += [dict(mode=BWD_INPUT, tile=t, strided=st, fused=f, vec=vectorized(BWD_INPUT, t, 4))
            for st in (False, True) for t in tiles for f in (False, True)
            if t != TILE_WIDE or not st]
    out += [dict(mode=BWD_WEIGHT, tile=t, strided=False, fused=f,
                 vec=vectorized(BWD_WEIGHT, t, 4)) for t in tiles for f in (False, True)]
    return out


@kernel_factory(_variants)
def gemm_kernel(mode: int, tile: GTile, strided: bool, fused: bool, vec: bool = False):
    tile = GTile(*tile).check()
    strided = bool(strided) and mode == BWD_INPUT
    fused = bool(fused) and mode != FWD
    vec = bool(vec) and mode != FWD
    if vec and not vec_tile(tile, mode):
        raise ValueError(f"gemm tile {tile}: no vector variant of {MODE_NAMES[mode]} (see "
                         "vec_tile)")
    name = spec_name(mode, tile, strided, fused, vec)
    src = generate(mode, tile, strided, fused, vec)
    act_fwd, _ = act_device_fns("float32")
    I, U, S = _int_helpers()
    env = {"cuda": cuda, "f32": types.float32, "I": I, "U": U, "S": S, "act_fwd": act_fwd,
           "min": min, "max": max, "ldg4": ldg_f32x4}
    filename = f"<gpucnn {name}>"
    linecache.cache[filename] = (len(src), None, src.splitlines(True), filename)
    exec(compile(src, filename, "exec"), env)
    fn = env["kernel"]
    fn.__doc__ = f"{name}: generated by gemm.generate (see the module docstring)."
    a1 = arr("float32", 1)
    return KernelSpec(name, fn, (a1,) * 6 + (types.int32,) * 16,
                      launch_bounds=(tile.threads, tile.min_blocks))


# ------------------------------------------------------------------------------ launching

#: ``{mode: tile}``: launches of that mode use the tile (tests, tile sweeps).
TILE_OVERRIDE: dict = {}


def vec_tile(t: GTile, mode: int = BWD_INPUT) -> bool:
    """Whether the tile has the vector pattern of ``mode``: BWD_INPUT's ``_vec_groups`` along
    the reduction, BWD_WEIGHT's groups of 4 columns of dy (a whole number per thread)."""
    if mode == BWD_WEIGHT:
        return t.bn % 4 == 0 and t.threads % (t.bn // 4) == 0 and (
            t.bk * t.bn // 4) % t.threads == 0
    q = t.bk // 4
    return t.bk % 4 == 0 and t.threads % q == 0 and t.bm * q >= t.threads and (
        t.bm * q % t.threads == 0) and (t.bn * q % t.threads == 0 or t.bn * q < t.threads)


def vectorized(mode: int, tile: GTile, co: int) -> bool:
    """Whether the launch reads 4 channels per load (C_out a multiple of 4): BWD_INPUT's dy, y
    and w on the wide and narrow tiles, BWD_WEIGHT's dy and y on the wide tile. The mid tile
    (and the narrow weight gradient, whose dy tile is 2 elements a thread) load scalars."""
    if co % 4:
        return False
    if mode == BWD_INPUT:
        return tile != TILE_MID and vec_tile(tile)
    return mode == BWD_WEIGHT and tile == TILE_WIDE and vec_tile(tile, mode)


def choose_tile(mode: int, m: int, n: int, strided: bool = False, co: int = 4) -> GTile:
    """The tile of an ``m x n`` GEMM: narrow for 16 columns or fewer; the wide 128x128 tile
    when it still fills about three quarters of the SMs (split-K fills the weight gradient's
    grid: there it needs 128 rows and columns); the mid tile otherwise, for the strided
    input gradient (its residue classes are small GEMMs), and for an input gradient whose
    reduction channels ``co`` are not a multiple of 4 (no vector loads; nor the wide tile of
    the weight gradient)."""
    if mode in TILE_OVERRIDE:
        return TILE_OVERRIDE[mode]
    if mode == BWD_INPUT and co % 4:
        return TILE_MID
    if n <= TILE_NARROW.bn:
        return TILE_NARROW
    if strided:
        return TILE_MID
    if mode == BWD_WEIGHT:      # (its wide tile's loads are vectors: 4 | C_out)
        wide = m >= TILE_WIDE.bm and n >= TILE_WIDE.bn and co % 4 == 0
    else:
        wide = -(-m // TILE_WIDE.bm) * -(-n // TILE_WIDE.bn) >= (3 * sm_count()) // 4
    return TILE_WIDE if wide else TILE_MID


def fits(*sizes) -> bool:
    """Whether every array (element counts) is addressable with 32-bit offsets."""
    return max(sizes) < 2**31 - 2**20


def prepare(mode, geo, act, has_bias, fused, tile=None, splits=1, chunk=0):
    """The prepared launch of a gemm kernel. ``geo`` = (n, h, w, c, ho, wo, co, kh, kw, sh,
    sw, pt, pl): x (or dx) is (n, h, w, c), y (or dy) (n, ho, wo, co). The launch's arrays are
    ``(src, wmat, bias, ysrc, ymat, out)`` as in ``conv._igemm``."""
    n, h, w, c, ho, wo, co, kh, kw, sh, sw, pt, pl = geo
    strided = mode == BWD_INPUT and (sh > 1 or sw > 1)
    if mode == FWD:
        m, ncol, z = n * ho * wo, co, 1
    elif mode == BWD_INPUT:
        m, ncol, z = n * -(-h // sh) * -(-w // sw), c, sh * sw
    else:
        m, ncol, z = kh * kw * c, co, splits
    tile = tile or choose_tile(mode, m, ncol, strided, co)
    spec = gemm_kernel(mode, tile, strided, fused, vectorized(mode, tile, co))
    return Prepared(spec, (-(-m // tile.bm), -(-ncol // tile.bn), z), (tile.threads,),
                    (None,) * 6 + (n, h, w, c, ho, wo, co, kh, kw, sh, sw, pt, pl, act,
                                   has_bias, chunk))
