"""The files oracle's annotation package: one folder per case, in the case's own geometry.

A person cannot read a 56x40 patch without the rest of the scan, so a round's package holds,
for each case with selected items (file names: :class:`alseg.active.rundir.AnnotationPackage`):

* the case's image as the dataset holds it (its file(s) copied: same header, same grid);
* the pre-segmentation of the model that selected the batch, a label map on the same grid
  (rounds >= 1; round 0 has no model yet): the person corrects instead of drawing;
* the region to annotate, a uint8 mask on the same grid (1 inside the selected items);
* the slices and per-item voxel ranges in ``manifest.json`` (also in the viewers' (x, y, z) order),
  each item's score and rank in its batch, and a short ``README.txt``;
* the classes' names (from ``dataset.json``) and colours for the viewers: an ITK-SNAP label
  description file and a 3D Slicer colour table, one per package.

The person saves one label map per case (``cases/<case>/label.nii.gz``), of the whole case or
of the region only (zeros elsewhere). :func:`read_case_label` checks it against the image (shape,
spacing, origin, direction, declared classes); :func:`case_masks` maps it to the plan's grid
with the plan's own label preprocessing (:func:`alseg.data.pipeline.label_to_grid`) and keeps
only the items' boxes, which is all the label store records.

Items live on the plan's grid (transposed, cropped, resampled); their region on the file's grid
is mapped back with the restore steps of :mod:`alseg.data.restore`, nearest neighbour.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from alseg.active.rundir import AnnotationPackage
from alseg.atomic import atomic_copy, atomic_write_json, atomic_write_text
from alseg.data.pipeline import label_to_grid
from alseg.data.pool import Item
from alseg.data.restore import labels_to_original
from alseg.dataset.io import IMAGE_SUFFIXES, Geometry, read_volume, write_volume
from alseg.dataset.raw import CaseFiles
from alseg.dataset.resample import resize_labels
from alseg.errors import AlsegError
from alseg.model.case_prediction import predict_case
from alseg.model.network import eval_mode
from alseg.plans.models import Plans, Resampling

__all__ = [
    "AXIS_NAMES",
    "CaseRequest",
    "copy_images",
    "item_region",
    "region_mask",
    "presegment",
    "write_case",
    "write_package",
    "read_case_label",
    "check_label_values",
    "case_masks",
    "manifest_cases",
    "label_colours",
    "itksnap_label_description",
    "slicer_color_table",
    "batch_ranks",
    "xyz",
]

AXIS_NAMES = ("z", "y", "x")
"""The file's array axes (SimpleITK order): ``z`` is the third voxel index of the file (k)."""

VIEWER_COLOURS = (
    (255, 0, 0),
    (0, 255, 0),
    (0, 0, 255),
    (255, 255, 0),
    (0, 255, 255),
    (255, 0, 255),
    (255, 128, 0),
    (128, 0, 255),
    (0, 128, 255),
    (255, 0, 128),
    (128, 255, 0),
    (0, 255, 128),
)
"""Colours of classes 1, 2, ...: ITK-SNAP's own defaults for labels 1-6 (red, green, blue, yellow,
cyan, magenta), then six more; repeated beyond 12 classes. ``dataset.json`` names the classes but
has no colours (neither layout defines a field for them), so both viewers get these."""


def xyz(values) -> list:
    """A (z, y, x) sequence in the viewers' (x, y, z) order (ITK-SNAP and 3D Slicer count voxels so)."""
    return list(values)[::-1]


def label_colours(labels: dict[int, str]) -> dict[int, tuple[int, int, int]]:
    """Class index → RGB for the viewers; background black."""
    return {k: (0, 0, 0) if k == 0 else VIEWER_COLOURS[(k - 1) % len(VIEWER_COLOURS)] for k in sorted(labels)}


def itksnap_label_description(labels: dict[int, str]) -> str:
    """ITK-SNAP's label description file (Segmentation → Import Label Descriptions): one row per
    class, ``IDX R G B A VIS MSH "LABEL"``; background transparent and hidden."""
    lines = [
        "################################################",
        "# ITK-SnAP Label Description File",
        "# written by alseg: the classes of dataset.json",
        "# IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL",
        "################################################",
    ]
    for k, (r, g, b) in label_colours(labels).items():
        visible = 0 if k == 0 else 1
        name = labels[k].replace('"', "'")
        lines.append(f'{k:5d} {r:5d} {g:4d} {b:4d} {float(visible):8.2f} {visible:2d} {visible:2d}    "{name}"')
    return "\n".join(lines) + "\n"


