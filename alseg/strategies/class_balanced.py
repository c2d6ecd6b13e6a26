"""Class-balanced predictive entropy (nnActive, TMLR 2025) and ClaSP PE (TMLR 2026).

Plain predictive entropy spends a batch on whatever class the network is most unsure about,
often the largest; a rare foreground class can go unqueried for rounds. Class-balanced PE
splits the budget: a share ``fg_ratio`` (nnActive: 0.66) evenly over the foreground classes,
each taking the items where *that* class carries the most predictive entropy, the rest by plain
predictive entropy.

Per item, class ``c``'s score is the mean over the item's pixels of ``H(p̄) · p̄(c)`` (nnActive's
class-specific entropy channels) and the plain score is the mean of ``H(p̄)``; ``p̄`` is the mean
of the T MC dropout passes (nnActive averages its ensemble of folds).

The split, as nnActive composes its query: ``n_fg = floor(B · fg_ratio)`` items for the
foreground classes, ``n_fg // K`` each and one more for ``n_fg mod K`` classes drawn at random;
``B - n_fg`` by plain PE. The lists take their items in a random order of lists, each its top
items among those not taken yet, so no item is chosen twice.

ClaSP PE (class-stratified PE with scheduled power noising) draws each list's items with
probability ∝ score^β (:mod:`alseg.strategies.noising`) instead of taking its top, β following
nnActive's exponential schedule over the planned rounds, 1 in the first selection round to 100
in the last: exploration early, nearly top-B late.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import Field

from alseg.scoring.pool_inference import score_pool
from alseg.strategies.base import Artefacts, Selection, SelectionContext, Strategy, StrategyOptions
from alseg.strategies.noising import exponential_schedule, gumbel_top_b, power_keys

__all__ = [
    "ClassBalancedOptions",
    "ClassBalancedArtefacts",
    "ClassBalancedPEStrategy",
    "ClaspPEOptions",
    "ClaspPEStrategy",
    "PLAIN",
    "class_balanced_select",
    "class_quotas",
    "scheduled_beta",
]

PLAIN = -1
"""The list of plain predictive entropy, beside the foreground classes 1 … K-1 (nnActive's key)."""

NNACTIVE = "Lüth et al., nnActive, TMLR 2025"
CLASP = "ClaSP PE, TMLR 2026 (arXiv 2601.13677); nnActive's class_power_pe66_exp"


def class_quotas(budget: int, n_foreground: int, fg_ratio: float, rng: np.random.Generator) -> dict[int, int]:
    """Items per list: ``{1: …, …, K-1: …, PLAIN: …}`` summing to ``budget`` (see the module docstring);
    the classes that get one item more are the first ``n_fg mod K`` of a random permutation."""
    if n_foreground < 1:
        raise ValueError("class-balanced selection needs at least one foreground class")
    n_fg = int(budget * fg_ratio)
    quotas = {c: n_fg // n_foreground for c in range(1, n_foreground + 1)}
    quotas[PLAIN] = budget - n_fg
    for c in rng.permutation(np.arange(1, n_foreground + 1))[: n_fg % n_foreground]:
        quotas[int(c)] += 1
    return quotas


def class_balanced_select(
    class_scores: np.ndarray,
    plain_scores: np.ndarray,
    budget: int,
    fg_ratio: float,
    rng: np.random.Generator,
    beta: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the batch and, for each, the list that took it (a class, or :data:`PLAIN`).

    ``class_scores`` ``(N, K)`` holds the foreground classes' scores (class ``c`` in column
    ``c - 1``), ``plain_scores`` ``(N,)`` the plain PE. Draws, in this order from ``rng``: the
    quotas (:func:`class_quotas`), the order in which the lists take, and, with ``beta``, one
    standard Gumbel draw per list and item (lists in the order 1 … K, PLAIN) for power noising.
    """
    class_scores = np.asarray(class_scores, dtype=np.float64)
    plain_scores = np.asarray(plain_scores, dtype=np.float64)
    n, k = class_scores.shape
    budget = min(int(budget), n)
    quotas = class_quotas(budget, k, fg_ratio, rng)
    lists = [*range(1, k + 1), PLAIN]
    order = [lists[i] for i in rng.permutation(len(lists))]
    scores = {c: class_scores[:, c - 1] for c in range(1, k + 1)}
    scores[PLAIN] = plain_scores
    keys, ties = {}, {}
    for c in lists:
        if beta is None:
            keys[c], ties[c] = scores[c], None
        else:
            g = rng.gumbel(size=n)
            keys[c], ties[c] = power_keys(scores[c], beta, g), g
    taken = np.zeros(n, dtype=bool)
    positions: list[int] = []
    owner: list[int] = []
    for c in order:
        free = np.flatnonzero(~taken)
        tie = None if ties[c] is None else ties[c][free]
        pick = free[gumbel_top_b(keys[c][free], quotas[c], tie)]
        taken[pick] = True
        positions.extend(int(p) for p in pick)
        owner.extend([c] * len(pick))
    return np.asarray(positions, dtype=np.int64), np.asarray(owner, dtype=np.int64)


def scheduled_beta(round_index: int, planned_rounds: int, start: float, end: float) -> float:
    """β of selection round ``round_index`` (1-based) of ``planned_rounds``: step ``round_index - 1``
    of :func:`exponential_schedule` (the last step for rounds beyond the plan)."""
    steps = exponential_schedule(max(int(planned_rounds), 1), start, end)
    return float(steps[min(max(int(round_index), 1), len(steps)) - 1])


class ClassBalancedOptions(StrategyOptions):
    fg_ratio: float = Field(
        0.66, ge=0.0, le=1.0, description="share of the budget split over the foreground classes, in [0, 1]"
    )


@dataclass(frozen=True)
class ClassBalancedArtefacts(Artefacts):
    fg_ratio: float
    selected_for: list[int]
    """Per selected item, the class whose list took it (-1: plain predictive entropy)."""
    beta: float | None = None


class ClassBalancedPEStrategy(Strategy):
    """Class-balanced predictive entropy (nnActive's ``class_pe66``): see the module docstring."""

    name = "cla-pe"
    Options = ClassBalancedOptions
    options: ClassBalancedOptions
    source = NNACTIVE

    def beta(self, ctx: SelectionContext) -> float | None:
        """The power-noising exponent of this round; None takes each list's top items."""
        return None

    def select(self, ctx: SelectionContext) -> Selection:
        s = score_pool(ctx, mc=True, deterministic=False, passes_per_forward=self.options.mc_passes_per_forward)
        assert s.class_entropy is not None and s.predictive_entropy is not None
        beta = self.beta(ctx)
        fg_scores = s.class_entropy[:, 1:]
        pos, owner = class_balanced_select(
            fg_scores, s.predictive_entropy, ctx.budget, self.options.fg_ratio, ctx.rng, beta
        )
        chosen = [
            float(s.predictive_entropy[p]) if c == PLAIN else float(fg_scores[p, c - 1]) for p, c in zip(pos, owner)
        ]
        return Selection(
            s.indices[pos],
            chosen,
            seconds={"score": s.seconds},
            artefacts=ClassBalancedArtefacts(self.options.fg_ratio, [int(c) for c in owner], beta),
        )


class ClaspPEOptions(ClassBalancedOptions):
    beta_start: float = Field(
        1.0, gt=0.0, allow_inf_nan=False, description="a finite beta > 0 for the first selection round"
    )
    beta_end: float = Field(100.0, gt=0.0, allow_inf_nan=False, description="a finite beta > 0 for the last round")


class ClaspPEStrategy(ClassBalancedPEStrategy):
    """ClaSP PE: class-balanced PE with power noising on a β schedule over the planned rounds
    (nnActive's ``class_power_pe66_exp``)."""

    name = "clasp-pe"
    Options = ClaspPEOptions
    options: ClaspPEOptions
    source = CLASP

    def beta(self, ctx: SelectionContext) -> float | None:
        return scheduled_beta(ctx.round_index, ctx.planned_rounds, self.options.beta_start, self.options.beta_end)
