"""Items smaller than the patch against patch-size items, at equal annotated voxels: the table.

Reads finished (or running) run directories of the two arms, e.g. the Hippocampus grid's
``random`` and ``bald`` seed-0 cells (patch-size items: a whole slice) and the same strategies
run with ``--item-size 20,20`` at the same voxel budget (docs/small-items.md), and prints one
markdown row per run and round: labelled items, annotated voxels, foreground voxels annotated,
test Dice. Annotated voxels are recomputed from the round files as the union of the labelled
items' boxes (``Pool.voxels``), so runs recorded before overlapping border tiles were counted
once read the same as runs recorded after. ``--csv`` writes the rows too, ``--figure`` draws
test Dice against annotated voxels, one line per run.

    python benchmarks/small_items_2d.py --plan PLAN GRID/random/seed_0 GRID/bald/seed_0 \
        SMALL/random/seed_0 SMALL/bald/seed_0 --csv docs/figures/small_items_2d.csv
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from matplotlib.figure import Figure

from alseg.active.rundir import read_metrics
from alseg.data.cache import CaseCache
from alseg.data.pool import Pool


def run_rows(run: Path, plan_dir: Path) -> list[dict]:
    """One row per finished round of ``run``: the arm, its strategy and the recomputed voxels
    (``plan_dir``: the plan folder the run trained from, for the cases' preprocessed shapes)."""
    config = json.loads((run / "config.json").read_text())
    plans = json.loads((run / "plans.json").read_text())
    split = json.loads((run / "split.json").read_text())
    name = config["config"]
    patch = tuple(plans["configurations"][name]["patch_size"])
    item_size = config.get("item_size")
    cache = CaseCache(plan_dir / plans["configurations"][name]["data_identifier"])
    pool = Pool.from_cache(cache, split["train"], name, patch, item_size)
    labels = {int(k): v for k, v in config["labels"].items()}
    metrics = read_metrics(run / "metrics.csv", [labels[k] for k in sorted(labels)])
    arm = "patch-size items" if item_size is None else "items " + "x".join(map(str, item_size))
    labelled: list[int] = []
    rows = []
    for k, dice in zip(metrics["round"].astype(int), metrics["dice_mean"]):
        record = json.loads((run / "rounds" / f"round_{k:03d}.json").read_text())
        labelled += pool.indices(record["selected"]).tolist()
        per_class = record.get("labelled_voxels_per_class") or {}
        rows.append(
            {
                "arm": arm,
                "strategy": config["strategy"],
                "seed": config["seed"],
                "round": int(k),
                "items": len(labelled),
                "annotated_voxels": pool.voxels(labelled),
                "foreground_voxels": sum(v for c, v in per_class.items() if c != "background"),
                "dice_mean": round(float(dice), 4),
            }
        )
    return rows


def plot(rows: list[dict], out: Path) -> None:
    """Test Dice against annotated voxels, one line per (arm, strategy, seed)."""
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.subplots()
    runs = sorted({(r["arm"], r["strategy"], r["seed"]) for r in rows})
    strategies = sorted({strategy for _, strategy, _ in runs})
    for arm, strategy, seed in runs:
        mine = [r for r in rows if (r["arm"], r["strategy"], r["seed"]) == (arm, strategy, seed)]
        ax.plot(
            [r["annotated_voxels"] for r in mine],
            [r["dice_mean"] for r in mine],
            marker="o" if arm.startswith("patch") else "s",
            ls="-" if arm.startswith("patch") else "--",
            color=f"C{strategies.index(strategy)}",
            label=f"{strategy}, {arm} (seed {seed})",
        )
    ax.set(xlabel="annotated voxels", ylabel="mean test Dice", title="Dice per annotated voxel, by item size")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (config.json, rounds/, metrics.csv)")
    parser.add_argument("--plan", type=Path, required=True, help="the plan folder the runs trained from")
    parser.add_argument("--csv", type=Path, help="also write the rows to this CSV file")
    parser.add_argument("--figure", type=Path, help="also draw Dice against annotated voxels to this PNG")
    args = parser.parse_args()
    rows = [row for run in args.runs for row in run_rows(run, args.plan)]
    print("| arm | strategy | round | items | annotated voxels | foreground voxels | test Dice |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['arm']} | {r['strategy']} | {r['round']} | {r['items']:,} | {r['annotated_voxels']:,} "
            f"| {r['foreground_voxels']:,} | {r['dice_mean']:.3f} |"
        )
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with args.csv.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    if args.figure:
        plot(rows, args.figure)


if __name__ == "__main__":
    main()
