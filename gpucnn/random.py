"""Seeding: one host generator for initialisation and shuffling, one counter for dropout.

``manual_seed(n)`` resets both, so that weight initialisation, the order of batches and every
dropout mask repeat on a backend. Dropout masks come from a counter-based hash
(``gpucnn.kernels._rng``) computed where the data lives: each call takes the next counter.
"""
from __future__ import annotations

import numpy as np

_state = {"seed": None, "gen": np.random.default_rng(), "dropout_seed": None, "counter": 0}


def manual_seed(seed: int) -> None:
    """Make initialisation, shuffling and dropout reproducible from ``seed``."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"manual_seed: seed must be an int, got {type(seed).__name__}")
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"manual_seed: seed must be an int >= 0, got {seed}")
    _state["seed"] = seed
    _state["gen"] = np.random.default_rng(seed)
    _state["dropout_seed"] = seed & 0xFFFFFFFF
    _state["counter"] = 0


def generator() -> np.random.Generator:
    """The host generator used for weight initialisation and shuffling."""
    return _state["gen"]


def next_dropout_key() -> tuple[int, int]:
    """``(seed, counter)`` for the next dropout mask; the counter advances by one per call."""
    if _state["dropout_seed"] is None:
        _state["dropout_seed"] = int(_state["gen"].integers(0, 2**32))
    c = _state["counter"]
    _state["counter"] = (c + 1) & 0xFFFFFFFF
    return _state["dropout_seed"], c


def get_state() -> dict:
    """What decides the next batch orders and dropout masks, as JSON data (``Model.save`` keeps
    it, so that the loaded model's next ``fit`` goes on as the saving one would have)."""
    return {"generator": _state["gen"].bit_generator.state,
            "dropout_seed": _state["dropout_seed"], "counter": _state["counter"]}


def checked_state(state) -> dict:
    """``state`` (as ``get_state`` returns it) made ready for ``set_state``; a ValueError
    saying what is wrong otherwise."""
    try:
        gen = np.random.Generator(np.random.PCG64())
        gen.bit_generator.state = state["generator"]
        seed, counter = state["dropout_seed"], state["counter"]
        for name, v in (("dropout_seed", seed), ("counter", counter)):
            if not (isinstance(v, int) and 0 <= v < 2**32) and not (v is None and name != "counter"):
                raise ValueError(f"{name} must be an int in [0, 2**32), got {v!r}")
    except (TypeError, ValueError, KeyError) as e:
        raise ValueError(f"not a random state gpucnn writes: {type(e).__name__}: {e}") from None
    return {"gen": gen, "dropout_seed": seed, "counter": counter}


def set_state(state) -> None:
    """Put back what ``get_state`` returned (checked first: an error changes nothing)."""
    _state.update(checked_state(state))
