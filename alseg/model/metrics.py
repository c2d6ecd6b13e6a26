"""Test Dice per foreground class on the preprocessed grid (docs/design.md), with MONAI's Dice.

Empty classes: when a case has no voxel of class ``c`` in the ground truth, its Dice is 1.0
if the prediction has none either and 0.0 otherwise (MONAI ``ignore_empty=False``). nnU-Net
reports NaN there and skips it in the mean; alseg counts it so that every case contributes
the same number of classes to every round's mean and a false positive on an empty class is
penalised. The mean over classes of a case is the plain mean of its per-class values.

Surface metrics, next to Dice (:func:`surface_metrics_per_class`), from MONAI's functions: the
95th-percentile Hausdorff distance (HD95, mm, symmetric) and the normalised surface Dice (NSD:
the share of both boundaries within ``SURFACE_TOLERANCE_MM`` of the other), with the grid's
spacing. Empty classes follow the Dice rule: absent from both → HD95 0 and NSD 1; absent from
one only → NSD 0 and HD95 undefined (NaN, left out of means; MONAI would also give NaN or inf).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice

__all__ = ["dice_per_class", "mean_dice", "metric_names", "surface_metrics_per_class", "SURFACE_TOLERANCE_MM"]

SURFACE_TOLERANCE_MM = 1.0
"""Normalised surface Dice's tolerance: boundary voxels within 1 mm of the other boundary count
as agreeing (about one voxel of MSD Hippocampus; docs/design.md)."""


def metric_names(labels: dict[int, str]) -> dict[int, str]:
    """``{class index: "dice_<name>"}`` for the foreground classes (spaces become underscores)."""
    return {int(c): "dice_" + str(name).replace(" ", "_") for c, name in sorted(labels.items()) if int(c) != 0}


def dice_per_class(pred_labels, gt_labels, n_classes: int) -> dict[int, float]:
    """Dice of each foreground class ``1..n_classes-1`` between two integer label maps.

    ``pred_labels`` and ``gt_labels``: arrays or tensors of the same spatial shape (any
    number of axes, no channel axis). Returns ``{class index: dice}``.
    """
    pred = torch.as_tensor(np.asarray(pred_labels) if not torch.is_tensor(pred_labels) else pred_labels)
    gt = torch.as_tensor(np.asarray(gt_labels) if not torch.is_tensor(gt_labels) else gt_labels)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and ground truth {tuple(gt.shape)} differ in shape")
    if n_classes < 2:
        return {}
    gt = gt.to(pred.device)
    scores = compute_dice(
        y_pred=pred.long()[None, None],
        y=gt.long()[None, None],
        include_background=False,
        ignore_empty=False,
        num_classes=n_classes,
    )[0]
    return {c: float(scores[c - 1]) for c in range(1, n_classes)}


def mean_dice(per_class: dict[int, float]) -> float:
    """Mean over the classes of :func:`dice_per_class` (NaN when there are none)."""
    return float(np.mean(list(per_class.values()))) if per_class else float("nan")


def surface_metrics_per_class(
    pred_labels, gt_labels, n_classes: int, spacing: Sequence[float], tolerance_mm: float = SURFACE_TOLERANCE_MM
) -> dict[int, tuple[float, float]]:
    """``{class: (HD95 in mm, normalised surface Dice)}`` of each foreground class between two
    label maps of the same shape, on a grid of ``spacing`` (mm per axis, array order), with
    MONAI's :func:`compute_hausdorff_distance` and :func:`compute_surface_dice`."""
    pred = torch.as_tensor(np.asarray(pred_labels) if not torch.is_tensor(pred_labels) else pred_labels).cpu()
    gt = torch.as_tensor(np.asarray(gt_labels) if not torch.is_tensor(gt_labels) else gt_labels).cpu()
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and ground truth {tuple(gt.shape)} differ in shape")
    if len(spacing) != pred.ndim:
        raise ValueError(f"spacing {tuple(spacing)} does not match a {pred.ndim}D label map")
    out: dict[int, tuple[float, float]] = {}
    for c in range(1, n_classes):
        p, g = (pred == c), (gt == c)
        has_p, has_g = bool(p.any()), bool(g.any())
        if not (has_p or has_g):
            out[c] = (0.0, 1.0)
            continue
        if not (has_p and has_g):
            out[c] = (float("nan"), 0.0)
            continue
        y_pred, y = p[None, None].float(), g[None, None].float()
        with warnings.catch_warnings():  # MONAI's deprecation notices of its own internals
            warnings.simplefilter("ignore")
            hd95 = compute_hausdorff_distance(y_pred, y, include_background=True, percentile=95, spacing=list(spacing))
            nsd = compute_surface_dice(
                y_pred, y, class_thresholds=[tolerance_mm], include_background=True, spacing=list(spacing)
            )
        out[c] = (float(hd95[0, 0]), float(nsd[0, 0]))
    return out
