"""The NumPy kernel set beyond the op registry's table (tests/test_ops.py runs every op against
its plain-loop reference): the guide's worked numbers, ties, NaN and infinities, numerical
stability, errors, the dropout hash's statistics, the threads (the hand-computed optimizer steps
are in tests/test_optim_kernels.py, with every other test of the update kernels).

Then the set's shape-chosen fast paths against the plain-loop references: the row-Toeplitz and
row-gather input gradients, convolutions that are dense layers (a kernel over the whole input),
the GEMM column pass of tiling average pools, separable max pools, kept im2col blocks, border
classes; the algorithm names the benchmark prints; the allocator setting; and np.dot (not
matmul) in the kernels, so that their threads overlap."""
import contextlib
import math
import warnings

import numpy as np
import pytest

from _reference import (ref_avg_pool, ref_avg_pool_backward, ref_conv2d,
                        ref_conv2d_backward_input, ref_conv2d_backward_weight, ref_max_pool,
                        ref_max_pool_backward, ref_pads)
from gpucnn.kernels import CONTRACT, load_set
from gpucnn.kernels._rng import uniform_np
from gpucnn.kernels.numpy_set import _alloc, _im2col, _parallel, _rowgather, _toeplitz
from gpucnn.kernels.numpy_set import pool as pool_module

K = load_set("numpy")
F32 = dict(rtol=2e-5, atol=2e-5)
F64 = dict(rtol=1e-10, atol=1e-10)


def _max_pool_matches(x, pool, stride, pad):
    """``K.max_pool_forward`` equal to the loops' ``(y, idx)``, which it returns."""
    y, idx = K.max_pool_forward(x, pool, stride, pad)
    want_y, want_idx = ref_max_pool(x, pool, stride, pad)
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(idx, want_idx)
    return y, idx


def _conv_matches(rng, x, w, b, stride, pad, act, input_grad=True):
    """The forward, the input gradient (unless not ``input_grad``) and the kernel gradient of a
    random dy against the loops in float64; returns y."""
    y = K.conv2d_forward(x, w, b, stride, pad, act)
    np.testing.assert_allclose(y, ref_conv2d(x, w, b, stride, pad, act), **F64)
    dy = rng.standard_normal(y.shape)
    if input_grad:
        np.testing.assert_allclose(K.conv2d_backward_input(dy, w, x.shape, stride, pad),
                                   ref_conv2d_backward_input(dy, w, x.shape, stride, pad), **F64)
    np.testing.assert_allclose(K.conv2d_backward_weight(x, dy, w.shape, stride, pad),
                               ref_conv2d_backward_weight(x, dy, w.shape, stride, pad), **F64)
    return y


# ---------------------------------------------------------------- contract and array module

def test_contract_names_and_array_module():
    assert [name for name in CONTRACT if not hasattr(K, name)] == []
    assert set(CONTRACT) <= set(K.__all__)
    assert K.xp is np
    a = np.arange(6.0)
    assert K.asarray(a) is a and K.to_host(a) is a
    assert isinstance(K.asarray([1.0, 2.0]), np.ndarray)


# ---------------------------------------------------------------- convolution

def test_guide_figure6_gives_9():
    x = np.array([[1, 2, 5], [0, 7, 3], [4, 4, 4]], np.float32).reshape(1, 3, 3, 1)
    w = np.array([[1, 0], [0, 1]], np.float32).reshape(2, 2, 1, 1)
    y = K.conv2d_forward(x, w, np.ones(1, np.float32), (1, 1), (0, 0, 0, 0), "linear")
    assert y.shape == (1, 2, 2, 1) and y.dtype == np.float32
    assert y[0, 0, 0, 0] == 9.0                          # (1*1 + 0*2 + 0*0 + 1*7) + 1
    np.testing.assert_array_equal(y[0, :, :, 0], [[9, 6], [5, 12]])


def test_conv2d_uncovered_input_cells_get_zero_gradient(rng):
    x = rng.standard_normal((2, 7, 8, 3))
    w = rng.standard_normal((2, 2, 3, 4))
    dy = rng.standard_normal((2, 2, 3, 4))      # 2x2 windows at stride 3: rows 2, 5, 6, cols 2, 5 unread
    dx = K.conv2d_backward_input(dy, w, x.shape, (3, 3), (0, 0, 0, 0))
    assert np.all(dx[:, [2, 5, 6]] == 0) and np.all(dx[:, :, [2, 5]] == 0)
    assert np.all(dx[:, [0, 1, 3, 4]][:, :, [0, 1, 3, 4, 6, 7]] != 0)


@pytest.mark.parametrize("stride,padding,k", [((2, 2), "same", (3, 3)), ((2, 2), "valid", (4, 4)),
                                              ((3, 2), "valid", (2, 3)), ((1, 1), "same", (2, 2))])
def test_transposed_conv_is_the_adjoint(rng, stride, padding, k):
    """<conv(x), z> == <x, backward_input(z)>: backward_input is the transposed convolution."""
    x = rng.standard_normal((2, 9, 8, 3))
    w = rng.standard_normal((*k, 3, 5))
    pad = ref_pads(9, 8, *k, *stride, padding)
    y = K.conv2d_forward(x, w, None, stride, pad, "linear")
    z = rng.standard_normal(y.shape)
    t = K.conv2d_backward_input(z, w, x.shape, stride, pad)
    assert math.isclose(float(np.sum(y * z)), float(np.sum(x * t)), rel_tol=1e-10)


