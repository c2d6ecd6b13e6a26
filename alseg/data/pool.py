"""The pool of annotation items: what active learning selects and an annotator labels.

An item is a patch of a preprocessed training case (the paper's annotation unit; see
docs/design.md): for the 2D configuration a
window of one slice along axis 0 of the (transposed) volume, for 3D a box. Windows have the
plan's patch size and overlap by half a patch where a case is larger than the patch; where
it is smaller the item is the whole extent (training pads it). Ids are stable strings:
``case:2d:slice:y0:x0`` / ``case:3d:z0:y0:x0``, so a run directory stays readable and
resumable whatever order items are enumerated in.

With an ``item_size`` smaller than the patch (``alseg loop --item-size``; docs/design.md,
"Annotation items smaller than the patch") the items are boxes of that size that *tile* each
case (:func:`tile_starts`: stride = the item size, the last tile of an axis moved back to end at
the case's border, so tiles overlap only there); training then reads the image around them and
ignores unlabelled voxels (:mod:`alseg.data.datamodule`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alseg.data.cache import CaseCache

__all__ = ["Item", "Pool", "normalise_item_size", "read_window", "tile_starts", "union_volume", "window_starts"]


def window_starts(size: int, patch: int) -> list[int]:
    """Starts of windows of length ``patch`` covering ``size``, stride at most patch // 2.

    Spread evenly between 0 and size - patch, as nnU-Net's sliding-window steps are.
    """
    if size <= patch:
        return [0]
    stride = max(patch // 2, 1)
    n = -(-(size - patch) // stride) + 1
    step = (size - patch) / (n - 1)
    return [int(round(i * step)) for i in range(n)]


def tile_starts(size: int, item: int) -> list[int]:
    """Starts of the fewest windows of length ``item`` covering ``size`` (stride at most ``item``),
    spread evenly between 0 and size - item: tiles that overlap only where ``item`` does not divide
    ``size``."""
    if size <= item:
        return [0]
    n = -(-size // item)
    step = (size - item) / (n - 1)
    return [int(round(i * step)) for i in range(n)]


@dataclass(frozen=True)
class Item:
    """One annotation item: a patch-sized box of one preprocessed case."""

    id: str
    case_id: str
    box: tuple[tuple[int, int], ...]  # (start, stop) per axis of the preprocessed volume

    @property
    def n_voxels(self) -> int:
        return int(np.prod([b - a for a, b in self.box]))


class Pool:
    """All items of the training cases, in a fixed order (case, then position).

    ``item_size``: None for items of the patch size (the default), else the size of the
    smaller items (:attr:`small_items`).
    """

    def __init__(
        self,
        items: list[Item],
        config_name: str,
        patch_size: tuple[int, ...],
        item_size: tuple[int, ...] | None = None,
    ):
        self.items = items
        self.config_name = config_name
        self.patch_size = tuple(patch_size)
        self.item_size = normalise_item_size(item_size, self.patch_size)
        self.index = {it.id: i for i, it in enumerate(items)}
        if len(self.index) != len(items):
            raise ValueError("pool item ids must be unique")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Item:
        return self.items[i]

    @property
    def ids(self) -> list[str]:
        return [it.id for it in self.items]

    def indices(self, ids: list[str]) -> np.ndarray:
        try:
            return np.array([self.index[i] for i in ids], dtype=np.int64)
        except KeyError as e:
            raise KeyError(f"item {e.args[0]} is not in the pool") from None

    def mask(self, ids: list[str]) -> np.ndarray:
        m = np.zeros(len(self), dtype=bool)
        m[self.indices(ids)] = True
        return m

    @property
    def case_ids(self) -> list[str]:
        return sorted({it.case_id for it in self.items})

    def voxels(self, indices: np.ndarray | list[int]) -> int:
        """Voxels inside the union of the items' boxes: what an annotator labels. Overlapping
        items (half-overlapping patch windows, the border tiles of ``--item-size``) count their
        shared voxels once."""
        by_case: dict[str, list[tuple[tuple[int, int], ...]]] = {}
        for i in indices:
            item = self.items[int(i)]
            by_case.setdefault(item.case_id, []).append(item.box)
        return sum(union_volume(boxes) for boxes in by_case.values())

    def items_per_case(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for it in self.items:
            out[it.case_id] = out.get(it.case_id, 0) + 1
        return out

    def subset(self, indices: np.ndarray | list[int]) -> "Pool":
        """A pool of the items at ``indices`` (in that order): what a strategy sees when it may
        choose among some items only; index ``j`` of the subset is ``indices[j]`` here."""
        return Pool([self.items[int(i)] for i in indices], self.config_name, self.patch_size, self.item_size)

    @property
    def small_items(self) -> bool:
        """Whether items are smaller than the patch (``--item-size``): training reads the image
        around them and ignores unlabelled voxels, scoring predicts each case by sliding window."""
        return self.item_size is not None

    def fingerprint(self) -> str:
        """A short hash of the item ids (and of a smaller item size, which the ids do not show):
        a run directory refuses a pool that differs."""
        text = "\n".join(self.ids)
        if self.item_size is not None:
            text += "\nitem_size=" + ",".join(map(str, self.item_size))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @classmethod
    def build(
        cls,
        case_shapes: dict[str, tuple[int, ...]],
        config_name: str,
        patch_size: tuple[int, ...],
        item_size: tuple[int, ...] | None = None,
    ) -> "Pool":
        """Items for the given cases; ``case_shapes`` are preprocessed (z, y, x) shapes, transposed.

        ``item_size`` (None: the patch size) smaller than the patch tiles the cases with items
        of that size (:func:`tile_starts`) instead of half-overlapping patch-sized windows."""
        item_size = normalise_item_size(item_size, patch_size)
        if item_size is not None:
            return cls(_tiles(case_shapes, config_name, item_size), config_name, patch_size, item_size)
        items: list[Item] = []
        for case_id in sorted(case_shapes):
            shape = tuple(int(s) for s in case_shapes[case_id])
            if config_name == "2d":
                if len(patch_size) != 2:
                    raise ValueError("a 2d pool needs a 2D patch size")
                ys = window_starts(shape[1], patch_size[0])
                xs = window_starts(shape[2], patch_size[1])
                for z in range(shape[0]):
                    for y0 in ys:
                        for x0 in xs:
                            box = (
                                (z, z + 1),
                                (y0, min(y0 + patch_size[0], shape[1])),
                                (x0, min(x0 + patch_size[1], shape[2])),
                            )
                            items.append(Item(f"{case_id}:2d:{z}:{y0}:{x0}", case_id, box))
            else:
                starts = [window_starts(s, p) for s, p in zip(shape, patch_size)]
                for z0 in starts[0]:
                    for y0 in starts[1]:
                        for x0 in starts[2]:
                            box = tuple((a, min(a + p, s)) for a, p, s in zip((z0, y0, x0), patch_size, shape))
                            items.append(Item(f"{case_id}:3d:{z0}:{y0}:{x0}", case_id, box))
        return cls(items, config_name, patch_size)

    @classmethod
    def from_cache(
        cls,
        cache: CaseCache | str | Path,
        case_ids: list[str],
        config_name: str,
        patch_size: tuple[int, ...],
        item_size: tuple[int, ...] | None = None,
    ) -> "Pool":
        """Items of ``case_ids`` from their preprocessed shapes (a cache folder is accepted too)."""
        cache = cache if isinstance(cache, CaseCache) else CaseCache(cache)
        return cls.build({c: cache.shape(c) for c in case_ids}, config_name, patch_size, item_size)

    def context_window(self, i: int, case_shape: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
        """The patch-sized ``(z, y, x)`` box (one slice thick in 2D) around item ``i``, for reading
        a small item with the image around it: centred on the item and moved inside the case
        (as training clamps its patches); where the case is smaller than the patch the box is
        centred on the case and passes its border (read as zeros there)."""
        box = self.items[i].box
        size = (1, *self.patch_size) if self.config_name == "2d" else self.patch_size
        out = []
        for (a, b), p, n in zip(box, size, case_shape):
            if n < p:
                lo = -((p - n) // 2)
            else:
                lo = int(np.clip((a + b) // 2 - p // 2, 0, n - p))
            out.append((lo, lo + p))
        return tuple(out)

    def patch(self, volume: np.ndarray, i: int) -> np.ndarray:
        """The item's voxels of a (C, z, y, x) or (z, y, x) array, as (C?, *patch) for 2D/3D."""
        box = self.items[i].box
        sl = tuple(slice(a, b) for a, b in box)
        if volume.ndim == 4:
            sl = (slice(None),) + sl
        out = volume[sl]
        if self.config_name == "2d":
            out = out[:, 0] if volume.ndim == 4 else out[0]
        return out


