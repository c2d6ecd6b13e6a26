"""What ``--resume`` checks before a stopped run goes on: the stored settings against the data and
the options typed now, and every file the run relies on against its recorded checksum."""

from __future__ import annotations

from pathlib import Path

from alseg.active.oracles.labels import LabelStore
from alseg.active.rundir import RunConfig, RunDir, RunState
from alseg.active.settings import LoopSettings
from alseg.active.workspace import Workspace
from alseg.errors import AlsegError

__all__ = ["check_same_data", "loader_workers_warning", "resumed_config", "verify_run"]


def check_same_data(run: RunDir, stored: RunConfig, target: Path, data_hash: str | None) -> None:
    """A run is resumed with the data it was made from (checked before planning)."""
    if stored.dataset_hash is not None and data_hash is not None and stored.dataset_hash != data_hash:
        raise AlsegError(
            f"was made from other data: {target}'s dataset.json or image files changed since (or it is "
            "another dataset) — resume with the data the run was made from, or start a new run with another -o",
            run.config_path,
        )


def resumed_config(run: RunDir, ws: Workspace, settings: LoopSettings, given: set[str] | None) -> RunConfig:
    """The stored config, checked against the data and the options given now (``given``: the
    names a user typed; None: all); ``--rounds`` may grow the run and ``--devices`` change."""
    config = run.load_config()
    if config.plans_hash != ws.plans_hash:
        raise AlsegError(
            "was made with another dataset or plan — resume it with the same DATASET_OR_PLANDIR", run.config_path
        )
    changed = config.settings().differences(settings, given)  # first: it names the option
    if changed:
        raise AlsegError(
            f"was started with other options ({'; '.join(changed)}) — resume with the options it was "
            "started with (only --rounds may grow)",
            run.config_path,
        )
    if config.pool_hash != ws.pool.fingerprint():
        raise AlsegError(
            "was made with another pool (cases, configuration, fold or item size) — resume with the same options",
            run.config_path,
        )
    if (given is None or "rounds" in given) and settings.rounds > config.rounds:  # extending a run
        config = config.model_copy(update={"rounds": settings.rounds})
        run.save_config(config)
    if (given is None or "devices" in given) and settings.devices != config.devices:
        config = config.model_copy(update={"devices": settings.devices})
    return config


def verify_run(run: RunDir, ws: Workspace, state: RunState, labels: LabelStore) -> None:
    """Every file the resumed run relies on is there and as written (one line if not)."""
    split = run.load_split()
    if sorted(split["train"]) != sorted(ws.train_ids) or sorted(split["test"]) != sorted(ws.test_ids):
        raise AlsegError(
            "names other pool or test cases than the run's data and options give — resume with the data and "
            "--test-cases the run was started with, or restore the file from a backup",
            run.split_path,
        )
    pool = ws.pool
    per_case: dict[str, int] = {}
    for i in pool.indices(state.labelled):
        per_case[pool[i].case_id] = per_case.get(pool[i].case_id, 0) + 1
    pending = state.pending.selected if state.pending else []
    rewritten = {labels.path(pool[i].case_id) for i in pool.indices(pending)}
    run.verify(state, {labels.path(c): n for c, n in per_case.items()}, rewritten)


def loader_workers_warning(run: RunDir, state: RunState, workers: int) -> str | None:
    """A warning when the finished rounds were trained with another number of data-loader processes
    than ``workers`` (this process's): each process draws its own seeded patch stream, so the rounds
    trained now will not equal those of an uninterrupted run. None when they match or nothing is
    recorded (rounds written before the count was stored)."""
    if state.finished:
        return None
    used = {}
    for k in range(state.round + 1):
        record = run.load_round(k)
        if record is not None and record.loader_workers is not None:
            used[k] = record.loader_workers
    others = sorted({n for n in used.values() if n != workers})
    if not others:
        return None
    rounds = [k for k, n in used.items() if n != workers]
    counts = " or ".join(str(n) for n in others)
    return (
        f"warning: {run.path}: round(s) {', '.join(map(str, rounds))} trained with {counts} data-loader worker(s) and "
        f"this process uses {workers}: the rounds trained now draw other random patches than an uninterrupted run "
        f"would (resume with --workers {others[-1]} to continue it exactly)"
    )
