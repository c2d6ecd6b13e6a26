"""A round's batch: the random initial set of round 0, or the strategy's choice among the
unlabelled items (all of them, or ``--candidates`` drawn uniformly), as the round file records it.

Every random choice comes from generators seeded by ``(seed, round)`` (and a stream of its own for
the candidates), so a resumed run selects what an uninterrupted one would.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alseg.active.oracles.labels import LabelStore
from alseg.active.rundir import RoundRecord
from alseg.active.settings import LoopSettings
from alseg.active.workspace import Workspace
from alseg.data.pool import Pool
from alseg.errors import AlsegError
from alseg.scoring.pool_inference import inference_batch_size
from alseg.scoring.sharding import ShardGroup
from alseg.seeds import seed_for_round
from alseg.strategies import SelectionContext, Strategy, select_batch
from alseg.strategies.base import EmbeddingMap

__all__ = ["CANDIDATE_STREAM", "RoundSelector", "candidate_items", "candidate_rng", "rng_of_round"]


def rng_of_round(seed: int, round_: int) -> np.random.Generator:
    """The generator of one round: the same on a resumed run as on an uninterrupted one."""
    return np.random.default_rng([seed, round_])


def candidate_rng(seed: int, round_: int) -> np.random.Generator:
    """The generator of a round's candidates (``--candidates``): its own stream, apart from the
    strategy's, so that the same seed draws the same order of items for every strategy."""
    return np.random.default_rng([seed, round_, CANDIDATE_STREAM])


CANDIDATE_STREAM = 1
"""Third word of the candidates' seed (:func:`candidate_rng`)."""


def candidate_items(labelled: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted pool indices a strategy sees with ``--candidates n``: every labelled item and the
    first ``n`` unlabelled items of a uniform permutation of the whole pool. The permutation
    depends on the generator only, so two strategies with the same seed see the same order of
    items; only which of them are labelled already differs."""
    order = rng.permutation(len(labelled))
    unlabelled = order[~labelled[order]][:n]
    return np.sort(np.concatenate([np.flatnonzero(labelled), unlabelled])).astype(np.int64)


@dataclass
class RoundSelector:
    """Chooses each round's batch for one run; returns the round record (``selected``, ``scores``,
    ``batch_uncertainty``, ``seconds`` and what the strategy adds)."""

    settings: LoopSettings
    strategy: Strategy
    pool: Pool
    workspace: Workspace
    labels: LabelStore
    reveals_ground_truth: bool
    """The oracle reads the ground truth, so a strategy may too (``ground_truth`` in its context)."""
    run_path: Path
    show_progress: bool = True

    def initial(self) -> tuple[RoundRecord, None]:
        """Round 0: ``--initial`` items drawn uniformly."""
        t0 = time.perf_counter()
        rng = rng_of_round(self.settings.seed, 0)
        idx = np.sort(rng.choice(len(self.pool), size=self.settings.initial, replace=False))
        record = RoundRecord(
            round=0,
            strategy="initial-random",
            selected=[self.pool[i].id for i in idx],
            scores=[None] * len(idx),
            seconds={"select": time.perf_counter() - t0},
        )
        return record, None

    def select(
        self, round_: int, module, labelled: np.ndarray, ranks: ShardGroup | None = None
    ) -> tuple[RoundRecord, EmbeddingMap | None]:
        """Round ``round_`` ≥ 1: the strategy's batch, scored with ``module`` (the previous round's
        model), and the embeddings for the report's map when the strategy made some; ``labelled``
        marks the pool's labelled items; ``ranks`` share the pool passes."""
        t0 = time.perf_counter()
        cfg, pool, ws = self.settings, self.pool, self.workspace
        if cfg.candidates is not None:  # the strategy chooses among the labelled items and the candidates
            shown = candidate_items(labelled, cfg.candidates, candidate_rng(cfg.seed, round_))
            pool, labelled = pool.subset(shown), labelled[shown]
        conf = module.config
        ctx = SelectionContext(
            model=module.net,
            pool=pool,
            labelled=labelled,
            budget=cfg.budget,
            rng=rng_of_round(cfg.seed, round_),
            load_image=ws.image,
            labelled_voxels_per_class=self.labels.voxels_per_class(pool, labelled, ws.plans.n_classes),
            n_classes=ws.plans.n_classes,
            device=module.device,
            mc_passes=cfg.mc_passes,
            dropout_mc=conf.network.dropout_mc,
            batch_size=inference_batch_size(conf, module.device),
            ground_truth=ws.ground_truth if self.reveals_ground_truth else None,
            show_progress=self.show_progress,
            ranks=ranks,
            round_index=round_,
            planned_rounds=cfg.rounds,
        )
        # the batch uncertainty's MC masks depend on the run's seed and round only, never on the strategy
        sel = select_batch(self.strategy, ctx, uncertainty_seed=seed_for_round(cfg.seed, round_))
        seconds = dict(sel.seconds)
        seconds["select"] = time.perf_counter() - t0 - seconds.get("score", 0.0)
        given = [s for s in sel.scores if s is not None]
        if given and not any(math.isfinite(s) for s in given):  # the batch would be the pool's first items
            raise AlsegError(
                f"round {round_}: every score of strategy '{cfg.strategy}' is NaN or infinite, so its "
                f"batch would be arbitrary — check its options ({cfg.strategy_options or 'the defaults'}) "
                "and that the model of the previous round trained (metrics.csv)",
                self.run_path,
            )
        scores = [None if s is None or not math.isfinite(s) else float(s) for s in sel.scores]  # JSON: no NaN/inf
        fields = {
            "round": round_,
            "strategy": cfg.strategy,
            "selected": [pool[int(i)].id for i in sel.indices],
            "scores": scores,
            "batch_uncertainty": sel.batch_uncertainty,
            "seconds": seconds,
            **({"n_candidates": int((~labelled).sum())} if cfg.candidates is not None else {}),
            **(sel.artefacts.to_record() if sel.artefacts is not None else {}),  # a strategy's own count wins
        }
        record = RoundRecord(**fields)
        return record, sel.embedding_map
