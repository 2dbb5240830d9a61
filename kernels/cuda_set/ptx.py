"""Inline PTX for the cuda set: the one module that builds LLVM IR, each intrinsic beside its
simulator emulation.

numba-cuda 0.30 has no API for tensor-core instructions, so they are written as inline PTX:
an ``llvmlite.ir.InlineAsm`` called from a ``numba.cuda.extending.intrinsic`` (the mechanism of
numba-cuda's own ``cache_hints.py``). Kernels import the names below and call them as functions;
under ``NUMBA_ENABLE_CUDASIM=1`` the same names are Python emulations, so a kernel's source is
the same in the simulator and on hardware. Nothing else in gpucnn builds IR: when numba-cuda's
LLVM-IR extension API is replaced (numba-cuda-mlir), this file is the one to port.

``cvt_tf32(x)``
    ``cvt.rna.tf32.f32``: float32 -> a ``uint32`` register holding ``x`` rounded to TF32
    (10 explicit mantissa bits, round to nearest, ties away from zero; low 13 bits zero).
``ldg_f32x4(a, o)``
    ``ld.global.nc.v4.f32``: elements ``o .. o+3`` of the float32 array ``a`` (seen flat) in
    one 128-bit load, as a 4-tuple. ``o`` must be a multiple of 4 and ``a``'s data 16-byte
    aligned (the emulation refuses an unaligned ``o``); read-only data only (``.nc``).
``mma_tf32_m16n8k8(a0, a1, a2, a3, b0, b1, c0, c1, c2, c3)``
    ``mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32``: one warp computes
    ``D (16x8) = A (16x8) @ B (8x8) + C``; each lane passes its fragment registers (A and B as
    ``uint32`` TF32 registers from ``cvt_tf32``, C as float32) and receives its four float32
    of D. Every lane of the warp must call it at the same place (convergent). Fragment layout
    (PTX ISA, "Matrix fragments for mma.m16n8k8" of .tf32), with ``g = lane >> 2``,
    ``t = lane & 3``::

        a0 = A[g, t]     a1 = A[g+8, t]     a2 = A[g, t+4]     a3 = A[g+8, t+4]
        b0 = B[t, g]     b1 = B[t+4, g]
        c0 = C[g, 2t]    c1 = C[g, 2t+1]    c2 = C[g+8, 2t]    c3 = C[g+8, 2t+1]   (D alike)

The hardware reads only the top 19 bits of a TF32 register (sign, exponent, 10 mantissa bits);
the emulation does the same, so a value passed without ``cvt_tf32`` is truncated and shows.

The emulation of a warp instruction is a rendezvous of the warp's 32 simulated threads (keyed by
block and warp): each lane deposits its registers, the last to arrive computes the whole matrix
product (in float64 from the TF32 inputs, rounded once to float32: every product of two TF32
values is exact), and each lane takes its registers of D. A warp that is partial (a block
whose thread count is not a multiple of 32), or divergent (a lane at another call site, or one
that finished or waits at ``syncthreads`` while others wait here), raises RuntimeError.

Adding an instruction: an ``MmaShape`` (PTX name, register counts, fragment layout, register
decoding) gives both the intrinsic and the emulation; bf16 ``m16n8k16``
(``mma_bf16_m16n8k16``) is the same table with two bf16 values per 32-bit register.
"""
from __future__ import annotations

import sys
import threading
import time
from typing import Callable, NamedTuple

import numpy as np

from ._runtime import SIMULATOR

# ---------------------------------------------------------------------------------------------
# Fragment layouts: which matrix elements each lane's register holds
# ---------------------------------------------------------------------------------------------


class MmaShape(NamedTuple):
    """One ``mma.sync`` variant: its PTX, register counts and fragment layout.

    ``a_elems(lane, r)``, ``b_elems(lane, r)``, ``c_elems(lane, r)`` give the ``(row, col)``
    of each element register ``r`` of ``lane`` holds (lowest bits first); ``unpack(bits)``
    the float values of one A/B register."""

    name: str
    ptx: str
    m: int
    n: int
    k: int
    a_regs: int
    b_regs: int
    c_regs: int
    a_elems: Callable
    b_elems: Callable
    c_elems: Callable
    unpack: Callable


