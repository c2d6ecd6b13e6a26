"""The experiment planner: nnU-Net v2's ``ExperimentPlanner`` rules as a pipeline of small steps.

``plan_experiment(fingerprint)`` runs, in order:

1. :func:`check_fingerprint`: refuse what cannot be planned (one line, :class:`AlsegError`);
2. :func:`determine_fullres_target_spacing`: median spacing + the anisotropy rule;
3. :func:`determine_transpose`: the lowest-resolution axis goes first;
4. :func:`median_shape_after_resampling`: the median case shape at the target spacing;
5. :func:`determine_normalization`: per channel name (CT vs z-score) and ``use_mask_for_norm``;
6. :func:`plan_configuration` for ``3d_fullres`` (3D data only) and ``2d`` (always): initial
   patch from the 1/spacing aspect ratio, topology, shrink while the memory estimate is too
   high, batch size from the reference with the 5 %-of-dataset cap.

Every number is a named constant below, with nnU-Net's name for it. Per-axis lists are in the
transposed order. The result is a validated :class:`~alseg.plans.models.Plans`.

nnU-Net also plans ``3d_lowres`` (and the cascade) when the full-resolution patch covers less
than 25 % of the median image; alseg does not train a cascade, so that configuration is not
written, but :func:`alseg.plans.nnunet_export.nnunet_would_plan_lowres` reproduces the decision
for the nnU-Net export (it sets ``batch_dice`` of ``3d_fullres``). The patch-size search both
use is :mod:`alseg.plans.patch_size`.

:func:`plan_dataset` (fingerprint + plan + files) and :func:`summarize_plans` (a rich table) are
the entry points of ``alseg plan``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from rich.table import Table

from alseg.dataset.raw import read_dataset
from alseg.dataset.resample import compute_new_shape
from alseg.errors import AlsegError
from alseg.plans.fingerprint import extract_fingerprint
from alseg.plans.models import (
    FINGERPRINT_FILE,
    Configuration,
    Fingerprint,
    Network,
    Normalization,
    Plans,
    Resampling,
    plans_file,
    save_model,
)
from alseg.plans.nnunet_export import nnunet_dataset_name, write_nnunet_export
from alseg.plans.patch_size import (
    BASE_FEATURES,
    DEFAULT_GPU_MEMORY_GB,
    MAX_FEATURES_2D,
    MAX_FEATURES_3D,
    N_CONV_PER_STAGE,
    initial_patch_size,
    patch_and_topology,
)
from alseg.plans.topology import features_per_stage

# -- nnU-Net v2 constants (default_experiment_planner.py, configuration.py) -----------------
ANISOTROPY_THRESHOLD = 3.0  # ANISO_THRESHOLD
ANISOTROPIC_AXIS_PERCENTILE = 10  # target spacing of an anisotropic axis: its 10th percentile
ANISOTROPIC_SPACING_MARGIN = 1e-5  # added when the anisotropic axis is raised to the others
MIN_BATCH_SIZE = 2  # UNet_min_batch_size
MAX_DATASET_COVERED = 0.05  # one batch covers at most 5 % of the dataset's voxels
MASK_FOR_NORM_RELATIVE_SIZE = 0.75  # use_mask_for_norm when cropping kept < 3/4 of the image

# -- sanity limits of alseg (not nnU-Net's) ----------------------------------------------------
MAX_SPACING_MM = 1e3  # nnU-Net's fake 999 mm slice spacing of 2D data is below this
MIN_CASES = 2
PLANS_NAME = "alsegPlans"

CT_CHANNEL_NAMES = ("ct",)
NO_NORM_CHANNEL_NAMES = ("nonorm",)


# --------------------------------------------------------------------------- checks


def check_fingerprint(fp: Fingerprint) -> None:
    """Refuse a fingerprint that cannot be planned, with one line naming the problem and the fix."""
    where = Path(fp.dataset_root) / "dataset.json"
    n = len(fp.case_ids)
    if n < MIN_CASES:
        raise AlsegError(
            f"only {n} training case(s) — planning (and a train/test split) needs at least {MIN_CASES}", where
        )
    labelled = fp.intensity_source == "labelled foreground"  # else: no case is labelled yet
    if labelled and not any(v > 0 for k, v in fp.voxels_per_class.items() if k != 0):
        raise AlsegError("every label map is all background (0) — check that labelsTr holds the annotations", where)
    dims = {len(s) for s in fp.spacings} | {len(s) for s in fp.shapes_after_crop}
    if dims != {3}:
        raise AlsegError(f"cases must be 3D arrays (2D images as one slice), found {sorted(dims)} axes", where)
    for cid, spacing in zip(fp.case_ids, fp.spacings):
        if not all(np.isfinite(s) and 0 < s <= MAX_SPACING_MM for s in spacing):
            raise AlsegError(
                f"case {cid} has spacing {spacing} mm — every spacing must be > 0 and <= {MAX_SPACING_MM:g}; fix the image header",
                where,
            )
    for cid, shape in zip(fp.case_ids, fp.shapes_after_crop):
        if any(s < 1 for s in shape):
            raise AlsegError(
                f"case {cid} is empty after cropping to its non-zero region (shape {shape}) — the image is all zeros",
                where,
            )
    for c, st in fp.foreground_intensity_properties_per_channel.items():
        if not all(np.isfinite(v) for v in st.model_dump().values()):
            raise AlsegError(
                f"channel {c} has non-finite foreground intensity statistics — re-run 'alseg check' on the images",
                where,
            )


# --------------------------------------------------------------------------- steps


def determine_fullres_target_spacing(
    spacings: Sequence[Sequence[float]], shapes: Sequence[Sequence[int]], threshold: float = ANISOTROPY_THRESHOLD
) -> np.ndarray:
    """Median spacing per axis, with nnU-Net's anisotropy rule (file axis order).

    If the coarsest axis' median spacing is > ``threshold`` x the largest other spacing *and*
    its median size x ``threshold`` is < the smallest other median size, its target spacing
    becomes the 10th percentile of that axis' spacings, raised (plus 1e-5) to the largest other
    spacing if it would fall below it.
    """
    spacings = np.asarray(spacings, dtype=np.float64)
    target = np.percentile(spacings, 50, axis=0)
    target_size = np.percentile(np.asarray(shapes, dtype=np.float64), 50, axis=0)
    worst = int(np.argmax(target))
    others = [i for i in range(len(target)) if i != worst]
    other_spacings = [target[i] for i in others]
    other_sizes = [target_size[i] for i in others]
    aniso_spacing = target[worst] > threshold * max(other_spacings)
    aniso_voxels = target_size[worst] * threshold < min(other_sizes)
    if aniso_spacing and aniso_voxels:
        t = np.percentile(spacings[:, worst], ANISOTROPIC_AXIS_PERCENTILE)
        if t < max(other_spacings):
            t = max(max(other_spacings), t) + ANISOTROPIC_SPACING_MARGIN
        target[worst] = t
    return target


def determine_transpose(target_spacing: Sequence[float]) -> tuple[list[int], list[int]]:
    """``transpose_forward`` puts the axis with the largest target spacing first (others keep order)."""
    first = int(np.argmax(target_spacing))
    forward = [first] + [i for i in range(3) if i != first]
    backward = [forward.index(i) for i in range(3)]
    return forward, backward


def median_shape_after_resampling(fp: Fingerprint, target_spacing: Sequence[float]) -> np.ndarray:
    """Median over cases of the cropped shape resampled to ``target_spacing`` (file order, float)."""
    shapes = [compute_new_shape(sh, sp, target_spacing) for sh, sp in zip(fp.shapes_after_crop, fp.spacings)]
    return np.median(np.asarray(shapes, dtype=np.float64), axis=0)


def normalization_scheme(channel_name: str) -> str:
    """nnU-Net's ``get_normalization_scheme``: 'CT' → ct, 'noNorm' → none, anything else → z-score."""
    name = channel_name.casefold()
    if name in CT_CHANNEL_NAMES:
        return "ct"
    if name in NO_NORM_CHANNEL_NAMES:
        return "none"
    return "zscore"


