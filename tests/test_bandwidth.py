"""The memory-bound kernels' launch shapes and machine code (issue 22), checked on the CPU:
128-bit loads and stores in the sm_90 SASS of the elementwise kernels, no float64 and no spills
in their float32 variants, grids of at most one wave, and the vector path's alignment rules
(a misaligned array takes the scalar path; the emulated 128-bit access faults like hardware)."""
import numpy as np
import pytest

import _reference
from gpucnn.bench import bandwidth, membound
from gpucnn.kernels import cuda_set as C
from gpucnn.kernels.cuda_set import _arrays, _launch, activation, dropout, reduce, simulate, vector

VECTOR_KERNELS = ("act_fwd[float32]", "act_bwd[float32]", "act_fwd[float64]", "dropout[float32]")


@pytest.fixture(scope="module")
def sass():
    """The SASS summary of the vector kernels, built with Numba's real compiler for sm_90 in a
    process without the simulator."""
    return bandwidth._child("--sass", False, ";".join(VECTOR_KERNELS))


@pytest.mark.parametrize("name", VECTOR_KERNELS)
def test_elementwise_kernels_load_and_store_128_bits(sass, name):
    """128-bit loads and stores; the float32 variants fit their launch bounds, without spills
    or float64."""
    r = sass[name]
    assert r["mem"].get("STG.128", 0) >= 1, r["mem"]
    if not name.startswith("dropout"):          # the mask is written only
        assert r["mem"].get("LDG.128", 0) >= 1, r["mem"]
    if "float32" not in name:
        return
    per_sm = dropout.DROPOUT_PER_SM if name.startswith("dropout") else activation.EW_PER_SM
    assert r["registers"] <= 65536 // (per_sm * activation.EW_BLOCK), r
    assert r["frame"] == 0, f"{name} spills {r['frame']} bytes"
    if not name.startswith("dropout"):     # dropout's keep test is float64 by design (_rng.py)
        assert r["fp64"] == [], r["fp64"]


@pytest.mark.parametrize("offset", [0, 1, 2, 3])
@pytest.mark.parametrize("act", ["relu", "sigmoid"])
def test_any_alignment_gives_the_reference(offset, act, rng):
    """Views starting 4 * offset bytes into an aligned buffer: offset 0 takes the vector path,
    the others the scalar one; 4k+3 elements leave a scalar tail either way."""
    base = rng.standard_normal(64 + offset).astype(np.float32)
    x = base[offset:offset + 4 * 11 + 3]
    dy = rng.standard_normal(base.size).astype(np.float32)[offset:offset + x.size]
    assert (x.__array_interface__["data"][0] % 16 == 0) == (base.__array_interface__["data"][0]
                                                             % 16 == 0 and offset == 0)
    with simulate.small_launches():
        y = C.act_forward(x, act)
        dx = C.act_backward(dy, y, act)
    want = _reference.ref_act(x, act)
    np.testing.assert_allclose(y, want, rtol=2e-6, atol=1e-7)
    d = {"relu": (want > 0), "sigmoid": want * (1 - want)}[act]
    np.testing.assert_allclose(dx, dy * d, rtol=1e-5, atol=1e-7)


def test_emulated_vector_access_faults_when_misaligned():
    a = np.zeros(12, np.float32)
    assert a.__array_interface__["data"][0] % 16 == 0
    assert vector.load4(a, 4) == (0, 0, 0, 0)
    with pytest.raises(RuntimeError, match="misaligned"):
        vector.load4(a, 1)
    with pytest.raises(RuntimeError, match="misaligned"):
        vector.store4(a[1:], 0, 1, 2, 3, 4)


def test_stream_grid_is_at_most_one_wave():
    sms = _arrays.sm_count()
    assert vector.stream_grid(10**9, 256) == (min(sms * vector.FULL, _arrays.MAX_BLOCKS),)
    assert vector.stream_grid(10**9, 256, vector.HALF)[0] <= sms * vector.HALF
    assert vector.stream_grid(1000, 256) == (4,)
    assert vector.stream_grid(0, 256) == (0,)


def test_column_sum_splits_fill_one_wave():
    """AlexNet conv1's bias gradient at batch 128: (387200, 96) rows split into as many
    row blocks as one wave of the column-sum kernel holds beside its 3 column blocks."""
    s = reduce._splits(387200, 96, vector.FULL)
    assert 3 * s <= _arrays.sm_count() * vector.FULL < 3 * (s + 1)
    assert reduce._splits(10, 96, vector.FULL) == 1


def test_every_case_of_the_table_launches_within_one_wave():
    """The bytes table's cases (LeNet-5 and AlexNet at batch 8: AlexNet's big tensors need
    several waves of blocks), their launches recorded off the real launchers: each grid is at
    most one wave of its kernel's launch bounds, and no case requests less than its floor."""
    bounds = {s.name: s.launch_bounds for s in _launch.all_kernels()}
    recorded = {r["key"]: r["launches"] for r in bandwidth.record_launches(batch=8)}
    capped = 0
    for case in membound.cases(batch=8):
        launches = recorded[bandwidth._key(case)]
        assert launches, case.op
        moved = case.moved(launches) if callable(case.moved) else case.moved
        assert moved >= case.floor, case.op
        for name, grid, block in launches:
            per_sm = (bounds[name] or (0, None))[1]
            if per_sm and "softmax" not in name:
                assert np.prod(grid) <= _arrays.sm_count() * per_sm, (name, grid)
                capped += np.prod(grid) == _arrays.sm_count() * per_sm
    assert capped >= 10