def slicer_color_table(labels: dict[int, str]) -> str:
    """3D Slicer's colour table (``.ctbl``: ``index name R G B A``, names without spaces)."""
    lines = ["# Color table file written by alseg: the classes of dataset.json", f"# {len(labels)} values"]
    for k, (r, g, b) in label_colours(labels).items():
        name = "_".join(labels[k].split()) or f"class_{k}"
        lines.append(f"{k} {name} {r} {g} {b} {0 if k == 0 else 255}")
    return "\n".join(lines) + "\n"


def batch_ranks(scores: dict[str, float | None]) -> dict[str, int | None]:
    """Item id → its rank in the batch by score (1: the highest); None for all when any item has
    no score (a random choice, round 0's initial set)."""
    if not scores or any(s is None or not np.isfinite(s) for s in scores.values()):
        return {i: None for i in scores}
    order = sorted(scores, key=lambda i: (-float(scores[i]), i))
    return {item: rank for rank, item in enumerate(order, start=1)}


def _box_slices(box) -> tuple[slice, ...]:
    return tuple(slice(a, b) for a, b in box)


def item_region(props: dict[str, Any], box) -> list[list[int]]:
    """The voxels of the file's grid that a pool item covers: ``[[lo, hi), ...]`` in file axis
    order (z, y, x), the box mapped back as :func:`region_mask` maps it (nearest neighbour,
    uncrop, transpose back), one axis at a time: nearest-neighbour resampling is separable."""
    crop, res = props["shape_after_cropping"], props["shape_after_resampling"]
    bbox, tf = props["bbox_used_for_cropping"], list(props["transpose_forward"])
    region = [[0, 0]] * len(tf)
    for axis, (a, b) in enumerate(box):
        line = np.zeros(res[axis], np.uint8)
        line[a:b] = 1
        hits = np.flatnonzero(resize_labels(line, [crop[axis]], 0))
        lo, hi = (int(hits[0]), int(hits[-1]) + 1) if len(hits) else (0, 0)
        region[tf[axis]] = [lo + bbox[axis][0], hi + bbox[axis][0]]
    return region


def region_mask(props: dict[str, Any], boxes, resampling: Resampling) -> np.ndarray:
    """uint8 ``(z, y, x)`` on the file's grid: 1 inside the union of ``boxes`` (plan grid), 0 elsewhere."""
    grid = np.zeros(props["shape_after_resampling"], np.uint8)
    for box in boxes:
        grid[_box_slices(box)] = 1
    nearest = resampling.model_copy(update={"label_order": 0, "order_z": 0})
    return labels_to_original(grid, props, nearest, fill=0).astype(np.uint8)


def _ending(path: Path) -> str:
    return next((s for s in IMAGE_SUFFIXES if path.name.endswith(s)), path.suffix)


def copy_images(package: AnnotationPackage, case: CaseFiles) -> list[Path]:
    """The case's image file(s), copied unchanged (a ``.mhd`` header + raw pair is written anew as NIfTI)."""
    single = len(case.images) == 1
    written = []
    for k, source in enumerate(case.images):
        ending = _ending(source)
        if ending == ".mhd":  # its voxels live in a second file: one self-contained file instead
            dst = package.image(case.case_id, None if single else k, IMAGE_SUFFIXES[0])
            array, geometry = read_volume(source)
            write_volume(array, geometry, dst)
        else:
            dst = package.image(case.case_id, None if single else k, ending)
            try:
                atomic_copy(source, dst)
            except FileNotFoundError:
                raise AlsegError(
                    "file not found — the dataset the run was made from must stay in place", source
                ) from None
        written.append(dst)
    return written


def presegment(module, case: CaseFiles) -> np.ndarray:
    """The model's label map of a case on its file's grid (``alseg predict``'s path), leaving
    the network in the mode it was in."""
    with eval_mode(module.net):
        return predict_case(module, case).labels


@dataclass
class CaseRequest:
    """One case of a round's package: its files, cache properties and selected items (pool index
    → item); ``scores``: item id → the strategy's score (None: not scored)."""

    case: CaseFiles
    props: dict[str, Any]
    items: dict[int, Item]
    scores: dict[str, float | None] = field(default_factory=dict)
    ranks: dict[str, int | None] = field(default_factory=dict)

    @property
    def case_id(self) -> str:
        return self.case.case_id


