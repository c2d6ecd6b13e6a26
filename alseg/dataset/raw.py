"""Read the two dataset layouts users already have: MSD and nnU-Net v2 raw.

MSD: ``dataset.json`` with ``modality`` ({"0": "MRI"}), ``labels`` index → name and a
``training`` list of image/label paths; multi-channel images are 4D files.
nnU-Net v2 raw: ``dataset.json`` with ``channel_names``, ``labels`` name → index and
``file_ending``; cases are found as ``imagesTr/<case>_<XXXX><file_ending>``.
Both become one :class:`DatasetInfo`, the only thing later stages look at.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from alseg.dataset.io import IMAGE_SUFFIXES, Geometry, read_volume
from alseg.errors import AlsegError

__all__ = ["CaseFiles", "DatasetInfo", "load_case", "load_dataset_json", "read_dataset"]


@dataclass(frozen=True)
class CaseFiles:
    """The files of one case. ``four_d``: all channels live in one 4D file (MSD style)."""

    case_id: str
    images: tuple[Path, ...]
    label: Path | None = None
    four_d: bool = False
    channel_ids: tuple[int, ...] = ()
    """nnU-Net layout: the ``_XXXX`` indices found (must be 0..C-1); empty for MSD."""


@dataclass
class DatasetInfo:
    root: Path
    name: str
    layout: Literal["msd", "nnunet"]
    channel_names: dict[int, str]
    labels: dict[int, str]
    file_ending: str
    training: list[CaseFiles]
    test: list[CaseFiles] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    num_training: object = None
    """``numTraining`` as dataset.json declares it (None when absent)."""
    other_endings: list[Path] = field(default_factory=list)
    """nnU-Net layout: files in imagesTr that do not end in ``file_ending`` (ignored)."""

    @property
    def n_channels(self) -> int:
        return len(self.channel_names)

    @property
    def labelled(self) -> list[CaseFiles]:
        """The training cases with a label file (the others are images only)."""
        return [c for c in self.training if c.label is not None]

    @property
    def foreground_labels(self) -> list[int]:
        return sorted(k for k in self.labels if k != 0)

    def case(self, case_id: str) -> CaseFiles:
        for c in self.training:
            if c.case_id == case_id:
                return c
        raise KeyError(case_id)


def _strip_suffix(name: str) -> str:
    for s in IMAGE_SUFFIXES:
        if name.endswith(s):
            return name[: -len(s)]
    return Path(name).stem


def _ending_of(name: str) -> str:
    return next((s for s in IMAGE_SUFFIXES if name.endswith(s)), Path(name).suffix)


def load_dataset_json(root: Path) -> dict:
    path = root / "dataset.json"
    if not root.is_dir():
        raise AlsegError("dataset folder not found — pass the folder that holds dataset.json", root)
    if not path.is_file():
        raise AlsegError(
            "dataset.json not found — a dataset folder needs dataset.json (MSD or nnU-Net v2 raw layout)", path
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise AlsegError(
            f"invalid JSON at line {e.lineno}, column {e.colno} ({e.msg}) — fix the syntax", path
        ) from None
    except UnicodeDecodeError:
        raise AlsegError("not a text file — dataset.json must be UTF-8 JSON", path) from None


def _int_keys(d: object, what: str, path: Path) -> dict[int, str]:
    if not isinstance(d, dict) or not d:
        raise AlsegError(f'\'{what}\' must be a non-empty object — e.g. {{"0": "MRI"}}', path)
    try:
        return {int(k): str(v) for k, v in d.items()}
    except (TypeError, ValueError):
        raise AlsegError(f'\'{what}\' keys must be integers — e.g. {{"0": "MRI"}}', path) from None


def _msd(root: Path, meta: dict) -> DatasetInfo:
    js = root / "dataset.json"
    channel_names = _int_keys(meta.get("modality"), "modality", js)
    labels = _int_keys(meta.get("labels"), "labels", js)
    training_raw = meta.get("training")
    if not isinstance(training_raw, list):
        raise AlsegError('\'training\' must be a list of {"image": ..., "label": ...} entries', js)
    cases, seen, duplicates = [], set(), []
    for i, entry in enumerate(training_raw):
        if not isinstance(entry, dict) or "image" not in entry:
            raise AlsegError(
                f'training[{i}] must have \'image\' (and \'label\' when annotated) — e.g. {{"image": "./imagesTr/a.nii.gz", "label": "./labelsTr/a.nii.gz"}}',
                js,
            )
        image = (root / entry["image"]).resolve()
        label = (root / entry["label"]).resolve() if entry.get("label") else None  # images only: no label yet
        case_id = _strip_suffix(image.name)
        if case_id in seen:
            duplicates.append(case_id)
            continue
        seen.add(case_id)
        cases.append(CaseFiles(case_id, (image,), label, four_d=len(channel_names) > 1))
    test = []
    for entry in meta.get("test", []) or []:
        p = (root / (entry if isinstance(entry, str) else entry.get("image", ""))).resolve()
        test.append(CaseFiles(_strip_suffix(p.name), (p,), None, four_d=len(channel_names) > 1))
    ending = _ending_of(cases[0].images[0].name) if cases else ".nii.gz"
    return DatasetInfo(
        root,
        str(meta.get("name", root.name)),
        "msd",
        channel_names,
        labels,
        ending,
        cases,
        test,
        duplicates,
        num_training=meta.get("numTraining"),
    )


_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})$")


def _nnunet(root: Path, meta: dict) -> DatasetInfo:
    js = root / "dataset.json"
    channel_names = _int_keys(meta.get("channel_names"), "channel_names", js)
    raw_labels = meta.get("labels")
    if not isinstance(raw_labels, dict) or not raw_labels:
        raise AlsegError('\'labels\' must map names to integers — e.g. {"background": 0, "liver": 1}', js)
    labels: dict[int, str] = {}
    for name, value in raw_labels.items():
        if isinstance(value, (list, tuple)):
            raise AlsegError(
                f"label '{name}' is a region (list of labels) — region-based training is not supported; use one integer per label",
                js,
            )
        try:
            labels[int(value)] = str(name)
        except (TypeError, ValueError):
            raise AlsegError(f"label '{name}' must be an integer, got {value!r}", js) from None
    ending = meta.get("file_ending")
    if not isinstance(ending, str) or not ending:
        raise AlsegError('\'file_ending\' is missing — add e.g. "file_ending": ".nii.gz"', js)

    other_endings: list[Path] = []

    def scan(folder: str, with_labels: bool) -> list[CaseFiles]:
        d = root / folder
        if not d.is_dir():
            return []
        per_case: dict[str, dict[int, Path]] = {}
        for f in sorted(d.iterdir()):
            if f.name.startswith(".") or not f.is_file():
                continue
            if not f.name.endswith(ending):
                if with_labels:
                    other_endings.append(f)
                continue
            m = _CHANNEL_RE.match(f.name[: -len(ending)])
            if not m:
                raise AlsegError(f"name does not end in _XXXX{ending} — rename to <case>_0000{ending} (channel 0)", f)
            per_case.setdefault(m["case"], {})[int(m["ch"])] = f
        out = []
        for case_id, chans in per_case.items():
            images = tuple(chans[k] for k in sorted(chans))
            label = root / "labelsTr" / f"{case_id}{ending}"
            # a case without a label file is an images-only case (not annotated yet)
            label = label if with_labels and label.is_file() else None
            out.append(CaseFiles(case_id, images, label, channel_ids=tuple(sorted(chans))))
        return out

    training = scan("imagesTr", True)
    return DatasetInfo(
        root,
        str(meta.get("name", root.name)),
        "nnunet",
        channel_names,
        labels,
        ending,
        training,
        scan("imagesTs", False),
        num_training=meta.get("numTraining"),
        other_endings=other_endings,
    )


def read_dataset(root: str | Path) -> DatasetInfo:
    """Parse dataset.json (either layout) into a DatasetInfo; no image is opened here."""
    root = Path(root).resolve()
    meta = load_dataset_json(root)
    if not isinstance(meta, dict):
        raise AlsegError("dataset.json must be a JSON object", root / "dataset.json")
    if "channel_names" in meta:
        info = _nnunet(root, meta)
    elif "modality" in meta:
        info = _msd(root, meta)
    else:
        raise AlsegError(
            "neither 'modality' (MSD) nor 'channel_names' (nnU-Net v2) found — add one of them", root / "dataset.json"
        )
    if 0 not in info.labels:
        raise AlsegError("labels must declare background as 0", root / "dataset.json")
    return info


def load_case(
    case: CaseFiles, n_channels: int, declared_by: str | None = None
) -> tuple[np.ndarray, np.ndarray | None, Geometry]:
    """Image (C, z, y, x) float32, label (z, y, x) uint8 or None, and the image geometry.

    ``declared_by`` names who expects ``n_channels`` in a message (``alseg predict``: the
    model); by default the dataset's ``dataset.json``, with its fix."""
    who = declared_by or "dataset.json declares"
    if case.four_d:
        arr, geom = read_volume(case.images[0])
        if arr.ndim != 4 or arr.shape[0] != n_channels:
            found = arr.shape[0] if arr.ndim == 4 else 1
            raise AlsegError(
                f"has {found} channel(s), {who} {n_channels} — "
                + ("fix 'modality' or the image" if declared_by is None else "pass images with that many channels"),
                case.images[0],
            )
        image = arr
    else:
        if case.channel_ids and case.channel_ids != tuple(range(n_channels)):
            ending = _ending_of(case.images[0].name)
            missing = [f"{case.case_id}_{k:04d}{ending}" for k in range(n_channels) if k not in case.channel_ids]
            extra = [f"{case.case_id}_{k:04d}{ending}" for k in case.channel_ids if k >= n_channels]
            what = f"lacks {', '.join(missing)}" if missing else f"has extra channel file(s) {', '.join(extra)}"
            raise AlsegError(
                f"case {case.case_id} {what} — {who} {n_channels} channel(s), files "
                f"{case.case_id}_0000..{n_channels - 1:04d}{ending}; add/rename the files"
                + (" or fix 'channel_names'" if declared_by is None else ""),
                case.images[0].parent,
            )
        if len(case.images) != n_channels:
            raise AlsegError(
                f"case {case.case_id} has {len(case.images)} channel file(s), {who} {n_channels} — add the missing "
                + ("_XXXX files or fix 'channel_names'" if declared_by is None else "_XXXX files"),
                case.images[0],
            )
        chans, geom = [], None
        for p in case.images:
            a, g = read_volume(p)
            if a.ndim != 3:
                raise AlsegError(
                    f"is {a.ndim}D with {a.shape[0]} channel(s), {who} {n_channels} — "
                    + (
                        "fix 'modality' or split the channels"
                        if declared_by is None
                        else "split the channels into _XXXX files"
                    ),
                    p,
                )
            if geom is not None and (a.shape != chans[0].shape or g.matches(geom)):
                raise AlsegError(
                    f"grid differs from channel 0 of case {case.case_id} — resample all channels onto one grid", p
                )
            chans.append(a)
            geom = g if geom is None else geom
        image = np.stack(chans)
    image = image.astype(np.float32, copy=False)
    label = None
    if case.label is not None:
        lab, lgeom = read_volume(case.label)
        if lab.shape != image.shape[1:]:
            raise AlsegError(
                f"shape {lab.shape} differs from its image {image.shape[1:]} — re-export the label on the image grid",
                case.label,
            )
        field_ = lgeom.matches(geom)
        if field_:
            raise AlsegError(
                f"{field_} {getattr(lgeom, field_)} differs from its image {getattr(geom, field_)} — re-export the label on the image grid",
                case.label,
            )
        if not np.issubdtype(lab.dtype, np.integer):
            if not np.all(np.isfinite(lab)) or not np.array_equal(lab, np.round(lab)):
                raise AlsegError("holds non-integer values — a label map must hold integer class indices", case.label)
        if lab.min(initial=0) < 0:
            negative = sorted(int(v) for v in np.unique(lab[lab < 0]))
            raise AlsegError(
                f"holds negative label value(s) {negative} — a label map holds class indices 0..K (0 = background)",
                case.label,
            )
        label = lab.astype(np.int16 if lab.max(initial=0) > 255 else np.uint8)
    return image, label, geom
