"""The annotation pool: windows, stable ids, counts."""

from __future__ import annotations

import numpy as np
import pytest

from alseg.data.pool import Pool, window_starts


def test_window_starts_cover_with_half_overlap():
    assert window_starts(40, 56) == [0]
    assert window_starts(56, 56) == [0]
    assert window_starts(100, 40) == [0, 20, 40, 60]
    starts = window_starts(101, 40)
    assert starts == [0, 15, 30, 46, 61]  # evenly spread, stride <= 20
    covered = np.zeros(101, bool)
    for s in starts:
        covered[s : s + 40] = True
    assert covered.all()


def test_2d_pool_one_item_per_slice_when_slice_fits_patch():
    pool = Pool.build({"a": (36, 50, 35), "b": (30, 48, 40)}, "2d", (56, 40))
    assert len(pool) == 36 + 30
    assert pool.items_per_case() == {"a": 36, "b": 30}
    it = pool[pool.index["a:2d:5:0:0"]]
    assert it.box == ((5, 6), (0, 50), (0, 35)) and it.n_voxels == 50 * 35


def test_2d_pool_windows_when_slice_is_larger():
    pool = Pool.build({"a": (2, 100, 40)}, "2d", (40, 40))
    assert len(pool) == 2 * 4
    assert all(it.n_voxels == 40 * 40 for it in pool.items)
    assert "a:2d:1:60:0" in pool.index


def test_3d_pool_and_patch_extraction():
    pool = Pool.build({"a": (50, 60, 40)}, "3d_fullres", (40, 56, 40))
    assert len(pool) == 2 * 2 * 1
    vol = np.arange(50 * 60 * 40).reshape(50, 60, 40)
    i = pool.index["a:3d:10:4:0"]
    np.testing.assert_array_equal(pool.patch(vol, i), vol[10:50, 4:60, 0:40])


def test_ids_are_stable_and_order_independent():
    a = Pool.build({"x": (3, 10, 10), "y": (2, 10, 10)}, "2d", (8, 8))
    b = Pool.build({"y": (2, 10, 10), "x": (3, 10, 10)}, "2d", (8, 8))
    assert a.ids == b.ids and a.fingerprint() == b.fingerprint()
    mask = a.mask(["x:2d:0:0:0", "y:2d:1:2:2"])
    assert mask.sum() == 2
    with pytest.raises(KeyError, match="not in the pool"):
        a.indices(["nope"])


def test_2d_patch_of_multichannel_volume():
    pool = Pool.build({"a": (4, 6, 5)}, "2d", (8, 8))
    vol = np.random.default_rng(0).normal(size=(2, 4, 6, 5))
    np.testing.assert_array_equal(pool.patch(vol, 3), vol[:, 3])
