"""Kept for compatibility: the names ``alseg.data.preprocess`` used to hold.

The preprocessing now lives in small modules named by concept:

* pure steps: :mod:`alseg.data.crop`, :mod:`alseg.data.resample`, :mod:`alseg.data.normalize`;
* one case through them: :mod:`alseg.data.pipeline` (:func:`preprocess_case`);
* the on-disk cache: :mod:`alseg.data.cache` (:class:`CaseCache`, :func:`build_cache`).

``alseg.loop``, ``alseg.compare``, ``alseg.cli``, ``alseg.strategies.redundancy`` and
``benchmarks/train_throughput.py`` still call :func:`preprocess_dataset` / :func:`cache_dir_for`
here; new code should use :class:`CaseCache` and :func:`build_cache`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from alseg.data.cache import MANIFEST, CaseCache, build_cache, configuration_hash
from alseg.data.crop import bbox_of_mask, create_nonzero_mask, crop_to_nonzero
from alseg.data.normalize import NORM_EPS, normalize
from alseg.data.pipeline import (
    CLASS_LOCATION_SEED,
    MAX_CLASS_LOCATIONS,
    PREPROCESS_VERSION,
    preprocess_case,
    sample_class_locations,
)
from alseg.data.resample import ANISOTROPY_THRESHOLD, compute_new_shape, resample, resize_labels, separate_axis
from alseg.data.workers import default_workers, make_executor
from alseg.plans.models import Configuration, Plans, load_plans

__all__ = [
    # moved to alseg.data.cache
    "MANIFEST",
    "configuration_hash",
    # moved to alseg.data.crop
    "bbox_of_mask",
    "create_nonzero_mask",
    "crop_to_nonzero",
    # moved to alseg.data.normalize
    "NORM_EPS",
    "normalize",
    # moved to alseg.data.pipeline
    "CLASS_LOCATION_SEED",
    "MAX_CLASS_LOCATIONS",
    "PREPROCESS_VERSION",
    "preprocess_case",
    "sample_class_locations",
    # moved to alseg.data.resample
    "ANISOTROPY_THRESHOLD",
    "compute_new_shape",
    "resample",
    "resize_labels",
    "separate_axis",
    # moved to alseg.data.workers
    "default_workers",
    "make_executor",
    # thin wrappers over CaseCache / build_cache
    "cache_dir_for",
    "load_case_cache",
    "preprocess_dataset",
    "read_manifest",
]


def _resolve_plans(plans: Plans | str | Path) -> Plans:
    if isinstance(plans, Plans):
        return plans
    path = Path(plans)
    return load_plans(path / "plans.json" if path.is_dir() else path)


def preprocess_dataset(
    plans: Plans | str | Path,
    config_name: str,
    out_dir: str | Path,
    workers: int | None = None,
    show_progress: bool = True,
    on_mismatch: Literal["rebuild", "error"] = "rebuild",
) -> Path:
    """Kept for compatibility: :func:`build_cache`, returning the cache folder.

    ``plans`` may also be the path of plans.json or of the folder holding it.
    """
    cache = build_cache(
        _resolve_plans(plans), config_name, out_dir, show_progress, workers=workers, on_mismatch=on_mismatch
    )
    return cache.folder


def cache_dir_for(plans_dir: str | Path, configuration: Configuration | str) -> Path:
    """Kept for compatibility: ``CaseCache.of(...).folder``.

    ``configuration`` is a ``Configuration``, a data identifier, or a configuration name
    ("2d", "3d_fullres") looked up in ``plans_dir/plans.json``.
    """
    plans_dir = Path(plans_dir)
    if not isinstance(configuration, str):
        return CaseCache.of_configuration(plans_dir, configuration).folder
    plans_file = plans_dir / "plans.json"
    if configuration in ("2d", "3d_fullres") and plans_file.is_file():
        return CaseCache.of(plans_dir, load_plans(plans_file), configuration).folder
    return plans_dir / configuration


def read_manifest(cache_dir: str | Path) -> dict | None:
    """Kept for compatibility: ``CaseCache(cache_dir).manifest()``."""
    return CaseCache(cache_dir).manifest()


def load_case_cache(cache_dir: str | Path, case_id: str, mmap: bool = True) -> tuple[np.ndarray, np.ndarray, dict]:
    """Kept for compatibility: ``(image, seg (1, z, y, x), properties)`` of one cached case."""
    cache = CaseCache(cache_dir)
    image, label, props = cache.image(case_id), cache.label(case_id)[None], cache.properties(case_id)
    if not mmap:
        image, label = np.array(image), np.array(label)
    return image, label, props
