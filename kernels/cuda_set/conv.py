"""Convolution as a tiled implicit GEMM: forward (bias + activation in the epilogue), gradient
with respect to the input (also the transposed convolution), gradient with respect to the
kernel (split-K over batch and space, then a deterministic column sum), and the bias gradient.

One kernel factory, ``igemm_kernel(mode, tile, dtype)``, serves the three GEMMs; only the tile
loaders and the epilogue differ by ``mode`` (a compile-time constant):

=============  ====================  ==================  ==========================  ========
mode           rows (M)              columns (N)         reduction (K)               A tile
=============  ====================  ==================  ==========================  ========
FWD            (n, oh, ow) of y      c_out               (kh, kw, c_in)              x patch
BWD_INPUT      (n, ih, iw) of dx     c_in                (kh, kw, c_out)             dy patch
BWD_WEIGHT     (kh, kw, c_in) of dw  c_out               (n, oh, ow), split over z   x patch
=============  ====================  ==================  ==========================  ========

A block computes a ``BM x BN`` output tile with ``(BN/TN) x (BM/TM)`` threads; each thread
holds a ``TM x TN`` register block of outputs. Per step of ``BK`` along the reduction the block
stages an ``A`` tile (``BK x BM``, gathered from the NHWC image with zero padding: the implicit
im2col) and a ``B`` tile (``BK x BN``, from the kernel or from dy) in shared memory. A thread's
outputs are interleaved (row ``ty + i * BM/TM``, column ``tx + j * BN/TN``), so a warp reads
consecutive shared-memory words and writes consecutive output channels.
"""
from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np
from numba import types

from ._launch import (NB_FLOAT, KernelSpec, Plans, Prepared, arr, cdiv, check_rank, contig,
                      dummy, empty, float_dtype, kernel_factory, sm_count, xp, dtname)
from ._runtime import numba_cuda as cuda
from .. import _geometry as _geometry_rules, _precision
from . import conv_tf32, gemm
from .activation import act_backward, act_code, act_device_fns
from .conv_tf32 import advance_digits, digits, split_k
from .reduce import column_sum

FWD, BWD_INPUT, BWD_WEIGHT = 0, 1, 2
MODE_NAMES = ("fwd", "bwd_input", "bwd_weight")


