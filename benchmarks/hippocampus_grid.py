"""The Hippocampus grid: every strategy x 3 seeds on MSD Task04 2d, one protocol, its results.

Run (resumable: stop it any time, the same command goes on from the last finished round)::

    alseg plan ../shared/data/Task04_Hippocampus -o grid/hippo_plan
    alseg compare grid/hippo_plan -o grid/exp --settings benchmarks/results/hippocampus_2d/protocol.json \\
        --strategies all --seeds 3 --shared-initial-round --workers 1

Collect what has finished so far into the committed results (run it as often as you like)::

    python benchmarks/hippocampus_grid.py grid/exp -o benchmarks/results/hippocampus_2d

It writes ``curves.csv`` (one row per strategy, seed and round: labelled items, annotated voxels
and foreground voxels, Dice mean and per class, batch uncertainty, seconds per phase),
``cost.csv`` (seconds per phase and round, per strategy, and the grid's total),
``ranking.csv`` (per strategy over its finished seeds: final Dice and normalised AUC, mean and sd,
and each strategy against the two baselines, random and random-fg, paired by seed) and
``cells/<strategy>/seed_<s>/`` (each cell's config.json, metrics.csv and round records without
the embeddings), so that the evidence survives the machine the grid ran on. ``alseg report
grid/exp -o ...`` draws the figures and the summary from the same run directories.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
from pathlib import Path

import numpy as np
from scipy.stats import ttest_rel

from alseg.active.rundir import RunDir, find_run_dirs
from alseg.report.curves import normalised_auc
from alseg.report.penalty import ALPHA, pairwise_wins
from alseg.report.runs import RunRecord, load_run

PHASES = ("train", "eval", "score", "select")
CURVE_COLUMNS = [
    "strategy",
    "seed",
    "round",
    "n_labelled_items",
    "n_labelled_voxels",
    "n_foreground_voxels",
    "dice_mean",
    "dice_per_class",
    "batch_uncertainty",
    *(f"seconds_{p}" for p in PHASES),
]
BASELINES = ("random", "random-fg")
"""What every strategy is ranked against: uniform random, and nnActive's foreground-aware random."""


def curve_rows(run: RunRecord) -> list[dict[str, object]]:
    """One row per finished round of ``run``; per-class Dice as ``name=value`` pairs (one column, so
    datasets with other labels keep the same header)."""
    rows = []
    for j, r in enumerate(run.rounds.astype(int)):
        voxels = run.labelled_voxels.get(int(r))
        fg = None if voxels is None else sum(v for k, v in voxels.items() if k != "background")
        bu = run.batch_uncertainty[j]
        rows.append(
            {
                "strategy": run.strategy,
                "seed": run.seed,
                "round": int(r),
                "n_labelled_items": int(run.n_items[j]),
                "n_labelled_voxels": int(run.n_voxels[j]),
                "n_foreground_voxels": "" if fg is None else int(fg),
                "dice_mean": f"{run.dice_mean[j]:.6f}",
                "dice_per_class": ";".join(f"{k}={v[j]:.6f}" for k, v in run.dice_per_class.items()),
                "batch_uncertainty": "" if not np.isfinite(bu) else f"{bu:.3f}",
                **{f"seconds_{p}": f"{run.seconds[p][j]:.1f}" for p in PHASES},
            }
        )
    return rows


def cost_rows(runs: list[RunRecord]) -> list[dict[str, object]]:
    """Mean seconds per phase of a selection round (rounds >= 1) per strategy, and the total wall
    time its cells took; round 0 is counted once per seed (the grid trains it once and shares it)."""
    out = []
    round0: dict[int, float] = {}
    for strategy in sorted({r.strategy for r in runs}):
        mine = [r for r in runs if r.strategy == strategy]
        later = [r.rounds >= 1 for r in mine]
        row: dict[str, object] = {"strategy": strategy, "cells": len(mine)}
        total = 0.0
        for p in PHASES:
            values = np.concatenate([r.seconds[p][m] for r, m in zip(mine, later)])
            row[f"seconds_{p}_per_round"] = f"{values.mean():.1f}" if len(values) else ""
            total += float(values.sum())
        for r in mine:
            if r.seed is not None and len(r.rounds) and r.rounds[0] == 0:
                round0[r.seed] = float(r.seconds["train"][0] + r.seconds["eval"][0])
        row["seconds_selection_rounds_total"] = f"{total:.0f}"
        out.append(row)
    total = sum(float(r["seconds_selection_rounds_total"]) for r in out) + sum(round0.values())
    out.append(
        {
            "strategy": "ALL (round 0 once per seed)",
            "cells": sum(int(r["cells"]) for r in out),
            "seconds_selection_rounds_total": f"{total:.0f}",
        }
    )
    return out


def _fmt(value: float, digits: int = 4) -> str:
    return "" if not np.isfinite(value) else f"{value:.{digits}f}"


def _sd(values: np.ndarray) -> float:
    """Sample standard deviation over seeds; NaN (a blank cell) for one seed."""
    return float(values.std(ddof=1)) if len(values) > 1 else float("nan")


