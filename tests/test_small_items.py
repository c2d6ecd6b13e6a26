"""``alseg loop -c 3d_fullres --item-size``: items smaller than the patch with every oracle, and
their export to nnU-Net, on a tiny synthetic 3D dataset (patch 40 x 56 x 40, items 16³)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from alseg.active.annotation import manifest_cases
from alseg.active.export import export_nnunet
from alseg.active.loop import AnnotationIncomplete, LoopDriver
from alseg.active.oracles.labels import UNLABELLED
from alseg.active.oracles.patches import manifest_items
from alseg.active.settings import LoopSettings
from alseg.dataset.io import read_volume, write_volume
from alseg.dataset.raw import read_dataset

ITEM = [16, 16, 16]
SMALL = dict(
    config="3d_fullres",
    item_size=ITEM,
    rounds=1,
    budget=3,
    initial=4,
    epochs=1,
    iters_per_epoch=2,
    batch_size=2,
    mc_passes=2,
    candidates=6,
    seed=1,
)


@pytest.fixture(scope="module")
def data(make_synthetic_plan) -> tuple[Path, Path]:
    """(dataset, plan folder) of 5 synthetic 3D cases (4 in the pool, 1 test case)."""
    return make_synthetic_plan(cases=5)


def _driver(plan_dir: Path, run: Path, resume: bool = False, **changes) -> LoopDriver:
    return LoopDriver(
        plan_dir, run, LoopSettings(**{**SMALL, **changes}), resume=resume, workers=0, show_progress=False
    )


def _check_store(driver: LoopDriver, run: Path) -> int:
    """The label store holds the ground truth in the labelled items' boxes and nothing else;
    returns the voxels in the union of the boxes (overlapping border tiles count once)."""
    pool, state = driver.pool, json.loads((run / "state.json").read_text())
    assert pool.small_items and len(state["labelled"]) == SMALL["initial"] + SMALL["budget"]
    boxes: dict[str, list] = {}
    for item_id in state["labelled"]:
        item = pool[pool.index[item_id]]
        assert [b - a for a, b in item.box] == ITEM
        boxes.setdefault(item.case_id, []).append(item.box)
    annotated = 0
    for case_id, case_boxes in boxes.items():
        store = np.load(run / "labels" / f"{case_id}.npy")
        inside = np.zeros(store.shape, bool)
        for box in case_boxes:
            inside[tuple(slice(a, b) for a, b in box)] = True
        assert (store[~inside] == UNLABELLED).all()
        np.testing.assert_array_equal(store[inside], np.asarray(driver.ws.ground_truth(case_id))[inside])
        annotated += int(inside.sum())
    return annotated


def _rows(run: Path) -> list[dict]:
    with (run / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("strategy", ["random", "bald", "coreset"])  # entropy: its pass is in test_small_item_scoring
def test_simulated_oracle_reveals_the_boxes_and_the_export_ignores_the_rest(data, tmp_path: Path, strategy: str):
    dataset, plan_dir = data
    run = tmp_path / "run"
    driver = _driver(plan_dir, run, strategy=strategy)
    driver.run_all()
    assert json.loads((run / "config.json").read_text())["item_size"] == ITEM
    annotated = _check_store(driver, run)
    rows = _rows(run)
    voxels = [int(r["n_labelled_voxels"]) for r in rows]
    assert voxels[1] == annotated and voxels[0] < voxels[1] <= 7 * 16**3  # the union of the boxes
    assert voxels[0] <= 4 * 16**3
    assert all(np.isfinite(float(r["dice_mean"])) for r in rows)
    record = json.loads((run / "rounds" / "round_001.json").read_text())
    assert len(record["selected"]) == 3 and all(s is not None for s in record["scores"]) == (strategy != "random")
    if strategy != "random":
        return
    # export-nnunet: annotated voxels as they are, every other voxel nnU-Net's ignore label
    summary = export_nnunet(run, tmp_path / "raw", dataset_id=502, name="Small", show_progress=False)
    ignore = json.loads((summary.folder / "dataset.json").read_text())["labels"]["ignore"]
    total = 0
    for case_id in summary.cases:
        label, _ = read_volume(summary.folder / "labelsTr" / f"{case_id}.nii.gz")
        truth, _ = read_volume(dataset / "labelsTr" / f"{case_id}.nii.gz")
        seen = label != ignore
        assert 0 < seen.sum() < label.size
        assert (label[seen] == truth[seen]).mean() > 0.97
        total += int(seen.sum())
    assert total > 0


def test_resume_keeps_the_stored_item_size_and_refuses_another(data, tmp_path: Path):
    _, plan_dir = data
    run = tmp_path / "run"
    _driver(plan_dir, run, rounds=0).run_all()
    again = LoopDriver(
        plan_dir, run, LoopSettings(**{**SMALL, "item_size": None}), resume=True, given={"rounds"}, workers=0
    )  # --item-size not typed: the stored one
    assert again.pool.item_size == tuple(ITEM)
    again.lock.release()
    from alseg.errors import AlsegError

    with pytest.raises(AlsegError, match="--item-size 16,16,16 → 20,20,20"):
        LoopDriver(plan_dir, run, LoopSettings(**{**SMALL, "item_size": [20, 20, 20]}), resume=True, workers=0)


def test_files_oracle_keeps_only_the_boxes(data, tmp_path: Path):
    dataset, plan_dir = data
    run = tmp_path / "run"
    info = read_dataset(dataset)
    resume, waited = False, []
    while True:
        driver = _driver(plan_dir, run, resume=resume, oracle="files")
        try:
            driver.run_all()
            break
        except AnnotationIncomplete as e:
            assert not e.problems, e.problems
            waited.append(e.round)
            for case in manifest_cases(e.folder):  # the person saves the whole ground truth of each case
                region, _ = read_volume(e.folder / case["region"])
                assert 0 < (region > 0).sum() < region.size  # the region to annotate: the small boxes
                (e.folder / case["label"]).write_bytes(info.case(case["case"]).label.read_bytes())
            resume = True
    assert waited == [0, 1]
    _check_store(driver, run)


def test_patches_oracle_round_trip_with_small_patches(data, tmp_path: Path):
    _, plan_dir = data
    run = tmp_path / "run"
    resume, waited = False, []
    while True:
        driver = _driver(plan_dir, run, resume=resume, oracle="patches")
        try:
            driver.run_all()
            break
        except AnnotationIncomplete as e:
            waited.append(e.round)
            pool, backward = driver.pool, driver.ws.plans.transpose_backward
            for entry in manifest_items(e.folder):
                image, geom = read_volume(e.folder / entry["image"])
                item = pool[pool.index[entry["id"]]]
                truth = np.asarray(driver.ws.ground_truth(item.case_id))[tuple(slice(a, b) for a, b in item.box)]
                mask = np.transpose(truth, backward).astype(np.uint8)
                assert mask.shape == image.shape and sorted(image.shape) == sorted(ITEM)
                write_volume(mask, geom, e.folder / entry["mask"])
            resume = True
    assert waited == [0, 1]
    _check_store(driver, run)
