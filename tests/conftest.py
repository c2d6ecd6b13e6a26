"""Shared fixtures: tiny datasets written on the fly (never real data in the repo)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from alseg.data.io import Geometry, write_volume

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


@pytest.fixture
def msd_dataset(tmp_path: Path) -> Path:
    return write_msd(tmp_path / "Task99_Tiny")


@pytest.fixture
def nnunet_dataset(tmp_path: Path) -> Path:
    return write_nnunet(tmp_path / "Dataset099_Tiny")


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread per test: tiny networks gain nothing from more, and on shared cores
    threads only wait for each other."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
