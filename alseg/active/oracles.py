"""Oracles: who provides the masks of selected items.

``simulated`` reveals the ground truth of the preprocessed case (the paper's simulation).
``files`` writes a package per case for a person (the case's image in its own geometry, the
model's pre-segmentation, the region to annotate; :mod:`alseg.active.annotation`) and imports
the label map saved for each case, keeping only the selected items' voxels. ``patches``
exports each item as a NIfTI patch with its world geometry and imports one mask per item.
Both validate what comes back; a wrong file is rejected with one line and the others are kept.

Masks land in a :class:`LabelStore` (``RUN/labels/<case>.npy``, 255 = not annotated), which
is what the DataModule trains from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from alseg.active.annotation import (
    CaseRequest,
    case_masks,
    check_label_values,
    presegment,
    read_case_label,
    write_package,
)
from alseg.active.rundir import AnnotationPackage, RunDir
from alseg.atomic import atomic_save_npy, atomic_write_json
from alseg.data.pool import Pool
from alseg.dataset.io import IMAGE_SUFFIXES, Geometry, read_volume, write_volume
from alseg.dataset.raw import CaseFiles
from alseg.errors import AlsegError
from alseg.plans.models import Plans

__all__ = [
    "UNLABELLED",
    "LabelStore",
    "Annotation",
    "SimulatedOracle",
    "FilesOracle",
    "PatchOracle",
    "item_geometry",
    "manifest_items",
]

UNLABELLED = 255

ModelSource = Callable[[], Any] | None
"""The model that selected a round's batch, loaded only when asked (None in round 0)."""


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

    def annotate(self, round_: int, indices: np.ndarray, model: ModelSource = None) -> Annotation:
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
    """A package per case for a person (:mod:`alseg.active.annotation`), then the label maps back.

    Per case with selected items: the image in its own geometry, the pre-segmentation of the
    model that selected the batch (rounds >= 1), the region of the items, and ``label.nii.gz``
    to save. A label map is checked against the image, mapped to the plan's grid as the plan
    maps labels, and only the items' boxes are kept. A round whose folder is in the patches
    layout (made before the package per case existed) is imported in that layout.
    """

    name = "files"

    def __init__(
        self,
        run: RunDir,
        pool: Pool,
        properties: Callable[[str], dict],
        case_files: Callable[[str], CaseFiles],
        plans: Plans,
        config_name: str,
        patches: "PatchOracle",
    ):
        self.run = run
        self.pool = pool
        self.properties = properties
        self.case_files = case_files
        self.plans = plans
        self.config_name = config_name
        self.patches = patches
        self.waiting_cases: list[str] = []
        """Cases of the last :meth:`annotate` with no label file yet (named in the CLI's message)."""

    @property
    def labels(self) -> dict[int, str]:
        return self.plans.labels

    def folder(self, round_: int) -> Path:
        return self.run.annotate_dir(round_)

    def guide(self, round_: int) -> Path:
        """The file that tells the person what to do."""
        package = self.run.package(round_)
        return package.manifest if package.is_patch_layout() else package.readme

    def _by_case(self, indices: np.ndarray) -> dict[str, dict[int, object]]:
        by_case: dict[str, dict[int, object]] = {}
        for i in sorted(int(i) for i in indices):
            by_case.setdefault(self.pool[i].case_id, {})[i] = self.pool[i]
        return by_case

    def export(self, round_: int, indices: np.ndarray, model: ModelSource = None) -> Path:
        """Write round ``round_``'s package; ``model`` gives the pre-segmentations (None: none)."""
        record = self.run.load_round(round_) or {}  # the selection: why each item was chosen
        recorded = dict(zip(record.get("selected", []), record.get("scores", [])))
        requests = [
            CaseRequest(
                self.case_files(case_id),
                self.properties(case_id),
                items,
                scores={item.id: recorded.get(item.id) for item in items.values()},
            )
            for case_id, items in self._by_case(indices).items()
        ]
        module = model() if model is not None else None
        predict = None if module is None else (lambda case: presegment(module, case))
        package = self.run.package(round_)
        resampling = self.plans.configuration(self.config_name).resampling
        write_package(package, round_, requests, self.labels, resampling, predict, strategy=record.get("strategy"))
        return package.folder

    def annotate(self, round_: int, indices: np.ndarray, model: ModelSource = None) -> Annotation:
        package = self.run.package(round_)
        if package.is_patch_layout():
            return self.patches.annotate(round_, indices)
        if not package.manifest.is_file():
            self.export(round_, indices, model)
        masks: dict[int, np.ndarray] = {}
        problems: list[str] = []
        waiting: list[int] = []
        self.waiting_cases = []
        for case_id, items in self._by_case(indices).items():
            found = package.label_candidates(case_id, IMAGE_SUFFIXES)
            if not found:
                strays = package.stray_files(case_id, IMAGE_SUFFIXES)
                if strays:  # annotated, but saved under another name
                    problems.append(
                        f"{strays[0]}: is not a name alseg reads — save the label map of case {case_id} as "
                        f"{package.label(case_id).name} in the same folder"
                    )
                    continue
                self.waiting_cases.append(case_id)
                waiting.extend(items)
                continue
            if len(found) > 1:
                names = ", ".join(p.name for p in found)
                problems.append(
                    f"{package.case_dir(case_id)}: holds {len(found)} label files ({names}) — keep only "
                    f"{package.label(case_id).name}"
                )
                continue
            props = self.properties(case_id)
            try:
                label = read_case_label(found[0], props, self.labels)
            except AlsegError as e:
                problems.append(str(e))
                continue
            masks.update(case_masks(label, props, self.plans, self.config_name, items))
        return Annotation(masks, problems, waiting)


