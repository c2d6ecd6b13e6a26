"""``alseg predict``: segment whole scans with a trained model, in each input's own geometry.

Per input case, as ``nnUNetv2_predict`` does:

1. read the image (one file per channel ``<case>_XXXX``, or one file, 4D for several channels);
2. preprocess it as the plan says (:func:`alseg.data.pipeline.preprocess_case`: transpose,
   crop, normalise, resample);
3. sliding-window prediction on the plan's grid (:func:`alseg.model.inference.predict_volume`;
   ``tta``: nnU-Net's mirroring test-time augmentation);
4. map the logits back (:func:`alseg.data.restore.logits_to_original`: resample, softmax,
   argmax, uncrop, transpose back);
5. write ``OUT/<case>.nii.gz`` with the input's spacing, origin and direction, and with
   ``save_probabilities`` ``OUT/<case>.npz`` holding ``probabilities`` ``(K, z, y, x)``
   float32 in the file's array order (nnU-Net's ``--save_probabilities`` file).

As ``nnUNetv2_predict``'s ``-num_parts`` / ``-part_id``, ``num_parts`` processes (GPUs, cluster
tasks) can share the cases: part ``part_id`` takes every ``num_parts``-th case in case-id order.
``skip_existing`` (nnU-Net's ``--continue_prediction``) leaves cases whose outputs are already
written alone: they are written atomically and verified, and an existing output that does not
read back whole (an older version's, truncated at a full disk, or damaged since) is predicted again.
A predict killed half-way (``kill -9``) leaves no output file half-written, only the hidden temp
file of the write it was in (``.<case>.nii.gz.<random>.tmp.nii.gz``); the next predict into
the folder deletes those of its own cases before it starts.

The model is an ``alseg loop`` run directory (the checkpoint of its last finished round, or
``round_``) or an ``alseg train`` output folder (``model.ckpt``), or a checkpoint file of the latter.
"""

from __future__ import annotations

import dataclasses
import re
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from alseg.atomic import atomic_save_npz, remove_temp_files_of
from alseg.dataset.io import IMAGE_SUFFIXES, readable_volume, write_volume
from alseg.dataset.raw import CaseFiles, read_dataset
from alseg.errors import AlsegError
from alseg.model.case_prediction import predict_case
from alseg.model.trainer import resolve_device
from alseg.progress import console, make_progress
from alseg.trained import LoadedModel, load_model

__all__ = [
    "check_output_folder",
    "check_part",
    "collect_inputs",
    "output_paths",
    "predict",
]

OUTPUT_ENDING = ".nii.gz"
_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})$")


def _strip_ending(name: str) -> str:
    return next((name[: -len(s)] for s in IMAGE_SUFFIXES if name.endswith(s)), Path(name).stem)


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        f for f in folder.iterdir() if f.is_file() and not f.name.startswith(".") and f.name.endswith(IMAGE_SUFFIXES)
    )


def _group(files: list[Path], n_channels: int) -> list[CaseFiles]:
    """nnU-Net raw channel files ``<case>_XXXX`` become one case each when every case has channels
    0..C-1; otherwise every file is a case (4D when the plan has several channels)."""
    per_case: dict[str, dict[int, Path]] = {}
    grouped = True
    for f in files:
        m = _CHANNEL_RE.match(_strip_ending(f.name))
        if not m:
            grouped = False
            break
        per_case.setdefault(m["case"], {})[int(m["ch"])] = f
    if grouped and per_case and all(sorted(ch) == list(range(n_channels)) for ch in per_case.values()):
        return [CaseFiles(c, tuple(ch[k] for k in sorted(ch))) for c, ch in sorted(per_case.items())]
    return [CaseFiles(_strip_ending(f.name), (f,), four_d=n_channels > 1) for f in files]


def collect_inputs(inputs: Sequence[str | Path], n_channels: int) -> list[CaseFiles]:
    """The cases to predict: files, folders of images, or a dataset folder (all its images)."""
    cases: list[CaseFiles] = []
    loose: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir() and (item / "dataset.json").is_file():
            info = read_dataset(item)
            cases += [dataclasses.replace(c, label=None) for c in [*info.training, *info.test]]
        elif item.is_dir():
            found = _image_files(item)
            if not found:
                raise AlsegError(f"holds no image files ({', '.join(IMAGE_SUFFIXES)}) — pass a folder of images", item)
            cases += _group(found, n_channels)
        elif item.is_file() or item.name.endswith(IMAGE_SUFFIXES):
            loose.append(item)  # a missing file fails when read, naming it
        else:
            raise AlsegError("not found — pass image files or a folder of images", item)
    cases += _group(loose, n_channels) if loose else []
    if not cases:
        raise AlsegError("no input images given — pass -i FOLDER or image files")
    seen: set[str] = set()
    for c in cases:
        if c.case_id in seen:
            raise AlsegError(
                f"two inputs are both case '{c.case_id}' — outputs would overwrite each other", c.images[0]
            )
        seen.add(c.case_id)
    return cases


def output_paths(out_dir: Path, case_id: str) -> tuple[Path, Path]:
    """``OUT/<case>.nii.gz`` and ``OUT/<case>.npz`` (probabilities)."""
    return out_dir / f"{case_id}{OUTPUT_ENDING}", out_dir / f"{case_id}.npz"


