"""What every strategy receives, is configured with, and returns.

A strategy (BaaL's manner) is one class with one method to override, :meth:`Strategy.select`,
and a pydantic options model (:class:`StrategyOptions` subclass, unknown keys forbidden) whose
fields are its typed settings. It sees the model of the previous round, the pool, which items
are labelled, the budget and a seeded generator (:class:`SelectionContext`), and returns a
typed :class:`Selection`: ``budget`` distinct unlabelled item indices, a score per item, the
timings and, where a strategy has them, typed artefacts (query set, gains, embeddings for the
t-SNE map) that become keys of the round record.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterator, Protocol, Sequence, runtime_checkable

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from alseg.data.pool import Pool
from alseg.scoring.sharding import ShardGroup

__all__ = [
    "DISAGREEMENT_SCORES",
    "Artefacts",
    "EmbeddingMap",
    "FeatureNetwork",
    "Selection",
    "SelectionContext",
    "Strategy",
    "StrategyOptions",
    "check_selection",
]


# ----------------------------------------------------------------------------- the network
@runtime_checkable
class FeatureNetwork(Protocol):
    """What a strategy needs from a segmentation network, so that it can run on another
    project's network (alseg's :class:`alseg.model.network.SegNetwork` is one).

    * ``forward(x)``: logits ``(N, K, *S)`` (a list whose first entry is that, under deep
      supervision); every strategy's probabilities are its softmax.
    * ``bottleneck_features(x, valid, rows)``: ``(N, F)`` pooled activation of the deepest
      encoder stage, padding (``~valid``) weighted out (Core-Set); with ``rows`` one row per
      small item, item ``j`` read from input ``rows[j]``.
    * ``head_parameters() / bottleneck_parameters() / decoder_parameters()``: names (in
      ``named_parameters()``) of the parameter groups whose per-sample gradients embed items:
      the segmentation head (BADGE), the bottleneck convs (USIMC), the decoder convs (USIMF).
    * ``parameter_count(names)``: how many scalars those names hold.
    * MC dropout: the network's dropout modules are :class:`alseg.model.dropout.MCDropout`, which
      :func:`alseg.model.network.mc_dropout` switches to train mode at the MC rate while the rest
      stays in eval mode; ``dropout_mc`` is the default rate.

    Per-sample gradients (:func:`alseg.model.network.per_sample_gradients`) and the BADGE head
    embedding (:func:`alseg.model.network.head_gradient_embedding`) are computed from these with
    ``torch.func`` and need nothing more.
    """

    dropout_mc: float

    def __call__(self, x: Tensor) -> Tensor | list[Tensor]: ...

    def bottleneck_features(self, x: Tensor, valid: Tensor | None = None, rows: Tensor | None = None) -> Tensor: ...

    def head_parameters(self) -> list[str]: ...

    def bottleneck_parameters(self) -> list[str]: ...

    def decoder_parameters(self) -> list[str]: ...

    def parameter_count(self, names: Sequence[str]) -> int: ...

    def named_parameters(self) -> Iterator[tuple[str, torch.nn.Parameter]]: ...


# ----------------------------------------------------------------------------- inputs
@dataclass
class SelectionContext:
    """The round's inputs; identical for every strategy (its settings live in its options)."""

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
    ground_truth: Callable[[str], np.ndarray] | None = None  # only for simulation-only strategies
    show_progress: bool = True
    ranks: ShardGroup | None = None  # rank 0 of a DDP group: pool passes are shared by the ranks
    round_index: int = 1  # the loop round this batch is for: 1 is the first selection after the initial set
    planned_rounds: int = 1  # selection rounds the run plans (``--rounds``), for strategies with a schedule

    @property
    def unlabelled(self) -> np.ndarray:
        return np.flatnonzero(~self.labelled)


