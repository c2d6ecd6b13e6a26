"""Known answers for the reporting layer: AUC, items-to-reach, penalty matrix, run parsing, full report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from builders import run_cli
from matplotlib.image import imread

from alseg.errors import AlsegError
from alseg.report import build_report
from alseg.report.curves import items_to_reach, normalised_auc
from alseg.report.penalty import column_phi, pairwise_wins, penalty_matrix
from alseg.report.runs import load_run, load_runs

LABELS = {"1": "Anterior", "2": "Posterior"}
HEADER = (
    "round,n_labelled_items,n_labelled_voxels,dice_mean,dice_Anterior,dice_Posterior,"
    "seconds_train,seconds_score,seconds_select"
)


# --- curves -----------------------------------------------------------------------------------


def test_auc_of_constant_curve_is_the_constant():
    assert normalised_auc([100, 200, 400, 800], [0.7] * 4) == pytest.approx(0.7)


def test_auc_of_linear_curve_is_its_midpoint_value_even_with_uneven_spacing():
    x = np.array([100.0, 150.0, 300.0, 500.0])
    y = 0.001 * x + 0.2
    assert normalised_auc(x, y) == pytest.approx(0.001 * 300 + 0.2)


def test_auc_sorts_x_and_handles_a_single_point():
    assert normalised_auc([300, 100, 200], [0.9, 0.5, 0.7]) == pytest.approx(0.7)
    assert normalised_auc([100], [0.42]) == pytest.approx(0.42)


def test_items_to_reach_interpolates_between_rounds():
    x, y = [100, 200, 300], [0.5, 0.7, 0.9]
    assert items_to_reach(x, y, 0.8) == pytest.approx(250.0)
    assert items_to_reach(x, y, 0.6) == pytest.approx(150.0)
    assert items_to_reach(x, y, 0.7) == pytest.approx(200.0)
    assert items_to_reach(x, y, 0.4) == pytest.approx(100.0)
    assert items_to_reach(x, y, 0.95) is None


# --- penalty matrix ---------------------------------------------------------------------------


def _base(seeds: int, rounds: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return 0.5 + 0.05 * np.arange(rounds)[None, :] + rng.uniform(-0.03, 0.03, size=(seeds, rounds))


def test_strategy_that_always_wins_has_zero_phi_and_full_row():
    base = _base(seeds=4, rounds=5)
    jitter = np.array([0.001, -0.002, 0.0015, -0.001])[:, None]
    winner = base + 0.1 + jitter  # paired differences 0.1 ± 0.002: p << 0.05 every round
    scores = np.stack([winner, base, base.copy()])  # the last two are identical: ties
    matrix = penalty_matrix([scores])
    expected = np.array([[0.0, 100.0, 100.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(matrix, expected)
    np.testing.assert_allclose(matrix.sum(axis=1), [200.0, 0.0, 0.0])
    np.testing.assert_allclose(column_phi(matrix), [0.0, 100.0 / 3, 100.0 / 3])


def test_penalty_weights_rounds_by_one_over_L_and_averages_datasets():
    # Dataset 1, L = 4: A beats B in rounds 0 and 2; identical elsewhere.
    b1 = _base(seeds=3, rounds=4)
    a1 = b1.copy()
    a1[:, [0, 2]] += np.array([0.10, 0.11, 0.12])[:, None]
    # Dataset 2, L = 2: A beats B in round 0, B beats A in round 1.
    b2 = _base(seeds=3, rounds=2)
    a2 = b2.copy()
    a2[:, 0] += [0.10, 0.11, 0.12]
    a2[:, 1] -= [0.10, 0.11, 0.12]
    d1, d2 = np.stack([a1, b1]), np.stack([a2, b2])

    np.testing.assert_allclose(pairwise_wins(d1), [[0.0, 0.5], [0.0, 0.0]])
    np.testing.assert_allclose(pairwise_wins(d2), [[0.0, 0.5], [0.5, 0.0]])
    matrix = penalty_matrix([d1, d2])  # 100 * (W1 + W2) / 2
    np.testing.assert_allclose(matrix, [[0.0, 50.0], [25.0, 0.0]])
    np.testing.assert_allclose(column_phi(matrix), [12.5, 25.0])


def test_non_significant_difference_and_single_seed_give_no_win():
    b = _base(seeds=4, rounds=1)
    a = b + np.array([0.10, -0.09, 0.05, -0.04])[:, None]  # higher mean, p ≈ 0.9
    np.testing.assert_allclose(pairwise_wins(np.stack([a, b])), 0.0)
    one_seed = np.stack([b[:1] + 0.2, b[:1]])
    np.testing.assert_allclose(pairwise_wins(one_seed), 0.0)


def test_penalty_rejects_datasets_with_different_strategy_sets():
    with pytest.raises(ValueError, match="same strategies"):
        penalty_matrix([np.zeros((2, 3, 4)), np.zeros((3, 3, 4))])


# --- run directories --------------------------------------------------------------------------


def _write_run(
    run_dir: Path,
    strategy: str,
    seed: int,
    dice: list[float],
    dataset: str = "Dataset004_Hippocampus",
    uncertainty: list[float] | None = None,
) -> None:
    run_dir.mkdir(parents=True)
    config = {
        "strategy": strategy,
        "seed": seed,
        "dataset": dataset,
        "config": "2d",
        "budget": 100,
        "initial": 100,
        "labels": LABELS,
    }
    (run_dir / "config.json").write_text(json.dumps(config))
    rows = [HEADER]
    for k, d in enumerate(dice):
        rows.append(f"{k},{100 * (k + 1)},{4096 * (k + 1)},{d:.6f},{d + 0.02:.6f},{d - 0.02:.6f},12.5,3.0,0.4")
    (run_dir / "metrics.csv").write_text("\n".join(rows) + "\n")
    (run_dir / "state.json").write_text(json.dumps({"round": len(dice) - 1, "labelled": [], "finished": True}))
    if uncertainty is not None:
        (run_dir / "rounds").mkdir()
        for k, u in enumerate(uncertainty, start=1):
            record = {
                "round": k,
                "strategy": strategy,
                "selected": [f"case_{k}_{i}" for i in range(3)],
                "scores": [u, u, None],
                "batch_uncertainty": u,
                "seconds": {"select": 0.4},
            }
            (run_dir / "rounds" / f"round_{k:03d}.json").write_text(json.dumps(record))


def _write_experiment(exp: Path) -> None:
    """2 strategies x 3 seeds x 4 rounds; 'usim' beats 'random' by ~0.05 from round 1; full Dice 0.85."""
    rng = np.random.default_rng(1)
    for seed in range(3):
        shared = 0.55 + rng.uniform(-0.01, 0.01)  # round 0: same random initial set for both strategies
        random_curve = [shared, 0.62, 0.68, 0.72]
        noise = rng.uniform(-0.004, 0.004, size=3)
        usim_curve = [shared, *(np.array([0.67, 0.76, 0.82]) + noise)]
        random_curve = [shared, *(np.array(random_curve[1:]) + rng.uniform(-0.004, 0.004, size=3))]
        _write_run(exp / "random" / f"seed{seed}", "random", seed, random_curve, uncertainty=[0.10, 0.09, 0.08])
        _write_run(exp / "nested" / "usim" / f"seed{seed}", "usim", seed, usim_curve, uncertainty=[0.20, 0.17, 0.15])
    usim0 = exp / "nested" / "usim" / "seed0" / "rounds"
    emb_rng = np.random.default_rng(2)
    role = np.array(["labelled"] * 10 + ["unlabelled"] * 20 + ["query"] * 6 + ["selected"] * 4)
    np.savez(usim0 / "round_003_embeddings.npz", embeddings=emb_rng.normal(size=(40, 8)), role=role)
    full = exp / "full"
    full.mkdir()
    (full / "config.json").write_text(
        json.dumps(
            {"strategy": "full", "dataset": "Dataset004_Hippocampus", "config": "2d", "labels": LABELS, "seed": 0}
        )
    )
    (full / "metrics.csv").write_text(HEADER + "\n0,400,16384,0.850000,0.87,0.83,100.0,0,0\n")


def test_load_run_reads_metrics_and_batch_uncertainty(tmp_path):
    _write_run(tmp_path / "r", "random", 3, [0.5, 0.6, 0.7], uncertainty=[0.2, 0.1])
    run = load_run(tmp_path / "r")
    assert (run.strategy, run.seed, run.setting) == ("random", 3, "Dataset004_Hippocampus/2d")
    np.testing.assert_array_equal(run.rounds, [0, 1, 2])
    np.testing.assert_array_equal(run.n_items, [100, 200, 300])
    np.testing.assert_allclose(run.dice_per_class["Posterior"], [0.48, 0.58, 0.68])
    np.testing.assert_allclose(run.batch_uncertainty, [np.nan, 0.2, 0.1])
    assert run.finished is True


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("round,n_labelled_items,n_labelled_voxels,dice_mean\n0,100,1,0.5\n", "missing column"),
        (HEADER + "\n0,100,1,0.5,0.5,oops,1,1,1\n", "line 2: dice_Posterior='oops' is not a number"),
        (HEADER + "\n0,100,1,55.0,0.5,0.5,1,1,1\n", "outside [0, 1]"),
        (HEADER + "\n1,100,1,0.5,0.5,0.5,1,1,1\n0,200,1,0.6,0.6,0.6,1,1,1\n", "strictly increasing"),
        (HEADER + "\n", "header only"),
    ],
)
def test_malformed_metrics_raise_one_line_error_naming_the_file(tmp_path, body, message):
    _write_run(tmp_path / "r", "random", 0, [0.5])
    (tmp_path / "r" / "metrics.csv").write_text(body)
    with pytest.raises(AlsegError) as err:
        load_run(tmp_path / "r")
    text = str(err.value)
    assert message in text and "metrics.csv" in text and "\n" not in text


def test_active_run_config_without_seed_is_rejected(tmp_path):
    _write_run(tmp_path / "r", "random", 0, [0.5])
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    del config["seed"]
    (tmp_path / "r" / "config.json").write_text(json.dumps(config))
    with pytest.raises(AlsegError, match=r"config\.json: invalid run config .*seed"):
        load_run(tmp_path / "r")


def test_two_runs_of_the_same_strategy_and_seed_are_an_error(tmp_path):
    _write_run(tmp_path / "a" / "r", "random", 0, [0.5])
    _write_run(tmp_path / "b" / "r", "random", 0, [0.6])
    with pytest.raises(AlsegError, match="same Dataset004_Hippocampus/2d / random / seed 0"):
        load_runs([tmp_path / "a", tmp_path / "b"])


# --- full report ------------------------------------------------------------------------------


def test_build_report_writes_html_summary_and_nontrivial_pngs(tmp_path):
    exp, out = tmp_path / "exp", tmp_path / "report"
    _write_experiment(exp)
    summary = build_report([exp], out)

    assert (out / "report.html").stat().st_size > 20_000
    assert json.loads((out / "summary.json").read_text()) == summary
    setting = summary["settings"]["Dataset004_Hippocampus/2d"]
    assert setting["full_dice"] == pytest.approx(0.85)
    assert setting["rounds"] == [0, 1, 2, 3]
    usim, random = setting["strategies"]["usim"], setting["strategies"]["random"]
    assert usim["auc_mean"] > random["auc_mean"]
    assert usim["phi"] == 0.0 and random["phi"] == pytest.approx(50.0)  # usim wins all 3 rounds ≥ 1
    assert setting["penalty"]["strategies"] == ["random", "usim"]
    np.testing.assert_allclose(setting["penalty"]["matrix"], [[0.0, 0.0], [100.0, 0.0]])
    assert usim["items_to_target"] is not None and random["items_to_target"] is None  # target 0.8075
    assert 300 < usim["items_to_target"] <= 400

    names = set(summary["figures"])
    assert {
        "learning_curve_Dataset004_Hippocampus_2d.png",
        "penalty_Dataset004_Hippocampus_2d.png",
        "batch_uncertainty_Dataset004_Hippocampus_2d.png",
        "tsne_Dataset004_Hippocampus_2d_usim.png",
    } <= names
    for name in names:
        png = out / name
        assert png.stat().st_size > 10_000, name
        assert imread(png)[..., :3].std() > 0, name
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(names) and "<table>" in html


# --- per case and surface metrics ---------------------------------------------------------------


def test_surface_metrics_known_answers():
    """HD95 and normalised surface Dice through MONAI, with the grid's spacing; empty classes as for Dice."""
    from alseg.model.metrics import surface_metrics_per_class

    gt = np.zeros((6, 20, 20), np.uint8)
    gt[1:5, 5:15, 5:15] = 1
    same = surface_metrics_per_class(gt, gt, 3, (1.0, 1.0, 1.0))
    assert same == {1: (0.0, 1.0), 2: (0.0, 1.0)}  # class 2 absent from both: perfect, as Dice counts it
    shifted = np.zeros_like(gt)
    shifted[1:5, 5:15, 8:18] = 1  # 3 voxels along x
    hd95, nsd = surface_metrics_per_class(shifted, gt, 3, (1.0, 1.0, 1.0))[1]
    assert hd95 == pytest.approx(3.0) and 0.0 < nsd < 1.0
    hd95_mm, nsd_wide = surface_metrics_per_class(shifted, gt, 3, (1.0, 1.0, 2.0))[1]
    assert hd95_mm == pytest.approx(6.0)  # x spacing 2 mm: the same shift is 6 mm
    assert surface_metrics_per_class(shifted, gt, 3, (1.0, 1.0, 1.0), tolerance_mm=3.0)[1][1] == pytest.approx(1.0)
    missed = surface_metrics_per_class(np.zeros_like(gt), gt, 3, (1.0, 1.0, 1.0))[1]
    assert np.isnan(missed[0]) and missed[1] == 0.0


