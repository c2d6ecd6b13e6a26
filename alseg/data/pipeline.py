"""One case through nnU-Net v2's ``DefaultPreprocessor.run_case_npy``, composed of the pure steps.

In this order:

1. **transpose** the (C, z, y, x) arrays by the plan's ``transpose_forward`` (lowest-resolution
   axis first);
2. **crop** to the bounding box of the non-zero region over all channels (holes filled;
   :mod:`alseg.dataset.crop`);
3. **normalise** each channel by the plan's scheme *before* resampling, so that the non-zero
   mask still fits the image (:mod:`alseg.data.normalize`);
4. **resample** to the configuration's spacing (:mod:`alseg.dataset.resample`).

Differences from nnU-Net, on purpose and small:

* nnU-Net writes -1 into the label where the image is outside the non-zero mask; alseg keeps 0
  there (nnU-Net's trainer maps -1 to 0 anyway). The mask is still used internally for
  ``use_mask_for_norm``.
* ``class_locations`` keep at most 10,000 voxels per label (nnU-Net keeps at least 1 % of a
  large class), as spatial coordinates without nnU-Net's leading channel index.

Nothing here touches the disk: :mod:`alseg.data.cache` stores what :func:`preprocess_case`
returns.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from alseg.data.normalize import normalize
from alseg.dataset.crop import bbox_of_mask, create_nonzero_mask, crop_to_nonzero
from alseg.dataset.io import Geometry
from alseg.dataset.resample import compute_new_shape, resample
from alseg.errors import AlsegError
from alseg.plans.models import Plans

__all__ = [
    "CLASS_LOCATION_SEED",
    "MAX_CLASS_LOCATIONS",
    "PREPROCESS_VERSION",
    "grid_properties",
    "label_dtype",
    "label_to_grid",
    "preprocess_case",
    "sample_class_locations",
    "target_spacing",
]

PREPROCESS_VERSION = 1
"""Bump when the preprocessing maths change: every cache built before is then rebuilt."""

MAX_CLASS_LOCATIONS = 10_000
"""Voxel coordinates kept per foreground label for foreground oversampling."""

CLASS_LOCATION_SEED = 1234
"""Fixed, so that rebuilding a cache gives the same class locations."""


def sample_class_locations(
    seg: np.ndarray, labels: Sequence[int], max_samples: int = MAX_CLASS_LOCATIONS, seed: int = CLASS_LOCATION_SEED
) -> dict[str, list[list[int]]]:
    """Up to ``max_samples`` voxel coordinates per label, drawn without replacement (fixed seed)."""
    rng = np.random.RandomState(seed)
    out: dict[str, list[list[int]]] = {}
    for lab in labels:
        coords = np.argwhere(seg == lab)
        if len(coords) > max_samples:
            coords = coords[np.sort(rng.choice(len(coords), max_samples, replace=False))]
        out[str(int(lab))] = coords.astype(int).tolist()
    return out


def label_dtype(seg: np.ndarray) -> type:
    """uint8 when every label fits, else int16 (nnU-Net stores segmentations as small ints)."""
    return np.uint8 if seg.size == 0 or (seg.min() >= 0 and seg.max() <= 255) else np.int16


def target_spacing(spacing: Sequence[float], config_spacing: Sequence[float]) -> tuple[list[float], int | None]:
    """The spacing a case is resampled to, and the axis never resampled (0 for 2D, else None).

    2D configurations keep the case's own spacing between slices and resample in-plane only.
    """
    target = [float(s) for s in config_spacing]
    if len(target) < len(spacing):
        return [float(spacing[0])] + target, 0
    return target, None


def grid_properties(image: np.ndarray, geometry: Geometry, plans: Plans, config_name: str) -> dict[str, Any]:
    """The properties :func:`preprocess_case` returns that map between the file's grid and the
    plan's (shapes, crop box, spacings, transpose), without normalising or resampling anything:
    enough to map annotations or predictions on the plan's grid back to the file."""
    config = plans.configuration(config_name)
    tf = list(plans.transpose_forward)
    transposed = image.transpose([0, *[t + 1 for t in tf]])
    spacing = [float(geometry.spacing[t]) for t in tf]
    bbox = bbox_of_mask(create_nonzero_mask(transposed))
    shape_after_crop = [hi - lo for lo, hi in bbox]
    target, _ = target_spacing(spacing, config.spacing)
    return {
        "original_shape": [int(s) for s in image.shape[1:]],
        "original_geometry": geometry.to_json(),
        "transpose_forward": tf,
        "shape_before_cropping": list(transposed.shape[1:]),
        "bbox_used_for_cropping": bbox,
        "shape_after_cropping": shape_after_crop,
        "spacing_before_resampling": spacing,
        "shape_after_resampling": compute_new_shape(shape_after_crop, spacing, target),
        "spacing_after_resampling": target,
    }


