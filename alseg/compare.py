"""``alseg compare``: the grid of loops (strategies x seeds) plus the full-data reference.

Every cell is an ordinary ``alseg loop`` run directory (``EXP/<strategy>/seed_<s>``), so
the grid is resumable as a whole: finished runs are skipped, unfinished ones resumed. Cells
run in subprocesses, ``--jobs`` at a time; with GPUs each job gets one
(``CUDA_VISIBLE_DEVICES``, round robin). The full-data reference (``EXP/full``) trains the same
network on every training case of the fold for as many iterations as a whole loop takes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from alseg.atomic import atomic_write_json, atomic_write_text
from alseg.errors import AlsegError
from alseg.loop import LoopOptions, resolve_plans
from alseg.progress import console


@dataclass
class Cell:
    strategy: str
    seed: int
    run_dir: Path

    def finished(self) -> bool:
        state = self.run_dir / "state.json"
        if not state.is_file():
            return False
        try:
            return bool(json.loads(state.read_text()).get("finished"))
        except json.JSONDecodeError:
            return False


def parse_strategies(spec: str) -> list[str]:
    from alseg.strategies import available

    names = available()
    if spec == "all":
        return names
    wanted = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in names]
    if unknown:
        raise AlsegError(f"unknown strategy '{unknown[0]}' — choose from: all, {', '.join(names)}")
    return wanted


def loop_command(plan_dir: Path, cell: Cell, options: LoopOptions) -> list[str]:
    cmd = [
        sys.executable, "-c", "from alseg.cli import main; main()", "loop", str(plan_dir), "-o", str(cell.run_dir),
        "--strategy", cell.strategy, "--seed", str(cell.seed), "--rounds", str(options.rounds),
        "--budget", str(options.budget), "--initial", str(options.initial), "--config", options.config,
        "--fold", str(options.fold), "--epochs", str(options.epochs), "--iters-per-epoch", str(options.iters_per_epoch),
        "--mc-passes", str(options.mc_passes), "--devices", str(options.devices),
    ]
    if options.batch_size:
        cmd += ["--batch-size", str(options.batch_size)]
    if options.workers is not None:
        cmd += ["--workers", str(options.workers)]
    for k, v in (options.strategy_options or {}).items():
        cmd += ["--option", f"{k}={json.dumps(v) if not isinstance(v, str) else v}"]
    if (cell.run_dir / "config.json").is_file():
        cmd.append("--resume")
    return cmd


def run_full_reference(plan_dir: Path, exp_dir: Path, options: LoopOptions) -> None:
    """Train on every training case of the fold: the horizontal line of the learning curves."""
    from alseg.data.preprocess import cache_dir_for, preprocess_dataset
    from alseg.model.train import train
    from alseg.plans.models import load_plans

    full = exp_dir / "full"
    if (full / "metrics.csv").is_file():
        return
    plans = load_plans(plan_dir / "plans.json")
    preprocess_dataset(plans, options.config, plan_dir, show_progress=False)
    cache = cache_dir_for(plan_dir, plans.configuration(options.config))
    epochs = options.epochs * (options.rounds + 1)  # as many iterations as a whole loop
    final = train(
        plans, options.config, cache, full / "train", fold=options.fold, epochs=epochs,
        iters_per_epoch=options.iters_per_epoch, devices=options.devices if options.devices != "auto" else "auto",
        resume=(full / "train" / "checkpoints" / "last.ckpt").is_file(), seed=0,
        overrides={"batch_size": options.batch_size}, num_workers=options.workers, val_every=epochs, progress=False,
    )
    from alseg.data.datamodule import list_cases
    from alseg.data.pool import Pool
    from alseg.model.train import make_split

    train_ids, _ = make_split(list_cases(cache), options.fold)
    pool = Pool.from_cache(cache, train_ids, options.config, tuple(plans.configuration(options.config).patch_size))
    labels = {k: v for k, v in plans.labels.items() if k != 0}
    dice_cols = {f"dice_{n.replace(' ', '_')}": final.get(f"dice_{n.replace(' ', '_')}", float("nan")) for n in labels.values()}
    header = ["round", "n_labelled_items", "n_labelled_voxels", "dice_mean", *dice_cols]
    row = [0, len(pool), pool.voxels(range(len(pool))), final.get("dice_mean", float("nan")), *dice_cols.values()]
    atomic_write_json(full / "config.json", {"strategy": "full", "dataset": plans.dataset_name, "config": options.config,
                                             "labels": {str(k): v for k, v in labels.items()}, "seed": 0,
                                             "budget": None, "initial": None, "epochs": epochs})
    atomic_write_text(full / "metrics.csv", ",".join(header) + "\n" + ",".join(str(v) for v in row) + "\n")


def run_compare(target: Path, exp_dir: Path, strategies: list[str], seeds: int, options: LoopOptions,
                jobs: int = 1, full_reference: bool = True) -> list[Cell]:
    exp_dir = Path(exp_dir)
    exp_dir.mkdir(parents=True, exist_ok=True)
    _, plan_dir = resolve_plans(target, exp_dir, options.show_progress)  # a dataset is planned once, into EXP/plan
    cells = [Cell(s, seed, exp_dir / s / f"seed_{seed}") for s in strategies for seed in range(seeds)]
    todo = [c for c in cells if not c.finished()]
    console.print(f"{len(cells)} runs, {len(cells) - len(todo)} already finished")
    # preprocessing once, before the subprocesses share the cache
    from alseg.data.preprocess import preprocess_dataset
    from alseg.plans.models import load_plans

    preprocess_dataset(load_plans(plan_dir / "plans.json"), options.config, plan_dir, show_progress=options.show_progress)
    gpus = _gpu_count()
    running: list[tuple[Cell, subprocess.Popen, float]] = []
    failures: list[str] = []
    queue = list(todo)
    slot = 0
    while queue or running:
        while queue and len(running) < max(1, jobs):
            cell = queue.pop(0)
            env = dict(os.environ)
            if gpus:
                env["CUDA_VISIBLE_DEVICES"] = str(slot % gpus)
            slot += 1
            cell.run_dir.parent.mkdir(parents=True, exist_ok=True)
            log = open(cell.run_dir.parent / f"seed_{cell.seed}.log", "a")
            running.append((cell, subprocess.Popen(loop_command(plan_dir, cell, options), stdout=log, stderr=subprocess.STDOUT, env=env), time.time()))
        time.sleep(0.5)
        for entry in list(running):
            cell, proc, t0 = entry
            if proc.poll() is None:
                continue
            running.remove(entry)
            status = "done" if proc.returncode == 0 and cell.finished() else f"failed (exit {proc.returncode})"
            if status != "done":
                failures.append(f"{cell.run_dir}: {status} — see {cell.run_dir.parent / f'seed_{cell.seed}.log'}")
            console.print(f"{cell.strategy} seed {cell.seed}: {status} in {time.time() - t0:.0f} s")
    if full_reference:
        t0 = time.time()
        run_full_reference(plan_dir, exp_dir, options)
        console.print(f"full-data reference: done in {time.time() - t0:.0f} s")
    if failures:
        raise AlsegError(f"{len(failures)} run(s) failed; first: {failures[0]}")
    return cells


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:
        return 0
