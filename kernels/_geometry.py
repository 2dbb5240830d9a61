"""Output sizes and padding of windows (conv, pool), shared by every kernel set and by functional.

All padding follows TensorFlow/Keras:
- ``valid``: no padding, ``out = (in - k) // s + 1`` (an error if the window does not fit).
- ``same``: ``out = ceil(in / s)``, total padding ``max((out - 1) * s + k - in, 0)``,
  the odd pixel going to the bottom/right.

A padding of one spatial axis is a pair ``(before, after)``; of an image a 4-tuple
``(top, bottom, left, right)``. Below the functional layer the padding is explicit numbers:
``out = (in + before + after - k) // s + 1`` (``padded_window_2d``, an error if no window fits).
"""
from __future__ import annotations

PADDINGS = ("valid", "same")


def pair(v, name: str, op: str) -> tuple[int, int]:
    """An int or a pair of ints, as Keras takes ``kernel_size``, ``strides`` and ``pool_size``."""
    def is_int(e):
        return isinstance(e, int) and not isinstance(e, bool)

    try:
        a, b = (v, v) if is_int(v) else v
    except (TypeError, ValueError):
        a = b = None
    if not (is_int(a) and is_int(b)):
        raise TypeError(f"{op}: {name} must be an int or a pair of ints, got {v!r}")
    if a < 1 or b < 1:
        raise ValueError(f"{op}: {name} must be >= 1, got {v!r}")
    return int(a), int(b)


def check_padding(padding, op: str) -> str:
    p = padding.lower() if isinstance(padding, str) else padding
    if p not in PADDINGS:
        raise ValueError(f"{op}: padding must be 'valid' or 'same', got {padding!r}")
    return p


def window_1d(size: int, k: int, s: int, padding: str, op: str = "window", axis: str = "H"):
    """``(out, pad_before, pad_after)`` of one spatial axis."""
    if padding == "same":
        out = -(-size // s)
        total = max((out - 1) * s + k - size, 0)
        return out, total // 2, total - total // 2
    if k > size:
        raise ValueError(
            f"{op}: window {k} is larger than the input {axis}={size} with padding='valid' "
            f"(expected {axis} >= {k}; use padding='same' or a smaller window)")
    return (size - k) // s + 1, 0, 0


def window_2d(h: int, w: int, kh: int, kw: int, sh: int, sw: int, padding: str, op: str = "window"):
    """``(ho, wo, (pt, pb, pl, pr))`` of a 2-D window over an ``h x w`` image."""
    ho, pt, pb = window_1d(h, kh, sh, padding, op, "H")
    wo, pl, pr = window_1d(w, kw, sw, padding, op, "W")
    return ho, wo, (pt, pb, pl, pr)


def stride_pad(op: str, stride, pad) -> tuple[int, int, tuple]:
    """``(sh, sw, (top, bottom, left, right))`` from a kernel set's ``stride`` and explicit
    ``pad``; a TypeError for anything but two and four integers, a ValueError for a stride below
    1 or a negative pad."""
    try:
        sh, sw = (int(v) for v in stride)
        pt, pb, pl, pr = (int(v) for v in pad)
    except (TypeError, ValueError):
        raise TypeError(f"{op}: stride must be (sh, sw) and pad (top, bottom, left, right), "
                        f"got stride={stride!r}, pad={pad!r}") from None
    if sh < 1 or sw < 1 or min(pt, pb, pl, pr) < 0:
        raise ValueError(f"{op}: expected stride >= 1 and pad >= 0, got stride={stride!r}, "
                         f"pad={pad!r}")
    return sh, sw, (pt, pb, pl, pr)


def padded_window_2d(op: str, h: int, w: int, kh: int, kw: int, sh: int, sw: int, pad):
    """``(ho, wo)`` of a ``kh x kw`` window at strides ``(sh, sw)`` over an ``h x w`` image
    padded by the explicit ``pad = (top, bottom, left, right)`` (as the kernel sets take it); a
    ValueError when the window fits the padded image nowhere."""
    pt, pb, pl, pr = pad
    ho = (h + pt + pb - kh) // sh + 1
    wo = (w + pl + pr - kw) // sw + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"{op}: a {kh}x{kw} window does not fit an {h}x{w} input with padding "
                         f"{(pt, pb, pl, pr)} (expected H + pads >= KH and W + pads >= KW)")
    return ho, wo


def transpose_out_1d(size: int, k: int, s: int, padding: str) -> int:
    """Keras ``Conv2DTranspose`` output size along one axis."""
    if padding == "same":
        return size * s
    return (size - 1) * s + max(k, s)
