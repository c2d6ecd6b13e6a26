"""Training data from the preprocessed cache, restricted to an arbitrary set of regions.

Active learning trains on what is labelled: whole cases for the full-data reference, or pool
items (patch-sized boxes, one slice thick for 2D items; :class:`alseg.data.pool.Item` has
the same ``case_id`` / ``box`` fields and can be passed as is). A :class:`Region` is a box in
preprocessed array coordinates ``(z, y, x)`` of one case; by default training patches never
read image or label outside it (outside is zero padding), so unlabelled voxels around an
annotated item never count as background. With partial labels (below) the image around the
region is read and the unlabelled voxels are ignored by the loss instead.

Sampling follows nnU-Net v2's data loader: a region uniformly at random, a patch of the plan's
patch size uniformly inside it (centred when the region is smaller, then padded), and for the
last ``foreground_oversample`` share of each batch a patch centred on a random foreground
voxel of a random class present in the region (clamped to stay inside it). For the 2D
configuration a patch is one slice of the region along axis 0. With augmentation the patch
is read larger (:func:`alseg.data.augment.sampling_patch_size`) and cropped back after rotation
and scaling.

**Partial labels** (``ignore_label`` set: items smaller than the patch, ``alseg loop
--item-size``; docs/design.md) follow nnU-Net v2's data loader with an ignore label instead: a
region (a labelled item) uniformly at random, then a patch of the plan's size centred on a
voxel of it — a random voxel of the region, or for the oversampled share a random *labelled*
foreground voxel of it (a random voxel of the region when it has none) — and clamped to the
case. Image and label are read over the whole case around the patch (real context, no zero
padding inside the case); every label voxel outside all the regions of that case (outside the
case too) becomes ``ignore_label``, which the loss skips
(:class:`alseg.model.loss.SegLoss`). Without ``ignore_label`` the sampling above is unchanged.

Cases are read through :class:`alseg.data.cache.CaseCache` (images ``(C, z, y, x)``, labels
``(z, y, x)``, ``class_locations`` ``{label: [[z, y, x], ...]}`` in the properties), memory-mapped
and read lazily in the workers. Labels come from the cache unless ``label_dir`` holds
``<case>.npy`` label volumes (the oracle's), which then replace them for training.
Validation and test loaders yield whole cases (one per batch, cache labels) for
``SegmentationModule.validation_step``.

Reproducibility: each sample is drawn from a numpy generator (and the augmentation from MONAI
generators) seeded from ``(seed, rank)`` or, in worker processes, from the worker's torch seed,
which the data loader's own seeded generator fixes; so a run with the same seed, workers and
devices draws the same patches.

On several devices (DDP) the plan's batch size is the *global* batch, split over the ranks as
nnU-Net v2 splits it (:func:`rank_batch_size`), and every rank draws its own patches for the
same number of iterations: the optimiser takes as many steps, on as many patches, as on one
device. Lightning's ``DistributedSampler`` is therefore switched off (the samples are random
draws already, not a dataset to shard).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, get_worker_info

from alseg.data.augment import get_training_transforms, sampling_patch_size
from alseg.data.cache import CaseCache
from alseg.errors import AlsegError
from alseg.plans.models import Configuration

__all__ = [
    "CaseDataset",
    "PatchDataset",
    "Region",
    "SegDataModule",
    "default_num_workers",
    "rank_batch_size",
    "resolve_num_workers",
    "whole_case_region",
]

MAX_LOCATIONS = 10_000  # foreground coordinates kept per class, as the cache's class_locations
_OPEN_CASES = 64  # memory maps kept open per worker


def rank_batch_size(batch_size: int, rank: int, world_size: int) -> int:
    """Rank ``rank``'s share of a global batch: the first ``batch_size % world_size`` ranks take one more."""
    if batch_size < world_size:
        raise AlsegError(
            f"a batch of {batch_size} cannot be split over {world_size} devices — use --batch-size {world_size} "
            f"or more, or fewer --devices"
        )
    return batch_size // world_size + (1 if rank < batch_size % world_size else 0)