class PatchOracle:
    """Round trip through one file per item: export each patch, then validate and import its mask.

    The exported image of an item is its preprocessed patch in the file's own axis order with
    the world geometry of that patch (spacing of the plan, origin of its first voxel), so it
    overlays the original scan in any viewer. Masks go to ``masks/<same name>`` beside it.
    """

    name = "patches"

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

    def guide(self, round_: int) -> Path:
        """The file that tells the person what to do."""
        return self.run.package(round_).manifest

    def _to_file_order(self, arr: np.ndarray) -> np.ndarray:
        return np.transpose(arr, self.transpose_backward)

    def _to_pool_order(self, arr: np.ndarray) -> np.ndarray:
        forward = [self.transpose_backward.index(i) for i in range(3)]
        return np.transpose(arr, forward)

    def export(self, round_: int, indices: np.ndarray) -> Path:
        package = self.run.package(round_)
        entries = []
        for i in sorted(int(i) for i in indices):
            item = self.pool[i]
            image = self.load_image(item.case_id)
            patch = np.asarray(image[0][tuple(slice(a, b) for a, b in item.box)], dtype=np.float32)
            name = f"{_safe(item.id)}.nii.gz"
            if not package.patch_image(name).is_file():
                write_volume(self._to_file_order(patch), self.item_geometry(i), package.patch_image(name))
            entries.append(
                {
                    "id": item.id,
                    "case": item.case_id,
                    "image": package.relative(package.patch_image(name)),
                    "mask": package.relative(package.patch_mask(name)),
                    "shape": list(self._to_file_order(patch).shape),
                }
            )
        package.patch_masks_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(
            package.manifest,
            {
                "round": round_,
                "labels": {str(k): v for k, v in self.labels.items()},
                "items": entries,
                "instructions": "Write one label map per item into masks/ with the image's name and grid; then run 'alseg loop --resume'.",
            },
        )
        return package.folder

    def annotate(self, round_: int, indices: np.ndarray, model: ModelSource = None) -> Annotation:
        package = self.run.package(round_)
        if not package.manifest.is_file():
            self.export(round_, indices)
        masks, problems, waiting = {}, [], []
        for i in sorted(int(i) for i in indices):
            name = f"{_safe(self.pool[i].id)}.nii.gz"
            mask_path = package.patch_mask(name)
            if not mask_path.is_file():
                waiting.append(i)
                continue
            try:
                mask, geom = read_volume(mask_path)
            except AlsegError as e:
                problems.append(str(e))
                continue
            image, image_geom = read_volume(package.patch_image(name))
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
            try:
                masks[i] = self._to_pool_order(check_label_values(mask, self.labels, mask_path, "a mask"))
            except AlsegError as err:
                problems.append(str(err))
        return Annotation(masks, problems, waiting)


def manifest_items(folder: Path) -> list[dict]:
    """The items listed in a patches package's manifest (used by scripts and tests)."""
    return json.loads(AnnotationPackage(Path(folder)).manifest.read_text())["items"]
