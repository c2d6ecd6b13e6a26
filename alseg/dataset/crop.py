"""Crop to the non-zero region, as nnU-Net v2's ``crop_to_nonzero`` does (pure array functions).

The fingerprint (which measures intensities inside the crop) and the preprocessing (which stores
the crop) must crop identically, so both call these functions.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = ["bbox_of_mask", "create_nonzero_mask", "crop_to_nonzero", "uncrop"]


def create_nonzero_mask(image: np.ndarray) -> np.ndarray:
    """Voxels where any channel of ``image`` (C, ...) is non-zero, holes filled (nnU-Net)."""
    mask = np.any(image != 0, axis=0)
    return ndi.binary_fill_holes(mask)


def bbox_of_mask(mask: np.ndarray) -> list[list[int]]:
    """``[[lo, hi), ...]`` per axis; the whole array when the mask is empty."""
    if not mask.any():
        return [[0, s] for s in mask.shape]
    bbox = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        bbox.append([int(hits[0]), int(hits[-1]) + 1])
    return bbox


def crop_to_nonzero(
    image: np.ndarray, label: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, list[list[int]]]:
    """Crop (C, ...) ``image`` and (...) ``label`` to the non-zero bounding box.

    Returns the cropped image, the cropped label (or None), the cropped non-zero mask and the
    box ``[[lo, hi), ...]`` in the axes of ``image[0]``.
    """
    mask = create_nonzero_mask(image)
    bbox = bbox_of_mask(mask)
    sl = tuple(slice(lo, hi) for lo, hi in bbox)
    return image[(slice(None),) + sl], (label[sl] if label is not None else None), mask[sl], bbox


def uncrop(array: np.ndarray, bbox: list[list[int]], shape: tuple[int, ...] | list[int], fill: float = 0) -> np.ndarray:
    """The inverse of the crop: ``array`` (..., *cropped) placed at ``bbox`` in a (..., *shape)
    array filled with ``fill`` (leading axes, e.g. channels, are kept as they are)."""
    lead = array.shape[: array.ndim - len(shape)]
    out = np.full((*lead, *shape), fill, dtype=array.dtype)
    sl = tuple(slice(lo, hi) for lo, hi in bbox)
    assert out[(..., *sl)].shape == array.shape, (array.shape, bbox, shape)
    out[(..., *sl)] = array
    return out
