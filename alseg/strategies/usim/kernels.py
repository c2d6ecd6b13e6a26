"""USIM's similarity kernels between candidates and query items, made non-negative for FLQMI.

Each is a thin composition of the tested functions of :mod:`alseg.strategies.usim_math` (no
inlined copies): USIMC's cosine, USIMF's raw Fisher kernel and its cosine ablation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from alseg.strategies.submodular import nonnegative_kernel
from alseg.strategies.usim.embeddings import GradientEmbedding
from alseg.strategies.usim_math import cosine_similarity, fisher_cosine_similarity, fisher_similarity

__all__ = ["Kernel", "cosine_kernel", "fisher_kernel"]


@dataclass
class Kernel:
    """A ``(|U|, |columns|)`` similarity ``S >= 0`` for FLQMI."""

    S: Tensor
    shift: float
    """What was subtracted from the raw kernel (the raw Fisher kernel's minimum; 0 otherwise)."""
    name: str
    """``cosine`` (USIMC), ``fisher`` (USIMF raw) or ``fisher-cosine``."""


def cosine_kernel(emb: GradientEmbedding, columns: np.ndarray) -> Kernel:
    """USIMC: ``(cos(g_u, g_q) + 1) / 2`` (Appendix A, Eq. 2, mapped to ``[0, 1]`` since facility
    location assumes ``S >= 0``). Row scales of float16 embeddings cancel in a cosine."""
    G = emb.G
    S = cosine_similarity(G, G[torch.as_tensor(columns, device=G.device)])
    return Kernel(nonnegative_kernel(S, "cosine"), 0.0, "cosine")


def fisher_kernel(emb: GradientEmbedding, columns: np.ndarray, kind: str = "raw") -> Kernel:
    """USIMF over the sampled decoder parameters.

    ``raw``: ``g_u^T diag(F)^-1 g_q / k`` (Appendix A, Eq. 4), shifted by its minimum (which
    changes no greedy choice: it adds ``|Q| c`` to every first-step gain and ``η c`` to every
    later one). ``cosine``: the same divided by both items' F^-1-norms, mapped by ``(S+1)/2``.
    A Fisher diagonal with no mass (every subset gradient 0) gives a flat zero kernel."""
    G, scale, F_sel = emb.G, emb.scale, emb.fisher
    assert F_sel is not None, "USIMF embeddings carry their Fisher diagonal"
    cols = torch.as_tensor(columns, device=G.device)
    if F_sel.numel() == 0 or not bool(F_sel.sum() > 0):
        S = torch.zeros(G.shape[0], len(columns), dtype=torch.float32, device=G.device)
        return Kernel(S, 0.0, "fisher" if kind == "raw" else "fisher-cosine")
    if kind == "cosine":
        S = fisher_cosine_similarity(G, G[cols], F_sel)
        return Kernel(nonnegative_kernel(S, "cosine"), 0.0, "fisher-cosine")
    if kind != "raw":
        raise ValueError(f"unknown Fisher kernel {kind!r}; use 'raw' or 'cosine'")
    S = fisher_similarity(G, G[cols], F_sel)
    if scale is not None:
        S.mul_(scale[:, None]).mul_(scale[cols][None, :])
    shift = float(S.min())
    return Kernel(S.sub_(shift), shift, "fisher")
