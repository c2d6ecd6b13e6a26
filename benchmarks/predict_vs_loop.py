"""Does ``alseg predict`` reproduce the loop's test Dice, in each scan's original space?

    alseg predict RUN -i <the run's test images> -o PRED
    python benchmarks/predict_vs_loop.py RUN PRED

The loop measures test Dice on the plan's preprocessed grid; ``alseg predict`` writes label maps
back in each input's own geometry (crop, resampling and transpose undone). This script scores
those files against the dataset's label files of the run's test cases (``split.json``), with the
same Dice definition (``alseg.model.metrics``), and prints both means side by side: equal when
the plan does not resample, close (a resampling's rounding) when it does.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from alseg.active.rundir import RunDir
from alseg.dataset.io import read_volume
from alseg.dataset.raw import read_dataset
from alseg.model.metrics import dice_per_class, mean_dice, metric_names


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("pred", type=Path)
    args = ap.parse_args()
    run = RunDir(args.run)
    config = run.load_config()
    test = run.load_split()["test"]
    info = read_dataset(config.dataset_root)
    names = metric_names({int(k): v for k, v in config.labels.items()} | {0: "background"})
    n_classes = len(names) + 1
    rows = []
    for case_id in sorted(test):
        pred_file = next(iter(sorted(args.pred.glob(f"{case_id}.nii*"))), None)
        if pred_file is None:
            sys.exit(f"error: {args.pred}: no prediction for test case {case_id} — run alseg predict on it")
        pred, _ = read_volume(pred_file)
        gt, _ = read_volume(info.case(case_id).label)
        per_class = dice_per_class(np.asarray(pred), np.asarray(gt), n_classes)
        rows.append({"dice_mean": mean_dice(per_class), **{names[c]: v for c, v in per_class.items()}})
    last = run.read_metrics()[-1]
    print(f"{len(rows)} test cases, model of round {last['round']}")
    print(f"{'metric':<18} {'loop (plan grid)':>17} {'predict (original)':>19} {'difference':>11}")
    for key in ["dice_mean", *names.values()]:
        ours = float(np.mean([r[key] for r in rows]))
        theirs = float(last[key])
        print(f"{key:<18} {theirs:>17.4f} {ours:>19.4f} {ours - theirs:>+11.4f}")


if __name__ == "__main__":
    main()
