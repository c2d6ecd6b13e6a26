"""SegDataModule: patches inside regions, foreground oversampling, 2D items, reproducibility."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from builders import tiny_plans, write_cache

from alseg.data.cache import CaseCache
from alseg.data.datamodule import PatchDataset, Region, SegDataModule, whole_case_region
from alseg.errors import AlsegError


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return write_cache(tmp_path / "cache")


def _ids_volume(shape=(12, 20, 18)) -> tuple[np.ndarray, np.ndarray]:
    """An image whose value is 1 + the flat voxel index, so a patch tells where it came from."""
    img = (np.arange(np.prod(shape), dtype=np.float32) + 1).reshape(shape)[None]
    seg = np.zeros((1, *shape), np.uint8)
    seg[0, 3:6, 4:9, 2:5] = 1
    seg[0, 8:10, 12:16, 10:14] = 2
    return img, seg


def _dataset(cache_dir, plans, config, regions, n=64, oversample=0.33, augment=False, **kw) -> PatchDataset:
    cfg = plans.configuration(config)
    cfg = cfg.model_copy(update={"trainer": cfg.trainer.model_copy(update={"foreground_oversample": oversample})})
    dm = SegDataModule(cache_dir, cfg, regions, num_workers=0, augment=augment, **kw)
    ds = dm.build_train_dataset()
    ds.length = n
    return ds


def test_case_ids_and_whole_region(cache):
    assert CaseCache(cache).case_ids() == [f"case_{i:03d}" for i in range(5)]
    assert whole_case_region(cache, "case_001") == Region("case_001", ((0, 12), (0, 20), (0, 18)))
    (cache / "manifest.json").unlink()
    with pytest.raises(AlsegError, match="manifest"):
        CaseCache(cache).case_ids()


@pytest.mark.parametrize("config", ["2d", "3d_fullres"])
def test_patches_come_from_inside_the_region(tmp_path, config):
    shape = (12, 20, 18)
    cache = write_cache(tmp_path / "c", n=1, volumes=[_ids_volume(shape)])
    plans = tiny_plans(patch_2d=(8, 8), patch_3d=(4, 8, 8))
    # a region smaller than the patch along x (padding) and larger along y
    box = ((2, 7), (3, 15), (5, 10)) if config == "3d_fullres" else ((4, 5), (3, 15), (5, 10))
    ds = _dataset(cache, plans, config, [Region("case_000", box)], n=40, oversample=0.5)
    inside = np.zeros(shape, bool)
    inside[tuple(slice(a, b) for a, b in box)] = True
    allowed = set((np.flatnonzero(inside.ravel()) + 1).tolist())
    dims = 2 if config == "2d" else 3
    for i in range(len(ds)):
        s = ds[i]
        assert s["image"].shape == (1, *plans.configuration(config).patch_size)
        assert s["label"].shape == (1, *plans.configuration(config).patch_size) and s["label"].dtype == torch.uint8
        vals = s["image"][s["image"] != 0].long().tolist()
        assert vals and set(vals) <= allowed
        assert s["image"].ndim == dims + 1
        # the label travels with the image
        idx = s["image"].long() - 1
        nz = idx >= 0
        np.testing.assert_array_equal(
            s["label"][nz].numpy(), np.load(cache / "case_000_seg.npy").ravel()[idx[nz].numpy()]
        )


def test_2d_items_give_2d_patches_of_that_slice(tmp_path):
    cache = write_cache(tmp_path / "c", n=1, volumes=[_ids_volume()])
    plans = tiny_plans(patch_2d=(8, 8))
    item = Region("case_000", ((6, 7), (4, 12), (2, 10)))  # a pool item: one slice, patch-sized window
    ds = _dataset(cache, plans, "2d", [item], n=8)
    expected = (np.arange(12 * 20 * 18).reshape(12, 20, 18) + 1)[6, 4:12, 2:10]
    for i in range(len(ds)):
        np.testing.assert_array_equal(ds[i]["image"][0].numpy(), expected)


def test_foreground_oversampling_share(tmp_path):
    # foreground is rare: random patches seldom hit it, forced ones always do
    shape = (12, 64, 64)
    img = np.zeros((1, *shape), np.float32)
    seg = np.zeros((1, *shape), np.uint8)
    seg[0, 6, 50:52, 50:52] = 1
    cache = write_cache(tmp_path / "c", n=1, volumes=[(img, seg)])
    plans = tiny_plans(patch_2d=(8, 8), batch_size=6)
    ds = _dataset(cache, plans, "2d", [whole_case_region(cache, "case_000")], n=600)
    has_fg = np.array([bool(ds[i]["label"].any()) for i in range(len(ds))])
    forced = np.array([ds.is_forced(i) for i in range(len(ds))])
    assert forced.mean() == pytest.approx(2 / 6)  # nnU-Net: round(6 * 0.67) = 4 random, 2 forced
    assert has_fg[forced].all()
    assert has_fg[~forced].mean() < 0.05
    assert 0.3 <= has_fg.mean() <= 0.4
    # the same with labels in a label_dir (oracle) and a sub-region: argwhere path
    label_dir = tmp_path / "labels"
    label_dir.mkdir()
    np.save(label_dir / "case_000.npy", seg[0])
    ds2 = _dataset(cache, plans, "2d", [Region("case_000", ((0, 12), (32, 64), (32, 64)))], n=60, label_dir=label_dir)
    assert all(bool(ds2[i]["label"].any()) for i in range(60) if ds2.is_forced(i))


def test_label_dir_replaces_cache_labels(tmp_path):
    cache = write_cache(tmp_path / "c", n=1, volumes=[_ids_volume()])
    label_dir = tmp_path / "labels"
    label_dir.mkdir()
    np.save(label_dir / "case_000.npy", np.full((12, 20, 18), 2, np.uint8))
    plans = tiny_plans(patch_2d=(8, 8))
    ds = _dataset(cache, plans, "2d", [Region("case_000", ((6, 7), (4, 12), (2, 10)))], n=3, label_dir=label_dir)
    assert (ds[0]["label"] == 2).all()


def test_sampling_is_reproducible_with_augmentation(tmp_path):
    cache = write_cache(tmp_path / "c", n=3)
    plans = tiny_plans()
    regions = [whole_case_region(cache, c) for c in CaseCache(cache).case_ids()]

    def draw(seed):
        ds = _dataset(cache, plans, "2d", regions, n=12, augment=True, seed=seed)
        return torch.stack([ds[i]["image"] for i in range(12)])

    a, b, c = draw(1), draw(1), draw(2)
    assert a.shape == (12, 1, 16, 16)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_dataloaders_with_workers(tmp_path):
    cache = write_cache(tmp_path / "c", n=3)
    cfg = tiny_plans().configuration("3d_fullres")
    regions = [whole_case_region(cache, c) for c in ["case_000", "case_001"]]

    def batches():
        dm = SegDataModule(cache, cfg, regions, val_cases=["case_002"], num_workers=2, seed=3)
        dm.setup("fit")
        return [b["image"] for b in dm.train_dataloader()], dm

    first, dm = batches()
    second, _ = batches()
    assert len(first) == cfg.trainer.iterations_per_epoch and first[0].shape == (4, 1, 8, 16, 16)
    assert all(torch.equal(x, y) for x, y in zip(first, second))
    assert not torch.equal(first[0][0], first[0][1])
    (val,) = list(dm.val_dataloader())
    assert val["image"].shape == (1, 1, 12, 20, 18) and val["label"].shape == (1, 1, 12, 20, 18)
    assert val["case_id"] == ["case_002"]


def test_bad_regions_fail_early(cache):
    cfg = tiny_plans().configuration("2d")
    with pytest.raises(AlsegError, match="no training regions"):
        SegDataModule(cache, cfg, [], num_workers=0).build_train_dataset()
    with pytest.raises(AlsegError, match="non-empty"):
        SegDataModule(cache, cfg, [Region("case_000", ((3, 3), (0, 5), (0, 5)))], num_workers=0).build_train_dataset()
