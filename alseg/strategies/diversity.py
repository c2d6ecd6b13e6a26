"""Representation baselines (paper §4.2, Appendix C): Core-Set and BADGE(LL).

Both map items to vectors with one deterministic pass over the pool (through pool inference's
:func:`alseg.scoring.pool_inference.chunk_batches`, so padding is masked the same way; sharded
over the ranks under ``--devices N``, :mod:`alseg.scoring.sharding`; items smaller than the
patch case by case, each from a sliding window of its case that holds it,
:func:`alseg.scoring.pool_inference.window_batches`, one forward per window) and then
select with a rule that is its own tested function: k-center greedy
(:mod:`alseg.strategies.kcenter`) and BADGE's k-means++ seeding (:func:`badge_seeding`).

* **Core-Set** (Sener & Savarese 2018): the bottleneck activation, globally average-pooled over
  the cells that cover the item (padding cells weighted out), for labelled *and* unlabelled
  items; the labelled items are the initial centres. Memory: ``N x F_b`` floats.
* **BADGE(LL)** (Ash et al. 2020; ALGES, Aklilu & Yeung 2022): the gradient of the
  pseudo-label cross-entropy, summed over the item's pixels, w.r.t. the segmentation head
  (weight and bias), in closed form; k-means++ seeding as in Ash et al. 2020 picks B items:
  the largest-norm embedding first, then each next centre drawn once ∝ D² (squared distance
  to the nearest centre) from the round's generator. Memory: ``|U| x K(F_0+1)``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import Tensor

from alseg.model.network import head_gradient_embedding, unwrap_network
from alseg.progress import console, make_progress
from alseg.scoring.pool_inference import (
    ScoringContext,
    case_chunks,
    chunk_batches,
    eval_mode,
    pool_chunks,
    window_batches,
)
from alseg.scoring.sharding import Numbered, map_chunks
from alseg.strategies.base import Artefacts, Selection, SelectionContext, Strategy, StrategyOptions
from alseg.strategies.kcenter import k_center_greedy

__all__ = ["BadgeOptions", "BadgeStrategy", "CoreSetStrategy", "EmbeddingArtefacts", "badge_seeding", "embed_items"]


# ----------------------------------------------------------------------------- embeddings
def _bottleneck(net, x: Tensor, valid: Tensor, rows: Tensor | None = None) -> Tensor:
    return net.bottleneck_features(x, valid) if rows is None else net.bottleneck_features(x, valid, rows)


def _embed_chunks(ctx: ScoringContext, numbered: Numbered, *, fn, what: str) -> Iterator[tuple[int, Tensor]]:
    """Chunk function of :func:`embed_items` (see :mod:`alseg.scoring.sharding`)."""
    net = unwrap_network(ctx.model)
    n = sum(len(idx) for _, idx in numbered)
    show = bool(ctx.show_progress and console.is_terminal and n)
    bar = make_progress() if show else None
    with torch.inference_mode(), eval_mode(net):
        if bar is not None:
            bar.start()
            task = bar.add_task(f"{what} of {n} items", total=n)
        try:
            for c, chunk, x, valid in chunk_batches(ctx, numbered):
                yield c, fn(net, x, valid).float()
                if bar is not None:
                    bar.advance(task, len(chunk))
        finally:
            if bar is not None:
                bar.stop()


def _embed_cases(ctx: ScoringContext, numbered: Numbered, *, fn, what: str) -> Iterator[tuple[int, Tensor]]:
    """Chunk function of :func:`embed_items` for small items: per case chunk, ``fn`` once per
    batch of the case's windows (:func:`window_batches`), rows in the chunk's order."""
    net = unwrap_network(ctx.model)
    n = sum(len(idx) for _, idx in numbered)
    show = bool(ctx.show_progress and console.is_terminal and n)
    with make_progress() if show else nullcontext() as bar, torch.inference_mode(), eval_mode(net):
        task = bar.add_task(f"{what} of {n} items by case", total=n) if show else None
        current, out = None, None
        for c, idx, pos, x, rows, valid in window_batches(ctx, numbered):
            if c != current:
                if out is not None:
                    yield current, out
                current, out = c, None
            e = fn(net, x, valid, rows=rows).float()
            if out is None:
                out = torch.empty((len(idx), e.shape[1]), dtype=torch.float32, device=e.device)
            out[torch.as_tensor(pos, device=e.device)] = e
            if show:
                bar.advance(task, len(pos))
        if out is not None:
            yield current, out


def embed_items(ctx: ScoringContext, indices: np.ndarray, fn, what: str) -> tuple[Tensor, float]:
    """``fn(net, x, valid)`` for every item of ``indices``, rows in the order given, kept on
    ``ctx.device``; returns the ``(N, D)`` embeddings and the seconds taken. ``fn`` is a
    module-level function, so that a sharded pass (``ctx.ranks``) can send it to the other ranks.
    Items smaller than the patch are read from their case's windows: ``fn(net, x, valid,
    rows=rows)``, item ``j`` in window ``rows[j]`` (:func:`window_batches`)."""
    t0 = time.perf_counter()
    indices = np.asarray(indices, dtype=np.int64)
    pos = {int(i): j for j, i in enumerate(indices)}
    by_case = ctx.pool.small_items
    chunks = case_chunks(ctx, indices) if by_case else pool_chunks(ctx, indices)
    work = _embed_cases if by_case else _embed_chunks
    device = torch.device(ctx.device)
    out: Tensor | None = None
    with torch.inference_mode():
        for c, e in map_chunks(ctx, list(enumerate(chunks)), work, fn=fn, what=what):
            e = e.to(device)
            if out is None:
                out = torch.empty((len(indices), e.shape[1]), dtype=torch.float32, device=device)
            out[torch.as_tensor([pos[int(i)] for i in chunks[c]], device=device)] = e
    if out is None:
        out = torch.empty((0, 0), dtype=torch.float32, device=ctx.device)
    return out, time.perf_counter() - t0


def _pick_distances(x: Tensor, centres: Tensor, picked: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """For each picked row, its distance to the nearest of ``centres`` and the earlier picks:
    the k-center greedy radius at the moment it was picked."""
    p = x[torch.as_tensor(picked, device=x.device)]
    d = torch.full((len(p),), float("inf"), device=x.device)
    for c0 in range(0, centres.shape[0], chunk):
        d = torch.minimum(d, torch.cdist(p, centres[c0 : c0 + chunk]).amin(dim=1))
    if len(p) > 1:
        pp = torch.cdist(p, p)
        pp = pp.masked_fill(~torch.ones_like(pp, dtype=torch.bool).tril(-1), float("inf"))
        d = torch.minimum(d, pp.amin(dim=1))
    return d.cpu().numpy()


# ----------------------------------------------------------------------------- BADGE seeding
def badge_seeding(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding as in Ash et al. 2020 (BADGE's ``init_centers``): rows of ``x`` in the
    order they become centres.

    The first centre is the row of largest Euclidean norm (the most uncertain item: the
    gradient embedding's norm grows with the loss); each next one is drawn once with
    probability ``D² / Σ D²``, ``D`` the distance to the nearest centre so far, by inverse CDF
    of one ``rng.random()``. Rows at distance 0 (centres and their duplicates) cannot be drawn;
    when every remaining row is at distance 0 the rest are drawn uniformly among the rows not
    chosen, so ``k`` distinct rows always come back."""
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    k = min(int(k), n)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    chosen = [int(np.argmax(np.einsum("ij,ij->i", x, x)))]
    d2 = np.full(n, np.inf)
    taken = np.zeros(n, dtype=bool)
    taken[chosen[0]] = True
    while len(chosen) < k:
        c = x[chosen[-1]]
        d2 = np.minimum(d2, np.einsum("ij,ij->i", x - c, x - c))
        d2[taken] = 0.0
        total = d2.sum()
        if total > 0:
            cdf = np.cumsum(d2)
            j = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
            j = min(j, n - 1)
            while d2[j] == 0.0:  # float edge: u * total landed on a zero-width step's boundary
                j -= 1
        else:
            j = int(rng.choice(np.flatnonzero(~taken)))
        chosen.append(j)
        taken[j] = True
    return np.asarray(chosen, dtype=np.int64)


