"""``alseg check``: everything nnU-Net's integrity check verifies, and a little more.

Each problem is one line naming the file and the fix. All problems are collected (not only
the first) so a user can repair a dataset in one pass.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from alseg.dataset.raw import CaseFiles, DatasetInfo, load_case
from alseg.dataset.workers import worker_pool_args
from alseg.errors import AlsegError
from alseg.progress import progress_map

__all__ = ["ABSURD_INTENSITY", "CaseSummary", "CheckResult", "check_case", "check_dataset", "intensity_problem"]


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


ABSURD_INTENSITY = 1e10
"""No scanner writes intensities beyond this magnitude: such a voxel is corrupt (or a wrong data
type). It would dominate the z-score of its case (every other voxel normalised to about 0)."""


def intensity_problem(channel: np.ndarray) -> str | None:
    """What is wrong with one channel's intensities (non-finite or absurd voxels), or None."""
    finite = np.isfinite(channel)
    if not finite.all():
        bad = "NaN" if np.isnan(channel).any() else "Inf"
        return f"contains {bad} in {int((~finite).sum())} voxel(s) — replace them (e.g. with the image minimum) and re-save"
    big = np.abs(channel) > ABSURD_INTENSITY
    if big.any():
        extreme = float(channel[big][np.argmax(np.abs(channel[big]))])
        return (
            f"holds {int(big.sum())} voxel(s) of absurd intensity (beyond ±{ABSURD_INTENSITY:.0e}, e.g. {extreme:.3g}): "
            "they would swamp the case's normalisation — replace them (e.g. with the image minimum) and re-save"
        )
    return None


def check_case(case: CaseFiles, n_channels: int, labels: tuple[int, ...]) -> CaseSummary | str:
    """One case's summary, or the one-line problem that stops it."""
    if case.label is not None and not case.label.is_file() and all(p.is_file() for p in case.images):
        # dataset.json lists a label that is not there: the case may be meant as images-only
        return (
            f"{case.label}: file not found — add it, or drop this case's 'label' key from dataset.json to use "
            f"{case.case_id} unlabelled (images only)"
        )
    try:
        image, label, geom = load_case(case, n_channels)
    except AlsegError as e:
        return str(e)
    for c in range(image.shape[0]):
        problem = intensity_problem(image[c])
        if problem:
            return f"{case.images[c] if len(case.images) > c else case.images[0]}: {problem}"
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
                    if info.layout == "msd":
                        out.append(
                            f"{f}: not listed in dataset.json — it is ignored; list it in 'training' or remove it"
                        )
                    elif not f.name.endswith(info.file_ending):
                        out.append(
                            f"{f}: does not end in file_ending '{info.file_ending}' — it is ignored; rename it or remove it"
                        )
                    else:
                        out.append(
                            f"{f}: no case in imagesTr has this label — it is ignored; add the image or remove it"
                        )
    return out


MIN_CASES = 5
"""nnU-Net's 5-fold split (one fold is the test set) needs at least this many labelled cases."""


def _labels_example(info: DatasetInfo, n: int) -> str:
    """A consecutive ``labels`` entry in the dataset's own layout."""
    names = [info.labels.get(k, f"class{k}") for k in sorted(info.labels)][:n]
    if info.layout == "msd":
        return "{" + ", ".join(f'"{k}": "{name}"' for k, name in enumerate(names)) + "}"
    return "{" + ", ".join(f'"{name}": {k}' for k, name in enumerate(names)) + "}"


def _declared_problems(info: DatasetInfo) -> list[str]:
    """What dataset.json itself gets wrong (no image opened): endings, numTraining, labels."""
    js = info.root / "dataset.json"
    out = []
    if not info.training:
        if info.layout == "nnunet" and info.other_endings:
            found = sorted({f.name[len(f.name.split(".")[0]) :] for f in info.other_endings})
            out.append(
                f"{js}: no file in imagesTr ends in file_ending '{info.file_ending}', but {len(info.other_endings)} "
                f"end in {', '.join(repr(e) for e in found)} (e.g. {info.other_endings[0].name}) — set "
                f'"file_ending": "{found[0]}" in dataset.json or rename the files'
            )
        elif info.layout == "nnunet":
            out.append(
                f"{js}: imagesTr holds no case — add images named <case>_0000{info.file_ending} (one file per channel)"
            )
        else:
            out.append(f"{js}: the training list is empty — list at least 2 labelled cases")
        return out
    if info.num_training is not None:
        where = "'training' lists" if info.layout == "msd" else "imagesTr holds"
        if not isinstance(info.num_training, int) or info.num_training != len(info.training) + len(info.duplicates):
            n = len(info.training) + len(info.duplicates)
            out.append(
                f'{js}: numTraining is {info.num_training!r} but {where} {n} case(s) — set "numTraining": {n}'
                + (" or add the missing cases" if info.layout == "nnunet" else "")
            )
    keys = sorted(info.labels)
    if keys != list(range(len(keys))):
        renumber = ", ".join(f"{old} → {new}" for new, old in enumerate(keys) if old != new)
        out.append(
            f"{js}: labels must be consecutive integers 0..{len(keys) - 1} (nnU-Net requires it), found {keys} — "
            f"renumber {renumber} in the label files and declare 'labels': {_labels_example(info, len(keys))}"
        )
    return out


def check_dataset(info: DatasetInfo, workers: int | None = None, show_progress: bool = True) -> CheckResult:
    result = CheckResult()
    js = info.root / "dataset.json"
    result.problems.extend(_declared_problems(info))
    if not info.training:
        return result
    for d in info.duplicates:
        result.problems.append(f"{js}: case {d} is listed more than once — remove the duplicate entry")
    result.warnings.extend(_unlisted(info))
    labels = tuple(info.labels)
    jobs = [(c, info.n_channels, labels) for c in info.training]
    workers = workers or min(os.cpu_count() or 1, 8)
    if workers > 1 and len(jobs) > 8:
        with ProcessPoolExecutor(workers, **worker_pool_args()) as pool:  # workers die with this process
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
    elif len(info.training) < MIN_CASES:
        result.warnings.append(
            f"{js}: only {len(info.training)} labelled cases — 'alseg train' and 'alseg loop' split the cases into "
            f"nnU-Net's {MIN_CASES} folds and need at least {MIN_CASES}; add cases to train here"
        )
    unlabelled = [c.case_id for c in info.training if c.label is None]
    if unlabelled:
        shown = ", ".join(unlabelled[:5]) + (", ..." if len(unlabelled) > 5 else "")
        result.warnings.append(
            f"{js}: {len(unlabelled)} of {len(info.training)} training cases have no label file ({shown}) — "
            "images only: they join the pool for 'alseg loop --oracle files' (a person annotates them); the "
            "labelled cases are the test cases unless --test-cases names others"
        )
    if result.cases and not result.problems and len(unlabelled) < len(info.training):
        dims = {len(c.shape) for c in result.cases}
        flat = [c for c in result.cases if min(c.shape) == 1]
        if len(dims) > 1:
            result.problems.append(
                f"{js}: cases mix dimensionalities {sorted(dims)} — all images must be 3D (or all single-slice 2D)"
            )
        elif flat and len(flat) < len(result.cases):
            c = flat[0]
            result.problems.append(
                f"{js}: case {c.case_id} is a single slice ({' x '.join(map(str, c.shape))}) but "
                f"{len(result.cases) - len(flat)} case(s) are 3D volumes — a dataset is all 3D or all 2D; "
                f"remove {'it from training' if info.layout == 'msd' else 'its files from imagesTr/labelsTr'} or "
                "convert it"
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
