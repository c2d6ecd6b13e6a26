"""The patches oracle: one NIfTI file per item out, one mask per item back.

What ``files`` meant before the package per case; a round of a ``files`` run whose folder is in
this layout is still imported in it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np

from alseg.active.annotation import check_label_values
from alseg.active.oracles.base import Annotation, ModelSource, OracleContext
from alseg.active.rundir import AnnotationPackage, RunDir
from alseg.atomic import atomic_write_json
from alseg.data.pool import Pool
from alseg.dataset.io import Geometry, read_volume, write_volume
from alseg.errors import AlsegError

__all__ = ["PatchOracle", "item_geometry", "manifest_items"]


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


class PatchOracle:
    """Round trip through one file per item: export each patch, then validate and import its mask.

    The exported image of an item is its preprocessed patch in the file's own axis order with
    the world geometry of that patch (spacing of the plan, origin of its first voxel), so it
    overlays the original scan in any viewer. Masks go to ``masks/<same name>`` beside it.
    """

    name = "patches"
    reveals_ground_truth = False
    waits_for_person = True

    @classmethod
    def build(cls, ctx: OracleContext) -> "PatchOracle":
        ws, pool = ctx.workspace, ctx.pool
        return cls(
            ctx.run,
            pool,
            ws.image,
            lambda i: item_geometry(ws.properties(pool[i].case_id), pool[i].box),
            ws.plans.transpose_backward,
            ws.plans.labels,
        )

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

    def waiting_cases(self) -> list[str]:
        return []

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
