"""Convolution on TF32 tensor cores: an ``mma.sync`` implicit GEMM for the forward pass (bias
and activation in the epilogue), the input gradient and the weight gradient. float32 only;
opt-in (``gpucnn.kernels._precision``): TF32 rounds each operand to 10 mantissa bits.

The three GEMMs are those of ``conv.py``:

=============  ====================  ==========  ==========================  ====================
mode           rows (M)              cols (N)    reduction (K)               A / B in shared
=============  ====================  ==========  ==========================  ====================
FWD            (n, oh, ow) of y      c_out       (kh, kw, c_in)              k-major / n-major
BWD_INPUT      (n, ih, iw) of dx     c_in        (kh, kw, c_out)             k-major / k-major
BWD_WEIGHT     (kh, kw, c_in) of dw  c_out       (n, oh, ow), split over z   m-major / n-major
=============  ====================  ==========  ==========================  ====================

A block of ``32 * wm * wn`` threads computes a ``bm x bn`` tile of the output; warp ``(i, j)``
of its ``wm x wn`` warps owns a ``bm/wm x bn/wn`` part of it, ``mi x ni`` mma tiles of 16 x 8,
and keeps their accumulators in registers. The kernel is built from named parts, each a device
function generated from the tile: the loaders (``load_a``/``load_b``: global -> registers,
rounded to TF32 as they arrive, the implicit im2col's zero padding included; ``store_a``/
``store_b``: registers -> shared), the mainloop's warp product (``warp_product``: fragments
from shared memory, ``mi * ni`` mma per 8 of the reduction) and the epilogue (bias, activation,
one global write per output). The mainloop is double-buffered: the next step's tiles are read
from global memory into registers while the warps multiply the current ones, then stored into
the other shared buffer; one barrier per step.

Shared tiles hold TF32 bit patterns (``uint32``) in the layout their global source is
contiguous in: "k-major" rows of the reduction (``x * (bk + 4) + k``) where consecutive threads
read consecutive channels of the reduction, "x-major" rows (``k * (bx + pad) + x``, ``pad``
making the row stride 8 or 24 mod 32) where they read consecutive output columns or rows. Both
strides put a warp's 32 fragment reads (``g = lane >> 2`` along x, ``t = lane & 3`` along k) in
32 different banks.

Error bound (TF32 operands, float32 accumulation): with ``u = 2**-11`` the rounding of one
operand to TF32 (round to nearest of a 10-bit mantissa), every output of a K-term reduction
satisfies ``|out - exact| <= (2 u + u**2 + K * 2**-24) * sum_k |a_k| |b_k|`` up to terms of
higher order; ``tf32_error_bound`` computes it.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import types

from .. import _geometry as _geometry_mod
from .. import _precision
from ._launch import (KernelSpec, arr, cdiv, check_rank, contig, dummy, empty, kernel_factory,
                      launch, sm_count, xp)
from ._runtime import SIMULATOR
from ._runtime import numba_cuda as cuda
from .activation import LINEAR, RELU, act_code, act_device_fns
from .ptx import cvt_tf32, mma_tf32_m16n8k8
from .reduce import column_sum

FWD, BWD_INPUT, BWD_WEIGHT = 0, 1, 2
#: An index Numba does not wrap around: no negative-index fix-up (a compare and a select) on
#: every global and shared-memory access
U64 = int if SIMULATOR else types.uint64
MODE_NAMES = ("fwd", "bwd_input", "bwd_weight")
WARP = 32
MMA_M, MMA_N, MMA_K = 16, 8, 8


class MmaTile(NamedTuple):
    """Block tile ``bm x bn``, reduction step ``bk``, ``wm x wn`` warps; ``min_blocks``
    resident blocks per SM asked of the compiler (it bounds the registers)."""

    bm: int
    bn: int
    bk: int
    wm: int
    wn: int
    min_blocks: int = 1

    @property
    def threads(self) -> int:
        return WARP * self.wm * self.wn

    @property
    def mi(self) -> int:
        """mma tiles (16 rows each) per warp along M."""
        return self.bm // self.wm // MMA_M

    @property
    def ni(self) -> int:
        """mma tiles (8 columns each) per warp along N."""
        return self.bn // self.wn // MMA_N

    def check(self):
        """The tile itself, or a ValueError when the kernel cannot use it."""
        nt = self.threads
        ok = (self.bm % (MMA_M * self.wm) == 0 and self.bn % (MMA_N * self.wn) == 0
              and self.bk % MMA_K == 0 and nt % self.bk == 0 and nt % self.bm == 0
              and nt % self.bn == 0 and (self.bm * self.bk) % nt == 0
              and (self.bn * self.bk) % nt == 0)
        if not ok:
            raise ValueError(f"TF32 conv tile {self}: need bm a multiple of 16 * wm, bn of "
                             f"8 * wn, bk of 8, and the {nt} threads to divide bk, bm, bn, "
                             "bm * bk and bn * bk")
        return self


#: Tiles the launchers choose from (``choose_tile``): 128 x 128 with 8 warps of 64 x 32 (4 x 4
#: mma tiles each) and a reduction step of 16 for wide layers (210-239 registers, no spills at
#: sm_80 and sm_90: one block per SM), 128 x 16 with 4 warps of 32 x 16 and a step of 8 for
#: LeNet's 6 and 16 channels. Tests pass small tiles instead (``tile=``).
TILE_WIDE = MmaTile(128, 128, 16, 2, 4)
TILE_NARROW = MmaTile(128, 16, 8, 4, 1)

#: Split-K of the weight gradient: about this many blocks (None: four per SM), with at least
#: ``MIN_SPLIT_STEPS`` reduction steps of ``bk`` per split.
TARGET_BLOCKS = None
MIN_SPLIT_STEPS = 4
MAX_GRID_YZ = 65535


@cuda.jit(device=True, inline="always")
def digits(k, r0, r1):
    """``k`` written in the mixed radix ``(., r1, r0)``: ``(k % r0, (k // r0) % r1, k // (r0 *
    r1))``, fastest digit first."""
    return k % r0, (k // r0) % r1, k // (r0 * r1)


@cuda.jit(device=True, inline="always")
def advance_digits(kc, kx, ky, d_c, d_x, d_y, crad, kw):
    """A reduction index ``(ky, kx, kc)``, digits of the mixed radix ``(., kw, crad)``, moved on
    by a step ``(d_y, d_x, d_c)`` written in the same radix: one carry per digit at most, no
    division (the loaders of this module and of ``conv``)."""
    kc += d_c
    kx += d_x
    ky += d_y
    if kc >= crad:
        kc -= crad
        kx += 1
    if kx >= kw:
        kx -= kw
        ky += 1
    return kc, kx, ky


def choose_tile(mode: int, ncols: int) -> MmaTile:
    """The tile of a GEMM with ``ncols`` output columns (channels)."""
    return TILE_NARROW if ncols <= TILE_NARROW.bn else TILE_WIDE


def _pad_x(bx: int) -> int:
    """Words added to an x-major shared row of ``bx`` so that its stride is 8 or 24 mod 32."""
    return next(p for p in range(32) if (bx + p) % 32 in (8, 24))


def _variants():
    return ([{"mode": m, "tile": t} for m in (FWD, BWD_INPUT, BWD_WEIGHT)
             for t in (TILE_WIDE, TILE_NARROW)]
            + [{"mode": BWD_INPUT, "tile": t, "strided": True} for t in (TILE_WIDE, TILE_NARROW)])


@kernel_factory(_variants)
def tf32_kernel(mode: int, tile: MmaTile, strided: bool = False):
    """The kernel of ``mode`` for ``tile``; ``strided``: the input gradient's variant for
    strides above 1 (which tests which taps hit; the other has no division in it)."""
    tile = MmaTile(*tile).check()
    MODE = mode
    STRIDED = bool(strided) and mode == BWD_INPUT
    BM, BN, BK, WM, WN = tile[:5]
    NT, MI, NI = tile.threads, tile.mi, tile.ni
    WTM, WTN = BM // WM, BN // WN                 # a warp's part of the block tile
    f32, u32, i32, i64 = types.float32, types.uint32, types.int32, types.int64
    act_fwd, _ = act_device_fns("float32")
    A_LOADS, B_LOADS = BM * BK // NT, BN * BK // NT     # elements each thread stages per step
    # shared layouts: element (x, k) of a tile at x * SX + k * SK
    A_KMAJOR = MODE != BWD_WEIGHT
    B_KMAJOR = MODE == BWD_INPUT
    A_SX, A_SK = (BK + 4, 1) if A_KMAJOR else (1, BM + _pad_x(BM))
    B_SX, B_SK = (BK + 4, 1) if B_KMAJOR else (1, BN + _pad_x(BN))
    A_SIZE = BM * (BK + 4) if A_KMAJOR else BK * (BM + _pad_x(BM))
    B_SIZE = BN * (BK + 4) if B_KMAJOR else BK * (BN + _pad_x(BN))
    A_BUFS, B_BUFS = 2 * A_SIZE, 2 * B_SIZE     # double-buffered: one multiplied, one filled
    K_STEP = NT // BK       # k-major loaders: a thread's rows are this far apart
    A_STEP = NT // BM       # x-major loaders: a thread's reduction indices this far apart
    B_STEP = NT // BN

    @cuda.jit(device=True, inline="always")
    def load_a(src, k0, kend, kk, row_n, row_h, row_w, row_b, k_off, ky, kx, kc, wr_ky, wr_kx,
               wr_ci, hh, ww, cc, sh, sw, a_pre):
        """The thread's A_LOADS elements of the A tile at reduction offset k0, from global
        memory (``src`` seen flat, its dims ``hh, ww, cc``), rounded to TF32 (zero outside the
        image and past kend). ``row_b[i] + k_off``: the flat offset of element i (but in the
        strided input gradient)."""
        ok = k0 + kk < kend
        for i in range(A_LOADS):
            v = f32(0)
            if MODE == FWD:                      # x patch: row (n, oh, ow), column (ky, kx, ci)
                ih = row_h[i] + ky
                iw = row_w[i] + kx
                if ok and ih >= 0 and ih < hh and iw >= 0 and iw < ww:
                    v = src[U64(row_b[i] + k_off)]
            elif MODE == BWD_INPUT:              # dy patch: row (n, ih, iw), column (ky, kx, co)
                th = row_h[i] - ky
                tw = row_w[i] - kx
                if ok and th >= 0 and tw >= 0:
                    if not STRIDED:              # a variant: no division at stride 1
                        if th < hh and tw < ww:
                            v = src[U64(row_b[i] + k_off)]
                    elif th % sh == 0 and tw % sw == 0:
                        oh = th // sh
                        ow = tw // sw
                        if oh < hh and ow < ww:
                            v = src[U64(((row_n[i] * hh + oh) * ww + ow) * cc + kc)]
            else:                                # x patch: row (ky, kx, ci), column (n, oh, ow)
                if k0 + kk + i * A_STEP < kend:
                    ih = row_h[i] + wr_ky
                    iw = row_w[i] + wr_kx
                    if ih >= 0 and ih < hh and iw >= 0 and iw < ww:
                        v = src[U64(row_b[i] + k_off)]
            a_pre[i] = cvt_tf32(v)

    @cuda.jit(device=True, inline="always")
    def load_b(wmat, k0, kend, tid, n0, ncols, ky, kx, kc, cin, kw, cc, b_pre):
        """The thread's B_LOADS elements of the B tile at reduction offset k0 (``wmat`` seen
        flat: w as (KH*KW*Cin, Cout), or dy as (N*Ho*Wo, Cout)), rounded to TF32."""
        if MODE == BWD_INPUT:                    # w[ky, kx, ci, co]: col ci, reduction (ky, kx, co)
            ok = k0 + tid % BK < kend
            kb = (ky * kw + kx) * cin
            ci0 = n0 + tid // BK
        else:                                    # w (FWD) or dy (BWD_WEIGHT) as (K, N)
            kr = k0 + tid // BN
            c = n0 + tid % BN
            ok = c < ncols
            base = kr * ncols + c
        for i in range(B_LOADS):
            v = f32(0)
            if MODE == BWD_INPUT:
                ci = ci0 + i * K_STEP
                if ok and ci < cin:
                    v = wmat[U64((kb + ci) * cc + kc)]
            else:
                if ok and kr + i * B_STEP < kend:
                    v = wmat[U64(base + i * B_STEP * ncols)]
            b_pre[i] = cvt_tf32(v)

    @cuda.jit(device=True, inline="always")
    def k_offset(ky, kx, kc, ww, cc, w_off):
        """The reduction column's part of a flat src offset: tap (ky, kx) and channel kc from a
        row's window corner (FWD), or from the dx pixel's padded position (BWD_INPUT, where the
        tap moves back: dy row ih + pt - ky); in BWD_WEIGHT the dw row's part ``w_off``."""
        if MODE == BWD_WEIGHT:
            return w_off
        if MODE == BWD_INPUT:
            return kc - (ky * ww + kx) * cc
        return (ky * ww + kx) * cc + kc

    def storer(LOADS, KMAJOR, BX, STEP, SX, SK):
        """The registers -> shared store of a tile (A or B) with those constants."""
        @cuda.jit(device=True, inline="always")
        def store(Ts, base, tid, pre):
            for i in range(LOADS):
                if KMAJOR:
                    x = tid // BK + i * K_STEP
                    k = tid % BK
                else:
                    x = tid % BX
                    k = tid // BX + i * STEP
                Ts[U64(base + x * SX + k * SK)] = pre[i]
        return store

    store_a = storer(A_LOADS, A_KMAJOR, BM, A_STEP, A_SX, A_SK)
    store_b = storer(B_LOADS, B_KMAJOR, BN, B_STEP, B_SX, B_SK)

    @cuda.jit(device=True, inline="always")
    def warp_product(As, Bs, a_at, b_at, acc, afr, bfr):
        """acc += the warp's part of A (BM x BK) times B (BK x BN) from one shared buffer: per 8
        of the reduction, the fragments of mi A tiles and ni B tiles, then mi x ni mma.
        ``a_at``/``b_at``: where the lane's first fragment element lies (its a0 = A[g, t], its
        b0 = B[t, g]); every other address is that plus a constant."""
        for ks in range(BK // MMA_K):
            for mi in range(MI):
                r = a_at + mi * MMA_M * A_SX + ks * MMA_K * A_SK
                afr[mi, 0] = As[U64(r)]
                afr[mi, 1] = As[U64(r + 8 * A_SX)]
                afr[mi, 2] = As[U64(r + 4 * A_SK)]
                afr[mi, 3] = As[U64(r + 8 * A_SX + 4 * A_SK)]
            for ni in range(NI):
                c = b_at + ni * MMA_N * B_SX + ks * MMA_K * B_SK
                bfr[ni, 0] = Bs[U64(c)]
                bfr[ni, 1] = Bs[U64(c + 4 * B_SK)]
            for mi in range(MI):
                for ni in range(NI):
                    d = mma_tf32_m16n8k8(afr[mi, 0], afr[mi, 1], afr[mi, 2], afr[mi, 3],
                                         bfr[ni, 0], bfr[ni, 1], acc[mi, ni, 0], acc[mi, ni, 1],
                                         acc[mi, ni, 2], acc[mi, ni, 3])
                    acc[mi, ni, 0] = d[0]
                    acc[mi, ni, 1] = d[1]
                    acc[mi, ni, 2] = d[2]
                    acc[mi, ni, 3] = d[3]

    # The epilogue's stores are written out per accumulator (source generated from the tile):
    # every index of ``acc`` is a constant, so the accumulators stay in registers whatever
    # NVVM's unroller decides about a loop of MI * NI * 4 stores (a loop it declined in the
    # forward kernel, putting ``acc`` in local memory).
    if MODE == FWD:      # with its bias and a ReLU; tanh and sigmoid come after (epilogue)
        store = ("            if has_bias != 0:\n                v += bias[c]\n"
                 "            if act == RELU:\n                v = max(v, f32(0))\n"
                 "            out[m, c] = v")
    elif MODE == BWD_WEIGHT:
        store = "            out[split * mrows + m, c] = v"
    else:
        store = "            out[m, c] = v"
    body = "".join(
        f"        m = m0 + {mi * MMA_M + 8 * (r >> 1)} + g\n"
        f"        c = n0 + {ni * MMA_N + (r & 1)} + 2 * t\n"
        f"        if m < mrows and c < ncols:\n            v = acc[{mi}, {ni}, {r}]\n{store}\n"
        for mi in range(MI) for ni in range(NI) for r in range(4))
    src = ("def store_acc(out, bias, acc, m0, n0, mrows, ncols, split, act, has_bias, g, t):\n"
           f"    if True:\n{body}")
    env = {"RELU": RELU, "f32": f32}
    exec(compile(src, f"<tf32 epilogue {MODE_NAMES[MODE]} {BM}x{BN}/{WM}x{WN}>", "exec"), env)
    store_acc = cuda.jit(device=True, inline="always")(env["store_acc"])

    @cuda.jit(device=True, inline="always")
    def epilogue(out, bias, acc, m0, n0, mrows, ncols, split, act, has_bias, g, t):
        """One global write per output: row m0 + g (+8), columns n0 + 2t (+1) of each mma tile
        (``store_acc``). The bulky tanh and sigmoid are applied by a second pass in which each
        lane reads back only what it wrote (a loop with no register array in it)."""
        store_acc(out, bias, acc, m0, n0, mrows, ncols, split, act, has_bias, g, t)
        if MODE == FWD and act != LINEAR and act != RELU:
            for e in range(MI * NI * 4):
                r = e % 4
                m = m0 + (e // (NI * 4)) * MMA_M + g + 8 * (r >> 1)
                c = n0 + ((e // 4) % NI) * MMA_N + 2 * t + (r & 1)
                if m < mrows and c < ncols:
                    out[m, c] = act_fwd(out[m, c], act)

    def tf32_k(src, wmat, bias, out, nn, hh, ww, cc, mh, mw, kh, kw, sh, sw, pt, pl, act,
               has_bias, chunk):
        """TF32 implicit-GEMM convolution tile (see the module docstring for the modes).

        ``src`` and ``wmat`` are seen flat; ``(nn, hh, ww, cc)`` are src's dims.
        FWD:        src x (N, H, W, Cin); wmat w (KH*KW*Cin, Cout); bias (Cout,) or a dummy
                    with has_bias=0; out y (N*Ho*Wo, Cout); (mh, mw) = (Ho, Wo).
        BWD_INPUT:  src dy (N, Ho, Wo, Cout); wmat w (KH*KW*Cin, Cout); out dx (N*H*W, Cin);
                    (mh, mw) = (H, W).
        BWD_WEIGHT: src x (N, H, W, Cin); wmat dy (N*Ho*Wo, Cout); out partial dw
                    (S*KH*KW*Cin, Cout), split s = blockIdx.z summing reduction rows
                    [s*chunk, (s+1)*chunk); (mh, mw) = (Ho, Wo).
        float32, C-contiguous (NHWC / HWIO). Grid (ceil(M/BM), ceil(N/BN), S), block (NT,), NT a
        multiple of 32 (every lane of a warp takes part in each mma). Padding cells read as
        zero; every output is written once, by the lane holding it, after the whole reduction.
        """
        As = cuda.shared.array(A_BUFS, u32)
        Bs = cuda.shared.array(B_BUFS, u32)
        acc = cuda.local.array((MI, NI, 4), f32)
        afr = cuda.local.array((MI, 4), u32)
        bfr = cuda.local.array((NI, 2), u32)
        a_pre = cuda.local.array(A_LOADS, u32)
        b_pre = cuda.local.array(B_LOADS, u32)
        row_n = cuda.local.array(A_LOADS, i32)     # 32-bit: half the registers of int64
        row_h = cuda.local.array(A_LOADS, i32)
        row_w = cuda.local.array(A_LOADS, i32)
        row_b = cuda.local.array(A_LOADS, i64)     # a row's flat offset in src

        tid = i64(cuda.threadIdx.x)
        lane = tid % WARP
        warp = tid // WARP
        g = lane >> 2
        t = lane & 3
        wm0 = (warp // WN) * WTM
        wn0 = (warp % WN) * WTN
        m0 = i64(cuda.blockIdx.x) * BM
        n0 = i64(cuda.blockIdx.y) * BN
        split = i64(cuda.blockIdx.z)

        # --- the GEMM's extents -------------------------------------------------------------
        ncols = out.shape[1]
        cin = cc                     # channels of x (FWD, BWD_WEIGHT)
        crad = cc                    # innermost radix of the reduction index: Cin, or Cout
        if MODE == BWD_INPUT:
            cin = out.shape[1]
        if MODE == BWD_WEIGHT:
            mrows = kh * kw * cin
            kbeg = split * chunk
            kend = min(nn * mh * mw, kbeg + chunk)
        elif MODE == BWD_INPUT:
            mrows = out.shape[0]
            kbeg = split * 0
            kend = kh * kw * crad
        else:
            mrows = out.shape[0]
            kbeg = split * 0
            kend = kh * kw * crad

        # --- the loaders' coordinates, advanced by BK per step without divisions -------------
        # FWD/BWD_INPUT: the thread loads column kk of the A (and in BWD_INPUT the B) tile; its
        # reduction index (ky, kx, kc) moves by BK = (d_y, d_x, d_c) in the radix (KH, KW, crad).
        # BWD_WEIGHT: the thread loads row x = tid % BM of the A tile, a dw row (wr_ky, wr_kx,
        # wr_ci), at A_LOADS reduction indices (n, oh, ow) each moving by BK in (N, Ho, Wo).
        kk = tid % BK if A_KMAJOR else tid // BM
        kc = i64(0)
        kx = i64(0)
        ky = i64(0)
        wr_ky = i64(0)
        wr_kx = i64(0)
        wr_ci = i64(0)
        w_off = i64(0)
        if MODE == BWD_WEIGHT:
            m = m0 + tid % BM
            wr_ci, wr_kx, wr_ky = digits(m, cin, kw)
            wr_kx -= pl
            wr_ky -= pt
            w_off = (wr_ky * ww + wr_kx) * cc + wr_ci   # the dw row's part of a flat offset
            if m >= mrows:
                wr_ky = i64(-(1 << 40))   # off every image: loads read zero
            # a step of BK reduction indices (n, oh, ow), in (row_h, row_w, row_b) units: the
            # window's top row oh * sh, its left column ow * sw, the flat offset of its corner
            d_c, d_x, d_y = digits(BK, mw, mh)
            d_c *= sw
            d_x *= sh
            d_b = d_c * cc + (d_x * ww + d_y * hh * ww) * cc
            w_end = mw * sw
            h_end = mh * sh
            w_carry = (sh * ww - w_end) * cc      # ow wraps: one row of windows down
            h_carry = (hh - h_end) * ww * cc      # oh wraps: the next image
            for i in range(A_LOADS):
                q, p, n = digits(kbeg + kk + i * A_STEP, mw, mh)
                row_w[i] = q * sw
                row_h[i] = p * sh
                row_b[i] = ((n * hh + p * sh) * ww + q * sw) * cc
        else:
            kc, kx, ky = digits(kbeg + kk, crad, kw)
            d_c, d_x, d_y = digits(BK, crad, kw)
            for i in range(A_LOADS):
                m = m0 + tid // BK + i * K_STEP
                q, p, n = digits(m, mw, mh)
                if MODE == FWD:
                    h_ = p * sh - pt         # top-left corner of the window in x
                    w_ = q * sw - pl
                else:
                    h_ = p + pt              # padded coordinate of the dx pixel
                    w_ = q + pl
                row_n[i] = n
                row_h[i] = h_ if m < mrows else -(1 << 30)    # off every image: reads zero
                row_w[i] = w_
                row_b[i] = ((n * hh + h_) * ww + w_) * cc

        for mi in range(MI):
            for ni in range(NI):
                for r in range(4):
                    acc[mi, ni, r] = f32(0)

        a_at = (wm0 + g) * A_SX + t * A_SK      # the lane's a0 and b0 in a shared buffer
        b_at = (wn0 + g) * B_SX + t * B_SK
        nsteps = (kend - kbeg + BK - 1) // BK
        load_a(src, kbeg, kend, kk, row_n, row_h, row_w, row_b,
               k_offset(ky, kx, kc, ww, cc, w_off), ky, kx, kc, wr_ky, wr_kx, wr_ci, hh, ww, cc,
               sh, sw, a_pre)
        load_b(wmat, kbeg, kend, tid, n0, ncols, ky, kx, kc, cin, kw, cc, b_pre)
        store_a(As, 0, tid, a_pre)
        store_b(Bs, 0, tid, b_pre)
        cuda.syncthreads()  # buffer 0 is staged before any warp reads it
        for step in range(nsteps):
            cur = step & 1
            more = step + 1 < nsteps
            if more:
                # --- advance the loaders' reduction coordinates by BK (one carry per digit)
                if MODE == BWD_WEIGHT:
                    for i in range(A_LOADS):
                        w_ = row_w[i] + d_c
                        h_ = row_h[i] + d_x
                        b_ = row_b[i] + d_b
                        if w_ >= w_end:
                            w_ -= w_end
                            h_ += sh
                            b_ += w_carry
                        if h_ >= h_end:
                            h_ -= h_end
                            b_ += h_carry
                        row_w[i] = w_
                        row_h[i] = h_
                        row_b[i] = b_
                else:
                    kc, kx, ky = advance_digits(kc, kx, ky, d_c, d_x, d_y, crad, kw)
                k0 = kbeg + (step + 1) * BK
                # the next step's tiles, in flight while the warps multiply this one's
                load_a(src, k0, kend, kk, row_n, row_h, row_w, row_b,
                       k_offset(ky, kx, kc, ww, cc, w_off), ky, kx, kc, wr_ky, wr_kx, wr_ci, hh,
                       ww, cc, sh, sw, a_pre)
                load_b(wmat, k0, kend, tid, n0, ncols, ky, kx, kc, cin, kw, cc, b_pre)
            warp_product(As, Bs, a_at + cur * A_SIZE, b_at + cur * B_SIZE, acc, afr, bfr)
            if more:
                store_a(As, (1 - cur) * A_SIZE, tid, a_pre)
                store_b(Bs, (1 - cur) * B_SIZE, tid, b_pre)
            # the other buffer is staged, and every warp is done with this one (rewritten by
            # the step after next)
            cuda.syncthreads()

        epilogue(out, bias, acc, m0 + wm0, n0 + wn0, mrows, ncols, split, act, has_bias, g, t)

    a1, a2 = arr("float32", 1), arr("float32", 2)
    name = (f"tf32_{MODE_NAMES[mode]}{'_s' if STRIDED else ''}"
            f"[float32,{BM}x{BN}x{BK}/{WM}x{WN}w/{tile.min_blocks}]")
    # min_blocks resident blocks per SM: ptxas keeps the registers within 65536 / (NT * that)
    return KernelSpec(name, tf32_k, (a1, a1, a1, a2) + (i64,) * 15,
                      launch_bounds=(NT, tile.min_blocks))


# ---------------------------------------------------------------------------------------------
# Launchers: the signatures of conv.py's public functions, float32 only, and ``tile=`` for tests
# ---------------------------------------------------------------------------------------------

_F32 = np.dtype(np.float32)


def use_tf32(dtype) -> bool:
    """Whether a convolution on arrays of ``dtype`` should run here: float32, and the precision
    setting allows TF32 (``gpucnn.kernels._precision``; exact float32 by default)."""
    return np.dtype(dtype) == _F32 and _precision.allow_tf32()


def _float32(op, name, a):
    dt = getattr(a, "dtype", None)
    if dt is None or np.dtype(dt) != _F32:
        raise TypeError(f"{op}: the TF32 kernels take float32 arrays, got {name} of dtype {dt}")
    return contig(a, _F32)


def _tile(mode, ncols, tile):
    return (choose_tile(mode, ncols) if tile is None else MmaTile(*tile)).check()


def _launch(mode, tile, grid_m, grid_n, splits, arrays, scalars, strided=False):
    launch(tf32_kernel(mode, tile, strided),
           (cdiv(grid_m, tile.bm), cdiv(grid_n, tile.bn), splits), (tile.threads,), *arrays,
           *scalars)


def tf32_conv2d_forward(x, w, b, stride, pad, act, *, tile=None):
    """``y = act(conv(x, w) + b)`` on TF32 tensor cores: x (N, H, W, Cin), w (KH, KW, Cin,
    Cout), b (Cout,) or None -> (N, Ho, Wo, Cout), float32; within ``tf32_error_bound`` of the
    exact result (before the activation)."""
    op = "tf32_conv2d_forward"
    code = act_code(op, act)
    x, w = _float32(op, "x", x), _float32(op, "w", w)
    check_rank(op, "x", x, 4, "(N, H, W, C_in)")
    check_rank(op, "w", w, 4, "(KH, KW, C_in, C_out)")
    n, h, wd, cin = x.shape
    kh, kw, wcin, cout = w.shape
    if wcin != cin:
        raise ValueError(f"{op}: x has {cin} channels but w {tuple(w.shape)} expects {wcin}")
    sh, sw, pad4 = _geometry_mod.stride_pad(op, stride, pad)
    ho, wo = _geometry_mod.padded_window_2d(op, h, wd, kh, kw, sh, sw, pad4)
    if b is not None:
        b = _float32(op, "b", b)
        if b.shape != (cout,):
            raise ValueError(f"{op}: b must have shape ({cout},), got {tuple(b.shape)}")
    y = empty((n, ho, wo, cout), _F32)
    _launch(FWD, _tile(FWD, cout, tile), n * ho * wo, cout, 1,
            (x, w, dummy(_F32) if b is None else b, y),
            (*x.shape, ho, wo, kh, kw, sh, sw, pad4[0], pad4[2], code, 0 if b is None else 1, 0))
    return y


def tf32_conv2d_backward_input(dy, w, x_shape, stride, pad, *, tile=None):
    """dx of shape ``x_shape`` from dy (N, Ho, Wo, Cout) and w (KH, KW, Cin, Cout) on TF32
    tensor cores (also the transposed convolution of dy)."""
    op = "tf32_conv2d_backward_input"
    dy, w = _float32(op, "dy", dy), _float32(op, "w", w)
    check_rank(op, "dy", dy, 4, "(N, Ho, Wo, C_out)")
    check_rank(op, "w", w, 4, "(KH, KW, C_in, C_out)")
    n, h, wd, cin = (int(v) for v in x_shape)
    kh, kw, wcin, cout = w.shape
    sh, sw, pad4 = _geometry_mod.stride_pad(op, stride, pad)
    ho, wo = _geometry_mod.padded_window_2d(op, h, wd, kh, kw, sh, sw, pad4)
    if wcin != cin or tuple(dy.shape) != (n, ho, wo, cout):
        raise ValueError(f"{op}: dy {tuple(dy.shape)} and w {tuple(w.shape)} do not match "
                         f"x_shape {tuple(x_shape)} (expected dy {(n, ho, wo, cout)}, w "
                         f"(KH, KW, {cin}, C_out))")
    dx = empty((n, h, wd, cin), _F32)
    _launch(BWD_INPUT, _tile(BWD_INPUT, cin, tile), n * h * wd, cin, 1,
            (dy, w, dummy(_F32), dx),
            (*dy.shape, h, wd, kh, kw, sh, sw, pad4[0], pad4[2], 0, 0, 0), (sh, sw) != (1, 1))
    return dx


def split_k(tile, rows, ncols, red, target_blocks, min_steps):
    """Split-K count and chunk (a multiple of bk) of a weight gradient: about ``target_blocks``
    blocks (None: four per SM), at least ``min_steps`` steps of bk per split (this module's and
    ``conv``'s ``TARGET_BLOCKS`` and ``MIN_SPLIT_STEPS``)."""
    tiles = cdiv(rows, tile.bm) * cdiv(ncols, tile.bn)
    max_splits = max(1, cdiv(red, tile.bk * min_steps))
    target = target_blocks if target_blocks is not None else 4 * sm_count()
    splits = max(1, min(cdiv(target, tiles), max_splits, MAX_GRID_YZ))
    chunk = cdiv(cdiv(red, splits), tile.bk) * tile.bk
    return cdiv(red, chunk), chunk


def tf32_conv2d_backward_weight(x, dy, w_shape, stride, pad, *, tile=None):
    """dw of shape ``w_shape`` (KH, KW, Cin, Cout) on TF32 tensor cores: split-K partials over
    batch and space (float32 accumulators), then a column sum in float32."""
    op = "tf32_conv2d_backward_weight"
    x, dy = _float32(op, "x", x), _float32(op, "dy", dy)
    check_rank(op, "x", x, 4, "(N, H, W, C_in)")
    check_rank(op, "dy", dy, 4, "(N, Ho, Wo, C_out)")
    kh, kw, cin, cout = (int(v) for v in w_shape)
    n, h, wd, xcin = x.shape
    sh, sw, pad4 = _geometry_mod.stride_pad(op, stride, pad)
    ho, wo = _geometry_mod.padded_window_2d(op, h, wd, kh, kw, sh, sw, pad4)
    if xcin != cin or tuple(dy.shape) != (n, ho, wo, cout):
        raise ValueError(f"{op}: x {tuple(x.shape)} and dy {tuple(dy.shape)} do not match "
                         f"w_shape {tuple(w_shape)} (expected dy {(n, ho, wo, cout)})")
    krows, red = kh * kw * cin, n * ho * wo
    if red == 0:
        return xp.zeros((kh, kw, cin, cout), dtype=_F32)
    tile = _tile(BWD_WEIGHT, cout, tile)
    splits, chunk = split_k(tile, krows, cout, red, TARGET_BLOCKS, MIN_SPLIT_STEPS)
    part = empty((splits, krows, cout), _F32)
    _launch(BWD_WEIGHT, tile, krows, cout, splits, (x, dy, dummy(_F32), part),
            (*x.shape, ho, wo, kh, kw, sh, sw, pad4[0], pad4[2], 0, 0, chunk))
    total = part[0] if splits == 1 else column_sum(part.reshape(splits, krows * cout))
    return total.reshape(kh, kw, cin, cout)


def tf32_error_bound(a_abs_b_abs, k: int):
    """The TF32 kernels' error bound for outputs whose ``sum_k |a_k| |b_k|`` is given (an array
    or a number) over a reduction of ``k`` terms: ``(2 u + u**2 + k * 2**-24) * that``, with
    ``u = 2**-11`` the relative rounding of one operand to TF32 (10 mantissa bits, round to
    nearest) and ``2**-24`` float32's unit roundoff for each of the k accumulations (the
    split-K column sum's additions included in k)."""
    u = 2.0 ** -11
    return (2 * u + u * u + k * 2.0 ** -24) * a_abs_b_abs
