"""The data a run works on, opened once: plan → preprocessed cache → split → pool.

``alseg loop``, ``alseg compare`` (its full-data reference) and the redundancy check all need
the same four things in the same order; :meth:`Workspace.open` is the one place that sets them
up, so the three cannot drift apart.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from alseg.data.cache import CaseCache, build_cache
from alseg.data.pool import Pool
from alseg.errors import AlsegError
from alseg.model.train import make_split
from alseg.plans.models import Configuration, Plans, load_plans, plans_file

__all__ = ["Workspace", "check_item_size", "resolve_plans", "hash_json", "dataset_hash", "split_cases"]


def hash_json(data: Any) -> str:
    """A short content hash of JSON-able data (plans, pools): what a resumed run must match."""
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


DATA_FOLDERS = ("imagesTr", "labelsTr")
"""The folders of a dataset whose files a run trains on (besides dataset.json)."""


def dataset_hash(target: Path) -> str | None:
    """A dataset's identity by content: its ``dataset.json`` and the names and sizes of the files
    in imagesTr/labelsTr (stat only, no image is read). ``None`` for a plan folder, which the
    plan's own hash identifies."""
    target = Path(target)
    js = target / "dataset.json"
    if plans_file(target).is_file() or not js.is_file():
        return None
    files = sorted(
        (p.relative_to(target).as_posix(), p.stat().st_size)
        for folder in DATA_FOLDERS
        if (target / folder).is_dir()
        for p in (target / folder).rglob("*")
        if p.is_file() and not p.name.startswith(".")
    )
    return hash_json({"dataset.json": hashlib.sha256(js.read_bytes()).hexdigest(), "files": files})


def resolve_plans(target: Path, plan_into: Path, show_progress: bool = True) -> tuple[Plans, Path]:
    """(plans, plan folder) for a plan folder, or plan a dataset on the fly into ``plan_into/plan``.

    A plan made earlier into ``plan_into/plan`` is reused only for the dataset it was made from.
    """
    target = Path(target)
    if plans_file(target).is_file():
        return load_plans(plans_file(target)), target
    if (target / "dataset.json").is_file():
        # lazy: the planner is needed only when a dataset (not a plan folder) is given
        from alseg.plans.planner import plan_dataset

        plan_dir = Path(plan_into) / "plan"
        if plans_file(plan_dir).is_file():
            plans = load_plans(plans_file(plan_dir))
            if Path(plans.dataset_root).resolve() != target.resolve():
                raise AlsegError(
                    f"was planned from another dataset ({plans.dataset_root}) — pass that dataset, or choose another -o",
                    plans_file(plan_dir),
                )
            return plans, plan_dir
        _check_before_planning(target, show_progress)
        return plan_dataset(target, plan_dir, show_progress=show_progress), plan_dir
    raise AlsegError("neither a dataset (dataset.json) nor a plan folder (plans.json) — pass one of them", target)


def _check_before_planning(target: Path, show_progress: bool) -> None:
    """``alseg check``'s verdict before a dataset is planned on the fly: data that would crash
    training (non-consecutive labels, mixed 2D/3D, ...) is refused with its first problem."""
    # lazy: only a dataset (not a plan folder) is checked, and the check reads every case
    from alseg.dataset.raw import read_dataset
    from alseg.dataset.validate import check_dataset

    result = check_dataset(read_dataset(target), show_progress=show_progress)
    if not result.ok:
        more = f" (and {len(result.problems) - 1} more problem(s): run 'alseg check {target}')"
        raise AlsegError(result.problems[0] + (more if len(result.problems) > 1 else ""))


def check_item_size(item_size: list[int] | None, config: str, patch_size: list[int]) -> None:
    """``--item-size`` against the plan's patch (one line naming the fix): an item is at most a
    patch, so that every training patch can hold a whole item."""
    if item_size is None:
        return
    patch = [int(p) for p in patch_size]
    shown = ",".join(map(str, patch))
    if len(item_size) != len(patch):
        raise AlsegError(
            f"--item-size {','.join(map(str, item_size))} has {len(item_size)} sizes, the {config} patch "
            f"{len(patch)} — give {len(patch)} sizes, at most {shown}"
        )
    if any(s < 1 for s in item_size):
        raise AlsegError(f"--item-size {','.join(map(str, item_size))}: every size must be at least 1")
    if any(s > p for s, p in zip(item_size, patch)):
        raise AlsegError(
            f"--item-size {','.join(map(str, item_size))} is larger than the {config} patch size {shown} — "
            f"choose at most {shown} per axis"
        )


