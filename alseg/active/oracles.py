"""Oracles: who provides the masks of selected items.

``simulated`` reveals the ground truth of the preprocessed case (the paper's simulation).
``files`` exports the selected items as NIfTI files with their world geometry and a manifest
for a person to annotate in any tool (ITK-SNAP, 3D Slicer), and imports the masks written
back, validating each one; a wrong mask is rejected with one line and the others are kept.

Masks land in a :class:`LabelStore` (``RUN/labels/<case>.npy``, 255 = not annotated), which
is what the DataModule trains from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from alseg.active.rundir import RunDir
from alseg.atomic import atomic_save_npy, atomic_write_json
from alseg.data.io import Geometry, read_volume, write_volume
from alseg.data.pool import Pool
from alseg.errors import AlsegError

__all__ = [
    "UNLABELLED",
    "LabelStore",
    "Annotation",
    "SimulatedOracle",
    "FilesOracle",
    "item_geometry",
    "manifest_items",
]

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
            vol = self.load(case_id)
            for i in idx:
                patch = vol[tuple(slice(a, b) for a, b in pool[i].box)]
                counts += np.bincount(patch[patch != UNLABELLED].ravel(), minlength=n_classes)[:n_classes]
        return counts


@dataclass
class Annotation:
    """The outcome of asking an oracle: accepted masks, and what is still missing or wrong."""

    masks: dict[int, np.ndarray]
    problems: list[str]
    waiting: list[int]


class SimulatedOracle:
    """Reveals the ground truth of each item from the preprocessing cache."""

    name = "simulated"

    def __init__(self, pool: Pool, ground_truth: Callable[[str], np.ndarray]):
        self.pool = pool
        self.ground_truth = ground_truth

    def annotate(self, round_: int, indices: np.ndarray) -> Annotation:
        masks: dict[int, np.ndarray] = {}
        for i in sorted(int(i) for i in indices):
            seg = self.ground_truth(self.pool[i].case_id)
            masks[i] = np.asarray(seg[tuple(slice(a, b) for a, b in self.pool[i].box)], dtype=np.uint8)
        return Annotation(masks, [], [])


def item_geometry(props: dict, box: tuple[tuple[int, int], ...]) -> Geometry:
    """World geometry of a pool item's first voxel, in the file's axis order.

    Inverts transpose, crop and resampling (cell-centred, as the preprocessing's zoom) so an
    exported patch overlays the original scan in a viewer. ``props`` are the case's cache
    properties.
    """
    orig = Geometry.from_json(props["original_geometry"])
    tf = list(props["transpose_forward"])
    crop = np.asarray(props["shape_after_cropping"], float)
    resampled = np.asarray(props["shape_after_resampling"], float)
    lo = np.asarray([b[0] for b in props["bbox_used_for_cropping"]], float)
    start_t = np.asarray([a for a, _ in box], float)
    idx_t = (start_t + 0.5) * crop / resampled - 0.5 + lo
    idx_file = np.empty(3)
    spacing_file = np.empty(3)
    for i, axis in enumerate(tf):
        idx_file[axis] = idx_t[i]
        spacing_file[axis] = props["spacing_after_resampling"][i]
    direction = np.asarray(orig.direction).reshape(3, 3)
    origin = np.asarray(orig.origin) + direction @ (idx_file * np.asarray(orig.spacing))
    return Geometry(tuple(float(s) for s in spacing_file), tuple(float(o) for o in origin), orig.direction)


def _safe(item_id: str) -> str:
    return item_id.replace(":", "_")


class FilesOracle:
    """Round trip through files a person edits: export, then validate and import the masks.

    The exported image of an item is its preprocessed patch in the file's own axis order with
    the world geometry of that patch (spacing of the plan, origin of its first voxel), so it
    overlays the original scan in any viewer. Masks go to ``masks/<same name>`` beside it.
    """

    name = "files"

    def __init__(
        self,
        run: RunDir,
        pool: Pool,
        load_image: Callable[[str], np.ndarray],
        item_geometry: Callable[[int], Geometry],
        transpose_backward: list[int],
        labels: dict[int, str],
    ):
        self.run = run
        self.pool = pool
        self.load_image = load_image
        self.item_geometry = item_geometry
        self.transpose_backward = list(transpose_backward)
        self.labels = labels

    def folder(self, round_: int) -> Path:
        return self.run.annotate_dir(round_)

    def _to_file_order(self, arr: np.ndarray) -> np.ndarray:
        return np.transpose(arr, self.transpose_backward)

    def _to_pool_order(self, arr: np.ndarray) -> np.ndarray:
        forward = [self.transpose_backward.index(i) for i in range(3)]
        return np.transpose(arr, forward)

    def export(self, round_: int, indices: np.ndarray) -> Path:
        folder = self.folder(round_)
        entries = []
        for i in sorted(int(i) for i in indices):
            item = self.pool[i]
            image = self.load_image(item.case_id)
            patch = np.asarray(image[0][tuple(slice(a, b) for a, b in item.box)], dtype=np.float32)
            name = f"{_safe(item.id)}.nii.gz"
            if not (folder / "images" / name).is_file():
                write_volume(self._to_file_order(patch), self.item_geometry(i), folder / "images" / name)
            entries.append(
                {
                    "id": item.id,
                    "case": item.case_id,
                    "image": f"images/{name}",
                    "mask": f"masks/{name}",
                    "shape": list(self._to_file_order(patch).shape),
                }
            )
        (folder / "masks").mkdir(parents=True, exist_ok=True)
        atomic_write_json(
            folder / "manifest.json",
            {
                "round": round_,
                "labels": {str(k): v for k, v in self.labels.items()},
                "items": entries,
                "instructions": "Write one label map per item into masks/ with the image's name and grid; then run 'alseg loop --resume'.",
            },
        )
        return folder

    def annotate(self, round_: int, indices: np.ndarray) -> Annotation:
        folder = self.folder(round_)
        if not (folder / "manifest.json").is_file():
            self.export(round_, indices)
        masks, problems, waiting = {}, [], []
        allowed = set(self.labels)
        for i in sorted(int(i) for i in indices):
            name = f"{_safe(self.pool[i].id)}.nii.gz"
            mask_path = folder / "masks" / name
            if not mask_path.is_file():
                waiting.append(i)
                continue
            try:
                mask, geom = read_volume(mask_path)
            except AlsegError as e:
                problems.append(str(e))
                continue
            image, image_geom = read_volume(folder / "images" / name)
            if mask.shape != image.shape:
                problems.append(
                    f"{mask_path}: shape {mask.shape} differs from its image {image.shape} — draw the mask on the exported image's grid"
                )
                continue
            field = geom.matches(image_geom)
            if field:
                problems.append(
                    f"{mask_path}: {field} differs from its image — save the mask on the exported image's grid"
                )
                continue
            if not np.all(np.isfinite(mask)) or not np.array_equal(mask, np.round(mask)):
                problems.append(f"{mask_path}: holds non-integer values — a mask holds class indices {sorted(allowed)}")
                continue
            values = set(np.unique(mask).astype(int).tolist())
            if not values <= allowed:
                problems.append(
                    f"{mask_path}: holds label value(s) {sorted(values - allowed)} — allowed are {sorted(allowed)} ({', '.join(self.labels.values())})"
                )
                continue
            masks[i] = self._to_pool_order(mask.astype(np.uint8))
        return Annotation(masks, problems, waiting)


def manifest_items(folder: Path) -> list[dict]:
    """The items listed in an annotation folder's manifest (used by scripts and tests)."""
    return json.loads((Path(folder) / "manifest.json").read_text())["items"]