def write_case(
    package: AnnotationPackage, req: CaseRequest, resampling: Resampling, presegmentation: np.ndarray | None
) -> dict[str, Any]:
    """Write one case's folder (image, pre-segmentation, region); returns its manifest entry."""
    geometry = Geometry.from_json(req.props["original_geometry"])
    images = copy_images(package, req.case)
    if presegmentation is not None:
        write_volume(np.asarray(presegmentation, np.uint8), geometry, package.presegmentation(req.case_id))
    boxes = [item.box for item in req.items.values()]
    write_volume(region_mask(req.props, boxes, resampling), geometry, package.region(req.case_id))
    slice_axis = int(req.props["transpose_forward"][0])
    entries, slices = [], set()
    for item in sorted(req.items.values(), key=lambda it: it.id):
        region = item_region(req.props, item.box)
        slices.update(range(*region[slice_axis]))
        entries.append(
            {
                "id": item.id,
                "rank": req.ranks.get(item.id),
                "score": req.scores.get(item.id),
                "box": [list(b) for b in item.box],
                "region": region,
                "region_xyz": xyz(region),
            }
        )
    return {
        "case": req.case_id,
        "images": [package.relative(p) for p in images],
        "presegmentation": package.relative(package.presegmentation(req.case_id))
        if presegmentation is not None
        else None,
        "region": package.relative(package.region(req.case_id)),
        "label": package.relative(package.label(req.case_id)),
        "shape": [int(s) for s in req.props["original_shape"]],
        "shape_xyz": xyz(int(s) for s in req.props["original_shape"]),
        "slice_axis": AXIS_NAMES[slice_axis],
        "slices": sorted(slices),
        "items": entries,
    }


def _readme(
    round_: int, labels: dict[int, str], cases: list[dict[str, Any]], package: AnnotationPackage, strategy
) -> str:
    classes = ", ".join(f"{k} = {v}" for k, v in sorted(labels.items()))
    itksnap, slicer = package.itksnap_labels.name, package.slicer_colors.name
    lines = [
        f"alseg annotation package, round {round_}" + (f" (items chosen by {strategy})" if strategy else ""),
        "",
        "For each case below:",
        "  1. open the image (cases/<case>/image*) in ITK-SNAP or 3D Slicer;",
        "  2. load presegmentation.nii.gz as the segmentation to correct (from round 1 on; round 0 has none),",
        "     and region.nii.gz as an overlay: it marks the voxels to annotate (the slices listed below);",
        f"     the classes' names and colours: {itksnap} (ITK-SNAP: Segmentation > Import Label",
        f"     Descriptions) or {slicer} (3D Slicer: drag it in, then pick it as the colour table);",
        f"  3. label every voxel inside the region ({classes});",
        "  4. save the segmentation as cases/<case>/label.nii.gz on the image's grid: the whole case,",
        "     or the region only with 0 elsewhere (then label one voxel beyond its edge too: the",
        "     plan may resample the case). Only the voxels inside the region are used.",
        "Then run the same 'alseg loop' command with --resume. A wrong file is named with the fix; the",
        "other cases are kept. Sizes and voxel ranges are given as the viewers show them, (x, y, z),",
        "0-based (viewers that count from 1 show them + 1); manifest.json also has them in the file's",
        "array order (z, y, x). An item's rank is its place in the batch by the strategy's score",
        "(1: the highest); a random choice has none.",
        "",
        "TODO",
    ]
    for c in cases:
        axis = c["slice_axis"]
        lines.append(
            f"  [ ] {c['case']}: image {' x '.join(map(str, c['shape_xyz']))} voxels (x, y, z); "
            f"{len(c['items'])} item(s) on {axis} slice(s) {_ranges(c['slices'])} -> save {c['label']}"
        )
        for item in c["items"]:
            span = ", ".join(f"{a} {lo}-{hi - 1}" for a, (lo, hi) in zip("xyz", item["region_xyz"]))
            why = f"rank {item['rank']} (score {item['score']:.4g})" if item.get("rank") else "random choice"
            lines.append(f"        {why}: {span}")
    return "\n".join(lines) + "\n"


def _ranges(values: list[int]) -> str:
    """``3-5, 9`` for [3, 4, 5, 9]."""
    out, start = [], None
    for k, v in enumerate(values):
        if start is None:
            start = v
        if k + 1 == len(values) or values[k + 1] != v + 1:
            out.append(str(start) if start == v else f"{start}-{v}")
            start = None
    return ", ".join(out)


