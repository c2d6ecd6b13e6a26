"""One case predicted in its own geometry, as ``nnUNetv2_predict`` does per case: read, preprocess as
the plan says, sliding window on the plan's grid, logits mapped back to the file's grid.

``alseg predict`` (:mod:`alseg.predict`) runs it over folders; the loop's annotation packages
use it for the pre-annotation they ship.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from alseg.data.pipeline import preprocess_case
from alseg.data.restore import logits_to_original
from alseg.dataset.io import Geometry
from alseg.dataset.raw import CaseFiles, load_case
from alseg.dataset.validate import intensity_problem
from alseg.errors import AlsegError
from alseg.model.inference import predict_volume
from alseg.model.module import SegmentationModule

__all__ = ["CasePrediction", "predict_case"]


@dataclass
class CasePrediction:
    """One case's prediction on the file's grid (``labels``, ``probabilities``) and on the plan's
    (``grid_labels``, with the ``properties`` that map one to the other)."""

    case_id: str
    labels: np.ndarray
    probabilities: np.ndarray
    geometry: Geometry
    grid_labels: np.ndarray
    properties: dict


def predict_case(module: SegmentationModule, case: CaseFiles, *, tta: bool = False) -> CasePrediction:
    """Predict one case with ``module`` (on the device it is on, in eval mode)."""
    plans, config = module.plans, module.config
    image, _, geometry = load_case(case, len(plans.channel_names), declared_by="the model takes")
    for c in range(image.shape[0]):  # one NaN would turn the whole map into background
        problem = intensity_problem(image[c])
        if problem:
            raise AlsegError(
                f"{problem}; predict refuses it", case.images[c] if len(case.images) > c else case.images[0]
            )
    data, _, props = preprocess_case(image, None, geometry, plans, config.name)
    module.net.eval()
    with torch.inference_mode():
        logits = predict_volume(module.net, data, config, output="logits", mirror=tta).cpu().numpy()
    labels, probabilities = logits_to_original(logits, props, config.resampling)
    return CasePrediction(case.case_id, labels, probabilities, geometry, logits.argmax(0), props)
