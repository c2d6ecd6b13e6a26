"""Items smaller than the patch: training on partial labels with an ignore label (nnU-Net v2's way).

Patches hold the image around the labelled regions, label voxels outside every region are the
ignore value, and the loss counts neither Dice nor cross-entropy there; with the default items
(ignore label unset) sampling and loss are exactly what they were before partial labels existed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from builders import tiny_plans, write_cache

from alseg.data.datamodule import PatchDataset, Region, SegDataModule
from alseg.model.loss import SegLoss
from alseg.model.module import SegmentationModule

IGNORE = 255
SHAPE = (12, 20, 18)


def _ids_volume(shape=SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """An image whose value is 1 + the flat voxel index (a patch tells where each voxel came from)."""
    img = (np.arange(np.prod(shape), dtype=np.float32) + 1).reshape(shape)[None]
    seg = np.zeros((1, *shape), np.uint8)
    seg[0, 3:6, 4:9, 2:5] = 1
    seg[0, 8:10, 12:16, 10:14] = 2
    return img, seg


def _partial(cache, config: str, regions, label_dir=None, n=48, oversample=0.5, augment=False, **kw) -> PatchDataset:
    plans = tiny_plans(patch_2d=(8, 8), patch_3d=(8, 16, 16))
    cfg = plans.configuration(config)
    cfg = cfg.model_copy(update={"trainer": cfg.trainer.model_copy(update={"foreground_oversample": oversample})})
    dm = SegDataModule(
        cache, cfg, regions, label_dir=label_dir, num_workers=0, augment=augment, ignore_label=IGNORE, **kw
    )
    ds = dm.build_train_dataset()
    ds.length = n
    return ds


@pytest.mark.parametrize("config", ["2d", "3d_fullres"])
def test_patches_read_the_image_around_the_items_and_ignore_unlabelled_voxels(tmp_path: Path, config: str):
    cache = write_cache(tmp_path / "c", n=1, volumes=[_ids_volume()])
    truth = _ids_volume()[1][0]
    # two small items (4 x 4 x 4 in 3D, a 4 x 4 window of one slice in 2D), one over class 1
    boxes = [((3, 7), (4, 8), (2, 6)), ((0, 4), (14, 18), (12, 16))]
    if config == "2d":
        boxes = [((4, 5), (4, 8), (2, 6)), ((1, 2), (14, 18), (12, 16))]
    regions = [Region("case_000", b) for b in boxes]
    inside = np.zeros(SHAPE, bool)
    for b in boxes:
        inside[tuple(slice(a, e) for a, e in b)] = True
    ds = _partial(cache, config, regions)
    seen_outside = 0
    for i in range(len(ds)):
        s = ds[i]
        img, lab = s["image"][0].numpy(), s["label"][0].numpy()
        idx = img.astype(np.int64) - 1
        real = idx >= 0  # inside the case (zero only where the patch passes the case's border)
        flat_inside = inside.ravel()[idx[real]]
        assert flat_inside.any()  # every patch holds labelled voxels
        seen_outside += int((~flat_inside).sum())
        # inside the items: the truth; outside them: the ignore value
        np.testing.assert_array_equal(lab[real][flat_inside], truth.ravel()[idx[real][flat_inside]])
        assert (lab[real][~flat_inside] == IGNORE).all() and (lab[~real] == IGNORE).all()
    assert seen_outside > 0  # the image outside the items was read, not zero padding
    assert ds.foreground(0) and 1 in ds.foreground(0) and not ds.foreground(1)


def test_oversampling_centres_on_labelled_foreground_only(tmp_path: Path):
    cache = write_cache(tmp_path / "c", n=1, volumes=[_ids_volume()])
    label_dir = tmp_path / "labels"
    label_dir.mkdir()
    labels = np.full(SHAPE, IGNORE, np.uint8)  # the label store: only the item is annotated
    labels[3:7, 4:8, 2:6] = _ids_volume()[1][0][3:7, 4:8, 2:6]
    np.save(label_dir / "case_000.npy", labels)
    ds = _partial(cache, "3d_fullres", [Region("case_000", ((3, 7), (4, 8), (2, 6)))], label_dir=label_dir, n=60)
    assert set(ds.foreground(0)) == {1}  # class 2 lies outside the item: never a centre
    for i in range(len(ds)):
        lab = ds[i]["label"][0].numpy()
        assert not (lab == 2).any()
        if ds.is_forced(i):
            assert (lab == 1).any()


def test_loss_ignores_unlabelled_voxels_whatever_their_labels(tmp_path: Path):
    """Training never counts an unlabelled voxel: changing the label volume outside the labelled
    items changes neither the sampled batches nor the loss; with nothing ignored the masked loss
    is the default loss."""
    cache = write_cache(tmp_path / "c", n=1, volumes=[_ids_volume()])
    truth = _ids_volume()[1][0]
    boxes = [((3, 7), (4, 8), (2, 6)), ((6, 10), (12, 16), (10, 14))]
    regions = [Region("case_000", b) for b in boxes]
    rng = np.random.default_rng(0)
    dirs = []
    for name, outside in (("a", np.full(SHAPE, IGNORE)), ("b", rng.integers(0, 3, SHAPE))):
        vol = outside.astype(np.uint8)
        for b in boxes:
            sl = tuple(slice(a, e) for a, e in b)
            vol[sl] = truth[sl]
        (tmp_path / name).mkdir()
        np.save(tmp_path / name / "case_000.npy", vol)
        dirs.append(tmp_path / name)
    plans = tiny_plans(patch_2d=(8, 8), patch_3d=(8, 16, 16))
    torch.manual_seed(0)
    module = SegmentationModule(plans, "3d_fullres", ignore_label=IGNORE)
    module.net.eval()
    losses = []
    for d in dirs:
        ds = _partial(cache, "3d_fullres", regions, label_dir=d, n=8, augment=True, seed=4)
        batch = {k: torch.stack([ds[i][k] for i in range(8)]) for k in ("image", "label")}
        assert (batch["label"] == IGNORE).any() and (batch["label"] != IGNORE).any()
        with torch.no_grad():
            losses.append(float(module.loss(module.net(batch["image"]), batch["label"])))
    assert losses[0] == losses[1]
    # the loss itself: ignored voxels' values do not matter, their gradient is zero
    logits = [torch.randn(2, 3, 8, 12, 12, requires_grad=True), torch.randn(2, 3, 8, 6, 6)]
    target = torch.randint(0, 3, (2, 1, 8, 12, 12))
    masked = target.clone()
    masked[:, :, :4] = IGNORE
    other = masked.clone()
    other[:, :, :4] = torch.randint(0, 3, other[:, :, :4].shape)
    loss = SegLoss(2, ignore_label=IGNORE)
    value = loss(logits, masked)
    value.backward()
    assert logits[0].grad[:, :, :4].abs().max() == 0 and logits[0].grad[:, :, 4:].abs().max() > 0
    assert float(value.detach()) != pytest.approx(float(SegLoss(2, ignore_label=IGNORE)(logits, other).detach()))
    assert float(SegLoss(2)(logits, target).detach()) == pytest.approx(float(loss(logits, target).detach()), rel=1e-6)
    empty = torch.full_like(target, IGNORE)
    assert torch.isfinite(loss(logits, empty))


def test_default_items_train_exactly_as_before(tmp_path: Path):
    """Without an ignore label (the default item size), patches and losses are the numbers the
    code gave before partial labels existed (recorded from commit ecf7e9c with the same seeds)."""
    cache = write_cache(tmp_path / "c", n=2)
    plans = tiny_plans()
    regions = [Region("case_000", ((0, 8), (0, 16), (2, 18))), Region("case_001", ((4, 12), (4, 20), (0, 16)))]
    h = hashlib.sha256()
    for config in ("2d", "3d_fullres"):
        regs = regions if config == "3d_fullres" else [Region(r.case_id, ((5, 6), *r.box[1:])) for r in regions]
        dm = SegDataModule(cache, plans.configuration(config), regs, num_workers=0, augment=True, seed=3)
        ds = dm.build_train_dataset()
        for i in range(16):
            s = ds[i]
            h.update(s["image"].numpy().tobytes())
            h.update(s["label"].numpy().tobytes())
    assert h.hexdigest()[:16] == "fb1122ad0b4e6085"
    torch.manual_seed(0)
    module = SegmentationModule(plans, "3d_fullres")
    assert "ignore_label" not in module.hparams and module.loss.ignore_label is None
    dm = SegDataModule(cache, module.config, regions, num_workers=0, augment=True, seed=5)
    dm.setup("fit")
    opt = torch.optim.SGD(module.net.parameters(), lr=1e-2, momentum=0.99, nesterov=True)
    losses = []
    for batch in dm.train_dataloader():
        value = module.loss(module.net(batch["image"]), batch["label"])
        opt.zero_grad()
        value.backward()
        opt.step()
        losses.append(float(value.detach()))
    assert losses == pytest.approx([2.0626526, 2.0311687, 1.9891322], abs=2e-7)


@pytest.mark.parametrize("config", ["2d", "3d_fullres"])
def test_small_items_are_scored_in_a_patch_of_their_context(config: str):
    from types import SimpleNamespace

    from alseg.data.pool import Pool
    from alseg.scoring.pool_inference import item_batches

    image = _ids_volume()[0]
    patch, item = ((8, 8), (4, 4)) if config == "2d" else ((8, 16, 16), (4, 4, 4))
    pool = Pool.build({"case_000": SHAPE}, config, patch, item_size=item)
    ctx = SimpleNamespace(pool=pool, load_image=lambda c: image, device="cpu", batch_size=5)
    n = 0
    for idx, x, valid in item_batches(ctx, np.arange(len(pool))):
        for j, i in enumerate(idx):
            values = x[j, 0].numpy()
            assert (values > 0).all()  # a whole window of the case: the image around the item, no padding
            box = pool[int(i)].box
            own = image[0][tuple(slice(a, b) for a, b in box)]
            if config == "2d":
                own = own[0]
            assert int(valid[j].sum()) == own.size
            np.testing.assert_array_equal(np.sort(values[valid[j].numpy()]), np.sort(own.ravel()))
            n += 1
    assert n == len(pool) == (12 * 5 * 5 if config == "2d" else 3 * 5 * 5)


@pytest.mark.parametrize("batch", [True, False])
def test_masked_loss_is_nnunets_formula_over_the_annotated_voxels(batch: bool):
    """Soft Dice over annotated voxels only (background excluded, smooth 1e-5) + CE with
    ``ignore_index``, written out here as the known answer."""
    from alseg.model.loss import SMOOTH, MaskedDiceCELoss

    torch.manual_seed(1)
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64)
    t = torch.randint(0, 3, (2, 1, 6, 7))
    t[torch.rand(t.shape) < 0.4] = IGNORE
    labels, keep = t[:, 0], (t[:, 0] != IGNORE)
    p = x.softmax(1) * keep.unsqueeze(1)
    y = torch.nn.functional.one_hot(torch.where(keep, labels, 0), 3).movedim(-1, 1).double() * keep.unsqueeze(1)
    axes = [0, 2, 3] if batch else [2, 3]
    dice = 1 - (2 * (p * y).sum(axes) + SMOOTH) / (p.sum(axes) + y.sum(axes) + SMOOTH)
    dice = dice[1:] if batch else dice[:, 1:]
    expected = dice.mean() + torch.nn.functional.cross_entropy(x, labels, ignore_index=IGNORE)
    assert float(MaskedDiceCELoss(IGNORE, batch=batch)(x, t)) == pytest.approx(float(expected), rel=1e-12)
