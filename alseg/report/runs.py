"""Run directories as tidy records for the report: arrays aligned on the rounds.

The files are read through :mod:`alseg.active.rundir`, their one owner; a malformed file raises
:class:`alseg.errors.AlsegError` with one line that names the file, so the CLI can exit 2.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from alseg.active.rundir import (
    AGREEMENT_COLUMN,
    FULL_STRATEGY,
    SECONDS_COLUMNS,
    RunDir,
    case_metric_files,
    embedding_files,
    find_run_dirs,
    picture_files,
    read_batch_uncertainty,
    read_json,
    read_labelled_voxels,
    read_metrics,
    read_summary,
)
from alseg.errors import AlsegError

__all__ = ["RunRecord", "load_run", "load_runs", "find_run_dirs", "FULL_STRATEGY"]


@dataclass(frozen=True)
class RunRecord:
    """One run directory as arrays aligned on ``rounds`` (one entry per metrics.csv row)."""

    path: Path
    strategy: str
    seed: int | None
    dataset: str
    config: str
    budget: int | None
    initial: int | None
    labels: dict[str, str]
    rounds: np.ndarray
    n_items: np.ndarray
    n_voxels: np.ndarray
    dice_mean: np.ndarray
    dice_per_class: dict[str, np.ndarray]
    seconds: dict[str, np.ndarray]
    batch_uncertainty: np.ndarray
    """Mean MC uncertainty of the batch selected at each round; NaN at round 0 or when unrecorded."""
    embeddings: dict[int, Path]
    """Round → ``round_XXX_embeddings.npz`` (USIM runs only)."""
    finished: bool | None
    pictures: dict[int, Path] = field(default_factory=dict)
    """Round → ``round_XXX_pictures.npz``: a slice of the fixed picture cases with the round's prediction."""
    labelled_voxels: dict[int, dict[str, int]] = field(default_factory=dict)
    """Round → annotated voxels per label name (background included), where the round file has them."""
    agreement: np.ndarray | None = None
    """Runs without test labels: mean Dice between consecutive rounds' predictions (NaN in round 0);
    their ``dice_mean`` and ``dice_per_class`` are NaN. None for runs with Dice."""
    case_metrics: dict[int, Path] = field(default_factory=dict)
    """Round → ``round_XXX_cases.csv``: Dice, HD95 and surface Dice per test case and class."""
    item_size: tuple[int, ...] | None = None
    """The run's annotation items when smaller than the patch (``--item-size``), else None."""

    @property
    def has_dice(self) -> bool:
        """False for a run without test labels (it records the agreement between rounds instead)."""
        return self.agreement is None

    @property
    def setting(self) -> str:
        """Runs are compared only within one dataset, one plan configuration and one item size:
        ``Hippocampus/2d``, or ``Hippocampus/2d items 20x20`` for runs with ``--item-size 20,20``."""
        if self.item_size is None:
            return self.data_setting
        return f"{self.data_setting} items {'x'.join(map(str, self.item_size))}"

    @property
    def data_setting(self) -> str:
        """Dataset and configuration only: the full-data reference serves every item size."""
        return f"{self.dataset}/{self.config}"

    @property
    def is_full(self) -> bool:
        return self.strategy == FULL_STRATEGY


def load_run(run_dir: Path) -> RunRecord:
    """Read one run directory (``config.json`` + ``metrics.csv``, optional state and rounds)."""
    run = RunDir(run_dir)
    cfg = read_summary(run.config_path)
    label_names = [cfg.labels[k] for k in sorted(cfg.labels)]
    columns = read_metrics(run.metrics_path, label_names)
    state_path = run.state_path
    finished = None
    if state_path.is_file():
        state = read_json(state_path)
        if not isinstance(state, dict):
            raise AlsegError("state must be a JSON object with round, labelled and finished", state_path)
        finished = bool(state.get("finished", False))
    rounds = columns["round"].astype(int)
    agreement = columns.get(AGREEMENT_COLUMN) if "dice_mean" not in columns else None
    if agreement is not None:  # no test labels: no Dice to draw
        nan = np.full(len(rounds), np.nan)
        columns["dice_mean"] = nan
        columns.update({f"dice_{name}": nan for name in label_names})
    return RunRecord(
        path=run_dir,
        strategy=cfg.strategy,
        seed=cfg.seed,
        dataset=cfg.dataset,
        config=cfg.config,
        budget=cfg.budget,
        initial=cfg.initial,
        labels={str(k): v for k, v in cfg.labels.items()},
        rounds=rounds,
        n_items=columns["n_labelled_items"].astype(int),
        n_voxels=columns["n_labelled_voxels"],
        dice_mean=columns["dice_mean"],
        dice_per_class={name: columns[f"dice_{name}"] for name in label_names},
        seconds={c.removeprefix("seconds_"): columns[c] for c in SECONDS_COLUMNS},
        batch_uncertainty=read_batch_uncertainty(run_dir, rounds),
        embeddings=embedding_files(run_dir),
        finished=finished,
        pictures=picture_files(run_dir),
        labelled_voxels=read_labelled_voxels(run_dir, rounds),
        agreement=agreement,
        case_metrics=case_metric_files(run_dir),
        item_size=None if cfg.item_size is None else tuple(cfg.item_size),
    )


def load_runs(exp_dirs: Iterable[Path]) -> list[RunRecord]:
    """Load all runs below the experiment dirs; two runs of the same setting/strategy/seed are an error."""
    run_dirs: dict[Path, None] = {}
    for exp_dir in exp_dirs:
        found = find_run_dirs(Path(exp_dir))
        if not found:
            raise AlsegError("no run directory (config.json + metrics.csv) found below it", exp_dir)
        run_dirs.update((p.resolve(), None) for p in found)
    runs: list[RunRecord] = []
    seen: dict[tuple[str, str, int | None], Path] = {}
    for run_dir in run_dirs:
        run = load_run(run_dir)
        key = (run.setting, run.strategy, run.seed)
        if not run.is_full and key in seen:
            raise AlsegError(
                f"same {run.setting} / {run.strategy} / seed {run.seed} as {seen[key]}; "
                "report the two experiments separately",
                run_dir,
            )
        seen[key] = run_dir
        runs.append(run)
    return runs
