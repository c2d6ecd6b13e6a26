"""Uncertainty scores over softmax probabilities, shared by every uncertainty strategy (paper §3.3.1).

All functions take probabilities shaped ``(N, C, *spatial)`` (2D or 3D items) and return one
value per item: the mean over the item's pixels (voxels), as the paper ranks items by it.
MC dropout passes are streamed through :class:`MCDropoutAccumulator` so that the T passes never
sit in memory together (T x a batch of 512 x 512 items would not fit on a GPU).

Items smaller than the patch are zero-padded to it before the forward pass; an optional boolean
``mask`` ``(N, *spatial)`` (True = the item's own pixels) keeps the padding out of every
per-item mean and sum. Without a mask every pixel counts, as before.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["MCDropoutAccumulator", "MCScores", "entropy_map", "item_entropy"]


def entropy_map(p: Tensor) -> Tensor:
    """Per-pixel Shannon entropy ``-sum_c p_c log p_c`` in nats, shape ``(N, *spatial)``.

    ``torch.special.entr`` defines ``0 log 0 = 0``, so one-hot predictions give exactly 0
    instead of NaN.
    """
    return torch.special.entr(p).sum(dim=1)


def _pixel_mean(x: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean over every axis but the first (over the ``mask``'s pixels when given): one value per item.

    An item whose mask is empty gets 0 (not NaN): it has no pixels to be uncertain about.
    """
    flat = x.reshape(x.shape[0], -1)
    if mask is None:
        return flat.mean(dim=1)
    m = _flat_mask(mask, x)
    return (flat * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)


def _pixel_mean_per_class(x: Tensor, mask: Tensor | None = None) -> Tensor:
    """``(N, C, *spatial)`` → ``(N, C)``: the mean over each item's pixels (its ``mask``'s when
    given), per channel."""
    flat = x.reshape(*x.shape[:2], -1)
    if mask is None:
        return flat.mean(dim=2)
    m = _flat_mask(mask, x[:, 0]).unsqueeze(1)
    return (flat * m).sum(dim=2) / m.sum(dim=2).clamp(min=1)


def _flat_mask(mask: Tensor, like: Tensor) -> Tensor:
    """``mask`` ``(N, *spatial)`` flattened to ``(N, P)`` in ``like``'s dtype and device."""
    if mask.shape[0] != like.shape[0] or mask[0].numel() != like[0].numel():
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not match the pixel map {tuple(like.shape)}")
    return mask.reshape(mask.shape[0], -1).to(device=like.device, dtype=like.dtype)


def item_entropy(p: Tensor, mask: Tensor | None = None) -> Tensor:
    """Max Entropy score of the deterministic pass: mean pixel entropy per item, shape ``(N,)``;
    only the pixels where ``mask`` (``(N, *spatial)`` bool) is True count when it is given."""
    return _pixel_mean(entropy_map(p), mask)


@dataclass(frozen=True)
class MCScores:
    """Per-item aggregates of T MC dropout passes (paper §3.3.1); every field is a mean over pixels
    except ``classwise_std_sum``, which USIM needs summed over pixels."""

    mean_std: Tensor
    """(N,) ``mean_c std_t p_t(c)``, population std over the passes."""
    bald: Tensor
    """(N,) ``H(p̄) - mean_t H(p_t)``, the mutual information between prediction and weights."""
    entropy_of_mean: Tensor
    """(N,) ``H(p̄)``, the predictive entropy of the MC average."""
    classwise_std_sum: Tensor
    """(N, C) ``sum_pixels std_t p_t(c)`` for every class, background included (column 0);
    USIM uses the foreground columns."""
    class_entropy: Tensor
    """(N, C) mean over pixels of ``H(p̄) · p̄(c)``: the predictive entropy attributed to each
    class by its mean probability (nnActive's class-specific entropy channels; class-balanced
    predictive entropy ranks items per class by it)."""


class MCDropoutAccumulator:
    """Running sums over MC dropout passes: ``update`` once per pass, ``finalize`` at the end.

    Keeps ``sum_t p_t``, ``sum_t p_t²`` and ``sum_t H(p_t)`` in float64: the variance
    ``E[p²] - E[p]²`` cancels catastrophically in float32 when the passes nearly agree (a std
    of 1e-4 is a variance of 1e-8, below float32's resolution of values near 1).
    """

    def __init__(self) -> None:
        self._sum_p: Tensor | None = None
        self._sum_p2: Tensor | None = None
        self._sum_entropy: Tensor | None = None
        self._dtype = torch.float32
        self.n_passes = 0

    def update(self, p_t: Tensor) -> None:
        """Add one pass of softmax probabilities ``(N, C, *spatial)``."""
        p64 = p_t.detach().to(torch.float64)
        if self._sum_p is None:
            self._dtype = torch.promote_types(p_t.dtype, torch.float32)
            self._sum_p = p64.clone()
            self._sum_p2 = p64 * p64
            self._sum_entropy = entropy_map(p64)
        else:
            if p64.shape != self._sum_p.shape:
                raise ValueError(
                    f"MC pass has shape {tuple(p64.shape)}, earlier passes {tuple(self._sum_p.shape)}; "
                    "feed the same batch of items to every pass"
                )
            self._sum_p += p64
            self._sum_p2 += p64 * p64
            self._sum_entropy += entropy_map(p64)
        self.n_passes += 1

    def finalize(self, mask: Tensor | None = None) -> MCScores:
        """Per-item scores from the passes seen so far. Float error can make a variance or a BALD
        value slightly negative; both are clamped to 0, their true lower bound.

        ``mask`` (``(N, *spatial)`` bool, optional): the item's own pixels; padding outside it
        counts neither in the means nor in ``classwise_std_sum``."""
        if self._sum_p is None or self._sum_p2 is None or self._sum_entropy is None:
            raise ValueError("MCDropoutAccumulator.finalize() called before any update(); run at least one pass")
        t = float(self.n_passes)
        mean_p = self._sum_p / t
        std = (self._sum_p2 / t - mean_p * mean_p).clamp_(min=0.0).sqrt_()
        entropy_of_mean = entropy_map(mean_p)
        bald = (entropy_of_mean - self._sum_entropy / t).clamp_(min=0.0)
        std_flat = std.reshape(*std.shape[:2], -1)
        class_entropy = _pixel_mean_per_class(entropy_of_mean.unsqueeze(1) * mean_p, mask)
        if mask is not None:
            std_flat = std_flat * _flat_mask(mask, bald).unsqueeze(1)
        return MCScores(
            mean_std=_pixel_mean(std.mean(dim=1), mask).to(self._dtype),
            bald=_pixel_mean(bald, mask).to(self._dtype),
            entropy_of_mean=_pixel_mean(entropy_of_mean, mask).to(self._dtype),
            classwise_std_sum=std_flat.sum(dim=2).to(self._dtype),
            class_entropy=class_entropy.to(self._dtype),
        )
