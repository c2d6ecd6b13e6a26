"""``alseg predict`` and the inverse of preprocessing, on a tiny finished loop over demo data."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from builders import write_msd

from alseg.data.cache import CaseCache
from alseg.data.pipeline import grid_properties, preprocess_case
from alseg.data.restore import labels_to_original, logits_to_original
from alseg.dataset.io import read_volume
from alseg.dataset.raw import load_case, read_dataset
from alseg.errors import AlsegError
from alseg.model.case_prediction import predict_case
from alseg.model.metrics import dice_per_class, mean_dice
from alseg.plans.models import load_plans
from alseg.plans.planner import plan_dataset
from alseg.predict import collect_inputs, predict
from alseg.trained import load_model


def test_outputs_have_each_inputs_geometry(finished_run, tmp_path: Path):
    data, _, run = finished_run
    out = tmp_path / "pred"
    written = predict(run, [data / "imagesTs", data / "imagesTr" / "synth_000.nii.gz"], out, show_progress=False)
    inputs = sorted((data / "imagesTs").glob("*.nii.gz")) + [data / "imagesTr" / "synth_000.nii.gz"]
    assert sorted(p.name for p in written) == sorted(p.name for p in inputs)
    for image in inputs:
        arr, geom = read_volume(image)
        seg, seg_geom = read_volume(out / image.name)
        assert seg.shape == arr.shape
        assert seg_geom.spacing == geom.spacing and seg_geom.origin == geom.origin
        assert seg_geom.direction == geom.direction
        assert set(np.unique(seg).tolist()) <= {0, 1, 2}


def test_predicting_the_test_cases_reproduces_the_loops_dice(finished_run):
    _, plan_dir, run = finished_run
    loaded = load_model(run)
    assert loaded.round == 1
    plans = load_plans(plan_dir / "plans.json")
    cache = CaseCache.of(plan_dir, plans, "2d")
    info = read_dataset(plans.dataset_root)
    test = json.loads((run / "split.json").read_text())["test"]
    assert test
    rows = []
    for case_id in test:
        pred = predict_case(loaded.module, info.case(case_id))
        gt = torch.from_numpy(np.array(cache.label(case_id)))
        per_class = dice_per_class(torch.from_numpy(pred.grid_labels), gt, plans.n_classes)
        rows.append({"dice_mean": mean_dice(per_class), **{f"dice_{plans.labels[c]}": v for c, v in per_class.items()}})
    with (run / "metrics.csv").open() as f:
        recorded = list(csv.DictReader(f))[-1]
    for key in ("dice_mean", "dice_Anterior", "dice_Posterior"):
        assert float(np.nanmean([r[key] for r in rows])) == pytest.approx(float(recorded[key]), abs=1e-3)


def test_ground_truth_maps_back_to_the_label_file(finished_run):
    _, plan_dir, _ = finished_run
    plans = load_plans(plan_dir / "plans.json")
    cache = CaseCache.of(plan_dir, plans, "2d")
    info = read_dataset(plans.dataset_root)
    resampled = 0
    for case_id in cache.case_ids():
        props = cache.properties(case_id)
        image, label, geometry = load_case(info.case(case_id), 1)
        back = labels_to_original(np.array(cache.label(case_id)), props, plans.configuration("2d").resampling)
        assert back.shape == label.shape
        if props["shape_after_resampling"] == props["shape_after_cropping"]:
            np.testing.assert_array_equal(back, label)  # exact when the grid is the file's
        else:
            resampled += 1
            agree = (back == label).mean()
            assert agree > 0.97, (case_id, agree)
    assert resampled < len(cache.case_ids())  # at least one exact round trip was checked


def test_grid_properties_are_what_preprocessing_records(finished_run):
    data, plan_dir, _ = finished_run
    plans = load_plans(plan_dir / "plans.json")
    info = read_dataset(data)
    for name in ("2d", "3d_fullres"):
        image, label, geometry = load_case(info.training[1], 1)
        _, _, props = preprocess_case(image, label, geometry, plans, name)
        light = grid_properties(image, geometry, plans, name)
        assert light == {k: props[k] for k in light}


def test_round_trip_is_exact_without_resampling_and_transposed(tmp_path: Path):
    """Labels through crop + transpose + resample (unit factor) and back: the same array."""
    data = write_msd(tmp_path / "Task99_Tiny", n=3, spacing=(2.0, 1.0, 1.0))
    plans = plan_dataset(data, tmp_path / "plan", show_progress=False)
    info = read_dataset(data)
    for name in plans.configurations:
        for case in info.training:
            image, label, geometry = load_case(case, 1)
            _, seg, props = preprocess_case(image, label, geometry, plans, name)
            back = labels_to_original(seg[0], props, plans.configuration(name).resampling)
            np.testing.assert_array_equal(back, label)
            logits = np.stack([(seg[0] == k).astype(np.float32) * 10 for k in range(3)])
            labels, probs = logits_to_original(logits, props, plans.configuration(name).resampling)
            np.testing.assert_array_equal(labels, label)
            assert probs.shape == (3, *label.shape)
            np.testing.assert_allclose(probs.sum(0), 1.0, rtol=1e-5)


def test_tta_and_probabilities(finished_run, tmp_path: Path):
    data, _, run = finished_run
    image = data / "imagesTs" / "synth_005.nii.gz"
    predict(run, [image], tmp_path / "p", tta=True, save_probabilities=True, round_=0, show_progress=False)
    seg, _ = read_volume(tmp_path / "p" / "synth_005.nii.gz")
    probs = np.load(tmp_path / "p" / "synth_005.npz")["probabilities"]
    assert probs.shape == (3, *seg.shape) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(0), 1.0, rtol=1e-4)
    np.testing.assert_array_equal(probs.argmax(0), seg)


def test_inputs_channel_files_and_errors(tmp_path: Path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a_0000.nii.gz", "a_0001.nii.gz", "b_0000.nii.gz", "b_0001.nii.gz"):
        (folder / name).write_bytes(b"")
    cases = collect_inputs([folder], 2)
    assert [(c.case_id, len(c.images)) for c in cases] == [("a", 2), ("b", 2)]
    assert [c.case_id for c in collect_inputs([folder], 1)] == ["a_0000", "a_0001", "b_0000", "b_0001"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(AlsegError, match="holds no image files"):
        collect_inputs([tmp_path / "empty"], 1)
    with pytest.raises(AlsegError, match="not found"):
        collect_inputs([tmp_path / "missing"], 1)


def test_cli_one_line_error_for_an_unreadable_input(finished_run, tmp_path: Path):
    _, _, run = finished_run
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not an image")
    cmd = [
        sys.executable,
        "-c",
        "from alseg.cli import main; main()",
        "predict",
        str(run),
        "-i",
        str(bad),
        "-o",
        str(tmp_path / "o"),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "cannot be read" in lines[0]
    res = subprocess.run(
        cmd[:4] + [str(tmp_path), "-i", str(bad), "-o", str(tmp_path / "o")], capture_output=True, text=True
    )
    assert res.returncode == 2 and "neither a run directory" in res.stderr


def test_an_alseg_train_output_predicts_too(finished_run, tmp_path: Path):
    from alseg.model.train import train

    data, plan_dir, run = finished_run
    plans = load_plans(plan_dir / "plans.json")
    out = tmp_path / "trained"
    train(
        plans,
        "2d",
        CaseCache.of(plan_dir, plans, "2d"),
        out,
        epochs=1,
        iters_per_epoch=1,
        num_workers=0,
        progress=False,
        augment=False,
    )
    image = data / "imagesTs" / "synth_006.nii.gz"
    for model in (out, out / "model.ckpt"):
        written = predict(model, [image], tmp_path / "p", devices="0", show_progress=False)
        seg, geom = read_volume(written[0])
        assert seg.shape == read_volume(image)[0].shape and geom == read_volume(image)[1]
    with pytest.raises(AlsegError, match="--round needs a run directory"):
        load_model(out, 1)
    with pytest.raises(AlsegError, match="round 5 has not finished"):
        load_model(run, 5)


def test_parts_share_the_cases_and_continue_skips_the_written(finished_run, tmp_path: Path, capsys):
    """nnU-Net's -num_parts/-part_id and --continue_prediction: every case once, the same labels."""
    from builders import run_cli

    data, _, run = finished_run
    inputs = [data / "imagesTs", data / "imagesTr"]
    whole = predict(run, inputs, tmp_path / "whole", show_progress=False)
    names = sorted(p.name for p in whole)
    parts = [predict(run, inputs, tmp_path / "parts", num_parts=3, part_id=k, show_progress=False) for k in range(3)]
    assert sorted(p.name for part in parts for p in part) == names  # each case in exactly one part
    assert [p.name for p in parts[1]] == names[1::3]  # every 3rd case in id order
    for name in names:
        assert np.array_equal(read_volume(tmp_path / "parts" / name)[0], read_volume(tmp_path / "whole" / name)[0])

    gone = tmp_path / "whole" / names[2]
    gone.unlink()
    kept = {n: (tmp_path / "whole" / n).stat().st_mtime_ns for n in names if n != names[2]}
    args = ["predict", str(run), "-i", str(inputs[0]), "-i", str(inputs[1]), "-o", str(tmp_path / "whole")]
    code, stdout, err = run_cli([*args, "--continue"], capsys)
    assert code == 0, err
    assert "wrote 1 label map(s)" in stdout and gone.is_file()
    assert {n: (tmp_path / "whole" / n).stat().st_mtime_ns for n in kept} == kept  # the others left alone
    code, _, err = run_cli([*args, "--num-parts", "2", "--part-id", "2"], capsys)
    assert code == 2 and err.strip().endswith("--part-id 2 is not a part of --num-parts 2 — choose 0..1")
    assert len(err.strip().splitlines()) == 1