@dataclass(frozen=True)
class Region:
    """A box of one preprocessed case: ``box[a] = (start, stop)`` per array axis ``(z, y, x)``."""

    case_id: str
    box: tuple[tuple[int, int], ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(b - a for a, b in self.box)


# ---------------------------------------------------------------------------- cache access
def _as_cache(cache: CaseCache | str | Path) -> CaseCache:
    return cache if isinstance(cache, CaseCache) else CaseCache(cache)


def whole_case_region(cache: CaseCache | str | Path, case_id: str) -> Region:
    """The region covering a whole preprocessed case."""
    return Region(case_id, tuple((0, s) for s in _as_cache(cache).shape(case_id)))


class _CaseReader:
    """Lazily opened, memory-mapped cache arrays of one process (an LRU of open cases)."""

    def __init__(self, cache: CaseCache, label_dir: Path | None):
        self.cache = cache
        self.label_dir = label_dir
        self._open: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def arrays(self, case_id: str) -> tuple[np.ndarray, np.ndarray]:
        """``(image (C, z, y, x), label (z, y, x))``, memory-mapped."""
        if case_id in self._open:
            self._open.move_to_end(case_id)
            return self._open[case_id]
        image = self.cache.image(case_id)
        if self.label_dir is not None:
            path = self.label_dir / f"{case_id}.npy"
            if not path.is_file():
                raise AlsegError(f"no label volume for case '{case_id}'", path)
            label = np.load(path, mmap_mode="r")
            if label.ndim == image.ndim:
                label = label[0]
        else:
            label = self.cache.label(case_id)
        if label.shape != image.shape[1:]:
            raise AlsegError(f"label shape {label.shape} differs from the image's {image.shape[1:]}", case_id)
        self._open[case_id] = (image, label)
        if len(self._open) > _OPEN_CASES:
            self._open.popitem(last=False)
        return image, label

    def class_locations(self, case_id: str) -> dict[int, np.ndarray]:
        locs = self.cache.properties(case_id).get("class_locations", {})
        return {int(k): np.asarray(v, dtype=np.int64).reshape(-1, 3) for k, v in locs.items() if int(k) != 0}

    def __getstate__(self) -> dict[str, Any]:  # never pickle open memory maps into workers
        return {**self.__dict__, "_open": OrderedDict()}


# ---------------------------------------------------------------------------- sampling
def _axis_start(rng: np.random.Generator, r0: int, r1: int, p: int, centre: int | None) -> int:
    """Start of a patch of length ``p`` in region ``[r0, r1)``: nnU-Net's rules."""
    extent = r1 - r0
    if extent < p:  # region smaller than the patch: centre it in the patch, pad the rest
        return r0 - (p - extent) // 2
    if centre is None:
        return int(rng.integers(r0, r1 - p + 1))
    return int(np.clip(centre - p // 2, r0, r1 - p))


def _inside_mask(boxes: np.ndarray, lo: Sequence[int], size: Sequence[int]) -> np.ndarray:
    """``(*size)`` bool: the voxels of the box ``[lo, lo + size)`` inside any of ``boxes`` ``(M, 3, 2)``."""
    out = np.zeros(tuple(size), dtype=bool)
    lo_ = np.asarray(lo)
    for box in boxes:
        a = np.maximum(box[:, 0] - lo_, 0)
        b = np.minimum(box[:, 1] - lo_, np.asarray(size))
        if np.all(b > a):
            out[tuple(slice(int(x), int(y)) for x, y in zip(a, b))] = True
    return out


def _read_box(
    array: np.ndarray, lo: Sequence[int], size: Sequence[int], region: Sequence[tuple[int, int]]
) -> np.ndarray:
    """``array[..., lo:lo+size]`` over the last 3 axes, zero outside ``region`` (and the array)."""
    lead = array.shape[: array.ndim - 3]
    out = np.zeros(lead + tuple(size), dtype=array.dtype)
    src, dst = [], []
    for (r0, r1), low, s, n in zip(region, lo, size, array.shape[-3:]):
        a, b = max(low, r0, 0), min(low + s, r1, n)
        if b <= a:
            return out
        src.append(slice(a, b))
        dst.append(slice(a - low, b - low))
    out[(..., *dst)] = array[(..., *src)]
    return out


class PatchDataset(Dataset):
    """``length`` random training patches from ``regions`` (see the module docstring).

    Item ``i`` is forced to contain foreground when ``i % batch_size`` falls in the last
    ``foreground_oversample`` share of a batch (nnU-Net's ``get_do_oversample``). Items are
    ``{"image": (C, *patch) float32, "label": (1, *patch) uint8}``, 2D patches for a 2D
    configuration. With ``ignore_label`` the regions are partial labels of their cases: patches
    hold the image around them and ``ignore_label`` outside them (see the module docstring).
    """

    def __init__(
        self,
        cache: CaseCache | str | Path,
        regions: Sequence[Region],
        patch_size: Sequence[int],
        length: int,
        batch_size: int,
        foreground_oversample: float = 0.33,
        transforms=None,
        sample_size: Sequence[int] | None = None,
        label_dir: str | Path | None = None,
        seed: int = 0,
        ignore_label: int | None = None,
    ):
        if not regions:
            raise AlsegError("no training regions: label some items or cases first")
        self.regions = [Region(r.case_id, tuple((int(a), int(b)) for a, b in r.box)) for r in regions]
        for r in self.regions:
            if len(r.box) != 3 or any(b <= a for a, b in r.box):
                raise AlsegError(f"region {r.box} of case '{r.case_id}' must be a non-empty (z, y, x) box")
        self.dims = len(patch_size)
        self.patch_size = tuple(int(p) for p in patch_size)
        self.sample_size = tuple(int(s) for s in (sample_size or patch_size))
        self.length = int(length)
        self.batch_size = int(batch_size)
        self.n_forced = self.batch_size - round(self.batch_size * (1 - foreground_oversample))
        self.transforms = transforms
        self.reader = _CaseReader(_as_cache(cache), Path(label_dir) if label_dir is not None else None)
        self.seed = seed
        self.rank = 0
        self.rng: np.random.Generator | None = None
        self._fg: dict[int, dict[int, np.ndarray]] = {}
        self.ignore_label = None if ignore_label is None else int(ignore_label)
        self.case_boxes: dict[str, np.ndarray] = {}
        """Partial labels: each case's regions ``(M, 3, 2)``, the voxels whose labels count."""
        if self.ignore_label is not None:
            by_case: dict[str, list] = {}
            for r in self.regions:
                by_case.setdefault(r.case_id, []).append(r.box)
            self.case_boxes = {c: np.asarray(b, dtype=np.int64).reshape(-1, 3, 2) for c, b in by_case.items()}

    def __len__(self) -> int:
        return self.length

    def reseed(self, seed: int) -> None:
        """Seed the patch sampler and the augmentation (called once per process)."""
        self.rng = np.random.default_rng(seed)
        if self.transforms is not None:
            self.transforms.set_random_state(seed=seed % (2**32))

    def is_forced(self, i: int) -> bool:
        return i % self.batch_size >= self.batch_size - self.n_forced

    def foreground(self, k: int) -> dict[int, np.ndarray]:
        """Foreground coordinates ``(M, 3)`` per class inside region ``k`` (at most 10k each)."""
        if k not in self._fg:
            region = self.regions[k]
            image, label = self.reader.arrays(region.case_id)
            whole = all(a == 0 and b == n for (a, b), n in zip(region.box, label.shape))
            if whole and self.reader.label_dir is None:
                locs = self.reader.class_locations(region.case_id)
            else:
                sub = np.asarray(label[tuple(slice(a, b) for a, b in region.box)])
                offset = np.array([a for a, _ in region.box])
                pick = np.random.default_rng(k)
                locs = {}
                for c in np.unique(sub):
                    if c == 0 or c == self.ignore_label:
                        continue
                    coords = np.argwhere(sub == c)
                    if len(coords) > MAX_LOCATIONS:
                        coords = coords[np.sort(pick.choice(len(coords), MAX_LOCATIONS, replace=False))]
                    locs[int(c)] = coords + offset
            self._fg[k] = {c: v for c, v in locs.items() if len(v)}
        return self._fg[k]

    def _foreground_voxel(self, k: int, rng: np.random.Generator) -> tuple[int, ...] | None:
        """A random voxel of a random foreground class present in region ``k`` (None if none)."""
        fg = self.foreground(k)
        if not fg:
            return None
        classes = sorted(fg)
        coords = fg[classes[int(rng.integers(len(classes)))]]
        return tuple(int(c) for c in coords[int(rng.integers(len(coords)))])

    def patch_box(self, k: int, forced: bool, rng: np.random.Generator) -> tuple[int, ...]:
        """Start ``(z, y, x)`` of the patch (plan patch size; 1 slice thick in 2D) in region ``k``."""
        region = self.regions[k]
        size = (1, *self.patch_size) if self.dims == 2 else self.patch_size
        if self.ignore_label is not None:
            return self._partial_patch_box(k, forced, rng, size)
        centre: tuple[int | None, ...] | None = self._foreground_voxel(k, rng) if forced else None
        if centre is None:
            # 2D: a random slice of the region, then a random window in it
            centre = (int(rng.integers(*region.box[0])), None, None) if self.dims == 2 else (None, None, None)
        return tuple(_axis_start(rng, r0, r1, p, c) for (r0, r1), p, c in zip(region.box, size, centre))

    def _partial_patch_box(
        self, k: int, forced: bool, rng: np.random.Generator, size: tuple[int, ...]
    ) -> tuple[int, ...]:
        """Partial labels (nnU-Net v2 with an ignore label): the patch centred on a voxel of
        region ``k`` (a labelled foreground voxel when ``forced`` and there is one), clamped to
        the case, so it always holds labelled voxels and the image around them."""
        region = self.regions[k]
        centre = self._foreground_voxel(k, rng) if forced else None
        if centre is None:
            centre = tuple(int(rng.integers(a, b)) for a, b in region.box)
        shape = self.reader.arrays(region.case_id)[1].shape
        return tuple(_axis_start(rng, 0, n, p, c) for n, p, c in zip(shape, size, centre))

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if self.rng is None:  # main process (num_workers=0): seeded from (seed, rank)
            self.reseed(int(np.random.SeedSequence([self.seed, self.rank]).generate_state(1)[0]))
        rng = self.rng
        k = int(rng.integers(len(self.regions)))
        region = self.regions[k]
        start = self.patch_box(k, self.is_forced(i), rng)
        size3 = (1, *self.sample_size) if self.dims == 2 else self.sample_size
        patch3 = (1, *self.patch_size) if self.dims == 2 else self.patch_size
        lo = [s - (q - p) // 2 for s, q, p in zip(start, size3, patch3)]
        image, label = self.reader.arrays(region.case_id)
        if self.ignore_label is None:
            img = _read_box(image, lo, size3, region.box).astype(np.float32, copy=False)
            lab = _read_box(label, lo, size3, region.box)[None].astype(np.uint8, copy=False)
        else:  # partial labels: the whole case around the patch, labels only inside the case's regions
            case = tuple((0, n) for n in label.shape)
            img = _read_box(image, lo, size3, case).astype(np.float32, copy=False)
            lab = _read_box(label, lo, size3, case).astype(np.uint8)
            lab[~_inside_mask(self.case_boxes[region.case_id], lo, size3)] = self.ignore_label
            lab = lab[None]
        if self.dims == 2:
            img, lab = img[:, 0], lab[:, 0]
        sample = {"image": img, "label": lab}
        if self.transforms is not None:
            sample = self.transforms(sample)
        else:
            sample = {
                "image": torch.from_numpy(np.ascontiguousarray(img)),
                "label": torch.from_numpy(np.ascontiguousarray(lab)),
            }
        return sample


def _worker_init(worker_id: int) -> None:
    info = get_worker_info()
    ds = info.dataset
    ds.reseed(int(np.random.SeedSequence([info.seed % 2**63, ds.rank]).generate_state(1)[0]))


class CaseDataset(Dataset):
    """Whole preprocessed cases with the cache's labels:
    ``{"image": (C, z, y, x) float32, "label": (1, z, y, x) uint8, "case_id": str}``."""

    def __init__(self, cache: CaseCache | str | Path, case_ids: Sequence[str]):
        self.cache = _as_cache(cache)
        self.case_ids = list(case_ids)

    def __len__(self) -> int:
        return len(self.case_ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        cid = self.case_ids[i]
        image = np.array(self.cache.image(cid))  # a writable copy in memory (torch needs one)
        label = np.array(self.cache.label(cid)[None])
        return {"image": torch.from_numpy(image).float(), "label": torch.from_numpy(label), "case_id": cid}


def default_num_workers() -> int:
    """min(2, CPUs) on a CPU-only machine, up to 8 with a GPU to feed."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(8 if torch.cuda.is_available() else 2, cpus)


def resolve_num_workers(num_workers: int | None) -> int:
    """The loader processes a data module uses for ``num_workers`` (None: :func:`default_num_workers`)."""
    return default_num_workers() if num_workers is None else num_workers


class SegDataModule(LightningDataModule):
    """Patches from ``train_regions`` for training, whole cases for validation and test.

    Args:
        cache: the configuration's preprocessed cache (a folder is accepted too).
        config: the plan configuration (patch size, batch size, trainer.iterations_per_epoch,
            trainer.foreground_oversample), after any overrides.
        train_regions: :class:`Region` s (or pool items) to train on.
        val_cases, test_cases: case ids for validation / test (test defaults to val).
        label_dir: optional ``<case>.npy`` label volumes replacing the cache's for training.
        num_workers: loader processes (default :func:`default_num_workers`).
        augment: use :func:`alseg.data.augment.get_training_transforms`.
        seed: sampling seed.
        ignore_label: the regions are partial labels (items smaller than the patch): patches
            hold the image around them and this value outside them (see the module docstring).
    """

    def __init__(
        self,
        cache: CaseCache | str | Path,
        config: Configuration,
        train_regions: Sequence[Region],
        val_cases: Sequence[str] = (),
        test_cases: Sequence[str] | None = None,
        label_dir: str | Path | None = None,
        num_workers: int | None = None,
        augment: bool = True,
        seed: int = 0,
        ignore_label: int | None = None,
    ):
        super().__init__()
        self.cache = _as_cache(cache)
        self.config = config
        self.train_regions = list(train_regions)
        self.val_cases = list(val_cases)
        self.test_cases = list(val_cases if test_cases is None else test_cases)
        self.label_dir = label_dir
        self.num_workers = resolve_num_workers(num_workers)
        self.augment = augment
        self.seed = seed
        self.ignore_label = ignore_label
        self.train_dataset: PatchDataset | None = None

    def build_train_dataset(self) -> PatchDataset:
        cfg = self.config
        dims = len(cfg.patch_size)
        batch = self._batch_size()
        return PatchDataset(
            self.cache,
            self.train_regions,
            cfg.patch_size,
            length=cfg.trainer.iterations_per_epoch * batch,
            batch_size=batch,
            foreground_oversample=cfg.trainer.foreground_oversample,
            transforms=get_training_transforms(cfg.patch_size, dims) if self.augment else None,
            sample_size=sampling_patch_size(cfg.patch_size) if self.augment else None,
            label_dir=self.label_dir,
            seed=self.seed,
            ignore_label=self.ignore_label,
        )

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_dataset is None:
            self.train_dataset = self.build_train_dataset()

    def _rank(self) -> int:
        trainer = getattr(self, "trainer", None)
        return int(trainer.global_rank) if trainer is not None else 0

    def _batch_size(self) -> int:
        """This rank's share of the plan's (global) batch size; the whole batch on one device."""
        trainer = getattr(self, "trainer", None)
        world = int(trainer.world_size) if trainer is not None else 1
        return rank_batch_size(self.config.batch_size, self._rank(), world)

    def train_dataloader(self) -> DataLoader:
        if self.train_dataset is None:
            self.setup("fit")
        ds = self.train_dataset
        ds.rank = self._rank()
        return DataLoader(
            ds,
            batch_size=ds.batch_size,
            shuffle=False,  # randomness is in the samples; order keeps the oversampling slots
            num_workers=self.num_workers,
            worker_init_fn=_worker_init if self.num_workers > 0 else None,
            generator=torch.Generator().manual_seed(self.seed + 7919 * ds.rank),
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def _cases_loader(self, cases: Sequence[str]) -> DataLoader:
        return DataLoader(
            CaseDataset(self.cache, cases),
            batch_size=1,
            shuffle=False,
            num_workers=min(self.num_workers, 1),
            persistent_workers=False,
        )

    def val_dataloader(self) -> DataLoader:
        return self._cases_loader(self.val_cases)

    def test_dataloader(self) -> DataLoader:
        return self._cases_loader(self.test_cases)
