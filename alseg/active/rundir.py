"""The run directory: the public, resumable record of an active-learning run.

This module is the only one that spells the run directory's file names; the loop writes and the
report reads through it. Layout (``RUN/``)::

    config.json          RunConfig: the run's LoopSettings plus what identifies its data
    plans.json           the plan the run trains from (a copy, so the run stands alone)
    split.json           train (the pool's cases) / test cases, and the rule that chose them
    state.json           {round, labelled, pending, finished, checksums}: what is annotated so far, and
                         the size + SHA-256 of the label files and checkpoints it relies on
    metrics.csv          one row per finished round (the stable record other tools read)
    rounds/round_XXX.json  each round's selection with its scores and timings
    rounds/round_XXX_embeddings.npz  embeddings for the t-SNE map (USIM runs)
    rounds/round_XXX_pictures.npz    one slice of a few fixed test cases: image, truth, prediction
    rounds/round_XXX_cases.csv       the test metrics per case: Dice, HD95 (mm), normalised surface Dice per class
    rounds/round_XXX_agreement.npz   runs without test labels: the round's predicted labels of the
                         fixed agreement cases (config.json ``agreement_cases``), for the next
                         round's ``agreement_mean``
    labels/<case>.npy    annotated voxels per case (255 = not annotated yet)
    checkpoints/round_XXX.ckpt  the model after each round
    annotate/round_XXX/  the files oracle's package for a person (:class:`AnnotationPackage`):
                         README.txt, manifest.json, labels_itksnap.txt + labels_slicer.ctbl (class names and
                         colours for the viewers), cases/<case>/{image*, presegmentation, region}.nii.gz,
                         and the person's cases/<case>/label.nii.gz; the patches oracle's (and runs made
                         before the case package): images/<item>.nii.gz, masks/<item>.nii.gz, manifest.json
    logs/round_XXX/      Lightning's CSV log of round XXX (+ tensorboard/: its TensorBoard events)
    logs/rounds/         TensorBoard events of the whole run: test Dice per class, items, seconds per round
    .lock                held (``fcntl.flock``) by the one process writing the run; holds its pid
    .doorbell            on several devices: how many messages rank 0 has announced to the other
                         ranks between fits (they wait on this file, not in a collective)

Every file is written atomically (temp + rename) and in an order that makes a kill at any
instant lose at most the round in progress: a selection is written before its labels,
labels before ``state.json`` lists them, the checkpoint before the metrics row, and the
metrics row before ``state.json`` marks the round finished. A resume first checks (:meth:`RunDir.verify`)
that every file the state relies on is there and unchanged, and refuses a damaged one by name.

The full-data reference of ``alseg compare`` is a run directory too (``strategy: full``, one
metrics row); readers use the lenient :class:`RunSummary` so that it and runs written by other
tools can be reported.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import io
import json
import math
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from alseg.active.settings import LoopSettings
from alseg.atomic import atomic_save_npz, atomic_write_json, atomic_write_text, is_temp_file, write_error
from alseg.errors import AlsegError

__all__ = [
    "RunConfig",
    "RunState",
    "Pending",
    "RunDir",
    "AnnotationPackage",
    "RunSummary",
    "RoundRecord",
    "MetricsRow",
    "FULL_STRATEGY",
    "REQUIRED_COLUMNS",
    "AGREEMENT_COLUMN",
    "SECONDS_COLUMNS",
    "read_summary",
    "read_metrics",
    "read_batch_uncertainty",
    "embedding_files",
    "picture_files",
    "read_labelled_voxels",
    "find_run_dirs",
    "read_json",
    "RunLock",
    "file_checksum",
]

CONFIG, STATE, METRICS, PLANS, SPLIT = "config.json", "state.json", "metrics.csv", "plans.json", "split.json"
ROUNDS, LABELS, CHECKPOINTS, ANNOTATE, LOGS = "rounds", "labels", "checkpoints", "annotate", "logs"
LOCK = ".lock"
DOORBELL = ".doorbell"
PACKAGE_MANIFEST, PACKAGE_README, PACKAGE_CASES = "manifest.json", "README.txt", "cases"
PACKAGE_ITKSNAP_LABELS, PACKAGE_SLICER_COLORS = "labels_itksnap.txt", "labels_slicer.ctbl"
CASE_IMAGE, CASE_PRESEGMENTATION, CASE_REGION, CASE_LABEL = "image", "presegmentation", "region", "label"
NIFTI = ".nii.gz"
PATCH_IMAGES, PATCH_MASKS = "images", "masks"


class RunLock:
    """An advisory ``fcntl.flock`` on ``RUN/.lock``: one writing process per run directory.

    The lock lives as long as the open file: :meth:`release` (or the end of a ``with`` block)
    gives it back, and the OS releases it when the process dies (even by SIGKILL), so a stale
    lock file never blocks a resume. The file holds the holder's pid, for the message a second
    process gets.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._file = None

    def acquire(self) -> "RunLock":
        if self.path.parent.exists() and not self.path.parent.is_dir():
            raise AlsegError("is a file, not a folder — choose a folder for the run (-o)", self.path.parent)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            f = open(self.path, "a+")  # noqa: SIM115 (held open for the lifetime of the lock)
        except OSError as err:  # -o is a file, or a folder nobody may write to
            raise write_error(err, self.path.parent) from None
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise AlsegError(
                f"is in use by another alseg process (pid {holder}) — wait for it to finish, or stop it first",
                self.path.parent,
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._file = f
        return self

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the descriptor drops the flock
            self._file = None

    @property
    def held(self) -> bool:
        return self._file is not None

    def __enter__(self) -> "RunLock":
        return self.acquire() if not self.held else self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()


def file_checksum(path: Path) -> str:
    """``<size>:<sha256>`` of a file: what ``state.json`` records of the files a run relies on."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
            size += len(chunk)
    return f"{size}:{h.hexdigest()}"


class RunConfig(LoopSettings):
    """What ``alseg loop`` was asked to do, and on which data; saved as RUN/config.json."""

    dataset: str = Field(description="dataset name (from the plan)")
    dataset_root: str
    dataset_hash: str | None = Field(
        None, description="content of the dataset (dataset.json + file list with sizes) when DATASET was a folder"
    )
    plans_hash: str
    pool_hash: str
    labels: dict[int, str] = Field(description="foreground labels: index -> name")
    agreement_cases: list[str] = Field(
        default_factory=list,
        description="runs without test labels: the pool cases whose predictions are compared between rounds",
    )

    def settings(self) -> LoopSettings:
        """The user's choices without the identity of the data."""
        return LoopSettings(**{k: getattr(self, k) for k in LoopSettings.model_fields})


class Pending(BaseModel):
    round: int
    selected: list[str]
    accepted: list[str] = Field(default_factory=list)
    """Items of the round whose annotation an earlier call accepted (files oracle): a label file
    deleted after that is reported, not asked for again."""


class RunState(BaseModel):
    """What is annotated so far. ``round`` is the last finished round (-1: none yet)."""

    model_config = ConfigDict(extra="forbid")

    round: int = -1
    labelled: list[str] = Field(default_factory=list)
    pending: Pending | None = None
    finished: bool = False
    checksums: dict[str, str] = Field(
        default_factory=dict, description="run-relative path -> '<size>:<sha256>' of label files and checkpoints"
    )


class AnnotationPackage:
    """The file names of one round's annotation package (``RUN/annotate/round_XXX/``).

    Two layouts: the files oracle's package per case (``cases/<case>/``: the image as the dataset
    holds it, the model's pre-segmentation, the region to annotate, and ``label.nii.gz``, which
    the person saves), and the patches oracle's (``images/`` and ``masks/``, one file per item).
    """

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    @property
    def manifest(self) -> Path:
        return self.folder / PACKAGE_MANIFEST

    @property
    def readme(self) -> Path:
        return self.folder / PACKAGE_README

    @property
    def itksnap_labels(self) -> Path:
        """The classes' names and colours as an ITK-SNAP label description file."""
        return self.folder / PACKAGE_ITKSNAP_LABELS

    @property
    def slicer_colors(self) -> Path:
        """The classes' names and colours as a 3D Slicer colour table."""
        return self.folder / PACKAGE_SLICER_COLORS

    def case_dir(self, case_id: str) -> Path:
        return self.folder / PACKAGE_CASES / case_id

    def image(self, case_id: str, channel: int | None, ending: str) -> Path:
        """The case's image file: ``image<ending>`` when one file holds every channel, else ``image_XXXX``."""
        stem = CASE_IMAGE if channel is None else f"{CASE_IMAGE}_{channel:04d}"
        return self.case_dir(case_id) / f"{stem}{ending}"

    def presegmentation(self, case_id: str) -> Path:
        return self.case_dir(case_id) / f"{CASE_PRESEGMENTATION}{NIFTI}"

    def region(self, case_id: str) -> Path:
        return self.case_dir(case_id) / f"{CASE_REGION}{NIFTI}"

    def label(self, case_id: str) -> Path:
        """Where the person saves the case's label map (the documented name)."""
        return self.case_dir(case_id) / f"{CASE_LABEL}{NIFTI}"

    def label_candidates(self, case_id: str, endings: Iterable[str]) -> list[Path]:
        """Label files the person may have saved: ``label`` with any image ending."""
        return [p for e in endings if (p := self.case_dir(case_id) / f"{CASE_LABEL}{e}").is_file()]

    def stray_files(self, case_id: str, endings: Iterable[str]) -> list[Path]:
        """Image files in the case's folder that are none of the package's own names: a label map
        saved under another name (``seg.nii.gz``, ``image_label.nii.gz``, ...)."""
        folder, endings = self.case_dir(case_id), tuple(endings)
        if not folder.is_dir():
            return []
        own = (CASE_IMAGE, CASE_PRESEGMENTATION, CASE_REGION, CASE_LABEL)
        return sorted(
            p
            for p in folder.iterdir()
            if p.is_file()
            and p.name.endswith(endings)
            and not any(
                p.name == f"{stem}{e}" or re.fullmatch(rf"{stem}_\d{{4}}{re.escape(e)}", p.name)
                for stem in own
                for e in endings
            )
        )

    def relative(self, path: Path) -> str:
        return Path(path).relative_to(self.folder).as_posix()

    # the patches layout (one file per item)
    def patch_image(self, name: str) -> Path:
        return self.folder / PATCH_IMAGES / name

    def patch_mask(self, name: str) -> Path:
        return self.folder / PATCH_MASKS / name

    @property
    def patch_masks_dir(self) -> Path:
        return self.folder / PATCH_MASKS

    def is_patch_layout(self) -> bool:
        """True for a package in the patches layout (also every files-oracle package made before
        the case package existed): such a round is imported in that layout."""
        return (self.folder / PATCH_IMAGES).is_dir()


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
    def doorbell_path(self) -> Path:
        """Rank 0's message count for the other DDP ranks (:class:`alseg.scoring.sharding.FileDoorbell`)."""
        return self.path / DOORBELL

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

    @property
    def rounds_log_dir(self) -> Path:
        """TensorBoard events of the run as a whole (one step per round)."""
        return self.path / LOGS / ROUNDS

    def pictures_path(self, k: int) -> Path:
        return self.path / ROUNDS / f"round_{k:03d}_pictures.npz"

    def case_metrics_path(self, k: int) -> Path:
        """Round ``k``'s metrics per test case: Dice, HD95 (mm) and normalised surface Dice per class."""
        return self.path / ROUNDS / f"round_{k:03d}_cases.csv"

    def agreement_path(self, k: int) -> Path:
        return self.path / ROUNDS / f"round_{k:03d}_agreement.npz"

    def log_version(self, k: int) -> str:
        """The Lightning logger version of round ``k`` (``RUN/logs/<version>/``)."""
        return f"round_{k:03d}"

    def checkpoint_path(self, k: int) -> Path:
        return self.path / CHECKPOINTS / f"round_{k:03d}.ckpt"

    def annotate_dir(self, k: int) -> Path:
        return self.path / ANNOTATE / f"round_{k:03d}"

    def package(self, k: int) -> "AnnotationPackage":
        """The annotation package of round ``k`` (``annotate/round_XXX/``)."""
        return AnnotationPackage(self.annotate_dir(k))

    def exists(self) -> bool:
        return self.config_path.is_file()

    def lock(self) -> RunLock:
        """Take the run's lock (one line naming the holder's pid if another process has it)."""
        return RunLock(self.path / LOCK).acquire()

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

    def load_round(self, k: int) -> RoundRecord | None:
        """Round ``k``'s record (None before its selection was written)."""
        p = self.round_path(k)
        if not p.is_file():
            return None
        try:
            return RoundRecord.model_validate_json(p.read_text())
        except (ValidationError, UnicodeDecodeError):
            raise AlsegError(
                "is corrupt — delete it and run 'alseg loop --resume' to redo that round's selection", p
            ) from None

    def finished(self) -> bool:
        """True when ``state.json`` says so; an unreadable state counts as unfinished."""
        try:
            return bool(json.loads(self.state_path.read_text()).get("finished"))
        except (OSError, json.JSONDecodeError, AttributeError):
            return False

    def damaged_file(self) -> Path | None:
        """The first of ``config.json`` and ``state.json`` that is there but cannot be read as a
        JSON object (``alseg status`` names it); None when both are readable or not written yet."""
        for path in (self.config_path, self.state_path):
            if not path.exists():
                continue
            try:
                if not isinstance(json.loads(path.read_text()), dict):
                    return path
            except (OSError, ValueError):
                return path
        return None

    def running(self) -> bool:
        """True while a process holds the run's lock (``alseg loop`` is writing it); never waits.

        A non-blocking probe of the ``fcntl.flock`` that :class:`RunLock` holds: the OS drops it
        when the holder dies, so a killed run reads as not running.
        """
        path = self.path / LOCK
        try:
            f = open(path)  # noqa: SIM115 (closed below; closing drops the probe's own lock)
        except OSError:
            return False
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return False
        finally:
            f.close()
        return False

    def progress(self) -> tuple[int, int] | None:
        """(finished rounds, total rounds) from ``state.json`` and ``config.json``; None before the run starts.

        Total counts the initial round 0 (``rounds + 1``); an unreadable state counts as no round.
        """
        try:
            total = int(json.loads(self.config_path.read_text())["rounds"]) + 1
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError):
            return None
        try:
            done = int(json.loads(self.state_path.read_text()).get("round", -1)) + 1
        except (OSError, json.JSONDecodeError, AttributeError, TypeError, ValueError):
            done = 0
        return done, total

    # --- integrity -----------------------------------------------------------------------------
    def record_checksum(self, state: RunState, path: Path) -> None:
        """Note ``path``'s size and hash in ``state`` (saved with it): what a resume verifies."""
        state.checksums[Path(path).relative_to(self.path).as_posix()] = file_checksum(path)

    def _check_file(self, state: RunState, path: Path, what: str) -> None:
        if not path.is_file():
            raise AlsegError(
                f"missing, but {STATE} relies on it ({what}) — restore it from a backup, or start a new run with another -o",
                path,
            )
        recorded = state.checksums.get(path.relative_to(self.path).as_posix())
        if recorded is not None and file_checksum(path) != recorded:
            raise AlsegError(
                f"damaged: its size or hash differs from when it was written ({what}) — restore it from a backup, "
                "or start a new run with another -o",
                path,
            )

    def verify(self, state: RunState, label_files: dict[Path, int], rewritten: set[Path]) -> None:
        """Check every file a resumed run relies on; the first damaged one is one line naming it.

        ``label_files``: label file → number of labelled items in it; those in ``rewritten``
        belong to the pending batch and are written again on resume, so only their presence is
        not required. Rounds up to ``state.round`` need their record and metrics row; the last
        one its checkpoint.
        """
        for k in range(state.round + 1):
            p = self.round_path(k)
            what = f"the selection of finished round {k}"
            if not p.is_file():
                raise AlsegError(f"missing ({what}) — restore it from a backup, or start a new run with another -o", p)
            try:
                ok = RoundRecord.model_validate_json(p.read_text()).round == k
            except (ValidationError, UnicodeDecodeError):
                ok = False
            if not ok:
                raise AlsegError(f"corrupt ({what}) — restore it from a backup, or start a new run with another -o", p)
        if state.round >= 0:
            try:
                rounds = {int(r["round"]) for r in self.read_metrics()}
            except (KeyError, TypeError, ValueError, csv.Error):
                rounds = set()
            missing = [k for k in range(state.round + 1) if k not in rounds]
            if missing:
                raise AlsegError(
                    f"has no row for finished round(s) {', '.join(map(str, missing))} ({STATE} says {state.round} "
                    "finished) — restore it from a backup, or start a new run with another -o",
                    self.metrics_path,
                )
            self._check_file(state, self.checkpoint_path(state.round), f"the model of round {state.round}")
        for path, n in sorted(label_files.items()):
            if path in rewritten:
                continue
            self._check_file(state, path, f"the annotations of {n} labelled item(s)")

    def check_label_files(self, state: RunState) -> None:
        """Every label file ``state.json`` has a checksum for is there and as written (one line if not)."""
        for rel in sorted(state.checksums):
            path = self.path / rel
            if path.parent == self.labels_dir:
                self._check_file(state, path, "annotations")

    def load_split(self) -> dict[str, Any]:
        """``split.json``: the pool's cases (``train``) and the test cases; a damaged one is one line."""
        p = self.split_path
        what = "the run's pool and test cases"
        if not p.is_file():
            raise AlsegError(f"missing ({what}) — restore it from a backup, or start a new run with another -o", p)
        try:
            split = json.loads(p.read_text())
            ok = isinstance(split, dict) and all(
                isinstance(split.get(k), list) and all(isinstance(c, str) for c in split[k]) for k in ("train", "test")
            )
        except (json.JSONDecodeError, UnicodeDecodeError):
            ok = False
        if not ok:
            raise AlsegError(f"corrupt ({what}) — restore it from a backup, or start a new run with another -o", p)
        return split

    def temp_files(self) -> list[Path]:
        """Leftovers of atomic writes killed half-way (only safe to delete while holding the lock)."""
        return [p for p in self.path.rglob(".*") if p.is_file() and is_temp_file(p)]

    # --- writing -------------------------------------------------------------------------------
    def fork(self, dest: Path, **changes: Any) -> "RunDir":
        """A copy of this run at ``dest`` with the config fields ``changes`` changed (e.g. another
        strategy and more rounds), unfinished, to be resumed from its last finished round.

        ``alseg compare --shared-initial-round`` trains round 0 once per seed and forks it into
        every strategy's cell: round 0 depends on the seed only. The copy is made in a hidden
        sibling folder and renamed, so a kill leaves either no cell or a whole one."""
        dest = Path(dest)
        if dest.exists():
            raise AlsegError("exists already — a run is only forked into a new folder", dest)
        tmp = dest.with_name(f".{dest.name}.forking")
        if tmp.exists():
            shutil.rmtree(tmp)
        shutil.copytree(self.path, tmp, ignore=shutil.ignore_patterns(LOCK))
        copy = RunDir(tmp)
        copy.save_config(copy.load_config().model_copy(update=changes))
        state = copy.load_state()
        state.finished = False
        copy.save_state(state)
        os.replace(tmp, dest)
        return RunDir(dest)

    def save_config(self, config: RunConfig) -> None:
        atomic_write_text(self.config_path, config.model_dump_json(indent=2) + "\n")

    def save_state(self, state: RunState) -> None:
        atomic_write_text(self.state_path, state.model_dump_json(indent=2) + "\n")

    def save_plans_and_split(
        self, plans: BaseModel, fold: int, train: list[str], test: list[str], rule: str | None = None
    ) -> None:
        """The run's own copy of its plan and split, so it stands alone (``rule``: how the test
        cases were chosen, when not by ``fold``)."""
        atomic_write_text(self.plans_path, plans.model_dump_json(indent=2) + "\n")
        split: dict[str, Any] = {"fold": fold, "train": train, "test": test}
        if rule is not None:
            split["rule"] = rule
        atomic_write_json(self.path / SPLIT, split)

    def save_round(self, record: RoundRecord) -> None:
        atomic_write_json(self.round_path(record.round), record.to_json())

    def save_embeddings(self, k: int, embeddings: np.ndarray, role: np.ndarray) -> None:
        atomic_save_npz(
            self.embeddings_path(k), embeddings=np.asarray(embeddings, np.float32), role=np.asarray(role).astype(str)
        )

    def save_pictures(self, k: int, cases: list[str], slices: list[int], arrays: dict[str, np.ndarray]) -> None:
        """One 2-D slice per picture case: ``image_j`` (float), ``label_j`` and ``pred_j`` (uint8)."""
        atomic_save_npz(
            self.pictures_path(k), cases=np.asarray(cases).astype(str), slices=np.asarray(slices, np.int64), **arrays
        )

    def save_agreement_predictions(self, k: int, predictions: dict[str, np.ndarray]) -> None:
        """Round ``k``'s predicted labels (uint8) of the agreement cases (case id → volume)."""
        cases = sorted(predictions)
        arrays = {f"pred_{j}": np.asarray(predictions[c], np.uint8) for j, c in enumerate(cases)}
        atomic_save_npz(self.agreement_path(k), cases=np.asarray(cases).astype(str), **arrays)

    def load_agreement_predictions(self, k: int) -> dict[str, np.ndarray] | None:
        """What :meth:`save_agreement_predictions` wrote for round ``k``; None when absent or unreadable."""
        try:
            with np.load(self.agreement_path(k)) as f:
                return {str(c): f[f"pred_{j}"] for j, c in enumerate(f["cases"])}
        except (OSError, ValueError, KeyError, EOFError):
            return None

    def save_case_metrics(self, k: int, rows: list[dict]) -> None:
        """Round ``k``'s per-case test metrics (one row per case, ``case`` first; NaN written empty)."""
        fields = list(rows[0]) if rows else ["case"]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {
                    k: "" if isinstance(v, float) and math.isnan(v) else (f"{v:.6f}" if isinstance(v, float) else v)
                    for k, v in row.items()
                }
            )
        atomic_write_text(self.case_metrics_path(k), buf.getvalue())

    def write_metrics_row(self, row: MetricsRow) -> None:
        """Add or replace the row of ``row.round`` (a redone round replaces its old row)."""
        new = row.columns()
        rows = [r for r in self.read_metrics() if int(r["round"]) != row.round]
        rows.append(new)
        rows.sort(key=lambda r: int(r["round"]))
        fields = list(new)
        for r in rows:
            fields.extend(k for k in r if k not in fields)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.metrics_path, buf.getvalue())

    def write_reference(self, summary: dict[str, Any], row: MetricsRow) -> None:
        """A full-data reference: its summary config and one metrics row (metrics last: it marks it done)."""
        atomic_write_json(self.config_path, {"strategy": FULL_STRATEGY, **summary})
        columns = row.columns()
        atomic_write_text(self.metrics_path, ",".join(columns) + "\n" + ",".join(columns.values()) + "\n")


