"""Element-wise dropout for MC sampling, with a sparse implementation for small rates on CPU.

Why not only ``torch.nn.functional.dropout``: alseg keeps dropout on during training at
p = 0.01 (docs/design.md), after every encoder/decoder conv. On CPU,
``F.dropout`` draws one random number per element and saves a full-size mask for the backward pass, so at p = 0.01 it spends
almost all its time deciding *not* to drop; it cost ~15% of a training step
(``benchmarks/train_throughput.py``). :func:`sparse_dropout` draws only the dropped positions:
the gaps between successive dropped elements of an i.i.d. Bernoulli(p) sequence are
Geometric(p), so ``cumsum`` of geometric draws gives exactly the same distribution of masks, at
~p·n random numbers, and saves only those indices for backward (8·p bytes per element instead
of 1). ``F.dropout`` stays the reference (tests compare the two) and the path on accelerators,
where it is a fused kernel.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MCDropout", "dropped_positions", "sparse_dropout"]

SPARSE_MAX_RATE = 0.2
"""Above this rate the sparse index list stops being cheaper than a dense mask."""


def dropped_positions(
    n: int, p: float, *, device: torch.device | str = "cpu", generator: torch.Generator | None = None
) -> Tensor:
    """Sorted flat indices in ``[0, n)`` each drawn independently with probability ``p``.

    Sampled as a Bernoulli process: ``cumsum`` of Geometric(p) gaps, extended until it passes
    ``n`` so that the tail is never truncated.
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"dropout rate must be in (0, 1), got {p}")
    mean = n * p
    chunk = int(mean + 8.0 * math.sqrt(mean) + 16)
    pos = torch.empty(chunk, dtype=torch.long, device=device).geometric_(p, generator=generator).cumsum_(0).sub_(1)
    parts = [pos]
    while int(parts[-1][-1]) < n - 1:  # happens with probability < 1e-15; kept for exactness
        more = torch.empty(chunk, dtype=torch.long, device=device).geometric_(p, generator=generator).cumsum_(0)
        parts.append(more.add_(parts[-1][-1]))
    pos = torch.cat(parts) if len(parts) > 1 else pos
    return pos[pos < n]


class _SparseDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, p: float) -> Tensor:
        idx = dropped_positions(x.numel(), p, device=x.device)
        scale = 1.0 / (1.0 - p)
        out = (x * scale).contiguous()
        out.view(-1).index_fill_(0, idx, 0.0)
        ctx.save_for_backward(idx)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (idx,) = ctx.saved_tensors
        out = (grad * ctx.scale).contiguous()
        out.view(-1).index_fill_(0, idx, 0.0)
        return out, None


def sparse_dropout(x: Tensor, p: float) -> Tensor:
    """Training-mode dropout (zero each element with probability ``p``, scale the rest by
    ``1 / (1 - p)``) with the same distribution as ``F.dropout(x, p, training=True)``."""
    if p == 0.0:
        return x
    return _SparseDropout.apply(x, p)


def _use_sparse(x: Tensor, p: float) -> bool:
    if x.device.type != "cpu" or p > SPARSE_MAX_RATE or x.numel() == 0:
        return False
    wrapped = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", None)  # vmap/grad: keep the reference
    return not (wrapped is not None and wrapped(x))


class MCDropout(nn.Dropout):
    """Element-wise dropout that :func:`alseg.model.network.mc_dropout` can find and switch on by itself.

    The identity when ``p == 0`` or in eval mode, so a network trained without dropout pays
    nothing for carrying these modules and can still be sampled with MC dropout. On CPU and
    for ``p <= 0.2`` it runs :func:`sparse_dropout`; ``sparse = False`` forces ``F.dropout``.
    """

    def __init__(self, p: float = 0.5, inplace: bool = False, sparse: bool = True) -> None:
        super().__init__(p, inplace)
        self.sparse = sparse

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        if self.sparse and _use_sparse(x, self.p):
            return sparse_dropout(x, self.p)
        return F.dropout(x, self.p, True, self.inplace)
