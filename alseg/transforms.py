"""Training augmentation: MONAI dictionary transforms approximating nnU-Net v2's (the paper's Appendix F; docs/design.md).

Samples are dicts with ``"image"`` ``(C, *S)`` float and ``"label"`` ``(1, *S)`` integer
values, channel first, no batch axis. The order and probabilities follow nnU-Net v2's
``get_training_transforms``:

==========================  ==============================================  =========
nnU-Net                     here                                            p
==========================  ==============================================  =========
SpatialTransform: rotation  ``RandRotated`` ±180° in 2D, ±30° per axis 3D   0.2
SpatialTransform: scaling   ``RandZoomd`` 0.7–1.4, isotropic                0.2
(patch crop)                ``CenterSpatialCropd`` to the patch size        1
GaussianNoise var 0–0.1     ``RandGaussianNoised`` std ~ U(0, √0.1)         0.1
GaussianBlur σ 0.5–1        ``RandGaussianSmoothd``                         0.2
BrightnessMultiplicative    ``RandScaleIntensityd`` ×0.75–1.25              0.15
ContrastAugmentation        :class:`RandContrastd` (below)                  0.15
SimulateLowResolution       ``RandSimulateLowResolutiond`` zoom 0.5–1       0.25
Gamma, inverted image       ``RandAdjustContrastd`` γ 0.7–1.5, retain stats 0.1
Gamma                       ``RandAdjustContrastd`` γ 0.7–1.5, retain stats 0.3
Mirror                      ``RandFlipd`` per axis                          0.5 each
==========================  ==============================================  =========

Elastic deformation is off, as in nnU-Net v2. Only rotation, zoom, crop and flips touch the
label, always with nearest-neighbour interpolation and zero (background) padding, so label
values are preserved and image and label stay aligned.

Rotation and zoom sample from a *larger* patch (:func:`sampling_patch_size`, nnU-Net's
``get_patch_size``) and crop the centre afterwards, so the corners of a rotated patch hold
image rather than padding where the data allows. Randomness comes from MONAI's per-transform
generators: ``Compose.set_random_state(seed)`` makes the pipeline deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import (
    CenterSpatialCropd,
    Compose,
    EnsureTyped,
    MapTransform,
    RandAdjustContrastd,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandomizableTransform,
    RandRotated,
    RandScaleIntensityd,
    RandSimulateLowResolutiond,
    RandZoomd,
)

__all__ = [
    "RandContrastd",
    "default_rotation",
    "get_training_transforms",
    "sampling_patch_size",
]

KEYS = ("image", "label")
SCALE_RANGE = (0.7, 1.4)
P_ROTATION = 0.2
P_SCALE = 0.2


def default_rotation(dims: int) -> float:
    """nnU-Net's maximum rotation angle in radians: 180° in 2D, 30° (per axis) in 3D."""
    return math.pi if dims == 2 else math.radians(30)


def _rotate(v: np.ndarray, angle: float, axes: tuple[int, int]) -> np.ndarray:
    out = v.astype(float).copy()
    i, j = axes
    c, s = math.cos(angle), math.sin(angle)
    out[i], out[j] = c * v[i] - s * v[j], s * v[i] + c * v[j]
    return out


def sampling_patch_size(
    patch_size: Sequence[int], rotation: float | None = None, scale: tuple[float, float] = SCALE_RANGE
) -> tuple[int, ...]:
    """The patch to sample before rotation and scaling so that cropping the centre afterwards
    mostly holds data (nnU-Net v2's ``get_patch_size``): the patch's extent vector rotated by
    the largest angle (capped at 90°) about each axis, the per-axis maximum, divided by the
    smallest scale. Never smaller than ``patch_size``."""
    p = np.asarray(patch_size, dtype=float)
    dims = len(p)
    angle = min(math.pi / 2, abs(default_rotation(dims) if rotation is None else rotation))
    planes = [(0, 1)] if dims == 2 else [(1, 2), (0, 2), (0, 1)]
    extent = np.max(np.abs(np.stack([p] + [_rotate(p, angle, ax) for ax in planes])), axis=0)
    extent = extent / min(scale)
    return tuple(int(max(math.ceil(e - 1e-6), q)) for e, q in zip(extent, patch_size))


