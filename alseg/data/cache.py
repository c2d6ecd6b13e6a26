"""The preprocessed case cache: the one place that knows its file names and how to load them.

Layout (nnU-Net v2's ``nnUNetDataset`` keeps one such folder per configuration)::

    PLANDIR/<data_identifier>/
        <case>.npy       float32 (C, z, y, x): transposed, cropped, normalised, resampled
                         (plain ``np.save``, so ``mmap_mode="r"`` works)
        <case>_seg.npy   uint8, or int16 for labels > 255, (1, z, y, x); only for a case with a
                         label file (an images-only case has none)
        <case>.json      properties (see :func:`alseg.data.pipeline.preprocess_case`) plus
                         ``case_id``, ``configuration``, ``config_hash`` and ``labelled``
                         (false: an images-only case, no ``_seg.npy``, no ``voxels_per_class``)
        manifest.json    written last: its presence means the cache is complete; ``cases`` lists
                         every training case, ``unlabelled`` those without a label

Every training case is cached, labelled or not. A case counts as done only when its
``labelled`` flag matches the dataset now, so a label file added later (annotations arrive)
recomputes that case (its label also shapes the normalisation mask) instead of reusing a stale
one. Caches written before images-only cases were cached have no ``labelled`` flag and no
``unlabelled`` list: they held labelled cases only, and read as such.

Every file is written atomically; a case counts as done once its JSON (written after both
arrays) carries the current configuration hash, so a killed build resumes where it stopped.
Readers (the data module, the pool, training) go through :class:`CaseCache`, which loads
lazily: arrays are memory-mapped, properties read once.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

import numpy as np

from alseg.atomic import atomic_save_npy, atomic_write_json
from alseg.data.pipeline import PREPROCESS_VERSION, preprocess_case
from alseg.dataset.raw import CaseFiles, load_case, read_dataset
from alseg.dataset.workers import default_workers, make_executor
from alseg.errors import AlsegError
from alseg.plans.models import Configuration, Plans
from alseg.progress import progress_map

__all__ = ["MANIFEST", "CaseCache", "build_cache", "configuration_hash"]

MANIFEST = "manifest.json"
IMAGE_SUFFIX = ".npy"
LABEL_SUFFIX = "_seg.npy"
PROPERTIES_SUFFIX = ".json"
MANIFEST_SCHEMA_VERSION = 1


class CaseCache:
    """One configuration's cache folder: names, lazy loading and (for :func:`build_cache`) writing.

    Cheap to create and to pickle (a folder and a dict of properties already read), so data
    loader workers get their own and memory-map the arrays themselves.
    """

    folder: Path

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self._properties: dict[str, dict] = {}

    def __repr__(self) -> str:
        return f"CaseCache({str(self.folder)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CaseCache) and other.folder == self.folder

    def __hash__(self) -> int:
        return hash(self.folder)

    @classmethod
    def of(cls, plan_dir: str | Path, plans: Plans, config: str) -> "CaseCache":
        """The cache of configuration ``config`` of ``plans`` in ``plan_dir``: ``PLANDIR/<data_identifier>``."""
        return cls.of_configuration(plan_dir, plans.configuration(config))

    @classmethod
    def of_configuration(cls, plan_dir: str | Path, configuration: Configuration) -> "CaseCache":
        """The cache of a (possibly overridden) ``Configuration`` in ``plan_dir``."""
        return cls(Path(plan_dir) / configuration.data_identifier)

    # ------------------------------------------------------------------ names
    def image_path(self, case_id: str) -> Path:
        return self.folder / f"{case_id}{IMAGE_SUFFIX}"

    def label_path(self, case_id: str) -> Path:
        return self.folder / f"{case_id}{LABEL_SUFFIX}"

    def properties_path(self, case_id: str) -> Path:
        return self.folder / f"{case_id}{PROPERTIES_SUFFIX}"

    @property
    def manifest_path(self) -> Path:
        return self.folder / MANIFEST

    def _case_files(self, case_id: str) -> tuple[Path, Path, Path]:
        return self.image_path(case_id), self.label_path(case_id), self.properties_path(case_id)

    # ------------------------------------------------------------------ reading
    def manifest(self) -> dict | None:
        """The manifest of a complete cache, or None when the cache is missing or incomplete."""
        try:
            return json.loads(self.manifest_path.read_text())
        except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
            return None

    def case_ids(self) -> list[str]:
        """Sorted case ids of a complete cache (from its manifest)."""
        manifest = self.manifest()
        if manifest is None:
            raise AlsegError(
                "not a complete preprocessed cache (no manifest.json) — run 'alseg preprocess' first", self.folder
            )
        cases = sorted(manifest.get("cases", []))
        if not cases:
            raise AlsegError("the cache holds no cases — run 'alseg preprocess' again", self.folder)
        return cases

    def _existing(self, path: Path, case_id: str) -> Path:
        if not path.is_file():
            raise AlsegError(
                f"case '{case_id}' is not in the cache — run 'alseg preprocess {self.folder.parent}'", path
            )
        return path

    def image(self, case_id: str) -> np.ndarray:
        """``(C, z, y, x)`` float32, memory-mapped read-only."""
        return np.load(self._existing(self.image_path(case_id), case_id), mmap_mode="r")

    def label(self, case_id: str) -> np.ndarray:
        """``(z, y, x)`` labels, memory-mapped read-only (the file holds ``(1, z, y, x)``)."""
        if not self.has_label(case_id):
            raise AlsegError(
                f"case '{case_id}' has no label (an images-only case) — it has no ground truth to read",
                self.folder,
            )
        return np.load(self._existing(self.label_path(case_id), case_id), mmap_mode="r")[0]

    def has_label(self, case_id: str) -> bool:
        """Whether the case was cached with a label (older caches hold labelled cases only)."""
        return bool(self.properties(case_id).get("labelled", True))

    def unlabelled_case_ids(self) -> list[str]:
        """Sorted ids of the complete cache's images-only cases (from its manifest)."""
        manifest = self.manifest() or {}
        return sorted(manifest.get("unlabelled", []))

    def labelled_case_ids(self) -> list[str]:
        """Sorted ids of the complete cache's cases with a label."""
        unlabelled = set(self.unlabelled_case_ids())
        return [c for c in self.case_ids() if c not in unlabelled]

    def properties(self, case_id: str) -> dict:
        """The case's properties (``<case>.json``), read once per instance."""
        if case_id not in self._properties:
            path = self._existing(self.properties_path(case_id), case_id)
            self._properties[case_id] = json.loads(path.read_text())
        return self._properties[case_id]

    def shape(self, case_id: str) -> tuple[int, int, int]:
        """The preprocessed ``(z, y, x)`` shape (from the image's header; no voxel is read)."""
        return tuple(int(s) for s in self.image(case_id).shape[1:])

    # ------------------------------------------------------------------ writing (build_cache)
    def has_case(self, case_id: str, config_hash: str, labelled: bool = True) -> bool:
        """Whether the case's files are there and were written for ``config_hash`` with (or,
        ``labelled=False``, without) a label — a label added since makes the case stale."""
        data_f, seg_f, props_f = self._case_files(case_id)
        if not (data_f.is_file() and props_f.is_file() and (seg_f.is_file() or not labelled)):
            return False
        try:
            props = json.loads(props_f.read_text())
        except (json.JSONDecodeError, OSError):
            return False
        return props.get("config_hash") == config_hash and bool(props.get("labelled", True)) == labelled

    def write_case(self, case_id: str, data: np.ndarray, seg: np.ndarray | None, properties: dict) -> None:
        """The arrays (no label array for an images-only case), then the properties: their
        presence marks the case done."""
        atomic_save_npy(self.image_path(case_id), data)
        if seg is not None:
            atomic_save_npy(self.label_path(case_id), seg)
        else:
            self.label_path(case_id).unlink(missing_ok=True)  # a label removed since: none left behind
        atomic_write_json(self.properties_path(case_id), properties)
        self._properties.pop(case_id, None)

    def write_manifest(self, manifest: dict) -> None:
        atomic_write_json(self.manifest_path, manifest)

    def stored_hash_other_than(self, config_hash: str) -> str | None:
        """The hash of a different plan found in the folder (manifest or any case), if any."""
        manifest = self.manifest()
        if manifest is not None and manifest.get("config_hash") != config_hash:
            return str(manifest.get("config_hash"))
        for f in self.folder.glob(f"*{PROPERTIES_SUFFIX}"):
            if f.name == MANIFEST:
                continue
            try:
                h = json.loads(f.read_text()).get("config_hash")
            except (json.JSONDecodeError, OSError, AttributeError):
                continue
            if h is not None and h != config_hash:
                return str(h)
        return None

    def clear(self) -> None:
        """Remove the cache's own files from the folder (never anything else)."""
        for f in self.folder.iterdir():
            if f.is_file() and (f.suffix in (IMAGE_SUFFIX, PROPERTIES_SUFFIX) or f.name.endswith(".tmp")):
                f.unlink()
        self._properties.clear()

    def prepare_resume(self, keep: list[str]) -> None:
        """Before (re)building: drop the manifest, debris of killed atomic writes, and cases not in ``keep``."""
        self.manifest_path.unlink(missing_ok=True)
        for f in self.folder.glob(".*.tmp*"):
            f.unlink()
        known = set(keep)
        for f in self.folder.glob(f"*{PROPERTIES_SUFFIX}"):
            if f.name != MANIFEST and f.stem not in known:
                for g in self._case_files(f.stem):
                    g.unlink(missing_ok=True)
        self._properties.clear()


