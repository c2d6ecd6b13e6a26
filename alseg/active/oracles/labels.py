"""The label store: annotated voxels per case on the preprocessed grid, what the data module trains from.

``RUN/labels/<case>.npy`` (uint8), 255 = not annotated; one atomic write per case.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from alseg.atomic import atomic_save_npy
from alseg.data.pool import Pool
from alseg.errors import AlsegError

__all__ = ["UNLABELLED", "LabelStore"]

UNLABELLED = 255


class LabelStore:
    """Annotated voxels per case on the preprocessed grid; 255 where nobody has annotated yet."""

    def __init__(self, root: Path, case_shapes: dict[str, tuple[int, ...]]):
        self.root = Path(root)
        self.case_shapes = case_shapes

    def path(self, case_id: str) -> Path:
        return self.root / f"{case_id}.npy"

    def load(self, case_id: str) -> np.ndarray:
        p = self.path(case_id)
        if p.is_file():
            try:
                return np.load(p)
            except (OSError, ValueError, EOFError):
                raise AlsegError(
                    "is damaged (not a readable NumPy file) — restore it from a backup, or start a new run with another -o",
                    p,
                ) from None
        return np.full(self.case_shapes[case_id], UNLABELLED, dtype=np.uint8)

    def write(self, pool: Pool, masks: dict[int, np.ndarray]) -> list[Path]:
        """Store item masks (pool index → mask of the item's box), one atomic write per case;
        returns the files written."""
        by_case: dict[str, list[int]] = {}
        for i in masks:
            by_case.setdefault(pool[i].case_id, []).append(i)
        for case_id, idx in sorted(by_case.items()):
            vol = self.load(case_id)
            for i in idx:
                box = pool[i].box
                vol[tuple(slice(a, b) for a, b in box)] = masks[i].reshape([b - a for a, b in box])
            atomic_save_npy(self.path(case_id), vol)
        return [self.path(c) for c in sorted(by_case)]

    def voxels_per_class(self, pool: Pool, labelled: np.ndarray, n_classes: int) -> np.ndarray:
        counts = np.zeros(n_classes, dtype=np.int64)
        by_case: dict[str, list[int]] = {}
        for i in np.flatnonzero(labelled):
            by_case.setdefault(pool[i].case_id, []).append(int(i))
        for case_id, idx in by_case.items():
            boxes = np.array([pool[i].box for i in idx], dtype=np.int64)  # (n, 3, 2)
            lo, hi = boxes[:, :, 0].min(axis=0), boxes[:, :, 1].max(axis=0)
            vol = self.load(case_id)[tuple(slice(a, b) for a, b in zip(lo, hi))]  # the items' bounding box
            inside = np.zeros(vol.shape, dtype=bool)  # the union of the items: overlaps count once
            for box in boxes - lo[None, :, None]:
                inside[tuple(slice(a, b) for a, b in box)] = True
            values = vol[inside & (vol != UNLABELLED)]
            counts += np.bincount(values.ravel(), minlength=n_classes)[:n_classes]
        return counts
