"""Devices, streams, events and NCCL for the ranks of a distributed job (the cuda set's
``devices`` capability), through CuPy.

Everything of CuPy that ``gpucnn.distributed`` uses sits in one object, ``Devices``, so that the
bookkeeping around it (a device per local rank, the NCCL id made by rank 0 and broadcast by MPI,
the host-staged sum when NCCL is absent) can be tested on a machine without a GPU by putting
another object with the same methods in its place (``tests/_distributed_job.py`` does, with MPI
doing NCCL's sums; ``tests/test_fakes.py`` holds that object to this one).

NCCL comes from ``cupy.cuda.nccl``, which loads the library of the NCCL wheel built for CuPy's
CUDA major version: ``nvidia-nccl-cu12`` beside ``cupy-cuda12x`` (``pip install
gpucnn[distributed-cuda]``), ``nvidia-nccl-cu13`` beside ``cupy-cuda13x`` (``pip install
gpucnn[distributed-cuda13]``); nothing is loaded before the first use.
"""
from __future__ import annotations


def nccl_wheel() -> tuple[str, str]:
    """``(NCCL wheel, gpucnn extra)`` that match the installed CuPy's CUDA major version."""
    from importlib import metadata

    for major, extra in (("13", "distributed-cuda13"), ("12", "distributed-cuda")):
        try:
            metadata.version(f"cupy-cuda{major}x")
        except metadata.PackageNotFoundError:
            continue
        return f"nvidia-nccl-cu{major}", extra
    return "nvidia-nccl-cu12", "distributed-cuda"


def _cupy():
    import cupy

    return cupy


class Devices:
    """CuPy's devices, streams, events and NCCL (CuPy imported at the first use)."""

    def device_count(self) -> int:
        """GPUs this process sees (0 without CuPy or a driver); creates no CUDA context."""
        try:
            return int(_cupy().cuda.runtime.getDeviceCount())
        except Exception:  # noqa: BLE001 - any failure means: no GPU to use here
            return 0

    def use_device(self, index: int) -> None:
        """Make GPU ``index`` this process's current device."""
        _cupy().cuda.Device(index).use()

    def current_device(self) -> int:
        return int(_cupy().cuda.Device().id)

    def nccl(self):
        """``(module, None)`` when NCCL can run, else ``(None, the reason)``."""
        try:
            from cupy.cuda import nccl
        except Exception as e:  # noqa: BLE001 - the reason is reported
            return None, f"cupy.cuda.nccl cannot be imported ({type(e).__name__}: {e})"
        if not getattr(nccl, "available", True):
            wheel, extra = nccl_wheel()
            return None, (f"CuPy finds no NCCL library (pip install {wheel}, or pip install "
                          f"gpucnn[{extra}])")
        return nccl, None

    def pointer(self, a) -> int:
        """The device address of array ``a``."""
        return int(a.data.ptr)

    def stream(self) -> int:
        """The handle of the current stream (where gpucnn's kernels run)."""
        return int(_cupy().cuda.get_current_stream().ptr)

    def record_event(self):
        """An event recorded on the current stream."""
        cupy = _cupy()
        ev = cupy.cuda.Event(block=False, disable_timing=True)
        ev.record(cupy.cuda.get_current_stream())
        return ev

    def event_done(self, ev) -> bool:
        return bool(ev.done)

    def synchronize(self) -> None:
        """Wait for the current stream's work (for timings)."""
        _cupy().cuda.get_current_stream().synchronize()


_devices = Devices()


def devices() -> Devices:
    """The ``devices`` capability: this process's ``Devices``."""
    return _devices
