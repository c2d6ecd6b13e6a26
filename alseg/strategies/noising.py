"""Stochastic batch acquisition (Kirsch et al., TMLR 2023): sample the batch instead of taking the top B.

Taking the B highest scores of a pool puts near-duplicates into one batch; sampling B items
without replacement with probability growing with the score keeps most of the benefit and
spreads the batch. Both rules here are Gumbel top-k draws: adding independent standard Gumbel
noise to ``log w_i`` and keeping the B largest draws B items without replacement with
probability ∝ ``w_i`` (successive sampling).

* **power**: ``w_i = s_i^β`` — key ``β log s_i + G_i``. nnActive writes it as
  ``log s_i + Gumbel(0, 1/β)``, the same order.
* **softrank**: ``w_i = r_i^(-β)`` with ``r_i`` the 1-based rank of ``s_i`` (highest first) —
  key ``-β log r_i + G_i``; only the order of the scores matters.

β = 0 is uniform sampling; β → ∞ is the deterministic top B. Pure numpy; the strategies that
use these rules are in :mod:`alseg.strategies.stochastic` and :mod:`alseg.strategies.class_balanced`.
"""

from __future__ import annotations

import numpy as np

__all__ = ["exponential_schedule", "gumbel_top_b", "power_keys", "softrank_keys", "descending_ranks"]


def descending_ranks(scores: np.ndarray) -> np.ndarray:
    """1-based rank of every score, highest first; equal scores are ranked in pool order."""
    s = np.asarray(scores, dtype=np.float64)
    order = np.lexsort((np.arange(len(s)), -s))
    ranks = np.empty(len(s), dtype=np.int64)
    ranks[order] = np.arange(1, len(s) + 1)
    return ranks


def power_keys(scores: np.ndarray, beta: float, gumbel: np.ndarray) -> np.ndarray:
    """``β log s + G`` per item (``gumbel``: standard Gumbel draws, one per item).

    ``β = inf`` gives ``log s`` (the ranking of the scores); ``β = 0`` gives ``G`` alone, also
    where a score is 0 (``0 · log 0`` is taken as 0). A score of 0 with ``β > 0`` has the key
    ``-inf``: it is drawn only once every positive score has been."""
    s = np.asarray(scores, dtype=np.float64)
    if np.any(s < 0) or not np.all(np.isfinite(s)):
        raise ValueError("power noising needs finite scores >= 0")
    if beta < 0 or np.isnan(beta):
        raise ValueError(f"beta must be >= 0, got {beta}")
    if beta == 0:
        return np.asarray(gumbel, dtype=np.float64).copy()
    with np.errstate(divide="ignore"):
        log_s = np.log(s)
    if np.isinf(beta):
        return log_s
    return beta * log_s + np.asarray(gumbel, dtype=np.float64)


def softrank_keys(scores: np.ndarray, beta: float, gumbel: np.ndarray) -> np.ndarray:
    """``-β log r + G_r`` per item, ``r`` the score's 1-based rank, highest first
    (:func:`descending_ranks`); ``β = inf`` gives ``-log r`` (the ranking itself).

    ``gumbel`` holds one draw per rank (``gumbel[r - 1]`` goes to the item ranked ``r``), as
    nnActive draws its noise along the sorted list, so the same generator gives its batch."""
    if beta < 0 or np.isnan(beta):
        raise ValueError(f"beta must be >= 0, got {beta}")
    ranks = descending_ranks(scores)
    log_r = np.log(ranks.astype(np.float64))
    if np.isinf(beta):
        return -log_r
    return -beta * log_r + np.asarray(gumbel, dtype=np.float64)[ranks - 1]


def gumbel_top_b(keys: np.ndarray, budget: int, gumbel: np.ndarray | None = None) -> np.ndarray:
    """Positions of the ``budget`` largest ``keys``, largest first. Equal keys (e.g. several
    ``-inf``) are ordered by ``gumbel`` (largest first) when given — a uniform draw among them —,
    then by position."""
    k = np.asarray(keys, dtype=np.float64)
    n = min(int(budget), len(k))
    tie = np.zeros(len(k)) if gumbel is None else -np.asarray(gumbel, dtype=np.float64)
    return np.lexsort((np.arange(len(k)), tie, -k))[:n]


def exponential_schedule(n_steps: int, start: float, end: float) -> np.ndarray:
    """``start · (end / start)^(i / (n_steps - 1))`` for ``i = 0 … n_steps - 1``: geometric steps
    from ``start`` to ``end`` (nnActive's β schedule for ClaSP PE, 1 → 100); one step is ``start``."""
    if n_steps < 1:
        raise ValueError(f"a schedule needs at least one step, got {n_steps}")
    if start <= 0 or end <= 0:
        raise ValueError(f"an exponential schedule needs positive ends, got {start} and {end}")
    return start * (end / start) ** np.linspace(0.0, 1.0, n_steps)