class StrategyOptions(BaseModel):
    """Options every strategy accepts (``--option key=value``); subclasses add their own.

    Unknown keys are refused so that a misspelled option fails before any work starts."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # every float option finite

    mc_passes_per_forward: int = Field(
        1, ge=1, description="MC dropout passes run in one forward by repeating the chunk (a positive integer)"
    )
    batch_uncertainty: bool = Field(
        True, description="measure the batch's MC uncertainty for the paper's Fig. 5 (true or false)"
    )


# ----------------------------------------------------------------------------- outputs
@dataclass(frozen=True)
class Artefacts:
    """Strategy-specific results kept in the round record: each field becomes one key of
    ``rounds/round_XXX.json`` (None fields are left out). Subclass it per strategy family."""

    def to_record(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            out[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
        return out


@dataclass(frozen=True)
class EmbeddingMap:
    """A sample of embeddings with a role per row (``labelled`` | ``unlabelled`` | ``query`` |
    ``selected``) for the t-SNE map of the paper's Fig. 3; stored apart from the round record."""

    embeddings: np.ndarray
    """(n, D) float32."""
    role: np.ndarray
    """(n,) str."""


@dataclass
class Selection:
    """A strategy's answer for one round."""

    indices: np.ndarray
    """Pool indices of the batch, distinct and unlabelled."""
    scores: list[float | None]
    """One score per selected item (None where the strategy has none)."""
    seconds: dict[str, float] = field(default_factory=dict)
    """Timings by step; ``score`` is the pass over the pool."""
    artefacts: Artefacts | None = None
    """Strategy-specific round-record keys (query set, gains, kernel, ...)."""
    embedding_map: EmbeddingMap | None = None
    """Embeddings for the t-SNE map, when the strategy has them and they were asked for."""
    batch_uncertainty: float | None = None
    """The paper's Fig. 5 measure of this batch, filled by :func:`alseg.strategies.select_batch`."""


DISAGREEMENT_SCORES = frozenset({"bald", "mean_std"})
"""Per-item scores that measure disagreement between MC passes: 0 for every item with one pass."""


class Strategy:
    """Base of every strategy: ``Options`` (a :class:`StrategyOptions` subclass) and ``select``.

    ``name`` is the registry key; ``simulation_only`` strategies read the ground truth; ``source``
    names the paper it comes from."""

    name: ClassVar[str] = ""
    simulation_only: ClassVar[bool] = False
    Options: ClassVar[type[StrategyOptions]] = StrategyOptions
    source: ClassVar[str] = ""
    """Where the strategy comes from (paper, year), shown by ``alseg strategies``."""
    min_mc_passes: ClassVar[int] = 1
    """Monte-Carlo dropout passes (``--mc-passes``) below which the scores carry no information
    (a disagreement between passes needs two); the loop and ``compare`` refuse fewer before any
    work. A strategy ranking by a :data:`DISAGREEMENT_SCORES` field (``field``) needs 2 anyway."""

    @classmethod
    def mc_passes_needed(cls) -> int:
        """The fewest ``--mc-passes`` that give this strategy informative scores."""
        return max(cls.min_mc_passes, 2 if getattr(cls, "field", None) in DISAGREEMENT_SCORES else 1)

    def __init__(self, options: StrategyOptions | None = None, **kwargs: Any):
        if options is not None and kwargs:
            raise TypeError("pass either an options model or keyword options, not both")
        if options is None:
            options = self.Options(**kwargs)
        elif not isinstance(options, self.Options):
            raise TypeError(f"{type(self).__name__} takes {self.Options.__name__}, got {type(options).__name__}")
        self.options = options

    def select(self, ctx: SelectionContext) -> Selection:
        """The round's batch; override this."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.options!r})"


def check_selection(sel: Selection, ctx: SelectionContext) -> Selection:
    """Invariants every strategy must keep; a violation is a bug, not a user error."""
    idx = np.asarray(sel.indices, dtype=np.int64)
    assert len(idx) == min(ctx.budget, int((~ctx.labelled).sum())), "wrong batch size"
    assert len(np.unique(idx)) == len(idx), "duplicate items in the batch"
    assert not ctx.labelled[idx].any(), "a labelled item was selected"
    assert len(sel.scores) == len(idx)
    sel.indices = idx
    return sel