def determine_normalization(fp: Fingerprint) -> list[Normalization]:
    """One :class:`Normalization` per channel (channel order of ``fp.channel_names``).

    CT channels are clipped to the fingerprint's foreground 0.5/99.5 percentiles and standardised
    with its foreground mean/std. ``use_mask_for_norm`` holds for z-score channels only, when the
    median relative size after cropping is < 3/4 (cropping removed a large zero background).
    """
    use_mask = fp.median_relative_size_after_cropping < MASK_FOR_NORM_RELATIVE_SIZE
    out = []
    for c in sorted(fp.channel_names):
        scheme = normalization_scheme(fp.channel_names[c])
        if scheme == "ct":
            st = fp.foreground_intensity_properties_per_channel[c]
            out.append(
                Normalization(
                    scheme="ct",
                    clip_lower=st.percentile_00_5,
                    clip_upper=st.percentile_99_5,
                    mean=st.mean,
                    std=st.std if st.std > 0 else 1.0,
                )
            )
        else:
            out.append(Normalization(scheme=scheme, use_mask_for_norm=use_mask and scheme == "zscore"))
    return out


def determine_batch_size(
    estimate: int, reference: float, ref_bs: int, n_voxels_dataset: float, patch_size: Sequence[int]
) -> int:
    """``round(reference / estimate * ref_bs)``, capped at 5 % of the dataset's voxels, at least 2."""
    batch = round(reference / estimate * ref_bs)
    cap = round(n_voxels_dataset * MAX_DATASET_COVERED / np.prod(patch_size, dtype=np.float64))
    return int(max(min(batch, cap), MIN_BATCH_SIZE))