# --- readers of finished runs (the report) --------------------------------------------------------

FULL_STRATEGY = "full"
"""``strategy`` of the reference run trained on the whole pool (the dashed line)."""

REQUIRED_COLUMNS = ("round", "n_labelled_items", "n_labelled_voxels", "dice_mean")
"""A run with test cases; a run without test labels has ``AGREEMENT_COLUMN`` instead of Dice."""
AGREEMENT_COLUMN = "agreement_mean"
"""Mean Dice between a round's predictions and the previous round's on the run's fixed
agreement cases (empty in round 0): how much the model still changes, not its accuracy."""
SECONDS_COLUMNS = ("seconds_train", "seconds_eval", "seconds_score", "seconds_select")
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
    item_size: list[int] | None = None
    """Annotation items smaller than the patch (``--item-size``); None: items of the patch size."""

    @model_validator(mode="after")
    def _active_runs_are_complete(self) -> RunSummary:
        """Only the full-data reference may omit the active-learning keys."""
        if self.strategy != FULL_STRATEGY:
            missing = [k for k in ("seed", "budget", "initial") if getattr(self, k) is None]
            if missing:
                raise ValueError(f"missing key(s) {', '.join(missing)} for strategy {self.strategy!r}")
        return self


class RoundRecord(BaseModel):
    """``rounds/round_XXX.json``: what round k selected, by which strategy, each item's score
    (JSON ``null`` for none or a non-finite one), the batch uncertainty, seconds per phase, and
    once trained the annotated voxels per label name. A strategy's artefacts (USIM's ``Q`` and
    query set, ClaSP PE's β, ...) are extra keys. The loop writes it; resume, the files oracle,
    ``verify`` and the report read it (lenient: extra keys allowed, what the report needs typed)."""

    model_config = ConfigDict(extra="allow")

    round: int = Field(ge=0)
    strategy: str | None = None
    selected: list[str] = Field(default_factory=list)
    """Item ids, in the order the strategy chose them."""
    scores: list[float | None] = Field(default_factory=list)
    batch_uncertainty: float | None = None
    seconds: dict[str, float] = Field(default_factory=dict)
    """``score``, ``select``, ``annotate``: wall seconds of each phase."""
    n_candidates: int | None = None
    """Unlabelled items shown to the strategy (``--candidates``); absent: the whole pool."""
    labelled_voxels_per_class: dict[str, int] | None = None
    """Annotated voxels per label name (background included) once the round's training set was fixed."""
    loader_workers: int | None = Field(default=None, ge=0)
    """Data-loader processes that fed the round's training: each draws its own seeded patch stream,
    so another count trains on other patches (absent: not recorded, runs before this field)."""

    def to_json(self) -> dict[str, Any]:
        """The file's content: the optional keys only when known, then the strategy's artefacts."""
        out = self.model_dump(mode="json")
        for key in ("n_candidates", "labelled_voxels_per_class", "loader_workers"):
            if out[key] is None:
                del out[key]
        return out


