"""What the Hippocampus grid runs on, on tiny data: a protocol file, round 0 trained once per seed
and forked into every cell, candidate subsets, a longer round 0, and the one command that
re-runs a cell giving the cell's numbers."""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from builders import run_cli

from alseg.active.rundir import RunDir, find_run_dirs
from alseg.active.selection import candidate_items
from alseg.active.settings import LoopSettings

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

PROTOCOL = {
    "rounds": 1,
    "budget": 4,
    "initial": 8,
    "epochs": 1,
    "initial_epochs": 2,
    "iters_per_epoch": 2,
    "batch_size": 4,
    "mc_passes": 2,
    "candidates": 10,
}


@pytest.fixture(scope="module")
def protocol(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("protocol") / "protocol.json"
    path.write_text(json.dumps(PROTOCOL))
    return path


def _metrics(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def _dice(run: Path) -> list[tuple[str, ...]]:
    return [tuple(v for k, v in row.items() if k.startswith("dice_")) for row in _metrics(run)]


def test_candidate_items_keep_the_labelled_and_draw_the_same_order_for_every_strategy():
    labelled = np.zeros(30, bool)
    labelled[[2, 5, 7]] = True
    a = candidate_items(labelled, 6, np.random.default_rng([4, 1, 1]))
    assert set(np.flatnonzero(labelled)) <= set(a) and len(a) == 9 and list(a) == sorted(a)
    # another strategy labelled item 11 as well: it sees the same permutation, minus what it labelled
    other = labelled.copy()
    other[11] = True
    b = candidate_items(other, 6, np.random.default_rng([4, 1, 1]))
    order = np.random.default_rng([4, 1, 1]).permutation(30)
    assert list(np.setdiff1d(b, np.flatnonzero(other))) == sorted([int(o) for o in order if not other[o]][:6])
    assert list(np.setdiff1d(a, np.flatnonzero(labelled))) == sorted([int(o) for o in order if not labelled[o]][:6])


def test_protocol_validation_refuses_fewer_candidates_than_the_budget(synthetic_plan, tmp_path, capsys):
    code, _, err = run_cli(
        [
            "loop",
            str(synthetic_plan),
            "-o",
            str(tmp_path / "r"),
            "--budget",
            "5",
            "--candidates",
            "3",
            "--initial",
            "4",
        ],
        capsys,
    )
    assert code == 2 and "--candidates 3 is smaller than --budget 5" in err


def _epochs_trained(run: Path) -> list[int]:
    """Epochs of each round's fit, from Lightning's CSV logs."""
    out = []
    for path in sorted((run / "logs").rglob("metrics.csv")):
        with path.open() as f:
            rows = [r for r in csv.DictReader(f) if r.get("epoch") not in (None, "")]
        out.append(max(int(r["epoch"]) for r in rows) + 1)
    return out


def test_shared_round_zero_forks_equal_the_one_command_rerun(synthetic_plan, protocol, tmp_path, capsys):
    """The grid trains round 0 once per seed (for --initial-epochs) and forks it; re-running a
    cell with `alseg loop --settings protocol.json --strategy S --seed N` gives the cell's rows
    exactly (both as subprocesses, as a user runs them: the same threads, the same floats)."""
    exp = tmp_path / "exp"
    args = ["compare", str(synthetic_plan), "-o", str(exp), "--settings", str(protocol), "--strategies", "bald"]
    code, _, err = run_cli([*args, "--seeds", "1", "--workers=0", "--no-full", "--shared-initial-round"], capsys)
    assert code == 0, err
    round0 = exp / ".round0" / "seed_0"
    assert RunDir(round0).finished() and len(_metrics(round0)) == 1
    assert _epochs_trained(round0) == [2]  # --initial-epochs 2 (the protocol's), not --epochs 1
    cell = exp / "bald" / "seed_0"
    config = json.loads((cell / "config.json").read_text())
    assert config["strategy"] == "bald" and config["rounds"] == 1 and config["candidates"] == 10
    assert [r["round"] for r in _metrics(cell)] == ["0", "1"]
    assert _metrics(cell)[0]["dice_mean"] == _metrics(round0)[0]["dice_mean"]
    assert sorted(_epochs_trained(cell)) == [1, 2]
    record = json.loads((cell / "rounds" / "round_001.json").read_text())
    assert record["n_candidates"] == 10 and len(record["selected"]) == 4  # chosen among 10 candidates
    # the one command that re-runs the cell, in its own process as compare's cells are
    rerun = tmp_path / "rerun"
    cmd = [sys.executable, "-m", "alseg", "loop", str(synthetic_plan), "-o", str(rerun), "--settings", str(protocol)]
    done = subprocess.run(
        [*cmd, "--strategy", "bald", "--seed", "0", "--workers", "0"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert done.returncode == 0, done.stderr
    assert _dice(rerun) == _dice(cell)
    again = json.loads((rerun / "rounds" / "round_001.json").read_text())
    assert again["selected"] == record["selected"]
    # reports skip the hidden round-0 run
    assert find_run_dirs(exp) == [cell]
    # the grid's collector: one row per round, foreground voxels and seconds per phase, the cell kept
    out = tmp_path / "results"
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "hippocampus_grid.py"), str(exp), "-o", str(out)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    with (out / "curves.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["strategy"], r["seed"], r["round"]) for r in rows] == [("bald", "0", "0"), ("bald", "0", "1")]
    assert [r["dice_mean"] for r in rows] == [m["dice_mean"] for m in _metrics(cell)]
    assert int(rows[1]["n_labelled_items"]) == 12
    fg = [int(r["n_foreground_voxels"]) for r in rows]
    assert 0 < fg[0] <= fg[1] < int(rows[1]["n_labelled_voxels"])
    assert float(rows[1]["seconds_train"]) > 0 and float(rows[1]["seconds_score"]) > 0
    assert rows[0]["batch_uncertainty"] == "" and float(rows[1]["batch_uncertainty"]) > 0
    with (out / "cost.csv").open() as f:
        cost = list(csv.DictReader(f))
    assert cost[0]["strategy"] == "bald" and cost[-1]["strategy"].startswith("ALL")
    assert (out / "cells" / "bald" / "seed_0" / "rounds" / "round_001.json").is_file()
    with (out / "ranking.csv").open() as f:
        (ranked,) = list(csv.DictReader(f))  # the one finished cell; one seed, so no test against a baseline
    assert (ranked["strategy"], ranked["seeds"], ranked["final_dice_mean"]) == (
        "bald",
        "0",
        f"{float(rows[-1]['dice_mean']):.4f}",
    )
    assert ranked["vs_random_seeds"] == "0" and ranked["vs_random_auc_p"] == ""
    assert LoopSettings(epochs=2, initial_epochs=5, rounds=3).total_epochs == 11
    assert LoopSettings(epochs=2, rounds=3).total_epochs == 8


def test_with_candidates_a_strategy_sees_the_annotated_voxels_of_the_whole_labelled_set(synthetic_plan, tmp_path):
    """The candidate subset holds every labelled item, so the class-balance counts a strategy
    reads (USIM's class weights) are those of the labelled set, not of other items."""
    from alseg.active.loop import LoopDriver
    from alseg.active.oracles.labels import LabelStore
    from alseg.strategies.base import Artefacts, Selection, Strategy
    from alseg.strategies.registry import STRATEGIES

    seen = {}

    @dataclasses.dataclass(frozen=True)
    class Counted(Artefacts):  # as USIM's: its own count of the candidates it kept
        n_candidates: int
        note: str

    class Recording(Strategy):
        name = "recording"
        source = "test"

        def select(self, ctx):
            seen["counts"] = np.asarray(ctx.labelled_voxels_per_class).copy()
            seen["n_pool"] = len(ctx.pool)
            pick = ctx.unlabelled[: ctx.budget]
            return Selection(pick, [None] * len(pick), artefacts=Counted(n_candidates=7, note="kept"))

    STRATEGIES["recording"] = Recording
    try:
        settings = LoopSettings(**{**PROTOCOL, "strategy": "recording", "devices": "1"})
        driver = LoopDriver(synthetic_plan, tmp_path / "run", settings, workers=0, show_progress=False)
        driver.run_all()
    finally:
        del STRATEGIES["recording"]
    assert seen["n_pool"] == PROTOCOL["initial"] + PROTOCOL["candidates"] < len(driver.pool)
    round0 = json.loads((tmp_path / "run" / "rounds" / "round_000.json").read_text())["selected"]
    labels = LabelStore(tmp_path / "run" / "labels", driver.ws.train_shapes())
    expected = labels.voxels_per_class(driver.pool, driver.pool.mask(round0), driver.ws.plans.n_classes)
    assert expected[1:].sum() > 0
    np.testing.assert_array_equal(seen["counts"], expected)
    record = json.loads((tmp_path / "run" / "rounds" / "round_001.json").read_text())
    assert record["n_candidates"] == 7 and record["note"] == "kept"  # a strategy's artefacts win over the loop's


def test_the_committed_protocols_load_and_the_item_size_arm_differs_only_in_item_size_and_budgets():
    """The files docs/hippocampus-grid.md and docs/small-items.md run: valid loop settings, and
    the 20 x 20 arm is the grid's protocol with the item size and voxel-matched budgets."""
    from alseg.active.settings import load_settings_file

    results = BENCHMARKS / "results" / "hippocampus_2d"
    grid = load_settings_file(results / "protocol.json", ["random", "bald"])
    small = load_settings_file(results / "protocol_items_20x20.json", ["random", "bald"])
    assert grid.item_size is None and list(small.item_size) == [20, 20]
    changed = {k for k in LoopSettings.model_fields if getattr(grid, k) != getattr(small, k)}
    assert changed == {"item_size", "initial", "budget", "candidates"}
    # equal voxels: a median slice holds about 4.4 windows of 20 x 20
    assert small.initial / grid.initial == small.budget / grid.budget == pytest.approx(4.4)
    # the 3D arms (docs/small-items.md): 20³ boxes against patch-size items, a median case holding ~7.9 boxes
    results_3d = BENCHMARKS / "results" / "hippocampus_3d"
    patch = load_settings_file(results_3d / "protocol_patch.json", ["random", "bald"])
    boxes = load_settings_file(results_3d / "protocol_items_20.json", ["random", "bald"])
    assert patch.config == boxes.config == "3d_fullres" and patch.candidates is None
    assert patch.item_size is None and list(boxes.item_size) == [20, 20, 20]
    assert {k for k in LoopSettings.model_fields if getattr(patch, k) != getattr(boxes, k)} == {
        "item_size",
        "initial",
        "budget",
    }
    assert boxes.initial / patch.initial == boxes.budget / patch.budget == pytest.approx(36 * 50 * 35 / 20**3, rel=0.01)


def _grid_module():
    """benchmarks/hippocampus_grid.py as a module (benchmarks are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("hippocampus_grid", BENCHMARKS / "hippocampus_grid.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ranking_against_the_baselines_pairs_seeds_and_counts_significant_rounds():
    items = np.array([10.0, 20.0, 30.0])
    random = {0: [0.5, 0.60, 0.70], 1: [0.4, 0.62, 0.69], 2: [0.45, 0.58, 0.71]}
    better = {s: [d[0], d[1] + 0.05 + 0.001 * s, d[2] + 0.05 + 0.002 * s] for s, d in random.items()}
    curves = {
        "random": {s: (items, np.array(d)) for s, d in random.items()},
        "better": {s: (items, np.array(d)) for s, d in better.items()},
        "same": {s: (items, np.array(d)) for s, d in random.items()},
        "one-seed": {0: (items, np.array(better[0]))},
    }
    rows = {r["strategy"]: r for r in _grid_module().ranking_rows(curves)}
    assert list(rows) == ["one-seed", "better", "random", "same"]  # best normalised AUC first
    # AUC of random seed 0: ((0.5 + 0.6) / 2 * 10 + (0.6 + 0.7) / 2 * 10) / 20 = 0.6; mean over seeds 0.5875
    assert rows["random"]["auc_mean"] == "0.5875" and rows["random"]["seeds"] == "0;1;2"
    assert rows["random"]["vs_random_seeds"] == 0 and rows["random"]["vs_random_auc_p"] == ""  # not against itself
    b = rows["better"]
    assert b["vs_random_auc_diff"] == "0.0385"  # (10 d1 + 5 d2) / 20 per seed: 0.0375, 0.0385, 0.0395
    assert 0 < float(b["vs_random_auc_p"]) < 0.01
    assert (b["vs_random_rounds_better"], b["vs_random_rounds_worse"]) == ("2/2", "0/2")  # round 0 is shared
    s = rows["same"]
    assert (s["vs_random_auc_diff"], s["vs_random_auc_p"], s["vs_random_rounds_better"]) == ("0.0000", "", "0/2")
    one = rows["one-seed"]
    assert one["vs_random_seeds"] == 1 and one["vs_random_auc_p"] == "" and one["final_dice_sd"] == ""
    assert all(r["vs_random-fg_seeds"] == 0 for r in rows.values())  # no random-fg cells: nothing to pair
