"""USIMC and USIMF: uncertainty-aware submodular mutual information (spec §4; paper §3.3,
Algorithm 1, Appendix A).

One round, as composed by :meth:`USIM.run`:

1. **Score** the unlabelled pool with T MC dropout passes (:func:`score_pool`) and weight the
   foreground class-wise uncertainty ``u(x) = Σ_c w_c Σ_pixels std_t p_t(c)`` with
   ``w_c = 1 / #annotated voxels of c`` (:func:`class_weights`, :func:`weighted_uncertainty`).
2. Optionally keep only the ``max_candidates`` most uncertain items (the original code keeps
   30,000; recorded as ``max_candidates`` / ``n_candidates``).
3. **Query set**: Q by the elbow of the sorted ``u`` (or fixed ``query_size``), Q draws with
   replacement ∝ ``u``; duplicates collapse to one kernel column.
4. **Gradient embeddings** of the pseudo-label loss, one per candidate (the query set is a
   subset of the candidates, so its embeddings are rows of the same matrix):

   * USIMC: the bottleneck convs' gradient, truncated to its first ``embedding_dim`` entries;
     kernel ``(cos(g_u, g_q) + 1) / 2``.
   * USIMF: the empirical Fisher diagonal ``F`` of the decoder convs over ``fisher_subset``
     query items (drawn ∝ u without replacement), ``embedding_dim`` parameters drawn ∝ F, the
     gradients on those; kernel ``g_u^T diag(F)^-1 g_q / k`` shifted by its minimum.

5. **FLQMI** (Eq. 1, η = ``eta``) maximised by stochastic greedy (ε = ``epsilon``), alseg's
   vectorised optimiser (``optimizer=alseg``, default) or submodlib's (``optimizer=submodlib``).
   Each selected item's score is its greedy gain.

Padding: items smaller than the patch are zero-padded by :func:`item_batches`; their padded
pixels get the target ``IGNORE_INDEX`` so they add nothing to an item's loss (and gradient),
exactly as the scores ignore them.

Options (``--option key=value``): ``query_size`` (``auto`` or an int), ``embedding_dim``
(10000), ``max_candidates`` (``none`` or an int), ``eta`` (1), ``epsilon`` (0.01),
``optimizer`` (``alseg`` | ``submodlib``), ``fisher_subset`` (200), ``embedding_dtype``
(``auto`` | ``float32`` | ``float16``), ``grad_batch_size`` (default ``ctx.batch_size``),
``figure`` (1: record embeddings for the t-SNE map; 0: skip), ``fisher_kernel`` (USIMF:
``raw``, the paper's, or ``cosine``, an ablation).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from alseg.errors import AlsegError
from alseg.model.network import IGNORE_INDEX, eval_mode, per_sample_gradients, unwrap_network
from alseg.progress import console, make_progress
from alseg.strategies.base import Selection, SelectionContext
from alseg.strategies.registry import register
from alseg.strategies.scoring import item_batches, score_pool
from alseg.strategies.submodular import FLQMI, stochastic_greedy, submodlib_select
from alseg.strategies.usim_math import (
    FISHER_DAMPING,
    class_weights,
    cosine_similarity,
    draw_query_set,
    elbow_index,
    fisher_similarity,
    query_set_size,
    sample_fisher_parameters,
    weighted_uncertainty,
)

__all__ = [
    "FISHER_KERNELS",
    "IGNORE_INDEX",
    "USIM",
    "USIMC",
    "USIMF",
    "USIMOptions",
    "USIMResult",
    "fisher_information",
    "gradient_embeddings",
    "pseudo_label_targets",
]

FISHER_KERNELS = ("raw", "cosine")
"""USIMF's kernels (``fisher_kernel``): the paper's ``g_u^T F^-1 g_q / k``, and the same normalised by both F^-1-norms."""
FLOAT16_AUTO_BYTES = 4 << 30
"""``embedding_dtype=auto`` stores embeddings in float16 when float32 would exceed this (4 GiB)."""
FIGURE_MAX_ROWS = 3000
"""Rows of the embedding sample kept for the t-SNE map (paper Fig. 3)."""
FIGURE_MAX_LABELLED = 500
"""Labelled items embedded for the map (they are embedded only for it, so this bounds the cost)."""
FIGURE_MAX_QUERY = 1500
"""Query columns kept for the map; the selected items are always kept."""


# ----------------------------------------------------------------------------- options
@dataclass(frozen=True)
class USIMOptions:
    """USIM's settings, read from ``ctx.options`` (``--option key=value``; see the module docstring)."""

    query_size: int | None = None
    """Fixed Q; None: the elbow rule (spec §4.3)."""
    embedding_dim: int = 10_000
    """USIMC: truncation of the bottleneck gradient; USIMF: parameters drawn ∝ F."""
    max_candidates: int | None = None
    """Restrict U to the most uncertain items (the original code: 30,000); None keeps all."""
    eta: float = 1.0
    epsilon: float = 0.01
    optimizer: Literal["alseg", "submodlib"] = "alseg"
    fisher_subset: int = 200
    embedding_dtype: Literal["auto", "float32", "float16"] = "auto"
    grad_batch_size: int | None = None
    """Items per per-sample-gradient call; default ``ctx.batch_size``."""
    fisher_kernel: Literal["raw", "cosine"] = "raw"
    """USIMF: ``raw`` is the paper's ``g_u^T F^-1 g_q / k`` (spec); ``cosine`` divides it by both
    items' F^-1-norms (an ablation, not the paper: see :class:`USIMF`)."""
    figure: bool = True

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> "USIMOptions":
        """Parse the strings of ``--option`` (other strategies' keys are ignored)."""
        kw: dict[str, Any] = {}
        names = {f.name for f in fields(cls)}
        for key, value in options.items():
            if key not in names:
                continue
            try:
                kw[key] = _parse(key, value)
            except (TypeError, ValueError):
                raise AlsegError(f"invalid USIM option {key}={value!r} — {_HINTS[key]}") from None
        return cls(**kw)