def test_conv2d_float32_stays_float32_with_mixed_inputs(rng):
    x = rng.standard_normal((2, 6, 6, 2)).astype(np.float32)
    w, b = rng.standard_normal((3, 3, 2, 4)), rng.standard_normal(4)      # float64 params
    y = K.conv2d_forward(x, w, b, (1, 1), (1, 1, 1, 1), "sigmoid")
    assert y.dtype == np.float32
    assert K.conv2d_backward_weight(x, y, w.shape, (1, 1), (1, 1, 1, 1)).dtype == np.float32
    assert K.conv2d_backward_input(y, w, x.shape, (1, 1), (1, 1, 1, 1)).dtype == np.float32


# ---------------------------------------------------------------- pooling

def test_max_pool_ties_keep_the_first_cell_and_overlaps_accumulate(rng):
    x = rng.integers(0, 3, size=(2, 9, 9, 2)).astype(np.float32)   # many ties
    y, idx = _max_pool_matches(x, (3, 3), (2, 2), (0, 0, 0, 0))
    dx = K.max_pool_backward(np.ones_like(y), idx, x.shape, (3, 3), (2, 2), (0, 0, 0, 0))
    assert dx.max() > 1                                  # a shared winner collected several
    np.testing.assert_array_equal(dx, ref_max_pool_backward(np.ones(y.shape), idx, x.shape))


def test_max_pool_nan_window_gives_nan_and_its_first_real_cell(rng):
    x = rng.standard_normal((2, 7, 7, 3)).astype(np.float32)
    x[0, 2, 3, 1] = np.nan                       # in the windows (0..1, 1) of a 3x3 / 2 pool
    y, idx = K.max_pool_forward(x, (3, 3), (2, 2), (0, 0, 0, 0))
    want_y, want_idx = ref_max_pool(np.nan_to_num(x, nan=-np.inf), (3, 3), (2, 2), (0, 0, 0, 0))
    nan = np.isnan(y)
    assert nan[0, :2, 1, 1].all() and nan.sum() == 2
    np.testing.assert_array_equal(y[~nan], want_y[~nan])
    np.testing.assert_array_equal(idx[~nan], want_idx[~nan])
    assert idx[0, 0, 1, 1] == 0 * 7 + 2 and idx[0, 1, 1, 1] == 2 * 7 + 2   # first real cells
    # with same padding the bottom-right window's last cell is padding; its first real is (5, 5)
    x[1, 6, 6, 2] = np.nan
    y, idx = K.max_pool_forward(x, (3, 3), (2, 2), (1, 1, 1, 1))      # 4 x 4 windows
    assert np.isnan(y[1, 3, 3, 2]) and idx[1, 3, 3, 2] == 5 * 7 + 5
    dx = K.max_pool_backward(np.ones_like(y), idx, x.shape, (3, 3), (2, 2), (1, 1, 1, 1))
    # every index in range
    assert dx.sum() == y.size


def test_max_pool_padding_never_wins(rng):
    x = -np.abs(rng.standard_normal((1, 5, 5, 2))) - 1.0   # all negative, padding is -inf
    x[0, 0, :, 0] = -np.inf                                  # a whole window of real -inf cells
    x[0, :, 0, 0] = -np.inf
    y, idx = _max_pool_matches(x, (3, 3), (2, 2), (1, 1, 1, 1))
    assert idx.min() >= 0 and idx.max() < 25
    assert np.isfinite(K.avg_pool_forward(x[..., 1:], (3, 3), (2, 2), (1, 1, 1, 1))).all()
    # windows of -inf cells and padding (bottom/right) pick a real cell
    x = np.full((1, 3, 3, 2), -np.inf, np.float32)
    x[0, 2, 2, 1] = 1.0
    _max_pool_matches(x, (2, 2), (2, 2), ref_pads(3, 3, 2, 2, 2, 2, "same"))


def test_guide_pooling_2x2_examples():
    x = np.array([[1, 3, 2, 1], [4, 6, 5, 0], [3, 2, 1, 2], [1, 2, 3, 4]], np.float32)
    y, idx = K.max_pool_forward(x.reshape(1, 4, 4, 1), (2, 2), (2, 2), (0, 0, 0, 0))
    np.testing.assert_array_equal(y[0, :, :, 0], [[6, 5], [3, 4]])
    np.testing.assert_array_equal(idx[0, :, :, 0], [[5, 6], [8, 15]])
    a = K.avg_pool_forward(x.reshape(1, 4, 4, 1), (2, 2), (2, 2), (0, 0, 0, 0))
    np.testing.assert_allclose(a[0, :, :, 0], [[3.5, 2.0], [2.0, 2.5]])


# ---------------------------------------------------------------- activations

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_over_chunks_and_views_is_exactly_max_with_zero(rng, dtype):
    # ReLU runs in chunks against a zeros array (NumPy's SIMD path): across chunk boundaries,
    # on views and on the special values it must give max(x, 0) bit for bit
    from gpucnn.kernels.numpy_set import activation

    n = 2 * activation._ZERO_CHUNK + 17
    x = rng.standard_normal(n).astype(dtype)
    x[:6] = [np.nan, -0.0, 0.0, np.inf, -np.inf, -np.nan]
    want = np.array([max(float(v), 0.0) if v == v else v for v in x], dtype=dtype)
    for got in (K.act_forward(x, "relu"), activation.act_inplace(x.copy(), "relu"),
                K.act_forward(x.reshape(-1, 1)[::3], "relu").reshape(-1)):
        ref = want if got.size == n else want[::3]
        np.testing.assert_array_equal(got, ref)
        assert not np.signbit(got[np.isfinite(got)]).any()     # +0, never -0
    y = x[:1000].copy()
    assert activation.act_inplace(y, "relu") is y


