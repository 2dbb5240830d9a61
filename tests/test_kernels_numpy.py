"""The NumPy kernel set beyond the op registry's table (tests/test_ops.py runs every op against
its plain-loop reference): the guide's worked numbers, ties, NaN and infinities, numerical
stability, errors, the dropout hash's statistics, the threads (the hand-computed optimizer steps
are in tests/test_optim_kernels.py, with every other test of the update kernels)."""
import math
import warnings

import numpy as np
import pytest

from _reference import ref_max_pool, ref_max_pool_backward, ref_pads
from gpucnn.kernels import CONTRACT, load_set
from gpucnn.kernels._rng import uniform_np
from gpucnn.kernels.numpy_set import _parallel

K = load_set("numpy")
F32 = dict(rtol=2e-5, atol=2e-5)
F64 = dict(rtol=1e-10, atol=1e-10)


def _pads(x_shape, k, stride, padding):
    return ref_pads(x_shape[1], x_shape[2], k[0], k[1], stride[0], stride[1], padding)


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
    pad = _pads(x.shape, k, stride, padding)
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


def test_conv2d_shape_errors_name_the_function(rng):
    x = rng.standard_normal((1, 5, 5, 3))
    with pytest.raises(ValueError, match="conv2d_forward.*input channels"):
        K.conv2d_forward(x, rng.standard_normal((3, 3, 2, 4)), None, (1, 1), (0, 0, 0, 0), "relu")
    with pytest.raises(ValueError, match="conv2d_forward"):
        K.conv2d_forward(x, rng.standard_normal((6, 6, 3, 4)), None, (1, 1), (0, 0, 0, 0), "relu")
    with pytest.raises(ValueError, match="conv2d_forward.*b of shape"):
        K.conv2d_forward(x, rng.standard_normal((3, 3, 3, 4)), np.ones(3), (1, 1), (0, 0, 0, 0),
                         "relu")
    with pytest.raises(ValueError, match="conv2d_backward_weight.*dy shape"):
        K.conv2d_backward_weight(x, np.ones((1, 2, 2, 4)), (3, 3, 3, 4), (1, 1), (0, 0, 0, 0))
    with pytest.raises(ValueError, match="conv2d_forward.*'gelu'"):
        K.conv2d_forward(x, rng.standard_normal((3, 3, 3, 4)), None, (1, 1), (0, 0, 0, 0), "gelu")
    with pytest.raises(ValueError, match="conv2d_backward_input"):
        K.conv2d_backward_input(np.ones((1, 3, 3, 5)), rng.standard_normal((3, 3, 3, 4)),
                                x.shape, (1, 1), (0, 0, 0, 0))


# ---------------------------------------------------------------- pooling

def test_max_pool_ties_keep_the_first_cell_and_overlaps_accumulate(rng):
    x = rng.integers(0, 3, size=(2, 9, 9, 2)).astype(np.float32)   # many ties
    y, idx = K.max_pool_forward(x, (3, 3), (2, 2), (0, 0, 0, 0))
    want_y, want_idx = ref_max_pool(x, (3, 3), (2, 2), (0, 0, 0, 0))
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(idx, want_idx)
    dx = K.max_pool_backward(np.ones_like(y), idx, x.shape)
    assert dx.max() > 1                                  # a shared winner collected several
    np.testing.assert_array_equal(dx, ref_max_pool_backward(np.ones(y.shape), idx, x.shape))


@pytest.mark.parametrize("shape,pool,stride", [((1, 3, 300, 2), (2, 3), (1, 2)),   # offsets > 255
                                                ((1, 260, 3, 1), (2, 2), (1, 1))])
def test_max_pool_wide_windows_and_images(rng, shape, pool, stride):
    x = rng.integers(0, 2, size=shape).astype(np.float32)            # ties everywhere
    y, idx = K.max_pool_forward(x, pool, stride, (0, 0, 0, 0))
    want_y, want_idx = ref_max_pool(x, pool, stride, (0, 0, 0, 0))
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(idx, want_idx)


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
    dx = K.max_pool_backward(np.ones_like(y), idx, x.shape)          # every index in range
    assert dx.sum() == y.size


