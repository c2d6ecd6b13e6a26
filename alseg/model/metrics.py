"""Test Dice per foreground class on the preprocessed grid (docs/design.md), with MONAI's Dice.

Empty classes: when a case has no voxel of class ``c`` in the ground truth, its Dice is 1.0
if the prediction has none either and 0.0 otherwise (MONAI ``ignore_empty=False``). nnU-Net
reports NaN there and skips it in the mean; alseg counts it so that every case contributes
the same number of classes to every round's mean and a false positive on an empty class is
penalised. The mean over classes of a case is the plain mean of its per-class values.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.metrics import compute_dice

__all__ = ["dice_per_class", "mean_dice", "metric_names"]


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
