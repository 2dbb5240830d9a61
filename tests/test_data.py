"""gpucnn.data: the batch iterator, its epoch plan and the chunks streaming groups batches in."""
import numpy as np
import pytest

from gpucnn.data import Batches, batch_bounds, chunks


def test_bounds_cover_the_data_and_chunks_group_them():
    assert batch_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert batch_bounds(10, 4, drop_remainder=True) == [(0, 4), (4, 8)]
    assert chunks([(2, 5), (5, 8), (8, 11), (11, 12)], 6) == [[(2, 5), (5, 8)], [(8, 11), (11, 12)]]


def test_shuffled_batches_are_the_seeded_permutation():
    x = np.arange(30.0).reshape(10, 3)
    y = np.arange(10) * 7
    perm = np.random.default_rng(3).permutation(10)        # what seed=3 draws for epoch 1
    got = list(Batches(x, y, batch_size=4, seed=3))
    assert [len(xb) for xb, _ in got] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([xb for xb, _ in got]), x[perm])
    np.testing.assert_array_equal(np.concatenate([yb for _, yb in got]), y[perm])


def test_epochs_differ_and_every_sample_appears_once():
    x = np.arange(20.0)
    b = Batches(x, batch_size=6, seed=0)
    e1, e2 = np.concatenate(list(b)), np.concatenate(list(b))
    assert sorted(e1) == sorted(e2) == list(x)
    assert not np.array_equal(e1, e2)


def test_unshuffled_batches_are_views():
    x = np.arange(12.0).reshape(6, 2)
    xb, yb = next(iter(Batches(x, np.arange(6), batch_size=4, shuffle=False)))
    assert np.shares_memory(xb, x) and xb.shape == (4, 2)


def test_plan_keeps_host_arrays_unshuffled_with_the_epochs_order():
    x = np.random.default_rng(0).random((9, 2, 2), dtype=np.float32)
    xe, ye, order = Batches(x, np.arange(9), batch_size=4, seed=1).epoch_plan()
    assert xe is x and list(order) == list(np.random.default_rng(1).permutation(9))


def test_bad_arguments_name_the_iterator():
    with pytest.raises(ValueError, match="Batches: batch_size must be a positive int, got 0"):
        Batches(np.zeros(3), batch_size=0)
    with pytest.raises(ValueError, match="same length, got 3 and 2"):
        Batches(np.zeros(3), np.zeros(2))
    with pytest.raises(ValueError, match="empty"):
        Batches(np.zeros((0, 2)))