def ranking_rows(curves: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]]) -> list[dict[str, object]]:
    """Per strategy (``curves``: strategy → seed → (labelled items, Dice) per round of a finished
    cell): final Dice and normalised AUC over its seeds (mean, sd), and against each of
    :data:`BASELINES` on the seeds both have: the mean paired AUC difference, its paired t-test p,
    and in how many selection rounds (round 0 is shared, so left out) the strategy's Dice was
    significantly above or below the baseline's (paired t-test, p < 0.05: the penalty matrix's
    test). Fewer than 2 shared seeds leave the tests blank: one seed ranks nothing. Best AUC first."""
    auc = {name: {s: normalised_auc(*curve) for s, curve in by_seed.items()} for name, by_seed in curves.items()}
    rows = []
    for strategy, by_seed in curves.items():
        seeds = sorted(by_seed)
        final = np.array([by_seed[s][1][-1] for s in seeds])
        aucs = np.array([auc[strategy][s] for s in seeds])
        row: dict[str, object] = {
            "strategy": strategy,
            "seeds": ";".join(map(str, seeds)),
            "final_dice_mean": _fmt(final.mean()),
            "final_dice_sd": _fmt(_sd(final)),
            "auc_mean": _fmt(aucs.mean()),
            "auc_sd": _fmt(_sd(aucs)),
        }
        for base in BASELINES:
            shared = sorted(set(seeds) & set(curves.get(base, {}))) if base != strategy else []
            key = f"vs_{base}"
            row[f"{key}_seeds"] = len(shared)
            if len(shared) < 2:
                row.update(
                    {f"{key}_auc_diff": "", f"{key}_auc_p": "", f"{key}_rounds_better": "", f"{key}_rounds_worse": ""}
                )
                continue
            mine = np.array([auc[strategy][s] for s in shared])
            theirs = np.array([auc[base][s] for s in shared])
            dice = np.stack([[by_seed[s][1][1:] for s in shared], [curves[base][s][1][1:] for s in shared]])
            wins = pairwise_wins(dice, ALPHA) * dice.shape[2]  # rounds, not shares
            p = ttest_rel(mine, theirs).pvalue if np.any(mine != theirs) else float("nan")
            row[f"{key}_auc_diff"] = _fmt(float((mine - theirs).mean()))
            row[f"{key}_auc_p"] = f"{p:.2g}" if np.isfinite(p) else ""
            row[f"{key}_rounds_better"] = f"{round(wins[0, 1])}/{dice.shape[2]}"
            row[f"{key}_rounds_worse"] = f"{round(wins[1, 0])}/{dice.shape[2]}"
        rows.append(row)
    return sorted(rows, key=lambda r: -float(r["auc_mean"]))


def finished_curves(cells: list[RunRecord]) -> dict[str, dict[int, tuple[np.ndarray, np.ndarray]]]:
    """strategy → seed → (labelled items, Dice) per round, of the finished cells only."""
    out: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]] = {}
    for r in cells:
        if r.finished and r.seed is not None:
            out.setdefault(r.strategy, {})[r.seed] = (r.n_items.astype(float), r.dice_mean.astype(float))
    return out


def keep_cell(run_dir: Path, dest: Path) -> None:
    """The small files of a cell (config, metrics, round records without embeddings) under ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    run = RunDir(run_dir)
    for path in (run.config_path, run.metrics_path, run.state_path):
        if path.is_file():
            shutil.copy2(path, dest / path.name)
    rounds = dest / "rounds"
    rounds.mkdir(exist_ok=True)
    for path in sorted(run_dir.glob("rounds/round_*.json")):
        shutil.copy2(path, rounds / path.name)


def write_csv(path: Path, rows: list[dict[str, object]], columns: list[str] | None = None) -> None:
    columns = columns or list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, restval="")
        w.writeheader()
        w.writerows(rows)


def collect(exp_dir: Path, out: Path) -> dict[str, int]:
    """curves.csv, cost.csv and cells/ from the run directories below ``exp_dir``; the counts."""
    out.mkdir(parents=True, exist_ok=True)
    runs = [load_run(p) for p in find_run_dirs(exp_dir)]
    cells = [r for r in runs if not r.is_full]
    rows = [row for r in sorted(cells, key=lambda r: (r.strategy, r.seed or 0)) for row in curve_rows(r)]
    write_csv(out / "curves.csv", rows, CURVE_COLUMNS)
    write_csv(out / "cost.csv", cost_rows(cells))
    write_csv(out / "ranking.csv", ranking_rows(finished_curves(cells)))
    for r in cells:
        keep_cell(r.path, out / "cells" / r.strategy / f"seed_{r.seed}")
    full = [r for r in runs if r.is_full]
    if full:
        keep_cell(full[0].path, out / "cells" / "full")
    finished = sum(1 for r in cells if r.finished)
    counts = {"cells": len(cells), "finished": finished, "rows": len(rows), "full_reference": len(full)}
    (out / "collected.json").write_text(json.dumps(counts, indent=2) + "\n")
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("exp_dir", type=Path, help="the grid's experiment folder (alseg compare -o)")
    parser.add_argument("-o", "--out", type=Path, default=Path(__file__).parent / "results" / "hippocampus_2d")
    args = parser.parse_args()
    counts = collect(args.exp_dir, args.out)
    print(f"{counts['cells']} cells ({counts['finished']} finished), {counts['rows']} rows → {args.out / 'curves.csv'}")


if __name__ == "__main__":
    main()
