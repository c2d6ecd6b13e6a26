"""``alseg export-nnunet``: what a run's annotator labelled, as an nnU-Net v2 raw dataset.

``DIR/DatasetNNN_Name/``::

    dataset.json                 channel_names, labels (+ "ignore": K), numTraining, file_ending
    imagesTr/<case>_XXXX.nii.gz  every case with at least one annotated voxel, one file per channel
    labelsTr/<case>.nii.gz       the annotated voxels on the image's own grid; nnU-Net's ``ignore``
                                 label (the highest label, K) everywhere else

The annotations (``RUN/labels/<case>.npy``, on the plan's grid, 255 = not annotated) are mapped
back to the file's grid by :func:`alseg.data.restore.labels_to_original` (resample with the
plan's label resampling, uncrop, transpose back); voxels outside the crop box were never shown
and are ``ignore`` too. So ``nnUNetv2_plan_and_preprocess`` and ``nnUNetv2_train`` see exactly
what was annotated (nnU-Net v2 trains on sparse labels through its ignore label). Single-channel
``.nii.gz`` images are copied byte for byte; others are written per channel in their own dtype.
The dataset is written into a temporary folder and renamed when complete.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alseg.active.oracles.labels import UNLABELLED
from alseg.active.rundir import RunDir
from alseg.atomic import atomic_write_json
from alseg.data.pipeline import grid_properties
from alseg.data.restore import labels_to_original
from alseg.dataset.io import read_volume, write_volume
from alseg.dataset.raw import CaseFiles, load_case, read_dataset
from alseg.errors import AlsegError
from alseg.plans.models import load_plans
from alseg.progress import progress_map

__all__ = ["DEFAULT_DATASET_ID", "FILE_ENDING", "IGNORE_NAME", "ExportSummary", "dataset_folder", "export_nnunet"]

DEFAULT_DATASET_ID = 500
FILE_ENDING = ".nii.gz"
IGNORE_NAME = "ignore"  # nnU-Net v2's name for the label that marks unannotated voxels


@dataclass
class ExportSummary:
    folder: Path
    cases: list[str]
    annotated_voxels: int
    total_voxels: int


def dataset_folder(out_dir: Path, dataset_id: int, name: str) -> Path:
    """``out_dir/DatasetNNN_Name`` (nnU-Net v2's naming)."""
    if not 1 <= dataset_id <= 999:
        raise AlsegError(f"--dataset-id must be 1..999 (nnU-Net's DatasetNNN), got {dataset_id}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name):
        raise AlsegError(f"--name must be letters, digits, '-' or '_' (no spaces), got '{name}'")
    return Path(out_dir) / f"Dataset{dataset_id:03d}_{name}"


def _default_name(dataset: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9]+", "", dataset.split("_", 1)[-1]) or "alseg"
    return f"{cleaned}AL"


def _copy_images(case: CaseFiles, n_channels: int, folder: Path) -> None:
    if not case.four_d and all(p.name.endswith(FILE_ENDING) for p in case.images):
        for c, p in enumerate(case.images):
            shutil.copyfile(p, folder / f"{case.case_id}_{c:04d}{FILE_ENDING}")
        return
    if case.four_d:
        arr, geom = read_volume(case.images[0])
        channels = [(arr[c], geom) for c in range(n_channels)]
    else:
        channels = [read_volume(p) for p in case.images]
    for c, (arr, geom) in enumerate(channels):
        write_volume(arr, geom, folder / f"{case.case_id}_{c:04d}{FILE_ENDING}")


def _export_case(job: tuple) -> tuple[str, int, int]:
    """Worker: one case's images and label map; returns (case, annotated voxels, voxels)."""
    case, annotated, plans, config_name, n_channels, folder, ignore = job
    image, _, geometry = load_case(dataclasses.replace(case, label=None), n_channels)
    props = grid_properties(image, geometry, plans, config_name)
    if list(annotated.shape) != list(props["shape_after_resampling"]):
        raise AlsegError(
            f"annotations of case {case.case_id} have shape {list(annotated.shape)}, the plan gives "
            f"{props['shape_after_resampling']} — the dataset changed since the run",
            case.images[0],
        )
    back = labels_to_original(annotated, props, plans.configuration(config_name).resampling, fill=UNLABELLED)
    label = np.where(back == UNLABELLED, ignore, back).astype(np.uint8 if ignore <= 255 else np.int16)
    _copy_images(case, n_channels, folder / "imagesTr")
    write_volume(label, geometry, folder / "labelsTr" / f"{case.case_id}{FILE_ENDING}")
    return case.case_id, int((label != ignore).sum()), int(label.size)


def export_nnunet(
    run_dir: str | Path,
    out_dir: str | Path,
    dataset_id: int = DEFAULT_DATASET_ID,
    name: str | None = None,
    show_progress: bool = True,
) -> ExportSummary:
    """Write the run's annotations as an nnU-Net v2 raw dataset (see the module docstring)."""
    run = RunDir(Path(run_dir))
    if not run.exists():
        raise AlsegError("not a run directory (no config.json) — pass the -o folder of 'alseg loop'", run.path)
    config = run.load_config()
    plans = load_plans(run.plans_path)
    folder = dataset_folder(Path(out_dir), dataset_id, name or _default_name(plans.dataset_name))
    if folder.exists():
        raise AlsegError("already exists — choose another --dataset-id or --name, or delete it", folder)
    classes = sorted(plans.labels)
    if classes != list(range(len(classes))):
        raise AlsegError(f"labels {classes} are not consecutive from 0 — nnU-Net needs 0..K-1")
    if IGNORE_NAME in plans.labels.values():
        raise AlsegError(f"a label is already named '{IGNORE_NAME}' — rename it in dataset.json and plan again")
    ignore = len(classes)
    info = read_dataset(config.dataset_root)
    run.check_label_files(run.load_state())  # a damaged run is reported, never exported as if whole
    train = run.load_split()["train"]
    todo = []
    for case_id in sorted(train):
        path = run.label_path(case_id)
        if not path.is_file():
            continue
        annotated = np.load(path)
        if (annotated != UNLABELLED).any():
            todo.append((info.case(case_id), annotated, plans, config.config, info.n_channels, None, ignore))
    if not todo:
        raise AlsegError("nothing is annotated yet — run 'alseg loop' until a round has labels", run.labels_dir)

    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "imagesTr").mkdir(parents=True)
    (tmp / "labelsTr").mkdir()
    jobs = [(*j[:5], tmp, j[6]) for j in todo]
    done = progress_map(map, _export_case, jobs, f"exporting {len(jobs)} case(s)", show_progress)
    labels = {plans.labels[k]: k for k in classes}
    labels[IGNORE_NAME] = ignore
    atomic_write_json(
        tmp / "dataset.json",
        {
            "name": folder.name.split("_", 1)[1],
            "description": f"annotations of alseg run {run.path.resolve()} ({config.strategy}, seed {config.seed}); "
            f"'{IGNORE_NAME}' marks voxels nobody annotated",
            "channel_names": {str(k): v for k, v in sorted(plans.channel_names.items())},
            "labels": labels,
            "numTraining": len(done),
            "file_ending": FILE_ENDING,
        },
    )
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(folder)
    return ExportSummary(folder, [d[0] for d in done], sum(d[1] for d in done), sum(d[2] for d in done))
