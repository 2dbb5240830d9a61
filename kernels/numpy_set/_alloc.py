"""Keep freed memory in the process: glibc's allocator tuned once, when the NumPy set loads.

A training step allocates and frees the same large arrays every step (im2col blocks, layer
outputs, gradients). With glibc's defaults every block above the mmap threshold (128 KiB at
first, adapting upwards) is a fresh ``mmap`` and goes back to the system when freed, as does the
top of the heap beyond the trim threshold; the next step then takes a page fault on every 4 KiB
page it touches again, which measured about 0.4 ms per MiB here, a third of a LeNet-5 step at
batch 512. ``mallopt`` raises both thresholds (``M_MMAP_THRESHOLD`` 32 MiB, the largest glibc
allows; ``M_TRIM_THRESHOLD`` 1 GiB), so freed blocks are reused by the next step, as PyTorch's
caching allocator does. The cost: the process keeps its peak heap instead of returning it.

This is a process-wide decision, made once when the NumPy kernel set is first loaded (that is,
when the numpy backend is selected); ``GPUCNN_MALLOPT=0`` in the environment leaves the allocator
alone. Only glibc (Linux) is touched; elsewhere nothing happens.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 1 << 30

_note = "not changed"


def tune() -> str:
    """Raise glibc's mmap and trim thresholds (once); returns what was done, in words."""
    global _note
    if os.environ.get("GPUCNN_MALLOPT", "").strip() == "0":
        _note = "left alone (GPUCNN_MALLOPT=0)"
        return _note
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        get_version = libc.gnu_get_libc_version
    except (OSError, AttributeError):
        _note = "not glibc: left alone"
        return _note
    get_version.restype = ctypes.c_char_p
    version = get_version().decode()
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    ok = mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and ok
    _note = (f"glibc {version} mallopt: M_MMAP_THRESHOLD={MMAP_THRESHOLD >> 20} MiB, "
             f"M_TRIM_THRESHOLD={TRIM_THRESHOLD >> 20} MiB (freed blocks reused across steps; "
             "GPUCNN_MALLOPT=0 turns this off)") if ok else "mallopt refused: left alone"
    return _note


def note() -> str:
    """What ``tune`` did, in words (the benchmark prints it)."""
    return _note
