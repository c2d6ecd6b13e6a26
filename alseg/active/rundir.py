"""The run directory: the public, resumable record of an active-learning run.

This module is the only one that spells the run directory's file names; the loop writes and the
report reads through it. Layout (``RUN/``)::

    config.json          RunConfig: the run's LoopSettings plus what identifies its data
    plans.json           the plan the run trains from (a copy, so the run stands alone)
    split.json           train / test cases
    state.json           {round, labelled, pending, finished}: what is annotated so far
    metrics.csv          one row per finished round (the stable record other tools read)
    rounds/round_XXX.json  each round's selection with its scores and timings
    rounds/round_XXX_embeddings.npz  embeddings for the t-SNE map (USIM runs)
    labels/<case>.npy    annotated voxels per case (255 = not annotated yet)
    checkpoints/round_XXX.ckpt  the model after each round
    annotate/round_XXX/  the files oracle's package for a person
    logs/                Lightning's CSV logs per round

Every file is written atomically (temp + rename) and in an order that makes a kill at any
instant lose at most the round in progress: a selection is written before its labels,
labels before ``state.json`` lists them, the checkpoint before the metrics row, and the
metrics row before ``state.json`` marks the round finished.

The full-data reference of ``alseg compare`` is a run directory too (``strategy: full``, one
metrics row); readers use the lenient :class:`RunSummary` so that it and runs written by other
tools can be reported.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from alseg.active.settings import LoopSettings
from alseg.atomic import atomic_save_npz, atomic_write_json, atomic_write_text
from alseg.errors import AlsegError

__all__ = [
    "RunConfig",
    "RunState",
    "Pending",
    "RunDir",
    "RunSummary",
    "RoundFile",
    "FULL_STRATEGY",
    "REQUIRED_COLUMNS",
    "SECONDS_COLUMNS",
    "read_summary",
    "read_metrics",
    "read_batch_uncertainty",
    "embedding_files",
    "find_run_dirs",
    "read_json",
]

CONFIG, STATE, METRICS, PLANS, SPLIT = "config.json", "state.json", "metrics.csv", "plans.json", "split.json"
ROUNDS, LABELS, CHECKPOINTS, ANNOTATE, LOGS = "rounds", "labels", "checkpoints", "annotate", "logs"


class RunConfig(LoopSettings):
    """What ``alseg loop`` was asked to do, and on which data; saved as RUN/config.json."""

    dataset: str = Field(description="dataset name (from the plan)")
    dataset_root: str
    plans_hash: str
    pool_hash: str
    labels: dict[int, str] = Field(description="foreground labels: index -> name")

    def settings(self) -> LoopSettings:
        """The user's choices without the identity of the data."""
        return LoopSettings(**{k: getattr(self, k) for k in LoopSettings.model_fields})


class Pending(BaseModel):
    round: int
    selected: list[str]


class RunState(BaseModel):
    """What is annotated so far. ``round`` is the last finished round (-1: none yet)."""

    model_config = ConfigDict(extra="forbid")

    round: int = -1
    labelled: list[str] = Field(default_factory=list)
    pending: Pending | None = None
    finished: bool = False


