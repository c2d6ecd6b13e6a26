"""Resampling to a configuration's spacing, as nnU-Net v2's ``resample_data_or_seg`` does (pure).

Images with a spline (3rd order by default), labels one-hot with order 1 and a per-voxel
argmax. When the spacing (current or target) is anisotropic (max/min > 3) the low-resolution
axis is resampled separately with ``order_z`` (nnU-Net's "separate z"). The 2D configuration
never resamples along its sliced axis.

On purpose, and a small difference: spline resampling uses ``scipy.ndimage.zoom(grid_mode=True,
mode="nearest")`` plus clipping to the input range, which is what ``skimage.transform.resize(
mode="edge", anti_aliasing=False)`` (nnU-Net's call) does, so scikit-image is not needed.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage as ndi

__all__ = ["ANISOTROPY_THRESHOLD", "compute_new_shape", "resample", "resize_labels", "separate_axis"]

ANISOTROPY_THRESHOLD = 3.0
"""max/min spacing above which the low-resolution axis is resampled separately (nnU-Net's ANISO_THRESHOLD)."""


def compute_new_shape(
    old_shape: Sequence[int], old_spacing: Sequence[float], new_spacing: Sequence[float]
) -> list[int]:
    """``round(old_spacing / new_spacing * old_shape)`` per axis (nnU-Net's ``compute_new_shape``)."""
    assert len(old_shape) == len(old_spacing) == len(new_spacing)
    return [int(round(o / n * s)) for o, n, s in zip(old_spacing, new_spacing, old_shape)]


def _lowres_axis(spacing: Sequence[float]) -> int | None:
    """The single axis with the largest spacing, or None when two or three axes tie."""
    spacing = np.asarray(spacing, float)
    axes = np.flatnonzero(spacing.max() / spacing == 1)
    return int(axes[0]) if len(axes) == 1 else None


def separate_axis(
    current_spacing: Sequence[float], new_spacing: Sequence[float], threshold: float = ANISOTROPY_THRESHOLD
) -> int | None:
    """The axis nnU-Net resamples separately (with ``order_z``), or None.

    Anisotropic current spacing decides first, then anisotropic target spacing; the axis is the
    one with the largest spacing, unless several axes share it (then nothing is separate).
    """
    for spacing in (current_spacing, new_spacing):
        if max(spacing) / min(spacing) > threshold:
            return _lowres_axis(spacing)
    return None


def _zoom(
    array: np.ndarray, new_shape: Sequence[int], order: int, clip_to: tuple[float, float] | None = None
) -> np.ndarray:
    """skimage ``resize(mode="edge", anti_aliasing=False, clip=True)`` on float64, via scipy.

    Spline orders > 1 overshoot; the result is clipped to ``clip_to`` (default: the input's
    range), as skimage clips to the range of the array it was given.
    """
    array = np.asarray(array, dtype=np.float64)
    if tuple(array.shape) == tuple(new_shape):
        return array.copy()
    factors = [n / o for n, o in zip(new_shape, array.shape)]
    out = ndi.zoom(array, factors, order=order, mode="nearest", grid_mode=True, prefilter=order > 1)
    assert out.shape == tuple(new_shape), (out.shape, new_shape)
    if order > 1:
        lo, hi = clip_to if clip_to is not None else (array.min(), array.max())
        np.clip(out, lo, hi, out=out)
    return out


def resize_labels(label: np.ndarray, new_shape: Sequence[int], order: int = 1) -> np.ndarray:
    """Resize a label map: each label's indicator interpolated with ``order``, per-voxel argmax.

    Ties (e.g. a sample point exactly between two labels) go to the nearest-neighbour label when
    it is among the tied ones, else to the smallest tied label, as nnU-Net's
    ``resize_segmentation`` (batchgenerators >= 0.25). Order 0 is plain nearest neighbour.
    """
    if tuple(label.shape) == tuple(new_shape):
        return label.copy()
    nearest = np.rint(_zoom(label, new_shape, 0)).astype(label.dtype)
    if order == 0:
        return nearest
    best_score = best_label = nearest_score = None
    for c in np.unique(label):
        score = _zoom(label == c, new_shape, order)
        if best_score is None:
            best_score, best_label = score, np.full(new_shape, c, dtype=label.dtype)
            nearest_score = np.zeros(new_shape)
        else:
            better = score > best_score
            best_score = np.where(better, score, best_score)
            best_label[better] = c
        at_nearest = nearest == c
        nearest_score[at_nearest] = score[at_nearest]
    use_nearest = nearest_score >= best_score
    best_label[use_nearest] = nearest[use_nearest]
    return best_label


def _resize_one(array: np.ndarray, new_shape: Sequence[int], is_label: bool, order: int, clip_to=None) -> np.ndarray:
    return resize_labels(array, new_shape, order) if is_label else _zoom(array, new_shape, order, clip_to)


def resample(
    data: np.ndarray,
    new_shape: Sequence[int],
    current_spacing: Sequence[float],
    new_spacing: Sequence[float],
    is_label: bool = False,
    order: int = 3,
    order_z: int = 0,
    threshold: float = ANISOTROPY_THRESHOLD,
    slice_axis: int | None = None,
) -> np.ndarray:
    """Resample every channel of ``data`` (C, *spatial) to ``new_shape``.

    nnU-Net's "separate z" rule (:func:`separate_axis`) decides first: a separate axis is
    resampled in-plane slice by slice with ``order``, then along the axis with ``order_z``.
    Otherwise, ``slice_axis`` (the 2D configuration, whose spacing along the sliced axis is
    kept) resamples slice by slice along that axis, clipping to the whole volume's range: the
    same numbers as nnU-Net's 3D resize with a unit factor along that axis, at 2D cost.
    Without either, one 3D resize. Images come back float32, labels in their own dtype.
    """
    new_shape = [int(s) for s in new_shape]
    shape = list(data.shape[1:])
    out_dtype = data.dtype if is_label else np.float32
    if shape == new_shape:
        return data.astype(out_dtype, copy=True)
    axis = separate_axis(current_spacing, new_spacing, threshold)
    whole_volume_clip = False
    if axis is None and slice_axis is not None:
        assert shape[slice_axis] == new_shape[slice_axis], "the sliced axis is never resampled"
        axis, whole_volume_clip = slice_axis, True
    out = np.empty((data.shape[0], *new_shape), dtype=out_dtype)
    for c in range(data.shape[0]):
        if axis is None:
            out[c] = _resize_one(data[c], new_shape, is_label, order)
            continue
        clip_to = (float(data[c].min()), float(data[c].max())) if whole_volume_clip else None
        in_plane = [s for a, s in enumerate(new_shape) if a != axis]
        moved = np.moveaxis(data[c], axis, 0)
        slices = np.stack([_resize_one(moved[i], in_plane, is_label, order, clip_to) for i in range(moved.shape[0])])
        if slices.shape[0] != new_shape[axis]:
            along = [new_shape[axis], *in_plane]
            # order_z along the low-resolution axis only: the other axes already have their size.
            if is_label:
                slices = resize_labels(slices, along, order_z)
            else:
                slices = _zoom(slices, along, order_z)
        out[c] = np.moveaxis(slices, 0, axis).astype(out_dtype, copy=False)
    return out