def sklearn_seeding(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """scikit-learn's greedy k-means++ (``2 + log k`` local trials per centre, random first
    centre): the ablation ``seeding=sklearn``, not Ash et al.'s rule. Duplicates (fewer
    distinct rows than ``k``) are replaced by distinct random rows."""
    # Imported here: scikit-learn costs ~1 s at start-up and only this ablation needs it.
    from sklearn.cluster import kmeans_plusplus

    x = np.asarray(x, dtype=np.float64)
    _, pos = kmeans_plusplus(x, n_clusters=min(k, len(x)), random_state=int(rng.integers(2**31 - 1)))
    return _fill_duplicates(np.asarray(pos, dtype=np.int64), len(x), rng)


# ----------------------------------------------------------------------------- strategies
@dataclass(frozen=True)
class EmbeddingArtefacts(Artefacts):
    score: str
    feature_dim: int | None = None
    embedding_dim: int | None = None
    seeding: str | None = None


class CoreSetStrategy(Strategy):
    """Core-Set (Sener & Savarese 2018; paper Appendix C): k-center greedy on globally
    average-pooled bottleneck features of all items; the labelled items are the initial
    centres. Per-item score: the item's distance to its nearest centre when it was picked."""

    name = "coreset"
    source = "Sener & Savarese, ICLR 2018; Föllmer et al., MIDL 2024"

    def select(self, ctx: SelectionContext) -> Selection:
        all_idx = np.arange(len(ctx.pool), dtype=np.int64)
        feats, t_embed = embed_items(ctx, all_idx, _bottleneck, "bottleneck features")
        t0 = time.perf_counter()
        picked = k_center_greedy(feats, ctx.labelled, ctx.budget, rng=ctx.rng)
        labelled = torch.as_tensor(ctx.labelled, device=feats.device)
        centres = feats[labelled]
        radii = _pick_distances(feats, centres, picked)
        return Selection(
            picked,
            # the first pick has no centre to be far from when nothing is labelled: no score
            [float(r) if np.isfinite(r) else None for r in radii],
            seconds={"score": t_embed, "k_center": time.perf_counter() - t0},
            artefacts=EmbeddingArtefacts("k-center radius", feature_dim=int(feats.shape[1])),
        )


class BadgeOptions(StrategyOptions):
    seeding: Literal["ash", "sklearn"] = Field(
        "ash",
        description="'ash' (Ash et al. 2020: largest norm first, then one D² draw per centre) or 'sklearn' (greedy k-means++, an ablation)",
    )


class BadgeStrategy(Strategy):
    """BADGE(LL) (Ash et al. 2020; ALGES; paper Appendix C): gradient embeddings of the
    pseudo-label cross-entropy w.r.t. the segmentation head for the unlabelled items, then
    k-means++ seeding (:func:`badge_seeding`, or scikit-learn's with ``seeding=sklearn``) picks
    B items. Per-item score: the embedding's norm (the gradient length BADGE uses as
    uncertainty)."""

    name = "badge"
    source = "Ash et al., ICLR 2020; Föllmer et al., MIDL 2024"
    Options = BadgeOptions
    options: BadgeOptions

    def select(self, ctx: SelectionContext) -> Selection:
        unl = ctx.unlabelled
        emb, t_embed = embed_items(ctx, unl, head_gradient_embedding, "head gradient embeddings")
        t0 = time.perf_counter()
        b = min(int(ctx.budget), len(unl))
        x = emb.cpu().numpy().astype(np.float64)
        if b == len(unl):
            pos = np.arange(len(unl))
        elif self.options.seeding == "sklearn":
            pos = sklearn_seeding(x, b, ctx.rng)
        else:
            pos = badge_seeding(x, b, ctx.rng)
        norms = np.linalg.norm(x[pos], axis=1)
        return Selection(
            unl[pos],
            [float(v) for v in norms],
            seconds={"score": t_embed, "kmeans_pp": time.perf_counter() - t0},
            artefacts=EmbeddingArtefacts(
                "gradient embedding norm", embedding_dim=int(x.shape[1]), seeding=self.options.seeding
            ),
        )


def _fill_duplicates(pos: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ can repeat a point when the embeddings have fewer distinct rows than B (e.g. a
    collapsed network); keep the first occurrences and fill up with distinct random positions."""
    _, first = np.unique(pos, return_index=True)
    kept = pos[np.sort(first)]
    if len(kept) == len(pos):
        return pos
    rest = np.setdiff1d(np.arange(n), kept)
    extra = rng.choice(rest, size=len(pos) - len(kept), replace=False)
    return np.concatenate([kept, extra])