def _write_case_metrics(run_dir: Path, rounds: int, shift: float) -> None:
    (run_dir / "rounds").mkdir(exist_ok=True)
    for k in range(rounds):
        lines = ["case,dice_mean,dice_Anterior,dice_Posterior,hd95_Anterior,nsd_Anterior,hd95_Posterior,nsd_Posterior"]
        for c, hd in (("case_a", 2.0), ("case_b", "")):  # case_b: HD95 undefined (class missed)
            lines.append(f"{c},0.5,0.6,0.4,{hd},{0.8 + shift},{4.0 + k},0.5")
        (run_dir / "rounds" / f"round_{k:03d}_cases.csv").write_text("\n".join(lines) + "\n")


def test_report_has_a_per_case_table_and_surface_metrics_next_to_dice(tmp_path):
    exp, out = tmp_path / "exp", tmp_path / "report"
    _write_experiment(exp)
    for seed in range(3):
        _write_case_metrics(exp / "random" / f"seed{seed}", 4, shift=0.01 * seed)
        _write_case_metrics(exp / "nested" / "usim" / f"seed{seed}", 4, shift=0.1)
    summary = build_report([exp], out)
    random = summary["settings"]["Dataset004_Hippocampus/2d"]["strategies"]["random"]
    assert random["final_hd95_per_class"] == {"Anterior": pytest.approx(2.0), "Posterior": pytest.approx(7.0)}
    assert random["final_nsd_per_class"]["Anterior"] == pytest.approx(0.81)  # mean over seeds of 0.80, 0.81, 0.82
    rows = (out / "per_case.csv").read_text().splitlines()
    assert rows[0].startswith("setting,strategy,seed,round,n_labelled_items,case,dice_mean")
    assert len(rows) == 1 + 2 * 3 * 4 * 2  # strategies x seeds x rounds x cases
    html = (out / "report.html").read_text()
    assert "Anterior: HD95 (mm)" in html and "Per test case, round 3" in html and "case_b" in html
    assert "per_case.csv" in html


