"""The dataset fingerprint: non-zero crop, spacings, shapes, foreground statistics, class counts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from alseg.dataset.crop import bbox_of_mask, create_nonzero_mask, crop_to_nonzero
from alseg.dataset.io import Geometry, write_volume
from alseg.dataset.raw import read_dataset
from alseg.errors import AlsegError
from alseg.plans.fingerprint import extract_fingerprint

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
N_SAMPLES = 20_000


def write_cases(root: Path, cases: list[tuple[np.ndarray, np.ndarray, tuple]], channel: str = "MRI") -> Path:
    """An MSD-layout dataset from (image, label, spacing) triples."""
    training = []
    for i, (img, lab, spacing) in enumerate(cases):
        geom = Geometry(tuple(map(float, spacing)), (0.0, 0.0, 0.0), IDENTITY)
        write_volume(img.astype(np.float32), geom, root / "imagesTr" / f"c{i}.nii.gz")
        write_volume(lab.astype(np.uint8), geom, root / "labelsTr" / f"c{i}.nii.gz")
        training.append({"image": f"./imagesTr/c{i}.nii.gz", "label": f"./labelsTr/c{i}.nii.gz"})
    meta = {
        "name": "Hand",
        "modality": {"0": channel},
        "labels": {"0": "background", "1": "one", "2": "two"},
        "training": training,
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def boxed_case(shape=(10, 12, 14), box=((2, 8), (3, 9), (4, 12)), values=(1.0, 2.0, 3.0, 4.0)):
    """Zero outside ``box``; inside, a constant 5 background and a label-1 block cycling ``values``."""
    img = np.zeros(shape, np.float32)
    lab = np.zeros(shape, np.uint8)
    sl = tuple(slice(a, b) for a, b in box)
    img[sl] = 5.0
    fg = (slice(box[0][0] + 1, box[0][0] + 3), slice(box[1][0] + 1, box[1][0] + 3), slice(box[2][0] + 1, box[2][0] + 3))
    lab[fg] = 1
    img[fg] = np.resize(np.asarray(values, np.float32), (2, 2, 2))
    return img, lab


def test_nonzero_mask_fills_holes_and_bbox_is_half_open():
    img = np.zeros((1, 9, 9, 9), np.float32)
    img[0, 2:7, 2:7, 2:7] = 1
    img[0, 4, 4, 4] = 0  # a hole inside: still part of the mask
    mask = create_nonzero_mask(img)
    assert mask[4, 4, 4] and mask.sum() == 125
    assert bbox_of_mask(mask) == [[2, 7], [2, 7], [2, 7]]
    cropped, lab, cmask, bbox = crop_to_nonzero(img, np.ones((9, 9, 9), np.uint8))
    assert cropped.shape == (1, 5, 5, 5) and lab.shape == (5, 5, 5) and cmask.all()
    assert bbox_of_mask(np.zeros((3, 4, 5), bool)) == [[0, 3], [0, 4], [0, 5]]  # empty: whole image


def test_fingerprint_of_hand_made_cases(tmp_path):
    a_img, a_lab = boxed_case()
    b_img, b_lab = boxed_case(box=((0, 10), (0, 12), (0, 14)))  # nothing to crop
    b_lab[0, 0, 0] = 2
    root = write_cases(tmp_path / "ds", [(a_img, a_lab, (2.0, 1.0, 0.5)), (b_img, b_lab, (2.0, 1.0, 0.7))])
    fp = extract_fingerprint(read_dataset(root), workers=1, show_progress=False, n_samples=N_SAMPLES)

    assert fp.case_ids == ["c0", "c1"]
    assert np.allclose(fp.spacings, [[2.0, 1.0, 0.5], [2.0, 1.0, 0.7]])  # NIfTI stores float32
    assert fp.shapes_after_crop == [[6, 6, 8], [10, 12, 14]]
    assert fp.median_relative_size_after_cropping == pytest.approx((6 * 6 * 8 / (10 * 12 * 14) + 1.0) / 2)
    assert fp.voxels_per_class == {0: 2 * 10 * 12 * 14 - 17, 1: 16, 2: 1}
    st = fp.foreground_intensity_properties_per_channel[0]
    # Every case gives the same number of samples: case 0 draws from 1, 2, 3, 4 (mean 2.5),
    # case 1 from 1..4 twice plus the label-2 voxel, which sits on a 5 (mean 25 / 9).
    assert st.min == 1.0 and st.max == 5.0
    assert st.mean == pytest.approx((2.5 + 25 / 9) / 2, abs=0.03)
    assert st.percentile_00_5 == 1.0 and st.percentile_99_5 == 5.0
    assert st.median == 3.0


def test_fingerprint_is_deterministic_and_parallel_equals_serial(tmp_path):
    rng = np.random.default_rng(0)
    cases = []
    for _ in range(3):
        img, lab = boxed_case(values=tuple(rng.normal(100, 10, 8)))
        cases.append((img, lab, (1.0, 1.0, 1.0)))
    info = read_dataset(write_cases(tmp_path / "ds", cases))
    serial = extract_fingerprint(info, workers=1, show_progress=False, n_samples=N_SAMPLES)
    parallel = extract_fingerprint(info, workers=2, show_progress=False, n_samples=N_SAMPLES)
    assert serial == parallel


def test_multichannel_statistics_per_channel(tmp_path):
    rng = np.random.default_rng(1)
    geom = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), IDENTITY)
    root = tmp_path / "nn"
    for i in range(2):
        img, lab = boxed_case(values=tuple(rng.uniform(10, 20, 8)))
        write_volume(img, geom, root / "imagesTr" / f"c{i}_0000.nii.gz")
        write_volume(img * 10, geom, root / "imagesTr" / f"c{i}_0001.nii.gz")
        write_volume(lab, geom, root / "labelsTr" / f"c{i}.nii.gz")
    meta = {"channel_names": {"0": "T1", "1": "CT"}, "labels": {"background": 0, "x": 1}, "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta))
    fp = extract_fingerprint(read_dataset(root), workers=1, show_progress=False, n_samples=N_SAMPLES)
    s0, s1 = fp.foreground_intensity_properties_per_channel[0], fp.foreground_intensity_properties_per_channel[1]
    assert s1.min == pytest.approx(10 * s0.min) and s1.max == pytest.approx(10 * s0.max)
    assert s1.mean == pytest.approx(10 * s0.mean, rel=0.02)


def test_all_background_labels_are_a_user_error(tmp_path):
    img, lab = boxed_case()
    root = write_cases(tmp_path / "ds", [(img, np.zeros_like(lab), (1, 1, 1))] * 2)
    with pytest.raises(AlsegError, match="all background"):
        extract_fingerprint(read_dataset(root), workers=1, show_progress=False, n_samples=N_SAMPLES)


def test_unreadable_case_in_a_worker_is_a_user_error(tmp_path):
    img, lab = boxed_case()
    root = write_cases(tmp_path / "ds", [(img, lab, (1, 1, 1))] * 3)
    (root / "imagesTr" / "c1.nii.gz").write_bytes(b"not an image")
    with pytest.raises(AlsegError, match="c1.nii.gz"):
        extract_fingerprint(read_dataset(root), workers=2, show_progress=False, n_samples=N_SAMPLES)


def test_channels_on_different_grids_are_a_user_error(tmp_path):
    img, lab = boxed_case()
    geom = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), IDENTITY)
    root = tmp_path / "nn"
    for i in range(2):
        write_volume(img, geom, root / "imagesTr" / f"c{i}_0000.nii.gz")
        write_volume(img[:, :, :-1], geom, root / "imagesTr" / f"c{i}_0001.nii.gz")
        write_volume(lab, geom, root / "labelsTr" / f"c{i}.nii.gz")
    meta = {"channel_names": {"0": "T1", "1": "T2"}, "labels": {"background": 0, "x": 1}, "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(AlsegError, match="channel 0"):
        extract_fingerprint(read_dataset(root), workers=1, show_progress=False, n_samples=N_SAMPLES)
