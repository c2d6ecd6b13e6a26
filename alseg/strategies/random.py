"""Random baselines: uniform (the paper's) and foreground-aware (nnActive's strongest baseline)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import Field

from alseg.strategies.base import Artefacts, Selection, SelectionContext, Strategy, StrategyOptions

__all__ = [
    "ForegroundRandom33Options",
    "ForegroundRandom33Strategy",
    "ForegroundRandomOptions",
    "ForegroundRandomStrategy",
    "RandomStrategy",
]


class RandomStrategy(Strategy):
    """B items uniformly from the unlabelled pool."""

    name = "random"
    source = "Föllmer et al., MIDL 2024 (baseline)"

    def select(self, ctx: SelectionContext) -> Selection:
        idx = ctx.rng.choice(ctx.unlabelled, size=min(ctx.budget, len(ctx.unlabelled)), replace=False)
        return Selection(np.sort(idx), [None] * len(idx))


class ForegroundRandomOptions(StrategyOptions):
    fg_share: float = Field(
        2 / 3, ge=0.0, le=1.0, description="share of the budget drawn among foreground items, in [0, 1]"
    )


@dataclass(frozen=True)
class ForegroundArtefacts(Artefacts):
    n_foreground_draws: int


class ForegroundRandomStrategy(Strategy):
    """A share of the budget (default 2/3) among items containing foreground, the rest uniform.

    nnActive (DKFZ, 2025) found no uncertainty method reliably beats it. It reads the ground
    truth to know which items hold foreground, so it only exists in simulation.

    nnActive's ``random-label`` has the same 2/3 share (of its three anchor rules, ``seg`` and
    ``border`` anchor a patch on a foreground voxel, ``all`` anywhere). It differs in how the
    foreground draw is made: nnActive anchors a patch at a random voxel of a random foreground
    class, image after image; alseg's items are fixed, so it draws uniformly among the items
    that contain foreground.
    """

    name = "random-fg"
    simulation_only = True
    source = "Lüth et al., nnActive, TMLR 2025 (random-label: 2/3 foreground)"
    Options = ForegroundRandomOptions
    options: ForegroundRandomOptions

    def select(self, ctx: SelectionContext) -> Selection:
        if ctx.ground_truth is None:
            raise RuntimeError("random-fg needs the ground truth (simulated oracle)")
        share = self.options.fg_share
        unl = ctx.unlabelled
        budget = min(ctx.budget, len(unl))
        has_fg = np.zeros(len(unl), dtype=bool)
        by_case: dict[str, list[int]] = {}
        for j, i in enumerate(unl):
            by_case.setdefault(ctx.pool[i].case_id, []).append(j)
        for case_id, js in by_case.items():
            seg = ctx.ground_truth(case_id)
            for j in js:
                has_fg[j] = bool((ctx.pool.patch(seg, int(unl[j])) > 0).any())
        fg = unl[has_fg]
        n_fg = min(int(round(share * budget)), len(fg))
        chosen = ctx.rng.choice(fg, size=n_fg, replace=False) if n_fg else np.array([], dtype=np.int64)
        rest = np.setdiff1d(unl, chosen)
        more = ctx.rng.choice(rest, size=budget - n_fg, replace=False)
        idx = np.sort(np.concatenate([chosen, more]).astype(np.int64))
        fg_set = set(fg.tolist())
        return Selection(idx, [1.0 if i in fg_set else 0.0 for i in idx], artefacts=ForegroundArtefacts(n_fg))


class ForegroundRandom33Options(ForegroundRandomOptions):
    fg_share: float = Field(
        1 / 3, ge=0.0, le=1.0, description="share of the budget drawn among foreground items, in [0, 1]"
    )


class ForegroundRandom33Strategy(ForegroundRandomStrategy):
    """``random-fg`` with a third of the budget among foreground items: nnActive's second
    foreground-aware baseline ``random-label2`` (anchor rules ``all`` x 4, ``seg``, ``border``)."""

    name = "random-fg33"
    Options = ForegroundRandom33Options
    options: ForegroundRandom33Options
    source = "Lüth et al., nnActive, TMLR 2025 (random-label2: 1/3 foreground)"
