"""Images-only datasets (issue #15, item 1, first part): ``check`` and ``plan`` work when
``labelsTr`` is absent or covers only some cases; preprocessing caches every case (the
loop's side is in test_unlabelled.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from builders import write_msd, write_nnunet

from alseg.data.cache import build_cache
from alseg.dataset.raw import read_dataset
from alseg.dataset.validate import check_dataset
from alseg.errors import AlsegError
from alseg.plans.fingerprint import extract_fingerprint
from alseg.plans.planner import plan_dataset


def _drop_msd_labels(root: Path, keep: int) -> None:
    meta = json.loads((root / "dataset.json").read_text())
    for entry in meta["training"][keep:]:
        (root / entry.pop("label")).unlink()
    (root / "dataset.json").write_text(json.dumps(meta))


def test_msd_with_some_labels_checks_and_plans_from_the_labelled(tmp_path: Path):
    root = write_msd(tmp_path / "Task99_Tiny", n=4)
    full = extract_fingerprint(read_dataset(root), workers=1, show_progress=False)
    _drop_msd_labels(root, keep=2)
    info = read_dataset(root)
    assert [c.label is None for c in info.training] == [False, False, True, True]
    assert len(info.labelled) == 2
    result = check_dataset(info, show_progress=False)
    assert result.ok, result.problems
    assert any("2 of 4 training cases have no label file" in w for w in result.warnings)
    fp = extract_fingerprint(info, workers=1, show_progress=False)
    assert fp.intensity_source == "labelled foreground" and fp.case_ids == full.case_ids
    assert fp.voxels_per_class[1] < full.voxels_per_class[1]  # counted over the labelled cases only
    plans = plan_dataset(root, tmp_path / "plan", show_progress=False)
    assert plans.configurations and (tmp_path / "plan" / "plans.json").is_file()
    cache = build_cache(plans, "2d", tmp_path / "plan", show_progress=False, workers=1)  # every case, labelled or not
    assert len(cache.case_ids()) == 4 and len(cache.unlabelled_case_ids()) == 2


def test_nnunet_raw_without_labels_plans_from_the_nonzero_region(tmp_path: Path):
    root = write_nnunet(tmp_path / "Dataset099_Tiny", n=3)
    shutil.rmtree(root / "labelsTr")
    info = read_dataset(root)
    assert info.labelled == [] and len(info.training) == 3
    result = check_dataset(info, show_progress=False)
    assert result.ok, result.problems
    assert any("3 of 3 training cases have no label file" in w for w in result.warnings)
    fp = extract_fingerprint(info, workers=1, show_progress=False)
    assert fp.intensity_source == "nonzero region"
    assert fp.foreground_intensity_properties_per_channel[0].mean > 0
    plan_dataset(root, tmp_path / "plan", show_progress=False)
    saved = json.loads((tmp_path / "plan" / "fingerprint.json").read_text())
    assert saved["intensity_source"] == "nonzero region"


def test_a_missing_image_entry_is_still_an_error(tmp_path: Path):
    root = write_msd(tmp_path / "Task99_Tiny", n=2)
    meta = json.loads((root / "dataset.json").read_text())
    meta["training"][0] = {"label": meta["training"][0]["label"]}
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(AlsegError, match=r"training\[0\] must have 'image'"):
        read_dataset(root)
