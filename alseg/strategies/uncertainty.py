"""Uncertainty baselines (paper §4.2, Appendix C): Max Entropy, Mean STD, BALD and Stochastic Batches.

Each is a small class in BaaL's manner: one score per item from pool inference
(:func:`alseg.scoring.pool_inference.score_pool`), then a reduction to a batch — the B highest
scores, or for Stochastic Batches the best of Q random batches. The per-pixel maths lives in
:mod:`alseg.scoring.scores`, the pass over the pool in :mod:`alseg.scoring.pool_inference`.

Round records: ``seconds.score`` (the pass over the pool) and ``score`` (which per-item score).
The batch uncertainty of the paper's Fig. 5 is measured for every strategy alike by
:func:`alseg.strategies.select_batch`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from pydantic import Field

from alseg.scoring.pool_inference import PoolScores, score_pool
from alseg.strategies.base import Artefacts, Selection, SelectionContext, Strategy, StrategyOptions

__all__ = [
    "BALDStrategy",
    "MaxEntropyStrategy",
    "MeanSTDStrategy",
    "ScoreArtefacts",
    "StochasticBatchesOptions",
    "StochasticBatchesStrategy",
    "top_b",
]


def top_b(scores: np.ndarray, budget: int) -> np.ndarray:
    """Positions of the ``budget`` highest scores, highest first; ties go to the lower position
    (the pool's order), so the result does not depend on the sort algorithm."""
    s = np.asarray(scores, dtype=np.float64)
    k = min(int(budget), len(s))
    return np.lexsort((np.arange(len(s)), -s))[:k]


@dataclass(frozen=True)
class ScoreArtefacts(Artefacts):
    score: str
    """Which per-item score ranks the items."""


class _TopBUncertainty(Strategy):
    """Score every unlabelled item with one :class:`PoolScores` field, select the B highest."""

    field: ClassVar[str] = ""
    mc: ClassVar[bool] = True

    def select(self, ctx: SelectionContext) -> Selection:
        scores: PoolScores = score_pool(
            ctx, mc=self.mc, deterministic=not self.mc, passes_per_forward=self.options.mc_passes_per_forward
        )
        values = getattr(scores, self.field)
        pos = top_b(values, ctx.budget)
        return Selection(
            scores.indices[pos],
            [float(v) for v in values[pos]],
            seconds={"score": scores.seconds},
            artefacts=ScoreArtefacts(self.field),
        )


class MaxEntropyStrategy(_TopBUncertainty):
    """Max Entropy: the B items of highest mean pixel entropy of the deterministic
    (dropout-off) prediction, one pass over the pool, as the original code does."""

    name = "entropy"
    source = "Shannon entropy; Föllmer et al., MIDL 2024"
    field = "entropy"
    mc = False


class MeanSTDStrategy(_TopBUncertainty):
    """Mean STD (Kendall et al. 2017; paper §4.2): the B items of highest mean over pixels of
    ``mean_c std_t p_t(c)`` over T MC dropout passes."""

    name = "meanstd"
    source = "Kendall et al. 2017; Föllmer et al., MIDL 2024"
    field = "mean_std"


class BALDStrategy(_TopBUncertainty):
    """BALD (Gal et al. 2017; paper §4.2): the B items of highest mean over pixels of
    ``H(p̄) - mean_t H(p_t)`` over T MC dropout passes."""

    name = "bald"
    source = "Gal et al., ICML 2017; Föllmer et al., MIDL 2024"
    field = "bald"


class StochasticBatchesOptions(StrategyOptions):
    stb_batches: int | None = Field(None, ge=1, description="a positive number of random batches (default |U| / B)")


@dataclass(frozen=True)
class StochasticBatchesArtefacts(Artefacts):
    score: str
    stb_batches: int
    stb_best_batch_score: float
    stb_median_batch_score: float


class StochasticBatchesStrategy(Strategy):
    """Stochastic Batches (Gaillochet et al. 2023; paper §4.2): draw ``Q = floor(|U| / B)``
    random batches of B distinct items (independently, so batches may share items), score each
    by the sum of its items' deterministic entropy, select the highest-scoring batch.

    ``stb_batches`` overrides Q. The record keeps Q and the best and median batch scores, so
    one can see how much the choice among random batches bought.
    """

    name = "stochastic-batches"
    source = "Gaillochet et al. 2023; Föllmer et al., MIDL 2024"
    Options = StochasticBatchesOptions
    options: StochasticBatchesOptions

    def select(self, ctx: SelectionContext) -> Selection:
        scores = score_pool(ctx, mc=False, deterministic=True)
        entropy = scores.entropy.astype(np.float64)
        n = len(entropy)
        b = min(int(ctx.budget), n)
        t0 = time.perf_counter()
        q = self.options.stb_batches or max(n // max(b, 1), 1)
        batches = (
            np.stack([ctx.rng.choice(n, size=b, replace=False) for _ in range(q)]) if b else np.zeros((q, 0), np.int64)
        )
        batch_scores = entropy[batches].sum(axis=1)
        best = int(np.argmax(batch_scores))  # first of equal maxima
        pos = np.sort(batches[best])
        return Selection(
            scores.indices[pos],
            [float(v) for v in entropy[pos]],
            seconds={"score": scores.seconds, "draw_batches": time.perf_counter() - t0},
            artefacts=StochasticBatchesArtefacts(
                "entropy", q, float(batch_scores[best]), float(np.median(batch_scores))
            ),
        )
