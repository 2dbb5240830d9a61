"""A seeded random hold-out split."""
from __future__ import annotations

import numpy as np


def split(x, y, fraction=0.2, seed=0):
    """Shuffle ``(x, y)`` with ``seed`` and hold out ``fraction`` of the samples.

    Returns ``((x_train, y_train), (x_held, y_held))``; the held-out part has
    ``round(fraction * N)`` samples, both parts at least one. Same seed, same split.

    >>> (xt, yt), (xv, yv) = split(np.zeros((10, 2)), np.arange(10), 0.2, seed=1)
    >>> xt.shape, xv.shape
    ((8, 2), (2, 2))
    """
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim == 0 or y.ndim == 0 or len(x) != len(y):
        raise ValueError(f"split: x and y need the same number of samples, got shapes "
                         f"{x.shape} and {y.shape}")
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"split: fraction must be between 0 and 1 (exclusive), got {fraction!r}")
    n_held = int(round(fraction * len(x)))
    if not 0 < n_held < len(x):
        raise ValueError(f"split: holding out {fraction} of {len(x)} samples leaves "
                         f"{n_held} held out and {len(x) - n_held} for training; both need >= 1")
    order = np.random.default_rng(seed).permutation(len(x))
    held, train = order[:n_held], order[n_held:]
    return (x[train], y[train]), (x[held], y[held])
