"""Tiny datasets, plans and preprocessing caches written on the fly (never real data in the repo).

Imported by the tests as ``from builders import ...`` (pytest puts ``tests/`` on the path);
the fixtures that wrap them live in ``conftest.py``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from alseg.data.cache import CaseCache
from alseg.dataset.io import Geometry, write_volume
from alseg.plans.models import Plans

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def tiny_case(rng: np.random.Generator, shape=(8, 10, 9)) -> tuple[np.ndarray, np.ndarray]:
    img = rng.normal(100, 10, shape).astype(np.float32)
    lab = np.zeros(shape, np.uint8)
    z, y, x = (s // 2 for s in shape)
    lab[z - 2 : z + 2, y - 2 : y, x - 2 : x + 2] = 1
    lab[z - 2 : z + 2, y : y + 2, x - 2 : x + 2] = 2
    img[lab > 0] += 50
    return img, lab


def write_msd(root: Path, n: int = 3, shape=(8, 10, 9), spacing=(1.0, 1.0, 1.0), seed: int = 0) -> Path:
    """A small MSD-layout dataset; returns its root."""
    rng = np.random.default_rng(seed)
    geom = Geometry(spacing, (0.0, 0.0, 0.0), IDENTITY)
    training = []
    for i in range(n):
        img, lab = tiny_case(rng, shape)
        write_volume(img, geom, root / "imagesTr" / f"case_{i:03d}.nii.gz")
        write_volume(lab, geom, root / "labelsTr" / f"case_{i:03d}.nii.gz")
        training.append({"image": f"./imagesTr/case_{i:03d}.nii.gz", "label": f"./labelsTr/case_{i:03d}.nii.gz"})
    meta = {
        "name": "Tiny",
        "tensorImageSize": "3D",
        "modality": {"0": "MRI"},
        "labels": {"0": "background", "1": "Anterior", "2": "Posterior"},
        "numTraining": n,
        "numTest": 0,
        "training": training,
        "test": [],
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=2))
    return root


def write_nnunet(root: Path, n: int = 3, channels: int = 2, shape=(8, 10, 9), seed: int = 0) -> Path:
    """A small nnU-Net v2 raw dataset with several channels."""
    rng = np.random.default_rng(seed)
    geom = Geometry((2.0, 1.0, 1.0), (0.0, 0.0, 0.0), IDENTITY)
    for i in range(n):
        img, lab = tiny_case(rng, shape)
        for c in range(channels):
            write_volume(img * (c + 1), geom, root / "imagesTr" / f"case_{i:03d}_{c:04d}.nii.gz")
        write_volume(lab, geom, root / "labelsTr" / f"case_{i:03d}.nii.gz")
    meta = {
        "channel_names": {str(c): ("T1" if c == 0 else f"T{c + 1}") for c in range(channels)},
        "labels": {"background": 0, "Anterior": 1, "Posterior": 2},
        "numTraining": n,
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=2))
    return root


LABELS = {0: "background", 1: "Anterior", 2: "Posterior"}


def tiny_plans(
    patch_2d=(16, 16), patch_3d=(8, 16, 16), batch_size=4, n_stages=4, features=(4, 8, 8, 16), **trainer
) -> Plans:
    """A plan with tiny 2D and 3D networks (``n_stages`` stages, last stride 2 in every axis)."""
    feats = list(features)[:n_stages]
    strides_2d = [[1, 1]] + [[2, 2]] * (n_stages - 1)
    strides_3d = [[1, 1, 1], [1, 2, 2]] + [[2, 2, 2]] * (n_stages - 2)
    tr = {"epochs": 2, "iterations_per_epoch": 3, **trainer}

    def conf(name, patch, kernels, strides):
        return {
            "name": name,
            "data_identifier": f"tiny_{name}",
            "spacing": [1.0] * len(patch),
            "median_shape": list(patch),
            "patch_size": list(patch),
            "batch_size": batch_size,
            "normalization": [{"scheme": "zscore"}],
            "network": {
                "n_stages": n_stages,
                "features_per_stage": feats,
                "kernel_sizes": kernels,
                "strides": strides,
            },
            "trainer": tr,
        }

    return Plans.model_validate(
        {
            "dataset_name": "Tiny",
            "dataset_root": "/nonexistent",
            "channel_names": {0: "MRI"},
            "labels": LABELS,
            "transpose_forward": [0, 1, 2],
            "transpose_backward": [0, 1, 2],
            "original_median_spacing_after_transp": [1.0, 1.0, 1.0],
            "original_median_shape_after_transp": [12, 20, 18],
            "configurations": {
                "2d": conf("2d", patch_2d, [[3, 3]] * n_stages, strides_2d),
                "3d_fullres": conf("3d_fullres", patch_3d, [[1, 3, 3]] + [[3, 3, 3]] * (n_stages - 1), strides_3d),
            },
        }
    )


def tiny_volume(rng: np.random.Generator, shape=(12, 20, 18)) -> tuple[np.ndarray, np.ndarray]:
    """A z-scored image (C=1) and labels: two adjacent boxes, brighter than the background."""
    lab = np.zeros(shape, np.uint8)
    z0, y0, x0 = (int(rng.integers(2, s - 8)) for s in shape)
    lab[z0 : z0 + 5, y0 : y0 + 3, x0 : x0 + 6] = 1
    lab[z0 : z0 + 5, y0 + 3 : y0 + 6, x0 : x0 + 6] = 2
    img = rng.normal(0, 0.3, shape).astype(np.float32) + 1.5 * (lab == 1) + 3.0 * (lab == 2)
    return img[None].astype(np.float32), lab[None]


def write_cache(cache_dir: Path, n: int = 5, shape=(12, 20, 18), seed: int = 0, volumes=None) -> Path:
    """A preprocessed cache in :class:`alseg.data.cache.CaseCache`'s layout, written through it
    (``volumes``: optional list of (img, seg))."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    cache = CaseCache(cache_dir)
    rng = np.random.default_rng(seed)
    ids = []
    for i in range(n):
        cid = f"case_{i:03d}"
        img, seg = volumes[i] if volumes is not None else tiny_volume(rng, shape)
        locs = {str(c): np.argwhere(seg[0] == c).tolist() for c in (1, 2)}
        props = {"class_locations": locs, "shape_after_preprocessing": list(seg.shape[1:])}
        cache.write_case(cid, img.astype(np.float32), seg.astype(np.uint8), props)
        ids.append(cid)
    cache.write_manifest({"cases": ids})
    return cache_dir


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """``alseg ARGS`` in this process: (exit code, stdout, stderr)."""
    from alseg.cli import main  # lazy: builders stay importable without the CLI's imports

    old = sys.argv
    sys.argv = ["alseg", *args]
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = old
    cap = capsys.readouterr()
    return code, cap.out, cap.err