class MetricsRow(BaseModel):
    """One row of ``metrics.csv``: round k's labelled set, its test result and its timings.

    Columns, in this order: ``round``, ``n_labelled_items``, ``n_labelled_voxels``, ``dice_mean``
    and ``dice_<class>`` (runs with test labels), :data:`AGREEMENT_COLUMN` (runs without: empty in
    round 0), then :data:`SECONDS_COLUMNS` (active-learning runs; the full-data reference has none).
    """

    model_config = ConfigDict(extra="forbid")

    round: int = Field(ge=0)
    n_labelled_items: int = Field(ge=0)
    n_labelled_voxels: int = Field(ge=0)
    dice: dict[str, float] = Field(default_factory=dict)
    """Column name (``dice_mean``, ``dice_<class>``) → test Dice."""
    measures_agreement: bool = False
    """A run without test labels: the row has the agreement column."""
    agreement: float | None = None
    """Mean Dice with the previous round's predictions (None in round 0)."""
    seconds: dict[str, float] = Field(default_factory=dict)
    """``train``, ``eval``, ``score``, ``select`` → wall seconds (written as ``seconds_<phase>``)."""

    @model_validator(mode="after")
    def _dice_columns(self) -> MetricsRow:
        wrong = [k for k in self.dice if not k.startswith("dice_")]
        if wrong:
            raise ValueError(f"Dice columns start with dice_: {', '.join(wrong)}")
        return self

    def columns(self) -> dict[str, str]:
        """The row as ``metrics.csv`` writes it (Dice to 6 decimals, seconds to 3)."""
        out = {
            "round": str(self.round),
            "n_labelled_items": str(self.n_labelled_items),
            "n_labelled_voxels": str(self.n_labelled_voxels),
        }
        out.update({k: f"{v:.6f}" for k, v in self.dice.items()})
        if self.measures_agreement:
            out[AGREEMENT_COLUMN] = "" if self.agreement is None else f"{self.agreement:.6f}"
        out.update({f"seconds_{k}": f"{v:.3f}" for k, v in self.seconds.items()})
        return out


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
    """Parse ``metrics.csv`` into float columns, checking what the curves rely on.

    A run without test labels has no Dice columns but :data:`AGREEMENT_COLUMN` (empty, read as
    NaN, in round 0); its columns hold ``agreement_mean`` and no ``dice_*``.
    """
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
    agreement_only = "dice_mean" not in header and AGREEMENT_COLUMN in header
    if agreement_only:
        required = [c for c in REQUIRED_COLUMNS if c != "dice_mean"] + [AGREEMENT_COLUMN]
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
                value = float("nan") if column == AGREEMENT_COLUMN and not cell else float(cell)
            except ValueError:
                raise AlsegError(f"line {line_no}: {column}={cell!r} is not a number", path) from None
            dice_like = column.startswith("dice_") or column == AGREEMENT_COLUMN
            if dice_like and not (math.isnan(value) or 0.0 <= value <= 1.0):
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
            record = RoundRecord.model_validate(read_json(path))
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


