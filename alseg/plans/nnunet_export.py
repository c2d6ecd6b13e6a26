"""Export an alseg plan as the preprocessed-folder files nnU-Net v2 trains from.

``alseg plan --export-nnunet`` writes, next to alseg's own files::

    OUT/nnUNet_preprocessed/DatasetXXX_Name/nnUNetPlans.json          the plan (:func:`to_nnunet_plans`)
    OUT/nnUNet_preprocessed/DatasetXXX_Name/dataset_fingerprint.json  :func:`to_nnunet_fingerprint`
    OUT/nnUNet_preprocessed/DatasetXXX_Name/dataset.json              :func:`to_nnunet_dataset_json`

With ``nnUNet_preprocessed=OUT/nnUNet_preprocessed`` and the raw data in
``nnUNet_raw/DatasetXXX_Name`` (nnU-Net's layout), ``nnUNetv2_preprocess -d XXX -c 2d`` and
``nnUNetv2_train XXX 2d 0`` run on alseg's plan (``benchmarks/plans_vs_nnunet.py --train``
does exactly that). ``XXX_Name`` is :func:`nnunet_dataset_name`: the dataset folder's own when it
is ``DatasetXXX_Name`` (nnU-Net) or ``TaskXX_Name`` (MSD, as ``nnUNetv2_convert_MSD_dataset``
numbers it), else ``--nnunet-id`` (default 999) and the ``dataset.json`` name.

The dict has the keys and value formats that nnU-Net v2 (2.x, checked against 2.8.1) writes
from ``ExperimentPlanner.plan_experiment`` and reads with ``PlansManager``: dotted class names
for the network, conv, norm and nonlinearity, resampling functions by name with their kwargs,
normalisation classes by name. Drop it into ``nnUNet_preprocessed/<Dataset>/nnUNetPlans.json``
(next to nnU-Net's ``dataset.json`` and ``dataset_fingerprint.json``) to train nnU-Net with
alseg's configuration.

Not exported: ``3d_lowres`` / ``3d_cascade_fullres`` (alseg does not plan them), and alseg's
own additions (dropout for MC passes, the trainer recipe), which nnU-Net has no place for.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from alseg.atomic import atomic_write_json
from alseg.plans.models import Configuration, Fingerprint, Plans
from alseg.plans.patch_size import DEFAULT_GPU_MEMORY_GB, patch_and_topology

LOWRES_CREATION_THRESHOLD = 0.25  # 3d_lowres when the fullres patch covers < 25 % of the median image
LOWRES_SPACING_INCREASE = 1.03  # spacing_increase_factor of the lowres search

__all__ = [
    "DEFAULT_DATASET_ID",
    "nnunet_dataset_name",
    "nnunet_would_plan_lowres",
    "to_nnunet_dataset_json",
    "to_nnunet_fingerprint",
    "to_nnunet_plans",
    "write_nnunet_export",
]

DEFAULT_DATASET_ID = 999
"""nnU-Net dataset id of an export whose folder names none (nnU-Net reserves no id; 999 rarely clashes)."""
PREPROCESSED_DIR = "nnUNet_preprocessed"
FINGERPRINT_FILE = "dataset_fingerprint.json"
DATASET_FILE = "dataset.json"

NNUNET_PLANS_NAME = "nnUNetPlans"
NETWORK_CLASS = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
KW_REQUIRES_IMPORT = ["conv_op", "norm_op", "dropout_op", "nonlin"]
RESAMPLING_FN = "resample_data_or_seg_to_shape"
PROBABILITIES_ORDER = 1  # nnU-Net's determine_segmentation_softmax_export_fn
NORMALIZATION_CLASS = {"zscore": "ZScoreNormalization", "ct": "CTNormalization", "none": "NoNormalization"}
NONLIN = {"leakyrelu": "torch.nn.LeakyReLU"}


def _resampling_kwargs(is_seg: bool, order: int, order_z: int) -> dict[str, Any]:
    return {"is_seg": is_seg, "order": order, "order_z": order_z, "force_separate_z": None}


def _architecture(conf: Configuration) -> dict[str, Any]:
    net = conf.network
    dim = net.dims
    n = net.n_stages
    return {
        "network_class_name": NETWORK_CLASS,
        "arch_kwargs": {
            "n_stages": n,
            "features_per_stage": list(net.features_per_stage),
            "conv_op": f"torch.nn.modules.conv.Conv{dim}d",
            "kernel_sizes": [list(k) for k in net.kernel_sizes],
            "strides": [list(s) for s in net.strides],
            "n_conv_per_stage": [net.n_conv_per_stage] * n,
            "n_conv_per_stage_decoder": [net.n_conv_per_stage] * (n - 1),
            "conv_bias": net.conv_bias,
            "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dim}d",
            "norm_op_kwargs": {"eps": net.norm_eps, "affine": net.norm_affine},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": NONLIN[net.nonlin],
            "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": list(KW_REQUIRES_IMPORT),
    }


def _configuration(conf: Configuration, batch_dice: bool, plans_name: str) -> dict[str, Any]:
    rs = conf.resampling
    return {
        "data_identifier": f"{plans_name}_{conf.name}",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": conf.batch_size,
        "patch_size": list(conf.patch_size),
        "median_image_size_in_voxels": [float(m) for m in conf.median_shape],
        "spacing": list(conf.spacing),
        "normalization_schemes": [NORMALIZATION_CLASS[n.scheme] for n in conf.normalization],
        "use_mask_for_norm": [n.use_mask_for_norm for n in conf.normalization],
        "resampling_fn_data": RESAMPLING_FN,
        "resampling_fn_seg": RESAMPLING_FN,
        "resampling_fn_data_kwargs": _resampling_kwargs(False, rs.image_order, rs.order_z),
        "resampling_fn_seg_kwargs": _resampling_kwargs(True, rs.label_order, rs.order_z),
        "resampling_fn_probabilities": RESAMPLING_FN,
        "resampling_fn_probabilities_kwargs": _resampling_kwargs(False, PROBABILITIES_ORDER, rs.order_z),
        "architecture": _architecture(conf),
        "batch_dice": batch_dice,
    }


def nnunet_would_plan_lowres(
    fullres: Configuration, median_shape: Sequence[float], n_classes: int, gpu_memory_gb: float = DEFAULT_GPU_MEMORY_GB
) -> bool:
    """Whether nnU-Net v2 would add ``3d_lowres`` next to this ``3d_fullres`` (it then sets batch_dice).

    While the patch covers < 25 % of the median image, the spacing grows by 3 % (the anisotropic
    axes first) and the patch is re-planned; the lowres configuration is dropped again when the
    median image shrank by less than 2x.
    """
    base = np.asarray(fullres.spacing, dtype=np.float64)
    shape = np.asarray(median_shape, dtype=np.float64)
    median_voxels = float(np.prod(shape))
    patch_voxels = float(np.prod(fullres.patch_size, dtype=np.float64))
    spacing = base.copy()
    planned = False
    while patch_voxels / median_voxels < LOWRES_CREATION_THRESHOLD:
        ratio = spacing.max() / spacing
        if np.any(ratio > 2):
            spacing[ratio > 2] *= LOWRES_SPACING_INCREASE
        else:
            spacing *= LOWRES_SPACING_INCREASE
        median_voxels = float(np.prod(base / spacing * shape))
        lowres_shape = [round(i) for i in base / spacing * shape]
        topo, _, _, _ = patch_and_topology(spacing, lowres_shape, n_classes, gpu_memory_gb)
        patch_voxels = float(np.prod(topo.patch_size, dtype=np.float64))
        planned = True
    return planned and float(np.prod(shape)) / median_voxels >= 2


def nnunet_dataset_name(dataset_root: str | Path, name: str, dataset_id: int | None = None) -> str:
    """nnU-Net's ``DatasetXXX_Name`` for a dataset folder (module docstring); ``dataset_id`` overrides the number."""
    folder = Path(dataset_root).name
    match = re.fullmatch(r"(?:Dataset|Task)(\d+)_(.+)", folder)
    if match:
        number, base = int(match.group(1)), match.group(2)
    else:
        number, base = DEFAULT_DATASET_ID, re.sub(r"[^A-Za-z0-9]+", "", name) or "Dataset"
    number = number if dataset_id is None else dataset_id
    if not 0 < number < 1000:
        raise ValueError(f"an nnU-Net dataset id has 3 digits (1-999), got {number}")
    return f"Dataset{number:03d}_{base}"