def _tf32_a(lane, r):
    g, t = lane >> 2, lane & 3
    return ((g + 8 * (r & 1), t + 4 * (r >> 1)),)


def _tf32_b(lane, r):
    g, t = lane >> 2, lane & 3
    return ((t + 4 * r, g),)


def _acc_c(lane, r):
    g, t = lane >> 2, lane & 3
    return ((g + 8 * (r >> 1), 2 * t + (r & 1)),)


TF32_MASK = 0xFFFFE000          # the bits of a float32 that a TF32 register keeps


def tf32_bits_value(bits) -> float:
    """The value a TF32 register holds: its low 13 bits ignored, as the tensor cores do."""
    return float(np.array(int(bits) & TF32_MASK, dtype=np.uint32).view(np.float32))


def _unpack_tf32(bits):
    return (tf32_bits_value(bits),)


MMA_TF32_M16N8K8 = MmaShape(
    "mma_tf32_m16n8k8", "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32",
    16, 8, 8, 4, 2, 4, _tf32_a, _tf32_b, _acc_c, _unpack_tf32)


def _bf16_a(lane, r):
    g, t = lane >> 2, lane & 3
    row, col = g + 8 * (r & 1), 2 * t + 8 * (r >> 1)
    return ((row, col), (row, col + 1))


def _bf16_b(lane, r):
    g, t = lane >> 2, lane & 3
    return ((2 * t + 8 * r, g), (2 * t + 8 * r + 1, g))


def _unpack_bf16x2(bits):
    b = int(bits)
    return tuple(float(np.array((b >> s & 0xFFFF) << 16, dtype=np.uint32).view(np.float32))
                 for s in (0, 16))


#: The bf16 variant (layout of the PTX ISA's m16n8k16 .bf16 fragments: two bf16 per register,
#: the lower-indexed element in the low half): ``mma_bf16_m16n8k16`` below, intrinsic and
#: emulation from this table alone. No kernel uses it yet (bf16 needs a conversion and a
#: precision setting of its own).
MMA_BF16_M16N8K16 = MmaShape(
    "mma_bf16_m16n8k16", "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32",
    16, 8, 16, 4, 2, 4, _bf16_a, _bf16_b, _acc_c, _unpack_bf16x2)


def mma_reference(shape: MmaShape, regs: dict) -> dict:
    """D of one warp's mma from every lane's registers ``{lane: (a..., b..., c...)}``:
    ``{lane: (d0, ...)}`` (float64 product of the decoded inputs, rounded once to float32)."""
    a = np.zeros((shape.m, shape.k))
    b = np.zeros((shape.k, shape.n))
    c = np.zeros((shape.m, shape.n))
    na, nb = shape.a_regs, shape.b_regs
    for lane, vals in regs.items():
        for r in range(na):
            for (i, j), v in zip(shape.a_elems(lane, r), shape.unpack(vals[r])):
                a[i, j] = v
        for r in range(nb):
            for (i, j), v in zip(shape.b_elems(lane, r), shape.unpack(vals[na + r])):
                b[i, j] = v
        for r in range(shape.c_regs):
            (i, j), = shape.c_elems(lane, r)
            c[i, j] = float(vals[na + nb + r])
    d = (a @ b + c).astype(np.float32)
    return {lane: tuple(d[shape.c_elems(lane, r)[0]] for r in range(shape.c_regs))
            for lane in regs}


# ---------------------------------------------------------------------------------------------
# The simulator's warp: a rendezvous of 32 Python threads
# ---------------------------------------------------------------------------------------------

WARP = 32
#: How often (seconds) a lane waiting at a rendezvous checks that its warp can still arrive.
POLL = 0.02
#: How long (seconds) a missing lane must stay at ``syncthreads``, or not running, before the
#: warp is called divergent: the simulator starts a block's threads and releases a barrier
#: thread by thread, so a lane can be seen there for a moment while the others have moved on.
STUCK_AFTER = 1.0


class WarpError(RuntimeError):
    """A warp-wide instruction reached by a partial or divergent warp (simulator only)."""


