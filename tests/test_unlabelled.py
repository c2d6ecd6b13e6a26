"""Images-only datasets through preprocess and the loop (issue #15, items 1 and 2).

Synthetic data whose label files are removed (kept aside as the hidden truth); a script plays
the person behind ``--oracle files`` and draws each asked mask from that hidden truth.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from alseg.active.annotation import manifest_cases
from alseg.active.loop import AnnotationIncomplete, LoopDriver
from alseg.active.settings import LoopSettings
from alseg.active.workspace import split_cases
from alseg.data.cache import CaseCache, build_cache
from alseg.data.pipeline import preprocess_case
from alseg.dataset.raw import load_case, read_dataset
from alseg.errors import AlsegError
from alseg.model.train import make_split
from alseg.plans.models import load_fingerprint, load_plans
from alseg.plans.nnunet_export import to_nnunet_plans

TINY = dict(budget=4, initial=8, epochs=1, iters_per_epoch=2, batch_size=4, mc_passes=2, oracle="files")


def _make(root: Path, unlabelled: list[int], cases: int = 6) -> tuple[Path, Path, Path]:
    """(dataset, plan folder, hidden truth folder): cases ``unlabelled`` lose their label."""
    from alseg.dataset.synthetic import generate_dataset
    from alseg.plans.planner import plan_dataset

    data = generate_dataset(root / "data", cases=cases, test_cases=0)
    truth = root / "truth"
    truth.mkdir()
    meta = json.loads((data / "dataset.json").read_text())
    for k in unlabelled:
        entry = meta["training"][k]
        label = data / entry.pop("label")
        shutil.move(label, truth / label.name)
    (data / "dataset.json").write_text(json.dumps(meta))
    plan_dataset(data, root / "plan", show_progress=False, workers=1)
    return data, root / "plan", truth


@pytest.fixture(scope="module")
def partly(tmp_path_factory) -> tuple[Path, Path, Path]:
    """synth_000..005, the last three without a label."""
    return _make(tmp_path_factory.mktemp("partly"), [3, 4, 5])


@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory) -> tuple[Path, Path, Path]:
    """synth_000..005, none with a label."""
    return _make(tmp_path_factory.mktemp("none"), list(range(6)))


@cache
def _truth(plan_dir: Path, truth_dir: Path, case_id: str) -> np.ndarray:
    """A hidden label on the run's preprocessed grid (the cache's own pipeline)."""
    plans = load_plans(plan_dir / "plans.json")
    info = read_dataset(plans.dataset_root)
    files = next(c for c in info.training if c.case_id == case_id)
    label = files.label or truth_dir / f"{case_id}.nii.gz"
    image, seg, geometry = load_case(dataclasses.replace(files, label=label), info.n_channels)
    return preprocess_case(image, seg, geometry, plans, "2d")[1][0]


def annotate(folder: Path, plan_dir: Path, truth_dir: Path) -> int:
    """The person behind ``--oracle files``: for each case of the package, saves the whole case's
    label map — the hidden truth file, which alseg never saw — where the manifest asks for it.

    The one place that knows the files oracle's package (``manifest.json`` cases with ``case``
    and ``label``); alseg keeps only the voxels inside the asked region."""
    cases = manifest_cases(folder)
    info = read_dataset(load_plans(plan_dir / "plans.json").dataset_root)
    for case in cases:
        hidden = truth_dir / f"{case['case']}.nii.gz"
        source = hidden if hidden.is_file() else info.case(case["case"]).label  # a labelled pool case
        (folder / case["label"]).write_bytes(source.read_bytes())
    return len(cases)


def _run_annotated(target: Path, run: Path, settings: LoopSettings, plan_dir: Path, truth: Path) -> LoopDriver:
    """Run the loop, annotating each package the files oracle writes, until it finishes."""
    resume = False
    for _ in range(settings.rounds + 2):
        driver = LoopDriver(target, run, settings, resume=resume, workers=0, show_progress=False)
        try:
            driver.run_all()
            return driver
        except AnnotationIncomplete as e:
            assert not e.problems, e.problems
            assert annotate(e.folder, plan_dir, truth) > 0
            resume = True
    raise AssertionError("the loop kept waiting for annotations")


def _rows(run: Path) -> list[dict]:
    with (run / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------------- preprocess
def test_preprocess_caches_every_case_and_marks_the_unlabelled(partly, unlabelled):
    for (_, plan_dir, _), no_label in ((partly, {"synth_003", "synth_004", "synth_005"}), (unlabelled, None)):
        plans = load_plans(plan_dir / "plans.json")
        built = build_cache(plans, "2d", plan_dir, show_progress=False, workers=1)
        no_label = no_label or set(built.case_ids())
        assert built.case_ids() == [f"synth_{k:03d}" for k in range(6)]
        assert set(built.unlabelled_case_ids()) == no_label
        assert built.manifest()["unlabelled"] == sorted(no_label)
        for c in built.case_ids():
            props = built.properties(c)
            assert props["labelled"] is (c not in no_label)
            assert built.label_path(c).is_file() is (c not in no_label)
            assert ("voxels_per_class" in props) is (c not in no_label)
            assert built.image(c).shape[1:] == tuple(props["shape_after_resampling"])
        with pytest.raises(AlsegError, match="has no label"):
            built.label(sorted(no_label)[0])
        # plans.json records where the normalisation's intensities came from; nnU-Net's export does not
        source = "nonzero region" if len(no_label) == 6 else "labelled foreground"
        assert json.loads((plan_dir / "plans.json").read_text())["intensity_source"] == source
        fp = load_fingerprint(plan_dir / "fingerprint.json")
        assert "intensity_source" not in json.dumps(to_nnunet_plans(plans, fp))
        # idempotent: a second build rewrites nothing
        stamp = built.manifest_path.stat().st_mtime_ns
        build_cache(plans, "2d", plan_dir, show_progress=False, workers=1)
        assert built.manifest_path.stat().st_mtime_ns == stamp


def test_a_label_added_later_recomputes_that_case(tmp_path: Path):
    data, plan_dir, truth = _make(tmp_path, [1, 2], cases=3)
    plans = load_plans(plan_dir / "plans.json")
    built = build_cache(plans, "2d", plan_dir, show_progress=False, workers=1)
    assert built.unlabelled_case_ids() == ["synth_001", "synth_002"]
    kept = built.properties_path("synth_000").stat().st_mtime_ns
    # the annotations of synth_001 arrive
    shutil.copy(truth / "synth_001.nii.gz", data / "labelsTr" / "synth_001.nii.gz")
    meta = json.loads((data / "dataset.json").read_text())
    meta["training"][1]["label"] = "./labelsTr/synth_001.nii.gz"
    (data / "dataset.json").write_text(json.dumps(meta))
    again = build_cache(plans, "2d", plan_dir, show_progress=False, workers=1)
    assert again.unlabelled_case_ids() == ["synth_002"]
    fresh = CaseCache(again.folder)
    assert fresh.properties("synth_001")["labelled"] is True
    np.testing.assert_array_equal(fresh.label("synth_001"), _truth(plan_dir, truth, "synth_001"))
    assert fresh.properties_path("synth_000").stat().st_mtime_ns == kept  # the others are reused


# ------------------------------------------------------------------------------------- the split
def test_split_rules():
    ids = [f"c{k}" for k in range(7)]
    assert split_cases(ids, [], 2) == make_split(ids, 2)  # every case labelled: nnU-Net's folds, as before
    assert split_cases(ids, ["c5", "c6"], 2) == (["c5", "c6"], ["c0", "c1", "c2", "c3", "c4"])
    assert split_cases(ids, ids, 0) == (ids, [])
    assert split_cases(ids, ["c6"], 0, ["c1", "c0"]) == (["c2", "c3", "c4", "c5", "c6"], ["c0", "c1"])
    with pytest.raises(AlsegError, match="--test-cases: 'nope' is not a training case"):
        split_cases(ids, [], 0, ["nope"])
    with pytest.raises(AlsegError, match="--test-cases: case 'c6' has no label"):
        split_cases(ids, ["c6"], 0, ["c6"])
    with pytest.raises(AlsegError, match="pool case 'c6' has no label .* --oracle files"):
        split_cases(ids, ["c6"], 0, ["c0"], pool_needs_labels=True)


def test_test_cases_option_is_parsed_and_checked():
    assert LoopSettings.checked(test_cases="a, b").test_cases == ["a", "b"]
    with pytest.raises(AlsegError, match="--test-cases: names case 'a' twice"):
        LoopSettings.checked(test_cases="a,a")
    with pytest.raises(AlsegError, match="--test-cases: expects case ids"):
        LoopSettings.checked(test_cases="a,,b")


# ------------------------------------------------------------------------------------- bad input
def test_bad_input_is_one_line_before_any_work(partly, tmp_path: Path):
    _, plan_dir, _ = partly
    proc = subprocess.run(
        [sys.executable, "-m", "alseg", "loop", str(plan_dir), "-o", str(tmp_path / "sim"), "--initial", "2"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "pool case 'synth_003' has no label" in lines[0] and "--oracle files" in lines[0]
    assert not (tmp_path / "sim" / "config.json").exists()
    for cases, msg in (
        ("synth_000,synth_9", "'synth_9' is not a training case"),
        ("synth_004", "'synth_004' has no label"),
    ):
        with pytest.raises(AlsegError, match=msg):
            LoopDriver(
                plan_dir, tmp_path / cases, LoopSettings(**TINY, rounds=0, test_cases=cases), show_progress=False
            )
        assert not (tmp_path / cases / "config.json").exists()


# ------------------------------------------------------------------------------------- the loop
def test_loop_without_any_label_records_agreement(unlabelled, tmp_path: Path):
    _, plan_dir, truth = unlabelled
    run = tmp_path / "run"
    driver = _run_annotated(plan_dir, run, LoopSettings(**TINY, rounds=1, seed=2), plan_dir, truth)
    assert driver.test_ids == [] and len(driver.ws.train_ids) == 6
    config = json.loads((run / "config.json").read_text())
    assert len(config["agreement_cases"]) == 4 and set(config["agreement_cases"]) <= set(driver.ws.train_ids)
    split = json.loads((run / "split.json").read_text())
    assert split["test"] == [] and "rule" in split
    rows = _rows(run)
    assert [r["round"] for r in rows] == ["0", "1"]
    assert not any(k.startswith("dice_") for k in rows[0])
    assert rows[0]["agreement_mean"] == "" and 0.0 <= float(rows[1]["agreement_mean"]) <= 1.0
    assert [int(r["n_labelled_items"]) for r in rows] == [8, 12]
    assert int(rows[1]["n_labelled_voxels"]) > int(rows[0]["n_labelled_voxels"]) > 0
    # the report shows it as agreement between rounds (not accuracy), with no Dice to draw
    from alseg.report.build import build_report

    summary = build_report([run], tmp_path / "report")
    (shown,) = next(iter(summary["agreement"].values()))
    assert shown["agreement"][0] is None and shown["agreement"][1] == pytest.approx(float(rows[1]["agreement_mean"]))
    assert summary["settings"] == {} and any(f.startswith("agreement_") for f in summary["figures"])
    page = (tmp_path / "report" / "report.html").read_text()
    assert "agreement between rounds (no test labels)" in page and "not how accurate" in page


def test_partly_labelled_with_test_cases_reports_dice_on_them(partly, tmp_path: Path):
    _, plan_dir, truth = partly
    run = tmp_path / "run"
    settings = LoopSettings(**TINY, rounds=0, test_cases="synth_001,synth_002")
    driver = _run_annotated(plan_dir, run, settings, plan_dir, truth)
    assert driver.test_ids == ["synth_001", "synth_002"]
    assert driver.ws.train_ids == ["synth_000", "synth_003", "synth_004", "synth_005"]
    assert json.loads((run / "config.json").read_text())["test_cases"] == ["synth_001", "synth_002"]
    (row,) = _rows(run)
    assert 0.0 <= float(row["dice_mean"]) <= 1.0 and "agreement_mean" not in row
    # a resume that does not type --test-cases again keeps the stored ones (same pool, no refusal)
    resumed = LoopDriver(
        plan_dir, run, LoopSettings(**TINY, rounds=0), resume=True, show_progress=False, given={"rounds"}
    )
    resumed.lock.release()
    assert resumed.test_ids == ["synth_001", "synth_002"]
    # the default on this dataset: the labelled cases are the test cases, the images-only ones the pool
    default = LoopDriver(plan_dir, tmp_path / "default", LoopSettings(**TINY, rounds=0), show_progress=False)
    default.lock.release()
    assert default.test_ids == ["synth_000", "synth_001", "synth_002"]
    assert default.ws.train_ids == ["synth_003", "synth_004", "synth_005"]
