"""The files oracle's package per case: geometry, a person's round trip with a resume, bad files."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from alseg.active.annotation import manifest_cases
from alseg.active.loop import AnnotationIncomplete, LoopDriver
from alseg.active.oracles.patches import manifest_items
from alseg.active.settings import LoopSettings
from alseg.data.cache import CaseCache, build_cache
from alseg.data.pipeline import label_to_grid
from alseg.dataset.io import Geometry, read_volume, write_volume
from alseg.dataset.raw import read_dataset
from alseg.plans.models import load_plans

SETTINGS = dict(
    strategy="random",
    rounds=2,
    budget=4,
    initial=8,
    epochs=1,
    iters_per_epoch=2,
    batch_size=4,
    mc_passes=2,
    seed=3,
    oracle="files",
)


@pytest.fixture(scope="module")
def data(make_synthetic_plan) -> tuple[Path, Path]:
    """(dataset, plan folder): 5 synthetic cases; one of them (synth_004) is resampled in-plane."""
    from alseg.plans.models import load_plans

    dataset, plan_dir = make_synthetic_plan(cases=5)
    build_cache(load_plans(plan_dir / "plans.json"), "2d", plan_dir, show_progress=False)
    return dataset, plan_dir


def _cache(plan_dir: Path) -> CaseCache:
    return CaseCache.of(plan_dir, load_plans(plan_dir / "plans.json"), "2d")


def _driver(plan_dir: Path, run: Path, resume: bool, **changes) -> LoopDriver:
    settings = LoopSettings(**{**SETTINGS, **changes})
    return LoopDriver(plan_dir, run, settings, resume=resume, workers=0, show_progress=False)


def _annotate(folder: Path, dataset: Path, region_only: bool = False) -> None:
    """The person: reads the manifest and saves each case's label map (its ground-truth file)."""
    info = read_dataset(dataset)
    for case in manifest_cases(folder):
        truth = info.case(case["case"]).label
        if region_only:
            label, geometry = read_volume(truth)
            region, _ = read_volume(folder / case["region"])
            write_volume((label * (region > 0)).astype(np.uint8), geometry, folder / case["label"])
        else:
            (folder / case["label"]).write_bytes(truth.read_bytes())


def _run_to_end(plan_dir: Path, run: Path, dataset: Path, resume: bool) -> list[int]:
    """Drive the loop as a person would: annotate every package it waits for, resume; the rounds waited for."""
    waited = []
    while True:
        try:
            _driver(plan_dir, run, resume).run_all()
            return waited
        except AnnotationIncomplete as e:
            assert not e.problems, e.problems
            waited.append(e.round)
            _annotate(e.folder, dataset)
            resume = True


