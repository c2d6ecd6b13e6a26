"""Back from the plan's grid to the file's: the inverse of :func:`alseg.data.pipeline.preprocess_case`
(pure array functions), as nnU-Net v2's ``convert_predicted_logits_to_segmentation_with_correct_shape``
maps a prediction back.

In this order, each step undoing one forward step:

1. **resample** from ``shape_after_resampling`` to ``shape_after_cropping`` (spacing after →
   spacing before resampling). Logits as nnU-Net resamples them (``resampling_fn_probabilities``:
   linear, ``order_z`` 0 along a separate low-resolution axis); label maps with the plan's label
   resampling (one-hot, linear, argmax), the same rule as the forward step;
2. **uncrop** into ``shape_before_cropping``: background outside the crop box (labels 0,
   probabilities 1 for background and 0 for the rest, as nnU-Net's
   ``revert_cropping_on_probabilities``), or a given fill value;
3. **transpose back** to the file's axis order.

``props`` is the dict :func:`~alseg.data.pipeline.preprocess_case` (or
:func:`~alseg.data.pipeline.grid_properties`) returns for the case.
"""

from __future__ import annotations

import numpy as np

from alseg.dataset.crop import uncrop
from alseg.dataset.resample import resample
from alseg.plans.models import Resampling

__all__ = ["PROBABILITY_ORDER", "PROBABILITY_ORDER_Z", "labels_to_original", "logits_to_original"]

PROBABILITY_ORDER = 1
PROBABILITY_ORDER_Z = 0
"""nnU-Net v2's ``resampling_fn_probabilities_kwargs``: linear in-plane, nearest along a separate axis."""


def _slice_axis(props: dict) -> int | None:
    """0 when the configuration never resampled axis 0 (2D: spacing kept between slices)."""
    before, after = props["spacing_before_resampling"], props["spacing_after_resampling"]
    same = before[0] == after[0] and props["shape_after_cropping"][0] == props["shape_after_resampling"][0]
    return 0 if same else None


def _transpose_back(array: np.ndarray, props: dict) -> np.ndarray:
    back = np.argsort(props["transpose_forward"]).tolist()
    lead = array.ndim - len(back)
    return np.ascontiguousarray(array.transpose([*range(lead), *[b + lead for b in back]]))


def _to_crop_grid(data: np.ndarray, props: dict, is_label: bool, order: int, order_z: int, threshold: float):
    assert list(data.shape[1:]) == list(props["shape_after_resampling"]), (data.shape, props["shape_after_resampling"])
    return resample(
        data,
        props["shape_after_cropping"],
        props["spacing_after_resampling"],
        props["spacing_before_resampling"],
        is_label,
        order,
        order_z,
        threshold,
        _slice_axis(props),
    )


def logits_to_original(logits: np.ndarray, props: dict, resampling: Resampling) -> tuple[np.ndarray, np.ndarray]:
    """``(labels (z, y, x), probabilities (K, z, y, x))`` in the file's grid from ``(K, *grid)`` logits.

    The softmax and argmax come after resampling, as in nnU-Net v2.
    """
    resampled = _to_crop_grid(
        np.asarray(logits, dtype=np.float32),
        props,
        False,
        PROBABILITY_ORDER,
        PROBABILITY_ORDER_Z,
        resampling.separate_z_anisotropy_threshold,
    )
    resampled -= resampled.max(axis=0, keepdims=True)
    probs = np.exp(resampled, dtype=np.float32)
    probs /= probs.sum(axis=0, keepdims=True)
    seg = probs.argmax(axis=0).astype(np.uint8 if probs.shape[0] <= 256 else np.int16)
    seg = uncrop(seg, props["bbox_used_for_cropping"], props["shape_before_cropping"], 0)
    full = uncrop(probs, props["bbox_used_for_cropping"], props["shape_before_cropping"], 0)
    outside = np.ones(props["shape_before_cropping"], bool)
    outside[tuple(slice(lo, hi) for lo, hi in props["bbox_used_for_cropping"])] = False
    full[0][outside] = 1.0
    return _transpose_back(seg, props), _transpose_back(full, props)


def labels_to_original(seg: np.ndarray, props: dict, resampling: Resampling, fill: int = 0) -> np.ndarray:
    """A label map ``(*grid)`` on the plan's grid as ``(z, y, x)`` on the file's grid.

    Every value is a class here (so 255 = "not annotated" survives as its own region); voxels
    outside the crop box get ``fill``. Exact when the case was not resampled.
    """
    back = _to_crop_grid(
        np.asarray(seg)[None],
        props,
        True,
        resampling.label_order,
        resampling.order_z,
        resampling.separate_z_anisotropy_threshold,
    )[0]
    full = uncrop(back, props["bbox_used_for_cropping"], props["shape_before_cropping"], fill)
    return _transpose_back(full, props)