def picture_files(run_dir: Path) -> dict[int, Path]:
    """Round → ``round_XXX_pictures.npz`` (runs that saved predictions of their picture cases)."""
    found: dict[int, Path] = {}
    for path in sorted((Path(run_dir) / ROUNDS).glob("round_*_pictures.npz")):
        stem = path.name.removeprefix("round_").removesuffix("_pictures.npz")
        if stem.isdigit():
            found[int(stem)] = path
    return found


def case_metric_files(run_dir: Path) -> dict[int, Path]:
    """Round → ``round_XXX_cases.csv`` (runs that recorded their test metrics per case)."""
    found: dict[int, Path] = {}
    for path in sorted((Path(run_dir) / ROUNDS).glob("round_*_cases.csv")):
        stem = path.name.removeprefix("round_").removesuffix("_cases.csv")
        if stem.isdigit():
            found[int(stem)] = path
    return found


def read_case_metrics(path: Path) -> list[dict[str, str | float]]:
    """The rows of a per-case metrics file: ``case`` and float metrics (NaN where empty)."""
    try:
        with Path(path).open(newline="") as f:
            rows = list(csv.DictReader(f))
        return [
            {k: (v if k == "case" else (float(v) if v not in ("", None) else float("nan"))) for k, v in r.items()}
            for r in rows
        ]
    except (OSError, ValueError, csv.Error) as err:
        raise AlsegError(f"cannot be read as a per-case metrics table ({err}) — re-run the round", path) from None


def read_labelled_voxels(run_dir: Path, rounds: np.ndarray) -> dict[int, dict[str, int]]:
    """Round → annotated voxels per label name, for the rounds whose round file recorded them."""
    out: dict[int, dict[str, int]] = {}
    for r in rounds.astype(int):
        path = RunDir(run_dir).round_path(int(r))
        if not path.is_file():
            continue
        try:
            record = RoundRecord.model_validate(read_json(path))
        except ValidationError as err:
            raise AlsegError(f"invalid round file ({_validation_line(err)})", path) from None
        if record.labelled_voxels_per_class is not None:
            out[int(r)] = record.labelled_voxels_per_class
    return out


def find_run_dirs(exp_dir: Path) -> list[Path]:
    """Every directory below ``exp_dir`` (any depth, itself included) holding config.json + metrics.csv,
    except inside hidden folders (``.round0``: a grid's shared round 0, forks being copied)."""
    if not exp_dir.is_dir():
        raise AlsegError("experiment directory does not exist", exp_dir)
    return sorted(
        p.parent
        for p in exp_dir.rglob(CONFIG)
        if (p.parent / METRICS).is_file()
        and not any(part.startswith(".") for part in p.parent.relative_to(exp_dir).parts)
    )