def configuration_hash(plans: Plans, config_name: str) -> str:
    """A hash of everything that changes what the cache holds for one configuration.

    The dataset root, the transpose, the labels and the configuration's spacing, normalisation
    and resampling (not its patch, batch size, network or trainer: those do not touch the
    cached arrays), plus :data:`~alseg.data.pipeline.PREPROCESS_VERSION`.
    """
    config = plans.configuration(config_name)
    key = {
        "version": PREPROCESS_VERSION,
        "dataset_root": str(plans.dataset_root),
        "transpose_forward": list(plans.transpose_forward),
        "labels": {str(k): v for k, v in sorted(plans.labels.items())},
        "name": config.name,
        "spacing": [float(s) for s in config.spacing],
        "normalization": [n.model_dump() for n in config.normalization],
        "resampling": config.resampling.model_dump(),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _cache_one(job: tuple[CaseFiles, int, Plans, str, str, str]) -> str:
    """Worker: load, preprocess and write one case (top level so a process pool can pickle it)."""
    case, n_channels, plans, config_name, folder, config_hash = job
    image, label, geometry = load_case(case, n_channels)
    data, seg, props = preprocess_case(image, label, geometry, plans, config_name)
    props = {
        "case_id": case.case_id,
        "configuration": config_name,
        "config_hash": config_hash,
        "labelled": label is not None,
        **props,
    }
    CaseCache(folder).write_case(case.case_id, data, seg, props)
    return case.case_id


def build_cache(
    plans: Plans,
    config: str,
    plan_dir: str | Path,
    show_progress: bool = True,
    *,
    workers: int | None = None,
    on_mismatch: Literal["rebuild", "error"] = "rebuild",
) -> CaseCache:
    """Build (or finish) the cache of every training case (labelled or images only) of ``config``.

    The cache is ``plan_dir/<data_identifier>/``. Idempotent: a complete cache of the same
    configuration is returned untouched. Re-entrant: cases already written for this
    configuration are kept, the rest are (re)computed in ``workers`` processes, then
    ``manifest.json`` is written. A cache written for a different plan (another
    :func:`configuration_hash`) is rebuilt from scratch, or refused with
    ``on_mismatch="error"``; it is never reused.
    """
    cache = CaseCache.of(plan_dir, plans, config)
    conf = plans.configuration(config)
    config_hash = configuration_hash(plans, config)
    info = read_dataset(plans.dataset_root)
    case_ids = [c.case_id for c in info.training]
    if not case_ids:
        raise AlsegError("the dataset has no training cases — nothing to preprocess", plans.dataset_root)
    labelled = {c.case_id: c.label is not None for c in info.training}
    unlabelled = sorted(c for c, has in labelled.items() if not has)

    manifest = cache.manifest()
    if (
        manifest is not None
        and manifest.get("config_hash") == config_hash
        and manifest.get("cases") == case_ids
        and sorted(manifest.get("unlabelled", [])) == unlabelled
        and all(cache.has_case(c, config_hash, labelled[c]) for c in case_ids)
    ):
        return cache

    cache.folder.mkdir(parents=True, exist_ok=True)
    stale = cache.stored_hash_other_than(config_hash)
    if stale is not None:
        if on_mismatch == "error":
            raise AlsegError(
                f"holds a cache of a different plan (hash {stale}, this plan {config_hash}) — delete the folder or re-run with rebuild",
                cache.folder,
            )
        cache.clear()
    cache.prepare_resume(case_ids)

    todo = [c for c in info.training if not cache.has_case(c.case_id, config_hash, labelled[c.case_id])]
    jobs = [(c, info.n_channels, plans, config, str(cache.folder), config_hash) for c in todo]
    workers = default_workers() if workers is None else workers
    description = f"preprocessing {config} ({len(todo)}/{len(case_ids)} cases)"
    if jobs:
        if workers <= 1 or len(jobs) == 1:
            progress_map(map, _cache_one, jobs, description, show_progress)
        else:
            with make_executor(min(workers, len(jobs))) as pool:
                progress_map(pool.map, _cache_one, jobs, description, show_progress)

    cache.write_manifest(
        {
            "schema_version": MANIFEST_SCHEMA_VERSION,
            "configuration": config,
            "data_identifier": conf.data_identifier,
            "config_hash": config_hash,
            "dataset_root": str(plans.dataset_root),
            "n_channels": info.n_channels,
            "labels": {str(k): v for k, v in sorted(plans.labels.items())},
            "patch_size": list(conf.patch_size),
            "spacing": list(conf.spacing),
            "cases": case_ids,
            "unlabelled": unlabelled,
        }
    )
    return cache