_HINTS = {
    "query_size": "use 'auto' or a positive integer",
    "embedding_dim": "use a positive integer (default 10000)",
    "max_candidates": "use 'none' or a positive integer",
    "eta": "use a non-negative number (default 1)",
    "epsilon": "use a number in (0, 1) (default 0.01)",
    "optimizer": "use 'alseg' or 'submodlib'",
    "fisher_subset": "use a positive integer (default 200)",
    "embedding_dtype": "use 'auto', 'float32' or 'float16'",
    "grad_batch_size": "use a positive integer",
    "figure": "use 1 or 0",
    "fisher_kernel": "use 'raw' (the paper's) or 'cosine'",
}


def _parse(key: str, value: Any) -> Any:
    text = str(value).strip().lower()
    if key in ("query_size", "max_candidates", "grad_batch_size"):
        if text in ("auto", "none", "", "0") and key != "grad_batch_size":
            return None
        n = int(text)
        if n < 1:
            raise ValueError
        return n
    if key in ("embedding_dim", "fisher_subset"):
        n = int(text)
        if n < 1:
            raise ValueError
        return n
    if key == "eta":
        x = float(text)
        if not x >= 0:
            raise ValueError
        return x
    if key == "epsilon":
        x = float(text)
        if not 0 < x < 1:
            raise ValueError
        return x
    if key == "optimizer":
        if text not in ("alseg", "submodlib"):
            raise ValueError
        return text
    if key == "fisher_kernel":
        if text not in FISHER_KERNELS:
            raise ValueError
        return text
    if key == "embedding_dtype":
        if text not in ("auto", "float32", "float16"):
            raise ValueError
        return text
    if key == "figure":
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError
    raise ValueError


