"""What a loop leaves for people: TensorBoard events, segmentation pictures, annotated voxels, the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from alseg.active.evaluation import PICTURE_CASES, picture_cases
from alseg.active.loop import LoopDriver
from alseg.active.settings import LoopSettings
from alseg.report import build_report
from alseg.report.build import picture_rounds

TINY = dict(rounds=2, budget=4, initial=8, epochs=1, iters_per_epoch=2, batch_size=4, mc_passes=2)


@pytest.fixture(scope="module")
def plan(make_synthetic_plan) -> Path:
    """A plan of a tiny synthetic dataset (5 cases)."""
    return make_synthetic_plan(cases=5)[1]


@pytest.fixture(scope="module")
def runs(plan: Path) -> Path:
    """Two strategies, one seed each (the report's smallest honest input)."""
    for strategy in ("random", "entropy"):
        settings = LoopSettings(**TINY, strategy=strategy, seed=0)
        LoopDriver(plan, plan.parent / "runs" / strategy, settings, workers=0, show_progress=False).run_all()
    return plan.parent / "runs"


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_holds_train_loss_per_round_and_dice_per_class_per_run(runs: Path):
    run = runs / "random"
    for k in range(3):
        events = run / "logs" / f"round_{k:03d}" / "tensorboard"
        assert list(events.glob("events.out.tfevents.*")), events
        assert any(tag.startswith("train_loss") for tag in _scalars(events))
    rounds = _scalars(run / "logs" / "rounds")
    for tag in ("test/dice_mean", "test/dice_Anterior", "test/dice_Posterior", "seconds/train", "labelled/items"):
        assert [step for step, _ in rounds[tag]] == [0, 1, 2], tag
    assert [v for _, v in rounds["labelled/items"]] == [8.0, 12.0, 16.0]
    metrics = (run / "metrics.csv").read_text().splitlines()
    last_dice = float(metrics[-1].split(",")[metrics[0].split(",").index("dice_Anterior")])
    assert rounds["test/dice_Anterior"][-1][1] == pytest.approx(last_dice, abs=1e-5)


def test_pictures_are_the_same_test_slice_every_round_with_a_prediction_of_its_shape(runs: Path):
    split = json.loads((runs / "random" / "split.json").read_text())
    assert picture_cases(split["test"]) == sorted(split["test"])[:PICTURE_CASES]
    first = None
    for k in range(3):
        with np.load(runs / "random" / "rounds" / f"round_{k:03d}_pictures.npz") as data:
            assert data["cases"].tolist() == picture_cases(split["test"])
            for j in range(len(data["cases"])):
                assert data[f"pred_{j}"].shape == data[f"label_{j}"].shape == data[f"image_{j}"].shape
                assert data[f"label_{j}"].any(), "the slice shown is the one with most foreground"
            first = first or data["slices"].tolist()
            assert data["slices"].tolist() == first


def test_round_files_record_annotated_voxels_per_class(runs: Path):
    totals = []
    for k in range(3):
        record = json.loads((runs / "random" / "rounds" / f"round_{k:03d}.json").read_text())
        voxels = record["labelled_voxels_per_class"]
        assert set(voxels) == {"background", "Anterior", "Posterior"}
        totals.append(sum(voxels.values()))
    metrics = (runs / "random" / "metrics.csv").read_text().splitlines()
    column = metrics[0].split(",").index("n_labelled_voxels")
    assert totals == [int(line.split(",")[column]) for line in metrics[1:]]


def test_picture_rounds_are_first_middle_last():
    assert picture_rounds([0, 1, 2, 3, 4]) == [0, 2, 4]
    assert picture_rounds([3, 0, 1]) == [0, 1, 3]
    assert picture_rounds([0, 1]) == [0, 1]
    assert picture_rounds([5]) == [5]
    assert picture_rounds([]) == []


def test_report_of_two_strategies_one_seed_has_pictures_per_class_curves_and_no_penalty(runs: Path, tmp_path: Path):
    summary = build_report([runs], tmp_path / "report")
    setting = next(iter(summary["settings"].values()))
    assert setting["penalty_shown"] is False
    assert not any(name.startswith("penalty") for name in summary["figures"])
    pictures = [name for name in summary["figures"] if name.startswith("segmentation_")]
    split = json.loads((runs / "random" / "split.json").read_text())
    assert len(pictures) == len(picture_cases(split["test"])) >= 1
    page = (tmp_path / "report" / "report.html").read_text()
    assert "seeds shared by all strategies, and these runs share 1" in page
    assert page.index("learning_curve") < page.index("segmentation_") < page.index("<table>")
    voxels = setting["labelled_voxels"]
    assert set(voxels) == {"entropy", "random"} and sorted(voxels["random"]) == ["0", "1", "2"]
    assert "Annotated voxels per class" in page


def test_a_round_checkpoint_loads_into_a_plain_dynunet_with_the_loops_logits(runs: Path):
    # lazy: torch and the loader are only needed by this test of the fixture's runs
    import torch

    from alseg.trained import load_dynunet

    run = runs / "random"
    net, config = load_dynunet(run / "checkpoints" / "round_002.ckpt")
    settings = LoopSettings(**TINY, strategy="random", seed=0)
    driver = LoopDriver(run.parent.parent / "plan", run, settings, resume=True, workers=0, show_progress=False)
    module = driver.load_module(2)
    module.net.eval()
    x = torch.randn(2, 1, *config.patch_size)
    with torch.no_grad():
        torch.testing.assert_close(net(x), module.net(x), rtol=1e-4, atol=1e-4)


def test_each_round_prints_one_clean_line_and_no_stale_bar(plan: Path, tmp_path: Path, capsys, monkeypatch):
    # lazy: the CLI's quieting of Lightning's banners is what a user of 'alseg loop' sees
    import alseg.active.loop
    from alseg.cli import _quiet_libraries

    monkeypatch.setattr(alseg.active.loop, "_terminal", lambda: True)  # what a terminal shows

    _quiet_libraries()
    settings = LoopSettings(**{**TINY, "rounds": 1}, strategy="random", seed=0)
    LoopDriver(plan, tmp_path / "run", settings, workers=0, show_progress=True).run_all()
    captured = capsys.readouterr()
    err = captured.err
    assert "v_num" not in err and "Epoch 0" not in err
    assert "round 0 · epoch 1/1" in err and "round 1 · epoch 1/1" in err, "epochs count from 1 and name the round"
    # what a terminal shows: the text after the last carriage return of each line
    visible = [line.rsplit("\r", 1)[-1].strip() for line in err.split("\n")]
    visible = [line for line in visible if line]
    assert len(visible) == 1, visible  # no bar is left behind; the round's log line on stderr
    assert visible[0].startswith("round 1: 4 items selected by random")
    results = [line for line in captured.out.splitlines() if line.strip()]  # the results: stdout
    assert len(results) == 2, results
    assert results[0].startswith("round 0: 8 items labelled — Dice ")
    assert results[1].startswith("round 1: 12 items labelled — Dice ")


def test_without_a_terminal_a_loop_prints_its_round_lines_and_no_bar(plan: Path, tmp_path: Path, capsys):
    """A log file (stderr not a terminal, as under pytest's capture) gets no bar redraws."""
    settings = LoopSettings(**{**TINY, "rounds": 0}, strategy="random", seed=0)
    LoopDriver(plan, tmp_path / "run", settings, workers=0, show_progress=True).run_all()
    captured = capsys.readouterr()
    assert "round 0 · epoch" not in captured.err and "it/s" not in captured.err
    assert [ln for ln in (captured.out + captured.err).splitlines() if ln.strip()][-1].startswith("round 0: 8 items")
