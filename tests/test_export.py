"""``alseg export-nnunet``: nnU-Net v2's raw-format rules on the export of a simulated run."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from alseg.active.export import export_nnunet
from alseg.data.cache import CaseCache
from alseg.dataset.crop import uncrop
from alseg.dataset.io import read_volume
from alseg.errors import AlsegError
from alseg.plans.models import load_plans


def test_export_follows_nnunet_raw_rules(finished_run, tmp_path: Path):
    data, plan_dir, run = finished_run
    summary = export_nnunet(run, tmp_path / "raw", dataset_id=501, name="DemoAL", show_progress=False)
    folder = tmp_path / "raw" / "Dataset501_DemoAL"
    assert summary.folder == folder and sorted(p.name for p in folder.iterdir()) == [
        "dataset.json",
        "imagesTr",
        "labelsTr",
    ]
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "MRI"}
    assert meta["labels"] == {"background": 0, "Anterior": 1, "Posterior": 2, "ignore": 3}
    assert meta["file_ending"] == ".nii.gz" and meta["numTraining"] == len(summary.cases)

    annotated = sorted(p.stem for p in (run / "labels").glob("*.npy") if (np.load(p) != 255).any())
    assert summary.cases == annotated and annotated
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == [f"{c}_0000.nii.gz" for c in annotated]
    assert sorted(p.name for p in (folder / "labelsTr").iterdir()) == [f"{c}.nii.gz" for c in annotated]
    for name in (folder / "imagesTr").iterdir():
        assert re.fullmatch(r".+_\d{4}\.nii\.gz", name.name)

    plans = load_plans(plan_dir / "plans.json")
    cache = CaseCache.of(plan_dir, plans, "2d")
    exact = 0
    for case_id in annotated:
        label, lgeom = read_volume(folder / "labelsTr" / f"{case_id}.nii.gz")
        image, igeom = read_volume(folder / "imagesTr" / f"{case_id}_0000.nii.gz")
        truth, _ = read_volume(data / "labelsTr" / f"{case_id}.nii.gz")
        assert label.shape == image.shape and lgeom.matches(igeom) is None
        assert (image == read_volume(data / "imagesTr" / f"{case_id}.nii.gz")[0]).all()
        assert set(np.unique(label).tolist()) <= {0, 1, 2, 3}
        props = cache.properties(case_id)
        store = np.load(run / "labels" / f"{case_id}.npy")
        if props["shape_after_resampling"] != props["shape_after_cropping"]:
            seen = label != 3
            assert (label[seen] == truth[seen]).mean() > 0.97
            continue
        exact += 1
        mask = uncrop(store != 255, props["bbox_used_for_cropping"], props["shape_before_cropping"], False)
        mask = mask.transpose(np.argsort(props["transpose_forward"]))
        assert (label[~mask] == 3).all()  # every unannotated voxel is ignore
        np.testing.assert_array_equal(label[mask], truth[mask])  # annotated voxels are the ground truth
        assert summary.annotated_voxels >= int(mask.sum())
    assert exact > 0


def test_export_refuses_an_existing_folder_and_bad_names(finished_run, tmp_path: Path):
    _, _, run = finished_run
    (tmp_path / "Dataset502_X").mkdir()
    with pytest.raises(AlsegError, match="already exists"):
        export_nnunet(run, tmp_path, dataset_id=502, name="X", show_progress=False)
    with pytest.raises(AlsegError, match="--name"):
        export_nnunet(run, tmp_path, dataset_id=503, name="has space", show_progress=False)
    with pytest.raises(AlsegError, match="--dataset-id"):
        export_nnunet(run, tmp_path, dataset_id=1000, show_progress=False)
    with pytest.raises(AlsegError, match="not a run directory"):
        export_nnunet(tmp_path, tmp_path, show_progress=False)


def test_export_cli(finished_run, tmp_path: Path):
    _, _, run = finished_run
    cmd = [sys.executable, "-c", "from alseg.cli import main; main()", "export-nnunet", str(run)]
    res = subprocess.run([*cmd, "-o", str(tmp_path), "--dataset-id", "7"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    folders = [p.name for p in tmp_path.iterdir()]
    assert len(folders) == 1 and folders[0].startswith("Dataset007_")
    # the command to copy is one line of its own, however long the path and though stdout is a pipe
    command = f"nnUNet_raw={tmp_path} nnUNetv2_plan_and_preprocess -d 7 --verify_dataset_integrity"
    assert command in res.stdout.splitlines(), res.stdout