DATASET_FOLDERS = ("imagesTr", "labelsTr", "imagesTs", "labelsTs")


def _input_folders(inputs: Sequence[str | Path]) -> set[Path]:
    """The folders the input images lie in (a dataset folder: its image folders)."""
    folders: set[Path] = set()
    for item in map(Path, inputs):
        if item.is_dir() and (item / "dataset.json").is_file():
            folders |= {(item / d).resolve() for d in DATASET_FOLDERS if (item / d).is_dir()}
            folders.add(item.resolve())
        elif item.is_dir():
            folders.add(item.resolve())
        else:
            folders.add(item.parent.resolve())
    return folders


def check_output_folder(inputs: Sequence[str | Path], out_dir: str | Path, *, overwrite: bool = False) -> None:
    """Predictions never replace inputs: ``out_dir`` may not lie inside a dataset's ``imagesTr``,
    ``labelsTr``, ``imagesTs`` or ``labelsTs`` (beside a ``dataset.json``), nor be a folder that
    holds input images, unless ``overwrite`` (then only a plain folder, never a dataset's)."""
    out = Path(out_dir).resolve()
    for p in [out, *out.parents]:
        if p.name in DATASET_FOLDERS and (p.parent / "dataset.json").is_file():
            raise AlsegError(
                f"lies inside the dataset folder {p.name} of {p.parent} — predictions would overwrite its files; "
                "choose an output folder outside the dataset (-o)",
                out_dir,
            )
    if not overwrite and out in _input_folders(inputs):
        raise AlsegError(
            "holds input images — predictions could replace them; choose another output folder (-o), "
            "or pass --overwrite to write into it anyway",
            out_dir,
        )


def _written(out_dir: Path, case_id: str, save_probabilities: bool) -> bool:
    """Whether a case's outputs are there and read back whole (``--continue`` re-predicts the
    others: a file truncated by an older alseg at a full disk, or damaged since)."""
    seg, prob = output_paths(out_dir, case_id)
    if not (seg.is_file() and readable_volume(seg)):
        return False
    if not save_probabilities:
        return True
    try:
        with np.load(prob) as z:
            return "probabilities" in z.files and z["probabilities"].size > 0
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error):
        return False


def check_part(num_parts: int, part_id: int) -> None:
    """``--num-parts`` / ``--part-id`` name an existing part (one line otherwise)."""
    if num_parts < 1:
        raise AlsegError(f"--num-parts must be at least 1, got {num_parts}")
    if not 0 <= part_id < num_parts:
        raise AlsegError(f"--part-id {part_id} is not a part of --num-parts {num_parts} — choose 0..{num_parts - 1}")


def predict(
    model: str | Path | LoadedModel,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    round_: int | None = None,
    tta: bool = False,
    save_probabilities: bool = False,
    devices: str | int = "auto",
    show_progress: bool = True,
    num_parts: int = 1,
    part_id: int = 0,
    skip_existing: bool = False,
    overwrite: bool = False,
) -> list[Path]:
    """Segment the input cases of part ``part_id`` of ``num_parts``; returns the label maps
    written (with ``skip_existing``, those already there are not listed; module docstring).
    ``out_dir`` may not hold the inputs (:func:`check_output_folder`; ``overwrite`` allows it)."""
    check_part(num_parts, part_id)
    check_output_folder(inputs, out_dir, overwrite=overwrite)
    loaded = model if isinstance(model, LoadedModel) else load_model(model, round_)
    module = loaded.module.to(resolve_device(devices))
    cases = sorted(collect_inputs(inputs, len(module.plans.channel_names)), key=lambda c: c.case_id)
    cases = cases[part_id::num_parts]
    out_dir = Path(out_dir)
    if not overwrite:
        inputs_here = [f for c in cases for f in c.images if f.resolve().parent == out_dir.resolve()]
        if inputs_here:
            raise AlsegError(
                f"holds input image {inputs_here[0].name} — predictions could replace it; choose another output "
                "folder (-o), or pass --overwrite to write into it anyway",
                out_dir,
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    # debris of a killed earlier run: only this part writes these cases' files
    remove_temp_files_of(path for case in cases for path in output_paths(out_dir, case.case_id))
    if skip_existing:
        cases = [c for c in cases if not _written(out_dir, c.case_id, save_probabilities)]
    written = []
    show = show_progress and console.is_terminal
    with make_progress() if show else _NoBar() as bar:
        task = bar.add_task(f"predicting {len(cases)} case(s)", total=len(cases))
        for case in cases:
            pred = predict_case(module, case, tta=tta)
            seg_path, prob_path = output_paths(out_dir, case.case_id)
            write_volume(pred.labels, pred.geometry, seg_path)
            if save_probabilities:
                atomic_save_npz(prob_path, probabilities=pred.probabilities.astype(np.float32))
            written.append(seg_path)
            bar.advance(task)
    return written


class _NoBar:
    """A progress bar that shows nothing (tests, logs)."""

    def __enter__(self) -> "_NoBar":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, *args: object, **kwargs: object) -> int:
        return 0

    def advance(self, *args: object) -> None:
        return None