def _intensity_stats(fingerprint: Fingerprint) -> dict[str, dict[str, float]]:
    return {
        str(c): {
            "mean": s.mean,
            "median": s.median,
            "std": s.std,
            "min": s.min,
            "max": s.max,
            "percentile_99_5": s.percentile_99_5,
            "percentile_00_5": s.percentile_00_5,
        }
        for c, s in sorted(fingerprint.foreground_intensity_properties_per_channel.items())
    }


def to_nnunet_fingerprint(fingerprint: Fingerprint) -> dict[str, Any]:
    """``dataset_fingerprint.json`` as nnU-Net v2's ``DatasetFingerprintExtractor`` writes it."""
    return {
        "foreground_intensity_properties_per_channel": _intensity_stats(fingerprint),
        "median_relative_size_after_cropping": fingerprint.median_relative_size_after_cropping,
        "shapes_after_crop": [list(map(int, s)) for s in fingerprint.shapes_after_crop],
        "spacings": [list(map(float, s)) for s in fingerprint.spacings],
    }


def to_nnunet_dataset_json(fingerprint: Fingerprint, file_ending: str = ".nii.gz") -> dict[str, Any]:
    """nnU-Net v2's ``dataset.json``: channels by index, labels by name, number of training cases."""
    return {
        "channel_names": {str(c): name for c, name in sorted(fingerprint.channel_names.items())},
        "labels": {name: int(k) for k, name in sorted(fingerprint.labels.items())},
        "numTraining": len(fingerprint.case_ids),
        "file_ending": file_ending,
    }