class RunDir:
    """Reads and writes one run directory; see the module docstring for its layout."""

    def __init__(self, path: Path):
        self.path = Path(path)

    # --- paths -------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / CONFIG

    @property
    def state_path(self) -> Path:
        return self.path / STATE

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    @property
    def plans_path(self) -> Path:
        return self.path / PLANS

    @property
    def split_path(self) -> Path:
        return self.path / SPLIT

    @property
    def labels_dir(self) -> Path:
        return self.path / LABELS

    def label_path(self, case_id: str) -> Path:
        """``labels/<case>.npy``: the case's annotated voxels on the plan's grid (255 = not annotated)."""
        return self.path / LABELS / f"{case_id}.npy"

    @property
    def logs_dir(self) -> Path:
        return self.path / LOGS

    def round_path(self, k: int) -> Path:
        return self.path / ROUNDS / f"round_{k:03d}.json"

    def embeddings_path(self, k: int) -> Path:
        return self.path / ROUNDS / f"round_{k:03d}_embeddings.npz"

    def log_version(self, k: int) -> str:
        """The Lightning logger version of round ``k`` (``RUN/logs/<version>/``)."""
        return f"round_{k:03d}"

    def checkpoint_path(self, k: int) -> Path:
        return self.path / CHECKPOINTS / f"round_{k:03d}.ckpt"

    def annotate_dir(self, k: int) -> Path:
        return self.path / ANNOTATE / f"round_{k:03d}"

    def exists(self) -> bool:
        return self.config_path.is_file()

    # --- reading -------------------------------------------------------------------------------
    def _load(self, cls: type[BaseModel], path: Path) -> BaseModel:
        try:
            return cls.model_validate_json(path.read_text())
        except FileNotFoundError:
            raise AlsegError(
                "missing — this is not a complete run directory; start a new run with another -o", path
            ) from None
        except (ValidationError, ValueError):
            raise AlsegError(
                "is corrupt or not an alseg run file — restore it from a backup or start a new run with another -o",
                path,
            ) from None

    def load_config(self) -> RunConfig:
        return self._load(RunConfig, self.config_path)  # type: ignore[return-value]

    def load_state(self) -> RunState:
        return self._load(RunState, self.state_path)  # type: ignore[return-value]

    def read_metrics(self) -> list[dict[str, str]]:
        if not self.metrics_path.is_file():
            return []
        with self.metrics_path.open() as f:
            return list(csv.DictReader(f))

    def load_round(self, k: int) -> dict | None:
        p = self.round_path(k)
        if not p.is_file():
            return None
        try:
            return json.loads(p.read_text())
        except json.JSONDecodeError:
            raise AlsegError(
                "is corrupt — delete it and run 'alseg loop --resume' to redo that round's selection", p
            ) from None

    def finished(self) -> bool:
        """True when ``state.json`` says so; an unreadable state counts as unfinished."""
        try:
            return bool(json.loads(self.state_path.read_text()).get("finished"))
        except (OSError, json.JSONDecodeError, AttributeError):
            return False

    # --- writing -------------------------------------------------------------------------------
    def save_config(self, config: RunConfig) -> None:
        atomic_write_text(self.config_path, config.model_dump_json(indent=2) + "\n")

    def save_state(self, state: RunState) -> None:
        atomic_write_text(self.state_path, state.model_dump_json(indent=2) + "\n")

    def save_plans_and_split(self, plans: BaseModel, fold: int, train: list[str], test: list[str]) -> None:
        """The run's own copy of its plan and split, so it stands alone."""
        atomic_write_text(self.path / PLANS, plans.model_dump_json(indent=2) + "\n")
        atomic_write_json(self.path / SPLIT, {"fold": fold, "train": train, "test": test})

    def save_round(self, k: int, record: dict) -> None:
        atomic_write_json(self.round_path(k), record)

    def save_embeddings(self, k: int, embeddings: np.ndarray, role: np.ndarray) -> None:
        atomic_save_npz(
            self.embeddings_path(k), embeddings=np.asarray(embeddings, np.float32), role=np.asarray(role).astype(str)
        )

    def write_metrics_row(self, row: dict) -> None:
        """Add or replace the row of ``row['round']`` (a redone round replaces its old row)."""
        rows = [r for r in self.read_metrics() if int(r["round"]) != int(row["round"])]
        rows.append({k: str(v) for k, v in row.items()})
        rows.sort(key=lambda r: int(r["round"]))
        fields = list(row.keys())
        for r in rows:
            fields.extend(k for k in r if k not in fields)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.metrics_path, buf.getvalue())

    def write_reference(self, summary: dict[str, Any], row: dict[str, Any]) -> None:
        """A full-data reference: its summary config and one metrics row (metrics last: it marks it done)."""
        atomic_write_json(self.config_path, {"strategy": FULL_STRATEGY, **summary})
        atomic_write_text(self.metrics_path, ",".join(row) + "\n" + ",".join(str(v) for v in row.values()) + "\n")


# --- readers of finished runs (the report) --------------------------------------------------------

FULL_STRATEGY = "full"
"""``strategy`` of the reference run trained on the whole pool (the dashed line)."""

REQUIRED_COLUMNS = ("round", "n_labelled_items", "n_labelled_voxels", "dice_mean")
SECONDS_COLUMNS = ("seconds_train", "seconds_score", "seconds_select")
"""Timing columns: read when present, NaN otherwise (a full-data run has nothing to score)."""


class RunSummary(BaseModel):
    """The part of ``config.json`` a reader of finished runs needs; other keys are allowed and ignored.

    Lenient on purpose: the full-data reference and runs written by other tools hold only these.
    """

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
    def _active_runs_are_complete(self) -> RunSummary:
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


def read_json(path: Path) -> object:
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


def read_summary(path: Path) -> RunSummary:
    try:
        return RunSummary.model_validate(read_json(path))
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


def read_batch_uncertainty(run_dir: Path, rounds: np.ndarray) -> np.ndarray:
    """Collect ``batch_uncertainty`` from the per-round selection files, NaN where absent."""
    out = np.full(len(rounds), np.nan)
    for k, r in enumerate(rounds.astype(int)):
        path = RunDir(run_dir).round_path(int(r))
        if r < 1 or not path.is_file():
            continue
        try:
            record = RoundFile.model_validate(read_json(path))
        except ValidationError as err:
            raise AlsegError(f"invalid round file ({_validation_line(err)})", path) from None
        if record.round != r:
            raise AlsegError(f"file is named for round {r} but holds round {record.round}", path)
        if record.batch_uncertainty is not None:
            out[k] = record.batch_uncertainty
    return out


def embedding_files(run_dir: Path) -> dict[int, Path]:
    found: dict[int, Path] = {}
    for path in sorted((Path(run_dir) / ROUNDS).glob("round_*_embeddings.npz")):
        stem = path.name.removeprefix("round_").removesuffix("_embeddings.npz")
        if stem.isdigit():
            found[int(stem)] = path
    return found


def find_run_dirs(exp_dir: Path) -> list[Path]:
    """Every directory below ``exp_dir`` (any depth, itself included) holding config.json + metrics.csv."""
    if not exp_dir.is_dir():
        raise AlsegError("experiment directory does not exist", exp_dir)
    return sorted(p.parent for p in exp_dir.rglob(CONFIG) if (p.parent / METRICS).is_file())
