"""Pairwise penalty matrix (Ash et al. 2020, BADGE; Ji et al. 2023), as in Föllmer et al. 2024 Fig. 2D.

For every dataset d and round l, strategy i *beats* j when a two-sided paired t-test over
repeated runs (seeds paired by index) gives p < alpha and mean_i > mean_j; each win adds
1/L_d, so a dataset contributes at most 1 to any entry whatever its number of rounds.
Normalisation (Ash et al.): the summed entries are divided by the number of datasets and
written as percentages, so P[i, j] = 100 means i beat j significantly in every round of every
dataset. Φ_j is the mean of column j over all N rows (the diagonal is 0, as in Ash et al.):
the average share of rounds in which strategy j was beaten; lower is better.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from scipy.stats import ttest_rel

__all__ = ["ALPHA", "column_phi", "pairwise_wins", "penalty_matrix"]

ALPHA = 0.05


def pairwise_wins(scores: np.ndarray, alpha: float = ALPHA) -> np.ndarray:
    """Win weights for one dataset: W[i, j] = (number of rounds where i significantly beats j) / L.

    ``scores`` is (strategies, seeds, rounds), seeds paired across strategies. Identical samples
    (zero-variance differences, or a single seed) give p = NaN and count as no win.
    """
    scores = np.asarray(scores, dtype=float)
    if scores.ndim != 3:
        raise ValueError(f"scores must be (strategies, seeds, rounds), got shape {scores.shape}")
    n_strategies, _, n_rounds = scores.shape
    if n_rounds == 0:
        return np.zeros((n_strategies, n_strategies))
    a, b = np.broadcast_arrays(scores[:, None], scores[None, :])  # (S, S, seeds, rounds)
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        p = ttest_rel(a, b, axis=2).pvalue  # (S, S, rounds)
        better = (a - b).mean(axis=2) > 0
    wins = (p < alpha) & better  # the diagonal compares equal samples: never a win
    return wins.sum(axis=2) / n_rounds


def penalty_matrix(per_dataset: Sequence[np.ndarray], alpha: float = ALPHA) -> np.ndarray:
    """P in percent: 100 × Σ_d W_d / D over D datasets, each (strategies, seeds_d, rounds_d)."""
    if not per_dataset:
        raise ValueError("penalty_matrix needs at least one dataset")
    sizes = {np.shape(s)[0] for s in per_dataset}
    if len(sizes) != 1:
        raise ValueError(f"every dataset must hold the same strategies in the same order, got counts {sorted(sizes)}")
    total = sum(pairwise_wins(s, alpha) for s in per_dataset)
    return 100.0 * total / len(per_dataset)


def column_phi(matrix: np.ndarray) -> np.ndarray:
    """Φ_j = mean of column j: how often strategy j is beaten on average (lower is better)."""
    return np.asarray(matrix, dtype=float).mean(axis=0)
