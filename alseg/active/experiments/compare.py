"""``alseg compare``: the grid of loops (strategies x seeds) plus the full-data reference.

Every cell is an ordinary ``alseg loop`` run directory (``EXP/<strategy>/seed_<s>``), so
the grid is resumable as a whole: finished runs are skipped, unfinished ones resumed. Each cell
is started from a settings file (``EXP/<strategy>/seed_<s>.settings.json``, the cell's
:class:`~alseg.active.settings.LoopSettings`) as ``alseg loop --settings FILE --resume``, in a
subprocess, ``--jobs`` at a time; with GPUs each job gets one
(``CUDA_VISIBLE_DEVICES``, round robin). The full-data reference (``EXP/full``) trains the same
network on every training case of the fold for as many iterations as a whole loop takes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from alseg.active.loop import check_sizes, trainer_settings
from alseg.active.rundir import RunDir
from alseg.active.settings import LoopSettings
from alseg.active.workspace import Workspace
from alseg.atomic import atomic_write_text
from alseg.errors import AlsegError
from alseg.model.train import train
from alseg.model.trainer import one_device
from alseg.progress import console
from alseg.strategies import available, options_for

__all__ = ["Cell", "parse_strategies", "loop_command", "run_full_reference", "run_compare"]


@dataclass
class Cell:
    """One run of the grid: a strategy and a seed, and the run directory it writes."""

    strategy: str
    seed: int
    run_dir: Path

    @property
    def settings_path(self) -> Path:
        """The worker's settings file, beside its run directory."""
        return self.run_dir.parent / f"seed_{self.seed}.settings.json"

    @property
    def log_path(self) -> Path:
        return self.run_dir.parent / f"seed_{self.seed}.log"

    def finished(self) -> bool:
        return RunDir(self.run_dir).finished()


def parse_strategies(spec: str) -> list[str]:
    names = available()
    if spec == "all":
        return names
    wanted = [s.strip() for s in spec.split(",") if s.strip()]
    if not wanted:
        raise AlsegError(f"--strategies '{spec}' names no strategy — use 'all' or some of: {', '.join(names)}")
    unknown = [s for s in wanted if s not in names]
    if unknown:
        raise AlsegError(f"unknown strategy '{unknown[0]}' — choose from: all, {', '.join(names)}")
    return wanted


def loop_command(plan_dir: Path, cell: Cell, settings: LoopSettings, workers: int | None = None) -> list[str]:
    """Write the cell's settings file and return the ``alseg loop`` command that runs it.

    The grid's ``--option`` set is shared by all strategies; each cell keeps the keys its own
    strategy accepts.
    """
    own = options_for([cell.strategy], settings.strategy_options)[cell.strategy]
    cell_settings = settings.model_copy(update={"strategy": cell.strategy, "seed": cell.seed, "strategy_options": own})
    cell.settings_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cell.settings_path, cell_settings.model_dump_json(indent=2) + "\n")
    cmd = [
        sys.executable,
        "-c",
        "from alseg.cli import main; main()",
        "loop",
        str(plan_dir),
        "-o",
        str(cell.run_dir),
        "--settings",
        str(cell.settings_path),
        "--resume",
    ]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    return cmd


def run_full_reference(
    plan_dir: Path, exp_dir: Path, settings: LoopSettings, workers: int | None = None, ws: Workspace | None = None
) -> None:
    """Train on every training case of the fold: the horizontal line of the learning curves."""
    full = RunDir(Path(exp_dir) / "full")
    if full.metrics_path.is_file():
        return
    if ws is None:  # the grid passes the workspace it already opened
        ws = Workspace.open(plan_dir, Path(exp_dir), settings.config, settings.fold, show_progress=False)
    epochs = settings.epochs * (settings.rounds + 1)  # as many iterations as a whole loop
    ts = one_device(trainer_settings(settings))  # trains inside 'alseg compare': never re-launched for DDP
    final = train(
        ws.plans,
        settings.config,
        ws.cache_dir,
        full.path / "train",
        fold=settings.fold,
        epochs=epochs,
        iters_per_epoch=settings.iters_per_epoch,
        devices=ts.devices,
        precision=ts.precision,
        resume=(full.path / "train" / "checkpoints" / "last.ckpt").is_file(),
        seed=0,
        overrides={"batch_size": settings.batch_size},
        num_workers=workers,
        val_every=epochs,
        progress=False,
    )
    labels = ws.foreground_labels
    dice_cols = {
        f"dice_{n.replace(' ', '_')}": final.get(f"dice_{n.replace(' ', '_')}", float("nan")) for n in labels.values()
    }
    pool = ws.pool
    row = {
        "round": 0,
        "n_labelled_items": len(pool),
        "n_labelled_voxels": pool.voxels(range(len(pool))),
        "dice_mean": final.get("dice_mean", float("nan")),
        **dice_cols,
    }
    full.write_reference(
        {
            "dataset": ws.plans.dataset_name,
            "config": settings.config,
            "labels": {str(k): v for k, v in labels.items()},
            "seed": 0,
            "budget": None,
            "initial": None,
            "epochs": epochs,
        },
        row,
    )


def run_compare(
    target: Path,
    exp_dir: Path,
    strategies: list[str],
    seeds: int,
    settings: LoopSettings,
    jobs: int = 1,
    full_reference: bool = True,
    workers: int | None = None,
    show_progress: bool = True,
) -> list[Cell]:
    exp_dir = Path(exp_dir)
    exp_dir.mkdir(parents=True, exist_ok=True)
    # a dataset is planned once, into EXP/plan, and preprocessed before the workers share the cache
    ws = Workspace.open(Path(target), exp_dir, settings.config, settings.fold, show_progress=show_progress)
    plan_dir = ws.plan_dir
    check_sizes(settings, len(ws.pool), ws.configuration.batch_size)  # before any cell or the reference trains
    cells = [Cell(s, seed, exp_dir / s / f"seed_{seed}") for s in strategies for seed in range(seeds)]
    todo = [c for c in cells if not c.finished()]
    console.print(f"{len(cells)} runs, {len(cells) - len(todo)} already finished")
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
            cmd = loop_command(plan_dir, cell, settings, workers)
            log = open(cell.log_path, "a")
            running.append((cell, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), time.time()))
        time.sleep(0.5)
        for entry in list(running):
            cell, proc, t0 = entry
            if proc.poll() is None:
                continue
            running.remove(entry)
            status = "done" if proc.returncode == 0 and cell.finished() else f"failed (exit {proc.returncode})"
            if status != "done":
                failures.append(f"{cell.run_dir}: {status} — see {cell.log_path}")
            console.print(f"{cell.strategy} seed {cell.seed}: {status} in {time.time() - t0:.0f} s")
    if full_reference:
        t0 = time.time()
        run_full_reference(plan_dir, exp_dir, settings, workers, ws=ws)
        console.print(f"full-data reference: done in {time.time() - t0:.0f} s")
    if failures:
        raise AlsegError(f"{len(failures)} run(s) failed; first: {failures[0]}")
    return cells


def _gpu_count() -> int:
    try:
        import torch  # lazy: only to count GPUs for the workers

        return torch.cuda.device_count()
    except Exception:
        return 0