# ----------------------------------------------------------------------------- gradients
def pseudo_label_targets(net: torch.nn.Module, x: Tensor, valid: Tensor) -> Tensor:
    """``argmax`` of the deterministic prediction (eval mode), ``IGNORE_INDEX`` outside ``valid``:
    ``(n, *patch)`` long. The pseudo-label ȳ of spec §4.5 on the item's own pixels only."""
    net = unwrap_network(net)
    with torch.no_grad(), eval_mode(net):
        out = net(x)
        logits = out[0] if isinstance(out, (list, tuple)) else out
        y = logits.argmax(1)
    return y.masked_fill_(~valid, IGNORE_INDEX)


def _progress(ctx: SelectionContext, n: int, label: str):
    show = bool(ctx.show_progress and console.is_terminal and n)
    return (make_progress() if show else nullcontext()), show


def _grad_batches(
    ctx: SelectionContext, indices: np.ndarray, batch_size: int | None, params: Sequence[str], max_dim: int | None, label: str
) -> Iterator[tuple[np.ndarray, Tensor]]:
    """Yield ``(rows into indices, per-sample gradients (n, P) float32 on ctx.device)``."""
    net = unwrap_network(ctx.model)
    pos = {int(i): j for j, i in enumerate(indices)}
    bar_ctx, show = _progress(ctx, len(indices), label)
    with bar_ctx as bar, torch.enable_grad():
        task = bar.add_task(f"{label} ({len(indices)} items)", total=len(indices)) if show else None
        for chunk, x, valid in item_batches(ctx, indices, batch_size):
            rows = np.fromiter((pos[int(i)] for i in chunk), dtype=np.int64, count=len(chunk))
            targets = pseudo_label_targets(net, x, valid)
            g = per_sample_gradients(net, x, params, max_dim=max_dim, targets=targets)
            yield rows, g
            if show:
                bar.advance(task, len(chunk))


def gradient_embeddings(
    ctx: SelectionContext,
    indices: np.ndarray,
    params: Sequence[str],
    *,
    max_dim: int | None = None,
    columns: np.ndarray | None = None,
    dtype: torch.dtype = torch.float32,
    batch_size: int | None = None,
    label: str = "gradient embeddings",
) -> tuple[Tensor, Tensor | None]:
    """Per-item gradients of the pseudo-label loss, rows aligned with ``indices``, on ``ctx.device``.

    The gradient over ``params`` (flattened in order) is truncated to ``max_dim`` entries
    (USIMC) and/or restricted to ``columns`` (USIMF's sampled parameters); only ``(N, D)`` is
    kept, never ``(N, P)``. Returns ``(G, row_scale)``: in float32 ``row_scale`` is None; in
    float16 each row is divided by its largest magnitude (so no entry overflows or flushes to
    zero) and ``G * row_scale[:, None]`` is the gradient.
    """
    indices = np.asarray(indices, dtype=np.int64)
    device = torch.device(ctx.device)
    cols = None if columns is None else torch.as_tensor(columns, dtype=torch.long, device=device)
    G: Tensor | None = None
    scale = torch.ones(len(indices), dtype=torch.float32, device=device) if dtype == torch.float16 else None
    for rows, g in _grad_batches(ctx, indices, batch_size, params, max_dim, label):
        if cols is not None:
            g = g.index_select(1, cols)
        if G is None:
            G = torch.empty(len(indices), g.shape[1], dtype=dtype, device=device)
        r = torch.as_tensor(rows, device=device)
        if scale is not None:
            s = g.abs().amax(dim=1).clamp_(min=torch.finfo(torch.float32).tiny)
            scale[r] = s
            g = g / s[:, None]
        G[r] = g.to(dtype)
    if G is None:
        G = torch.empty(0, 0 if cols is None else len(cols), dtype=dtype, device=device)
    return G, scale


