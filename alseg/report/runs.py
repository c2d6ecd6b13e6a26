"""Read the run directories written by the active loop into tidy, validated records.

The report only reads; a malformed file raises :class:`alseg.errors.AlsegError` with one line
that names the file, so the CLI can exit 2 instead of printing a traceback.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from alseg.errors import AlsegError

FULL_STRATEGY = "full"
"""``strategy`` of the reference run trained on the whole pool (the dashed line)."""

REQUIRED_COLUMNS = ("round", "n_labelled_items", "n_labelled_voxels", "dice_mean")
SECONDS_COLUMNS = ("seconds_train", "seconds_score", "seconds_select")
"""Timing columns: read when present, NaN otherwise (a full-data run has nothing to score)."""


class RunConfig(BaseModel):
    """The part of ``config.json`` the report needs; other keys are allowed and ignored."""

    model_config = ConfigDict(extra="allow")

    strategy: str
    dataset: str
    config: Literal["2d", "3d_fullres"]
    labels: dict[int, str]
    """Foreground label index → name; names give the ``dice_<name>`` columns of metrics.csv."""
    seed: int | None = None
    budget: int | None = None
    initial: int | None = None

    @model_validator(mode="after")
    def _active_runs_are_complete(self) -> RunConfig:
        """Only the full-data reference may omit the active-learning keys."""
        if self.strategy != FULL_STRATEGY:
            missing = [k for k in ("seed", "budget", "initial") if getattr(self, k) is None]
            if missing:
                raise ValueError(f"missing key(s) {', '.join(missing)} for strategy {self.strategy!r}")
        return self


class RoundFile(BaseModel):
    """``rounds/round_XXX.json``, validated only as far as the report reads it."""

    model_config = ConfigDict(extra="allow")

    round: int
    batch_uncertainty: float | None = None


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

    @property
    def setting(self) -> str:
        """Runs are compared only within one dataset and one plan configuration."""
        return f"{self.dataset}/{self.config}"

    @property
    def is_full(self) -> bool:
        return self.strategy == FULL_STRATEGY


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except OSError as err:
        raise AlsegError(f"cannot read ({err.strerror})", path) from None
    except json.JSONDecodeError as err:
        raise AlsegError(f"invalid JSON at line {err.lineno}: {err.msg}", path) from None


def _validation_line(err: ValidationError) -> str:
    """First pydantic error as one line: ``key: message``."""
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return f"{where}: {first['msg']}" if where else first["msg"]


def read_config(path: Path) -> RunConfig:
    try:
        return RunConfig.model_validate(_read_json(path))
    except ValidationError as err:
        raise AlsegError(f"invalid run config ({_validation_line(err)})", path) from None


def read_metrics(path: Path, label_names: Iterable[str]) -> dict[str, np.ndarray]:
    """Parse ``metrics.csv`` into float columns, checking what the curves rely on."""
    required = [*REQUIRED_COLUMNS, *(f"dice_{name}" for name in label_names)]
    try:
        with path.open(newline="") as fh:
            reader = csv.reader(fh)
            lines = [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError) as err:
        raise AlsegError(f"cannot read metrics ({err})", path) from None
    if not lines:
        raise AlsegError("empty metrics file; expected a header and one row per round", path)
    header = [h.strip() for h in lines[0][1]]
    if len(set(header)) != len(header):
        raise AlsegError("duplicate column names in the header", path)
    missing = [c for c in required if c not in header]
    if missing:
        raise AlsegError(f"missing column(s) {', '.join(missing)}; the header needs {','.join(required)}", path)
    if len(lines) == 1:
        raise AlsegError("no rounds recorded (header only)", path)

    wanted = required + [c for c in SECONDS_COLUMNS if c in header]
    values: dict[str, list[float]] = {c: [] for c in wanted}
    for line_no, row in lines[1:]:
        if len(row) != len(header):
            raise AlsegError(f"line {line_no} has {len(row)} fields but the header has {len(header)}", path)
        for column in wanted:
            cell = row[header.index(column)].strip()
            try:
                value = float(cell)
            except ValueError:
                raise AlsegError(f"line {line_no}: {column}={cell!r} is not a number", path) from None
            if column.startswith("dice_") and not (math.isnan(value) or 0.0 <= value <= 1.0):
                raise AlsegError(f"line {line_no}: {column}={value} is outside [0, 1]; write Dice as a fraction", path)
            values[column].append(value)

    columns = {c: np.asarray(v, dtype=float) for c, v in values.items()}
    for column in ("round", "n_labelled_items"):
        col = columns[column]
        if not np.all(np.isfinite(col) & (col >= 0) & (col == np.round(col))):
            raise AlsegError(f"{column} must hold non-negative integers", path)
    if np.any(np.diff(columns["round"]) <= 0):
        raise AlsegError("rounds must be strictly increasing, one row per round", path)
    for column in SECONDS_COLUMNS:
        columns.setdefault(column, np.full(len(lines) - 1, np.nan))
    return columns


def _batch_uncertainty(run_dir: Path, rounds: np.ndarray) -> np.ndarray:
    """Collect ``batch_uncertainty`` from the per-round selection files, NaN where absent."""
    out = np.full(len(rounds), np.nan)
    for k, r in enumerate(rounds.astype(int)):
        path = run_dir / "rounds" / f"round_{r:03d}.json"
        if r < 1 or not path.is_file():
            continue
        try:
            record = RoundFile.model_validate(_read_json(path))
        except ValidationError as err:
            raise AlsegError(f"invalid round file ({_validation_line(err)})", path) from None
        if record.round != r:
            raise AlsegError(f"file is named for round {r} but holds round {record.round}", path)
        if record.batch_uncertainty is not None:
            out[k] = record.batch_uncertainty
    return out


def _embedding_files(run_dir: Path) -> dict[int, Path]:
    found: dict[int, Path] = {}
    for path in sorted((run_dir / "rounds").glob("round_*_embeddings.npz")):
        stem = path.name.removeprefix("round_").removesuffix("_embeddings.npz")
        if stem.isdigit():
            found[int(stem)] = path
    return found


def load_run(run_dir: Path) -> RunRecord:
    """Read one run directory (``config.json`` + ``metrics.csv``, optional state and rounds)."""
    cfg = read_config(run_dir / "config.json")
    label_names = [cfg.labels[k] for k in sorted(cfg.labels)]
    columns = read_metrics(run_dir / "metrics.csv", label_names)
    state_path = run_dir / "state.json"
    finished = None
    if state_path.is_file():
        state = _read_json(state_path)
        if not isinstance(state, dict):
            raise AlsegError("state must be a JSON object with round, labelled and finished", state_path)
        finished = bool(state.get("finished", False))
    rounds = columns["round"].astype(int)
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
        batch_uncertainty=_batch_uncertainty(run_dir, rounds),
        embeddings=_embedding_files(run_dir),
        finished=finished,
    )


def find_run_dirs(exp_dir: Path) -> list[Path]:
    """Every directory below ``exp_dir`` (any depth, itself included) holding config.json + metrics.csv."""
    if not exp_dir.is_dir():
        raise AlsegError("experiment directory does not exist", exp_dir)
    return sorted(p.parent for p in exp_dir.rglob("config.json") if (p.parent / "metrics.csv").is_file())


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
