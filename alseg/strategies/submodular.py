"""FLQMI, the submodular mutual information USIM maximises (paper Eq. 1, Appendix A), and its optimisers.

As in submodlib, the set function (:class:`FLQMI`: ``evaluate``, ``marginal_gains``) is apart
from the optimisers that maximise it (:func:`stochastic_greedy`, :func:`naive_greedy`), so each
can be tested alone. :func:`submodlib_select` is the reference path through submodlib itself.

alseg's stochastic greedy exists because submodlib copies the |U| x |Q| kernel into Python
lists and then into ``vector<vector<float>>`` (about 50 bytes per entry of a 4-byte float, as measured by
``benchmarks/selection.py``) and evaluates candidates one at a time; here a step gathers the
sampled candidates' rows and scores them in a few vectorised blocks, on whatever device ``S``
lives on.

How submodlib 0.0.3 draws its random sets (``StochasticGreedyOptimizer::maximize``, read from
the upstream C++ and checked against the disassembly of the installed wheel): it calls
``srand(1)`` at the start of every ``maximize`` and draws candidates with ``rand() % n``,
rejecting those already selected or drawn, until it has ``min(s, items left)`` of them, with
``s = trunc(n / B * log(1 / eps))`` (an ``eps >= 1`` is taken as ``s`` itself). So it takes no
seed: the same kernel always gives the same selection, and the C library's global ``rand``
state is reset as a side effect. :func:`submodlib_select` permutes the rows with its own
``seed`` to make repeated runs differ.
"""

from __future__ import annotations

import math
from typing import Literal, Protocol, TypeVar

import numpy as np
import torch
from torch import Tensor

DEFAULT_CHUNK_ELEMENTS = 1 << 22
"""Kernel entries scored per block (16 MB of float32): the one workspace a step needs."""

KernelT = TypeVar("KernelT", Tensor, np.ndarray)

__all__ = [
    "FLQMI",
    "MemoizedSetFunction",
    "naive_greedy",
    "nonnegative_kernel",
    "stochastic_greedy",
    "stochastic_sample_size",
    "submodlib_select",
]


def nonnegative_kernel(S: KernelT, kind: Literal["cosine", "fisher"]) -> KernelT:
    """Map a similarity kernel to ``S >= 0``, which facility location assumes (see
    docs/design.md).

    submodlib silently treats negative similarities as 0 (its maxima start at 0), which would
    make every anti-similar pair equal. Instead: cosine in ``[-1, 1]`` goes to ``(S + 1) / 2``
    (order-preserving, 0 = opposite gradients), and the unbounded Fisher kernel is shifted by
    its minimum. Both are monotone, so the ranking of similarities is unchanged.
    """
    if kind == "cosine":
        out = (S + 1.0) / 2.0
        return out.clip(min=0.0) if isinstance(out, np.ndarray) else out.clamp(min=0.0)
    if kind == "fisher":
        return S - S.min()
    raise ValueError(f"unknown kernel kind {kind!r}; use 'cosine' or 'fisher'")


class MemoizedSetFunction(Protocol):
    """What the optimisers need: a ground set of ``n`` items and gains against a memo ``state``."""

    n: int

    def initial_state(self) -> Tensor: ...

    def marginal_gains(self, state: Tensor, candidate_indices: Tensor) -> Tensor: ...

    def update_state(self, state: Tensor, index: int) -> Tensor: ...


