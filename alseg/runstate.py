"""The run directory: the public, resumable record of an active-learning run.

Layout (``RUN/``)::

    config.json          RunConfig: everything the run was started with
    plans.json           the plan the run trains from (a copy, so the run stands alone)
    split.json           train / test cases
    state.json           {round, labelled, pending, finished}: what is annotated so far
    metrics.csv          one row per finished round (the stable record other tools read)
    rounds/round_XXX.json  each round's selection with its scores and timings
    labels/<case>.npy    annotated voxels per case (255 = not annotated yet)
    checkpoints/round_XXX.ckpt  the model after each round

Every file is written atomically (temp + rename) and in an order that makes a kill at any
instant lose at most the round in progress: a selection is written before its labels,
labels before ``state.json`` lists them, the checkpoint before the metrics row, and the
metrics row before ``state.json`` marks the round finished.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from alseg.atomic import atomic_write_json, atomic_write_text
from alseg.errors import AlsegError


class RunConfig(BaseModel):
    """What ``alseg loop`` was asked to do; saved as RUN/config.json."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(description="dataset name (from the plan)")
    dataset_root: str
    plans_hash: str
    pool_hash: str
    config: Literal["2d", "3d_fullres"] = "2d"
    strategy: str = "random"
    rounds: int = Field(3, ge=0)
    budget: int = Field(100, ge=1)
    initial: int = Field(100, ge=1)
    seed: int = 0
    fold: int = 0
    epochs: int = Field(1, ge=1)
    iters_per_epoch: int = Field(50, ge=1)
    mc_passes: int = Field(10, ge=1)
    batch_size: int | None = None
    oracle: Literal["simulated", "files"] = "simulated"
    devices: str = "auto"
    fine_tune: bool = True
    strategy_options: dict = Field(default_factory=dict)
    labels: dict[int, str] = Field(description="foreground labels: index -> name")


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
    def __init__(self, path: Path):
        self.path = Path(path)

    # --- paths -------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def state_path(self) -> Path:
        return self.path / "state.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def labels_dir(self) -> Path:
        return self.path / "labels"

    def round_path(self, k: int) -> Path:
        return self.path / "rounds" / f"round_{k:03d}.json"

    def checkpoint_path(self, k: int) -> Path:
        return self.path / "checkpoints" / f"round_{k:03d}.ckpt"

    def annotate_dir(self, k: int) -> Path:
        return self.path / "annotate" / f"round_{k:03d}"

    def exists(self) -> bool:
        return self.config_path.is_file()

    # --- reading -------------------------------------------------------------------------------
    def _load(self, cls: type[BaseModel], path: Path) -> BaseModel:
        try:
            return cls.model_validate_json(path.read_text())
        except FileNotFoundError:
            raise AlsegError("missing — this is not a complete run directory; start a new run with another -o", path) from None
        except (ValidationError, ValueError):
            raise AlsegError(
                "is corrupt or not an alseg run file — restore it from a backup or start a new run with another -o", path
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

    # --- writing -------------------------------------------------------------------------------
    def save_config(self, config: RunConfig) -> None:
        atomic_write_text(self.config_path, config.model_dump_json(indent=2) + "\n")

    def save_state(self, state: RunState) -> None:
        atomic_write_text(self.state_path, state.model_dump_json(indent=2) + "\n")

    def save_round(self, k: int, record: dict) -> None:
        atomic_write_json(self.round_path(k), record)

    def load_round(self, k: int) -> dict | None:
        p = self.round_path(k)
        if not p.is_file():
            return None
        try:
            return json.loads(p.read_text())
        except json.JSONDecodeError:
            raise AlsegError("is corrupt — delete it and run 'alseg loop --resume' to redo that round's selection", p) from None

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