def test_learning_curves_say_one_seed_instead_of_a_band():
    from alseg.report.figures import _spread_caption

    class C:
        def __init__(self, n):
            self.seeds = list(range(n))

    assert _spread_caption({"a": C(1), "b": C(1)}, "band: 95% CI") == "one seed (no spread to show)"
    assert "one-seed strategies: no band" in _spread_caption({"a": C(1), "b": C(3)}, "band: 95% CI")
    assert _spread_caption({"a": C(3)}, "band: 95% CI") == "mean over seeds, band: 95% CI"


def test_a_loop_records_each_rounds_metrics_per_test_case(finished_run, tmp_path):
    """rounds/round_XXX_cases.csv: one row per test case; its mean Dice is the round's metrics.csv row."""
    import csv

    _, _, run = finished_run
    split = json.loads((run / "split.json").read_text())
    with (run / "metrics.csv").open() as f:
        metrics = list(csv.DictReader(f))
    for row in metrics:
        with (run / "rounds" / f"round_{int(row['round']):03d}_cases.csv").open() as f:
            cases = list(csv.DictReader(f))
        assert sorted(c["case"] for c in cases) == sorted(split["test"])
        for key in ("dice_mean", "dice_Anterior", "dice_Posterior"):
            assert np.mean([float(c[key]) for c in cases]) == pytest.approx(float(row[key]), abs=1e-5)
        assert {"hd95_Anterior", "nsd_Anterior", "hd95_Posterior", "nsd_Posterior"} <= set(cases[0])
        assert all(0.0 <= float(c["nsd_Anterior"]) <= 1.0 for c in cases)
    summary = build_report([run], tmp_path / "report")
    (setting,) = summary["settings"].values()
    assert set(setting["strategies"]["random"]["final_hd95_per_class"]) == {"Anterior", "Posterior"}
    assert (tmp_path / "report" / "per_case.csv").is_file()


