"""The cuda set's instruments: what gpucnn's measurement tools (``gpucnn.bench``, the GPU check)
need of the set beyond the contract, behind one capability (``instruments``), so that no tool
imports the set's modules.

Kernels and their machine code
    ``kernels()``                      every kernel of the set (``_registry.all_kernels``)
    ``build(spec, cc)``                its cubin for compute capability ``cc``, not cached
                                       (``.cubin`` and ``.entry``)
    ``numba_cuda_version()``           the numba-cuda that built them
Launches
    ``strict()``                       from now on a kernel falling back to Numba's launcher
                                       is an error (``_launch.STRICT``)
    ``launches_through(wrap)``         inside ``with``: every launch is ``wrap(real, spec, grid,
                                       block, *args)``; ``through(wrap)`` does the same for good
    ``small_launches(simulator)``      inside ``with``: the simulator-sized tiles and blocks of
                                       ``simulate.SMALL`` (and, with ``simulator``, its shared
                                       arrays locked)
    ``fake_device()``                  the raw launch path on a fake CuPy of a compute 9.0 device
                                       whose launches do nothing, for host-time measurements
The conv kernels
    ``conv_kernels(name)``             inside ``with``: the float32 convs on ``name`` ("igemm2"
                                       or "baseline")
    ``CONV_MODES``, ``MODE_NAMES``     the three GEMMs (forward, input and weight gradient)
    ``choose_tile(mode, ncols)``, ``CANDIDATE_TILES``: the baseline tiles and the default choice
    ``tile(mode, tile)``               inside ``with``: the baseline kernels of ``mode`` on ``tile``
Rows
    ``SHORT_ROW``                      the longest row a 32-thread group of softmax and the row
                                       losses holds
"""
from __future__ import annotations

import contextlib
import sys
import types

import numpy as np

from . import _abi, _cache, _launch, conv, simulate
from ._registry import all_kernels as kernels
from .softmax import SHORT_ROW

CONV_MODES = (conv.FWD, conv.BWD_INPUT, conv.BWD_WEIGHT)
MODE_NAMES = conv.MODE_NAMES
CANDIDATE_TILES = conv.CANDIDATE_TILES
choose_tile = conv.choose_tile
numba_cuda_version = _cache.numba_cuda_version


def build(spec, cc):
    return _cache.build(spec, cc)


def strict() -> None:
    _launch.STRICT = True


def through(wrap):
    """Every launch of the set becomes ``wrap(real, spec, grid, block, *args)``; returns the
    undo. The launchers imported ``launch`` by name, so each module's binding is replaced."""
    real = _launch.launch

    def launch(spec, grid, block, *args):
        return wrap(real, spec, grid, block, *args)

    mods = [m for m in list(sys.modules.values())
            if getattr(m, "__name__", "").startswith(__package__ + ".")
            and getattr(m, "launch", None) is real]
    for m in mods:
        m.launch = launch

    def undo():
        for m in mods:
            m.launch = real
    return undo


@contextlib.contextmanager
def launches_through(wrap):
    undo = through(wrap)
    try:
        yield
    finally:
        undo()


def small_launches(simulator: bool):
    if simulator:
        simulate.lock_shared_arrays()
    return simulate.small_launches()


def fake_device() -> None:
    """Point the raw launch path at a fake CuPy (compute capability 9.0, stream 0, launches
    that do nothing) and a fake compile cache: what is left of a launch is gpucnn's host work."""
    module = types.SimpleNamespace(load=lambda data: None,
                                   get_function=lambda name: types.SimpleNamespace(ptr=1))
    stream = types.SimpleNamespace(ptr=0)
    _launch.cp = types.SimpleNamespace(
        ndarray=np.ndarray,
        cuda=types.SimpleNamespace(
            runtime=types.SimpleNamespace(getDevice=lambda: 0,
                                          getDeviceProperties=lambda d: {"major": 9, "minor": 0}),
            function=types.SimpleNamespace(Module=lambda: module),
            get_current_stream=lambda: stream,
            driver=types.SimpleNamespace(launchKernel=lambda *a: None)))
    _launch._state["path"] = "raw"
    _abi._pointer = lambda a: 4096
    _cache.get = lambda spec, cc: _cache.Built(b"\x7fELF", "entry", source="fake")


@contextlib.contextmanager
def conv_kernels(name: str):
    before = conv.set_conv_kernels(name)
    try:
        yield
    finally:
        conv.set_conv_kernels(before)


@contextlib.contextmanager
def tile(mode: int, t):
    conv.TILE_OVERRIDE = {mode: t}
    try:
        yield
    finally:
        conv.TILE_OVERRIDE = {}


__all__ = ["CANDIDATE_TILES", "CONV_MODES", "MODE_NAMES", "SHORT_ROW", "build", "choose_tile",
           "conv_kernels", "fake_device", "kernels", "launches_through", "numba_cuda_version",
           "small_launches", "strict", "through", "tile"]