def fisher_information(
    ctx: SelectionContext, indices: np.ndarray, params: Sequence[str], batch_size: int | None = None
) -> Tensor:
    """Empirical Fisher diagonal ``F = mean_x (∇θ log p(ȳ|x))²`` over the items ``indices``
    (Appendix A, Eq. 3), ``(P,)`` float64 on ``ctx.device``. The same value as
    :func:`~alseg.strategies.usim_math.fisher_diagonal` of the stacked ``(M, P)`` gradients,
    accumulated chunk by chunk so that ``M x P`` is never held."""
    indices = np.asarray(indices, dtype=np.int64)
    if len(indices) == 0:
        raise ValueError("the Fisher subset is empty")
    total: Tensor | None = None
    for _, g in _grad_batches(ctx, indices, batch_size, params, None, "Fisher information"):
        sq = g.double().square().sum(dim=0)
        total = sq if total is None else total.add_(sq)
    assert total is not None
    return total / len(indices)


# ----------------------------------------------------------------------------- the strategy
@dataclass
class USIMResult:
    """Everything one USIM round computed (positions index ``candidates`` unless stated)."""

    candidates: np.ndarray
    """Pool indices of U (all unlabelled items, or the ``max_candidates`` most uncertain)."""
    u: np.ndarray
    """(|U|,) weighted uncertainty ``Σ_c w_c Uncert(x, c)``."""
    uncertainty: np.ndarray
    """(|U|,) unweighted foreground uncertainty ``Σ_c Uncert(x, c)`` (paper Fig. 5)."""
    weights: np.ndarray
    """Foreground class weights ``w_c``."""
    Q: int
    knee: int
    """The elbow of the sorted ``u`` (Q = max(knee, 5 B) clipped to |U| unless fixed)."""
    draws: np.ndarray
    """(Q,) the query set with duplicates (positions)."""
    columns: np.ndarray
    """Sorted unique draws: one kernel column each (positions)."""
    embeddings: Tensor
    """(|U|, D) gradient embeddings (float32, or float16 scaled by ``row_scale``)."""
    row_scale: Tensor | None
    kernel: Tensor
    """(|U|, |columns|) non-negative similarity given to FLQMI."""
    kernel_shift: float
    """USIMF: the raw kernel's minimum subtracted from it (0 for USIMC, mapped by (S+1)/2)."""
    picked: np.ndarray
    """Selected positions, in greedy order."""
    gains: np.ndarray
    """Marginal gain of each selected item when it was added."""
    fisher_subset: np.ndarray | None = None
    """USIMF: positions of the items whose gradients estimate F."""
    param_index: np.ndarray | None = None
    """USIMF: indices of the sampled parameters in the flattened decoder gradient."""
    fisher: Tensor | None = None
    """USIMF: F on the sampled parameters, ``(k,)``."""
    n_parameters: int = 0
    """Size of the parameter group the gradients are taken over."""
    seconds: dict[str, float] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict, repr=False)
    """What the embedding step keeps for embedding more items in the same space."""