def test_max_pool_padding_never_wins(rng):
    x = -np.abs(rng.standard_normal((1, 5, 5, 2))) - 1.0   # all negative, padding is -inf
    x[0, 0, :, 0] = -np.inf                                  # a whole window of real -inf cells
    x[0, :, 0, 0] = -np.inf
    y, idx = K.max_pool_forward(x, (3, 3), (2, 2), (1, 1, 1, 1))
    want_y, want_idx = ref_max_pool(x, (3, 3), (2, 2), (1, 1, 1, 1))
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(idx, want_idx)
    assert idx.min() >= 0 and idx.max() < 25
    assert np.isfinite(K.avg_pool_forward(x[..., 1:], (3, 3), (2, 2), (1, 1, 1, 1))).all()


def test_guide_pooling_2x2_examples():
    x = np.array([[1, 3, 2, 1], [4, 6, 5, 0], [3, 2, 1, 2], [1, 2, 3, 4]], np.float32)
    y, idx = K.max_pool_forward(x.reshape(1, 4, 4, 1), (2, 2), (2, 2), (0, 0, 0, 0))
    np.testing.assert_array_equal(y[0, :, :, 0], [[6, 5], [3, 4]])
    np.testing.assert_array_equal(idx[0, :, :, 0], [[5, 6], [8, 15]])
    a = K.avg_pool_forward(x.reshape(1, 4, 4, 1), (2, 2), (2, 2), (0, 0, 0, 0))
    np.testing.assert_allclose(a[0, :, :, 0], [[3.5, 2.0], [2.0, 2.5]])


def test_pool_errors_name_the_function():
    with pytest.raises(ValueError, match="max_pool_forward.*padding"):
        K.max_pool_forward(np.ones((1, 4, 4, 1)), (2, 2), (1, 1), (2, 0, 0, 0))
    with pytest.raises(ValueError, match="avg_pool_backward.*dy shape"):
        K.avg_pool_backward(np.ones((1, 3, 3, 1)), (1, 4, 4, 1), (2, 2), (2, 2), (0, 0, 0, 0))


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


def test_activation_rejects_unknown_name():
    with pytest.raises(ValueError, match="act_forward.*'swish'"):
        K.act_forward(np.ones(3), "swish")


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
        loss, p = K.softmax_xent_forward(big, np.array([1, 2]))
    e = math.exp(-1)
    np.testing.assert_allclose(s, [[1 / (1 + e), e / (1 + e), 0], [1 / 3] * 3], rtol=1e-6)
    np.testing.assert_allclose(ls[0, :2], [-math.log1p(e), -1 - math.log1p(e)], rtol=1e-6)
    assert ls[0, 2] < -1e4 and np.isfinite(ls).all()
    np.testing.assert_allclose(loss, [1 + math.log1p(e), math.log(3)], rtol=1e-6)
    assert s.dtype == ls.dtype == loss.dtype == p.dtype == np.float32


def test_softmax_xent_out_of_range_label_gives_nan_row(rng):
    z = rng.standard_normal((4, 3)).astype(np.float32)
    labels = np.array([0, -1, 3, 2])
    loss, p = K.softmax_xent_forward(z, labels)
    assert np.isnan(loss[1]) and np.isnan(loss[2]) and np.isfinite(loss[[0, 3]]).all()
    dz = K.softmax_xent_backward(p, labels, np.ones(4, np.float32))
    np.testing.assert_allclose(dz[[1, 2]], p[[1, 2]])               # one-hot of nothing
    np.testing.assert_allclose(dz[0], p[0] - [1, 0, 0], rtol=1e-6)


def test_softmax_errors_name_the_function():
    with pytest.raises(ValueError, match="softmax_forward.*2 dimensions"):
        K.softmax_forward(np.ones(4))
    with pytest.raises(TypeError, match="softmax_xent_forward.*labels"):
        K.softmax_xent_forward(np.ones((2, 3)), np.array([0.0, 1.0]))


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


# ---------------------------------------------------------------- threads

def test_run_parts_covers_the_batch_in_order():
    with K.num_threads(3):
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


def test_set_num_threads_validates():
    before = K.get_num_threads()
    with pytest.raises(ValueError, match="set_num_threads"):
        K.set_num_threads(0)
    K.set_num_threads(before)
    assert K.get_num_threads() == before


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
