"""Full-volume prediction on the preprocessed grid, as nnU-Net predicts (alseg evaluates on that
grid: docs/design.md).

* 3D configuration: MONAI :func:`~monai.inferers.sliding_window_inference` with the plan's
  patch size, overlap 0.5 and Gaussian importance weighting (sigma = 1/8 of the patch,
  nnU-Net's), zero padding where the volume is smaller than the patch.
* 2D configuration: every slice along axis 0 of the (transposed) volume is one image; all
  slices go through one 2D sliding window together (windows of different slices share
  forward batches), and the results are stacked back along axis 0.

Logits are blended and the softmax is taken last, as nnU-Net v2 does. With ``mirror=True``
(nnU-Net's test-time augmentation, off by default) every *window* is predicted in all its
mirrorings and their logits averaged before the window is blended, as nnU-Net's predictor does:
mirroring the whole volume instead would shift the windows and the padding of odd-sized
slices by a voxel, and the result would no longer be nnU-Net's.

The network runs in the mode it is in: eval for deterministic predictions, or inside
:func:`alseg.model.network.mc_dropout` for MC passes. Tensors stay on the network's device.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch
from monai.data.utils import dense_patch_slices
from monai.inferers import sliding_window_inference
from monai.inferers.utils import _get_scan_interval
from torch import Tensor, nn

from alseg.plans.models import Configuration

__all__ = ["predict_volume", "sliding_window_logits", "sliding_windows"]

OVERLAP = 0.5
SIGMA_SCALE = 0.125  # nnU-Net's Gaussian: sigma = patch / 8


def _mirror_sets(spatial_axes: list[int]) -> list[tuple[int, ...]]:
    """Every subset of the spatial axes (the empty one first): 4 flips in 2D, 8 in 3D."""
    return [c for r in range(len(spatial_axes) + 1) for c in itertools.combinations(spatial_axes, r)]


@torch.no_grad()
def predict_volume(
    model: nn.Module,
    image: Tensor | np.ndarray,
    config: Configuration,
    *,
    output: Literal["probabilities", "labels", "logits"] = "probabilities",
    mirror: bool = False,
    sw_batch_size: int | None = None,
    overlap: float = OVERLAP,
) -> Tensor:
    """Predict one preprocessed case.

    Args:
        model: a :class:`~alseg.model.network.SegNetwork` (or any module returning logits).
        image: ``(C, Z, Y, X)`` on the preprocessed grid, transposed axis order.
        config: the plan configuration the network was trained with ("2d" or "3d_fullres").
        output: ``"probabilities"`` (softmax, ``(K, Z, Y, X)`` float32), ``"logits"``
            (``(K, Z, Y, X)``) or ``"labels"`` (argmax, ``(Z, Y, X)`` int64).
        mirror: average over all mirrorings of the network's spatial axes.
        sw_batch_size: windows per forward pass (default: the plan's batch size).
        overlap: sliding-window overlap.
    """
    device = next(model.parameters()).device
    x = torch.as_tensor(np.asarray(image) if not torch.is_tensor(image) else image).float().to(device)
    if x.ndim != 4:
        raise ValueError(f"image must be (C, Z, Y, X), got shape {tuple(x.shape)}")
    dims = len(config.patch_size)
    # 2D: the slices become the batch (Z, C, Y, X); 3D: one batch item (1, C, Z, Y, X).
    batch = x.movedim(1, 0) if dims == 2 else x[None]
    spatial_axes = list(range(2, 2 + dims))

    flips = _mirror_sets(spatial_axes) if mirror else [()]

    def forward(t: Tensor) -> Tensor:
        out = model(t)
        out = out[0] if isinstance(out, (list, tuple)) else out
        return out.float()  # blend in float32 even under autocast

    def predictor(t: Tensor) -> Tensor:
        # each window in all its mirrorings, logits averaged (nnU-Net's _internal_maybe_mirror_and_predict)
        out = forward(t)
        for axes in flips[1:]:
            out = out + torch.flip(forward(torch.flip(t, axes)), axes)
        return out / len(flips)

    logits = sliding_window_logits(predictor, batch, config.patch_size, sw_batch_size or config.batch_size, overlap)
    logits = logits.movedim(0, 1) if dims == 2 else logits[0]  # (K, Z, Y, X)
    if output == "logits":
        return logits.float()
    if output == "labels":
        return logits.argmax(0)
    return logits.float().softmax(0)


def sliding_window_logits(
    predictor: Callable[[Tensor], Tensor],
    batch: Tensor,
    patch_size: Sequence[int],
    sw_batch_size: int,
    overlap: float = OVERLAP,
) -> Tensor:
    """``predictor`` over windows of ``batch`` ``(B, C, *S)``, blended as nnU-Net blends them
    (Gaussian weights, sigma = patch / 8; zero padding where ``S`` is smaller than the patch):
    ``(B, K, *S)``. The one sliding window of evaluation, ``alseg predict`` and small-item scoring;
    the windows are :func:`sliding_windows`."""
    out = sliding_window_inference(
        batch,
        roi_size=list(patch_size),
        sw_batch_size=sw_batch_size,
        predictor=predictor,
        overlap=overlap,
        mode="gaussian",
        sigma_scale=SIGMA_SCALE,
        padding_mode="constant",
        cval=0.0,
    )
    return torch.as_tensor(out)  # drop MetaTensor


def sliding_windows(
    shape: Sequence[int], patch_size: Sequence[int], overlap: float = OVERLAP
) -> list[tuple[tuple[int, int], ...]]:
    """The windows :func:`sliding_window_logits` predicts over spatial ``shape``, in its order, as
    ``(start, stop)`` per axis. Where ``shape`` is smaller than the patch MONAI pads it (half
    before, rounded down), so a window starts before 0 there and passes the border."""
    shape, patch = [int(s) for s in shape], [int(p) for p in patch_size]
    padded = [max(s, p) for s, p in zip(shape, patch)]
    before = [max(p - s, 0) // 2 for s, p in zip(shape, patch)]
    # MONAI's own step (private): the grid must be the one sliding_window_inference walks
    interval = _get_scan_interval(padded, patch, len(patch), (overlap,) * len(patch))
    return [
        tuple((sl.start - b, sl.stop - b) for sl, b in zip(window, before))
        for window in dense_patch_slices(padded, patch, interval)
    ]
