"""Training augmentation: MONAI dictionary transforms approximating nnU-Net v2's (the paper's Appendix F; docs/design.md).

Samples are dicts with ``"image"`` ``(C, *S)`` float and ``"label"`` ``(1, *S)`` integer
values, channel first, no batch axis. The order and probabilities follow nnU-Net v2's
``get_training_transforms``:

==========================  ==============================================  =========
nnU-Net                     here                                            p
==========================  ==============================================  =========
SpatialTransform: rotation  :class:`RandSpatiald`: ±180° in 2D, ±30° per    0.2
                            axis in 3D
SpatialTransform: scaling   :class:`RandSpatiald`: one factor 0.7–1.4       0.2
                            (> 1: objects smaller), with the rotation in
                            one resampling (MONAI ``Affine``) straight to
                            the patch size; else a centre crop
GaussianNoise               ``RandGaussianNoised`` std ~ U(0, 0.1)          0.1
GaussianBlur σ 0.5–1        ``RandGaussianSmoothd`` (p 0.2 x 0.5 per        0.1
                            channel)
BrightnessMultiplicative    ``RandScaleIntensityd`` ×0.75–1.25              0.15
ContrastAugmentation        :class:`RandContrastd` (below)                  0.15
SimulateLowResolution       ``RandSimulateLowResolutiond`` zoom 0.5–1       0.125
                            (p 0.25 x 0.5 per channel)
Gamma, inverted image       :class:`RandGammad` γ 0.7–1.5, retain stats     0.1
Gamma                       :class:`RandGammad` γ 0.7–1.5, retain stats     0.3
Mirror                      ``RandFlipd`` per axis                          0.5 each
==========================  ==============================================  =========

nnU-Net draws its per-channel transforms (blur, low resolution) with a probability per channel
inside the transform's own; here the product is the transform's probability and all channels go
together, the same for the one-channel images of most datasets. Ranges written ``a–b`` around 1
(contrast, gamma) are drawn as nnU-Net's ``BGContrast``: below or above 1 with even odds.

Elastic deformation is off, as in nnU-Net v2. Only :class:`RandSpatiald` and the flips touch
the label: it is resampled as nnU-Net resamples it, each label's indicator bilinearly and the
largest taken (so label values are preserved), with background outside the input; image and
label share one sampling grid, so they stay aligned.

Rotation and scaling read a *larger* patch (:func:`sampling_patch_size`, nnU-Net's
``get_patch_size``) around the final patch, so the corners of a rotated patch hold image rather
than padding where the data allows. Randomness comes from MONAI's per-transform
generators: ``Compose.set_random_state(seed)`` makes the pipeline deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import (
    Affine,
    CenterSpatialCrop,
    Compose,
    EnsureTyped,
    MapTransform,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandomizableTransform,
    RandScaleIntensityd,
    RandSimulateLowResolutiond,
)

__all__ = [
    "RandContrastd",
    "RandGammad",
    "RandSpatiald",
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
        self.factor = _bg_uniform(self.R, self.low, self.high)

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


def _bg_uniform(rng: np.random.RandomState, low: float, high: float) -> float:
    """nnU-Net's ``BGContrast`` draw: from ``[low, 1)`` or ``[1, high)`` with even odds (when 1 is inside)."""
    if low < 1 < high and rng.uniform() < 0.5:
        return float(rng.uniform(low, 1))
    return float(rng.uniform(max(low, 1) if low < 1 < high else low, high))


class RandSpatiald(RandomizableTransform, MapTransform):
    """nnU-Net v2's ``SpatialTransform`` (elastic deformation off) on MONAI's ``Affine``.

    Rotation (probability ``p_rotation``; one angle in 2D, one per axis in 3D, each uniform in
    ``[-rotation, rotation]``) and scaling (``p_scaling``; one factor for all axes, uniform in
    ``scale``; a factor > 1 samples a larger area, so objects get *smaller*, as in nnU-Net) are
    one affine map about the centre of the input, resampled once, straight to ``patch_size``.
    Without either it is a centre crop (no resampling). The image is interpolated bilinearly
    with zeros outside; the label is resampled as nnU-Net does (each label's indicator bilinearly,
    the largest wins; outside the input is background), so label values are preserved.
    """

    def __init__(
        self,
        keys: KeysCollection,
        patch_size: Sequence[int],
        rotation: float,
        scale: tuple[float, float] = SCALE_RANGE,
        p_rotation: float = P_ROTATION,
        p_scaling: float = P_SCALE,
        label_keys: KeysCollection = ("label",),
        allow_missing_keys: bool = False,
    ):
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, 1.0)
        self.patch_size = tuple(int(p) for p in patch_size)
        self.rotation = float(rotation)
        self.scale = scale
        self.p_rotation, self.p_scaling = p_rotation, p_scaling
        self.label_keys = set([label_keys] if isinstance(label_keys, str) else label_keys)
        self.angles: tuple[float, ...] = ()
        self.factor = 1.0
        self.crop = CenterSpatialCrop(self.patch_size)

    def randomize(self, data=None) -> None:
        dims = len(self.patch_size)
        rotate = self.R.uniform() < self.p_rotation
        scaling = self.R.uniform() < self.p_scaling
        n_angles = 1 if dims == 2 else 3
        self.angles = tuple(self.R.uniform(-self.rotation, self.rotation) for _ in range(n_angles)) if rotate else ()
        self.factor = float(self.R.uniform(*self.scale)) if scaling else 1.0

    def _affine(self, mode: str) -> Affine:
        dims = len(self.patch_size)
        rotate = (self.angles[0] if dims == 2 else self.angles) if self.angles else None
        return Affine(
            rotate_params=rotate,
            scale_params=[self.factor] * dims if self.factor != 1.0 else None,
            spatial_size=self.patch_size,
            mode=mode,
            padding_mode="zeros",
            image_only=True,
            dtype=torch.float32,
        )

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.randomize()
        keys = list(self.key_iterator(d))
        arrays = {k: d[k] if isinstance(d[k], torch.Tensor) else torch.as_tensor(np.asarray(d[k])) for k in keys}
        if not self.angles and self.factor == 1.0:
            d.update({k: self.crop(x) for k, x in arrays.items()})
            return d
        # every key's channels (labels as one indicator per value) through one resampling
        parts, values = [], {}
        for k, x in arrays.items():
            if k in self.label_keys:
                values[k] = torch.unique(x)
                parts.append(torch.stack([(x[0] == v).float() for v in values[k]]))
            else:
                parts.append(x.float())
        out = torch.as_tensor(self._affine("bilinear")(torch.cat(parts)))
        start = 0
        for (k, x), part in zip(arrays.items(), parts):
            y = out[start : start + len(part)]
            start += len(part)
            if k in self.label_keys:
                inside = y.sum(0) > 0.5  # outside the input: background
                best = values[k].to(x.dtype)[y.argmax(0)]
                d[k] = torch.where(inside, best, torch.zeros((), dtype=x.dtype))[None]
            else:
                d[k] = y.to(x.dtype) if x.is_floating_point() else y
        return d


