"""scikit-learn's handwritten digits (UCI optdigits test part): 1,797 images of 8 x 8 pixels.

They install with scikit-learn, so examples and tests run with no download.
"""
from __future__ import annotations

import numpy as np


def digits(size=32):
    """scikit-learn's 8 x 8 digits, upscaled to ``size`` x ``size``, channels-last.

    The 8 x 8 images (values 0-16) are divided by 16 and resized with bilinear interpolation on
    pixel centres (output pixel ``i`` samples the input at ``(i + 0.5) * 8 / size - 0.5``, clamped
    to the border pixels), the convention of OpenCV's ``INTER_LINEAR`` and TensorFlow's
    ``resize(..., "bilinear")``. Each output pixel is a convex combination of input pixels, so
    values stay in [0, 1]; ``size=8`` returns the original images.

    Args:
        size: output height and width in pixels (int >= 1); 32 is the guide's LeNet-5 input.

    Returns:
        ``(x, y)``: float32 images ``(1797, size, size, 1)`` in [0, 1], int64 digits ``(1797,)``.

    >>> x, y = digits()                          # doctest: +SKIP
    >>> x.shape, y[:5]                           # doctest: +SKIP
    ((1797, 32, 32, 1), array([0, 1, 2, 3, 4]))
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"digits: size must be an int >= 1, got {size!r}")
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError("digits() needs scikit-learn: pip install scikit-learn "
                          "(or pip install 'gpucnn[examples]')") from None
    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float64) / 16.0          # (N, 8, 8)
    a = bilinear_matrix(8, int(size))                                    # (size, 8)
    x = (a @ images @ a.T).astype(np.float32)                              # (N, size, size)
    np.clip(x, 0.0, 1.0, out=x)                                          # rounding only
    return x[..., None], np.asarray(bunch.target, dtype=np.int64)


def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` weights of 1-D bilinear resizing on pixel centres (rows sum to 1)."""
    a = np.zeros((n_out, n_in))
    scale = n_in / n_out
    for i in range(n_out):
        src = min(max((i + 0.5) * scale - 0.5, 0.0), n_in - 1.0)
        i0 = int(np.floor(src))
        i1 = min(i0 + 1, n_in - 1)
        t = src - i0
        a[i, i0] += 1.0 - t
        a[i, i1] += t
    return a