def normalise_item_size(item_size, patch_size) -> tuple[int, ...] | None:
    """``item_size`` as a tuple, or None when it is the patch size (the default items).

    Raises ValueError when it does not fit the patch (the CLI checks it earlier, with the fix:
    :func:`alseg.active.workspace.check_item_size`)."""
    if item_size is None:
        return None
    size, patch = tuple(int(s) for s in item_size), tuple(int(p) for p in patch_size)
    if len(size) != len(patch) or any(s < 1 or s > p for s, p in zip(size, patch)):
        raise ValueError(f"item size {list(size)} does not fit the patch size {list(patch)}")
    return None if size == patch else size


def _tiles(case_shapes: dict[str, tuple[int, ...]], config_name: str, item_size: tuple[int, ...]) -> list[Item]:
    """Items of ``item_size`` tiling each case (2D: a window of each slice), ids as the default pool's."""
    items: list[Item] = []
    for case_id in sorted(case_shapes):
        shape = tuple(int(s) for s in case_shapes[case_id])
        size = (1, *item_size) if config_name == "2d" else item_size
        starts = [list(range(shape[0]))] if config_name == "2d" else [tile_starts(shape[0], size[0])]
        starts += [tile_starts(s, p) for s, p in zip(shape[1:], size[1:])]
        tag = "2d" if config_name == "2d" else "3d"
        for z0 in starts[0]:
            for y0 in starts[1]:
                for x0 in starts[2]:
                    box = tuple((a, min(a + p, s)) for a, p, s in zip((z0, y0, x0), size, shape))
                    items.append(Item(f"{case_id}:{tag}:{z0}:{y0}:{x0}", case_id, box))
    return items


