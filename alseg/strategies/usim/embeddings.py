"""USIM's gradient embeddings of the pseudo-label loss (paper §3.3.3, Appendix A).

Padding: items smaller than the patch are zero-padded by pool inference's ``chunk_batches``;
their padded pixels get the target ``IGNORE_INDEX`` so they add nothing to an item's loss (and
gradient), exactly as the scores ignore them. Items smaller than the patch (``--item-size``) are
read each in the patch-sized window centred on it, its own voxels valid (the per-item path of
pool inference): a per-item gradient needs a backward of its own, so sharing the case's
windows, as their scores do, would save the forwards only.

Every pass runs chunk by chunk through :func:`alseg.scoring.sharding.map_chunks`, so under
``alseg loop --devices N`` the ranks share it and rank 0 gets the single-process result.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from alseg.model.network import IGNORE_INDEX, eval_mode, per_sample_gradients, unwrap_network
from alseg.progress import console, make_progress
from alseg.scoring.pool_inference import ScoringContext, chunk_batches, pool_chunks
from alseg.scoring.sharding import Numbered, map_chunks

__all__ = ["GradientEmbedding", "IGNORE_INDEX", "fisher_information", "gradient_embeddings", "pseudo_label_targets"]


@dataclass
class GradientEmbedding:
    """One embedding per candidate item, and what is needed to embed more items alike."""

    G: Tensor
    """(N, D) float32, or float16 rows divided by ``scale``."""
    scale: Tensor | None
    """(N,) row scales of float16 rows (``G * scale[:, None]`` is the gradient); None in float32."""
    params: list[str]
    """Parameter names the gradient is taken over."""
    n_parameters: int
    """Scalars in ``params``."""
    max_dim: int | None = None
    """USIMC: the truncation of the flattened gradient."""
    param_index: np.ndarray | None = None
    """USIMF: indices of the parameters drawn ∝ F in the flattened decoder gradient."""
    fisher: Tensor | None = None
    """USIMF: F on the drawn parameters, ``(k,)``."""
    fisher_subset: np.ndarray | None = None
    """USIMF: candidate positions whose gradients estimate F."""
    seconds_fisher: float = 0.0

    def rows(self, positions: np.ndarray | Tensor) -> "GradientEmbedding":
        """The same embedding restricted (or repeated) to ``positions``."""
        r = torch.as_tensor(np.asarray(positions, dtype=np.int64), device=self.G.device)
        return GradientEmbedding(
            self.G[r],
            None if self.scale is None else self.scale[r],
            self.params,
            self.n_parameters,
            self.max_dim,
            self.param_index,
            self.fisher,
            None,
            self.seconds_fisher,
        )


def pseudo_label_targets(net: torch.nn.Module, x: Tensor, valid: Tensor) -> Tensor:
    """``argmax`` of the deterministic prediction (eval mode), ``IGNORE_INDEX`` outside ``valid``:
    ``(n, *patch)`` long. The pseudo-label ȳ of paper §3.3.3 on the item's own pixels only."""
    net = unwrap_network(net)
    with torch.no_grad(), eval_mode(net):
        out = net(x)
        logits = out[0] if isinstance(out, (list, tuple)) else out
        y = logits.argmax(1)
    return y.masked_fill_(~valid, IGNORE_INDEX)


def _gradient_chunks(
    ctx: ScoringContext,
    numbered: Numbered,
    *,
    params: Sequence[str],
    max_dim: int | None,
    columns: np.ndarray | None,
    square_sum: bool,
    label: str,
) -> Iterator[tuple[int, Tensor]]:
    """Chunk function (see :mod:`alseg.scoring.sharding`): per chunk its per-sample gradients
    ``(n, P)`` float32 (restricted to ``columns``), or with ``square_sum`` their column-wise
    sum of squares ``(P,)`` float64 (the Fisher diagonal's terms)."""
    net = unwrap_network(ctx.model)
    device = torch.device(ctx.device)
    cols = None if columns is None else torch.as_tensor(columns, dtype=torch.long, device=device)
    n = sum(len(idx) for _, idx in numbered)
    show = bool(ctx.show_progress and console.is_terminal and n)
    with make_progress() if show else nullcontext() as bar, torch.enable_grad():
        task = bar.add_task(f"{label} ({n} items)", total=n) if show else None
        for c, chunk, x, valid in chunk_batches(ctx, numbered):
            targets = pseudo_label_targets(net, x, valid)
            g = per_sample_gradients(net, x, params, max_dim=max_dim, targets=targets)
            if cols is not None:
                g = g.index_select(1, cols)
            yield c, (g.double().square().sum(dim=0) if square_sum else g)
            if show:
                bar.advance(task, len(chunk))


def gradient_embeddings(
    ctx: ScoringContext,
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
    pos = {int(i): j for j, i in enumerate(indices)}
    chunks = pool_chunks(ctx, indices, batch_size)
    if columns is not None:  # numpy, so that a request to the other ranks pickles it without a device
        columns = torch.as_tensor(columns).cpu().numpy()
    G: Tensor | None = None
    scale = torch.ones(len(indices), dtype=torch.float32, device=device) if dtype == torch.float16 else None
    numbered = list(enumerate(chunks))
    kwargs = dict(params=list(params), max_dim=max_dim, columns=columns, square_sum=False, label=label)
    for c, g in map_chunks(ctx, numbered, _gradient_chunks, **kwargs):
        g = g.to(device)
        if G is None:
            G = torch.empty(len(indices), g.shape[1], dtype=dtype, device=device)
        r = torch.as_tensor([pos[int(i)] for i in chunks[c]], device=device)
        if scale is not None:
            s = g.abs().amax(dim=1).clamp_(min=torch.finfo(torch.float32).tiny)
            scale[r] = s
            g = g / s[:, None]
        G[r] = g.to(dtype)
    if G is None:
        G = torch.empty(0, 0 if columns is None else len(columns), dtype=dtype, device=device)
    return G, scale


def fisher_information(
    ctx: ScoringContext, indices: np.ndarray, params: Sequence[str], batch_size: int | None = None
) -> Tensor:
    """Empirical Fisher diagonal ``F = mean_x (∇θ log p(ȳ|x))²`` over the items ``indices``
    (Appendix A, Eq. 3), ``(P,)`` float64 on ``ctx.device``. The same value as
    :func:`~alseg.strategies.usim_math.fisher_diagonal` of the stacked ``(M, P)`` gradients,
    accumulated chunk by chunk so that ``M x P`` is never held."""
    indices = np.asarray(indices, dtype=np.int64)
    if len(indices) == 0:
        raise ValueError("the Fisher subset is empty")
    total: Tensor | None = None
    numbered = list(enumerate(pool_chunks(ctx, indices, batch_size)))
    kwargs = dict(params=list(params), max_dim=None, columns=None, square_sum=True, label="Fisher information")
    for _, sq in map_chunks(ctx, numbered, _gradient_chunks, **kwargs):  # summed in chunk order, as one process
        sq = sq.to(ctx.device)
        total = sq if total is None else total.add_(sq)
    assert total is not None
    return total / len(indices)