def _resample_label(seg, new_shape, spacing, target, rs, slice_axis: int | None) -> np.ndarray:
    """The label step of :func:`preprocess_case` (and :func:`label_to_grid`): ``(1, *new_shape)``."""
    return resample(
        seg[None],
        new_shape,
        spacing,
        target,
        True,
        rs.label_order,
        rs.order_z,
        rs.separate_z_anisotropy_threshold,
        slice_axis,
    )


def label_to_grid(label: np.ndarray, props: dict[str, Any], plans: Plans, config_name: str) -> np.ndarray:
    """A label map ``(z, y, x)`` on the file's grid as ``(*grid)`` on the plan's, through the same
    steps :func:`preprocess_case` takes for a case's label: transpose, crop to the case's crop box
    (``props``, as the cache stores them), resample labels as the plan says.

    For a case's own label file this gives exactly the cached label.
    """
    config = plans.configuration(config_name)
    label = np.asarray(label)
    if list(label.shape) != list(props["original_shape"]):
        raise AlsegError(f"label shape {label.shape} differs from the image {tuple(props['original_shape'])}")
    seg = label.transpose(list(props["transpose_forward"]))
    seg = np.ascontiguousarray(seg[tuple(slice(lo, hi) for lo, hi in props["bbox_used_for_cropping"])])
    spacing = [float(s) for s in props["spacing_before_resampling"]]
    target, slice_axis = target_spacing(spacing, config.spacing)
    out = _resample_label(seg, props["shape_after_resampling"], spacing, target, config.resampling, slice_axis)[0]
    return out.astype(label_dtype(out), copy=False)


def preprocess_case(
    image: np.ndarray, label: np.ndarray | None, geometry: Geometry, plans: Plans, config_name: str
) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """One case as the cache stores it: ``(data, seg, properties)``.

    ``image`` is (C, z, y, x) in file order, ``label`` (z, y, x) or None (an unlabelled image
    to predict). ``data`` is float32 (C, *shape), ``seg`` uint8/int16 (1, *shape) or None, both
    in the plan's transposed axis order on the configuration's grid. ``properties`` holds what
    is needed to map a prediction back: ``original_shape`` and ``original_geometry`` (file
    order), ``transpose_forward``, ``shape_before_cropping``, ``bbox_used_for_cropping``
    (``[[lo, hi), ...]``), ``shape_after_cropping``, ``spacing_before_resampling``,
    ``shape_after_resampling`` and ``spacing_after_resampling`` (all transposed), plus, when a
    label is given, ``voxels_per_class`` and ``class_locations`` on the resampled grid.
    """
    config = plans.configuration(config_name)
    if image.ndim != 4:
        raise AlsegError(f"expected an image of shape (C, z, y, x), got {image.shape}")
    if image.shape[0] != len(config.normalization):
        raise AlsegError(
            f"image has {image.shape[0]} channel(s), the plan expects {len(config.normalization)} — plan this dataset again"
        )
    if label is not None and label.shape != image.shape[1:]:
        raise AlsegError(f"label shape {label.shape} differs from the image {image.shape[1:]}")
    tf = list(plans.transpose_forward)
    data = np.ascontiguousarray(image.astype(np.float32).transpose([0, *[t + 1 for t in tf]]))
    seg = None if label is None else np.ascontiguousarray(label.transpose(tf))
    spacing = [float(geometry.spacing[t]) for t in tf]
    shape_before = list(data.shape[1:])

    data, seg, mask, bbox = crop_to_nonzero(data, seg)
    shape_after_crop = list(data.shape[1:])

    target, slice_axis = target_spacing(spacing, config.spacing)
    new_shape = compute_new_shape(shape_after_crop, spacing, target)

    norm_mask = mask if seg is None else (mask | (seg > 0))
    data = normalize(data, norm_mask, config.normalization)

    rs = config.resampling
    data = resample(
        data,
        new_shape,
        spacing,
        target,
        False,
        rs.image_order,
        rs.order_z,
        rs.separate_z_anisotropy_threshold,
        slice_axis,
    )
    props: dict[str, Any] = {
        "original_shape": [int(s) for s in image.shape[1:]],
        "original_geometry": geometry.to_json(),
        "transpose_forward": tf,
        "shape_before_cropping": shape_before,
        "bbox_used_for_cropping": bbox,
        "shape_after_cropping": shape_after_crop,
        "spacing_before_resampling": spacing,
        "shape_after_resampling": new_shape,
        "spacing_after_resampling": [float(s) for s in target],
    }
    if seg is not None:
        seg = _resample_label(seg, new_shape, spacing, target, config.resampling, slice_axis)
        values, counts = np.unique(seg, return_counts=True)
        found = dict(zip(values.tolist(), counts.tolist()))
        props["voxels_per_class"] = {str(k): int(found.get(k, 0)) for k in sorted(plans.labels)}
        props["class_locations"] = sample_class_locations(seg[0], [k for k in sorted(plans.labels) if k != 0])
        seg = seg.astype(label_dtype(seg), copy=False)
    return data, seg, props