def write_nnunet_export(
    out_dir: Path, plans: Plans, fingerprint: Fingerprint, dataset_name: str, file_ending: str = ".nii.gz"
) -> Path:
    """Write the three files of the module docstring; returns ``OUT/nnUNet_preprocessed/<dataset_name>``."""
    folder = Path(out_dir) / PREPROCESSED_DIR / dataset_name
    atomic_write_json(
        folder / f"{NNUNET_PLANS_NAME}.json", to_nnunet_plans(plans, fingerprint, dataset_name=dataset_name)
    )
    atomic_write_json(folder / FINGERPRINT_FILE, to_nnunet_fingerprint(fingerprint))
    atomic_write_json(folder / DATASET_FILE, to_nnunet_dataset_json(fingerprint, file_ending))
    return folder


def to_nnunet_plans(
    plans: Plans, fingerprint: Fingerprint, plans_name: str = NNUNET_PLANS_NAME, dataset_name: str | None = None
) -> dict[str, Any]:
    """``nnUNetPlans.json`` content for ``plans``; ``fingerprint`` supplies the intensity statistics.

    ``batch_dice`` follows nnU-Net: True for ``2d``; for ``3d_fullres`` True only when nnU-Net
    would also have planned a ``3d_lowres`` configuration. ``dataset_name`` is nnU-Net's folder
    name (:func:`nnunet_dataset_name`; default: derived from the fingerprint's dataset folder).
    """
    configurations: dict[str, Any] = {}
    if "2d" in plans.configurations:
        configurations["2d"] = _configuration(plans.configurations["2d"], True, plans_name)
    if "3d_fullres" in plans.configurations:
        full = plans.configurations["3d_fullres"]
        lowres = nnunet_would_plan_lowres(full, full.median_shape, len(plans.labels))
        configurations["3d_fullres"] = _configuration(full, lowres, plans_name)
    stats = _intensity_stats(fingerprint)
    return {
        "dataset_name": dataset_name or nnunet_dataset_name(fingerprint.dataset_root, plans.dataset_name),
        "plans_name": plans_name,
        "original_median_spacing_after_transp": list(plans.original_median_spacing_after_transp),
        "original_median_shape_after_transp": list(plans.original_median_shape_after_transp),
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": list(plans.transpose_forward),
        "transpose_backward": list(plans.transpose_backward),
        "configurations": configurations,
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": stats,
    }
