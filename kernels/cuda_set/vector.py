"""128-bit loads and stores for the memory-bound kernels, each intrinsic beside its simulator
emulation (the pattern of ``ptx.py``).

Numba gives a kernel's array no alignment, so four neighbouring ``x[i]`` loads stay four 32-bit
``LDG.E``; these intrinsics load and store 16-byte-aligned vectors (``LDG.E.128``/``STG.E.128``
in the SASS) in plain LLVM IR, with no inline PTX:

``aligned16(a)``
    whether the data pointer of array ``a`` is a multiple of 16 bytes (every thread of a launch
    gets the same answer; CuPy allocations are 256-byte aligned, a view with an offset may not be).
``load4(a, i)``
    ``(a[i], a[i+1], a[i+2], a[i+3])`` of a 1-D float array whose element ``i`` is 16-byte
    aligned: one 128-bit load for float32, two for float64.
``store4(a, i, v0, v1, v2, v3)``
    the matching store.

A kernel uses them as chunks of 4 elements: ``n // 4`` chunks when every array is aligned
(``aligned16``), then the remaining elements one by one. The emulation checks the alignment the
hardware would fault on (a RuntimeError), so a kernel that loads misaligned fails in the
simulator too.
"""
from __future__ import annotations

from . import _arrays
from ._arrays import cdiv, sm_count
from ._runtime import SIMULATOR


def _address(a) -> int:
    base = getattr(a, "_ary", a)          # the simulator wraps device arrays
    return int(base.__array_interface__["data"][0])


def _aligned16_emulated(a):
    return _address(a) % 16 == 0


def _check(a, i):
    if (_address(a) + int(i) * a.dtype.itemsize) % 16:
        raise RuntimeError(f"misaligned 128-bit access at element {i} of an array at "
                           f"{_address(a):#x}")


def _load4_emulated(a, i):
    _check(a, i)
    return a[i], a[i + 1], a[i + 2], a[i + 3]


def _store4_emulated(a, i, v0, v1, v2, v3):
    _check(a, i)
    a[i], a[i + 1], a[i + 2], a[i + 3] = v0, v1, v2, v3


def _intrinsics():
    from llvmlite import ir
    from numba import types
    from numba.cuda.extending import intrinsic

    def data_ptr(context, builder, aryty, ary):
        return context.make_array(aryty)(context, builder, value=ary).data

    def vectors(context, builder, aryty, ary, i):
        """The 128-bit vector pointers covering elements i .. i+3 (one for float32, two for
        float64), and the element type."""
        elem = context.get_value_type(aryty.dtype)
        lanes = 16 // context.get_abi_sizeof(elem)
        base = builder.gep(data_ptr(context, builder, aryty, ary), [i])
        vty = ir.VectorType(elem, lanes).as_pointer()
        return [builder.bitcast(builder.gep(base, [ir.Constant(i.type, k)]), vty)
                for k in range(0, 4, lanes)], lanes

    def check(aryty):
        if not (isinstance(aryty, types.Array) and aryty.ndim == 1
                and aryty.dtype in (types.float32, types.float64)):
            raise TypeError(f"vector loads take 1-D float32/float64 arrays, got {aryty}")

    @intrinsic
    def aligned16(typingctx, a):
        if not isinstance(a, types.Array):
            raise TypeError(f"aligned16 takes an array, got {a}")

        def codegen(context, builder, sig, args):
            addr = builder.ptrtoint(data_ptr(context, builder, sig.args[0], args[0]),
                                    ir.IntType(64))
            low = builder.and_(addr, ir.Constant(ir.IntType(64), 15))
            return builder.icmp_unsigned("==", low, ir.Constant(ir.IntType(64), 0))

        return types.boolean(a), codegen

    @intrinsic
    def load4(typingctx, a, i):
        check(a)

        def codegen(context, builder, sig, args):
            aryty, ity = sig.args
            idx = context.cast(builder, args[1], ity, types.intp)
            ptrs, lanes = vectors(context, builder, aryty, args[0], idx)
            vals = []
            for p in ptrs:
                v = builder.load(p, align=16)
                vals += [builder.extract_element(v, ir.Constant(ir.IntType(32), k))
                         for k in range(lanes)]
            return context.make_tuple(builder, sig.return_type, vals)

        return types.UniTuple(a.dtype, 4)(a, i), codegen

    @intrinsic
    def store4(typingctx, a, i, v0, v1, v2, v3):
        check(a)

        def codegen(context, builder, sig, args):
            aryty, ity = sig.args[:2]
            idx = context.cast(builder, args[1], ity, types.intp)
            vals = [context.cast(builder, v, t, aryty.dtype)
                    for v, t in zip(args[2:], sig.args[2:])]
            ptrs, lanes = vectors(context, builder, aryty, args[0], idx)
            elem = context.get_value_type(aryty.dtype)
            for n, p in enumerate(ptrs):
                vec = ir.Constant(ir.VectorType(elem, lanes), ir.Undefined)
                for k in range(lanes):
                    vec = builder.insert_element(vec, vals[n * lanes + k],
                                                 ir.Constant(ir.IntType(32), k))
                builder.store(vec, p, align=16)
            return context.get_dummy_value()

        return types.void(a, i, v0, v1, v2, v3), codegen

    return aligned16, load4, store4


if SIMULATOR:
    aligned16, load4, store4 = _aligned16_emulated, _load4_emulated, _store4_emulated
else:
    aligned16, load4, store4 = _intrinsics()


#: Resident blocks per SM the streaming kernels are compiled for (their launch bounds cap the
#: registers to fit): 8 of 256 threads fill an sm_80/sm_90 SM (2048 threads, 32 registers each);
#: the pools and optimizer updates need more registers and take 4.
FULL, HALF = 8, 4


def stream_grid(n: int, block: int, per_sm: int = FULL) -> tuple[int]:
    """The grid of a grid-stride kernel over ``n`` work items: one block per ``block`` items,
    at most one wave (``per_sm`` blocks on every SM, what the kernel's launch bounds guarantee
    fit) and at most ``_arrays.MAX_BLOCKS`` (lowered by ``simulate.small_launches``). Each thread
    then loops; more blocks than one wave would leave the last wave part-empty while the first
    waves' SMs idle."""
    return (min(cdiv(n, block), sm_count() * per_sm, _arrays.MAX_BLOCKS),)