def test_unfinished_runs_shorten_the_comparison_with_a_note_and_finished_only_leaves_them_out(tmp_path):
    """A grid in progress: one seed-1 run has only round 0. By default every strategy's numbers stop
    at round 0 and a note names the run; --finished-only compares the finished runs over all rounds."""
    exp = tmp_path / "exp"
    _write_experiment(exp)
    late = exp / "random" / "seed1"
    metrics = (late / "metrics.csv").read_text().splitlines()
    (late / "metrics.csv").write_text("\n".join(metrics[:2]) + "\n")
    (late / "state.json").write_text(json.dumps({"round": 0, "labelled": [], "finished": False}))

    cut = build_report([exp], tmp_path / "all")
    assert cut["settings"]["Dataset004_Hippocampus/2d"]["rounds"] == [0]
    assert any("1 run(s) have not finished (random seed 1)" in n and "--finished-only" in n for n in cut["notes"])

    kept = build_report([exp], tmp_path / "finished", finished_only=True)
    setting = kept["settings"]["Dataset004_Hippocampus/2d"]
    assert setting["rounds"] == [0, 1, 2, 3]
    assert setting["strategies"]["random"]["seeds"] == [0, 2]
    assert setting["strategies"]["usim"]["seeds"] == [0, 1, 2]
    assert setting["full_dice"] == pytest.approx(0.85)  # the full-data run has no state and stays
    assert any(n == "Left out 1 unfinished run(s) (--finished-only): random seed 1." for n in kept["notes"])


