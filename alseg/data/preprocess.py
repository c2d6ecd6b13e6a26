"""Preprocessing as nnU-Net v2's ``DefaultPreprocessor`` does it, and the on-disk case cache.

Per case, in this order (nnU-Net's ``run_case_npy``):

1. **transpose** the (C, z, y, x) arrays by the plan's ``transpose_forward`` (lowest-resolution
   axis first);
2. **crop** to the bounding box of the non-zero region over all channels (holes filled);
3. **normalise** each channel by the plan's scheme *before* resampling, so that the non-zero
   mask still fits the image (z-score per image, optionally only inside the mask; CT: clip to
   the dataset's foreground 0.5/99.5 percentiles, subtract the foreground mean, divide by its
   std);
4. **resample** to the configuration's spacing: images with a 3rd-order spline, labels one-hot
   with order 1 and a per-voxel argmax. When the spacing (current or target) is anisotropic
   (max/min > 3) the low-resolution axis is resampled separately with order 0 (nnU-Net's
   "separate z"). The 2D configuration never resamples along the first (sliced) axis.

Differences from nnU-Net, on purpose and small:

* nnU-Net writes -1 into the label where the image is outside the non-zero mask; the cache
  stores 0 there (nnU-Net's trainer maps -1 to 0 anyway). The mask is still used internally
  for ``use_mask_for_norm``.
* Spline resampling uses ``scipy.ndimage.zoom(grid_mode=True, mode="nearest")`` plus clipping
  to the input range, which is what ``skimage.transform.resize(mode="edge",
  anti_aliasing=False)`` does, so scikit-image is not needed.
* ``class_locations`` keep at most 10,000 voxels per label (nnU-Net keeps at least 1 % of a
  large class), as spatial coordinates without nnU-Net's leading channel index.

**Cache contract** (read by the DataModule and the pool): ``OUT/<data_identifier>/`` holds, per
case, ``<case>.npy`` (float32, (C, *shape), transposed/resampled/normalised, plain ``np.save``
so ``mmap_mode="r"`` works), ``<case>_seg.npy`` (uint8, or int16 for labels > 255, (1, *shape)),
``<case>.json`` (properties, see :func:`preprocess_case`), and ``manifest.json``, written last:
its presence means the cache is complete. Every file is written atomically; a case counts as
done once its JSON (written after both arrays) carries the current configuration hash.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
from scipy import ndimage as ndi

from alseg.atomic import atomic_save_npy, atomic_write_json
from alseg.data.io import Geometry
from alseg.errors import AlsegError
from alseg.progress import progress_map

PREPROCESS_VERSION = 1
"""Bump when the preprocessing maths change: every cache built before is then rebuilt."""

ANISOTROPY_THRESHOLD = 3.0
"""max/min spacing above which the low-resolution axis is resampled separately (nnU-Net's ANISO_THRESHOLD)."""

MAX_CLASS_LOCATIONS = 10_000
"""Voxel coordinates kept per foreground label for foreground oversampling."""

CLASS_LOCATION_SEED = 1234
NORM_EPS = 1e-8
MANIFEST = "manifest.json"


# --------------------------------------------------------------------------- cropping


def create_nonzero_mask(image: np.ndarray) -> np.ndarray:
    """Voxels where any channel of ``image`` (C, ...) is non-zero, holes filled (nnU-Net)."""
    mask = np.any(image != 0, axis=0)
    return ndi.binary_fill_holes(mask)


def bbox_of_mask(mask: np.ndarray) -> list[list[int]]:
    """``[[lo, hi), ...]`` per axis; the whole array when the mask is empty."""
    if not mask.any():
        return [[0, s] for s in mask.shape]
    bbox = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        bbox.append([int(hits[0]), int(hits[-1]) + 1])
    return bbox


def crop_to_nonzero(
    image: np.ndarray, label: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, list[list[int]]]:
    """Crop (C, ...) ``image`` and (...) ``label`` to the non-zero bounding box.

    Returns the cropped image, the cropped label (or None), the cropped non-zero mask and the
    box ``[[lo, hi), ...]`` in the axes of ``image[0]``.
    """
    mask = create_nonzero_mask(image)
    bbox = bbox_of_mask(mask)
    sl = tuple(slice(lo, hi) for lo, hi in bbox)
    return image[(slice(None),) + sl], (label[sl] if label is not None else None), mask[sl], bbox


# --------------------------------------------------------------------------- resampling


def compute_new_shape(old_shape: Sequence[int], old_spacing: Sequence[float], new_spacing: Sequence[float]) -> list[int]:
    """``round(old_spacing / new_spacing * old_shape)`` per axis (nnU-Net's ``compute_new_shape``)."""
    assert len(old_shape) == len(old_spacing) == len(new_spacing)
    return [int(round(o / n * s)) for o, n, s in zip(old_spacing, new_spacing, old_shape)]


def _lowres_axis(spacing: Sequence[float]) -> int | None:
    """The single axis with the largest spacing, or None when two or three axes tie."""
    spacing = np.asarray(spacing, float)
    axes = np.flatnonzero(spacing.max() / spacing == 1)
    return int(axes[0]) if len(axes) == 1 else None


def separate_axis(
    current_spacing: Sequence[float], new_spacing: Sequence[float], threshold: float = ANISOTROPY_THRESHOLD
) -> int | None:
    """The axis nnU-Net resamples separately (with ``order_z``), or None.

    Anisotropic current spacing decides first, then anisotropic target spacing; the axis is the
    one with the largest spacing, unless several axes share it (then nothing is separate).
    """
    for spacing in (current_spacing, new_spacing):
        if max(spacing) / min(spacing) > threshold:
            return _lowres_axis(spacing)
    return None


def _zoom(array: np.ndarray, new_shape: Sequence[int], order: int, clip_to: tuple[float, float] | None = None) -> np.ndarray:
    """skimage ``resize(mode="edge", anti_aliasing=False, clip=True)`` on float64, via scipy.

    Spline orders > 1 overshoot; the result is clipped to ``clip_to`` (default: the input's
    range), as skimage clips to the range of the array it was given.
    """
    array = np.asarray(array, dtype=np.float64)
    if tuple(array.shape) == tuple(new_shape):
        return array.copy()
    factors = [n / o for n, o in zip(new_shape, array.shape)]
    out = ndi.zoom(array, factors, order=order, mode="nearest", grid_mode=True, prefilter=order > 1)
    assert out.shape == tuple(new_shape), (out.shape, new_shape)
    if order > 1:
        lo, hi = clip_to if clip_to is not None else (array.min(), array.max())
        np.clip(out, lo, hi, out=out)
    return out


def resize_labels(label: np.ndarray, new_shape: Sequence[int], order: int = 1) -> np.ndarray:
    """Resize a label map: each label's indicator interpolated with ``order``, per-voxel argmax.

    Ties (e.g. a sample point exactly between two labels) go to the nearest-neighbour label when
    it is among the tied ones, else to the smallest tied label, as nnU-Net's
    ``resize_segmentation`` (batchgenerators >= 0.25). Order 0 is plain nearest neighbour.
    """
    if tuple(label.shape) == tuple(new_shape):
        return label.copy()
    nearest = np.rint(_zoom(label, new_shape, 0)).astype(label.dtype)
    if order == 0:
        return nearest
    best_score = best_label = nearest_score = None
    for c in np.unique(label):
        score = _zoom(label == c, new_shape, order)
        if best_score is None:
            best_score, best_label = score, np.full(new_shape, c, dtype=label.dtype)
            nearest_score = np.zeros(new_shape)
        else:
            better = score > best_score
            best_score = np.where(better, score, best_score)
            best_label[better] = c
        at_nearest = nearest == c
        nearest_score[at_nearest] = score[at_nearest]
    use_nearest = nearest_score >= best_score
    best_label[use_nearest] = nearest[use_nearest]
    return best_label


def _resize_one(array: np.ndarray, new_shape: Sequence[int], is_label: bool, order: int, clip_to=None) -> np.ndarray:
    return resize_labels(array, new_shape, order) if is_label else _zoom(array, new_shape, order, clip_to)


def resample(
    data: np.ndarray,
    new_shape: Sequence[int],
    current_spacing: Sequence[float],
    new_spacing: Sequence[float],
    is_label: bool = False,
    order: int = 3,
    order_z: int = 0,
    threshold: float = ANISOTROPY_THRESHOLD,
    slice_axis: int | None = None,
) -> np.ndarray:
    """Resample every channel of ``data`` (C, *spatial) to ``new_shape``.

    nnU-Net's "separate z" rule (:func:`separate_axis`) decides first: a separate axis is
    resampled in-plane slice by slice with ``order``, then along the axis with ``order_z``.
    Otherwise, ``slice_axis`` (the 2D configuration, whose spacing along the sliced axis is
    kept) resamples slice by slice along that axis, clipping to the whole volume's range: the
    same numbers as nnU-Net's 3D resize with a unit factor along that axis, at 2D cost.
    Without either, one 3D resize. Images come back float32, labels in their own dtype.
    """
    new_shape = [int(s) for s in new_shape]
    shape = list(data.shape[1:])
    out_dtype = data.dtype if is_label else np.float32
    if shape == new_shape:
        return data.astype(out_dtype, copy=True)
    axis = separate_axis(current_spacing, new_spacing, threshold)
    whole_volume_clip = False
    if axis is None and slice_axis is not None:
        assert shape[slice_axis] == new_shape[slice_axis], "the sliced axis is never resampled"
        axis, whole_volume_clip = slice_axis, True
    out = np.empty((data.shape[0], *new_shape), dtype=out_dtype)
    for c in range(data.shape[0]):
        if axis is None:
            out[c] = _resize_one(data[c], new_shape, is_label, order)
            continue
        clip_to = (float(data[c].min()), float(data[c].max())) if whole_volume_clip else None
        in_plane = [s for a, s in enumerate(new_shape) if a != axis]
        moved = np.moveaxis(data[c], axis, 0)
        slices = np.stack([_resize_one(moved[i], in_plane, is_label, order, clip_to) for i in range(moved.shape[0])])
        if slices.shape[0] != new_shape[axis]:
            along = [new_shape[axis], *in_plane]
            # order_z along the low-resolution axis only: the other axes already have their size.
            if is_label:
                slices = resize_labels(slices, along, order_z)
            else:
                slices = _zoom(slices, along, order_z)
        out[c] = np.moveaxis(slices, 0, axis).astype(out_dtype, copy=False)
    return out


# --------------------------------------------------------------------------- normalisation


def normalize(data: np.ndarray, mask: np.ndarray, normalizations: Sequence[Any]) -> np.ndarray:
    """Normalise each channel of float32 ``data`` in place per the plan's ``Normalization``.

    ``mask`` (spatial, bool) is where z-score statistics are taken when ``use_mask_for_norm``;
    voxels outside it are left as they are (0 after cropping to non-zero, as in nnU-Net).
    """
    for c, norm in enumerate(normalizations):
        x = data[c]
        if norm.scheme == "ct":
            np.clip(x, norm.clip_lower, norm.clip_upper, out=x)
            x -= norm.mean
            x /= max(norm.std, NORM_EPS)
        elif norm.scheme == "zscore":
            if norm.use_mask_for_norm:
                inside = x[mask]
                mean, std = inside.mean(), inside.std()
                x[mask] = (inside - mean) / max(std, NORM_EPS)
            else:
                mean, std = x.mean(), x.std()
                x -= mean
                x /= max(std, NORM_EPS)
        elif norm.scheme != "none":
            raise AssertionError(f"unknown normalization scheme {norm.scheme}")
    return data


# --------------------------------------------------------------------------- one case


def sample_class_locations(
    seg: np.ndarray, labels: Sequence[int], max_samples: int = MAX_CLASS_LOCATIONS, seed: int = CLASS_LOCATION_SEED
) -> dict[str, list[list[int]]]:
    """Up to ``max_samples`` voxel coordinates per label, drawn without replacement (fixed seed)."""
    rng = np.random.RandomState(seed)
    out: dict[str, list[list[int]]] = {}
    for lab in labels:
        coords = np.argwhere(seg == lab)
        if len(coords) > max_samples:
            coords = coords[np.sort(rng.choice(len(coords), max_samples, replace=False))]
        out[str(int(lab))] = coords.astype(int).tolist()
    return out


def _label_dtype(seg: np.ndarray) -> type:
    return np.uint8 if seg.size == 0 or (seg.min() >= 0 and seg.max() <= 255) else np.int16


def preprocess_case(
    image: np.ndarray, label: np.ndarray | None, geometry: Geometry, plans: Any, config_name: str
) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """One case as the cache stores it: ``(data, seg, properties)``.

    ``image`` is (C, z, y, x) in file order, ``label`` (z, y, x) or None (an unlabelled image
    to predict). ``data`` is float32 (C, *shape), ``seg`` uint8/int16 (1, *shape) or None, both
    in the plan's transposed axis order on the configuration's grid. ``properties`` holds what
    is needed to map a prediction back: ``original_shape`` and ``original_geometry`` (file
    order), ``transpose_forward``, ``shape_before_cropping``, ``bbox_used_for_cropping``
    (``[[lo, hi), ...]``), ``shape_after_cropping``, ``spacing_before_resampling``,
    ``shape_after_resampling`` and ``spacing_after_resampling`` (all transposed), plus, when a
    label is given, ``voxels_per_class`` and ``class_locations`` on the resampled grid.
    """
    config = plans.configuration(config_name)
    if image.ndim != 4:
        raise AlsegError(f"expected an image of shape (C, z, y, x), got {image.shape}")
    if image.shape[0] != len(config.normalization):
        raise AlsegError(f"image has {image.shape[0]} channel(s), the plan expects {len(config.normalization)} — plan this dataset again")
    if label is not None and label.shape != image.shape[1:]:
        raise AlsegError(f"label shape {label.shape} differs from the image {image.shape[1:]}")
    tf = list(plans.transpose_forward)
    data = np.ascontiguousarray(image.astype(np.float32).transpose([0, *[t + 1 for t in tf]]))
    seg = None if label is None else np.ascontiguousarray(label.transpose(tf))
    spacing = [float(geometry.spacing[t]) for t in tf]
    shape_before = list(data.shape[1:])

    data, seg, mask, bbox = crop_to_nonzero(data, seg)
    shape_after_crop = list(data.shape[1:])

    target = list(config.spacing)
    slice_axis = None
    if len(target) < len(spacing):  # 2D: keep the spacing between slices, resample in-plane only
        target = [spacing[0]] + target
        slice_axis = 0
    new_shape = compute_new_shape(shape_after_crop, spacing, target)

    norm_mask = mask if seg is None else (mask | (seg > 0))
    data = normalize(data, norm_mask, config.normalization)

    rs = config.resampling
    data = resample(data, new_shape, spacing, target, False, rs.image_order, rs.order_z, rs.separate_z_anisotropy_threshold, slice_axis)
    props: dict[str, Any] = {
        "original_shape": [int(s) for s in image.shape[1:]],
        "original_geometry": geometry.to_json(),
        "transpose_forward": tf,
        "shape_before_cropping": shape_before,
        "bbox_used_for_cropping": bbox,
        "shape_after_cropping": shape_after_crop,
        "spacing_before_resampling": spacing,
        "shape_after_resampling": new_shape,
        "spacing_after_resampling": [float(s) for s in target],
    }
    if seg is not None:
        seg = resample(seg[None], new_shape, spacing, target, True, rs.label_order, rs.order_z, rs.separate_z_anisotropy_threshold, slice_axis)
        values, counts = np.unique(seg, return_counts=True)
        found = dict(zip(values.tolist(), counts.tolist()))
        props["voxels_per_class"] = {str(k): int(found.get(k, 0)) for k in sorted(plans.labels)}
        props["class_locations"] = sample_class_locations(seg[0], [k for k in sorted(plans.labels) if k != 0])
        seg = seg.astype(_label_dtype(seg), copy=False)
    return data, seg, props


# --------------------------------------------------------------------------- the cache


def configuration_hash(plans: Any, config_name: str) -> str:
    """A hash of everything that changes what the cache holds for one configuration.

    The dataset root, the transpose, the labels and the configuration's spacing, normalisation
    and resampling (not its patch, batch size, network or trainer: those do not touch the
    cached arrays), plus :data:`PREPROCESS_VERSION`.
    """
    config = plans.configuration(config_name)
    key = {
        "version": PREPROCESS_VERSION,
        "dataset_root": str(plans.dataset_root),
        "transpose_forward": list(plans.transpose_forward),
        "labels": {str(k): v for k, v in sorted(plans.labels.items())},
        "name": config.name,
        "spacing": [float(s) for s in config.spacing],
        "normalization": [n.model_dump() for n in config.normalization],
        "resampling": config.resampling.model_dump(),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def cache_dir_for(plans_dir: str | Path, configuration: Any) -> Path:
    """``plans_dir / <data_identifier>``.

    ``configuration`` is a ``Configuration``, a data identifier, or a configuration name
    ("2d", "3d_fullres") looked up in ``plans_dir/plans.json``.
    """
    plans_dir = Path(plans_dir)
    if not isinstance(configuration, str):
        return plans_dir / configuration.data_identifier
    plans_file = plans_dir / "plans.json"
    if configuration in ("2d", "3d_fullres") and plans_file.is_file():
        from alseg.plans.models import load_plans

        return plans_dir / load_plans(plans_file).configuration(configuration).data_identifier
    return plans_dir / configuration


def _case_files(cache_dir: Path, case_id: str) -> tuple[Path, Path, Path]:
    return cache_dir / f"{case_id}.npy", cache_dir / f"{case_id}_seg.npy", cache_dir / f"{case_id}.json"


def read_manifest(cache_dir: str | Path) -> dict | None:
    """The manifest of a complete cache, or None when the cache is missing or incomplete."""
    path = Path(cache_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def load_case_cache(cache_dir: str | Path, case_id: str, mmap: bool = True) -> tuple[np.ndarray, np.ndarray, dict]:
    """``(data, seg, properties)`` of one cached case; arrays memory-mapped read-only by default."""
    cache_dir = Path(cache_dir)
    data_f, seg_f, props_f = _case_files(cache_dir, case_id)
    for f in (data_f, seg_f, props_f):
        if not f.is_file():
            raise AlsegError(f"case '{case_id}' is not in the cache — run 'alseg preprocess {cache_dir.parent}'", f)
    mode = "r" if mmap else None
    props = json.loads(props_f.read_text())
    return np.load(data_f, mmap_mode=mode), np.load(seg_f, mmap_mode=mode), props


def _case_done(cache_dir: Path, case_id: str, config_hash: str) -> bool:
    data_f, seg_f, props_f = _case_files(cache_dir, case_id)
    if not (data_f.is_file() and seg_f.is_file() and props_f.is_file()):
        return False
    try:
        return json.loads(props_f.read_text()).get("config_hash") == config_hash
    except (json.JSONDecodeError, OSError):
        return False


def _cache_one(job: tuple) -> str:
    """Worker: load, preprocess and write one case (top level so a process pool can pickle it)."""
    case, n_channels, plans, config_name, cache_dir, config_hash = job
    from alseg.data.dataset import load_case

    image, label, geometry = load_case(case, n_channels)
    if label is None:
        raise AlsegError(f"case {case.case_id} has no label — the cache holds labelled training cases only")
    data, seg, props = preprocess_case(image, label, geometry, plans, config_name)
    data_f, seg_f, props_f = _case_files(Path(cache_dir), case.case_id)
    atomic_save_npy(data_f, data)
    atomic_save_npy(seg_f, seg)
    props = {"case_id": case.case_id, "configuration": config_name, "config_hash": config_hash, **props}
    atomic_write_json(props_f, props)  # last: its presence (with the hash) marks the case done
    return case.case_id


def _stale_hash(cache_dir: Path, config_hash: str) -> str | None:
    """The hash of a different plan found in ``cache_dir``, if any."""
    manifest = read_manifest(cache_dir)
    if manifest is not None and manifest.get("config_hash") != config_hash:
        return str(manifest.get("config_hash"))
    for f in cache_dir.glob("*.json"):
        if f.name == MANIFEST:
            continue
        try:
            h = json.loads(f.read_text()).get("config_hash")
        except (json.JSONDecodeError, OSError, AttributeError):
            continue
        if h is not None and h != config_hash:
            return str(h)
    return None


def _clear_cache(cache_dir: Path) -> None:
    """Remove alseg's own files from a cache folder (never anything else)."""
    for f in cache_dir.iterdir():
        if f.is_file() and (f.suffix in (".npy", ".json") or f.name.endswith(".tmp")):
            f.unlink()


def _resolve_plans(plans: Any):
    from alseg.plans.models import Plans, load_plans

    if isinstance(plans, Plans):
        return plans
    path = Path(plans)
    return load_plans(path / "plans.json" if path.is_dir() else path)


def default_workers() -> int:
    return max(1, min(2, os.cpu_count() or 1))


def make_executor(workers: int) -> ProcessPoolExecutor:
    """A process pool of fresh interpreters ("spawn", as nnU-Net): forking a process whose
    SimpleITK or torch thread pools are running can deadlock. Spawn re-imports ``__main__``
    from its file, so when there is no such file (``python - < script``) it falls back to fork.
    """
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    method = "fork" if main_file is not None and not os.path.isfile(main_file) else "spawn"
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(method))


def preprocess_dataset(
    plans: Any,
    config_name: str,
    out_dir: str | Path,
    workers: int | None = None,
    show_progress: bool = True,
    on_mismatch: Literal["rebuild", "error"] = "rebuild",
) -> Path:
    """Build (or finish) the cache of every labelled training case; returns the cache folder.

    ``plans`` is a ``Plans`` or the path of plans.json (or of the folder holding it). The cache
    is ``out_dir/<data_identifier>/`` (see the module docstring). Idempotent: a complete cache
    of the same configuration is returned untouched. Re-entrant: cases already written for this
    configuration are kept, the rest are (re)computed, then ``manifest.json`` is written. A
    cache written for a different plan (another hash) is rebuilt from scratch, or refused with
    ``on_mismatch="error"``; it is never reused.
    """
    from alseg.data.dataset import read_dataset

    plans = _resolve_plans(plans)
    config = plans.configuration(config_name)
    cache_dir = Path(out_dir) / config.data_identifier
    config_hash = configuration_hash(plans, config_name)
    info = read_dataset(plans.dataset_root)
    case_ids = [c.case_id for c in info.training]
    if not case_ids:
        raise AlsegError("the dataset has no training cases — nothing to preprocess", plans.dataset_root)

    manifest = read_manifest(cache_dir)
    if (
        manifest is not None
        and manifest.get("config_hash") == config_hash
        and manifest.get("cases") == case_ids
        and all(_case_done(cache_dir, c, config_hash) for c in case_ids)
    ):
        return cache_dir

    cache_dir.mkdir(parents=True, exist_ok=True)
    stale = _stale_hash(cache_dir, config_hash)
    if stale is not None:
        if on_mismatch == "error":
            raise AlsegError(
                f"holds a cache of a different plan (hash {stale}, this plan {config_hash}) — delete the folder or re-run with rebuild",
                cache_dir,
            )
        _clear_cache(cache_dir)
    (cache_dir / MANIFEST).unlink(missing_ok=True)
    for f in cache_dir.glob(".*.tmp*"):  # left by a killed atomic write
        f.unlink()
    known = set(case_ids)
    for f in cache_dir.glob("*.json"):  # cases no longer in the dataset
        cid = f.stem
        if f.name != MANIFEST and cid not in known:
            for g in _case_files(cache_dir, cid):
                g.unlink(missing_ok=True)

    todo = [c for c in info.training if not _case_done(cache_dir, c.case_id, config_hash)]
    jobs = [(c, info.n_channels, plans, config_name, str(cache_dir), config_hash) for c in todo]
    workers = default_workers() if workers is None else workers
    description = f"preprocessing {config_name} ({len(todo)}/{len(case_ids)} cases)"
    if jobs:
        if workers <= 1 or len(jobs) == 1:
            progress_map(map, _cache_one, jobs, description, show_progress)
        else:
            with make_executor(min(workers, len(jobs))) as pool:
                progress_map(pool.map, _cache_one, jobs, description, show_progress)

    atomic_write_json(
        cache_dir / MANIFEST,
        {
            "schema_version": 1,
            "configuration": config_name,
            "data_identifier": config.data_identifier,
            "config_hash": config_hash,
            "dataset_root": str(plans.dataset_root),
            "n_channels": info.n_channels,
            "labels": {str(k): v for k, v in sorted(plans.labels.items())},
            "patch_size": list(config.patch_size),
            "spacing": list(config.spacing),
            "cases": case_ids,
        },
    )
    return cache_dir