def test_sigmoid_is_stable_in_both_tails():
    x = np.array([-1e4, -100, -50, -20, -1, 0, 1, 20, 50, 100, 1e4], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = K.act_forward(x, "sigmoid")
    assert y.dtype == np.float32 and np.all(np.isfinite(y))
    assert y[0] == 0 and y[-1] == 1 and y[5] == 0.5
    for v, got in zip(x[2:4], y[2:4]):            # tail (normal floats): relative accuracy kept
        assert math.isclose(got, 1 / (1 + math.exp(-float(v))), rel_tol=1e-6)


# ---------------------------------------------------------------- softmax family

def _direct_softmax(x):
    e = np.exp(x)
    return e / e.sum(axis=1, keepdims=True)


def test_softmax_and_log_softmax_forward(rng):
    x = rng.standard_normal((5, 7)) * 4
    np.testing.assert_allclose(K.softmax_forward(x), _direct_softmax(x), rtol=1e-13)
    np.testing.assert_allclose(K.log_softmax_forward(x), np.log(_direct_softmax(x)), rtol=1e-12)
    big = np.array([[1e4, 1e4 - 1, -1e4], [-1e4, -1e4, -1e4]], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s, ls = K.softmax_forward(big), K.log_softmax_forward(big)
        loss, stats = K.loss_forward("sparse_cce_logits", np.array([1, 2]), big)
    e = math.exp(-1)
    np.testing.assert_allclose(s, [[1 / (1 + e), e / (1 + e), 0], [1 / 3] * 3], rtol=1e-6)
    np.testing.assert_allclose(ls[0, :2], [-math.log1p(e), -1 - math.log1p(e)], rtol=1e-6)
    assert ls[0, 2] < -1e4 and np.isfinite(ls).all()
    assert loss == pytest.approx((1 + math.log1p(e) + math.log(3)) / 2, rel=1e-6)
    assert s.dtype == ls.dtype == loss.dtype == stats.dtype == np.float32


# ---------------------------------------------------------------- dropout

@pytest.mark.parametrize("rate", [0.1, 0.5, 0.8])
def test_dropout_mask_follows_the_shared_hash(rate):
    shape = (4, 25, 33)
    mask = K.dropout_mask(shape, rate, 1234, 7, np.float32)
    assert mask.shape == shape and mask.dtype == np.float32
    u = uniform_np(1234, 7, math.prod(shape)).reshape(shape)
    np.testing.assert_array_equal(mask, np.where(u >= rate, np.float32(1 / (1 - rate)), 0))
    big = K.dropout_mask((200_000,), rate, 99, 0, np.float64)
    kept = np.count_nonzero(big) / big.size
    assert abs(kept - (1 - rate)) < 4 * math.sqrt(rate * (1 - rate) / big.size)
    assert not np.array_equal(K.dropout_mask(shape, rate, 1234, 8, np.float32), mask)
    np.testing.assert_array_equal(K.dropout_mask(shape, rate, 1234, 7, np.float32), mask)


def test_dropout_mask_rate_zero_and_errors():
    np.testing.assert_array_equal(K.dropout_mask((3, 4), 0.0, 1, 2, np.float32), np.ones((3, 4)))
    with pytest.raises(ValueError, match="dropout_mask.*rate"):
        K.dropout_mask((3,), 1.0, 1, 2, np.float32)


# ---------------------------------------------------------------- errors

X, Z = np.ones((1, 5, 5, 3)), (0, 0, 0, 0)


@pytest.mark.parametrize("error,match,call", [
    (ValueError, "conv2d_forward.*input channels",
     lambda: K.conv2d_forward(X, np.ones((3, 3, 2, 4)), None, (1, 1), Z, "relu")),
    (ValueError, "conv2d_forward",
     lambda: K.conv2d_forward(X, np.ones((6, 6, 3, 4)), None, (1, 1), Z, "relu")),
    (ValueError, "conv2d_forward.*b of shape",
     lambda: K.conv2d_forward(X, np.ones((3, 3, 3, 4)), np.ones(3), (1, 1), Z, "relu")),
    (ValueError, "conv2d_backward_weight.*dy shape",
     lambda: K.conv2d_backward_weight(X, np.ones((1, 2, 2, 4)), (3, 3, 3, 4), (1, 1), Z)),
    (ValueError, "conv2d_forward.*'gelu'",
     lambda: K.conv2d_forward(X, np.ones((3, 3, 3, 4)), None, (1, 1), Z, "gelu")),
    (ValueError, "conv2d_backward_input",
     lambda: K.conv2d_backward_input(np.ones((1, 3, 3, 5)), np.ones((3, 3, 3, 4)), X.shape,
                                     (1, 1), Z)),
    (ValueError, "max_pool_forward.*padding",
     lambda: K.max_pool_forward(np.ones((1, 4, 4, 1)), (2, 2), (1, 1), (2, 0, 0, 0))),
    (ValueError, "avg_pool_backward.*dy shape",
     lambda: K.avg_pool_backward(np.ones((1, 3, 3, 1)), (1, 4, 4, 1), (2, 2), (2, 2), Z)),
    (ValueError, "act_forward.*'swish'", lambda: K.act_forward(np.ones(3), "swish")),
    (ValueError, "softmax_forward.*2 dimensions", lambda: K.softmax_forward(np.ones(4))),
    (ValueError, "set_num_threads", lambda: K.set_num_threads(0)),
    (TypeError, "loss_forward.*labels",
     lambda: K.loss_forward("sparse_cce_logits", np.array([0.0, 1.0]), np.ones((2, 3)))),
])
def test_errors_name_the_function(error, match, call):
    with pytest.raises(error, match=match):
        call()


# ---------------------------------------------------------------- threads

def test_run_parts_covers_the_batch_in_order():
    with K.num_threads(3):
        assert K.get_num_threads() == 3
        parts = _parallel.run_parts(lambda lo, hi: (lo, hi), 10, flops=1e12)
        assert parts == [(0, 3), (3, 6), (6, 10)]
        assert _parallel.run_parts(lambda lo, hi: (lo, hi), 10, flops=1.0) == [(0, 10)]
    with K.num_threads(1):
        assert _parallel.run_parts(lambda lo, hi: (lo, hi), 10, flops=1e12) == [(0, 10)]


def test_blocks_grow_only_on_threads_of_a_split():
    """Kernel parts on two or more threads use ``threaded_block_scale`` times bigger blocks
    (fewer GIL hand-offs); a lone thread, a data_parallel part's own kernels and code outside any
    kernel use the plain sizes."""
    scale = 3
    with K.tuning(threaded_block_scale=scale), K.num_threads(2):
        seen = _parallel.run_parts(lambda lo, hi: _parallel.block_scale(), 10, flops=1e12)
        assert seen == [scale, scale]
        assert _parallel.block_scale() == 1                   # restored on the calling thread
        assert _parallel.run_parts(lambda lo, hi: _parallel.block_scale(), 10, flops=1.0) == [1]
        seen = _parallel.data_parallel(lambda lo, hi: _parallel.block_scale(), 10)
        assert seen == [scale, scale] and _parallel.block_scale() == 1
    with K.num_threads(1):
        assert _parallel.run_parts(lambda lo, hi: _parallel.block_scale(), 10, flops=1e12) == [1]


def test_blas_limit_is_restored_after_nested_and_concurrent_kernels():
    pytest.importorskip("threadpoolctl")
    libs = _parallel._blas_libs()
    if not libs:
        pytest.skip("threadpoolctl finds no BLAS library in this process")
    start = [lc.get_num_threads() for lc in libs]
    with _parallel.single_threaded_blas():
        assert [lc.get_num_threads() for lc in libs] == [1] * len(libs)
        with _parallel.single_threaded_blas():
            pass
        assert [lc.get_num_threads() for lc in libs] == [1] * len(libs)
    assert [lc.get_num_threads() for lc in libs] == start
    import threading
    gate = threading.Barrier(2, timeout=10)

    def kernel():
        with _parallel.single_threaded_blas():
            gate.wait()                                  # both inside at once
    threads = [threading.Thread(target=kernel) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [lc.get_num_threads() for lc in libs] == start


# ================================================================ the shape-chosen fast paths

# (N, H, W, C_in, KH, KW, C_out, padding): stride-1 cases for the Toeplitz input gradient
TOEPLITZ_CASES = [
    (2, 14, 14, 6, 5, 5, 16, "valid"),      # LeNet-5's C3
    (3, 7, 9, 2, 3, 3, 5, "same"),          # padding cropped, Wo = 9 -> chunks of 3
    (2, 8, 7, 3, 2, 2, 4, "same"),          # even kernel: the odd pixel bottom/right
    (1, 5, 11, 1, 5, 3, 2, "valid"),        # Wo = 9, KW = 3
    (2, 6, 5, 4, 3, 5, 1, "same"),          # one output channel, Wo prime
    (1, 3, 3, 2, 5, 5, 3, "same"),          # kernel larger than the image
]


@pytest.fixture
def tune():
    """``tune(**settings)``: ``numpy_set.tuning`` (and ``threads=n``: ``num_threads``) for the
    rest of the test."""
    with contextlib.ExitStack() as stack:
        def apply(threads=None, **settings):
            if threads is not None:
                stack.enter_context(K.num_threads(threads))
            stack.enter_context(K.tuning(**settings))
        yield apply


def test_toeplitz_chunk_and_matrix(rng):
    assert [_toeplitz.chunk(wo, 5) for wo in (10, 7, 9, 1, 24)] == [5, 1, 3, 1, 4]
    w = rng.standard_normal((2, 3, 2, 4))
    t = _toeplitz.toeplitz_matrix(w, 2).reshape(2, 4, 2, 4, 2)       # (q, o, i, b, c)
    for q in range(2):
        for i in range(2):
            for b in range(4):
                want = w[i, b - q].T if 0 <= b - q < 3 else np.zeros((4, 2))
                np.testing.assert_array_equal(t[q, :, i, b, :], want)


# (N, H, W, C_in, KH, KW, C_out, pad (top, bottom, left, right)): stride-1 cases for the row
# gather, which needs dy at least as wide as dx
ROW_GATHER_CASES = [
    (2, 15, 15, 24, 5, 5, 64, (2, 2, 2, 2)),     # AlexNet-small's conv2
    (3, 7, 9, 3, 3, 3, 5, (1, 1, 1, 1)),         # 3 bands of rows, 2 invalid column strips
    (2, 8, 7, 4, 2, 4, 3, (0, 1, 1, 2)),         # even kernels, padding on one side each
    (2, 6, 5, 2, 3, 3, 4, (1, 0, 2, 1)),         # dy wider than dx (W < Wo), uneven padding
    (1, 3, 3, 2, 5, 5, 3, (2, 2, 2, 2)),         # kernel larger than the image: no full band
    (2, 5, 6, 3, 1, 3, 2, (0, 0, 1, 1)),         # one kernel row: a single band
    (3, 4, 4, 5, 3, 2, 6, (2, 2, 0, 1)),         # the most padding a gather allows
]


# dx_method -> (its algorithm's name, the settings that make its blocks one image each)
STRIDE1_DX = {"toeplitz": ("toeplitz", ["toeplitz_block_bytes"]),
              "rowgather": ("row gather", ["col_block_bytes", "col_min_rows", "wide_min_rows"])}


@pytest.mark.parametrize("method,case", [("toeplitz", c) for c in TOEPLITZ_CASES]
                         + [("rowgather", c) for c in ROW_GATHER_CASES])
@pytest.mark.parametrize("blocks", ["one-block", "image-blocks", "two-threads"])
def test_stride1_input_gradients_match_loops(rng, tune, method, case, blocks):
    """The Toeplitz and row-gather input gradients, forced, against the loops: float64, then
    float32 from a non-contiguous dy (every other channel of a wider array); "image-blocks"
    makes each block one image, "two-threads" splits even tiny work."""
    algorithm, tiny_blocks = STRIDE1_DX[method]
    tune(dx_method=method)
    if blocks == "image-blocks":
        tune(**{name: 1 for name in tiny_blocks})
    if blocks == "two-threads":
        tune(threads=2, min_parallel_flops=0)
    n, h, w, c, kh, kw, co, pad = case
    if isinstance(pad, str):
        pad = ref_pads(h, w, kh, kw, 1, 1, pad)
    wt = rng.standard_normal((kh, kw, c, co)) / np.sqrt(kh * kw * co)
    ho, wo = h + pad[0] + pad[1] - kh + 1, w + pad[2] + pad[3] - kw + 1
    dy = rng.standard_normal((n, ho, wo, co))
    assert K.conv_algorithm("input", (n, h, w, c), wt.shape, (1, 1), pad) == algorithm
    want = ref_conv2d_backward_input(dy, wt, (n, h, w, c), (1, 1), pad)
    got = K.conv2d_backward_input(dy, wt, (n, h, w, c), (1, 1), pad)
    np.testing.assert_allclose(got, want, **F64)
    wide = np.zeros((n, ho, wo, 2 * co), np.float32)
    wide[..., ::2] = dy
    dy32 = wide[..., ::2]
    assert not dy32.flags.c_contiguous
    got32 = K.conv2d_backward_input(dy32, wt.astype(np.float32), (n, h, w, c), (1, 1), pad)
    assert got32.dtype == np.float32 and got32.flags.c_contiguous
    np.testing.assert_allclose(got32, want, **F32)


def test_row_gather_zeroes_exactly_the_entries_no_pixel_owns():
    # z column u of kernel column j adds to dx column u - j + left, which must lie in [0, W)
    for wo, wd, kw, left in [(15, 15, 5, 2), (9, 7, 3, 0), (6, 6, 4, 1), (4, 2, 5, 4)]:
        spans = {j: (lo, hi) for j, lo, hi in _rowgather._invalid(wo, wd, kw, left)}
        for j in range(kw):
            lo, hi = spans.get(j, (0, wo))
            owned = [u for u in range(wo) if 0 <= u - j + left < wd]
            assert list(range(lo, hi)) == owned, (wo, wd, kw, left, j)


# a kernel covering the whole unpadded input (one output pixel): the dense-layer path
@pytest.mark.parametrize("stride", [(1, 1), (2, 3)])
@pytest.mark.parametrize("act", ["tanh", "linear"])
def test_whole_input_kernels_are_dense_layers(rng, stride, act):
    x = rng.standard_normal((4, 5, 6, 3))
    w = rng.standard_normal((5, 6, 3, 7)) / 10
    b = rng.standard_normal(7)
    pad = (0, 0, 0, 0)
    assert K.conv_algorithm("forward", x.shape, w.shape, stride, pad) == "dense GEMM"
    _conv_matches(rng, x, w, b, stride, pad, act)
    # a padded or smaller kernel is not
    assert K.conv_algorithm("forward", x.shape, w.shape, stride, (1, 0, 0, 0)) != "dense GEMM"


SAME3, SAME5, S1 = (1, 1, 1, 1), (2, 2, 2, 2), (1, 1)
ALGORITHMS = [
    ("forward", (8, 32, 32, 1), (5, 5, 1, 6), (1, 1), Z, "im2col (planar blocks)"),
    ("weight", (8, 32, 32, 3), (3, 3, 3, 24), (1, 1), Z, "im2col (planar blocks)"),
    ("forward", (8, 14, 14, 6), (5, 5, 6, 16), (1, 1), Z, "im2col"),
    ("forward", (8, 28, 28, 16), (3, 3, 16, 1), (1, 1), SAME3, "shifted GEMMs"),
    ("input", (8, 14, 14, 16), (3, 3, 16, 32), (2, 2), (0, 1, 0, 1), "scatter"),
    ("input", (8, 7, 7, 96), (3, 3, 96, 64), (1, 1), SAME3, "gather (border classes)"),
    ("input", (8, 56, 56, 32), (3, 3, 32, 32), (1, 1), SAME3, "gather"),  # 2.4% in padding
    ("forward", (8, 28, 28, 8), (5, 5, 8, 16), (1, 1), SAME5, "im2col"),  # 25 classes, small w
    ("forward", (8, 28, 28, 8), (5, 5, 8, 32), (1, 1), SAME5, "im2col (border classes)"),
    ("forward", (8, 7, 7, 64), (3, 3, 64, 96), (1, 1), SAME3, "im2col (border classes)"),
    ("weight", (8, 15, 15, 24), (5, 5, 24, 64), (1, 1), SAME5, "im2col (border classes)"),
    ("input", (8, 1, 1, 4), (1, 1, 4, 5), (1, 1), Z, "dense GEMM"),
    # the row gather: few input channels and a deep gather (KH*KW*C_out >= 800)
    ("input", (8, 15, 15, 24), (5, 5, 24, 64), S1, SAME5, "row gather"),
    ("input", (8, 16, 16, 16), (3, 3, 16, 128), S1, SAME3, "row gather"),
    # shallow (3x3, 24 -> 64: depth 576), wide (32 input channels), few channels (Toeplitz)
    ("input", (8, 15, 15, 24), (3, 3, 24, 64), S1, SAME3, "gather (border classes)"),
    ("input", (8, 15, 15, 32), (5, 5, 32, 64), S1, SAME5, "gather (border classes)"),
    ("input", (8, 15, 15, 8), (5, 5, 8, 64), S1, SAME5, "toeplitz"),
    # dx wider than dy (a valid convolution): a shifted read past a row would meet real values
    ("input", (8, 15, 15, 24), (5, 5, 24, 64), S1, Z, "gather (border classes)"),
]


@pytest.mark.parametrize("pass_,x,w,stride,pad,name,settings", [r + ({},) for r in ALGORITHMS] + [
    # the row gather forced where it does not apply: the gather, and the scatter at stride 2
    ("input", (8, 15, 15, 24), (5, 5, 24, 64), S1, Z, "gather (border classes)",
     dict(dx_method="rowgather")),
    ("input", (8, 15, 15, 24), (5, 5, 24, 64), (2, 2), SAME5, "scatter",
     dict(dx_method="rowgather"))])
def test_algorithm_names(tune, pass_, x, w, stride, pad, name, settings):
    tune(**settings)
    assert K.conv_algorithm(pass_, x, w, stride, pad) == name


# average pools that tile the image (stride == window, no padding, sizes divisible, few
# channels) take the GEMM column pass, the others the general path
@pytest.mark.parametrize("shape,pool,stride,pad,tiles", [
    ((3, 28, 28, 6), (2, 2), (2, 2), Z, True), ((2, 10, 10, 16), (2, 2), (2, 2), Z, True),
    ((2, 9, 6, 3), (3, 2), (3, 2), Z, True), ((1, 4, 8, 1), (1, 4), (1, 4), Z, True),
    ((2, 7, 8, 3), (2, 2), (2, 2), Z, False),                   # 7 rows: one left
    ((2, 8, 8, 3), (3, 3), (2, 2), Z, False),                   # overlapping
    ((2, 8, 8, 3), (2, 2), (2, 2), (0, 1, 0, 1), False),
    ((2, 8, 8, 64), (2, 2), (2, 2), Z, False)])                 # many channels
def test_average_pool_paths_match_loops(rng, shape, pool, stride, pad, tiles):
    x = rng.standard_normal(shape)
    assert pool_module._tiling(shape, pool, stride, pad) == tiles
    y = K.avg_pool_forward(x, pool, stride, pad)
    np.testing.assert_allclose(y, ref_avg_pool(x, pool, stride, pad), **F64)
    dy = rng.standard_normal(y.shape)
    np.testing.assert_allclose(K.avg_pool_backward(dy, shape, pool, stride, pad),
                               ref_avg_pool_backward(dy, shape, pool, stride, pad), **F64)
    y32 = K.avg_pool_forward(x.astype(np.float32), pool, stride, pad)
    assert y32.dtype == np.float32
    np.testing.assert_allclose(y32, ref_avg_pool(x, pool, stride, pad), **F32)


def test_allocator_note_and_opt_out(monkeypatch):
    note = K.allocator_note()
    assert ("M_MMAP_THRESHOLD" in note) or ("left alone" in note) or ("not glibc" in note)
    monkeypatch.setenv("GPUCNN_MALLOPT", "0")
    before = _alloc._note
    try:
        assert _alloc.tune() == "left alone (GPUCNN_MALLOPT=0)"
    finally:
        _alloc._note = before


@pytest.mark.parametrize("method", [("im2col", "gather"), ("shifted", "scatter"),
                                    ("im2col", "toeplitz"), ("im2col", "rowgather")])
def test_kernels_multiply_with_dot_not_matmul(rng, monkeypatch, tune, method):
    """np.matmul on 2-D operands keeps the GIL (one outer ufunc iteration): the kernel threads
    and the split step's parts would run one after the other. Every conv path, the pools and
    the losses run here with np.matmul made to record its calls."""
    calls = []
    real = np.matmul
    monkeypatch.setattr(np, "matmul", lambda *a, **k: calls.append(1) or real(*a, **k))
    tune(forward_method=method[0], dx_method=method[1], threads=2, min_parallel_flops=0)
    x = rng.standard_normal((4, 9, 9, 3)).astype(np.float32)
    w = rng.standard_normal((3, 3, 3, 8)).astype(np.float32)
    for pad in ((1, 1, 1, 1), (0, 0, 0, 0)):
        y = K.conv2d_forward(x, w, None, (1, 1), pad, "relu")
        K.conv2d_backward_input(y, w, x.shape, (1, 1), pad)
        K.conv2d_backward_weight(x, y, w.shape, (1, 1), pad)
        K.conv2d_forward_keep(x, w, None, (1, 1), pad, "tanh")
    K.avg_pool_backward(K.avg_pool_forward(x, (2, 2), (2, 2), (0, 0, 0, 0)), x.shape,
                        (2, 2), (2, 2), (0, 0, 0, 0))
    K.loss_forward("sparse_cce_logits", np.arange(4), x.reshape(4, -1))
    assert calls == []


# max pooling: separable maxima with the first maximum in row-major window order
MAX_CASES = [((2, 32, 32, 5), (3, 3), (2, 2), "valid"), ((3, 7, 9, 2), (2, 3), (1, 2), "same"),
             ((2, 6, 6, 3), (2, 2), (2, 2), "valid"), ((1, 5, 4, 2), (3, 1), (1, 1), "same"),
             ((2, 9, 8, 1), (1, 2), (3, 2), "valid"),
             ((1, 3, 300, 2), (2, 3), (1, 2), "valid"), ((1, 260, 3, 1), (2, 2), (1, 1), "valid")]
# (the last two: wide windows and images, flat offsets > 255)


@pytest.mark.parametrize("shape,pool,stride,padding", MAX_CASES)
@pytest.mark.parametrize("blocks", ["whole", "one-image"])
def test_separable_max_pool_matches_loops(rng, tune, shape, pool, stride, padding, blocks):
    if blocks == "one-image":
        tune(pool_block_bytes=1)
    pad = ref_pads(shape[1], shape[2], pool[0], pool[1], stride[0], stride[1], padding)
    x = rng.integers(-3, 4, shape).astype(np.float32)        # small integers: many ties
    y, idx = _max_pool_matches(x, pool, stride, pad)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    np.testing.assert_allclose(K.max_pool_backward(dy, idx, shape, pool, stride, pad),
                               ref_max_pool_backward(dy, idx, shape), **F32)


@pytest.mark.parametrize("shape,k,stride,padding", [((3, 9, 8, 1), 3, 1, "valid"),
                                                     ((2, 7, 7, 5), 3, 2, "same"),
                                                     ((2, 6, 6, 3), 1, 1, "valid")])
def test_kept_im2col_blocks_give_the_same_kernel_gradient(rng, tune, shape, k, stride,
                                                          padding):
    tune(col_block_bytes=200, col_min_rows=1)      # several blocks, kept separately
    x = rng.standard_normal(shape)
    w = rng.standard_normal((k, k, shape[3], 4)) / 5
    b = rng.standard_normal(4)
    pad = ref_pads(shape[1], shape[2], k, k, stride, stride, padding)
    y, kept = K.conv2d_forward_keep(x, w, b, (stride, stride), pad, "relu")
    np.testing.assert_allclose(y, ref_conv2d(x, w, b, (stride, stride), pad, "relu"), **F64)
    dy = rng.standard_normal(y.shape)
    want = ref_conv2d_backward_weight(x, dy, w.shape, (stride, stride), pad)
    if k > 1:                          # (a 1x1 conv's im2col is x itself)
        assert kept is not None and len(kept) > 1
        x[...] = np.nan                # the kept blocks, not x, feed the kernel gradient
    got = K.conv2d_backward_weight_kept(kept, x, dy, w.shape, (stride, stride), pad)
    np.testing.assert_allclose(got, want, **F64)


def test_kept_blocks_only_below_the_size_limit(rng, tune):
    x = rng.standard_normal((2, 10, 10, 3)).astype(np.float32)
    w = rng.standard_normal((3, 3, 3, 4)).astype(np.float32)
    z = (0, 0, 0, 0)
    assert K.conv2d_forward_keep(x, w, None, (1, 1), z, "linear")[1] is not None
    tune(keep_max_bytes=2 * 8 * 8 * 27 * 4 - 1)
    assert K.conv2d_forward_keep(x, w, None, (1, 1), z, "linear")[1] is None
    dy = rng.standard_normal((2, 8, 8, 4)).astype(np.float32)
    np.testing.assert_allclose(K.conv2d_backward_weight_kept(None, x, dy, w.shape, (1, 1), z),
                               K.conv2d_backward_weight(x, dy, w.shape, (1, 1), z), rtol=1e-6)


# ---------------------------------------------------------------- im2col border classes

@pytest.mark.parametrize("h,w,kh,kw,stride,pad", [
    (7, 7, 3, 3, (1, 1), (1, 1, 1, 1)), (15, 15, 5, 5, (1, 1), (2, 2, 2, 2)),
    (9, 8, 4, 2, (2, 3), (1, 2, 0, 1)), (4, 4, 5, 5, (1, 1), (2, 2, 2, 2)),
    (2, 3, 3, 3, (1, 2), (3, 2, 3, 4)), (6, 6, 3, 3, (1, 1), (0, 0, 0, 0))])
def test_border_classes_partition_the_output_by_real_taps(h, w, kh, kw, stride, pad):
    """Every output pixel is in exactly one class, and its class's taps are exactly the kernel
    taps whose input cell lies inside the image; the padding share is counted cell by cell."""
    sh, sw = stride
    ho = (h + pad[0] + pad[1] - kh) // sh + 1
    wo = (w + pad[2] + pad[3] - kw) // sw + 1
    classes, saving = _im2col.border_classes((1, h, w, 1), kh, kw, stride, pad, ho, wo)
    seen = np.zeros((ho, wo), int)
    padding_cells = 0
    for p0, p1, q0, q1, i0, i1, j0, j1 in classes:
        for p in range(p0, p1):
            for q in range(q0, q1):
                seen[p, q] += 1
                real = {(i, j) for i in range(kh) for j in range(kw)
                        if 0 <= p * sh - pad[0] + i < h and 0 <= q * sw - pad[2] + j < w}
                assert real == {(i, j) for i in range(i0, i1) for j in range(j0, j1)}
                padding_cells += kh * kw - len(real)
    assert (seen == 1).all()
    assert saving == pytest.approx(padding_cells / (ho * wo * kh * kw))


def test_border_classes_with_windows_all_in_the_padding(rng, tune):
    """Padding wider than the kernel: some windows read no image cell (their output is the bias,
    through the activation, and they add nothing to the kernel gradient)."""
    tune(border_min_saving=0.0, border_many_classes_min_work=0)
    x = rng.standard_normal((2, 2, 3, 5))
    w = rng.standard_normal((3, 3, 5, 4))
    b = rng.standard_normal(4)
    pad = (3, 2, 3, 4)
    assert K.conv_algorithm("forward", x.shape, w.shape, (1, 1), pad) == "im2col (border classes)"
    y = _conv_matches(rng, x, w, b, (1, 1), pad, "sigmoid", input_grad=False)
    assert np.allclose(y[:, 0, 0], 1 / (1 + np.exp(-b)))


def test_border_classes_match_the_plain_im2col_in_float32(rng, tune):
    """AlexNet-small's conv3 shape, both ways, against the plain im2col path of the same set."""
    x = rng.standard_normal((3, 7, 7, 64)).astype(np.float32)
    w = (rng.standard_normal((3, 3, 64, 96)) / 24).astype(np.float32)
    b = rng.standard_normal(96).astype(np.float32)
    pad = (1, 1, 1, 1)
    dy = rng.standard_normal((3, 7, 7, 96)).astype(np.float32)

    def passes():
        return (K.conv2d_forward(x, w, b, (1, 1), pad, "relu"),
                K.conv2d_backward_input(dy, w, x.shape, (1, 1), pad),
                K.conv2d_backward_weight(x, dy, w.shape, (1, 1), pad))
    got = passes()
    tune(border_min_saving=2.0)
    assert K.conv_algorithm("forward", x.shape, w.shape, (1, 1), pad) == "im2col"
    for g, v in zip(got, passes()):
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, v, rtol=1e-4, atol=1e-4)


def test_border_classes_read_a_non_contiguous_input(rng, tune):
    """A strided view as x (every other image, channels reversed) goes through the border classes
    like a contiguous copy of it."""
    tune(border_min_saving=0.0)
    base = rng.standard_normal((6, 7, 7, 6))
    x = base[::2, :, :, ::-1]
    assert not x.flags.c_contiguous
    w = rng.standard_normal((3, 3, 6, 5))
    pad = (1, 1, 1, 1)
    assert K.conv_algorithm("forward", x.shape, w.shape, (1, 1), pad) == "im2col (border classes)"
    _conv_matches(rng, x, w, None, (1, 1), pad, "linear", input_grad=False)   # the view itself


def test_tuning_changes_settings_inside_the_block_only(rng):
    from gpucnn.kernels.numpy_set.tuning import TUNING

    x = rng.standard_normal((2, 6, 6, 16)).astype(np.float32)
    w = rng.standard_normal((3, 3, 16, 4)).astype(np.float32)
    same = (1, 1, 1, 1)
    chosen = K.conv_algorithm("input", x.shape, w.shape, (1, 1), same)
    with K.tuning(dx_method="scatter", scatter_block_bytes=1):
        assert K.conv_algorithm("input", x.shape, w.shape, (1, 1), same) == "scatter"
        assert TUNING.scatter_block_bytes == 1
    assert K.conv_algorithm("input", x.shape, w.shape, (1, 1), same) == chosen != "scatter"
    assert TUNING.scatter_block_bytes == 1 << 20
    for error, match, bad in [(ValueError, "unknown setting 'col_bytes'", dict(col_bytes=1)),
                              (ValueError, "dx_method must be one of", dict(dx_method="fft")),
                              (TypeError, "col_min_rows must be a number >= 0",
                               dict(col_min_rows=-1))]:
        with pytest.raises(error, match=match):
            with K.tuning(**bad):
                pass
    with pytest.raises(RuntimeError):
        with K.tuning(col_min_rows=3):
            raise RuntimeError("inside")
    assert TUNING.col_min_rows == 256
