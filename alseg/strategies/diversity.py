"""Representation baselines (spec §3): Core-Set and BADGE(LL).

Both map items to vectors with one deterministic pass over the pool (through the scoring
engine's :func:`alseg.strategies.scoring.item_batches`, so padding is masked the same way) and
then select with a rule that is its own tested function: k-center greedy
(:mod:`alseg.strategies.kcenter`) and k-means++ seeding (scikit-learn).

* **Core-Set** (Sener & Savarese 2018): the bottleneck activation, globally average-pooled over
  the cells that cover the item (padding cells weighted out), for labelled *and* unlabelled
  items; the labelled items are the initial centres. Memory: ``N x F_b`` floats.
* **BADGE(LL)** (Ash et al. 2020; ALGES, Aklilu & Yeung 2022): the gradient of the
  pseudo-label cross-entropy, summed over the item's pixels, w.r.t. the segmentation head
  (weight and bias), in closed form; k-means++ seeding picks B items. Memory: ``|U| x K(F_0+1)``.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from sklearn.cluster import kmeans_plusplus
from torch import Tensor

from alseg.model.network import head_gradient_embedding, unwrap_network
from alseg.progress import console, make_progress
from alseg.strategies.base import Selection, SelectionContext
from alseg.strategies.kcenter import k_center_greedy
from alseg.strategies.registry import register
from alseg.strategies.scoring import eval_mode, item_batches, selected_batch_uncertainty

__all__ = ["BadgeStrategy", "CoreSetStrategy"]


# ----------------------------------------------------------------------------- embeddings
def _bottleneck(net, x: Tensor, valid: Tensor) -> Tensor:
    return net.bottleneck_features(x, valid)


def embed_items(ctx: SelectionContext, indices: np.ndarray, fn, what: str) -> tuple[Tensor, float]:
    """``fn(net, x, valid)`` for every item of ``indices``, rows in the order given, kept on
    ``ctx.device``; returns the ``(N, D)`` embeddings and the seconds taken."""
    t0 = time.perf_counter()
    indices = np.asarray(indices, dtype=np.int64)
    net = unwrap_network(ctx.model)
    pos = {int(i): j for j, i in enumerate(indices)}
    out: Tensor | None = None
    show = bool(ctx.show_progress and console.is_terminal and len(indices))
    bar = make_progress() if show else None
    with torch.inference_mode(), eval_mode(net):
        if bar is not None:
            bar.start()
            task = bar.add_task(f"{what} of {len(indices)} items", total=len(indices))
        try:
            for chunk, x, valid in item_batches(ctx, indices):
                e = fn(net, x, valid).float()
                if out is None:
                    out = torch.empty((len(indices), e.shape[1]), dtype=torch.float32, device=e.device)
                rows = torch.as_tensor([pos[int(i)] for i in chunk], device=e.device)
                out[rows] = e
                if bar is not None:
                    bar.advance(task, len(chunk))
        finally:
            if bar is not None:
                bar.stop()
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


# ----------------------------------------------------------------------------- strategies
@register("coreset")
class CoreSetStrategy:
    """Core-Set (Sener & Savarese 2018; spec §3): k-center greedy on globally average-pooled
    bottleneck features of all items; the labelled items are the initial centres. Per-item
    score: the item's distance to its nearest centre when it was picked."""

    name = "coreset"
    simulation_only = False

    def select(self, ctx: SelectionContext) -> Selection:
        all_idx = np.arange(len(ctx.pool), dtype=np.int64)
        feats, t_embed = embed_items(ctx, all_idx, _bottleneck, "bottleneck features")
        t0 = time.perf_counter()
        picked = k_center_greedy(feats, ctx.labelled, ctx.budget, rng=ctx.rng)
        labelled = torch.as_tensor(ctx.labelled, device=feats.device)
        centres = feats[labelled]
        radii = _pick_distances(feats, centres, picked)
        t_greedy = time.perf_counter() - t0
        t1 = time.perf_counter()
        bu = selected_batch_uncertainty(ctx, picked)
        return Selection(
            picked,
            # the first pick has no centre to be far from when nothing is labelled: no score
            [float(r) if np.isfinite(r) else None for r in radii],
            {
                "score": "k-center radius",
                "feature_dim": int(feats.shape[1]),
                "batch_uncertainty": bu,
                "seconds": {"score": t_embed, "k_center": t_greedy, "batch_uncertainty": time.perf_counter() - t1},
            },
        )


@register("badge")
class BadgeStrategy:
    """BADGE(LL) (Ash et al. 2020; ALGES; spec §3): gradient embeddings of the pseudo-label
    cross-entropy w.r.t. the segmentation head for the unlabelled items, then k-means++ seeding
    (``sklearn.cluster.kmeans_plusplus``, seeded from the round's generator) picks B items.
    Per-item score: the embedding's norm (the gradient length BADGE uses as uncertainty)."""

    name = "badge"
    simulation_only = False

    def select(self, ctx: SelectionContext) -> Selection:
        unl = ctx.unlabelled
        emb, t_embed = embed_items(ctx, unl, head_gradient_embedding, "head gradient embeddings")
        t0 = time.perf_counter()
        b = min(int(ctx.budget), len(unl))
        x = emb.cpu().numpy().astype(np.float64)
        seed = int(ctx.rng.integers(2**31 - 1))
        if b == len(unl):
            pos = np.arange(len(unl))
        else:
            _, pos = kmeans_plusplus(x, n_clusters=b, random_state=seed)
            pos = _fill_duplicates(np.asarray(pos, dtype=np.int64), len(unl), ctx.rng)
        norms = np.linalg.norm(x[pos], axis=1)
        t_seed = time.perf_counter() - t0
        t1 = time.perf_counter()
        bu = selected_batch_uncertainty(ctx, unl[pos])
        return Selection(
            unl[pos],
            [float(v) for v in norms],
            {
                "score": "gradient embedding norm",
                "embedding_dim": int(x.shape[1]),
                "batch_uncertainty": bu,
                "seconds": {"score": t_embed, "kmeans_pp": t_seed, "batch_uncertainty": time.perf_counter() - t1},
            },
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