class _Round:
    """One execution of a warp instruction: the lanes' inputs, then their outputs."""

    def __init__(self, op, site):
        self.op, self.site = op, site
        self.inputs: dict = {}
        self.outputs = None
        self.error = None
        self.cond = threading.Condition()


_rounds: dict = {}
_rounds_lock = threading.Lock()


def _warp_peers(th, warp):
    """The simulated threads of ``th``'s block in warp ``warp``, by lane."""
    out = {}
    for other in threading.enumerate():
        if getattr(other, "_manager", None) is th._manager and other.thread_id // WARP == warp:
            out[other.thread_id % WARP] = other
    return out


def _fail(rnd, key, msg):
    with _rounds_lock:
        if _rounds.get(key) is rnd:
            del _rounds[key]
    rnd.error = msg
    rnd.cond.notify_all()
    raise WarpError(msg)


def warp_exchange(op: str, regs: tuple, compute: Callable) -> tuple:
    """Run a warp-wide instruction in the simulator: every lane calls this with its registers;
    ``compute({lane: regs})`` (called once, by the last lane) returns ``{lane: result}``; each
    lane gets its result. Raises WarpError for a partial or divergent warp."""
    th = threading.current_thread()
    if not hasattr(th, "_manager"):
        raise WarpError(f"{op}: called outside a simulated kernel")
    tid = th.thread_id
    warp, lane = divmod(tid, WARP)
    x, y, z = th._manager._block_dim
    nthreads = x * y * z
    if (warp + 1) * WARP > nthreads:
        raise WarpError(f"{op}: partial warp: the block has {nthreads} threads, so warp {warp} "
                        f"has {nthreads - warp * WARP} lanes; expected all {WARP} (a block of a "
                        f"multiple of {WARP} threads)")
    caller = sys._getframe(2)
    site = (caller.f_code.co_filename, caller.f_lineno)
    key = (id(th._manager), warp)
    with _rounds_lock:
        rnd = _rounds.get(key)
        if rnd is None:
            rnd = _rounds[key] = _Round(op, site)
    with rnd.cond:
        if rnd.error:
            raise WarpError(rnd.error)
        if (rnd.op, rnd.site) != (op, site):
            _fail(rnd, key, f"{op}: divergent warp {warp} of block {tuple(th.blockIdx)}: lane "
                  f"{lane} reached {op} at {site[0]}:{site[1]} while lanes "
                  f"{sorted(rnd.inputs)} wait in {rnd.op} at {rnd.site[0]}:{rnd.site[1]}")
        rnd.inputs[lane] = regs
        if len(rnd.inputs) == WARP:
            with _rounds_lock:
                del _rounds[key]        # the warp's next instruction starts a new round
            rnd.outputs = compute(rnd.inputs)
            rnd.cond.notify_all()
        stuck = {}
        while rnd.outputs is None:
            if rnd.error:
                raise WarpError(rnd.error)
            if th.abort:
                _fail(rnd, key, f"{op}: the kernel was aborted while warp {warp} waited")
            rnd.cond.wait(POLL)
            if rnd.outputs is None and rnd.error is None:
                _check_arrival(rnd, key, th, op, warp, stuck)
        return rnd.outputs[lane]


def _check_arrival(rnd, key, th, op, warp, stuck):
    """Raise when a lane that has not arrived never will: it has finished the kernel or waited
    at a barrier for ``STUCK_AFTER`` seconds (``stuck``: lane -> since when, kept by the caller
    between checks). A lane not running is given that time too: the simulator starts a block's
    threads one by one, and a thread that raised is ended by the simulator's abort instead."""
    peers = _warp_peers(th, warp)
    now = time.monotonic()
    for lane in range(WARP):
        if lane in rnd.inputs:
            continue
        other = peers.get(lane)
        if other is None:
            why = f"finished the kernel (not running for {STUCK_AFTER} s)"
        elif other.syncthreads_blocked:
            why = f"has waited at syncthreads for {STUCK_AFTER} s"
        else:
            stuck.pop(lane, None)
            continue
        if now - stuck.setdefault(lane, now) < STUCK_AFTER:
            continue
        _fail(rnd, key, f"{op}: divergent warp {warp} of block {tuple(th.blockIdx)}: "
              f"{len(rnd.inputs)} of its {WARP} lanes wait at {rnd.site[0]}:{rnd.site[1]} but "
              f"lane {lane} {why} (expected all {WARP} lanes to execute the same {op})")


