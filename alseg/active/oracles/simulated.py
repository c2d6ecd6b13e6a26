"""The simulated oracle: reveals the ground truth of each item from the preprocessing cache."""

from __future__ import annotations

from typing import Callable

import numpy as np

from alseg.active.oracles.base import Annotation, ModelSource, OracleContext
from alseg.data.pool import Pool

__all__ = ["SimulatedOracle"]


class SimulatedOracle:
    """Reveals the ground truth of each item from the preprocessing cache."""

    name = "simulated"
    reveals_ground_truth = True
    waits_for_person = False

    @classmethod
    def build(cls, ctx: OracleContext) -> "SimulatedOracle":
        return cls(ctx.pool, ctx.workspace.ground_truth)

    def __init__(self, pool: Pool, ground_truth: Callable[[str], np.ndarray]):
        self.pool = pool
        self.ground_truth = ground_truth

    def annotate(self, round_: int, indices: np.ndarray, model: ModelSource = None) -> Annotation:
        masks: dict[int, np.ndarray] = {}
        for i in sorted(int(i) for i in indices):
            seg = self.ground_truth(self.pool[i].case_id)
            masks[i] = np.asarray(seg[tuple(slice(a, b) for a, b in self.pool[i].box)], dtype=np.uint8)
        return Annotation(masks, [], [])

    def folder(self, round_: int) -> None:
        return None

    def guide(self, round_: int) -> None:
        return None

    def waiting_cases(self) -> list[str]:
        return []
