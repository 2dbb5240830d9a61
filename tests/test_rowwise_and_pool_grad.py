"""The cuda set's max-pool backward (a gather over the windows covering each cell) and its
row-wise kernels (softmax, the row losses), in Numba's CUDA simulator (or on a GPU with
GPUCNN_TEST_REAL_GPU=1) against the NumPy set and against the plain loops of _reference.

Max-pool backward: overlapping (AlexNet's 3x3 stride 2) and padded windows, ties (the gradient
goes to the first maximum in row-major window order, the forward's and Keras's rule), the
scalar and the 4-channel variant (float64 and the required geometry: test_kernels_cuda.py).
Row kernels: the row-group kernels of short rows (several rows a block, masked tails) and the
block-per-row ones past ``SHORT_ROW``, for softmax, log-softmax and every row loss. Every
output is poisoned with NaN before a kernel writes it.
"""

import numpy as np
import pytest

import _reference
from gpucnn.kernels import load_set
from gpucnn.kernels._geometry import window_2d
from gpucnn.kernels.cuda_set import loss as cuda_loss, softmax

C = load_set("cuda")
N = load_set("numpy")
FWD, GRAD = 1e-5, 1e-4      # float32 relative error against the NumPy set: outputs, gradients

pytestmark = pytest.mark.usefixtures("poisoned_small_launches")


def host(a):
    return C.to_host(a)


# ------------------------------------------------------------------------ max-pool backward

# (pool, stride, padding): AlexNet's overlapping 3x3/2, LeNet's tiling 2x2/2, padded ones with
# even and uneven windows, a stride wider than the window
POOLS = [((3, 3), (2, 2), "valid"), ((3, 3), (2, 2), "same"), ((2, 2), (2, 2), "valid"),
         ((2, 2), (2, 2), "same"), ((3, 3), (1, 1), "same"), ((2, 3), (1, 2), "same"),
         ((4, 4), (3, 3), "same"), ((1, 2), (3, 1), "valid")]


def _geometry(shape, pool, stride, padding):
    _, _, pad = window_2d(shape[1], shape[2], *pool, *stride, padding)
    return pool, stride, pad


def _tied(rng, shape, dtype):
    """Small integers (many equal maxima in a window), one planted maximum per image on a cell
    that overlapping windows share."""
    x = rng.integers(-2, 3, size=shape).astype(dtype)
    x[:, min(2, shape[1] - 1), min(2, shape[2] - 1), :] = 9
    return x


@pytest.mark.parametrize("c", [3, 4, 8])
@pytest.mark.parametrize("pool,stride,padding", POOLS,
                         ids=[f"p{p[0]}{p[1]}-s{s[0]}{s[1]}-{m}" for p, s, m in POOLS])
def test_max_pool_backward_gathers_what_a_plain_loop_scatters(pool, stride, padding, c, rng):
    """Ties included: the scalar (C=3) and 4-channel (C % 4 == 0) variants equal the NumPy set
    bit for bit and a plain loop within float32 rounding."""
    shape = (2, 9, 7, c)
    geo = _geometry(shape, pool, stride, padding)
    for x in (_tied(rng, shape, np.float32), rng.standard_normal(shape).astype(np.float32)):
        y, idx = _reference.ref_max_pool(x, *geo)
        dy = rng.standard_normal(y.shape).astype(np.float32)
        y_c, idx_c = C.max_pool_forward(C.asarray(x), *geo)
        np.testing.assert_array_equal(host(idx_c), idx)
        np.testing.assert_array_equal(host(y_c), y)
        got = host(C.max_pool_backward(C.asarray(dy), idx_c, shape, *geo))
        want = N.max_pool_backward(dy, idx.astype(np.int32), shape, *geo)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_allclose(got, _reference.ref_max_pool_backward(dy, idx, shape),
                                   rtol=1e-6, atol=1e-6)


def test_max_pool_backward_overlapping_winner_collects_every_window(rng):
    """AlexNet's 3x3 stride 2: the cell (2, 2) is the maximum of the four windows that share it
    and gets the sum of their four dy; its neighbours get nothing from them."""
    shape = (1, 5, 5, 4)
    x = rng.standard_normal(shape).astype(np.float32)
    x[0, 2, 2, :] = 10
    dy = rng.standard_normal((1, 2, 2, 4)).astype(np.float32)
    geo = ((3, 3), (2, 2), (0, 0, 0, 0))
    _, idx = C.max_pool_forward(C.asarray(x), *geo)
    dx = host(C.max_pool_backward(C.asarray(dy), idx, shape, *geo))
    np.testing.assert_allclose(dx[0, 2, 2], dy[0].sum(axis=(0, 1)), rtol=1e-6)
    assert np.count_nonzero(dx) == 4


# ------------------------------------------------------------------------ row-wise kernels

COLS = [1, 10, 31, 32, 33, 257]      # up to a warp, either side of it, past SHORT_ROW
BATCHES = [1, 7, 128]                # one row, a part-filled last block, many blocks
ROW_LOSSES = ["cce", "cce_logits", "sparse_cce", "sparse_cce_logits"]


def rel_err(got, want):
    return _reference.rel_err(host(got), want)