def _rows(run: Path) -> list[dict]:
    with (run / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> Path:
    """A run annotated by the person without interruption (besides waiting for each package)."""
    import torch  # lazy: as the other tests' runs, one intra-op thread (a module fixture runs before conftest's)

    dataset, plan_dir = data
    run = tmp_path_factory.mktemp("reference") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert _run_to_end(plan_dir, run, dataset, resume=False) == [0, 1, 2]
    finally:
        torch.set_num_threads(threads)
    return run


def test_label_to_grid_gives_the_cached_label(data):
    dataset, plan_dir = data
    cache, info = _cache(plan_dir), read_dataset(dataset)
    plans = load_plans(plan_dir / "plans.json")
    for case_id in cache.case_ids():
        label, _ = read_volume(info.case(case_id).label)
        grid = label_to_grid(label, cache.properties(case_id), plans, "2d")
        np.testing.assert_array_equal(grid, np.asarray(cache.label(case_id)))


def test_package_is_in_the_original_geometry(data, reference: Path):
    dataset, plan_dir = data
    cache, info = _cache(plan_dir), read_dataset(dataset)
    plans = load_plans(plan_dir / "plans.json")
    first = manifest_cases(reference / "annotate" / "round_000")
    assert all(c["presegmentation"] is None for c in first)  # round 0: no model yet
    assert not list((reference / "annotate" / "round_000").rglob("presegmentation*"))

    from alseg.model.case_prediction import predict_case
    from alseg.trained import load_model

    selecting = load_model(reference, round_=0).module  # round 1's batch was selected by round 0's model
    folder = reference / "annotate" / "round_001"
    cases = manifest_cases(folder)
    record = json.loads((reference / "rounds" / "round_001.json").read_text())
    assert sorted(it["id"] for c in cases for it in c["items"]) == sorted(record["selected"])
    text = (folder / "README.txt").read_text()
    for case in cases:
        case_id, source = case["case"], info.case(case["case"]).images[0]
        image = folder / case["images"][0]
        assert image.read_bytes() == source.read_bytes()  # the dataset's own file, copied
        assert image.stat().st_mode & 0o044 == 0o044  # readable by the person's tools (another account)
        reference_affine = nib.load(str(source)).affine
        for name in ("presegmentation", "region"):
            img = nib.load(str(folder / case[name]))
            assert img.shape == nib.load(str(source)).shape
            np.testing.assert_allclose(img.affine, reference_affine, atol=1e-4)
        pre, _ = read_volume(folder / case["presegmentation"])
        np.testing.assert_array_equal(pre, predict_case(selecting, info.case(case_id)).labels)
        # the region is exactly the selected items: back on the plan's grid it is the union of their boxes
        region, _ = read_volume(folder / case["region"])
        props = cache.properties(case_id)
        union = np.zeros(props["shape_after_resampling"], np.uint8)
        for it in case["items"]:
            union[tuple(slice(a, b) for a, b in it["box"])] = 1
        np.testing.assert_array_equal(label_to_grid(region, props, plans, "2d"), union)
        per_item = np.zeros(region.shape, np.uint8)
        for it in case["items"]:
            per_item[tuple(slice(a, b) for a, b in it["region"])] = 1
        np.testing.assert_array_equal(region, per_item)  # the manifest's voxel ranges draw the same mask
        assert case["slices"] == sorted(
            int(it["id"].split(":")[2]) for it in case["items"]
        )  # 2D: transpose is identity
        size = " x ".join(str(s) for s in nib.load(str(source)).shape)  # nibabel counts voxels (x, y, z)
        assert case["shape_xyz"] == list(nib.load(str(source)).shape) == case["shape"][::-1]
        assert f"{case_id}: image {size} voxels (x, y, z); {len(case['items'])} item(s)" in text
        assert case["label"] in text
        for it in case["items"]:
            assert it["region_xyz"] == it["region"][::-1]
            assert it["rank"] is None and it["score"] is None  # a random batch: no score, no rank
        assert "random choice" in text


def test_a_person_round_trip_with_a_resume_matches_the_uninterrupted_run(data, reference: Path, tmp_path: Path):
    dataset, plan_dir = data
    run = tmp_path / "run"
    args = [
        sys.executable,
        "-c",
        "from alseg.cli import main; main()",
        "loop",
        str(plan_dir),
        "-o",
        str(run),
        "--workers",
        "0",
        *[f"--{k.replace('_', '-')}={v}" for k, v in SETTINGS.items()],
    ]
    first = subprocess.run(args, capture_output=True, text=True)
    assert first.returncode == 3, first.stderr  # waiting for the person
    assert f"Annotate the items in {run / 'annotate' / 'round_000'} (see README.txt)" in " ".join(first.stdout.split())
    _annotate(run / "annotate" / "round_000", dataset)
    with pytest.raises(AnnotationIncomplete) as waiting:  # trains round 0, writes round 1's package, waits
        _driver(plan_dir, run, resume=True).run_all()
    assert waiting.value.round == 1
    # killed while round 1's package was written: no manifest yet, one pre-segmentation missing
    folder = run / "annotate" / "round_001"
    (folder / "manifest.json").unlink()
    (folder / "README.txt").unlink()
    next(folder.rglob("presegmentation.nii.gz")).unlink()
    # the resume writes it again, with round 0's model loaded from its checkpoint
    assert _run_to_end(plan_dir, run, dataset, resume=True) == [1, 2]
    for case in manifest_cases(folder):
        a, _ = read_volume(folder / case["presegmentation"])
        b, _ = read_volume(reference / "annotate" / "round_001" / case["presegmentation"])
        np.testing.assert_array_equal(a, b)
    state, ref_state = (json.loads((r / "state.json").read_text()) for r in (run, reference))
    assert state["finished"] and state["labelled"] == ref_state["labelled"] and len(state["labelled"]) == 16
    dice = [c for c in _rows(reference)[0] if c.startswith("dice_")]
    assert [[r[c] for c in dice] for r in _rows(run)] == [[r[c] for c in dice] for r in _rows(reference)]
    # the imported labels are the ground truth on every labelled item
    cache = _cache(plan_dir)
    for item_id in state["labelled"]:
        case, _, z, _, _ = item_id.split(":")
        stored = np.load(run / "labels" / f"{case}.npy")
        np.testing.assert_array_equal(stored[int(z)], np.asarray(cache.label(case))[int(z)])


def test_region_only_accepted_and_wrong_files_rejected_one_line_each(data, tmp_path: Path):
    dataset, plan_dir = data
    run = tmp_path / "run"
    with pytest.raises(AnnotationIncomplete) as waiting:
        _driver(plan_dir, run, resume=False, seed=0).run_all()  # seed 0: round 0 has items in all 4 cases
    folder = waiting.value.folder
    cases = manifest_cases(folder)
    assert len(cases) == 4, [c["case"] for c in cases]
    _annotate(folder, dataset, region_only=True)
    shape, origin, value, good = cases  # good: synth_004, the case resampled in-plane
    label, geometry = read_volume(folder / shape["label"])
    write_volume(label[:, :-1], geometry, folder / shape["label"])
    label, geometry = read_volume(folder / origin["label"])
    moved = Geometry(geometry.spacing, tuple(o + 5.0 for o in geometry.origin), geometry.direction)
    write_volume(label, moved, folder / origin["label"])
    label, geometry = read_volume(folder / value["label"])
    label[tuple(np.argwhere(label == 1)[0])] = 7
    write_volume(label, geometry, folder / value["label"])

    with pytest.raises(AnnotationIncomplete) as rejected:
        _driver(plan_dir, run, resume=True, seed=0).run_all()
    problems = rejected.value.problems
    assert len(problems) == 3 and all("\n" not in p for p in problems)
    assert problems[0].startswith(str(folder / shape["label"])) and "(x, y, z;" in problems[0]  # as viewers count
    assert problems[1].startswith(str(folder / origin["label"])) and "origin" in problems[1]
    assert problems[2].startswith(str(folder / value["label"])) and "label value(s) [7]" in problems[2]
    assert all("—" in p for p in problems)  # each names the fix
    # the region-only file was kept: its items hold the ground truth
    accepted = rejected.value.accepted
    assert sorted(accepted) == sorted(it["id"] for it in good["items"])
    cache = _cache(plan_dir)
    stored = np.load(run / "labels" / f"{good['case']}.npy")
    for it in good["items"]:
        box = tuple(slice(a, b) for a, b in it["box"])
        np.testing.assert_array_equal(stored[box], np.asarray(cache.label(good["case"]))[box])

    _annotate(folder, dataset)  # the person fixes them: the batch is complete
    driver = _driver(plan_dir, run, resume=True, seed=0)
    with driver.lock:
        assert driver.prepare_batch(0)
    assert len(driver.state.labelled) == 8 and driver.state.pending is None


def test_a_round_already_in_the_patches_layout_is_imported_in_it(data, tmp_path: Path):
    _, plan_dir = data
    run = tmp_path / "run"
    with pytest.raises(AnnotationIncomplete):
        _driver(plan_dir, run, resume=False, oracle="patches").run_all()
    assert len(manifest_items(run / "annotate" / "round_000")) == 8
    config = json.loads((run / "config.json").read_text())  # a run made when 'files' meant patches
    (run / "config.json").write_text(json.dumps({**config, "oracle": "files"}))
    with pytest.raises(AnnotationIncomplete) as waiting:
        _driver(plan_dir, run, resume=True).run_all()
    assert waiting.value.n_waiting == 8 and waiting.value.guide.name == "manifest.json"
    assert not (run / "annotate" / "round_000" / "cases").exists()


def test_every_channel_file_is_copied_and_an_mhd_pair_becomes_one_file(tmp_path: Path):
    from alseg.active.annotation import copy_images
    from alseg.active.rundir import AnnotationPackage
    from alseg.dataset.raw import CaseFiles

    geometry = Geometry((2.0, 1.0, 1.0), (1.0, 2.0, 3.0), tuple(np.eye(3).ravel()))
    files = []
    for k, ending in enumerate((".nii.gz", ".mhd")):
        files.append(tmp_path / f"case_{k:04d}{ending}")
        write_volume(np.full((2, 3, 4), k + 1, np.float32), geometry, files[-1])
    package = AnnotationPackage(tmp_path / "round_000")
    written = copy_images(package, CaseFiles("case", tuple(files)))
    assert [package.relative(p) for p in written] == ["cases/case/image_0000.nii.gz", "cases/case/image_0001.nii.gz"]
    assert written[0].read_bytes() == files[0].read_bytes()
    array, copied = read_volume(written[1])
    assert copied.matches(geometry) is None and np.all(array == 2)


def test_package_has_the_viewers_label_files_and_ranks_scored_items(data, reference: Path, tmp_path: Path):
    """ITK-SNAP's label descriptions and Slicer's colour table from dataset.json's names; a scored
    batch's items carry their score and rank (1: the highest) in the manifest and README.txt."""
    import re
    import shutil

    dataset, plan_dir = data
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    record_path = run / "rounds" / "round_001.json"
    record = json.loads(record_path.read_text())
    record["strategy"] = "entropy"
    record["scores"] = [0.5 + k for k in range(len(record["selected"]))]  # the last selected scores highest
    record_path.write_text(json.dumps(record))
    shutil.rmtree(run / "annotate" / "round_001")
    driver = _driver(plan_dir, run, resume=True)
    folder = driver.oracle.export(1, driver.pool.indices(record["selected"]), model=None)

    manifest = json.loads((folder / "manifest.json").read_text())
    labels = json.loads((dataset / "dataset.json").read_text())["labels"]  # MSD: index -> name
    assert manifest["labels"] == labels and manifest["strategy"] == "entropy"
    itksnap = (folder / manifest["viewer_files"]["itksnap"]).read_text()
    rows = re.findall(r'^\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+([\d.]+)\s+([01])\s+([01])\s+"([^"]*)"$', itksnap, re.M)
    assert {r[0]: r[7] for r in rows} == labels
    assert [tuple(int(v) for v in r[1:4]) for r in rows][1:3] == [(255, 0, 0), (0, 255, 0)]  # ITK-SNAP's defaults
    assert all(line.startswith("#") for line in itksnap.splitlines() if not re.match(r"^\s*\d", line))
    slicer = [line.split() for line in (folder / manifest["viewer_files"]["slicer"]).read_text().splitlines()]
    table = [row for row in slicer if row and not row[0].startswith("#")]
    assert {row[0]: row[1] for row in table} == {k: "_".join(v.split()) for k, v in labels.items()}
    assert all(len(row) == 6 and all(0 <= int(v) <= 255 for v in row[2:]) for row in table)
    assert [row[2:5] for row in table] == [[str(v) for v in c] for c in manifest["colours"].values()]

    items = {it["id"]: it for case in manifest["cases"] for it in case["items"]}
    n = len(record["selected"])
    for k, item_id in enumerate(record["selected"]):
        assert items[item_id]["score"] == 0.5 + k and items[item_id]["rank"] == n - k
    text = (folder / "README.txt").read_text()
    assert labels["1"] in "".join(rows[1]) and "labels_itksnap.txt" in text and "labels_slicer.ctbl" in text
    assert f"rank 1 (score {0.5 + n - 1:.4g})" in text and "chosen by entropy" in text


def test_batch_ranks():
    from alseg.active.annotation import batch_ranks

    assert batch_ranks({"a": 0.1, "b": 0.9, "c": 0.5}) == {"b": 1, "c": 2, "a": 3}
    assert batch_ranks({"a": 0.1, "b": None}) == {"a": None, "b": None}
    assert batch_ranks({}) == {}
