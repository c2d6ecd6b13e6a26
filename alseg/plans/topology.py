"""U-Net topology and memory estimate, as nnU-Net v2 derives them from a patch and a spacing.

Two pure functions carry nnU-Net v2's rules (``network_topology.py`` and
``default_experiment_planner.py`` of ``nnunetv2``; the memory estimate is
``PlainConvUNet.compute_conv_feature_map_size`` of ``dynamic_network_architectures``):

* :func:`get_pool_and_conv_props` decides, stage by stage, which axes are down-sampled
  (stride 2) and which conv kernels are 3 or 1, and pads the patch to the divisibility the
  resulting network needs.
* :func:`conv_feature_map_size` sums the sizes of every conv output the network produces for
  one patch: the number nnU-Net compares with its reference values to pick the patch and the
  batch size. It is a proxy for GPU memory, not bytes.

Axes are in the order of the patch given (the plans' transposed order). Nothing here imports
torch: planning must be cheap and run anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import ceil, prod
from typing import Sequence

__all__ = [
    "MIN_FEATURE_MAP_SIZE",
    "Topology",
    "conv_feature_map_size",
    "features_per_stage",
    "get_pool_and_conv_props",
    "pad_to_multiple",
]

MIN_FEATURE_MAP_SIZE = 4
"""Smallest edge of a bottleneck feature map (nnU-Net's ``UNet_featuremap_min_edge_length``)."""

MAX_SPACING_RATIO_FOR_POOLING = 2.0
"""An axis is pooled (and gets kernel 3) only while its spacing is < 2x the smallest spacing."""

LONE_AXIS_MIN_SIZE_FACTOR = 3
"""A single poolable axis is pooled only if its size is >= 3 x MIN_FEATURE_MAP_SIZE."""


@dataclass(frozen=True)
class Topology:
    """What :func:`get_pool_and_conv_props` decides for one patch.

    ``strides[0]`` is all ones (the first stage runs at full resolution), so ``n_stages =
    len(strides) = len(kernel_sizes)``; ``kernel_sizes[-1]`` is the bottleneck's (all 3).
    """

    pools_per_axis: tuple[int, ...]
    strides: tuple[tuple[int, ...], ...]
    kernel_sizes: tuple[tuple[int, ...], ...]
    patch_size: tuple[int, ...]
    divisible_by: tuple[int, ...]

    @property
    def n_stages(self) -> int:
        return len(self.strides)


def pad_to_multiple(shape: Sequence[float], divisible_by: Sequence[int]) -> tuple[int, ...]:
    """Round every axis *up* to a multiple of its divisor (an exact multiple stays as it is)."""
    out = []
    for s, d in zip(shape, divisible_by):
        padded = s + d - s % d
        if s % d == 0:
            padded -= d
        out.append(int(padded))
    return tuple(out)


def get_pool_and_conv_props(
    spacing: Sequence[float],
    patch_size: Sequence[float],
    min_feature_map_size: int = MIN_FEATURE_MAP_SIZE,
    max_numpool: int = 999999,
) -> Topology:
    """nnU-Net v2's ``get_pool_and_conv_props``: pooling strides and conv kernels per stage.

    Repeated until no axis can be pooled:

    1. candidate axes are those whose current feature-map size is >= 2 x ``min_feature_map_size``
       (8 by default);
    2. of those, keep the axes whose current spacing is < 2x the smallest spacing among the
       candidates (and that have not reached ``max_numpool`` pools);
    3. a lone remaining axis is pooled only if its size is >= 3 x ``min_feature_map_size`` (12);
       no remaining axis ends the loop;
    4. the conv kernel of this stage is 3 along every axis whose current spacing is < 2x the
       smallest current spacing over *all* axes, else 1; once 3, an axis stays 3;
    5. pooled axes get stride 2: their spacing doubles and their size halves (rounded up).

    The bottleneck gets kernel 3 along every axis, and the patch is padded up to a multiple of
    2^(pools along that axis). There is no fixed cap on the number of stages.
    """
    dim = len(spacing)
    current_spacing = [float(s) for s in spacing]
    current_size = [float(s) for s in patch_size]
    strides: list[tuple[int, ...]] = [(1,) * dim]
    kernels: list[tuple[int, ...]] = []
    pools = [0] * dim
    kernel = [1] * dim

    while True:
        valid = [i for i in range(dim) if current_size[i] >= 2 * min_feature_map_size]
        if not valid:
            break
        min_valid_spacing = min(current_spacing[i] for i in valid)
        valid = [i for i in valid if current_spacing[i] / min_valid_spacing < MAX_SPACING_RATIO_FOR_POOLING]
        valid = [i for i in valid if pools[i] < max_numpool]
        if len(valid) == 1 and current_size[valid[0]] < LONE_AXIS_MIN_SIZE_FACTOR * min_feature_map_size:
            break
        if not valid:
            break

        smallest = min(current_spacing)
        for d in range(dim):
            if kernel[d] != 3 and current_spacing[d] / smallest < MAX_SPACING_RATIO_FOR_POOLING:
                kernel[d] = 3

        stride = [1] * dim
        for v in valid:
            stride[v] = 2
            pools[v] += 1
            current_spacing[v] *= 2
            current_size[v] = ceil(current_size[v] / 2)
        strides.append(tuple(stride))
        kernels.append(tuple(kernel))

    divisible_by = tuple(2**p for p in pools)
    kernels.append((3,) * dim)  # the bottleneck always uses 3x3(x3)
    return Topology(
        pools_per_axis=tuple(pools),
        strides=tuple(strides),
        kernel_sizes=tuple(kernels),
        patch_size=pad_to_multiple(patch_size, divisible_by),
        divisible_by=divisible_by,
    )


def features_per_stage(n_stages: int, max_features: int, base_features: int = 32) -> tuple[int, ...]:
    """``min(base * 2^i, max_features)`` for every stage (nnU-Net: 32 base, 320 in 3D, 512 in 2D)."""
    return tuple(min(max_features, base_features * 2**i) for i in range(n_stages))


def conv_feature_map_size(
    patch_size: Sequence[int],
    strides: Sequence[Sequence[int]],
    features: Sequence[int],
    n_classes: int,
    n_conv_encoder: int | Sequence[int] = 2,
    n_conv_decoder: int | Sequence[int] = 2,
    deep_supervision: bool = False,
) -> int:
    """Summed size of all conv outputs of nnU-Net's PlainConvUNet for one patch (batch 1).

    This is ``PlainConvUNet.compute_conv_feature_map_size`` (dynamic_network_architectures), the
    number nnU-Net v2's ``static_estimate_VRAM_usage`` returns:

    * encoder stage s: ``n_conv_encoder[s]`` convs of ``features[s]`` channels at the size after
      its stride (sizes are floor-divided, as "same" padding gives);
    * decoder stage at the resolution of encoder stage s (s = n-2 .. 0): ``n_conv_decoder`` convs
      plus the transposed conv, all with ``features[s]`` channels;
    * the segmentation layer (``n_classes`` channels) at full resolution only, unless
      ``deep_supervision`` (nnU-Net's planner builds the net without it).

    Input channels do not count, so the estimate does not depend on the number of modalities.
    """
    n = len(strides)
    enc = [n_conv_encoder] * n if isinstance(n_conv_encoder, int) else list(n_conv_encoder)
    dec = [n_conv_decoder] * (n - 1) if isinstance(n_conv_decoder, int) else list(n_conv_decoder)
    assert len(features) == n and len(enc) == n and len(dec) == n - 1, "one entry per stage expected"

    total = 0
    size = [int(p) for p in patch_size]
    stage_sizes = []
    for s in range(n):
        size = [i // st for i, st in zip(size, strides[s])]
        stage_sizes.append(size)
        total += enc[s] * features[s] * prod(size)
    for k in range(n - 1):  # decoder stages in order of computation: lowest resolution first
        s = n - 2 - k
        voxels = prod(stage_sizes[s])
        total += dec[k] * features[s] * voxels  # the conv block
        total += features[s] * voxels  # the transposed conv
        if deep_supervision or s == 0:
            total += n_classes * voxels
    return int(total)