class RandContrastd(RandomizableTransform, MapTransform):
    """nnU-Net's contrast augmentation (batchgenerators ``ContrastAugmentationTransform``).

    Per channel: ``x <- (x - mean) * f + mean``, then clipped to the channel's original
    ``[min, max]`` (``preserve_range``). The factor ``f`` is drawn, with even odds, from
    ``[low, 1)`` or ``[1, high)``, so contrast is reduced as often as increased. MONAI's
    ``RandAdjustContrastd`` is a gamma transform, not this. Image keys only.
    """

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.15,
        contrast_range: tuple[float, float] = (0.75, 1.25),
        preserve_range: bool = True,
        allow_missing_keys: bool = False,
    ):
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.low, self.high = contrast_range
        self.preserve_range = preserve_range
        self.factor = 1.0

    def randomize(self, data=None) -> None:
        super().randomize(None)
        if not self._do_transform:
            return
        if self.R.uniform() < 0.5 and self.low < 1:
            self.factor = self.R.uniform(self.low, 1)
        else:
            self.factor = self.R.uniform(max(self.low, 1), self.high)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.randomize()
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            img = torch.as_tensor(d[key])
            flat = img.reshape(img.shape[0], -1)
            shape = (-1,) + (1,) * (img.ndim - 1)
            mean = flat.mean(1).reshape(shape)
            out = (img - mean) * self.factor + mean
            if self.preserve_range:
                out = torch.clamp(out, flat.min(1).values.reshape(shape), flat.max(1).values.reshape(shape))
            d[key] = out.to(img.dtype)
        return d


def get_training_transforms(
    patch_size: Sequence[int],
    dims: int,
    *,
    rotation: float | None = None,
    scale: tuple[float, float] = SCALE_RANGE,
    mirror_axes: Sequence[int] | None = None,
) -> Compose:
    """The augmentation pipeline for patches of ``sampling_patch_size(patch_size, rotation, scale)``
    (larger inputs are centre-cropped to ``patch_size`` after rotation and scaling).

    Args:
        patch_size: the plan's patch size (``dims`` axes).
        dims: 2 or 3.
        rotation: maximum rotation in radians (default :func:`default_rotation`).
        scale: zoom range (nnU-Net: 0.7–1.4).
        mirror_axes: spatial axes to mirror (default all).
    """
    if dims not in (2, 3) or len(patch_size) != dims:
        raise ValueError(f"dims must be 2 or 3 and match patch_size {list(patch_size)}")
    rot = default_rotation(dims) if rotation is None else abs(rotation)
    linear = "bilinear" if dims == 2 else "trilinear"
    axes = range(dims) if mirror_axes is None else mirror_axes
    rot_range = {"range_x": rot} if dims == 2 else {"range_x": rot, "range_y": rot, "range_z": rot}
    sigma = (0.5, 1.0)
    return Compose(
        [
            RandRotated(
                KEYS, prob=P_ROTATION, keep_size=True, mode=(linear, "nearest"), padding_mode="zeros", **rot_range
            ),
            RandZoomd(
                KEYS,
                prob=P_SCALE,
                min_zoom=scale[0],
                max_zoom=scale[1],
                mode=(linear, "nearest-exact"),  # torch's plain "nearest" is shifted by half a voxel
                padding_mode="constant",
                keep_size=True,
            ),
            CenterSpatialCropd(KEYS, roi_size=list(patch_size)),
            RandGaussianNoised("image", prob=0.1, mean=0.0, std=math.sqrt(0.1), sample_std=True),
            RandGaussianSmoothd("image", sigma_x=sigma, sigma_y=sigma, sigma_z=sigma, prob=0.2),
            RandScaleIntensityd("image", factors=0.25, prob=0.15),
            RandContrastd("image", prob=0.15, contrast_range=(0.75, 1.25)),
            RandSimulateLowResolutiond(
                "image", prob=0.25, zoom_range=(0.5, 1.0), downsample_mode="nearest", upsample_mode=linear
            ),
            RandAdjustContrastd("image", prob=0.1, gamma=(0.7, 1.5), invert_image=True, retain_stats=True),
            RandAdjustContrastd("image", prob=0.3, gamma=(0.7, 1.5), invert_image=False, retain_stats=True),
            *[RandFlipd(KEYS, prob=0.5, spatial_axis=a) for a in axes],
            EnsureTyped("image", data_type="tensor", dtype=torch.float32, track_meta=False),
            EnsureTyped("label", data_type="tensor", dtype=torch.uint8, track_meta=False),
        ]
    )