class RandGammad(RandomizableTransform, MapTransform):
    """nnU-Net's gamma augmentation (``GammaTransform``): per channel, the intensities scaled to
    ``[0, 1]``, raised to ``γ`` (``BGContrast``-drawn from ``gamma``), scaled back; with
    ``retain_stats`` the channel's mean and standard deviation are restored; with
    ``invert_image`` it is applied to ``-x`` (and negated back). Image keys only.
    MONAI's ``RandAdjustContrastd`` draws ``γ`` uniformly instead."""

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.3,
        gamma: tuple[float, float] = (0.7, 1.5),
        invert_image: bool = False,
        retain_stats: bool = True,
        allow_missing_keys: bool = False,
    ):
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.gamma = gamma
        self.invert_image = invert_image
        self.retain_stats = retain_stats
        self.value = 1.0

    def randomize(self, data=None) -> None:
        super().randomize(None)
        if self._do_transform:
            self.value = _bg_uniform(self.R, *self.gamma)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.randomize()
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            img = torch.as_tensor(d[key])
            x = img.reshape(img.shape[0], -1).double()
            if self.invert_image:
                x = -x
            mean, sd = x.mean(1, keepdim=True), x.std(1, keepdim=True)
            low = x.min(1, keepdim=True).values
            span = x.max(1, keepdim=True).values - low
            x = ((x - low) / (span + 1e-7)) ** self.value * (span + 1e-7) + low
            if self.retain_stats:
                x = (x - x.mean(1, keepdim=True)) / (x.std(1, keepdim=True) + 1e-8) * sd + mean
            if self.invert_image:
                x = -x
            d[key] = x.reshape(img.shape).to(img.dtype)
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
    (:class:`RandSpatiald` resamples or centre-crops them to ``patch_size``).

    Args:
        patch_size: the plan's patch size (``dims`` axes).
        dims: 2 or 3.
        rotation: maximum rotation in radians (default :func:`default_rotation`).
        scale: scaling range, nnU-Net's sense (> 1: objects smaller; 0.7–1.4).
        mirror_axes: spatial axes to mirror (default all).
    """
    if dims not in (2, 3) or len(patch_size) != dims:
        raise ValueError(f"dims must be 2 or 3 and match patch_size {list(patch_size)}")
    rot = default_rotation(dims) if rotation is None else abs(rotation)
    linear = "bilinear" if dims == 2 else "trilinear"
    axes = range(dims) if mirror_axes is None else mirror_axes
    sigma = (0.5, 1.0)
    return Compose(
        [
            RandSpatiald(KEYS, patch_size, rotation=rot, scale=scale),
            RandGaussianNoised("image", prob=0.1, mean=0.0, std=0.1, sample_std=True),
            RandGaussianSmoothd("image", sigma_x=sigma, sigma_y=sigma, sigma_z=sigma, prob=0.2 * 0.5),
            RandScaleIntensityd("image", factors=0.25, prob=0.15),
            RandContrastd("image", prob=0.15, contrast_range=(0.75, 1.25)),
            RandSimulateLowResolutiond(
                "image", prob=0.25 * 0.5, zoom_range=(0.5, 1.0), downsample_mode="nearest-exact", upsample_mode=linear
            ),
            RandGammad("image", prob=0.1, gamma=(0.7, 1.5), invert_image=True, retain_stats=True),
            RandGammad("image", prob=0.3, gamma=(0.7, 1.5), invert_image=False, retain_stats=True),
            *[RandFlipd(KEYS, prob=0.5, spatial_axis=a) for a in axes],
            EnsureTyped("image", data_type="tensor", dtype=torch.float32, track_meta=False),
            EnsureTyped("label", data_type="tensor", dtype=torch.uint8, track_meta=False),
        ]
    )
