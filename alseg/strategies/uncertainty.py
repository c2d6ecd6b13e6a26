"""Uncertainty baselines (spec §2, §3): Max Entropy, Mean STD, BALD and Stochastic Batches.

Each is a small class in BaaL's manner: one score per item from the shared scoring engine
(:func:`alseg.strategies.scoring.score_pool`), then a reduction to a batch — the B highest
scores, or for Stochastic Batches the best of Q random batches. The per-pixel maths lives in
:mod:`alseg.strategies.scores`, the pass over the pool in :mod:`alseg.strategies.scoring`.

Round records: ``seconds.score`` (the pass over the pool), ``score`` (which per-item score),
``batch_uncertainty`` (the paper's Figure 5 measure, Σ over the batch of the foreground
class-wise MC std summed over pixels; for Max Entropy and Stochastic Batches it costs one
extra MC pass over the B selected items only).
"""

from __future__ import annotations

import time

import numpy as np

from alseg.strategies.base import Selection, SelectionContext
from alseg.strategies.registry import register
from alseg.strategies.scoring import PoolScores, batch_uncertainty, score_pool, selected_batch_uncertainty

__all__ = ["BALDStrategy", "MaxEntropyStrategy", "MeanSTDStrategy", "StochasticBatchesStrategy", "top_b"]


def top_b(scores: np.ndarray, budget: int) -> np.ndarray:
    """Positions of the ``budget`` highest scores, highest first; ties go to the lower position
    (the pool's order), so the result does not depend on the sort algorithm."""
    s = np.asarray(scores, dtype=np.float64)
    k = min(int(budget), len(s))
    return np.lexsort((np.arange(len(s)), -s))[:k]


class _TopBUncertainty:
    """Score every unlabelled item with one engine field, select the B highest."""

    name = ""
    simulation_only = False
    field = ""  # a PoolScores attribute
    mc = True

    def select(self, ctx: SelectionContext) -> Selection:
        scores: PoolScores = score_pool(ctx, mc=self.mc, deterministic=not self.mc)
        values = getattr(scores, self.field)
        pos = top_b(values, ctx.budget)
        t0 = time.perf_counter()
        if self.mc:
            bu = batch_uncertainty(scores.classwise_std[pos])
        else:
            bu = selected_batch_uncertainty(ctx, scores.indices[pos])
        return Selection(
            scores.indices[pos],
            [float(v) for v in values[pos]],
            {
                "score": self.field,
                "batch_uncertainty": bu,
                "seconds": {"score": scores.seconds, "batch_uncertainty": time.perf_counter() - t0},
            },
        )


@register("entropy")
class MaxEntropyStrategy(_TopBUncertainty):
    """Max Entropy (spec §2): the B items of highest mean pixel entropy of the deterministic
    (dropout-off) prediction; one pass over the pool."""

    name = "entropy"
    field = "entropy"
    mc = False


@register("meanstd")
class MeanSTDStrategy(_TopBUncertainty):
    """Mean STD (Kendall et al. 2017; spec §2): the B items of highest mean over pixels of
    ``mean_c std_t p_t(c)`` over T MC dropout passes."""

    name = "meanstd"
    field = "mean_std"


@register("bald")
class BALDStrategy(_TopBUncertainty):
    """BALD (Gal et al. 2017; spec §2): the B items of highest mean over pixels of
    ``H(p̄) - mean_t H(p_t)`` over T MC dropout passes."""

    name = "bald"
    field = "bald"


@register("stochastic-batches")
class StochasticBatchesStrategy:
    """Stochastic Batches (Gaillochet et al. 2023; spec §3): draw ``Q = floor(|U| / B)`` random
    batches of B distinct items (independently, so batches may share items), score each by the
    sum of its items' deterministic entropy, select the highest-scoring batch.

    ``--option stb_batches=Q`` overrides Q. The record keeps Q and the best and median batch
    scores, so one can see how much the choice among random batches bought.
    """

    name = "stochastic-batches"
    simulation_only = False

    def select(self, ctx: SelectionContext) -> Selection:
        scores = score_pool(ctx, mc=False, deterministic=True)
        entropy = scores.entropy.astype(np.float64)
        n = len(entropy)
        b = min(int(ctx.budget), n)
        t0 = time.perf_counter()
        q = int(ctx.options.get("stb_batches", max(n // max(b, 1), 1)))
        if q < 1:
            raise ValueError(f"stb_batches must be >= 1, got {q}")
        batches = np.stack([ctx.rng.choice(n, size=b, replace=False) for _ in range(q)]) if b else np.zeros((q, 0), np.int64)
        batch_scores = entropy[batches].sum(axis=1)
        best = int(np.argmax(batch_scores))  # first of equal maxima
        pos = np.sort(batches[best])
        t_draw = time.perf_counter() - t0
        t1 = time.perf_counter()
        bu = selected_batch_uncertainty(ctx, scores.indices[pos])
        return Selection(
            scores.indices[pos],
            [float(v) for v in entropy[pos]],
            {
                "score": "entropy",
                "stb_batches": q,
                "stb_best_batch_score": float(batch_scores[best]),
                "stb_median_batch_score": float(np.median(batch_scores)),
                "batch_uncertainty": bu,
                "seconds": {"score": scores.seconds, "draw_batches": t_draw, "batch_uncertainty": time.perf_counter() - t1},
            },
        )
