"""``alseg check``: everything nnU-Net's integrity check verifies, and a little more.

Each problem is one line naming the file and the fix. All problems are collected (not only
the first) so a user can repair a dataset in one pass.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from alseg.data.dataset import CaseFiles, DatasetInfo, load_case
from alseg.errors import AlsegError
from alseg.progress import progress_map

__all__ = ["CaseSummary", "CheckResult", "check_case", "check_dataset"]


@dataclass
class CaseSummary:
    case_id: str
    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    n_channels: int
    voxels_per_class: dict[int, int]


@dataclass
class CheckResult:
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    cases: list[CaseSummary] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_case(case: CaseFiles, n_channels: int, labels: tuple[int, ...]) -> CaseSummary | str:
    """One case's summary, or the one-line problem that stops it."""
    try:
        image, label, geom = load_case(case, n_channels)
    except AlsegError as e:
        return str(e)
    finite = np.isfinite(image)
    if not finite.all():
        bad = "NaN" if np.isnan(image).any() else "Inf"
        return f"{case.images[0]}: contains {bad} in {int((~finite).sum())} voxel(s) — replace them (e.g. with the image minimum) and re-save"
    counts: dict[int, int] = {}
    if label is not None:
        values, n = np.unique(label, return_counts=True)
        unknown = sorted(set(values.tolist()) - set(labels))
        if unknown:
            return (
                f"{case.label}: holds label value(s) {unknown} not declared in dataset.json labels {sorted(labels)} "
                "— fix the label map or declare the label"
            )
        counts = {int(v): int(c) for v, c in zip(values, n)}
    return CaseSummary(
        case.case_id,
        tuple(int(s) for s in image.shape[1:]),
        tuple(float(s) for s in geom.spacing),
        image.shape[0],
        counts,
    )


def _check_case_args(args: tuple) -> CaseSummary | str:
    return check_case(*args)


def _unlisted(info: DatasetInfo) -> list[str]:
    """Image files in imagesTr/labelsTr that no case refers to (MSD's macOS '._' junk ignored)."""
    referenced = {p.resolve() for c in info.training for p in (*c.images, c.label) if p is not None}
    out = []
    for folder in ("imagesTr", "labelsTr"):
        d = info.root / folder
        if d.is_dir():
            for f in sorted(d.iterdir()):
                if f.is_file() and not f.name.startswith(".") and f.resolve() not in referenced:
                    out.append(f"{f}: not listed in dataset.json — it is ignored; list it in 'training' or remove it")
    return out


def check_dataset(info: DatasetInfo, workers: int | None = None, show_progress: bool = True) -> CheckResult:
    result = CheckResult()
    js = info.root / "dataset.json"
    if not info.training:
        result.problems.append(f"{js}: the training list is empty — list at least 2 labelled cases")
        return result
    for d in info.duplicates:
        result.problems.append(f"{js}: case {d} is listed more than once — remove the duplicate entry")
    result.warnings.extend(_unlisted(info))
    labels = tuple(info.labels)
    jobs = [(c, info.n_channels, labels) for c in info.training]
    workers = workers or min(os.cpu_count() or 1, 8)
    if workers > 1 and len(jobs) > 8:
        with ProcessPoolExecutor(workers) as pool:
            outcomes = progress_map(pool.map, _check_case_args, jobs, "checking cases", show_progress, chunksize=4)
    else:
        outcomes = progress_map(map, _check_case_args, jobs, "checking cases", show_progress)
    for out in outcomes:
        if isinstance(out, str):
            result.problems.append(out)
        else:
            result.cases.append(out)
    if len(info.training) < 2:
        result.problems.append(f"{js}: only {len(info.training)} case — at least 2 are needed to train and test")
    unlabelled = [c.case_id for c in info.training if c.label is None]
    if unlabelled:
        shown = ", ".join(unlabelled[:5]) + (", ..." if len(unlabelled) > 5 else "")
        result.warnings.append(
            f"{js}: {len(unlabelled)} of {len(info.training)} training cases have no label file ({shown}) — "
            "images only: planned from their images; preprocessing, training and the test Dice need labels"
        )
    if result.cases and not result.problems and len(unlabelled) < len(info.training):
        dims = {len(c.shape) for c in result.cases}
        if len(dims) > 1:
            result.problems.append(
                f"{js}: cases mix dimensionalities {sorted(dims)} — all images must be 3D (or all single-slice 2D)"
            )
        fg = {k for c in result.cases for k, n in c.voxels_per_class.items() if k != 0 and n > 0}
        if not fg:
            result.problems.append(
                f"{js}: every label map is all background — nothing to segment; check the label files"
            )
        missing = [info.labels[k] for k in info.foreground_labels if k not in fg]
        if fg and missing:
            result.warnings.append(f"{js}: declared label(s) {missing} never occur in any case")
    return result
