"""A Keras-like progress bar for ``fit``, ``evaluate`` and ``predict``.

On a terminal (or in Jupyter) the bar is redrawn in place with ``\\r`` at most every ``interval``
seconds; elsewhere (a log file, CI) one line per epoch is written when the epoch ends. The caller
asks ``due(step)`` before reading any value from the device, so values are read only when they will
be shown.

    Epoch 1/10
    1875/1875 [==============================] - 9s 5ms/step - loss: 0.3712 - accuracy: 0.8931
"""
from __future__ import annotations

import sys
import time


def _dynamic(stream) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        if isatty is not None and isatty():
            return True
    except ValueError:  # a closed stream
        return False
    return "ipykernel" in sys.modules


def format_value(v: float) -> str:
    return f"{v:.4f}" if abs(v) > 1e-3 or v == 0 else f"{v:.4e}"


def format_seconds(s: float) -> str:
    s = int(round(s))
    if s >= 3600:
        return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
    if s >= 60:
        return f"{s // 60}:{s % 60:02d}"
    return f"{s}s"


def format_per_unit(seconds: float, unit: str) -> str:
    if seconds >= 1:
        return f"{seconds:.0f}s/{unit}"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.0f}ms/{unit}"
    return f"{seconds * 1e6:.0f}us/{unit}"


class Progbar:
    """``Progbar(target, verbose=1)``: ``verbose`` 0 silent, 1 a bar, 2 one line per epoch."""

    def __init__(self, target: int, verbose: int = 1, width: int = 30, interval: float = 0.05,
                 unit_name: str = "step", stream=None):
        self.target = int(target)
        self.verbose = int(verbose)
        self.width = width
        self.interval = interval
        self.unit_name = unit_name
        self._stream = stream
        self.dynamic = self.verbose == 1 and _dynamic(self.stream)
        self._start = time.monotonic()
        self._last_draw = -float("inf")
        self._last_len = 0

    @property
    def stream(self):
        return self._stream if self._stream is not None else sys.stdout

    def due(self, current: int) -> bool:
        """Whether ``update(current, ...)`` would draw now (so values are worth reading)."""
        return self.dynamic and (current >= self.target
                                 or time.monotonic() - self._last_draw >= self.interval)

    def _bar(self, current: int) -> str:
        digits = len(str(self.target))
        head = f"{current:{digits}d}/{self.target}"
        if self.verbose == 2:
            return head
        filled = int(self.width * current / max(self.target, 1))
        bar = "=" * filled
        if current < self.target:
            bar = bar[:-1] + ">" if filled else ">"
        return f"{head} [{bar:.<{self.width}}]"

    @staticmethod
    def _values(values) -> str:
        return "".join(f" - {k}: {format_value(v)}" for k, v in (values or {}).items())

    def update(self, current: int, values=None) -> None:
        """Redraw the bar in place (terminals only) with ``values`` (a dict of floats)."""
        if not self.dynamic:
            return
        now = time.monotonic()
        self._last_draw = now
        elapsed = now - self._start
        eta = elapsed / max(current, 1) * (self.target - current)
        line = f"{self._bar(current)} - ETA: {format_seconds(eta)}{self._values(values)}"
        pad = " " * max(self._last_len - len(line), 0)
        self._last_len = len(line)
        self.stream.write("\r" + line + pad)
        self.stream.flush()

    def finish(self, values=None, current=None) -> None:
        """The final line of the bar (every mode but 0), ended with a newline."""
        if self.verbose == 0:
            return
        current = self.target if current is None else current
        elapsed = time.monotonic() - self._start
        per = format_per_unit(elapsed / max(current, 1), self.unit_name)
        if self.verbose == 2:
            line = f"{self._bar(current)} - {format_seconds(elapsed)}{self._values(values)} - {per}"
        else:
            line = f"{self._bar(current)} - {format_seconds(elapsed)} {per}{self._values(values)}"
        pad = " " * max(self._last_len - len(line), 0)
        self.stream.write(("\r" if self.dynamic else "") + line + pad + "\n")
        self.stream.flush()

    def abort(self) -> None:
        """End a dynamic line (before an error message is shown)."""
        if self.dynamic and self._last_len:
            self.stream.write("\n")
            self.stream.flush()
            self._last_len = 0
