"""Intensity normalisation per channel, as nnU-Net v2's ``ZScoreNormalization`` and
``CTNormalization`` do (a pure function on arrays and the plan's parameters).

z-score per image, optionally only inside the non-zero mask (``use_mask_for_norm``); CT: clip
to the dataset's foreground 0.5/99.5 percentiles, subtract the foreground mean, divide by its
std (statistics from the fingerprint, stored in the plan).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from alseg.plans.models import Normalization

__all__ = ["NORM_EPS", "mean_std", "normalize"]

NORM_EPS = 1e-8
"""Lower bound of a standard deviation we divide by (nnU-Net's 1e-8)."""


def mean_std(x: np.ndarray) -> tuple[float, float]:
    """Mean and std of ``x``: in its own float32 (as nnU-Net, bit for bit), and again in float64
    when float32 overflows — a voxel beyond ~1e19 squares past float32's range, the std becomes
    infinite and the whole case would be divided into zeros."""
    with np.errstate(over="ignore", invalid="ignore"):
        mean, std = x.mean(), x.std()
    if not (np.isfinite(mean) and np.isfinite(std)):
        mean, std = x.mean(dtype=np.float64), x.std(dtype=np.float64)
    return mean, std


def normalize(data: np.ndarray, mask: np.ndarray, normalizations: Sequence[Normalization]) -> np.ndarray:
    """Normalise each channel of float32 ``data`` in place per the plan's ``Normalization``.

    ``mask`` (spatial, bool) is where z-score statistics are taken when ``use_mask_for_norm``;
    voxels outside it are left as they are (0 after cropping to non-zero, as in nnU-Net).
    """
    for c, norm in enumerate(normalizations):
        x = data[c]
        if norm.scheme == "ct":
            np.clip(x, norm.clip_lower, norm.clip_upper, out=x)
            x -= norm.mean
            x /= max(norm.std, NORM_EPS)
        elif norm.scheme == "zscore":
            if norm.use_mask_for_norm:
                inside = x[mask]
                mean, std = mean_std(inside)
                x[mask] = (inside - mean) / max(std, NORM_EPS)
            else:
                mean, std = mean_std(x)
                x -= mean
                x /= max(std, NORM_EPS)
        elif norm.scheme != "none":
            raise AssertionError(f"unknown normalization scheme {norm.scheme}")
    return data
