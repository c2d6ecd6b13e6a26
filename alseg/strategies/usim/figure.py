"""The sample of USIM embeddings for the t-SNE map of the paper's Fig. 3."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from alseg.strategies.base import EmbeddingMap, SelectionContext
from alseg.strategies.usim.embeddings import GradientEmbedding

__all__ = ["FIGURE_MAX_LABELLED", "FIGURE_MAX_QUERY", "FIGURE_MAX_ROWS", "FigureSource", "embedding_map"]

FIGURE_MAX_ROWS = 3000
"""Rows of the embedding sample kept for the t-SNE map (paper Fig. 3)."""
FIGURE_MAX_LABELLED = 500
"""Labelled items embedded for the map (they are embedded only for it, so this bounds the cost)."""
FIGURE_MAX_QUERY = 1500
"""Query columns kept for the map; the selected items are always kept."""


class FigureSource(Protocol):
    """What the map needs from a USIM strategy: rows in the kernel's geometry, and more items
    embedded in the same space."""

    def figure_rows(self, emb: GradientEmbedding, G: Tensor, scale: Tensor | None) -> Tensor: ...

    def embed_more(
        self, ctx: SelectionContext, emb: GradientEmbedding, indices: np.ndarray
    ) -> tuple[Tensor, Tensor | None]: ...


def embedding_map(
    strategy: FigureSource, ctx: SelectionContext, emb: GradientEmbedding, columns: np.ndarray, picked: np.ndarray
) -> EmbeddingMap:
    """Sample of embeddings with roles labelled | unlabelled | query | selected (paper Fig. 3).

    Drawn from its own generator (seeded by ``ctx.rng`` after the selection), so turning the
    figure off never changes a selection.
    """
    rng = np.random.default_rng(int(ctx.rng.integers(2**63 - 1)))
    n = emb.G.shape[0]
    role = np.full(n, "unlabelled", dtype=object)
    role[columns] = "query"
    role[picked] = "selected"
    sel = picked
    lab = np.flatnonzero(ctx.labelled)
    n_lab = min(len(lab), FIGURE_MAX_LABELLED)
    query = np.setdiff1d(columns, sel)
    n_query = min(FIGURE_MAX_QUERY, max(FIGURE_MAX_ROWS - len(sel) - n_lab, 0))
    if len(query) > n_query:
        query = rng.choice(query, n_query, replace=False)
    rest = np.setdiff1d(np.arange(n), np.concatenate([columns, sel]))
    room = max(FIGURE_MAX_ROWS - len(sel) - len(query) - n_lab, 0)
    if len(rest) > room:
        rest = rng.choice(rest, room, replace=False)
    rows = np.sort(np.concatenate([sel, query, rest]).astype(np.int64))
    r = torch.as_tensor(rows, device=emb.G.device)
    scale = None if emb.scale is None else emb.scale[r]
    parts = [strategy.figure_rows(emb, emb.G[r], scale).cpu()]
    roles = [role[rows]]
    if n_lab:
        lab_idx = np.sort(rng.choice(lab, n_lab, replace=False))
        G_l, s_l = strategy.embed_more(ctx, emb, lab_idx)
        parts.append(strategy.figure_rows(emb, G_l, s_l).cpu())
        roles.append(np.full(n_lab, "labelled", dtype=object))
    return EmbeddingMap(torch.cat(parts).numpy().astype(np.float32), np.concatenate(roles).astype(str))
