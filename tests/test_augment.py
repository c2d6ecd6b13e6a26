"""Augmentation: shapes, determinism, image/label alignment, label values, RandContrastd."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import CenterSpatialCropd, Compose, RandFlipd, Rotated

from alseg.data.augment import RandContrastd, RandGammad, RandSpatiald, get_training_transforms, sampling_patch_size


def _sample(shape):
    """A ball whose intensity ramps through 0.5 at its border; label 1 inside, 2 in its core."""
    grids = np.meshgrid(*[np.arange(s) - s / 2 + 0.5 for s in shape], indexing="ij")
    r = np.sqrt(sum(g**2 for g in grids))
    blob = np.clip((0.3 * min(shape) - r) / 2 + 0.5, 0, 1).astype(np.float32)
    label = (blob > 0.5).astype(np.uint8) + (r < 0.1 * min(shape)).astype(np.uint8)
    return {"image": blob[None], "label": label[None]}


def test_sampling_patch_size_is_nnunets():
    assert sampling_patch_size([56, 40]) == (80, 80)  # 90° capped rotation of (56, 40), / 0.7
    big = sampling_patch_size([16, 24, 24])
    assert all(b >= p for b, p in zip(big, [16, 24, 24]))
    assert sampling_patch_size([16, 24, 24], rotation=0, scale=(1, 1)) == (16, 24, 24)


@pytest.mark.parametrize("patch", [(16, 12), (8, 12, 12)])
def test_shapes_dtypes_and_determinism(patch):
    dims = len(patch)
    t = get_training_transforms(patch, dims)
    data = _sample(sampling_patch_size(patch))

    def run(seed):
        t.set_random_state(seed)
        return [t(data) for _ in range(6)]

    a, b, c = run(0), run(0), run(1)
    for out in a:
        assert out["image"].shape == (1, *patch) and out["image"].dtype == torch.float32
        assert out["label"].shape == (1, *patch) and out["label"].dtype == torch.uint8
        assert type(out["image"]) is torch.Tensor  # no MetaTensor into the batch
    assert all(torch.equal(x["image"], y["image"]) and torch.equal(x["label"], y["label"]) for x, y in zip(a, b))
    assert not all(torch.equal(x["image"], y["image"]) for x, y in zip(a, c))


@pytest.mark.parametrize("patch", [(16, 12), (8, 12, 12)])
def test_label_values_are_preserved(patch):
    t = get_training_transforms(patch, len(patch))
    t.set_random_state(3)
    data = _sample(sampling_patch_size(patch))
    for _ in range(20):
        assert set(torch.unique(t(data)["label"]).tolist()) <= {0, 1, 2}


def test_only_spatial_transforms_touch_the_label():
    t = get_training_transforms((16, 12), 2)
    touching = [type(x).__name__ for x in t.transforms if "label" in getattr(x, "keys", ())]
    assert touching == ["RandSpatiald", "RandFlipd", "RandFlipd", "EnsureTyped"]


def test_flips_keep_image_and_label_aligned():
    data = _sample((10, 12, 14))
    data["image"] = data["label"].astype(np.float32) * 10  # the image *is* the label
    t = Compose([RandFlipd(("image", "label"), prob=0.5, spatial_axis=a) for a in range(3)])
    t.set_random_state(0)
    for _ in range(8):
        out = t(data)
        np.testing.assert_array_equal(np.asarray(out["image"]), np.asarray(out["label"]) * 10.0)


@pytest.mark.parametrize("patch", [(24, 24), (12, 20, 20)])
def test_spatial_transforms_keep_image_and_label_aligned(patch):
    """With every spatial transform on, the thresholded transformed image matches the transformed label."""
    t = get_training_transforms(patch, len(patch))
    spatial = Compose([x for x in t.transforms if "label" in getattr(x, "keys", ())])
    for x in spatial.transforms:
        if hasattr(x, "prob"):
            x.prob = 1.0
    spatial.set_random_state(5)
    data = _sample(sampling_patch_size(patch))
    for _ in range(5):
        out = spatial(data)
        fg_img = np.asarray(out["image"][0]) > 0.5
        fg_lab = np.asarray(out["label"][0]) > 0
        dice = 2 * (fg_img & fg_lab).sum() / (fg_img.sum() + fg_lab.sum())
        assert dice > 0.85  # boundary voxels of a small ball differ between linear and nearest
        shift = np.argwhere(fg_img).mean(0) - np.argwhere(fg_lab).mean(0)
        assert np.abs(shift).max() < 0.5  # but no systematic misalignment


def test_rand_contrast():
    img = torch.tensor([[[0.0, 1.0], [2.0, 5.0]]])
    t = RandContrastd("image", prob=1.0, contrast_range=(0.5, 1.5))
    t.set_random_state(0)
    for _ in range(10):
        out = t({"image": img, "label": torch.zeros(1, 2, 2)})
        f = t.factor
        assert 0.5 <= f < 1.5
        expected = torch.clamp((img - 2.0) * f + 2.0, 0.0, 5.0)
        torch.testing.assert_close(out["image"], expected)
        assert out["label"].abs().sum() == 0
    t0 = RandContrastd("image", prob=0.0)
    assert torch.equal(t0({"image": img})["image"], img)


def _fixed_spatial(patch, angle: float | None, factor: float | None) -> RandSpatiald:
    """A RandSpatiald that always applies the given rotation angle / scale factor."""
    t = RandSpatiald(("image", "label"), patch, rotation=1.0, p_rotation=0.0, p_scaling=0.0)

    def fixed(data=None):
        t.angles = () if angle is None else ((angle,) if len(patch) == 2 else (angle, 0.0, 0.0))
        t.factor = 1.0 if factor is None else factor

    t.randomize = fixed
    return t


def test_rand_spatial_without_rotation_or_scaling_is_the_centre_crop():
    data = _sample((30, 25))
    out = _fixed_spatial((16, 12), None, None)(data)
    ref = CenterSpatialCropd(("image", "label"), (16, 12))(data)
    for key in ("image", "label"):
        np.testing.assert_array_equal(np.asarray(out[key]), np.asarray(ref[key]))


def test_rand_spatial_rotation_equals_monai_rotate_then_crop():
    """The library path as the reference: one resampling to the patch equals MONAI's Rotated
    (same size, bilinear, zeros) followed by the centre crop, for the image."""
    data = _sample((40, 40))
    for angle in (0.3, -1.2, 2.5):
        out = _fixed_spatial((24, 20), angle, None)(data)
        ref = CenterSpatialCropd("image", (24, 20))(
            Rotated("image", angle, keep_size=True, mode="bilinear", padding_mode="zeros")(data)
        )
        np.testing.assert_allclose(np.asarray(out["image"]), np.asarray(ref["image"]), atol=1e-5)


def test_rand_spatial_scale_above_one_makes_objects_smaller_as_nnunet():
    data = _sample((48, 48))
    area = {}
    for factor in (0.7, 1.0, 1.4):
        out = _fixed_spatial((48, 48), None if factor == 1.0 else 0.0, None if factor == 1.0 else factor)(data)
        area[factor] = int((np.asarray(out["label"]) > 0).sum())
    assert area[1.4] < area[1.0] < area[0.7]
    assert abs(area[1.4] / area[1.0] - 1 / 1.4**2) < 0.1
    assert abs(area[0.7] / area[1.0] - 1 / 0.7**2) < 0.2


def test_rand_spatial_label_background_outside_and_values_kept():
    data = _sample((20, 20))
    data["label"] = data["label"] * 3  # values 0, 3, 6
    out = _fixed_spatial((28, 28), 0.7, 1.3)(data)  # a larger patch than the input: corners outside
    lab = np.asarray(out["label"])
    assert set(np.unique(lab).tolist()) <= {0, 3, 6} and lab.dtype == np.uint8
    assert lab[0, 0, 0] == 0 and lab[0, -1, -1] == 0


def test_rand_gamma_is_nnunets_gamma():
    img = torch.linspace(-1, 3, 50).reshape(1, 5, 10)
    t = RandGammad("image", prob=1.0, gamma=(0.7, 1.5), retain_stats=True)
    t.set_random_state(0)
    below = 0
    for _ in range(200):
        out = t({"image": img})["image"]
        g = t.value
        below += g < 1
        low, span = img.min(), img.max() - img.min()
        x = ((img - low) / (span + 1e-7)) ** g * (span + 1e-7) + low
        x = (x - x.mean()) / (x.std() + 1e-8) * img.std() + img.mean()
        torch.testing.assert_close(out, x, atol=1e-5, rtol=1e-5)
    assert 70 < below < 130  # below or above 1 with even odds (nnU-Net's BGContrast)
    inv = RandGammad("image", prob=1.0, gamma=(2.0, 2.0), invert_image=True, retain_stats=False)
    out = inv({"image": img})["image"]
    neg = -img
    low, span = neg.min(), neg.max() - neg.min()
    torch.testing.assert_close(out, -(((neg - low) / (span + 1e-7)) ** 2 * (span + 1e-7) + low), atol=1e-5, rtol=1e-5)
