"""Learning-curve maths: normalised AUC, items needed to reach a Dice target, seed-aligned curves."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import reduce

import numpy as np
from scipy import stats

from alseg.report.runs import RunRecord

__all__ = [
    "CONFIDENCE",
    "Curve",
    "X_AXES",
    "common_rounds",
    "full_data_dice",
    "items_to_reach",
    "learning_curves",
    "mean_std_ci",
    "normalised_auc",
]

CONFIDENCE = 0.95
"""Two-sided level of the Student-t band drawn around the mean curve."""


def normalised_auc(x: Sequence[float], y: Sequence[float]) -> float:
    """Trapezoid area under y(x) divided by the x range, so a constant curve y=c scores c.

    Normalising makes curves over different budgets comparable; a single point (or a zero x
    range) has no width, so its score is the mean y.
    """
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if xs.shape != ys.shape or xs.ndim != 1 or xs.size == 0:
        raise ValueError(f"x and y must be non-empty 1-D arrays of equal length, got {xs.shape} and {ys.shape}")
    order = np.argsort(xs, kind="stable")
    xs, ys = xs[order], ys[order]
    width = xs[-1] - xs[0]
    if width == 0:
        return float(ys.mean())
    return float(np.trapezoid(ys, xs) / width)


def items_to_reach(x: Sequence[float], y: Sequence[float], target: float) -> float | None:
    """First x at which y reaches ``target``, interpolating linearly between rounds; None if never."""
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if xs.shape != ys.shape or xs.ndim != 1:
        raise ValueError(f"x and y must be 1-D arrays of equal length, got {xs.shape} and {ys.shape}")
    reached = np.flatnonzero(ys >= target)
    if reached.size == 0:
        return None
    k = int(reached[0])
    if k == 0:
        return float(xs[0])
    x0, x1, y0, y1 = xs[k - 1], xs[k], ys[k - 1], ys[k]
    if not np.isfinite(y0):
        return float(x1)
    return float(x0 + (target - y0) / (y1 - y0) * (x1 - x0))


def mean_std_ci(values: np.ndarray, confidence: float = CONFIDENCE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, sample std and Student-t CI half-width over axis 0 (seeds); std and CI are 0 for one seed."""
    n = values.shape[0]
    mean = values.mean(axis=0)
    if n < 2:
        zeros = np.zeros_like(mean)
        return mean, zeros, zeros
    std = values.std(axis=0, ddof=1)
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * std / np.sqrt(n)
    return mean, std, half


@dataclass(frozen=True)
class Curve:
    """One strategy on one setting: every seed's values on the rounds all its seeds reached."""

    setting: str
    strategy: str
    seeds: tuple[int, ...]
    rounds: np.ndarray
    n_items: np.ndarray
    """(seeds, rounds) labelled items; identical across seeds when the loop is deterministic."""
    dice: np.ndarray
    """(seeds, rounds) mean foreground Dice."""
    dice_per_class: dict[str, np.ndarray]
    batch_uncertainty: np.ndarray
    """(seeds, rounds); NaN at round 0 and where not recorded."""
    n_voxels: np.ndarray
    """(seeds, rounds) annotated voxels (``n_labelled_voxels``)."""
    x_axis: str = "items"
    """What the curve is drawn and integrated against: ``items`` (labelled items) or ``voxels``
    (annotated voxels: the cost when item sizes differ, as nnActive counts it)."""

    @property
    def x_per_seed(self) -> np.ndarray:
        """(seeds, rounds) values of the x axis: labelled items or annotated voxels."""
        return self.n_voxels if self.x_axis == "voxels" else self.n_items

    @property
    def x(self) -> np.ndarray:
        """The x axis per round, averaged over seeds (labelled items or annotated voxels)."""
        return self.x_per_seed.mean(axis=0)

    def restricted(self, rounds: np.ndarray) -> Curve:
        """The same curve on a subset of its rounds, so settings compare strategies on equal budgets."""
        keep = np.isin(self.rounds, rounds)
        return Curve(
            setting=self.setting,
            strategy=self.strategy,
            seeds=self.seeds,
            rounds=self.rounds[keep],
            n_items=self.n_items[:, keep],
            dice=self.dice[:, keep],
            dice_per_class={k: v[:, keep] for k, v in self.dice_per_class.items()},
            batch_uncertainty=self.batch_uncertainty[:, keep],
            n_voxels=self.n_voxels[:, keep],
            x_axis=self.x_axis,
        )

    def seed_rows(self, seeds: Sequence[int]) -> np.ndarray:
        """Dice rows of the given seeds, in that order (pairs seeds across strategies for t-tests)."""
        return self.dice[[self.seeds.index(s) for s in seeds]]


def common_rounds(round_arrays: Iterable[np.ndarray]) -> np.ndarray:
    """Rounds present in every array (unfinished runs shorten the comparison, they do not break it)."""
    arrays = list(round_arrays)
    if not arrays:
        return np.array([], dtype=int)
    return reduce(np.intersect1d, arrays).astype(int)


def _stack(runs: Sequence[RunRecord], rounds: np.ndarray, field: str) -> np.ndarray:
    return np.stack([getattr(r, field)[np.isin(r.rounds, rounds)] for r in runs])


X_AXES = ("items", "voxels")
"""Learning-curve x axes: labelled items (the paper's) or annotated voxels (nnActive's)."""


def learning_curves(runs: Iterable[RunRecord], x_axis: str = "items") -> dict[str, dict[str, Curve]]:
    """Group active runs by setting and strategy, aligning seeds on the rounds they all reached;
    ``x_axis`` (:data:`X_AXES`) is what the curves are drawn and integrated against."""
    if x_axis not in X_AXES:
        raise ValueError(f"x_axis must be one of {', '.join(X_AXES)}, got {x_axis!r}")
    groups: dict[tuple[str, str], list[RunRecord]] = defaultdict(list)
    for run in runs:
        if not run.is_full:
            groups[(run.setting, run.strategy)].append(run)
    curves: dict[str, dict[str, Curve]] = defaultdict(dict)
    for (setting, strategy), members in sorted(groups.items()):
        members = sorted(members, key=lambda r: r.seed)
        rounds = common_rounds(r.rounds for r in members)
        class_names = sorted(set.intersection(*(set(r.dice_per_class) for r in members)))
        curves[setting][strategy] = Curve(
            setting=setting,
            strategy=strategy,
            seeds=tuple(r.seed for r in members),
            rounds=rounds,
            n_items=_stack(members, rounds, "n_items"),
            dice=_stack(members, rounds, "dice_mean"),
            dice_per_class={
                name: np.stack([r.dice_per_class[name][np.isin(r.rounds, rounds)] for r in members])
                for name in class_names
            },
            batch_uncertainty=_stack(members, rounds, "batch_uncertainty"),
            n_voxels=_stack(members, rounds, "n_voxels"),
            x_axis=x_axis,
        )
    return dict(curves)


def full_data_dice(runs: Iterable[RunRecord]) -> dict[str, float]:
    """Reference Dice per dataset and configuration (:attr:`RunRecord.data_setting`, whatever the
    item size): the last row of each full-data run, averaged over such runs."""
    finals: dict[str, list[float]] = defaultdict(list)
    for run in runs:
        if run.is_full:
            finals[run.data_setting].append(float(run.dice_mean[-1]))
    return {setting: float(np.mean(values)) for setting, values in finals.items()}
