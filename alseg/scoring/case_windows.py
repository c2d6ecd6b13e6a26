"""Items smaller than the patch scored from one sliding window per case (docs/design.md,
"Annotation items smaller than the patch").

Small items (``--item-size``) tile their case. Read each in its own patch-sized window and a
pass costs one forward per item: ~12 per Task04 case for 20³ items, where the case needs one
window. Here the case (in 2D: the slices that hold items) is predicted once per pass with the
plan's sliding window (:func:`alseg.model.inference.sliding_window_logits`: Gaussian blending,
overlap 0.5, as evaluation predicts), the passes are summed voxel by voxel
(:class:`MCDropoutAccumulator`: memory O(K x case voxels), never T maps at once) and the voxel
scores summed over every item's box by integral images
(:meth:`MCDropoutAccumulator.box_scores`). Forwards per case: windows x passes, whatever the
number of items. Every item lies inside its case, so its ``valid`` voxels are its whole box.

Embeddings (Core-Set's bottleneck mean, BADGE's head gradient) are taken from the same window
grid (:func:`embedding_windows`): each item from one window that holds it whole, its own voxels
``valid`` there, as the per-item path reads it in a window centred on it; one forward of a
window serves all its items.

The seeding, sharding and progress around these functions are pool inference's
(:mod:`alseg.scoring.pool_inference`); this module knows one case at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import Tensor, nn

from alseg.data.pool import Pool
from alseg.model.inference import sliding_window_logits, sliding_windows
from alseg.model.network import output_logits
from alseg.scoring.scores import MCDropoutAccumulator, MCScores, box_means, entropy_map

__all__ = ["CaseView", "case_entropy", "case_mc_scores", "case_view", "embedding_windows", "window_valid"]


@dataclass(frozen=True)
class CaseView:
    """What a pass over one case predicts, laid out for the network, and its items' boxes.

    3D: ``images`` is the case ``(1, C, Z, Y, X)``; 2D: the slices holding items ``(S, C, Y, X)``
    (a 2D network predicts slices), and ``boxes`` count those slices as rows ``0..S-1``."""

    images: np.ndarray
    """``(B, C, *patch dims)`` float32."""
    boxes: np.ndarray
    """``(M, 3, 2)`` int64: each item's (start, stop) per axis of the predicted volume ``(K, Z', Y, X)``."""


def case_view(pool: Pool, volume: np.ndarray, indices: np.ndarray) -> CaseView:
    """The view of ``volume`` (the case's ``(C, Z, Y, X)`` image) that scoring the items
    ``indices`` (all of that case) needs."""
    boxes = np.array([pool[int(i)].box for i in indices], dtype=np.int64).reshape(-1, 3, 2)
    if pool.config_name != "2d":
        return CaseView(np.array(volume, dtype=np.float32, copy=True)[None], boxes)  # read now, writable
    rows = np.unique(boxes[:, 0, 0])
    images = np.ascontiguousarray(np.asarray(volume[:, rows], dtype=np.float32).swapaxes(0, 1))
    boxes[:, 0, 0] = np.searchsorted(rows, boxes[:, 0, 0])
    boxes[:, 0, 1] = boxes[:, 0, 0] + 1
    return CaseView(images, boxes)


def _probabilities(
    net: nn.Module, images: Tensor, patch: tuple[int, ...], sw_batch_size: int, copies: int = 1
) -> Tensor:
    """Softmax of the blended logits of ``copies`` passes of the network in its current mode (eval
    or MC dropout): ``(copies, K, Z', Y, X)``. The copies share the window batches."""
    batch = images.repeat(copies, *([1] * (images.ndim - 1))) if copies > 1 else images
    # blend in float32 even under autocast
    p = sliding_window_logits(lambda t: output_logits(net(t)).float(), batch, patch, sw_batch_size).softmax(1)
    if len(patch) == 3:
        return p
    # 2D: (copies * S, K, Y, X) -> (copies, K, S, Y, X)
    return p.reshape(copies, images.shape[0], *p.shape[1:]).transpose(1, 2)


def case_entropy(net: nn.Module, view: CaseView, images: Tensor, patch: tuple[int, ...], sw_batch_size: int) -> Tensor:
    """Max Entropy of the items: the mean over each box of the pixel entropy of one pass in the
    network's mode (eval): ``(M,)`` float32. ``images`` is ``view.images`` on the device."""
    p = _probabilities(net, images, patch, sw_batch_size)
    return box_means(entropy_map(p), view.boxes)[:, 0].float()


def case_mc_scores(
    net: nn.Module,
    view: CaseView,
    images: Tensor,
    patch: tuple[int, ...],
    sw_batch_size: int,
    passes: int,
    group: int = 1,
) -> MCScores:
    """``passes`` MC passes over the case (dropout already on), ``group`` of them per sliding
    window (the image repeated), summed voxel by voxel and aggregated over the items' boxes."""
    acc = MCDropoutAccumulator()
    done = 0
    while done < passes:
        g = min(group, passes - done)
        p = _probabilities(net, images, patch, sw_batch_size, g)
        for t in range(g):
            acc.update(p[t : t + 1])
        del p
        done += g
    return acc.box_scores(view.boxes)


def embedding_windows(
    pool: Pool, indices: np.ndarray, case_shape: tuple[int, ...]
) -> tuple[list[tuple[tuple[int, int], ...]], np.ndarray]:
    """The patch-sized windows ``(z, y, x)`` boxes (one slice thick in 2D) that embed the items
    ``indices`` of one case, and for each item the position of its window in that list.

    An item's window is the sliding window (:func:`sliding_windows`, the grid scoring predicts)
    that holds it whole with the centre nearest the item's (the first such in grid order on a
    tie); an item that no window holds whole (sizes above half the patch) gets its own centred
    window, :meth:`Pool.context_window`. Windows are listed in the order their first item needs
    them; only windows that embed an item are listed."""
    dims = len(pool.patch_size)
    grid = np.array(sliding_windows(case_shape[-dims:], pool.patch_size), dtype=np.int64)  # (W, dims, 2)
    windows: list[tuple[tuple[int, int], ...]] = []
    where: dict[tuple, int] = {}
    which = np.empty(len(indices), dtype=np.int64)
    for j, i in enumerate(indices):
        box = np.array(pool[int(i)].box, dtype=np.int64)
        own = box[-dims:]
        holds = ((grid[:, :, 0] <= own[:, 0]) & (grid[:, :, 1] >= own[:, 1])).all(axis=1)
        if holds.any():
            gap = ((grid[:, :, 0] + grid[:, :, 1] - own[:, 0] - own[:, 1]) ** 2).sum(axis=1)
            w = int(np.flatnonzero(holds)[np.argmin(gap[holds])])
            spatial = tuple((int(a), int(b)) for a, b in grid[w])
            window = ((int(box[0, 0]), int(box[0, 0]) + 1), *spatial) if dims == 2 else spatial
        else:
            window = pool.context_window(int(i), tuple(case_shape[-3:]))
        which[j] = where.setdefault(window, len(windows))
        if which[j] == len(windows):
            windows.append(window)
    return windows, which


def _window_of(view_boxes: np.ndarray, window: tuple[tuple[int, int], ...]) -> np.ndarray:
    """``view_boxes`` (case coordinates) relative to ``window``'s start."""
    start = np.array([a for a, _ in window], dtype=np.int64)
    return view_boxes - start[None, :, None]


def window_valid(pool: Pool, indices: np.ndarray, windows: list, which: np.ndarray) -> np.ndarray:
    """``(M, *patch)`` bool: item ``j``'s voxels in its window ``windows[which[j]]``."""
    dims = len(pool.patch_size)
    valid = np.zeros((len(indices), *pool.patch_size), dtype=bool)
    for j, i in enumerate(indices):
        rel = _window_of(np.array(pool[int(i)].box, dtype=np.int64)[None], windows[which[j]])[0][-dims:]
        valid[(j, *(slice(int(a), int(b)) for a, b in rel))] = True
    return valid