def _row_inputs(rng, loss, rows, k):
    """``(t, p)`` for a row loss: logits of a few units, positive probabilities (rows summing
    to 1 for the sparse loss), soft targets or integer labels."""
    if loss.endswith("logits"):
        p = 3 * rng.standard_normal((rows, k))
    else:
        p = rng.random((rows, k)) + 0.01
        p /= p.sum(axis=1, keepdims=True) if loss == "sparse_cce" else 1
    t = rng.integers(0, k, rows) if loss.startswith("sparse") else rng.random((rows, k))
    return (t if t.dtype.kind == "i" else t.astype(np.float32)), p.astype(np.float32)


def _spec_names(plans):
    return {getattr(v[0] if isinstance(v, tuple) else v, "spec").name
            for v in plans.table.values()}


@pytest.mark.parametrize("rows", BATCHES)
@pytest.mark.parametrize("k", COLS)
def test_softmax_forward_rows_against_numpy(rows, k, rng):
    """Rows of K <= SHORT_ROW take the row-group kernel, longer ones one block per row."""
    x = (5 * rng.standard_normal((rows, k))).astype(np.float32)
    x[0, 0] = 1e4 if k > 1 else x[0, 0]            # a large logit: no overflow
    for fn in ("softmax_forward", "log_softmax_forward"):
        got = getattr(C, fn)(C.asarray(x))
        assert rel_err(got, getattr(N, fn)(x)) < FWD, fn
        named = _spec_names(softmax._PLANS[fn])
        assert any((",g" in n) == (k <= softmax.SHORT_ROW) for n in named), named


@pytest.mark.parametrize("rows", BATCHES)
@pytest.mark.parametrize("k", COLS)
@pytest.mark.parametrize("loss", ROW_LOSSES)
def test_row_loss_against_numpy(loss, rows, k, rng):
    """The value, the per-row stats and the gradient they give."""
    t, p = _row_inputs(rng, loss, rows, k)
    value, stats = C.loss_forward(loss, C.asarray(t), C.asarray(p))
    want_v, want_s = N.loss_forward(loss, t, p)
    assert rel_err(value, want_v) < FWD and rel_err(stats, want_s) < FWD
    g = np.asarray(0.7, np.float32)
    dp = C.loss_backward(loss, C.asarray(g), C.asarray(t), C.asarray(p), stats)
    assert rel_err(dp, N.loss_backward(loss, g, t, p, want_s)) < GRAD
    named = [n for n in _spec_names(cuda_loss._FWD) if n.startswith("loss_rows_fwd")]
    assert any((",g" in n) == (k <= softmax.SHORT_ROW) for n in named), named


@pytest.mark.parametrize("rows,k", [(7, 10), (9, 40), (1, 256)])
def test_row_kernels_at_their_hardware_block_sizes(rows, k, rng, monkeypatch):
    """The row-group kernels at the blocks a GPU runs (32 threads a row: 4 rows per 128-thread
    softmax block, 8 per 256-thread loss block), with a part-filled block."""
    from gpucnn.kernels.cuda_set import _launch

    monkeypatch.setattr(softmax, "SOFTMAX_BLOCK", 128)
    monkeypatch.setattr(cuda_loss, "LOSS_BLOCK", 256)
    _launch.clear_plans()
    try:
        x = rng.standard_normal((rows, k)).astype(np.float32)
        assert rel_err(C.softmax_forward(C.asarray(x)), N.softmax_forward(x)) < FWD
        assert softmax.group_size(128) == 32
        for loss in ("cce_logits", "sparse_cce_logits"):
            t, p = _row_inputs(rng, loss, rows, k)
            value, stats = C.loss_forward(loss, C.asarray(t), C.asarray(p))
            want_v, want_s = N.loss_forward(loss, t, p)
            assert rel_err(value, want_v) < FWD and rel_err(stats, want_s) < FWD, loss
        assert f"softmax_fwd[float32,128,g32,k{softmax.SHORT_ROW}]" in _spec_names(
            softmax._PLANS["softmax_forward"])
    finally:
        _launch.clear_plans()


def test_row_group_loss_out_of_range_label_and_float64(rng):
    """A label outside [0, K) makes the mean NaN (its row's stats too) in the row-group kernel;
    float64 rows agree with the NumPy set to float64 rounding."""
    z = rng.standard_normal((5, 10))
    lab = np.array([1, 10, 3, -1, 9])
    value, stats = C.loss_forward("sparse_cce_logits", C.asarray(lab), C.asarray(z))
    assert np.isnan(host(value))
    _, want = N.loss_forward("sparse_cce_logits", np.array([1, 0, 3, 0, 9]), z)
    np.testing.assert_allclose(host(stats)[[0, 2, 4]], want[[0, 2, 4]], rtol=1e-12)
    for loss in ROW_LOSSES:
        t, p = _row_inputs(rng, loss, 6, 12)
        t = t if t.dtype.kind == "i" else t.astype(np.float64)
        value, stats = C.loss_forward(loss, C.asarray(t), C.asarray(p.astype(np.float64)))
        want_v, want_s = N.loss_forward(loss, t, p.astype(np.float64))
        assert host(value).dtype == np.float64
        assert rel_err(value, want_v) < 1e-12 and rel_err(stats, want_s) < 1e-12, loss
