"""The GPUs of ``gpucnn.distributed``, as the kernel set offers them (its ``devices``
capability: device count and choice, NCCL, the stream NCCL runs on, events).

``gpu()`` asks the cuda set once; ``GPU`` holds the answer, and tests put another object with
the same methods in its place. Where no kernel set offers devices (or the cuda set cannot be
loaded) the answer sees no GPU, and the ranks sum through MPI on the host.
"""
from __future__ import annotations

GPU = None


class NoDevices:
    """No GPU here: ``device_count()`` is 0, so nothing else is asked."""

    def device_count(self) -> int:
        return 0

    def synchronize(self) -> None:
        pass


def gpu():
    """``GPU``, asked of the cuda set the first time."""
    global GPU
    if GPU is None:
        from gpucnn.kernels import has, load_set

        try:
            ks = load_set("cuda")
        except Exception:  # noqa: BLE001 - a set that cannot load offers no devices
            ks = None
        GPU = ks.devices() if ks is not None and has(ks, "devices") else NoDevices()
    return GPU