def test_finished_only_with_no_finished_run_is_one_line(tmp_path):
    _write_run(tmp_path / "exp" / "r", "random", 0, [0.5])
    (tmp_path / "exp" / "r" / "state.json").write_text(json.dumps({"round": 0, "labelled": [], "finished": False}))
    with pytest.raises(AlsegError, match="no active-learning run below it has finished"):
        build_report([tmp_path / "exp"], tmp_path / "report", finished_only=True)


def _set_item_size(run_dir: Path, size: list[int], voxels_per_round: int) -> None:
    """Mark ``run_dir`` as a ``--item-size`` run whose rounds annotate ``voxels_per_round`` each."""
    config = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps({**config, "item_size": size}))
    lines = (run_dir / "metrics.csv").read_text().splitlines()
    rows = [lines[0]]
    for line in lines[1:]:
        cells = line.split(",")
        cells[2] = str(voxels_per_round * (int(cells[0]) + 1))
        rows.append(",".join(cells))
    (run_dir / "metrics.csv").write_text("\n".join(rows) + "\n")


def test_item_size_runs_are_their_own_setting_and_voxels_axis_integrates_over_annotated_voxels(tmp_path):
    """Two arms of one strategy (patch-size items and 20x20 items) report side by side: the
    small-item runs form their own setting (the same strategy name may appear in both), share
    the full-data reference, and with x_axis='voxels' AUC and "to target" run along annotated voxels."""
    exp = tmp_path / "exp"
    for seed in range(2):
        _write_run(exp / "patch" / f"seed{seed}", "random", seed, [0.5, 0.6, 0.7, 0.8])  # 4096 voxels/round
        small = exp / "small" / f"seed{seed}"
        _write_run(small, "random", seed, [0.5, 0.7, 0.8, 0.9])
        _set_item_size(small, [20, 20], 1000)
    (exp / "full").mkdir()
    (exp / "full" / "config.json").write_text(
        json.dumps({"strategy": "full", "dataset": "Dataset004_Hippocampus", "config": "2d", "labels": LABELS})
    )
    (exp / "full" / "metrics.csv").write_text(HEADER + "\n0,400,16384,0.900000,0.9,0.9,100.0,0,0\n")

    summary = build_report([exp], tmp_path / "report", x_axis="voxels")
    patch = summary["settings"]["Dataset004_Hippocampus/2d"]
    small = summary["settings"]["Dataset004_Hippocampus/2d items 20x20"]
    assert (patch["item_size"], small["item_size"]) == (None, [20, 20])
    assert patch["x_axis"] == small["x_axis"] == "voxels"
    assert patch["full_dice"] == small["full_dice"] == pytest.approx(0.9)
    # small arm: Dice 0.5, 0.7, 0.8, 0.9 at 1000..4000 voxels: trapezoids (0.6 + 0.75 + 0.85) / 3
    small_random, patch_random = small["strategies"]["random"], patch["strategies"]["random"]
    assert small_random["auc_mean"] == pytest.approx((0.6 + 0.75 + 0.85) / 3)
    assert small_random["final_n_voxels"] == 4000 and patch_random["final_n_voxels"] == 4 * 4096
    # target 0.95 x 0.9 = 0.855: between 0.8 at 3000 and 0.9 at 4000 voxels; items: 300 -> 400
    assert small_random["voxels_to_target"] == pytest.approx(3550.0)
    assert small_random["items_to_target"] == pytest.approx(355.0)
    assert patch_random["voxels_to_target"] is None  # the patch arm ends at 0.8
    html = (tmp_path / "report" / "report.html").read_text()
    assert "normalised AUC vs annotated voxels" in html and "Dataset004_Hippocampus/2d items 20x20" in html

    by_items = build_report([exp], tmp_path / "items")  # the default axis: labelled items
    assert by_items["settings"]["Dataset004_Hippocampus/2d items 20x20"]["strategies"]["random"][
        "auc_mean"
    ] == pytest.approx((0.6 + 0.75 + 0.85) / 3)  # items 100..400 are evenly spaced too
    assert by_items["settings"]["Dataset004_Hippocampus/2d"]["x_axis"] == "items"


def test_report_refuses_an_unknown_x_axis_in_one_line(tmp_path, capsys):
    _write_run(tmp_path / "exp" / "r", "random", 0, [0.5, 0.6])
    code, _, err = run_cli(["report", str(tmp_path / "exp"), "-o", str(tmp_path / "rep"), "--x-axis", "mm"], capsys)
    assert code == 2
    assert err.strip().splitlines() == ["error: --x-axis must be one of items, voxels, got 'mm'"]
    assert not (tmp_path / "rep").exists()
