"""Keep freed memory in the process while ``fit`` trains: glibc's allocator tuned, then put back.

A training step allocates and frees the same large arrays every step (im2col blocks, layer
outputs, gradients). With glibc's defaults every block above the mmap threshold (128 KiB at
first, adapting upwards) is a fresh ``mmap`` and goes back to the system when freed, as does the
top of the heap beyond the trim threshold; the next step then takes a page fault on every 4 KiB
page it touches again, which measured about 0.4 ms per MiB here, a third of a LeNet-5 step at
batch 512. ``mallopt`` raises both thresholds (``M_MMAP_THRESHOLD`` 32 MiB, the largest glibc
allows; ``M_TRIM_THRESHOLD`` 1 GiB), so freed blocks are reused by the next step, as PyTorch's
caching allocator does. The cost: the process keeps its peak heap instead of returning it.

The tuning lasts only while gpucnn trains: ``tuned()`` (a context, re-entrant and thread-safe;
``Model.fit`` runs inside it on the NumPy backend) raises both thresholds when the first training
run starts and, when the last one ends, returns the memory they kept to the system
(``malloc_trim``) and sets them to where glibc's own adaptive rule leaves them in any process
that has freed a 32 MiB block (``M_MMAP_THRESHOLD`` 32 MiB, its ceiling; ``M_TRIM_THRESHOLD``
twice that): a state glibc reaches by itself, which gives the top of the heap back to the
system beyond 64 MiB of free memory instead of 1 GiB. (glibc cannot report its thresholds, and
once one is set it stops adapting them, so the untouched state cannot be restored; its initial
128 KiB thresholds, fixed, would make every later block above 128 KiB a fresh ``mmap``: LeNet-5's
``predict`` after a ``fit`` measured 1.4-1.8x slower.) Importing gpucnn, loading this set,
``predict`` and ``evaluate`` leave the allocator alone.

``GPUCNN_MALLOPT=0`` in the environment leaves the allocator alone, and so does an environment
that sets glibc's thresholds itself (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``,
``GLIBC_TUNABLES``). ``tune()`` raises the thresholds for the rest of the process (opt-in).
Only glibc (Linux) is touched; elsewhere nothing happens.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from contextlib import contextmanager

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 1 << 30
AFTER_MMAP_THRESHOLD = 32 << 20          # glibc's DEFAULT_MMAP_THRESHOLD_MAX (64-bit)
AFTER_TRIM_THRESHOLD = 2 * AFTER_MMAP_THRESHOLD     # what its adaptive rule sets beside it

_note = None            # set by tune(); otherwise note() describes what tuned() does
_lock = threading.Lock()
_depth = 0              # training runs inside tuned() now
_raised = False         # tuned() raised the thresholds and puts them back when the last run ends
_forever = False        # tune() raised them for the rest of the process
_libc = None


def _glibc():
    """``(version, mallopt, malloc_trim)`` of glibc, or None when the C library is another."""
    global _libc
    if _libc is None:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt, trim, get_version = libc.mallopt, libc.malloc_trim, libc.gnu_get_libc_version
        except (OSError, AttributeError):
            _libc = False
        else:
            get_version.restype = ctypes.c_char_p
            mallopt.argtypes = [ctypes.c_int, ctypes.c_int]      # both return ctypes' default int
            trim.argtypes = [ctypes.c_size_t]
            _libc = (get_version().decode(), mallopt, trim)
    return _libc or None


def _left_alone():
    """Why the allocator is not to be touched, or None."""
    if os.environ.get("GPUCNN_MALLOPT", "").strip() == "0":
        return "left alone (GPUCNN_MALLOPT=0)"
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if (os.environ.get("MALLOC_MMAP_THRESHOLD_") or os.environ.get("MALLOC_TRIM_THRESHOLD_")
            or "malloc.mmap_threshold" in tunables or "malloc.trim_threshold" in tunables):
        return "left alone (the environment sets glibc's malloc thresholds)"
    if _glibc() is None:
        return "not glibc: left alone"
    return None


def _set(mmap_threshold: int, trim_threshold: int) -> bool:
    _, mallopt, _ = _glibc()
    ok = mallopt(M_MMAP_THRESHOLD, mmap_threshold) == 1
    return mallopt(M_TRIM_THRESHOLD, trim_threshold) == 1 and ok


def _thresholds() -> str:
    return (f"M_MMAP_THRESHOLD={MMAP_THRESHOLD >> 20} MiB, "
            f"M_TRIM_THRESHOLD={TRIM_THRESHOLD >> 20} MiB")


@contextmanager
def tuned():
    """The raised thresholds while the block runs (see the module docstring); a ``malloc_trim``
    and glibc's adaptive ceiling after the last block that runs at once ends."""
    global _depth, _raised
    with _lock:
        if _depth == 0 and not _forever and _left_alone() is None:
            _raised = _set(MMAP_THRESHOLD, TRIM_THRESHOLD)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _raised:
                _raised = False
                if not _forever:
                    _set(AFTER_MMAP_THRESHOLD, AFTER_TRIM_THRESHOLD)
                    _glibc()[2](0)


def tune() -> str:
    """Raise glibc's mmap and trim thresholds for the rest of the process (opt-in; ``fit``
    raises them only while it trains); returns what was done, in words."""
    global _note, _forever
    _note = _left_alone()
    if _note is not None:
        return _note
    with _lock:
        _forever = _set(MMAP_THRESHOLD, TRIM_THRESHOLD)
    _note = (f"glibc {_glibc()[0]} mallopt for the whole process: {_thresholds()} (freed blocks "
             "reused across steps)") if _forever else "mallopt refused: left alone"
    return _note


def note() -> str:
    """What is done to the allocator, in words (the benchmark prints it)."""
    why = _note or _left_alone()
    if why is not None:
        return why
    return (f"glibc {_glibc()[0]} mallopt while fit trains: {_thresholds()} (freed blocks reused "
            "across steps), then malloc_trim and glibc's adaptive ceiling (32 / 64 MiB); "
            "GPUCNN_MALLOPT=0 turns this off")
