"""USIMC and USIMF: uncertainty-aware submodular mutual information (paper §3.3, Algorithm 1,
Appendix A), as a pipeline of steps that pass dataclasses.

1. :meth:`USIM.uncertainty`: T MC dropout passes over the unlabelled pool; foreground
   class-wise uncertainty weighted by ``w_c = 1 / #annotated voxels of c`` (:class:`Candidates`);
   optionally only the ``max_candidates`` most uncertain items (the original code keeps 30,000).
2. :func:`plan_query_set`: Q by the elbow of the sorted ``u`` (or fixed ``query_size``), Q draws
   with replacement ∝ ``u`` (:class:`QuerySet`, a multiset: distinct columns and multiplicities).
3. :meth:`USIM.embed`: gradient embeddings of the pseudo-label loss (:mod:`.embeddings`).
4. :meth:`USIM.kernel`: the similarity of every candidate to every query column (:mod:`.kernels`).
5. :func:`maximise_flqmi`: FLQMI (Eq. 1, η = ``eta``), multiplicities as column weights (or
   collapsed, ``query_multiset=false``), by stochastic greedy (alseg's or submodlib's).
   Each selected item's score is its greedy gain.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from alseg.model.network import unwrap_network
from alseg.scoring.pool_inference import score_pool
from alseg.strategies.base import Artefacts, Selection, SelectionContext, Strategy
from alseg.strategies.submodular import FLQMI, stochastic_greedy, submodlib_select
from alseg.strategies.usim.embeddings import GradientEmbedding, fisher_information, gradient_embeddings
from alseg.strategies.usim.figure import embedding_map
from alseg.strategies.usim.kernels import Kernel, cosine_kernel
from alseg.strategies.usim.kernels import fisher_kernel as fisher_kernel_of
from alseg.strategies.usim.options import USIMFOptions, USIMOptions
from alseg.strategies.usim_math import (
    class_weights,
    draw_query_set,
    elbow_index,
    fisher_whitening,
    query_set_size,
    sample_fisher_parameters,
    weighted_uncertainty,
)

__all__ = [
    "Candidates",
    "QuerySet",
    "USIM",
    "USIMArtefacts",
    "USIMC",
    "USIMF",
    "USIMResult",
    "maximise_flqmi",
    "plan_query_set",
]

FLOAT16_AUTO_BYTES = 4 << 30
"""``embedding_dtype=auto`` stores embeddings in float16 when float32 would exceed this (4 GiB)."""


@dataclass
class Candidates:
    """Step 1: the candidate items U and their uncertainties."""

    indices: np.ndarray
    """Pool indices of U (all unlabelled items, or the ``max_candidates`` most uncertain)."""
    u: np.ndarray
    """(|U|,) weighted uncertainty ``Σ_c w_c Uncert(x, c)``."""
    uncertainty: np.ndarray
    """(|U|,) unweighted foreground uncertainty ``Σ_c Uncert(x, c)``."""
    weights: np.ndarray
    """Foreground class weights ``w_c``."""


@dataclass
class QuerySet:
    """Step 2: the query multiset, as positions into the candidates."""

    Q: int
    knee: int
    """The elbow of the sorted ``u`` (Q = max(knee, 5 B) clipped to |U| unless fixed)."""
    draws: np.ndarray
    """(Q,) the raw draws, duplicates included."""
    columns: np.ndarray
    """Sorted distinct draws: one kernel column each."""
    counts: np.ndarray
    """(|columns|,) how often each column was drawn (its weight in FLQMI's coverage term)."""
    rule: str
    """``elbow`` or ``fixed``."""


def plan_query_set(u: np.ndarray, budget: int, query_size: int | None, rng: np.random.Generator) -> QuerySet:
    """Step 2: the query-set size (elbow rule or fixed) and Q draws with replacement ∝ ``u``."""
    Q = query_set_size(u, budget, query_size)
    knee = elbow_index(np.sort(u)[::-1].copy())
    draws, columns = draw_query_set(u, Q, rng)
    counts = np.bincount(draws, minlength=len(u))[columns].astype(np.int64)
    return QuerySet(Q, knee, draws, columns, counts, "fixed" if query_size is not None else "elbow")


def maximise_flqmi(
    kernel: Tensor, budget: int, query: QuerySet, opts: USIMOptions, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Step 5: maximise FLQMI over ``kernel`` (|U| x |columns|) with ``opts.optimizer``; the
    columns weigh their multiplicities unless ``query_multiset`` is off. Returns the picked rows
    in greedy order and their gains."""
    weights = query.counts if opts.query_multiset else None
    if opts.optimizer == "submodlib":
        seed = int(rng.integers(2**31 - 1))
        return submodlib_select(kernel.cpu().numpy(), budget, opts.eta, opts.epsilon, seed=seed, query_weights=weights)
    return stochastic_greedy(FLQMI(kernel, opts.eta, query_weights=weights), budget, opts.epsilon, rng=rng)


@dataclass
class USIMResult:
    """Everything one USIM round computed (positions index the candidates unless stated)."""

    cand: Candidates
    query: QuerySet
    embedding: GradientEmbedding
    similarity: Kernel
    picked: np.ndarray
    """Selected positions, in greedy order."""
    gains: np.ndarray
    """Marginal gain of each selected item when it was added."""
    seconds: dict[str, float] = field(default_factory=dict)

    # flat views, for readers of one quantity
    candidates = property(lambda self: self.cand.indices)
    u = property(lambda self: self.cand.u)
    uncertainty = property(lambda self: self.cand.uncertainty)
    weights = property(lambda self: self.cand.weights)
    Q = property(lambda self: self.query.Q)
    knee = property(lambda self: self.query.knee)
    draws = property(lambda self: self.query.draws)
    columns = property(lambda self: self.query.columns)
    embeddings = property(lambda self: self.embedding.G)
    row_scale = property(lambda self: self.embedding.scale)
    kernel = property(lambda self: self.similarity.S)
    kernel_shift = property(lambda self: self.similarity.shift)
    fisher_subset = property(lambda self: self.embedding.fisher_subset)
    param_index = property(lambda self: self.embedding.param_index)
    fisher = property(lambda self: self.embedding.fisher)
    n_parameters = property(lambda self: self.embedding.n_parameters)


@dataclass(frozen=True)
class USIMArtefacts(Artefacts):
    """USIM's round-record keys."""

    usim_weighted_uncertainty_mean: float
    """Mean over the batch of the class-weighted ``u`` (USIM's own ranking quantity)."""
    batch_uncertainty_unweighted: float
    """Mean over the batch of the unweighted ``Σ_c Uncert(x, c)`` from the pool pass."""
    Q: int
    elbow: int
    query_set: dict
    """``ids`` (distinct query items) and ``draws`` (their multiplicities)."""
    query_distinct: int
    query_multiset: bool
    gains: list
    n_candidates: int
    class_weights: list
    kernel: str
    kernel_shift: float
    embedding_dim: int
    embedding_dtype: str
    n_parameters: int
    optimizer: str
    eta: float
    epsilon: float
    query_size_rule: str
    max_candidates: int | None = None
    fisher_subset: int | None = None


class USIM(Strategy):
    """Shared pipeline of USIMC and USIMF; subclasses define the embedding and the kernel."""

    Options = USIMOptions
    options: USIMOptions
    kernel_kind: ClassVar[str] = ""
    min_mc_passes = 2  # the uncertainty is the class-wise std over MC passes: 0 with one pass

    # ------------------------------------------------------------------ subclass hooks
    def embed(self, ctx: SelectionContext, cand: Candidates, query: QuerySet, dtype: torch.dtype) -> GradientEmbedding:
        """Step 3: one embedding per candidate."""
        raise NotImplementedError

    def kernel(self, emb: GradientEmbedding, columns: np.ndarray, fisher_kernel: str | None = None) -> Kernel:
        """Step 4: similarity of every embedded row to the rows ``columns``."""
        raise NotImplementedError

    def embed_more(
        self, ctx: SelectionContext, emb: GradientEmbedding, indices: np.ndarray
    ) -> tuple[Tensor, Tensor | None]:
        """Embeddings of other items (labelled ones for the map) in the same space."""
        raise NotImplementedError

    def figure_rows(self, emb: GradientEmbedding, G: Tensor, scale: Tensor | None) -> Tensor:
        """Float32 rows whose Euclidean geometry matches the kernel (for the t-SNE map)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ steps
    def uncertainty(self, ctx: SelectionContext, budget: int) -> tuple[Candidates, float]:
        """Step 1; returns the candidates and the seconds of the pool pass."""
        unl = ctx.unlabelled
        scores = score_pool(
            ctx, unl, mc=True, deterministic=False, passes_per_forward=self.options.mc_passes_per_forward
        )
        assert scores.classwise_std is not None
        voxels = np.asarray(ctx.labelled_voxels_per_class, dtype=np.float64)
        weights = class_weights(voxels[1:])
        u_all = weighted_uncertainty(torch.from_numpy(scores.classwise_std[:, 1:].astype(np.float64)), weights).numpy()
        u_all = np.clip(np.nan_to_num(u_all, nan=0.0), 0.0, None)
        plain_all = scores.classwise_std[:, 1:].sum(axis=1, dtype=np.float64)
        m = self.options.max_candidates
        if m is not None and m < len(unl):
            # stable: ties keep pool order, so a seed gives the same candidates on any device
            top = np.sort(np.argsort(-u_all, kind="stable")[: max(m, budget)])
        else:
            top = np.arange(len(unl))
        cand = Candidates(np.asarray(scores.indices[top], dtype=np.int64), u_all[top], plain_all[top], weights.numpy())
        return cand, scores.seconds

    def dtype(self, n: int) -> torch.dtype:
        o = self.options
        if o.embedding_dtype == "float16":
            return torch.float16
        if o.embedding_dtype == "float32":
            return torch.float32
        return torch.float16 if n * o.embedding_dim * 4 > FLOAT16_AUTO_BYTES else torch.float32

    def run(self, ctx: SelectionContext) -> USIMResult:
        """Steps 1-5 of the module docstring; returns every intermediate (tests read them)."""
        seconds: dict[str, float] = {}
        budget = min(int(ctx.budget), len(ctx.unlabelled))
        if budget < 1:
            raise ValueError("USIM needs at least one unlabelled item and a positive budget")
        cand, seconds["score"] = self.uncertainty(ctx, budget)
        query = plan_query_set(cand.u, budget, self.options.query_size, ctx.rng)
        t0 = time.perf_counter()
        emb = self.embed(ctx, cand, query, self.dtype(len(cand.indices)))
        seconds["embed"] = time.perf_counter() - t0
        if emb.fisher is not None:
            seconds["embed_fisher"] = emb.seconds_fisher  # part of "embed"
        t0 = time.perf_counter()
        kern = self.kernel(emb, query.columns)
        seconds["kernel"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        picked, gains = maximise_flqmi(kern.S, budget, query, self.options, ctx.rng)
        seconds["optimize"] = time.perf_counter() - t0
        return USIMResult(
            cand, query, emb, kern, np.asarray(picked, dtype=np.int64), np.asarray(gains, dtype=np.float64), seconds
        )

    def select(self, ctx: SelectionContext) -> Selection:
        unl = ctx.unlabelled
        if len(unl) <= ctx.budget:  # nothing to choose: all of it (no scoring needed)
            return Selection(unl.copy(), [None] * len(unl))
        o = self.options
        res = self.run(ctx)
        pool = ctx.pool
        q = res.query
        artefacts = USIMArtefacts(
            usim_weighted_uncertainty_mean=float(res.u[res.picked].mean()),
            batch_uncertainty_unweighted=float(res.uncertainty[res.picked].mean()),
            Q=int(q.Q),
            elbow=int(q.knee),
            query_set={"ids": [pool[int(res.candidates[j])].id for j in q.columns], "draws": q.counts.tolist()},
            query_distinct=int(len(q.columns)),
            query_multiset=o.query_multiset,
            gains=res.gains.tolist(),
            n_candidates=int(len(res.candidates)),
            class_weights=res.weights.tolist(),
            kernel=res.similarity.name,
            kernel_shift=float(res.kernel_shift),
            embedding_dim=int(res.embeddings.shape[1]),
            embedding_dtype=str(res.embeddings.dtype).removeprefix("torch."),
            n_parameters=int(res.n_parameters),
            optimizer=o.optimizer,
            eta=o.eta,
            epsilon=o.epsilon,
            query_size_rule=q.rule,
            max_candidates=int(len(res.candidates)) if len(res.candidates) < len(unl) else None,
            fisher_subset=None if res.fisher_subset is None else int(len(res.fisher_subset)),
        )
        seconds = dict(res.seconds)
        emap = None
        if o.figure:
            t0 = time.perf_counter()
            emap = embedding_map(self, ctx, res.embedding, res.columns, res.picked)
            seconds["embed_figure"] = time.perf_counter() - t0
        return Selection(
            res.candidates[res.picked].astype(np.int64),
            res.gains.tolist(),
            seconds=seconds,
            artefacts=artefacts,
            embedding_map=emap,
        )


class USIMC(USIM):
    """USIM with the cosine kernel of truncated bottleneck gradients (Appendix A, Eq. 2).

    The bottleneck convs' gradient (``net.bottleneck_parameters()``, flattened in order) is
    truncated to its first ``embedding_dim`` entries, as the paper does "for a fair comparison
    with USIMF and to stay tractable"."""

    name = "usimc"
    source = "Föllmer et al., MIDL 2024 (USIM, conv kernel)"
    kernel_kind = "cosine"

    def embed(self, ctx, cand, query, dtype):
        net = unwrap_network(ctx.model)
        params = net.bottleneck_parameters()
        G, scale = gradient_embeddings(
            ctx,
            cand.indices,
            params,
            max_dim=self.options.embedding_dim,
            dtype=dtype,
            batch_size=self.options.grad_batch_size,
            label="bottleneck gradients",
        )
        return GradientEmbedding(G, scale, params, net.parameter_count(params), max_dim=self.options.embedding_dim)

    def kernel(self, emb, columns, fisher_kernel=None):
        return cosine_kernel(emb, columns)

    def embed_more(self, ctx, emb, indices):
        return gradient_embeddings(
            ctx,
            indices,
            emb.params,
            max_dim=emb.max_dim,
            dtype=emb.G.dtype,
            batch_size=self.options.grad_batch_size,
            label="bottleneck gradients (labelled)",
        )

    def figure_rows(self, emb, G, scale):
        return torch.nn.functional.normalize(G.float(), dim=1)


class USIMF(USIM):
    """USIM with the Fisher kernel over the decoder convs (Appendix A, Eq. 3-4).

    ``F`` is the mean squared per-sample gradient over ``fisher_subset`` query items (drawn
    ∝ u without replacement among the query set's distinct items); ``embedding_dim``
    parameters are drawn ∝ F; the kernel is :func:`.kernels.fisher_kernel` of kind
    ``fisher_kernel``.

    Caveat, measured on the demo data: decoder gradients of different items are strongly
    aligned (median cosine 0.78 there), so the raw kernel is close to rank one,
    ``S_uq ≈ a_u a_q``. Then the item with the largest ``a`` covers every query column at the
    first step, later coverage gains are ~0, and the rest of the batch is ranked by the
    modular relevance term ``η max_q S_uq`` alone, i.e. by gradient size, duplicates included.
    ``fisher_kernel=cosine`` removes the scale; it is not the paper's kernel. Which one is the
    default is decided by the redundancy study (``alseg redundancy-check --cases``)."""

    name = "usimf"
    source = "Föllmer et al., MIDL 2024 (USIM, Fisher kernel)"
    Options = USIMFOptions
    options: USIMFOptions
    kernel_kind = "fisher"

    def embed(self, ctx, cand, query, dtype):
        net = unwrap_network(ctx.model)
        params = net.decoder_parameters()
        columns = query.columns
        m = min(self.options.fisher_subset, len(columns))
        w = cand.u[columns]
        p = w / w.sum() if w.sum() > 0 else None
        subset = np.sort(ctx.rng.choice(columns, size=m, replace=False, p=p)).astype(np.int64)
        t0 = time.perf_counter()
        F = fisher_information(ctx, cand.indices[subset], params, self.options.grad_batch_size)
        t_fisher = time.perf_counter() - t0
        param_index = sample_fisher_parameters(F, self.options.embedding_dim, ctx.rng)
        F_sel = F[torch.as_tensor(param_index, device=F.device)]
        G, scale = gradient_embeddings(
            ctx,
            cand.indices,
            params,
            columns=param_index,
            dtype=dtype,
            batch_size=self.options.grad_batch_size,
            label="decoder Fisher scores",
        )
        return GradientEmbedding(
            G,
            scale,
            params,
            int(F.numel()),
            param_index=param_index,
            fisher=F_sel,
            fisher_subset=subset,
            seconds_fisher=t_fisher,
        )

    def kernel(self, emb, columns, fisher_kernel=None):
        return fisher_kernel_of(emb, columns, fisher_kernel or self.options.fisher_kernel)

    def embed_more(self, ctx, emb, indices):
        return gradient_embeddings(
            ctx,
            indices,
            emb.params,
            columns=emb.param_index,
            dtype=emb.G.dtype,
            batch_size=self.options.grad_batch_size,
            label="decoder Fisher scores (labelled)",
        )

    def figure_rows(self, emb, G, scale):
        """Whitened scores ``g / sqrt(F + damping)``: their dot product is the raw kernel (times k)."""
        if emb.fisher is None or emb.fisher.numel() == 0:
            return G.float()
        out = G.float() * fisher_whitening(emb.fisher).to(G.device)
        return out if scale is None else out * scale[:, None]