def union_volume(boxes: list[tuple[tuple[int, int], ...]]) -> int:
    """Voxels in the union of axis-aligned ``(start, stop)`` boxes, exactly, without a volume:
    the boxes' edges cut each axis into intervals, and the covered cells of that (small) grid
    are summed by their sizes."""
    if len(boxes) == 1:
        return int(np.prod([b - a for a, b in boxes[0]]))
    arr = np.asarray(boxes, dtype=np.int64)  # (n, axes, 2)
    edges = [np.unique(arr[:, d, :]) for d in range(arr.shape[1])]
    covered = np.zeros([len(e) - 1 for e in edges], dtype=bool)
    for box in arr:
        covered[tuple(slice(*np.searchsorted(e, box[d])) for d, e in enumerate(edges))] = True
    sizes = np.ones(covered.shape, dtype=np.int64)
    for d, e in enumerate(edges):
        shape = [1] * len(edges)
        shape[d] = len(e) - 1
        sizes = sizes * np.diff(e).reshape(shape)
    return int(sizes[covered].sum())


def read_window(volume: np.ndarray, box: tuple[tuple[int, int], ...]) -> np.ndarray:
    """``volume[..., box]`` over the last 3 axes as a new array, zeros where ``box`` passes the
    volume's border."""
    lead = volume.shape[: volume.ndim - 3]
    out = np.zeros(lead + tuple(b - a for a, b in box), dtype=volume.dtype)
    src, dst = [], []
    for (a, b), n in zip(box, volume.shape[-3:]):
        lo, hi = max(a, 0), min(b, n)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - a, hi - a))
    out[(..., *dst)] = volume[(..., *src)]
    return out