class USIM:
    """Shared pipeline of USIMC and USIMF; subclasses define the embedding and the kernel."""

    name = "usim"
    simulation_only = False
    kernel_kind: Literal["cosine", "fisher"]

    # ------------------------------------------------------------------ subclass hooks
    def embed(self, ctx: SelectionContext, opts: USIMOptions, cand: np.ndarray, u: np.ndarray,
              columns: np.ndarray, dtype: torch.dtype) -> dict[str, Any]:
        raise NotImplementedError

    def kernel(self, state: dict[str, Any], columns: np.ndarray) -> tuple[Tensor, float]:
        raise NotImplementedError

    def figure_rows(self, state: dict[str, Any], G: Tensor, scale: Tensor | None) -> Tensor:
        """Float32 rows whose Euclidean geometry matches the kernel (for the t-SNE map)."""
        raise NotImplementedError

    def embed_more(self, ctx: SelectionContext, opts: USIMOptions, state: dict[str, Any], indices: np.ndarray,
                   dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
        """Embeddings of other items (labelled ones for the map) in the same space."""
        raise NotImplementedError

    # ------------------------------------------------------------------ pipeline
    def run(self, ctx: SelectionContext) -> USIMResult:
        """Steps 1-5 of the module docstring; returns every intermediate (tests read them)."""
        opts = USIMOptions.from_options(ctx.options)
        seconds: dict[str, float] = {}
        unl = ctx.unlabelled
        budget = min(int(ctx.budget), len(unl))
        if budget < 1:
            raise ValueError("USIM needs at least one unlabelled item and a positive budget")

        t0 = time.perf_counter()
        scores = score_pool(ctx, unl, mc=True, deterministic=False)
        seconds["score"] = time.perf_counter() - t0
        assert scores.classwise_std is not None
        voxels = np.asarray(ctx.labelled_voxels_per_class, dtype=np.float64)
        weights = class_weights(voxels[1:])
        u_all = weighted_uncertainty(torch.from_numpy(scores.classwise_std[:, 1:].astype(np.float64)), weights).numpy()
        u_all = np.clip(np.nan_to_num(u_all, nan=0.0), 0.0, None)
        plain_all = scores.classwise_std[:, 1:].sum(axis=1, dtype=np.float64)

        if opts.max_candidates is not None and opts.max_candidates < len(unl):
            keep = max(opts.max_candidates, budget)
            # stable: ties keep pool order, so a seed gives the same candidates on any device
            top = np.sort(np.argsort(-u_all, kind="stable")[:keep])
        else:
            top = np.arange(len(unl))
        cand, u, plain = scores.indices[top], u_all[top], plain_all[top]
        Q = query_set_size(u, budget, opts.query_size)
        knee = elbow_index(np.sort(u)[::-1].copy())
        draws, columns = draw_query_set(u, Q, ctx.rng)

        t0 = time.perf_counter()
        dtype = self._dtype(opts, len(cand))
        state = self.embed(ctx, opts, cand, u, columns, dtype)
        seconds["embed"] = time.perf_counter() - t0
        if "seconds_fisher" in state:  # part of "embed"
            seconds["embed_fisher"] = state.pop("seconds_fisher")

        t0 = time.perf_counter()
        S, shift = self.kernel(state, columns)
        seconds["kernel"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        picked, gains = self.optimize(S, budget, opts, ctx.rng)
        seconds["optimize"] = time.perf_counter() - t0

        return USIMResult(
            candidates=np.asarray(cand, dtype=np.int64), u=u, uncertainty=plain, weights=weights.numpy(), Q=Q,
            knee=knee, draws=draws, columns=columns, embeddings=state["G"], row_scale=state["scale"],
            kernel=S, kernel_shift=shift,
            picked=np.asarray(picked, dtype=np.int64), gains=np.asarray(gains, dtype=np.float64),
            fisher_subset=state.get("fisher_subset"), param_index=state.get("param_index"),
            fisher=state.get("F_sel"), n_parameters=int(state["n_parameters"]), seconds=seconds, state=state,
        )

    @staticmethod
    def optimize(S: Tensor, budget: int, opts: USIMOptions, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Step 5: maximise FLQMI over the kernel ``S`` (|U| x |columns|) with ``opts.optimizer``;
        returns the picked rows in greedy order and their gains."""
        if opts.optimizer == "submodlib":
            seed = int(rng.integers(2**31 - 1))
            return submodlib_select(S.cpu().numpy(), budget, opts.eta, opts.epsilon, seed=seed)
        return stochastic_greedy(FLQMI(S, opts.eta), budget, opts.epsilon, rng=rng)

    def _dtype(self, opts: USIMOptions, n: int) -> torch.dtype:
        if opts.embedding_dtype == "float16":
            return torch.float16
        if opts.embedding_dtype == "float32":
            return torch.float32
        return torch.float16 if n * opts.embedding_dim * 4 > FLOAT16_AUTO_BYTES else torch.float32

    def select(self, ctx: SelectionContext) -> Selection:
        unl = ctx.unlabelled
        if len(unl) <= ctx.budget:  # nothing to choose: all of it (no scoring needed)
            return Selection(unl.copy(), [None] * len(unl), {"Q": 0, "note": "budget covers the unlabelled pool"})
        opts = USIMOptions.from_options(ctx.options)
        res = self.run(ctx)
        pool = ctx.pool
        selected = res.candidates[res.picked]
        uniq, counts = np.unique(res.draws, return_counts=True)
        record: dict[str, Any] = {
            "seconds": dict(res.seconds),
            "batch_uncertainty": float(res.u[res.picked].mean()),
            "batch_uncertainty_unweighted": float(res.uncertainty[res.picked].mean()),
            "Q": int(res.Q),
            "elbow": int(res.knee),
            "query_set": {"ids": [pool[int(res.candidates[j])].id for j in uniq], "draws": counts.astype(int).tolist()},
            "gains": res.gains.tolist(),
            "n_candidates": int(len(res.candidates)),
            "class_weights": res.weights.tolist(),
            "kernel": res.state.get("kernel_name", self.kernel_kind),
            "kernel_shift": float(res.kernel_shift),
            "embedding_dim": int(res.embeddings.shape[1]),
            "embedding_dtype": str(res.embeddings.dtype).removeprefix("torch."),
            "n_parameters": res.n_parameters,
            "optimizer": opts.optimizer,
            "eta": opts.eta,
            "epsilon": opts.epsilon,
            "query_size_rule": "fixed" if opts.query_size is not None else "elbow",
        }
        if len(res.candidates) < len(unl):
            record["max_candidates"] = int(len(res.candidates))
        if res.fisher_subset is not None:
            record["fisher_subset"] = int(len(res.fisher_subset))
        if opts.figure:
            t0 = time.perf_counter()
            record["embeddings"] = self._figure(ctx, opts, res)
            record["seconds"]["embed_figure"] = time.perf_counter() - t0
        return Selection(selected.astype(np.int64), res.gains.tolist(), record)

    # ------------------------------------------------------------------ t-SNE map
    def _figure(self, ctx: SelectionContext, opts: USIMOptions, res: USIMResult) -> dict[str, np.ndarray]:
        """Sample of embeddings with roles labelled | unlabelled | query | selected (paper Fig. 3).

        Drawn from its own generator (seeded by ``ctx.rng`` after the selection), so turning the
        figure off never changes a selection.
        """
        rng = np.random.default_rng(int(ctx.rng.integers(2**63 - 1)))
        n = len(res.candidates)
        role = np.full(n, "unlabelled", dtype=object)
        role[res.columns] = "query"
        role[res.picked] = "selected"
        sel = res.picked
        lab = np.flatnonzero(ctx.labelled)
        n_lab = min(len(lab), FIGURE_MAX_LABELLED)
        query = np.setdiff1d(res.columns, sel)
        n_query = min(FIGURE_MAX_QUERY, max(FIGURE_MAX_ROWS - len(sel) - n_lab, 0))
        if len(query) > n_query:
            query = rng.choice(query, n_query, replace=False)
        rest = np.setdiff1d(np.arange(n), np.concatenate([res.columns, sel]))
        room = max(FIGURE_MAX_ROWS - len(sel) - len(query) - n_lab, 0)
        if len(rest) > room:
            rest = rng.choice(rest, room, replace=False)
        rows = np.sort(np.concatenate([sel, query, rest]).astype(np.int64))
        r = torch.as_tensor(rows, device=res.embeddings.device)
        scale = None if res.row_scale is None else res.row_scale[r]
        parts = [self.figure_rows(res.state, res.embeddings[r], scale).cpu()]
        roles = [role[rows]]
        if n_lab:
            lab_idx = np.sort(rng.choice(lab, n_lab, replace=False))
            G_l, s_l = self.embed_more(ctx, opts, res.state, lab_idx, res.embeddings.dtype)
            parts.append(self.figure_rows(res.state, G_l, s_l).cpu())
            roles.append(np.full(n_lab, "labelled", dtype=object))
        return {"embeddings": torch.cat(parts).numpy().astype(np.float32), "role": np.concatenate(roles).astype(str)}


def _fisher_norms(G: Tensor, F_sel: Tensor, scale: Tensor | None, chunk_rows: int = 4096) -> Tensor:
    """``sqrt(g^T diag(F)^-1 g / k)`` per row, with :func:`fisher_similarity`'s damping, so that
    ``fisher_similarity(G, G) / outer(norms, norms)`` is a cosine."""
    f = F_sel.double()
    inverse = (1.0 / (f + FISHER_DAMPING * f.mean())).to(G.device)
    out = torch.empty(G.shape[0], dtype=torch.float64, device=G.device)
    for r0 in range(0, G.shape[0], chunk_rows):
        out[r0 : r0 + chunk_rows] = (G[r0 : r0 + chunk_rows].double().square() * inverse).sum(1) / f.numel()
    out = out.sqrt_()
    if scale is not None:
        out.mul_(scale.double())
    return out.clamp_(min=torch.finfo(torch.float32).tiny).float()


@register("usimc")
class USIMC(USIM):
    """USIM with the cosine kernel of truncated bottleneck gradients (Appendix A, Eq. 2).

    The bottleneck convs' gradient (``net.bottleneck_parameters()``, flattened in order) is
    truncated to its first ``embedding_dim`` entries, as the paper does "for a fair comparison
    with USIMF and to stay tractable". The cosine is mapped to ``[0, 1]`` by ``(S + 1) / 2``,
    since facility location assumes ``S >= 0`` (spec §4.6)."""

    name = "usimc"
    kernel_kind = "cosine"

    def embed(self, ctx, opts, cand, u, columns, dtype):
        net = unwrap_network(ctx.model)
        params = net.bottleneck_parameters()
        G, scale = gradient_embeddings(ctx, cand, params, max_dim=opts.embedding_dim, dtype=dtype,
                                       batch_size=opts.grad_batch_size, label="bottleneck gradients")
        return {"G": G, "scale": scale, "params": params, "max_dim": opts.embedding_dim,
                "n_parameters": net.parameter_count(params)}

    def kernel(self, state, columns):
        G = state["G"]
        S = cosine_similarity(G, G[torch.as_tensor(columns, device=G.device)])
        return S.add_(1.0).div_(2.0).clamp_(0.0, 1.0), 0.0  # nonnegative_kernel(S, "cosine"), in place

    def figure_rows(self, state, G, scale):
        return torch.nn.functional.normalize(G.float(), dim=1)

    def embed_more(self, ctx, opts, state, indices, dtype):
        return gradient_embeddings(ctx, indices, state["params"], max_dim=state["max_dim"], dtype=dtype,
                                   batch_size=opts.grad_batch_size, label="bottleneck gradients (labelled)")


@register("usimf")
class USIMF(USIM):
    """USIM with the Fisher kernel over the decoder convs (Appendix A, Eq. 3-4).

    ``F`` is the mean squared per-sample gradient over ``fisher_subset`` query items (drawn
    ∝ u without replacement among the query set's distinct items); ``embedding_dim``
    parameters are drawn ∝ F (:func:`sample_fisher_parameters`); the kernel
    ``g_u^T diag(F)^-1 g_q / k`` (:func:`fisher_similarity`, relatively damped) is shifted by
    its minimum so that ``S >= 0`` (spec §4.6). The shift changes no greedy choice: it adds
    ``|Q| c`` to every first-step gain and ``η c`` to every later one.

    Caveat, measured on the demo data: decoder gradients of different items are strongly
    aligned (median cosine 0.78 there), so the unnormalised kernel is close to rank one,
    ``S_uq ≈ a_u a_q``. Then the item with the largest ``a`` covers every query column at the
    first step, later coverage gains are ~0, and the rest of the batch is ranked by the
    modular relevance term ``η max_q S_uq`` alone, i.e. by gradient size, duplicates included.
    ``fisher_kernel=cosine`` (divide by both F^-1-norms, map by (S+1)/2) is the ablation that
    removes the scale; it is not the paper's kernel. On real data (Task04, README) the raw
    kernel did reproduce the paper's redundancy result (1% of the batch from a case that made
    34% of the query set, no repeats)."""

    name = "usimf"
    kernel_kind = "fisher"

    def embed(self, ctx, opts, cand, u, columns, dtype):
        net = unwrap_network(ctx.model)
        params = net.decoder_parameters()
        m = min(opts.fisher_subset, len(columns))
        w = u[columns]
        p = w / w.sum() if w.sum() > 0 else None
        subset = np.sort(ctx.rng.choice(columns, size=m, replace=False, p=p)).astype(np.int64)
        t0 = time.perf_counter()
        F = fisher_information(ctx, cand[subset], params, opts.grad_batch_size)
        t_fisher = time.perf_counter() - t0
        param_index = sample_fisher_parameters(F, opts.embedding_dim, ctx.rng)
        F_sel = F[torch.as_tensor(param_index, device=F.device)]
        G, scale = gradient_embeddings(ctx, cand, params, columns=param_index, dtype=dtype,
                                       batch_size=opts.grad_batch_size, label="decoder Fisher scores")
        return {"G": G, "scale": scale, "params": params, "param_index": param_index, "F_sel": F_sel,
                "fisher_subset": subset, "n_parameters": int(F.numel()), "seconds_fisher": t_fisher,
                "fisher_kernel": opts.fisher_kernel,
                "kernel_name": "fisher" if opts.fisher_kernel == "raw" else "fisher-cosine"}

    def kernel(self, state, columns):
        G, scale, F_sel = state["G"], state["scale"], state["F_sel"]
        cols = torch.as_tensor(columns, device=G.device)
        if F_sel.numel() == 0 or not bool(F_sel.sum() > 0):
            # no parameter carries Fisher information (every gradient of the subset is 0):
            # the kernel is flat, FLQMI's gains tie and stochastic greedy picks at random
            return torch.zeros(G.shape[0], len(columns), dtype=torch.float32, device=G.device), 0.0
        S = fisher_similarity(G, G[cols], F_sel)
        if state.get("fisher_kernel") == "cosine":
            # cosine in the F^-1 metric: S_uq / sqrt(S_uu S_qq), S_uu = |g_u|^2_{F^-1} / k
            norms = _fisher_norms(G, F_sel, scale)
            S.div_(norms[:, None]).div_(norms[cols][None, :])
            return S.add_(1.0).div_(2.0).clamp_(0.0, 1.0), 0.0  # as USIMC's (S + 1) / 2
        if scale is not None:
            S.mul_(scale[:, None]).mul_(scale[cols][None, :])
        shift = float(S.min())
        return S.sub_(shift), shift  # nonnegative_kernel(S, "fisher"), in place

    def figure_rows(self, state, G, scale):
        """Whitened scores ``g / sqrt(F + damping)``: their dot product is the kernel (times k)."""
        f = state["F_sel"].double()
        if f.numel() == 0:
            return G.float()
        w = (1.0 / (f + FISHER_DAMPING * f.mean()).sqrt()).float().to(G.device)
        out = G.float() * w
        return out if scale is None else out * scale[:, None]

    def embed_more(self, ctx, opts, state, indices, dtype):
        return gradient_embeddings(ctx, indices, state["params"], columns=state["param_index"], dtype=dtype,
                                   batch_size=opts.grad_batch_size, label="decoder Fisher scores (labelled)")