def write_package(
    package: AnnotationPackage,
    round_: int,
    requests: list[CaseRequest],
    labels: dict[int, str],
    resampling: Resampling,
    predict: Callable[[CaseFiles], np.ndarray] | None,
    strategy: str | None = None,
) -> None:
    """Write every case's folder, the viewers' label files, then ``README.txt`` and last
    ``manifest.json`` (which marks the package complete: a package without it is written again).
    ``predict``: the pre-segmentation of a case on its file's grid, or None (round 0); the items'
    ranks come from the requests' scores, over the whole batch."""
    scores = {item: s for req in requests for item, s in req.scores.items()}
    ranks = batch_ranks(scores)
    cases = []
    for req in sorted(requests, key=lambda r: r.case_id):
        req.ranks = {item.id: ranks.get(item.id) for item in req.items.values()}
        pre = predict(req.case) if predict is not None else None
        cases.append(write_case(package, req, resampling, pre))
    atomic_write_text(package.itksnap_labels, itksnap_label_description(labels))
    atomic_write_text(package.slicer_colors, slicer_color_table(labels))
    atomic_write_text(package.readme, _readme(round_, labels, cases, package, strategy))
    atomic_write_json(
        package.manifest,
        {
            "round": round_,
            "layout": "cases",
            "strategy": strategy,
            "labels": {str(k): v for k, v in sorted(labels.items())},
            "colours": {str(k): list(c) for k, c in label_colours(labels).items()},
            "viewer_files": {
                "itksnap": package.relative(package.itksnap_labels),
                "slicer": package.relative(package.slicer_colors),
            },
            "axes": "shape, region, box: (z, y, x), the file's array order; shape_xyz, region_xyz: (x, y, z), "
            "the viewers' voxel order; ranges [lo, hi), 0-based. rank: place in the batch by score, 1 = highest.",
            "instructions": "Save one label map per case as its 'label' file (see README.txt); then run 'alseg loop --resume'.",
            "cases": cases,
        },
    )


def read_case_label(path: Path, props: dict[str, Any], labels: dict[int, str]) -> np.ndarray:
    """The person's label map of a case, checked against the case's image: one line naming the
    file and the fix when it is wrong (:class:`AlsegError`)."""
    label, geometry = read_volume(path)
    shape = tuple(int(s) for s in props["original_shape"])
    if label.shape != shape:
        raise AlsegError(
            f"size {_xyz_text(label.shape)} differs from the case's image {_xyz_text(shape)} (x, y, z; "
            f"{tuple(label.shape)} vs {shape} as z, y, x) — save the label on the image's grid "
            "(open the package's image and save the segmentation from there)",
            path,
        )
    image_geometry = Geometry.from_json(props["original_geometry"])
    field = geometry.matches(image_geometry)
    if field:
        mine, theirs = getattr(geometry, field), getattr(image_geometry, field)
        if field != "direction":  # spacing and origin in the viewers' (x, y, z) order
            mine, theirs = xyz(mine), xyz(theirs)
        raise AlsegError(
            f"{field} {_short(mine)} differs from the case's image {_short(theirs)}"
            f"{' (x, y, z)' if field != 'direction' else ''} — save the label on the image's grid",
            path,
        )
    return check_label_values(label, labels, path)


def check_label_values(label: np.ndarray, labels: dict[int, str], path: Path, what: str = "a label map") -> np.ndarray:
    """``label`` as uint8 when it holds only declared class indices; else one line naming ``path``
    (the package's label maps and the patches oracle's masks share this check)."""
    allowed = sorted(labels)
    if not np.issubdtype(label.dtype, np.integer) and (
        not np.all(np.isfinite(label)) or not np.array_equal(label, np.round(label))
    ):
        raise AlsegError(f"holds non-integer values — {what} holds class indices {allowed}", path)
    values = set(np.unique(label).astype(np.int64).tolist())
    if not values <= set(allowed):
        names = ", ".join(f"{k} = {v}" for k, v in sorted(labels.items()))
        raise AlsegError(
            f"holds label value(s) {sorted(values - set(allowed))} — allowed are {allowed} ({names}); relabel them",
            path,
        )
    return label.astype(np.uint8)


def _xyz_text(shape) -> str:
    return " x ".join(str(int(s)) for s in xyz(shape))


def _short(values) -> str:
    return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"


def case_masks(
    label: np.ndarray, props: dict[str, Any], plans: Plans, config_name: str, items: dict[int, Item]
) -> dict[int, np.ndarray]:
    """Each item's mask (pool index → uint8 mask of its box) from a case's label map on the
    file's grid: the plan's label preprocessing, then the items' boxes only."""
    grid = label_to_grid(label, props, plans, config_name)
    return {i: np.asarray(grid[_box_slices(item.box)], np.uint8) for i, item in items.items()}


def manifest_cases(folder: Path) -> list[dict[str, Any]]:
    """The cases listed in a package's manifest (for scripts and tests)."""
    return json.loads(AnnotationPackage(Path(folder)).manifest.read_text())["cases"]
