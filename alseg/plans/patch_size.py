"""The patch-size search of nnU-Net v2's ``get_plans_for_configuration``, shared by the planner
and the nnU-Net export (which replays it for ``3d_lowres``).

Start from the 1/spacing aspect ratio at 256^3 (3D) or 2048^2 (2D) voxels, clipped to the median
shape; derive the topology (:mod:`alseg.plans.topology`); shrink the axis that covers most of the
median shape until the memory estimate leaves room for batch 2 under the reference value. The
numbers are nnU-Net v2's (``default_experiment_planner.py``), named as there.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from alseg.plans.topology import (
    MIN_FEATURE_MAP_SIZE,
    Topology,
    conv_feature_map_size,
    features_per_stage,
    get_pool_and_conv_props,
)

__all__ = [
    "BASE_FEATURES",
    "DEFAULT_GPU_MEMORY_GB",
    "MAX_FEATURES_2D",
    "MAX_FEATURES_3D",
    "N_CONV_PER_STAGE",
    "estimate_vram",
    "initial_patch_size",
    "patch_and_topology",
]

BASE_FEATURES = 32  # UNet_base_num_features
MAX_FEATURES_3D = 320  # UNet_max_features_3d
MAX_FEATURES_2D = 512  # UNet_max_features_2d
N_CONV_PER_STAGE = 2  # UNet_blocks_per_stage_encoder / _decoder
INITIAL_PATCH_EDGE_3D = 256  # initial patch volume 256^3 ...
INITIAL_PATCH_EDGE_2D = 2048  # ... or 2048^2, before clipping to the median shape
REFERENCE_VRAM_3D = 560_000_000  # UNet_reference_val_3d (conv feature-map voxels)
REFERENCE_VRAM_2D = 85_000_000  # UNet_reference_val_2d
REFERENCE_GPU_GB = 8.0  # UNet_reference_val_corresp_GB
REFERENCE_BATCH_3D = 2  # UNet_reference_val_corresp_bs_3d
REFERENCE_BATCH_2D = 12  # UNet_reference_val_corresp_bs_2d
DEFAULT_GPU_MEMORY_GB = 8.0  # the GPU nnU-Net's reference values were measured on


def initial_patch_size(spacing: Sequence[float], median_shape: Sequence[float]) -> np.ndarray:
    """Aspect ratio of 1/spacing scaled to 256^3 (3D) or 2048^2 (2D) voxels, clipped to the median shape."""
    inv = 1.0 / np.asarray(spacing, dtype=np.float64)
    dim = len(spacing)
    edge = INITIAL_PATCH_EDGE_3D if dim == 3 else INITIAL_PATCH_EDGE_2D
    patch = [round(i) for i in inv * (edge**dim / np.prod(inv)) ** (1 / dim)]
    return np.array([min(p, m) for p, m in zip(patch, median_shape)], dtype=np.float64)


def estimate_vram(patch_size: Sequence[int], strides, n_classes: int, max_features: int) -> int:
    """The planner's memory proxy for one patch (see :func:`~alseg.plans.topology.conv_feature_map_size`)."""
    feats = features_per_stage(len(strides), max_features, BASE_FEATURES)
    return conv_feature_map_size(patch_size, strides, feats, n_classes, N_CONV_PER_STAGE, N_CONV_PER_STAGE)


def patch_and_topology(
    spacing: Sequence[float],
    median_shape: Sequence[float],
    n_classes: int,
    gpu_memory_gb: float = DEFAULT_GPU_MEMORY_GB,
) -> tuple[Topology, int, float, int]:
    """The patch-size search shared by every configuration; returns (topology, estimate, reference, ref_bs)."""
    dim = len(spacing)
    max_features = MAX_FEATURES_3D if dim == 3 else MAX_FEATURES_2D
    reference = (REFERENCE_VRAM_3D if dim == 3 else REFERENCE_VRAM_2D) * gpu_memory_gb / REFERENCE_GPU_GB
    ref_bs = REFERENCE_BATCH_3D if dim == 3 else REFERENCE_BATCH_2D

    topo = get_pool_and_conv_props(spacing, initial_patch_size(spacing, median_shape), MIN_FEATURE_MAP_SIZE)
    estimate = estimate_vram(topo.patch_size, topo.strides, n_classes, max_features)
    # nnU-Net enforces room for batch 2 (the references were measured at ref_bs).
    while estimate / ref_bs * 2 > reference:
        patch = list(topo.patch_size)
        axis = int(np.argsort([p / m for p, m in zip(patch, median_shape)])[-1])
        # Subtract the current divisor, recompute the divisor of the smaller patch and subtract
        # that instead, so that valid sizes between two multiples are not skipped.
        trial = list(patch)
        trial[axis] -= topo.divisible_by[axis]
        step = get_pool_and_conv_props(spacing, trial, MIN_FEATURE_MAP_SIZE).divisible_by[axis]
        patch[axis] -= step
        topo = get_pool_and_conv_props(spacing, patch, MIN_FEATURE_MAP_SIZE)
        estimate = estimate_vram(topo.patch_size, topo.strides, n_classes, max_features)
    return topo, estimate, reference, ref_bs