# ---------------------------------------------------------------------------------------------
# cvt.rna.tf32.f32
# ---------------------------------------------------------------------------------------------

def tf32_round_bits(x) -> np.ndarray:
    """float32 values rounded to TF32 as ``cvt.rna.tf32.f32`` does, as uint32 bit patterns
    (nearest, ties away from zero; NaN stays NaN, the low 13 bits are zero). Any shape."""
    bits = np.asarray(x, dtype=np.float32).view(np.uint32)
    finite = (bits & 0x7F800000) != 0x7F800000
    out = np.where(finite, (bits + np.uint32(0x1000)) & np.uint32(TF32_MASK), bits)
    return np.where((~finite) & ((bits & 0x007FFFFF) != 0), np.uint32(0x7FFFFFFF),
                    out).astype(np.uint32)


def _cvt_tf32_emulated(x):
    return np.uint32(tf32_round_bits(np.float32(x)))


def _cvt_tf32_intrinsic(ir, types, NumbaTypeError, intrinsic):
    @intrinsic
    def cvt_tf32(typingctx, x):
        if not isinstance(x, types.Float):
            raise NumbaTypeError(f"cvt_tf32: expected a float, got {x}")
        sig = types.uint32(types.float32)

        def codegen(context, builder, sig, args):
            fnty = ir.FunctionType(ir.IntType(32), [ir.FloatType()])
            asm = ir.InlineAsm(fnty, "cvt.rna.tf32.f32 $0, $1;", "=r,f")
            return builder.call(asm, args)

        return sig, codegen

    return cvt_tf32


# ---------------------------------------------------------------------------------------------
# ld.global.nc.v4.f32
# ---------------------------------------------------------------------------------------------

def _ldg_f32x4_emulated(a, o):
    o = int(o)
    if o % 4:
        raise ValueError(f"ldg_f32x4: offset {o} is not a multiple of 4 (a 128-bit load)")
    return tuple(np.float32(a[o + i]) for i in range(4))


def _ldg_f32x4_intrinsic(ir, types, NumbaTypeError, intrinsic):
    @intrinsic
    def ldg_f32x4(typingctx, a, o):
        if not (isinstance(a, types.Array) and a.dtype == types.float32 and a.ndim == 1
                and isinstance(o, types.Integer)):
            raise NumbaTypeError(f"ldg_f32x4: expected a 1-D float32 array and an integer "
                                 f"offset, got {a}, {o}")
        sig = types.UniTuple(types.float32, 4)(a, o)

        def codegen(context, builder, sig, args):
            f32, i64 = ir.FloatType(), ir.IntType(64)
            data = context.make_array(sig.args[0])(context, builder, args[0]).data
            off = (builder.sext if sig.args[1].signed else builder.zext)(args[1], i64)
            addr = builder.ptrtoint(builder.gep(data, [off]), i64)
            fnty = ir.FunctionType(ir.LiteralStructType([f32] * 4), [i64])
            asm = ir.InlineAsm(fnty, "ld.global.nc.v4.f32 {$0, $1, $2, $3}, [$4];",
                               "=f,=f,=f,=f,l")
            res = builder.call(asm, [addr])
            return context.make_tuple(builder, sig.return_type,
                                      [builder.extract_value(res, i) for i in range(4)])

        return sig, codegen

    return ldg_f32x4


# ---------------------------------------------------------------------------------------------
# mma.sync
# ---------------------------------------------------------------------------------------------

def _mma_emulated(shape: MmaShape):
    nin = shape.a_regs + shape.b_regs

    def mma(*regs):
        if len(regs) != nin + shape.c_regs:
            raise TypeError(f"{shape.name}: expected {nin + shape.c_regs} registers, got "
                            f"{len(regs)}")
        for r in regs[:nin]:     # the intrinsic's typing rejects a float register too
            if not isinstance(r, (int, np.integer)):
                raise TypeError(f"{shape.name}: A and B registers are uint32 (packed bits), "
                                f"got {type(r).__name__} {r!r}")
        regs = tuple(int(r) & 0xFFFFFFFF for r in regs[:nin]) + tuple(
            np.float32(c) for c in regs[nin:])
        return tuple(np.float32(v) for v in warp_exchange(
            shape.name, regs, lambda lanes: mma_reference(shape, lanes)))

    mma.__name__ = shape.name
    return mma


