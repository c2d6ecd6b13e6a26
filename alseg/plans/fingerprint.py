"""The dataset fingerprint, as nnU-Net v2's ``DatasetFingerprintExtractor`` computes it.

Per training case: crop to the non-zero bounding box over all channels, record the spacing,
the shape after cropping and the relative size after cropping, count the voxels of every
label, and draw foreground intensities (label > 0) per channel *with replacement*, the same
number from every case (1e8 in total, nnU-Net's ``num_foreground_voxels_for_intensitystats``)
with a fixed seed per case. The pooled samples give each channel's mean, median, std, min, max
and 0.5/99.5 percentiles; CT normalisation uses them.

The per-case draw uses ``np.random.RandomState(seed).choice`` exactly as nnU-Net does, so on
the same files the statistics agree with nnU-Net's to the last digit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from alseg.dataset.crop import crop_to_nonzero
from alseg.dataset.raw import CaseFiles, DatasetInfo, load_case
from alseg.dataset.workers import default_workers, make_executor
from alseg.errors import AlsegError
from alseg.plans.models import Fingerprint, IntensitySource, IntensityStats
from alseg.progress import progress_map

__all__ = ["CaseFingerprint", "analyze_case", "extract_fingerprint", "intensity_stats"]

N_FOREGROUND_SAMPLES = int(10e7)
"""Foreground intensity samples per channel over the whole dataset (nnU-Net: ``10e7``)."""

FINGERPRINT_SEED = 1234
PERCENTILES = (0.5, 50.0, 99.5)


@dataclass
class CaseFingerprint:
    case_id: str
    spacing: list[float]
    shape_after_crop: list[int]
    relative_size_after_crop: float
    foreground_samples: list[np.ndarray]  # per channel
    voxels_per_class: dict[int, int]
    n_channels: int


def analyze_case(
    case: CaseFiles, n_channels: int, n_samples: int, seed: int = FINGERPRINT_SEED, nonzero: bool = False
) -> CaseFingerprint:
    """Fingerprint of one case (nnU-Net's ``analyze_case``); label > 0 is foreground.

    A case without a label contributes no intensity samples, or with ``nonzero`` samples from
    its non-zero region (the fallback when no case of the dataset is labelled).
    """
    image, label, geometry = load_case(case, n_channels)
    cropped, seg, mask, _ = crop_to_nonzero(image, label)
    if seg is not None:
        foreground = seg > 0
    else:
        foreground = mask if nonzero else np.zeros(mask.shape, bool)
    rs = np.random.RandomState(seed)
    samples = []
    for c in range(cropped.shape[0]):
        pixels = cropped[c][foreground]
        samples.append(rs.choice(pixels, n_samples, replace=True) if len(pixels) else np.empty(0, np.float32))
    counts = np.bincount(label.ravel().astype(np.int64)) if label is not None else np.zeros(0, np.int64)
    return CaseFingerprint(
        case_id=case.case_id,
        spacing=[float(s) for s in geometry.spacing],
        shape_after_crop=[int(s) for s in cropped.shape[1:]],
        relative_size_after_crop=float(np.prod(cropped.shape[1:]) / np.prod(image.shape[1:])),
        foreground_samples=samples,
        voxels_per_class={int(k): int(v) for k, v in enumerate(counts) if v},
        n_channels=image.shape[0],
    )


def _analyze(job: tuple) -> CaseFingerprint:
    return analyze_case(*job)


def intensity_stats(samples: np.ndarray) -> IntensityStats:
    """nnU-Net's statistics of one channel's pooled foreground samples."""
    p005, median, p995 = np.percentile(samples, PERCENTILES)
    with np.errstate(over="ignore", invalid="ignore"):
        mean, std = np.mean(samples), np.std(samples)
    if not (np.isfinite(mean) and np.isfinite(std)):  # float32 overflowed (a voxel beyond ~1e19): float64
        mean, std = np.mean(samples, dtype=np.float64), np.std(samples, dtype=np.float64)
    return IntensityStats(
        mean=float(mean),
        median=float(median),
        std=float(std),
        min=float(np.min(samples)),
        max=float(np.max(samples)),
        percentile_00_5=float(p005),
        percentile_99_5=float(p995),
    )


def extract_fingerprint(
    info: DatasetInfo,
    workers: int | None = None,
    show_progress: bool = True,
    seed: int = FINGERPRINT_SEED,
    n_samples: int = N_FOREGROUND_SAMPLES,
) -> Fingerprint:
    """Fingerprint every labelled training case of ``info`` (in parallel over cases).

    ``n_samples`` is the total number of foreground intensity samples per channel; every case
    contributes ``n_samples // n_cases``. A dataset without any foreground voxel is a user error.
    """
    cases = info.training
    if not cases:
        raise AlsegError(
            "dataset.json lists no training cases — add labelled cases to 'training'", info.root / "dataset.json"
        )
    labelled = [c for c in cases if c.label is not None]
    source: IntensitySource = "labelled foreground" if labelled else "nonzero region"
    per_case = max(1, int(n_samples // len(labelled or cases)))
    jobs = [(c, info.n_channels, per_case, seed, not labelled) for c in cases]
    workers = default_workers() if workers is None else workers
    if workers <= 1 or len(jobs) == 1:
        results = progress_map(map, _analyze, jobs, "fingerprinting cases", show_progress)
    else:
        with make_executor(min(workers, len(jobs))) as pool:
            results = progress_map(pool.map, _analyze, jobs, "fingerprinting cases", show_progress, chunksize=4)

    dims = {len(r.spacing) for r in results}
    if len(dims) != 1:
        raise AlsegError(
            "cases differ in their number of dimensions — every image must be 3D (or 2D for all)", info.root
        )

    voxels: dict[int, int] = {k: 0 for k in info.labels}
    for r in results:
        for k, v in r.voxels_per_class.items():
            voxels[k] = voxels.get(k, 0) + v
    if labelled and not any(v for k, v in voxels.items() if k != 0):
        raise AlsegError(
            "every label map is all background (0) — nothing to learn; check that labelsTr holds the annotations",
            info.root / "labelsTr",
        )

    stats = {}
    for c in range(info.n_channels):
        pooled = np.concatenate([r.foreground_samples[c] for r in results])
        stats[c] = intensity_stats(pooled)

    return Fingerprint(
        dataset_name=info.name,
        dataset_root=str(info.root),
        channel_names=dict(info.channel_names),
        labels=dict(info.labels),
        case_ids=[r.case_id for r in results],
        spacings=[r.spacing for r in results],
        shapes_after_crop=[r.shape_after_crop for r in results],
        median_relative_size_after_cropping=float(np.median([r.relative_size_after_crop for r in results])),
        foreground_intensity_properties_per_channel=stats,
        intensity_source=source,
        voxels_per_class=dict(sorted(voxels.items())),
    )
