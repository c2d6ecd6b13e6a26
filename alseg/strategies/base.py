"""What every strategy receives and returns.

A strategy sees the model of the previous round, the pool, which items are labelled, the
budget and a seeded generator, and returns ``budget`` distinct unlabelled item indices with
a score per item (None where a strategy has no per-item score) plus anything it wants kept
in the round record (query set, gains, timings).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import numpy as np
import torch

from alseg.data.pool import Pool


@dataclass
class SelectionContext:
    model: torch.nn.Module
    pool: Pool
    labelled: np.ndarray  # bool mask over pool items
    budget: int
    rng: np.random.Generator
    load_image: Callable[[str], np.ndarray]  # case id -> preprocessed image (C, z, y, x)
    labelled_voxels_per_class: np.ndarray  # annotated voxels per class, background included
    n_classes: int
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    mc_passes: int = 10
    dropout_mc: float = 0.1
    batch_size: int = 64
    options: dict[str, Any] = field(default_factory=dict)
    ground_truth: Callable[[str], np.ndarray] | None = None  # only for simulation-only strategies
    show_progress: bool = True

    @property
    def unlabelled(self) -> np.ndarray:
        return np.flatnonzero(~self.labelled)


@dataclass
class Selection:
    indices: np.ndarray
    scores: list[float | None]
    record: dict[str, Any] = field(default_factory=dict)


class Strategy(Protocol):
    name: str
    simulation_only: bool

    def select(self, ctx: SelectionContext) -> Selection: ...


def check_selection(sel: Selection, ctx: SelectionContext) -> Selection:
    """Invariants every strategy must keep; a violation is a bug, not a user error."""
    idx = np.asarray(sel.indices, dtype=np.int64)
    assert len(idx) == min(ctx.budget, int((~ctx.labelled).sum())), "wrong batch size"
    assert len(np.unique(idx)) == len(idx), "duplicate items in the batch"
    assert not ctx.labelled[idx].any(), "a labelled item was selected"
    assert len(sel.scores) == len(idx)
    sel.indices = idx
    return sel