class Tile(NamedTuple):
    """Block tile ``bm x bn``, reduction step ``bk``, per-thread register block ``tm x tn``;
    ``min_blocks`` resident blocks per SM asked of the compiler (it bounds the registers)."""

    bm: int
    bn: int
    bk: int
    tm: int
    tn: int
    min_blocks: int = 2

    @property
    def block(self) -> tuple[int, int]:
        """The thread block ``(bn // tn, bm // tm)``: x along columns, y along rows."""
        return self.bn // self.tn, self.bm // self.tm

    @property
    def threads(self) -> int:
        return (self.bn // self.tn) * (self.bm // self.tm)

    def check(self):
        """The tile itself, or a ValueError when the kernel's load pattern cannot use it."""
        nt = self.threads
        ok = (self.bm % self.tm == 0 and self.bn % self.tn == 0 and nt % self.bk == 0
              and nt % self.bm == 0 and (self.bk * self.bm) % nt == 0
              and (self.bk * self.bn) % nt == 0)
        if not ok:
            raise ValueError(f"conv tile {self}: need tm | bm, tn | bn, and the {nt} threads to "
                             "divide bk, bm, bk*bm and bk*bn")
        return self


#: The tiles the launchers choose from (``choose_tile``): a square 64x64 tile with 4x4 register
#: blocks for layers with many output columns, and a tall 128x16 tile for narrow ones (LeNet's
#: 6 and 16 channels). 256 threads each. Tests replace these with small tiles.
TILE_WIDE = Tile(64, 64, 16, 4, 4)
TILE_NARROW = Tile(128, 16, 16, 4, 2)
#: The weight gradient's wide tile: the same with a reduction step of 8, measured 11-12% faster
#: than ``TILE_WIDE`` on AlexNet's conv1, conv2 and conv4 on an H200 (docs/gpu-results.md).
TILE_WIDE_DW = Tile(64, 64, 8, 4, 4)

#: Split-K of the weight gradient: aim for about this many blocks in the grid (None: four per
#: SM of the current device, 528 on a 132-SM H100/H200), with at least ``MIN_SPLIT_STEPS``
#: reduction steps of ``bk`` per split.
TARGET_BLOCKS = None
MIN_SPLIT_STEPS = 4


#: Further tiles, per mode, that ``python -m gpucnn.gpucheck`` times against the defaults on a
#: GPU so that the choice can be made from measurements (float32 only): a 64x64 tile with a
#: shorter reduction step, and for the gradients a 128x128 tile with 8x8 register blocks at one
#: block per SM (in the forward kernel the fused activation keeps NVVM from unrolling the 8x8
#: epilogue, which would put the register block in local memory: the PTX test rejects that).
CANDIDATE_TILES = {
    FWD: (Tile(64, 64, 8, 4, 4),),
    BWD_INPUT: (Tile(64, 64, 8, 4, 4), Tile(128, 128, 8, 8, 8, 1)),
    BWD_WEIGHT: (Tile(64, 64, 16, 4, 4), Tile(128, 128, 8, 8, 8, 1)),
}

#: ``{mode: tile}``: launches of that mode use the tile (the tile sweep of gpucheck).
TILE_OVERRIDE: dict = {}


def choose_tile(mode: int, ncols: int) -> Tile:
    """The tile of a GEMM with ``ncols`` output columns (channels)."""
    if mode in TILE_OVERRIDE:
        return TILE_OVERRIDE[mode]
    if ncols <= TILE_NARROW.bn:
        return TILE_NARROW
    return TILE_WIDE_DW if mode == BWD_WEIGHT else TILE_WIDE


def _variants():
    modes = (FWD, BWD_INPUT, BWD_WEIGHT)
    return ([{"mode": m, "tile": t, "dtype": d} for m in modes
             for t in (choose_tile(m, TILE_NARROW.bn + 1), TILE_NARROW)
             for d in ("float32", "float64")]
            + [{"mode": m, "tile": t, "dtype": "float32"} for m in modes
               for t in CANDIDATE_TILES[m]])


@kernel_factory(_variants)
def igemm_kernel(mode: int, tile: Tile, dtype: str):
    tile = Tile(*tile).check()
    dt = NB_FLOAT[np.dtype(dtype)]
    i64 = types.int64
    act_fwd, act_bwd = act_device_fns(dtype)
    MODE = mode
    BM, BN, BK, TM, TN = tile[:5]
    TX, TY = tile.block
    NT = tile.threads
    A_LOADS = BK * BM // NT      # A-tile elements each thread stages per step
    B_LOADS = BK * BN // NT      # B-tile elements each thread stages per step
    A_ROW_STEP = NT // BK        # modes FWD/BWD_INPUT: a thread's A rows are this far apart
    A_RED_STEP = NT // BM        # mode BWD_WEIGHT: a thread's A reduction indices this far apart
    BM_PAD, BN_PAD = BM + 1, BN + 1   # shared rows padded by one word: no bank conflicts

    @cuda.jit(device=True, inline="always")
    def tile_product(As, Bs, nk, tx, ty, acc, a_reg, b_reg):
        """acc += As[:nk, the thread's TM rows]^T x Bs[:nk, its TN columns]: nk rank-1 updates
        of the register block from shared memory."""
        for kk in range(nk):
            for i in range(TM):
                a_reg[i] = As[kk, ty + i * TY]
            for j in range(TN):
                b_reg[j] = Bs[kk, tx + j * TX]
            for i in range(TM):
                for j in range(TN):
                    acc[i, j] += a_reg[i] * b_reg[j]

    def igemm_k(src, wmat, bias, ysrc, ymat, out, mh, mw, kh, kw, sh, sw, pt, pl, act, has_bias,
                chunk):
        """Implicit-GEMM convolution tile (see the module docstring for the three modes).

        FWD:        src x (N, H, W, Cin); wmat w (KH*KW*Cin, Cout); bias (Cout,) or a dummy
                    with has_bias=0; out y (N*Ho*Wo, Cout); (mh, mw) = (Ho, Wo).
        BWD_INPUT:  src dy (N, Ho, Wo, Cout); wmat w (KH*KW*Cin, Cout); out dx (N*H*W, Cin);
                    (mh, mw) = (H, W).
        BWD_WEIGHT: src x (N, H, W, Cin); wmat dy (N*Ho*Wo, Cout); out partial dw
                    (S*(KH*KW*Cin + has_bias), Cout), split s = blockIdx.z summing reduction
                    rows [s*chunk, (s+1)*chunk); with has_bias=1 the row after each split's dw
                    rows holds its part of db (the column sums of dy), made by the blocks of
                    the first row tile; (mh, mw) = (Ho, Wo).
        Fused activation gradient (BWD modes, act != 0): the GEMM reads act'(y) * dy, y being
        the forward's output: ``ysrc`` (N, Ho, Wo, Cout) beside src in BWD_INPUT, ``ymat``
        (N*Ho*Wo, Cout) beside wmat in BWD_WEIGHT; dummies otherwise.
        All arrays C-contiguous (NHWC / HWIO). Grid (ceil(M/BM), ceil(N/BN), S), block
        (BN/TN, BM/TM). Padding cells read as zero; every output is written once, by the thread
        owning it, after the whole reduction.
        """
        As = cuda.shared.array((BK, BM_PAD), dt)
        Bs = cuda.shared.array((BK, BN_PAD), dt)
        acc = cuda.local.array((TM, TN), dt)
        dbacc = cuda.local.array(TN, dt)
        a_reg = cuda.local.array(TM, dt)
        b_reg = cuda.local.array(TN, dt)
        row_n = cuda.local.array(A_LOADS, i64)
        row_h = cuda.local.array(A_LOADS, i64)
        row_w = cuda.local.array(A_LOADS, i64)

        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * TX + tx
        m0 = cuda.blockIdx.x * BM
        n0 = cuda.blockIdx.y * BN
        split = cuda.blockIdx.z
        zero = dt(0)

        # --- the GEMM's extents -------------------------------------------------------------
        ncols = out.shape[1]
        cin = src.shape[3]           # channels of x (FWD, BWD_WEIGHT)
        crad = src.shape[3]          # innermost radix of the reduction index: Cin, or Cout
        if MODE == BWD_INPUT:
            cin = out.shape[1]
        if MODE == BWD_WEIGHT:
            mrows = kh * kw * cin
            kbeg = split * chunk
            kend = min(wmat.shape[0], kbeg + chunk)
        elif MODE == BWD_INPUT:
            mrows = out.shape[0]
            kbeg = split * 0
            kend = kh * kw * crad
        else:
            mrows = out.shape[0]
            kbeg = split * 0
            kend = wmat.shape[0]

        # --- per-thread coordinates, advanced by BK per step without divisions ---------------
        # FWD/BWD_INPUT: the thread stages column a_kk of the A tile (and, in BWD_INPUT, of the
        # B tile) for A_LOADS rows; its reduction index k = (ky, kx, kc) moves by BK per step,
        # BK being (d_y, d_x, d_c) in the same mixed radix (KH, KW, crad).
        # BWD_WEIGHT: the thread stages row a_mm of the A tile (a dw row (wr_ky, wr_kx, wr_ci))
        # for A_LOADS reduction indices r = (n, oh, ow), each moving by BK = (d_y, d_x, d_c) in
        # the radix (N, Ho, Wo).
        a_kk = tid % BK
        a_mm = tid % BM
        kc = i64(0)
        kx = i64(0)
        ky = i64(0)
        wr_ky = i64(0)
        wr_kx = i64(0)
        wr_ci = i64(0)
        if MODE == BWD_WEIGHT:
            m = m0 + a_mm
            wr_ci, wr_kx, wr_ky = digits(m, cin, kw)
            if m >= mrows:
                wr_ky = -(1 << 40)   # off every image: loads read zero
            d_c, d_x, d_y = digits(BK, mw, mh)
            for i in range(A_LOADS):
                row_w[i], row_h[i], row_n[i] = digits(kbeg + tid // BM + i * A_RED_STEP, mw, mh)
        else:
            kc, kx, ky = digits(kbeg + a_kk, crad, kw)
            d_c, d_x, d_y = digits(BK, crad, kw)
            for i in range(A_LOADS):
                m = m0 + tid // BK + i * A_ROW_STEP
                q, p, n = digits(m, mw, mh)
                row_n[i] = n if m < mrows else -1
                if MODE == FWD:
                    row_h[i] = p * sh - pt   # top-left corner of the window in x
                    row_w[i] = q * sw - pl
                else:
                    row_h[i] = p + pt        # padded coordinate of the dx pixel
                    row_w[i] = q + pl

        for i in range(TM):
            for j in range(TN):
                acc[i, j] = zero
        for j in range(TN):
            dbacc[j] = zero
        with_db = MODE == BWD_WEIGHT and has_bias != 0 and cuda.blockIdx.x == 0 and ty == 0

        for k0 in range(kbeg, kend, BK):
            # --- stage the A tile As[kk, mm] ------------------------------------------------
            if MODE == FWD:
                for i in range(A_LOADS):
                    v = zero
                    n = row_n[i]
                    ih = row_h[i] + ky
                    iw = row_w[i] + kx
                    if (k0 + a_kk < kend and n >= 0 and ih >= 0 and ih < src.shape[1] and iw >= 0
                            and iw < src.shape[2]):
                        v = src[n, ih, iw, kc]
                    As[a_kk, tid // BK + i * A_ROW_STEP] = v
            elif MODE == BWD_INPUT:
                for i in range(A_LOADS):
                    v = zero
                    n = row_n[i]
                    th = row_h[i] - ky
                    tw = row_w[i] - kx
                    if k0 + a_kk < kend and n >= 0 and th >= 0 and tw >= 0:
                        oh = th
                        ow = tw
                        hit = True
                        if sh != 1 or sw != 1:   # uniform branch: no divisions at stride 1
                            hit = th % sh == 0 and tw % sw == 0
                            oh = th // sh
                            ow = tw // sw
                        if hit and oh < src.shape[1] and ow < src.shape[2]:
                            v = src[n, oh, ow, kc]
                            if act != 0:         # the activation's gradient, fused
                                v = act_bwd(v, ysrc[n, oh, ow, kc], act)
                    As[a_kk, tid // BK + i * A_ROW_STEP] = v
            else:
                for i in range(A_LOADS):
                    kk = tid // BM + i * A_RED_STEP
                    v = zero
                    if k0 + kk < kend:
                        ih = row_h[i] * sh - pt + wr_ky
                        iw = row_w[i] * sw - pl + wr_kx
                        if ih >= 0 and ih < src.shape[1] and iw >= 0 and iw < src.shape[2]:
                            v = src[row_n[i], ih, iw, wr_ci]
                    As[kk, a_mm] = v
            # --- stage the B tile Bs[kk, nn] ------------------------------------------------
            for i in range(B_LOADS):
                lin = tid + i * NT
                v = zero
                if MODE == BWD_INPUT:
                    nn = lin // BK           # the column is a_kk for every i (BK divides NT)
                    ci = n0 + nn
                    if k0 + a_kk < kend and ci < ncols:
                        v = wmat[(ky * kw + kx) * cin + ci, kc]
                    Bs[a_kk, nn] = v
                else:
                    kk = lin // BN           # consecutive threads: consecutive columns
                    nn = lin % BN
                    c = n0 + nn
                    if k0 + kk < kend and c < ncols:
                        v = wmat[k0 + kk, c]
                        if MODE == BWD_WEIGHT and act != 0:   # the activation's gradient
                            v = act_bwd(v, ymat[k0 + kk, c], act)
                    Bs[kk, nn] = v
            cuda.syncthreads()  # both tiles are fully staged before any thread multiplies

            if k0 + BK <= kend:              # a full step: a constant trip count (unrolled)
                tile_product(As, Bs, BK, tx, ty, acc, a_reg, b_reg)
            else:                            # the last, partial step
                tile_product(As, Bs, kend - k0, tx, ty, acc, a_reg, b_reg)
            if with_db:                      # db: this step's rows of the thread's columns
                for kk in range(min(BK, kend - k0)):
                    for j in range(TN):
                        dbacc[j] += Bs[kk, tx + j * TX]
            cuda.syncthreads()  # every thread is done reading the tiles before they are restaged

            # --- advance the reduction coordinates by BK (one carry per digit at most) ------
            if MODE == BWD_WEIGHT:
                for i in range(A_LOADS):     # (n, oh, ow) in the radix (., Ho, Wo)
                    row_w[i], row_h[i], row_n[i] = advance_digits(
                        row_w[i], row_h[i], row_n[i], d_c, d_x, d_y, mw, mh)
            else:
                kc, kx, ky = advance_digits(kc, kx, ky, d_c, d_x, d_y, crad, kw)

        # --- epilogue: one global write per output ------------------------------------------
        for i in range(TM):
            m = m0 + ty + i * TY
            if m < mrows:
                for j in range(TN):
                    c = n0 + tx + j * TX
                    if c < ncols:
                        v = acc[i, j]
                        if MODE == FWD:
                            if has_bias != 0:
                                v += bias[c]
                            out[m, c] = act_fwd(v, act)
                        elif MODE == BWD_WEIGHT:
                            out[split * (mrows + has_bias) + m, c] = v
                        else:
                            out[m, c] = v
        if with_db:
            for j in range(TN):
                c = n0 + tx + j * TX
                if c < ncols:
                    out[split * (mrows + 1) + mrows, c] = dbacc[j]

    a1, a2, a4 = arr(dtype, 1), arr(dtype, 2), arr(dtype, 4)
    name = f"igemm_{MODE_NAMES[mode]}[{dtype},{BM}x{BN}x{BK}/{TM}x{TN}/{tile.min_blocks}]"
    # min_blocks resident blocks per SM: ptxas keeps the registers within 65536 / (NT * that)
    return KernelSpec(name, igemm_k, (a4, a2, a1, a4, a2, a2) + (i64,) * 11,
                      launch_bounds=(NT, tile.min_blocks))


# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------

#: The conv kernels float32 launches use: "igemm2" (``gemm``: generated SIMT tiles, the
#: decomposed strided input gradient) or "baseline" (``igemm_kernel`` above, kept to time
#: against on the same card). float64 always runs on the baseline. ``GPUCNN_CONV_KERNELS`` sets
#: the start value.
CONV_KERNELS = ("igemm2", "baseline")
_KERNELS = {"name": os.environ.get("GPUCNN_CONV_KERNELS", "igemm2").strip().lower() or "igemm2"}
if _KERNELS["name"] not in CONV_KERNELS:
    raise ValueError(f"GPUCNN_CONV_KERNELS must be one of {CONV_KERNELS}, got "
                     f"{_KERNELS['name']!r}")


def set_conv_kernels(name: str) -> str:
    """Choose the float32 conv kernels ("igemm2" or "baseline"); returns the previous choice.
    Prepared launches of the conv ops made under the other choice are forgotten."""
    if name not in CONV_KERNELS:
        raise ValueError(f"set_conv_kernels: expected one of {CONV_KERNELS}, got {name!r}")
    before = _KERNELS["name"]
    _KERNELS["name"] = name
    for plans in (_FWD, _BWD_INPUT, _BWD_WEIGHT):
        plans.table.clear()
    return before


def conv_kernels() -> str:
    """The float32 conv kernels in use ("igemm2" or "baseline")."""
    return _KERNELS["name"]


def _use_gemm(dt, *sizes) -> bool:
    return (_KERNELS["name"] == "igemm2" and dt == np.float32 and gemm.fits(*sizes)
            and not TILE_OVERRIDE)


_GEOMETRY: dict = {}


def _geometry(op, stride, pad):
    key = (tuple(stride), tuple(pad))
    got = _GEOMETRY.get(key)       # a step meets the same few geometries again and again
    if got is None:
        sh, sw, pad4 = _geometry_rules.stride_pad(op, stride, pad)
        got = (sh, sw, *pad4)
        if len(_GEOMETRY) < 1024:
            _GEOMETRY[key] = got
    return got


def _igemm(mode, tile, dt, mh, mw, kh, kw, sh, sw, pt, pl, act, has_bias, grid_m, grid_n,
           splits=1, chunk=0):
    """The prepared launch of the implicit GEMM; its arrays are ``(src, wmat, bias, ysrc, ymat,
    out)`` (an absent bias or fused activation output given as a ``dummy``)."""
    return Prepared(igemm_kernel(mode, tile, dtname(dt)),
                    (cdiv(grid_m, tile.bm), cdiv(grid_n, tile.bn), splits), tile.block,
                    (None,) * 6 + (mh, mw, kh, kw, sh, sw, pt, pl, act, has_bias, chunk))


def _plannable() -> bool:
    """Whether the launchers may use prepared launches (not while a tile or split-K target is
    overridden: plans hold the tile and split of the moment they were made)."""
    return not TILE_OVERRIDE and not gemm.TILE_OVERRIDE and TARGET_BLOCKS is None


_FWD = Plans("conv2d_forward")
_BWD_INPUT = Plans("conv2d_backward_input")
_BWD_WEIGHT = Plans("conv2d_backward_weight")


def _tf32(a) -> bool:
    """Whether a float32 conv runs on the TF32 tensor cores (``conv_tf32``): the precision
    setting allows it (``gpucnn.kernels._precision``; exact float32 by default)."""
    return _precision.allow_tf32() and getattr(a, "dtype", None) == np.float32


def conv2d_forward(x, w, b, stride, pad, act):
    """``y = act(conv(x, w) + b)``: x (N, H, W, Cin), w (KH, KW, Cin, Cout) -> (N, Ho, Wo, Cout)."""
    if _tf32(x):
        return conv_tf32.tf32_conv2d_forward(x, w, b, stride, pad, act)
    params = (stride, pad, act)
    key = _FWD.key((x, w, b), params) if _plannable() else None
    hit = _FWD.get(key)
    if hit is None:
        x, w, b, hit = _forward_plan(x, w, b, stride, pad, act)
        _FWD.put(key, hit, (x, w, b), params)
    plan, y_shape = hit
    dt = x.dtype
    y = empty(y_shape, dt)
    plan(x, w, dummy(dt) if b is None else b, dummy(dt, 4), dummy(dt, 2), y)  # w, y seen 2-D
    return y


def _forward_plan(x, w, b, stride, pad, act):
    """Checks and converts the forward's arguments; ``(x, w, b, (plan, y shape))``."""
    op = "conv2d_forward"
    code = act_code(op, act)
    dt = float_dtype(op, x)
    x, w = contig(x, dt), contig(w, dt)
    check_rank(op, "x", x, 4, "(N, H, W, C_in)")
    check_rank(op, "w", w, 4, "(KH, KW, C_in, C_out)")
    n, h, wd, cin = x.shape
    kh, kw, wcin, cout = w.shape
    if wcin != cin:
        raise ValueError(f"{op}: x has {cin} channels but w {tuple(w.shape)} expects {wcin}")
    sh, sw, pt, pb, pl, pr = _geometry(op, stride, pad)
    ho, wo = _geometry_rules.padded_window_2d(op, h, wd, kh, kw, sh, sw, (pt, pb, pl, pr))
    if b is not None:
        b = contig(b, dt)
        if b.shape != (cout,):
            raise ValueError(f"{op}: b must have shape ({cout},), got {tuple(b.shape)}")
    if _use_gemm(dt, x.size, w.size, n * ho * wo * cout):
        plan = gemm.prepare(gemm.FWD, (n, h, wd, cin, ho, wo, cout, kh, kw, sh, sw, pt, pl),
                            code, 0 if b is None else 1, False)
    else:
        plan = _igemm(FWD, choose_tile(FWD, cout), dt, ho, wo, kh, kw, sh, sw, pt, pl, code,
                      0 if b is None else 1, n * ho * wo, cout)
    return x, w, b, (plan, (n, ho, wo, cout))


def conv2d_backward_input(dy, w, x_shape, stride, pad):
    """dx of shape ``x_shape`` from dy (N, Ho, Wo, Cout) and w (KH, KW, Cin, Cout); also the
    transposed convolution of dy."""
    if _tf32(dy):
        return conv_tf32.tf32_conv2d_backward_input(dy, w, x_shape, stride, pad)
    return _backward_input("conv2d_backward_input", dy, None, "linear", w, x_shape, stride, pad)


def conv2d_backward_input_act(dy, y, act, w, x_shape, stride, pad):
    """``conv2d_backward_input(act_backward(dy, y, act), w, ...)`` in one launch: the GEMM
    reads the activation's gradient as it loads dy (capability ``fused_backward``). With TF32 on:
    the activation's gradient, then the TF32 input gradient (no fused TF32 variant)."""
    if _tf32(dy):
        g = dy if act == "linear" else act_backward(dy, y, act)
        return conv_tf32.tf32_conv2d_backward_input(g, w, x_shape, stride, pad)
    return _backward_input("conv2d_backward_input_act", dy, y, act, w, x_shape, stride, pad)


def _backward_input(op, dy, y, act, w, x_shape, stride, pad):
    params = (op, act, x_shape, stride, pad)
    key = _BWD_INPUT.key((dy, y, w), params) if _plannable() else None
    hit = _BWD_INPUT.get(key)
    if hit is None:
        dy, y, w, hit = _backward_input_plan(op, dy, y, act, w, x_shape, stride, pad)
        _BWD_INPUT.put(key, hit, (dy, y, w), params)
    plan, dx_shape, fused = hit
    dt = dy.dtype
    dx = empty(dx_shape, dt)
    dy, w, y = _aligned(dy, w, y)
    plan(dy, w, dummy(dt), y if fused else dummy(dt, 4), dummy(dt, 2), dx)
    return dx


def _backward_input_plan(op, dy, y, act, w, x_shape, stride, pad):
    """Checks and converts; ``(dy, y, w, (plan, dx shape, whether y is read))``."""
    code = act_code(op, act)
    dt = float_dtype(op, dy)
    dy, w = contig(dy, dt), contig(w, dt)
    check_rank(op, "dy", dy, 4, "(N, Ho, Wo, C_out)")
    check_rank(op, "w", w, 4, "(KH, KW, C_in, C_out)")
    n, h, wd, cin = (int(v) for v in x_shape)
    kh, kw, wcin, cout = w.shape
    sh, sw, pt, pb, pl, pr = _geometry(op, stride, pad)
    ho, wo = _geometry_rules.padded_window_2d(op, h, wd, kh, kw, sh, sw, (pt, pb, pl, pr))
    if wcin != cin or tuple(dy.shape) != (n, ho, wo, cout):
        raise ValueError(f"{op}: dy {tuple(dy.shape)} and w {tuple(w.shape)} do not match "
                         f"x_shape {tuple(x_shape)} (expected dy {(n, ho, wo, cout)}, w "
                         f"(KH, KW, {cin}, C_out))")
    y = _act_output(op, y, dy, code)
    if _use_gemm(dt, dy.size, w.size, n * h * wd * cin):
        plan = gemm.prepare(gemm.BWD_INPUT, (n, h, wd, cin, ho, wo, cout, kh, kw, sh, sw, pt,
                                             pl), code, 0, code != 0)
    else:
        plan = _igemm(BWD_INPUT, choose_tile(BWD_INPUT, cin), dt, h, wd, kh, kw, sh, sw, pt,
                      pl, code, 0, n * h * wd, cin)
    return dy, y, w, (plan, (n, h, wd, cin), y is not None)


def _act_output(op, y, dy, code):
    """The forward output an activation gradient is fused from (None when there is none)."""
    if code == 0:
        return None
    y = contig(y, dy.dtype)
    if tuple(y.shape) != tuple(dy.shape):
        raise ValueError(f"{op}: y {tuple(y.shape)} must have dy's shape {tuple(dy.shape)}")
    return y


def conv2d_backward_weight(x, dy, w_shape, stride, pad):
    """dw of shape ``w_shape`` (KH, KW, Cin, Cout): the sum over batch and space of x patches
    times dy, reduced on the device (split-K partials, then a column sum)."""
    if _tf32(x):
        return conv_tf32.tf32_conv2d_backward_weight(x, dy, w_shape, stride, pad)
    return _backward_weight("conv2d_backward_weight", x, dy, None, "linear", w_shape, stride,
                            pad, False)[0]


def conv2d_backward_weight_bias(x, dy, y, act, w_shape, stride, pad):
    """``(dw, db)`` of ``g = act_backward(dy, y, act)`` in one pass over dy: the GEMM reads the
    activation's gradient as it loads dy, and the blocks of the first row tile also sum its
    columns into db (capability ``fused_backward``). One launch, and one column sum when the
    reduction is split. With TF32 on: the activation's gradient, the TF32 weight gradient and
    the bias gradient (no fused TF32 variant)."""
    if _tf32(x):
        g = dy if act == "linear" else act_backward(dy, y, act)
        return conv_tf32.tf32_conv2d_backward_weight(x, g, w_shape, stride, pad), bias_grad(g)
    return _backward_weight("conv2d_backward_weight_bias", x, dy, y, act, w_shape, stride, pad,
                            True)


def _aligned(*arrays):
    """The arrays, each copied if its data does not start on 16 bytes (gemm's vector loads; the
    pool's allocations always do, a view may not)."""
    if xp is np:
        return arrays
    return tuple(a if a is None or a.data.ptr % 16 == 0 else a.copy() for a in arrays)


_ZEROS4: dict = {}


def _zeros4(dt):
    """What a fused weight gradient without an activation reads as y (at offset 0, 4 floats for
    gemm's 128-bit loads; 2-D for the baseline's signature): zeros, for which its formula
    gives dy."""
    key = (np.dtype(dt).str, -1 if xp is np else xp.cuda.runtime.getDevice())
    if key not in _ZEROS4:
        _ZEROS4[key] = xp.zeros((1, 4), dt)
    return _ZEROS4[key]


def _backward_weight(op, x, dy, y, act, w_shape, stride, pad, with_bias):
    params = (op, act, w_shape, stride, pad)
    key = _BWD_WEIGHT.key((x, dy, y), params) if _plannable() else None
    hit = _BWD_WEIGHT.get(key)
    if hit is None:
        x, dy, y, hit = _backward_weight_plan(op, x, dy, y, act, w_shape, stride, pad,
                                              with_bias)
        _BWD_WEIGHT.put(key, hit, (x, dy, y), params)
    plan, part_shape, fused, w_shape = hit
    dt = x.dtype
    if plan is None:   # no rows to reduce over
        return xp.zeros(w_shape, dtype=dt), (xp.zeros(w_shape[3:], dt) if with_bias else None)
    splits, rows, cout = part_shape
    part = empty(part_shape, dt)
    dy, y = _aligned(dy, y)
    plan(x, dy, dummy(dt), dummy(dt, 4), y if fused else _zeros4(dt), part)
    total = part[0] if splits == 1 else column_sum(part.reshape(splits, rows * cout)).reshape(
        rows, cout)
    krows = rows - (1 if with_bias else 0)
    dw = total[:krows].reshape(w_shape)
    return dw, (total[krows] if with_bias else None)


def _backward_weight_plan(op, x, dy, y, act, w_shape, stride, pad, with_bias):
    """Checks and converts; ``(x, dy, y, (plan or None, partials' shape, whether y is read,
    w_shape))``."""
    code = act_code(op, act)
    dt = float_dtype(op, x)
    x, dy = contig(x, dt), contig(dy, dt)
    check_rank(op, "x", x, 4, "(N, H, W, C_in)")
    check_rank(op, "dy", dy, 4, "(N, Ho, Wo, C_out)")
    kh, kw, cin, cout = (int(v) for v in w_shape)
    n, h, wd, xcin = x.shape
    sh, sw, pt, pb, pl, pr = _geometry(op, stride, pad)
    ho, wo = _geometry_rules.padded_window_2d(op, h, wd, kh, kw, sh, sw, (pt, pb, pl, pr))
    if xcin != cin or tuple(dy.shape) != (n, ho, wo, cout):
        raise ValueError(f"{op}: x {tuple(x.shape)} and dy {tuple(dy.shape)} do not match "
                         f"w_shape {tuple(w_shape)} (expected dy {(n, ho, wo, cout)})")
    y = _act_output(op, y, dy, code)
    krows, red = kh * kw * cin, n * ho * wo
    w_shape = (kh, kw, cin, cout)
    if red == 0:
        return x, dy, y, (None, None, False, w_shape)
    new = _use_gemm(dt, x.size, dy.size, 4 * sm_count() * (krows + 1) * cout)
    tile = gemm.choose_tile(gemm.BWD_WEIGHT, krows, cout) if new else choose_tile(BWD_WEIGHT,
                                                                                  cout)
    splits, chunk = split_k(tile, krows, cout, red, TARGET_BLOCKS, MIN_SPLIT_STEPS)
    rows = krows + (1 if with_bias else 0)
    if new:
        plan = gemm.prepare(gemm.BWD_WEIGHT, (n, h, wd, cin, ho, wo, cout, kh, kw, sh, sw, pt,
                                              pl), code, int(with_bias), with_bias, tile,
                            splits, chunk)
    else:
        plan = _igemm(BWD_WEIGHT, tile, dt, ho, wo, kh, kw, sh, sw, pt, pl, code,
                      int(with_bias), krows, cout, splits, chunk)
    return x, dy, y, (plan, (splits, rows, cout), y is not None, w_shape)


def bias_grad(dy):
    """db: dy summed over every axis but the last."""
    op = "bias_grad"
    dt = float_dtype(op, dy)
    dy = contig(dy, dt)
    if dy.ndim < 1:
        raise ValueError(f"{op}: dy must have at least one axis, got shape {tuple(dy.shape)}")
    c = dy.shape[-1]
    return column_sum(dy.reshape(-1, c) if c else dy.reshape(0, 0))