class FLQMI:
    """Facility-location variant mutual information (paper Eq. 1; submodlib's FLVMI)::

        I(B; Q) = sum_{i in Q} w_i max_{j in B} S_ji  +  eta * sum_{j in B} max_{i in Q} S_ji

    with an empty max equal to 0. The query set is a multiset (drawn with replacement): column
    ``i`` stands for a query item drawn ``w_i`` times, so ``query_weights`` (default all 1) are
    the multiplicities — the same function as the kernel with column ``i`` repeated ``w_i``
    times, without the repeats (the relevance term's max is unchanged by repeats). ``S`` is ``(|U|, |Q|)``: rows are candidate items, columns
    query items. The first term rewards covering the query set, the second picks items
    relevant to it; larger ``eta`` favours relevance over diversity (Kothawade et al. 2022).
    The memo state is the current ``max_{j in B} S_ji`` per query column.
    """

    def __init__(
        self,
        S: Tensor,
        eta: float = 1.0,
        chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
        query_weights: Tensor | np.ndarray | None = None,
    ):
        if S.ndim != 2 or S.shape[0] == 0 or S.shape[1] == 0:
            raise ValueError(f"S must be a non-empty (|U|, |Q|) matrix, got shape {tuple(S.shape)}")
        if bool(S.min() < 0):  # min() rather than (S < 0).any(): no |U| x |Q| temporary
            raise ValueError("S has negative entries; map it with nonnegative_kernel(S, kind) first")
        self.S = S.float()
        self.eta = float(eta)
        self.n = S.shape[0]
        self.num_queries = S.shape[1]
        self.chunk_rows = max(1, chunk_elements // self.num_queries)
        self._workspace = torch.empty(0, self.num_queries, dtype=self.S.dtype, device=self.S.device)
        self.query_weights: Tensor | None = None
        if query_weights is not None:
            w = torch.as_tensor(np.asarray(query_weights), dtype=torch.float32, device=self.S.device).reshape(-1)
            if w.numel() != self.num_queries or bool((w < 0).any()):
                raise ValueError(f"query_weights must be {self.num_queries} non-negative multiplicities")
            self.query_weights = w
        self.query_relevance = self._row_max()
        """(|U|,) ``max_i S_ji``: the modular second term, fixed per item."""

    def _row_max(self) -> Tensor:
        out = torch.empty(self.n, dtype=self.S.dtype, device=self.S.device)
        for r0 in range(0, self.n, self.chunk_rows):
            out[r0 : r0 + self.chunk_rows] = self.S[r0 : r0 + self.chunk_rows].amax(dim=1)
        return out

    def evaluate(self, selected_indices: Tensor | np.ndarray | list[int]) -> float:
        """``I(B; Q)`` of a set (duplicates count once), accumulated in float64."""
        idx = torch.unique(torch.as_tensor(selected_indices, dtype=torch.long)).to(self.S.device)
        if idx.numel() == 0:
            return 0.0
        best = self.S[idx].amax(dim=0).double()
        coverage = best.sum() if self.query_weights is None else (best * self.query_weights.double()).sum()
        relevance = self.query_relevance[idx].double().sum()
        return float(coverage + self.eta * relevance)

    def initial_state(self) -> Tensor:
        """Memo of the empty set: every query's best similarity so far is 0."""
        return torch.zeros(self.num_queries, dtype=self.S.dtype, device=self.S.device)

    def marginal_gains(self, state: Tensor, candidate_indices: Tensor) -> Tensor:
        """Gain of adding each candidate alone to the set summarised by ``state``, in chunks of
        ``chunk_rows`` candidates: ``sum_i w_i max(S_ji - state_i, 0) + eta * max_i S_ji``."""
        cand = candidate_indices.to(self.S.device)
        gains = torch.empty(cand.numel(), dtype=torch.float64, device=self.S.device)
        rows = min(self.chunk_rows, cand.numel())
        if self._workspace.shape[0] < rows:
            self._workspace = torch.empty(rows, self.num_queries, dtype=self.S.dtype, device=self.S.device)
        for c0 in range(0, cand.numel(), self.chunk_rows):
            block = cand[c0 : c0 + self.chunk_rows]
            # Rows are gathered into a small reused workspace: at |U| = 104k on CPU, 64 MB blocks
            # ran 1.5x slower than 16 MB ones, and 2.5x slower again when freshly allocated each
            # step (page faults). Summing the clamped non-negative terms in float32 keeps their
            # relative precision and is 2.5x faster on CPU than a float64 accumulation.
            work = self._workspace[: block.numel()]
            torch.index_select(self.S, 0, block, out=work)
            work.sub_(state).clamp_(min=0.0)
            coverage = work.sum(dim=1) if self.query_weights is None else work @ self.query_weights
            gains[c0 : c0 + self.chunk_rows] = coverage.double() + self.eta * self.query_relevance[block].double()
        return gains

    def update_state(self, state: Tensor, index: int) -> Tensor:
        """Memo after adding item ``index``."""
        return torch.maximum(state, self.S[index])


def _greedy(
    fn: MemoizedSetFunction, budget: int, sample_size: int | None, rng: np.random.Generator | None
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy maximisation; each step scores ``sample_size`` random remaining items (all when
    None or when fewer remain) and adds the best. Ties go to the first candidate scored."""
    remaining = np.arange(fn.n, dtype=np.int64)
    state = fn.initial_state()
    picked = np.empty(min(budget, fn.n), dtype=np.int64)
    gains = np.empty(picked.size, dtype=np.float64)
    for step in range(picked.size):
        if sample_size is None or sample_size >= remaining.size:
            positions = np.arange(remaining.size)
        else:
            assert rng is not None
            positions = rng.choice(remaining.size, size=sample_size, replace=False)
        step_gains = fn.marginal_gains(state, torch.from_numpy(remaining[positions]))
        best = int(torch.argmax(step_gains))
        picked[step] = remaining[positions[best]]
        gains[step] = float(step_gains[best])
        state = fn.update_state(state, int(picked[step]))
        remaining = np.delete(remaining, positions[best])
    return picked, gains


def stochastic_sample_size(n: int, budget: int, epsilon: float) -> int:
    """Candidates scored per step, ``ceil(n / B * log(1 / eps))`` (Mirzasoleiman et al. 2015):
    enough that the expected result is within ``1 - 1/e - eps`` of the optimum."""
    if not 0.0 < epsilon < 1.0:
        raise ValueError(f"epsilon must be in (0, 1), got {epsilon}")
    return math.ceil(n / budget * math.log(1.0 / epsilon))


def stochastic_greedy(
    fn: MemoizedSetFunction, budget: int, epsilon: float = 0.01, *, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Stochastic greedy (Mirzasoleiman et al. 2015): ``budget`` items and their marginal gains,
    in selection order. Each step samples :func:`stochastic_sample_size` remaining items without
    replacement and adds the one with the largest gain. ``rng`` is required so that a resumed
    run selects the same batch; candidates are drawn on the host, so a seed gives the same
    selection on CPU and GPU up to float ties. A budget of at least ``n`` returns every item
    (submodlib refuses it)."""
    if budget <= 0:
        raise ValueError(f"budget must be positive, got {budget}")
    return _greedy(fn, budget, stochastic_sample_size(fn.n, budget, epsilon), rng)


def naive_greedy(fn: MemoizedSetFunction, budget: int) -> tuple[np.ndarray, np.ndarray]:
    """Plain greedy (Nemhauser et al. 1978): scores every remaining item each step; the
    ``1 - 1/e`` guarantee the tests check against exhaustive search."""
    if budget <= 0:
        raise ValueError(f"budget must be positive, got {budget}")
    return _greedy(fn, budget, None, None)


def submodlib_select(
    S: np.ndarray,
    budget: int,
    eta: float = 1.0,
    epsilon: float = 0.01,
    seed: int | None = None,
    query_weights: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The reference: submodlib's FLVMI maximised with its stochastic greedy, as the original
    code does (paper Appendix A). Returns indices and gains in selection order.

    ``query_weights`` (integer multiplicities of the columns) repeat each column that many
    times, which is how the original code passes a query set drawn with replacement.

    submodlib is seeded with ``srand(1)`` internally (see the module docstring); ``seed=None``
    reproduces it exactly, an integer seed permutes the rows first and maps the result back.
    A budget of at least ``n`` returns every item in index order with the gains of adding them
    in that order, since submodlib refuses it.
    """
    # lazy: submodlib pulls in scikit-learn and scipy (1.5 s), only this path needs it.
    from submodlib import FacilityLocationVariantMutualInformationFunction

    S = np.asarray(S, dtype=np.float32)
    if query_weights is not None:
        w = np.asarray(query_weights)
        if w.shape != (S.shape[1],) or (w < 0).any() or (w != np.round(w)).any():
            raise ValueError("submodlib's query multiset needs one non-negative integer multiplicity per column")
        S = S[:, np.repeat(np.arange(S.shape[1]), w.astype(np.int64))]
    S = np.ascontiguousarray(S)
    n, num_queries = S.shape
    if budget <= 0:
        raise ValueError(f"budget must be positive, got {budget}")
    if S.min() < 0:
        raise ValueError("S has negative entries; map it with nonnegative_kernel(S, kind) first")
    if budget >= n:
        best_so_far = np.maximum.accumulate(S, axis=0)
        previous = np.vstack([np.zeros((1, num_queries), dtype=np.float32), best_so_far[:-1]])
        gains = (best_so_far - previous).sum(axis=1, dtype=np.float64) + eta * S.max(axis=1).astype(np.float64)
        return np.arange(n, dtype=np.int64), gains
    order = np.random.default_rng(seed).permutation(n) if seed is not None else np.arange(n)
    fn = FacilityLocationVariantMutualInformationFunction(
        n=n, num_queries=num_queries, query_sijs=S if seed is None else S[order], queryDiversityEta=eta
    )
    result = fn.maximize(
        budget=budget,
        optimizer="StochasticGreedy",
        epsilon=epsilon,
        stopIfZeroGain=False,
        stopIfNegativeGain=False,
        verbose=False,
        show_progress=False,
    )
    picked = np.asarray([order[i] for i, _ in result], dtype=np.int64)
    gains = np.asarray([g for _, g in result], dtype=np.float64)
    return picked, gains