def plan_configuration(
    name: str,
    spacing: Sequence[float],
    median_shape: Sequence[float],
    n_classes: int,
    n_voxels_dataset: float,
    normalization: list[Normalization],
    data_identifier: str,
    gpu_memory_gb: float = DEFAULT_GPU_MEMORY_GB,
) -> Configuration:
    """nnU-Net's ``get_plans_for_configuration`` for one configuration (transposed axes).

    ``median_shape`` is the median image size at ``spacing``; ``n_voxels_dataset`` is that
    median volume times the number of cases (the 5 % cap uses it).
    """
    if not all(s > 0 for s in spacing):
        raise AlsegError(f"configuration {name}: spacing must be > 0, got {list(spacing)}")
    dim = len(spacing)
    topo, estimate, reference, ref_bs = patch_and_topology(spacing, median_shape, n_classes, gpu_memory_gb)
    batch = determine_batch_size(estimate, reference, ref_bs, n_voxels_dataset, topo.patch_size)
    network = Network(
        n_stages=topo.n_stages,
        features_per_stage=list(
            features_per_stage(topo.n_stages, MAX_FEATURES_3D if dim == 3 else MAX_FEATURES_2D, BASE_FEATURES)
        ),
        kernel_sizes=[list(k) for k in topo.kernel_sizes],
        strides=[list(s) for s in topo.strides],
        n_conv_per_stage=N_CONV_PER_STAGE,
    )
    return Configuration(
        name=name,
        data_identifier=data_identifier,
        spacing=[float(s) for s in spacing],
        median_shape=[int(round(m)) for m in median_shape],
        patch_size=[int(p) for p in topo.patch_size],
        batch_size=batch,
        normalization=normalization,
        resampling=Resampling(separate_z_anisotropy_threshold=ANISOTROPY_THRESHOLD),
        network=network,
    )


