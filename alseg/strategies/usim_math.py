"""The pure maths of USIM (paper §3.3 and Appendix A), apart from any model or pool.

The strategy itself (gradients, MC passes, bookkeeping) composes these: class weights ->
weighted uncertainty -> query-set size (elbow) -> query set drawn ∝ uncertainty -> a
similarity kernel (cosine for USIMC, Fisher for USIMF) -> FLQMI in ``submodular.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "DEFAULT_CHUNK_ROWS",
    "FISHER_DAMPING",
    "QUERY_SIZE_BUDGET_FACTOR",
    "class_weights",
    "cosine_similarity",
    "draw_query_set",
    "elbow_index",
    "fisher_cosine_similarity",
    "fisher_diagonal",
    "fisher_similarity",
    "fisher_whitening",
    "query_set_size",
    "sample_fisher_parameters",
    "weighted_uncertainty",
]

QUERY_SIZE_BUDGET_FACTOR = 5
"""Lower bound of the elbow query-set size in multiples of the budget (paper §3.3.2; elbow rule: docs/design.md)."""
DEFAULT_CHUNK_ROWS = 4096
"""Rows of G_u per block when building a kernel: bounds the temporaries, not the output."""
FISHER_DAMPING = 1e-6
"""Damping of diag(F) relative to its mean, see :func:`fisher_similarity`."""


def class_weights(voxels_per_class: Sequence[int] | np.ndarray | Tensor) -> Tensor:
    """``w_c = 1 / #annotated voxels of class c`` for the foreground classes (paper §3.3.2).

    A class with no annotated voxel yet gets the weight of the rarest class seen: it is at
    least as under-represented, but ``1 / 0 = inf`` would turn every item's uncertainty into inf
    (or NaN) and erase the ranking. With no foreground annotated at all, every weight is 1.
    """
    counts = torch.as_tensor(voxels_per_class, dtype=torch.float64)
    if counts.ndim != 1 or counts.numel() == 0:
        raise ValueError(f"voxels_per_class must be a non-empty 1D sequence, got shape {tuple(counts.shape)}")
    if bool((counts < 0).any()):
        raise ValueError(f"voxel counts must be non-negative, got {counts.tolist()}")
    seen = counts > 0
    if not bool(seen.any()):
        return torch.ones_like(counts)
    weights = torch.zeros_like(counts)
    weights[seen] = 1.0 / counts[seen]
    weights[~seen] = weights[seen].max()
    return weights


def weighted_uncertainty(classwise_std: Tensor, weights: Tensor) -> Tensor:
    """``u(x) = sum_c w_c Uncert(x, c)`` (paper §3.3.2): ``(N, C) x (C,) -> (N,)``."""
    if classwise_std.ndim != 2 or classwise_std.shape[1] != weights.numel():
        raise ValueError(
            f"classwise_std {tuple(classwise_std.shape)} and weights {tuple(weights.shape)} disagree; "
            "pass the foreground columns and one weight per foreground class"
        )
    return classwise_std.double() @ weights.double().to(classwise_std.device)


def elbow_index(values_sorted_desc: Tensor | np.ndarray) -> int:
    """Index of the point farthest from the chord joining the first and last points (paper §3.3.2; elbow rule: docs/design.md).

    Perpendicular distance to the chord is ``cos(angle) * (chord(x) - y)``, so its argmax is the
    argmax of the vertical gap and does not depend on how either axis is scaled. This is the
    maximum of kneed's "difference curve": KneeLocator(curve="convex", direction="decreasing")
    normalises x and y to [0, 1] and uses ``1 - x_n - y_n``. kneed differs in one way: it
    returns the *first* local maximum of that curve followed by a drop of ``S / (n - 1)``
    (S = 10 in the original code), so on a curve with several bends it can stop at an earlier,
    smaller bend where this returns the largest one; on a curve with one clear bend both agree.
    """
    y = torch.as_tensor(values_sorted_desc, dtype=torch.float64).flatten()
    n = y.numel()
    if n < 3:
        return 0
    if bool((y[1:] > y[:-1]).any()):
        raise ValueError("elbow_index needs values sorted in descending order")
    x = torch.arange(n, dtype=torch.float64)
    chord = y[0] + (y[-1] - y[0]) * x / (n - 1)
    return int(torch.argmax(chord - y))


def query_set_size(u: Tensor | np.ndarray, budget: int, fixed: int | None = None) -> int:
    """Q for the query set: ``min(max(knee, 5 B), |U|)`` on ``u`` sorted descending, or ``fixed``
    as given (sampling is with replacement, so a fixed Q may exceed |U|, as the paper's Q = U)."""
    if fixed is not None:
        if fixed < 1:
            raise ValueError(f"query size must be at least 1, got {fixed}")
        return int(fixed)
    values = torch.as_tensor(u, dtype=torch.float64).flatten()
    knee = elbow_index(torch.sort(values, descending=True).values)
    return min(max(knee, QUERY_SIZE_BUDGET_FACTOR * budget), values.numel())


def draw_query_set(u: Tensor | np.ndarray, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``size`` items with replacement, ``p(x) = u(x) / sum u`` (paper §3.3.2, Algorithm 1).

    Returns ``(draws, columns)``: the raw draws with duplicates (the ablation statistics count
    them) and their sorted unique values, one column of S each. If every ``u`` is 0 (a model
    certain everywhere) the draw is uniform instead of undefined.
    """
    weights = np.asarray(torch.as_tensor(u, dtype=torch.float64).cpu()).ravel()
    if weights.size == 0:
        raise ValueError("cannot draw a query set from an empty pool")
    if (weights < 0).any() or not np.isfinite(weights).all():
        raise ValueError("uncertainties must be finite and non-negative to be sampling weights")
    total = weights.sum()
    p = weights / total if total > 0 else None
    draws = rng.choice(weights.size, size=size, replace=True, p=p).astype(np.int64)
    return draws, np.unique(draws)


def cosine_similarity(
    G_u: Tensor, G_q: Tensor, chunk_rows: int = DEFAULT_CHUNK_ROWS, column_weights: Tensor | None = None
) -> Tensor:
    """USIMC kernel ``S_uq = g_u . g_q / (|g_u| |g_q|)`` (Appendix A, Eq. 2), ``(|U|, |Q|)``
    float32 on ``G_u``'s device. A zero gradient has no direction; its similarities are 0.

    ``column_weights`` (``(D,)``, optional) multiplies every row first: the cosine in the metric
    ``diag(column_weights)²``. A positive scale of a row changes nothing, so float16 rows stored
    divided by their largest magnitude give the float32 kernel without their scales."""
    w = None if column_weights is None else column_weights.float().to(G_u.device)
    q = G_q.float() if w is None else G_q.float() * w.to(G_q.device)
    q = torch.nn.functional.normalize(q, dim=1)
    out = torch.empty(G_u.shape[0], G_q.shape[0], dtype=torch.float32, device=G_u.device)
    for r0 in range(0, G_u.shape[0], chunk_rows):
        block = G_u[r0 : r0 + chunk_rows].float()
        block = torch.nn.functional.normalize(block if w is None else block * w, dim=1)
        out[r0 : r0 + chunk_rows] = block @ q.to(block.device).T
    return out


def fisher_whitening(F_sel: Tensor, damping: float = FISHER_DAMPING) -> Tensor:
    """``1 / sqrt(F + damping * mean(F))`` per sampled parameter: rows multiplied by it have
    :func:`fisher_similarity` (times ``k``) as their dot product."""
    f = F_sel.double()
    return (1.0 / (f + damping * f.mean()).sqrt()).float()


def fisher_cosine_similarity(
    G_u: Tensor, G_q: Tensor, F_sel: Tensor, damping: float = FISHER_DAMPING, chunk_rows: int = DEFAULT_CHUNK_ROWS
) -> Tensor:
    """USIMF's ``fisher_kernel=cosine`` ablation: :func:`fisher_similarity` divided by both
    items' Fisher norms, ``S_uq / sqrt(S_uu S_qq)`` — the cosine of the whitened rows, so it is
    :func:`cosine_similarity` with :func:`fisher_whitening` as column weights."""
    return cosine_similarity(G_u, G_q, chunk_rows, column_weights=fisher_whitening(F_sel, damping))


def fisher_diagonal(per_sample_grads: Tensor) -> Tensor:
    """Empirical Fisher diagonal ``F = mean_x (grad log p(ȳ|x))²`` over the ``M`` rows of
    ``(M, P)`` per-sample gradients (Appendix A, Eq. 3: the mean over the Fisher
    subset, not the original code's repeated square of one sample)."""
    if per_sample_grads.ndim != 2 or per_sample_grads.shape[0] == 0:
        raise ValueError(f"per_sample_grads must be (M, P) with M >= 1, got {tuple(per_sample_grads.shape)}")
    return per_sample_grads.double().square().mean(dim=0).to(per_sample_grads.dtype)


def sample_fisher_parameters(F: Tensor | np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``k`` parameters drawn without replacement with probability ``F_i / sum F``
    (Appendix A), sorted so that gathering them walks memory in order.

    Parameters with ``F_i = 0`` can never be drawn; when fewer than ``k`` are non-zero all of
    those are returned (their inverse Fisher weight would be infinite anyway).
    """
    f = np.asarray(torch.as_tensor(F, dtype=torch.float64).cpu()).ravel()
    if (f < 0).any() or not np.isfinite(f).all():
        raise ValueError("Fisher diagonal must be finite and non-negative")
    nonzero = np.flatnonzero(f > 0)
    if nonzero.size <= k:
        return nonzero.astype(np.int64)
    picked = rng.choice(nonzero.size, size=k, replace=False, p=f[nonzero] / f[nonzero].sum())
    return np.sort(nonzero[picked]).astype(np.int64)


def fisher_similarity(
    G_u: Tensor,
    G_q: Tensor,
    F_sel: Tensor,
    damping: float = FISHER_DAMPING,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> Tensor:
    """USIMF kernel ``S_uq = g_u^T diag(F)^-1 g_q / k`` (Appendix A, Eq. 4) over the
    ``k`` sampled parameters, ``(|U|, |Q|)`` float32 on ``G_u``'s device.

    ``diag(F)`` is damped by ``damping * mean(F_sel)`` before inverting: relative, so the kernel
    does not depend on the gradients' scale, and small, since parameters were drawn ∝ F and
    tiny ``F_i`` are rare; it only keeps one near-zero ``F_i`` from dominating every entry.
    """
    k = F_sel.numel()
    if G_u.shape[1] != k or G_q.shape[1] != k:
        raise ValueError(
            f"G_u {tuple(G_u.shape)} and G_q {tuple(G_q.shape)} must have one column per sampled parameter ({k})"
        )
    f = F_sel.double()
    if not bool((f >= 0).all()) or not bool(f.sum() > 0):
        raise ValueError("F_sel must be non-negative with a positive sum; draw it with sample_fisher_parameters")
    inverse = 1.0 / (f + damping * f.mean())
    q = (G_q.double() * inverse.to(G_q.device)).float()
    out = torch.empty(G_u.shape[0], G_q.shape[0], dtype=torch.float32, device=G_u.device)
    for r0 in range(0, G_u.shape[0], chunk_rows):
        block = G_u[r0 : r0 + chunk_rows].float()
        out[r0 : r0 + chunk_rows] = block @ q.to(block.device).T / k
    return out
