"""The annotation pool: windows, stable ids, counts."""

from __future__ import annotations

import numpy as np
import pytest

from alseg.data.pool import Pool, tile_starts, union_volume, window_starts


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


def test_tile_starts_cover_with_the_fewest_full_tiles():
    assert tile_starts(20, 20) == [0] and tile_starts(12, 20) == [0]
    assert tile_starts(40, 20) == [0, 20]
    assert tile_starts(50, 20) == [0, 15, 30]  # 3 tiles of 20 cover 50, overlapping where 20 does not divide it
    for size in (21, 37, 56, 101):
        starts = tile_starts(size, 20)
        covered = np.zeros(size, bool)
        for s in starts:
            covered[s : s + 20] = True
        assert covered.all() and len(starts) == -(-size // 20) and starts[-1] == size - 20


def test_small_items_tile_3d_cases_and_change_the_fingerprint():
    shapes = {"a": (36, 50, 35), "b": (30, 48, 40)}
    default = Pool.build(shapes, "3d_fullres", (40, 56, 40))
    same = Pool.build(shapes, "3d_fullres", (40, 56, 40), item_size=(40, 56, 40))  # the patch size: the default
    assert same.ids == default.ids and same.fingerprint() == default.fingerprint() and not same.small_items
    small = Pool.build(shapes, "3d_fullres", (40, 56, 40), item_size=(20, 20, 20))
    assert small.small_items and small.item_size == (20, 20, 20)
    assert small.items_per_case() == {"a": 2 * 3 * 2, "b": 2 * 3 * 2}
    assert all(it.n_voxels == 20**3 for it in small.items)
    assert "a:3d:16:15:15" in small.index  # the last tiles end at the border (36, 50, 35)
    assert small.fingerprint() != Pool.build(shapes, "3d_fullres", (40, 56, 40), item_size=(20, 20, 10)).fingerprint()
    sub = small.subset([0, 3])
    assert sub.item_size == (20, 20, 20) and len(sub) == 2


def test_small_items_are_windows_of_one_slice_in_2d():
    pool = Pool.build({"a": (3, 50, 35)}, "2d", (56, 40), item_size=(20, 20))
    assert len(pool) == 3 * 3 * 2
    it = pool[pool.index["a:2d:1:30:15"]]
    assert it.box == ((1, 2), (30, 50), (15, 35)) and it.n_voxels == 400


def test_item_size_larger_than_the_patch_is_refused():
    with pytest.raises(ValueError, match="does not fit the patch size"):
        Pool.build({"a": (36, 50, 35)}, "3d_fullres", (40, 56, 40), item_size=(41, 20, 20))


def test_union_volume_counts_overlaps_once():
    assert union_volume([((0, 2), (0, 3), (0, 4))]) == 24
    assert union_volume([((0, 1), (0, 20), (0, 20)), ((0, 1), (15, 35), (0, 20))]) == 35 * 20  # 5 rows shared
    assert union_volume([((0, 1), (0, 20), (0, 20)), ((1, 2), (0, 20), (0, 20))]) == 800  # other slice: disjoint
    assert union_volume([((0, 4), (0, 4), (0, 4)), ((1, 3), (1, 3), (1, 3))]) == 64  # nested


def test_pool_voxels_are_the_union_of_the_items_against_a_painted_mask():
    """Border tiles of --item-size overlap; the annotated voxels are the union of the boxes."""
    shapes = {"a": (3, 50, 35), "b": (2, 48, 40)}
    pool = Pool.build(shapes, "2d", (56, 40), item_size=(20, 20))
    rng = np.random.default_rng(0)
    for _ in range(5):
        chosen = rng.choice(len(pool), size=12, replace=False)
        painted = {c: np.zeros(s, dtype=bool) for c, s in shapes.items()}
        for i in chosen:
            painted[pool[int(i)].case_id][tuple(slice(a, b) for a, b in pool[int(i)].box)] = True
        assert pool.voxels(chosen) == sum(int(m.sum()) for m in painted.values())
    whole_slice = [pool.index[f"a:2d:1:{y}:{x}"] for y in (0, 15, 30) for x in (0, 15)]
    assert pool.voxels(whole_slice) == 50 * 35 < sum(pool[i].n_voxels for i in whole_slice) == 6 * 400
    default = Pool.build(shapes, "2d", (56, 40))  # one item per slice: the sum, as before
    assert default.voxels(range(len(default))) == 3 * 50 * 35 + 2 * 48 * 40


def test_label_store_counts_overlapping_items_voxels_once(tmp_path):
    from alseg.active.oracles.labels import UNLABELLED, LabelStore

    pool = Pool.build({"a": (1, 50, 35)}, "2d", (56, 40), item_size=(20, 20))
    store = LabelStore(tmp_path, {"a": (1, 50, 35)})
    vol = np.full((1, 50, 35), UNLABELLED, dtype=np.uint8)
    vol[0, 0:35, 0:20] = 1  # the union of tiles (0, 0) and (15, 0), 35 x 20 voxels of class 1
    np.save(tmp_path / "a.npy", vol)
    labelled = pool.mask(["a:2d:0:0:0", "a:2d:0:15:0"])
    np.testing.assert_array_equal(store.voxels_per_class(pool, labelled, 3), [0, 35 * 20, 0])