def plan_experiment(
    fingerprint: Fingerprint, plans_name: str = PLANS_NAME, gpu_memory_gb: float = DEFAULT_GPU_MEMORY_GB
) -> Plans:
    """nnU-Net v2's ``plan_experiment``: ``2d`` always, ``3d_fullres`` when the data is 3D."""
    fp = fingerprint
    check_fingerprint(fp)
    target = determine_fullres_target_spacing(fp.spacings, fp.shapes_after_crop)
    forward, backward = determine_transpose(target)
    target_t = target[forward]
    median_t = median_shape_after_resampling(fp, target)[forward]
    n_voxels_dataset = float(np.prod(median_t, dtype=np.float64) * len(fp.case_ids))
    normalization = determine_normalization(fp)
    n_classes = len(fp.labels)

    configurations: dict[str, Configuration] = {}
    if median_t[0] != 1:  # a single-slice (2D) dataset has no 3D configuration
        configurations["3d_fullres"] = plan_configuration(
            "3d_fullres",
            target_t,
            median_t,
            n_classes,
            n_voxels_dataset,
            normalization,
            f"{plans_name}_3d_fullres",
            gpu_memory_gb,
        )
    configurations["2d"] = plan_configuration(
        "2d", target_t[1:], median_t[1:], n_classes, n_voxels_dataset, normalization, f"{plans_name}_2d", gpu_memory_gb
    )
    return Plans(
        dataset_name=fp.dataset_name,
        dataset_root=fp.dataset_root,
        plans_name=plans_name,
        channel_names=dict(fp.channel_names),
        labels=dict(fp.labels),
        transpose_forward=forward,
        transpose_backward=backward,
        original_median_spacing_after_transp=[float(s) for s in np.median(np.asarray(fp.spacings), 0)[forward]],
        original_median_shape_after_transp=[
            int(round(s)) for s in np.median(np.asarray(fp.shapes_after_crop), 0)[forward]
        ],
        configurations=dict(sorted(configurations.items())),
        intensity_source=fp.intensity_source,
    )


# --------------------------------------------------------------------------- entry points


def plan_dataset(
    dataset_dir: str | Path,
    out_dir: str | Path,
    export_nnunet: bool = False,
    workers: int | None = None,
    show_progress: bool = True,
    nnunet_id: int | None = None,
) -> Plans:
    """Fingerprint and plan a dataset; writes ``fingerprint.json``, ``plans.json`` (and, with
    ``export_nnunet``, nnU-Net's ``nnUNet_preprocessed/DatasetXXX_Name/``: :mod:`alseg.plans.nnunet_export`).

    All files are written atomically into ``out_dir``; bad input is an :class:`AlsegError`.
    """
    info = read_dataset(dataset_dir)
    fingerprint = extract_fingerprint(info, workers=workers, show_progress=show_progress)
    plans = plan_experiment(fingerprint)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_model(fingerprint, out_dir / FINGERPRINT_FILE)
    save_model(plans, plans_file(out_dir))
    if export_nnunet:
        name = nnunet_dataset_name(info.root, info.name, nnunet_id)
        write_nnunet_export(out_dir, plans, fingerprint, name, info.file_ending)
    return plans


def summarize_plans(plans: Plans):
    """A rich table of the plan, one column per configuration (for ``alseg plan``)."""
    fmt = lambda xs: " x ".join(f"{x:g}" for x in xs)  # noqa: E731
    names = list(plans.configurations)
    table = Table(
        title=f"{plans.dataset_name}: {plans.plans_name} (axes in transposed order {plans.transpose_forward})"
    )
    table.add_column("")
    for n in names:
        table.add_column(n, justify="right")
    confs = [plans.configurations[n] for n in names]

    def row(label: str, fn) -> None:
        table.add_row(label, *[fn(c) for c in confs])

    row("spacing (mm)", lambda c: fmt(c.spacing))
    row("median shape", lambda c: fmt(c.median_shape))
    row("patch size", lambda c: fmt(c.patch_size))
    row("batch size", lambda c: str(c.batch_size))
    row("stages", lambda c: str(c.network.n_stages))
    row("features", lambda c: ", ".join(map(str, c.network.features_per_stage)))
    row("strides", lambda c: ", ".join("x".join(map(str, s)) for s in c.network.strides))
    row("kernels", lambda c: ", ".join("x".join(map(str, k)) for k in c.network.kernel_sizes))
    row(
        "normalisation",
        lambda c: ", ".join(n.scheme + ("+mask" if n.use_mask_for_norm else "") for n in c.normalization),
    )
    return table


__all__ = [
    "check_fingerprint",
    "determine_fullres_target_spacing",
    "determine_transpose",
    "determine_normalization",
    "initial_patch_size",
    "plan_configuration",
    "plan_experiment",
    "plan_dataset",
    "summarize_plans",
]