def split_cases(
    case_ids: list[str],
    unlabelled: list[str],
    fold: int,
    test_cases: list[str] | None = None,
    pool_needs_labels: bool = False,
) -> tuple[list[str], list[str]]:
    """``(train_ids, test_ids)``: the pool's cases and the test cases of a run.

    * ``test_cases`` given (``--test-cases``): those are the test cases, every other training
      case (labelled or not) is the pool; a name that is not a training case, or a case without
      a label, is one line naming it.
    * every case labelled: nnU-Net's 5-fold split, fold ``fold`` held out (as always).
    * some cases images only: the labelled cases are the test cases (none: no test set — the
      loop then records the agreement between rounds instead of Dice), the images-only cases
      the pool.

    ``pool_needs_labels`` (the simulated oracle reveals the ground truth) refuses a pool with an
    images-only case, naming it. Everything here is checked before any case is preprocessed.
    """
    ids = sorted(case_ids)
    no_label = set(unlabelled)
    if test_cases:
        known = set(ids)
        for c in test_cases:
            if c not in known:
                shown = ", ".join(ids[:5]) + (", ..." if len(ids) > 5 else "")
                raise AlsegError(f"--test-cases: '{c}' is not a training case of the dataset — choose among {shown}")
            if c in no_label:
                raise AlsegError(
                    f"--test-cases: case '{c}' has no label — a test case needs its ground truth; "
                    "choose cases with a label file"
                )
        chosen = set(test_cases)
        train, test = [c for c in ids if c not in chosen], sorted(chosen)
    elif not no_label:
        train, test = make_split(ids, fold)
    else:
        train, test = [c for c in ids if c in no_label], [c for c in ids if c not in no_label]
    if not train:
        raise AlsegError("the pool is empty: every training case is a test case — pass fewer --test-cases")
    if pool_needs_labels:
        missing = [c for c in train if c in no_label]
        if missing:
            raise AlsegError(
                f"--oracle simulated reveals the ground truth, but pool case '{missing[0]}' has no label "
                f"({len(missing)} of {len(train)} pool cases are images only) — annotate with --oracle files"
            )
    return train, test


@dataclass
class Workspace:
    """A plan configuration's cache, its train/test split and the pool of the training cases."""

    plans: Plans
    plan_dir: Path
    config: str
    fold: int
    cache: CaseCache
    train_ids: list[str]
    test_ids: list[str]
    pool: Pool
    split_rule: str | None = None
    """How the test cases were chosen when not by ``fold`` (None: nnU-Net's fold split)."""
    _shapes: dict[str, tuple[int, ...]] = field(default_factory=dict, repr=False)

    @classmethod
    def open(
        cls,
        target: Path,
        plan_into: Path,
        config: str = "2d",
        fold: int = 0,
        show_progress: bool = True,
        *,
        test_cases: list[str] | None = None,
        pool_needs_labels: bool = False,
        item_size: list[int] | None = None,
    ) -> "Workspace":
        """Plan (when ``target`` is a dataset), split (see :func:`split_cases`), preprocess and
        build the pool. The split and ``item_size`` (:func:`check_item_size`, needs the plan's
        patch) are checked before preprocessing, so a bad ``test_cases``, an item larger than the
        patch or a pool the simulated oracle cannot annotate fails at once."""
        # lazy: read_dataset lists the cases (stat only) to check the split before preprocessing
        from alseg.dataset.raw import read_dataset

        plans, plan_dir = resolve_plans(Path(target), Path(plan_into), show_progress)
        conf = plans.configuration(config)
        check_item_size(item_size, config, conf.patch_size)
        info = read_dataset(plans.dataset_root)
        split_cases(
            [c.case_id for c in info.training],
            [c.case_id for c in info.training if c.label is None],
            fold,
            test_cases,
            pool_needs_labels,
        )
        cache = build_cache(plans, config, plan_dir, show_progress=show_progress)
        train_ids, test_ids = split_cases(
            cache.case_ids(), cache.unlabelled_case_ids(), fold, test_cases, pool_needs_labels
        )
        pool = Pool.from_cache(
            cache.folder, train_ids, config, tuple(conf.patch_size), tuple(item_size) if item_size else None
        )
        if test_cases:
            rule = "--test-cases"
        elif cache.unlabelled_case_ids():
            rule = "images-only cases are the pool, labelled cases the test cases"
        else:
            rule = None
        return cls(plans, plan_dir, config, fold, cache, train_ids, test_ids, pool, rule)

    @property
    def configuration(self) -> Configuration:
        return self.plans.configuration(self.config)

    @property
    def cache_dir(self) -> Path:
        return self.cache.folder

    @property
    def plans_hash(self) -> str:
        """Identifies the plan regardless of where its dataset lies on disk."""
        # intensity_source only describes the plan (its normalisation says the same): runs made
        # before it was recorded keep their hash
        return hash_json(self.plans.model_dump(mode="json", exclude={"dataset_root", "intensity_source"}))

    @property
    def foreground_labels(self) -> dict[int, str]:
        return {k: v for k, v in self.plans.labels.items() if k != 0}

    def image(self, case_id: str) -> np.ndarray:
        """Preprocessed image ``(C, z, y, x)``, memory-mapped."""
        return self.cache.image(case_id)

    def ground_truth(self, case_id: str) -> np.ndarray:
        """Preprocessed label ``(z, y, x)``, memory-mapped."""
        return self.cache.label(case_id)

    def properties(self, case_id: str) -> dict:
        """What preprocessing did to a case (crop box, shapes, geometry), to map back to its file."""
        return self.cache.properties(case_id)

    def train_shapes(self) -> dict[str, tuple[int, ...]]:
        """Preprocessed ``(z, y, x)`` of every training case (the label store's volumes)."""
        if not self._shapes:
            self._shapes = {c: tuple(self.cache.shape(c)) for c in self.train_ids}
        return self._shapes