def _mma_intrinsic(shape: MmaShape, ir, types, NumbaTypeError, intrinsic):
    nin, nc = shape.a_regs + shape.b_regs, shape.c_regs
    ops = lambda first, count: ",".join(f"${i}" for i in range(first, first + count))  # noqa
    asm_text = (f"{shape.ptx} {{{ops(0, nc)}}}, {{{ops(nc, shape.a_regs)}}}, "
                f"{{{ops(nc + shape.a_regs, shape.b_regs)}}}, {{{ops(nc + nin, nc)}}};")
    constraints = ",".join(["=f"] * nc + ["r"] * nin + ["f"] * nc)
    ret = types.UniTuple(types.float32, nc)

    def typer(typingctx, *args):
        if len(args) != nin + nc:
            raise NumbaTypeError(f"{shape.name}: expected {nin + nc} registers, got {len(args)}")
        if not all(isinstance(a, types.Integer) for a in args[:nin]):
            raise NumbaTypeError(f"{shape.name}: A and B registers are uint32 (packed bits), "
                                 f"got {args[:nin]}")
        if not all(isinstance(a, types.Float) for a in args[nin:]):
            raise NumbaTypeError(f"{shape.name}: C registers are float32, got {args[nin:]}")
        sig = ret(*([types.uint32] * nin + [types.float32] * nc))

        def codegen(context, builder, sig, args):
            f32, i32 = ir.FloatType(), ir.IntType(32)
            fnty = ir.FunctionType(ir.LiteralStructType([f32] * nc), [i32] * nin + [f32] * nc)
            asm = ir.InlineAsm(fnty, asm_text, constraints)
            res = builder.call(asm, args, attrs=("convergent",))
            return context.make_tuple(builder, sig.return_type,
                                      [builder.extract_value(res, i) for i in range(nc)])

        return sig, codegen

    if (nin, nc) != (6, 4):   # pragma: no cover - every variant of the table has 4 + 2 + 4
        raise NotImplementedError(f"{shape.name}: {nin} + {nc} registers")

    def mma(typingctx, a0, a1, a2, a3, b0, b1, c0, c1, c2, c3):
        return typer(typingctx, a0, a1, a2, a3, b0, b1, c0, c1, c2, c3)

    mma.__name__ = mma.__qualname__ = shape.name
    return intrinsic(mma)


def _intrinsics():
    """The intrinsics, built with what they all import (only off the simulator)."""
    from llvmlite import ir
    from numba import types
    from numba.core.errors import NumbaTypeError
    from numba.cuda.extending import intrinsic

    tools = (ir, types, NumbaTypeError, intrinsic)
    return {"cvt_tf32": _cvt_tf32_intrinsic(*tools), "ldg_f32x4": _ldg_f32x4_intrinsic(*tools),
            "mma_tf32_m16n8k8": _mma_intrinsic(MMA_TF32_M16N8K8, *tools),
            "mma_bf16_m16n8k16": _mma_intrinsic(MMA_BF16_M16N8K16, *tools)}


#: The emulations, importable in either mode (tests call them on simulated warps).
EMULATED = {"cvt_tf32": _cvt_tf32_emulated, "ldg_f32x4": _ldg_f32x4_emulated,
            "mma_tf32_m16n8k8": _mma_emulated(MMA_TF32_M16N8K8),
            "mma_bf16_m16n8k16": _mma_emulated(MMA_BF16_M16N8K16)}

_USED = EMULATED if SIMULATOR else _intrinsics()
cvt_tf32, ldg_f32x4 = _USED["cvt_tf32"], _USED["ldg_f32x4"]
mma_tf32_m16n8k8, mma_bf16_m16n8k16 = _USED["mma_tf32_m16n8k8"], _USED["mma_bf16_m16n8k16"]
