"""Uncertainty scores over softmax probabilities, shared by every uncertainty strategy (paper §3.3.1).

All functions take probabilities shaped ``(N, C, *spatial)`` (2D or 3D items) and return one
value per item: the mean over the item's pixels (voxels), as the paper ranks items by it.
MC dropout passes are streamed through :class:`MCDropoutAccumulator` so that the T passes never
sit in memory together (T x a batch of 512 x 512 items would not fit on a GPU).

Items smaller than the patch are zero-padded to it before the forward pass; an optional boolean
``mask`` ``(N, *spatial)`` (True = the item's own pixels) keeps the padding out of every
per-item mean and sum. Without a mask every pixel counts, as before.

Items smaller than the patch are scored from one sliding-window prediction of their case
(:mod:`alseg.scoring.case_windows`): the accumulator then holds one volume, and
:meth:`MCDropoutAccumulator.box_scores` sums its voxel scores over every item's box at once
with integral images (:func:`box_sums`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["MCDropoutAccumulator", "MCScores", "box_means", "box_sums", "entropy_map", "item_entropy"]


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


def box_sums(maps: Tensor | Sequence[Tensor], boxes: np.ndarray | Tensor) -> Tensor:
    """Sums of voxel maps over boxes: ``maps`` ``(Ch, Z, Y, X)`` (or Ch maps ``(Z, Y, X)``),
    ``boxes`` ``(M, 3, 2)`` (start, stop) per axis inside the maps; returns ``(M, Ch)`` float64.

    Integral images (summed-area tables): each box's sum is 8 corners of the cumulative sums, so
    the cost is one pass over the voxels whatever the number of boxes, and they may overlap.
    Channels are summed one at a time (float64, one volume of extra memory)."""
    b = torch.as_tensor(np.asarray(boxes), dtype=torch.long).reshape(-1, 3, 2)
    out = []
    for m in maps:
        table = torch.zeros(tuple(n + 1 for n in m.shape), dtype=torch.float64, device=m.device)
        table[1:, 1:, 1:] = m.to(torch.float64).cumsum(0).cumsum(1).cumsum(2)
        lo, hi = b[:, :, 0].to(m.device), b[:, :, 1].to(m.device)
        total = torch.zeros(len(b), dtype=torch.float64, device=m.device)
        for corner in range(8):  # inclusion-exclusion: + for an even number of lower corners
            pick = [(corner >> axis) & 1 for axis in range(3)]
            idx = [lo[:, a] if pick[a] else hi[:, a] for a in range(3)]
            total += (-1) ** sum(pick) * table[idx[0], idx[1], idx[2]]
        out.append(total)
    return torch.stack(out, dim=1) if out else torch.zeros((len(b), 0), dtype=torch.float64)


def box_means(maps: Tensor | Sequence[Tensor], boxes: np.ndarray | Tensor) -> Tensor:
    """:func:`box_sums` divided by each box's voxel count: ``(M, Ch)`` float64."""
    b = torch.as_tensor(np.asarray(boxes), dtype=torch.long).reshape(-1, 3, 2)
    sums = box_sums(maps, b)
    return sums / (b[:, :, 1] - b[:, :, 0]).prod(dim=1).clamp(min=1).to(sums)[:, None]


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
        mean_p, std, entropy_of_mean, bald = self._voxel_maps("finalize")
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

    def _voxel_maps(self, caller: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Per voxel, from the passes so far: ``p̄`` and ``std_t p_t`` ``(N, C, *S)``, ``H(p̄)``
        and BALD ``(N, *S)``, float64."""
        if self._sum_p is None or self._sum_p2 is None or self._sum_entropy is None:
            raise ValueError(f"MCDropoutAccumulator.{caller}() called before any update(); run at least one pass")
        t = float(self.n_passes)
        mean_p = self._sum_p / t
        std = (self._sum_p2 / t - mean_p * mean_p).clamp_(min=0.0).sqrt_()
        entropy_of_mean = entropy_map(mean_p)
        bald = (entropy_of_mean - self._sum_entropy / t).clamp_(min=0.0)
        return mean_p, std, entropy_of_mean, bald

    def box_scores(self, boxes: np.ndarray | Tensor) -> MCScores:
        """Per-box scores of passes over one volume (updates ``(1, C, Z, Y, X)``): for each box
        ``(M, 3, 2)`` the fields :meth:`finalize` gives an item whose mask is that box, from
        integral images of the voxel maps (:func:`box_sums`) instead of one masked item each."""
        mean_p, std, entropy_of_mean, bald = self._voxel_maps("box_scores")
        if mean_p.shape[0] != 1 or mean_p.ndim != 5:
            raise ValueError(f"box_scores needs passes over one 3D volume (1, C, Z, Y, X), got {tuple(mean_p.shape)}")
        k = mean_p.shape[1]
        h = entropy_of_mean[0]
        maps = [std[0].mean(dim=0), bald[0], h, *std[0], *(h * p for p in mean_p[0])]
        b = torch.as_tensor(np.asarray(boxes), dtype=torch.long).reshape(-1, 3, 2)
        sums = box_sums(maps, b)
        n = (b[:, :, 1] - b[:, :, 0]).prod(dim=1).clamp(min=1).to(sums)
        return MCScores(
            mean_std=(sums[:, 0] / n).to(self._dtype),
            bald=(sums[:, 1] / n).to(self._dtype),
            entropy_of_mean=(sums[:, 2] / n).to(self._dtype),
            classwise_std_sum=sums[:, 3 : 3 + k].to(self._dtype),
            class_entropy=(sums[:, 3 + k :] / n[:, None]).to(self._dtype),
        )
