"""Power and softrank acquisition (Kirsch et al., TMLR 2023), as nnActive (TMLR 2025) runs them.

Each scores the pool as its top-B twin does (:mod:`alseg.strategies.uncertainty`), then samples
the batch instead of taking the B highest scores (:mod:`alseg.strategies.noising`):

* ``power-bald`` / ``power-pe``: probability ∝ score^β, from BALD or from the predictive
  entropy ``H(p̄)`` of the T MC passes (nnActive averages an ensemble of folds; alseg's
  Bayesian approximation is MC dropout, so ``p̄`` is the MC mean);
* ``softrank-bald``: probability ∝ rank^(−β) of the BALD score.

Scores are noised per item, after the pixel mean (as nnActive does: noise per voxel would
average out). The round record keeps which score and which β were used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from pydantic import Field

from alseg.scoring.pool_inference import PoolScores, score_pool
from alseg.strategies.base import Artefacts, Selection, SelectionContext, Strategy, StrategyOptions
from alseg.strategies.noising import gumbel_top_b, power_keys, softrank_keys

__all__ = [
    "NoisedOptions",
    "NoisedArtefacts",
    "PowerBALDStrategy",
    "PowerPEStrategy",
    "SoftrankBALDStrategy",
]

KIRSCH = "Kirsch et al., Stochastic Batch Acquisition, TMLR 2023; as in nnActive (Lüth et al., TMLR 2025)"


class NoisedOptions(StrategyOptions):
    beta: float = Field(
        1.0, ge=0.0, allow_inf_nan=False, description="a finite exponent beta >= 0 (0: uniform; large: top-B)"
    )


@dataclass(frozen=True)
class NoisedArtefacts(Artefacts):
    score: str
    """Which per-item score was noised."""
    noising: str
    """``power`` or ``softrank``."""
    beta: float


class _NoisedUncertainty(Strategy):
    """Score the unlabelled items with one MC field of :class:`PoolScores`, then draw B of them
    by Gumbel top-k on the noised keys."""

    field: ClassVar[str] = ""
    noising: ClassVar[str] = "power"
    Options = NoisedOptions
    options: NoisedOptions
    source = KIRSCH

    def select(self, ctx: SelectionContext) -> Selection:
        scores: PoolScores = score_pool(
            ctx, mc=True, deterministic=False, passes_per_forward=self.options.mc_passes_per_forward
        )
        values = np.asarray(getattr(scores, self.field), dtype=np.float64)
        beta = float(self.options.beta)
        gumbel = ctx.rng.gumbel(size=len(values))
        if self.noising == "power":
            pos = gumbel_top_b(power_keys(values, beta, gumbel), ctx.budget, gumbel)
        else:  # softrank keys are distinct: no tie to break
            pos = gumbel_top_b(softrank_keys(values, beta, gumbel), ctx.budget)
        return Selection(
            scores.indices[pos],
            [float(v) for v in values[pos]],
            seconds={"score": scores.seconds},
            artefacts=NoisedArtefacts(self.field, self.noising, beta),
        )


class PowerBALDStrategy(_NoisedUncertainty):
    """PowerBALD: B items drawn without replacement with probability ∝ BALD^β."""

    name = "power-bald"
    field = "bald"


class PowerPEStrategy(_NoisedUncertainty):
    """Power predictive entropy: B items drawn with probability ∝ H(p̄)^β, ``p̄`` the mean of
    the T MC dropout passes."""

    name = "power-pe"
    field = "predictive_entropy"


class SoftrankBALDStrategy(_NoisedUncertainty):
    """SoftrankBALD: B items drawn with probability ∝ rank^(−β) of their BALD score."""

    name = "softrank-bald"
    field = "bald"
    noising = "softrank"
