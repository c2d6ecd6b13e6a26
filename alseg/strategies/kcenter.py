"""k-center greedy (Sener & Savarese 2018), the selection rule of the Core-Set baseline (paper Appendix C).

Each step picks the item farthest (Euclidean) from its nearest centre and makes it a centre.
Only a min-distance vector of length N is kept; distances are computed in row chunks, so memory
is linear in N (a 104k x 104k distance matrix would need 43 GB).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["DEFAULT_CHUNK_ROWS", "k_center_greedy"]

DEFAULT_CHUNK_ROWS = 8192


def _min_distances(x: Tensor, centres: Tensor, chunk_rows: int) -> Tensor:
    """Distance from every row of ``x`` to its nearest row of ``centres``, chunked both ways."""
    out = torch.full((x.shape[0],), float("inf"), dtype=x.dtype, device=x.device)
    for r0 in range(0, x.shape[0], chunk_rows):
        rows = x[r0 : r0 + chunk_rows]
        for c0 in range(0, centres.shape[0], chunk_rows):
            d = torch.cdist(rows, centres[c0 : c0 + chunk_rows]).amin(dim=1)
            out[r0 : r0 + chunk_rows] = torch.minimum(out[r0 : r0 + chunk_rows], d)
    return out


def k_center_greedy(
    features: Tensor | np.ndarray,
    labelled_mask: Tensor | np.ndarray,
    budget: int,
    rng: np.random.Generator | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> np.ndarray:
    """Indices of ``budget`` unlabelled items in the order k-center greedy picks them.

    Args:
        features: ``(N, D)`` embeddings (torch on any device, or numpy).
        labelled_mask: ``(N,)`` bool; labelled items are the initial centres and never picked.
        budget: number of items to pick; more than the unlabelled items returns them all.
        rng: draws the first centre when nothing is labelled yet (that item counts towards the
            budget, as in Sener & Savarese); unused otherwise.
        chunk_rows: rows per distance block, bounds the temporary memory.
    """
    x = torch.as_tensor(features)
    x = x.float() if not x.is_floating_point() else x
    if x.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {tuple(x.shape)}")
    labelled = torch.as_tensor(labelled_mask, dtype=torch.bool, device=x.device)
    if labelled.shape != (x.shape[0],):
        raise ValueError(f"labelled_mask must be ({x.shape[0]},), got {tuple(labelled.shape)}")
    n_pick = min(int(budget), int((~labelled).sum()))
    picked: list[int] = []
    if n_pick <= 0:
        return np.asarray(picked, dtype=np.int64)

    if labelled.any():
        min_dist = _min_distances(x, x[labelled], chunk_rows)
    else:
        if rng is None:
            raise ValueError("k_center_greedy with no labelled item needs rng to draw the first centre")
        first = int(rng.integers(x.shape[0]))
        picked.append(first)
        min_dist = _min_distances(x, x[first : first + 1], chunk_rows)
    # Centres get -inf so that duplicates of a centre (distance 0) can still be picked, but a
    # centre never is.
    min_dist[labelled] = -float("inf")
    if picked:
        min_dist[picked[0]] = -float("inf")

    while len(picked) < n_pick:
        j = int(torch.argmax(min_dist))
        picked.append(j)
        min_dist = torch.minimum(min_dist, _min_distances(x, x[j : j + 1], chunk_rows))
        min_dist[j] = -float("inf")
    return np.asarray(picked, dtype=np.int64)
