"""The built-in synthetic dataset: MSD layout, determinism, geometry, labels and intensities."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage as ndi

from alseg.dataset.synthetic import DEFAULT_CASES, generate_dataset, synthesize_case
from alseg.errors import AlsegError

MSD_KEYS = {
    "name",
    "description",
    "tensorImageSize",
    "modality",
    "labels",
    "numTraining",
    "numTest",
    "training",
    "test",
}


@pytest.fixture(scope="module")
def mri(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("mri"))  # the default: 24 + 4 cases


@pytest.fixture(scope="module")
def ct(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("ct"), cases=3, test_cases=1, ct=True)


@pytest.fixture(scope="module")
def flat(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("flat"), cases=4, test_cases=2, dims=2)


def _meta(root: Path) -> dict:
    return json.loads((root / "dataset.json").read_text())


def _pairs(root: Path):
    """(image, label) SimpleITK images of every training case."""
    for entry in _meta(root)["training"]:
        yield sitk.ReadImage(str(root / entry["image"])), sitk.ReadImage(str(root / entry["label"]))


def _arrays(root: Path) -> dict[str, np.ndarray]:
    return {
        str(p.relative_to(root)): sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in sorted(root.rglob("*.nii.gz"))
    }


def test_layout_and_dataset_json(mri):
    meta = _meta(mri)
    assert MSD_KEYS <= meta.keys()
    assert meta["tensorImageSize"] == "3D"
    assert meta["modality"] == {"0": "MRI"}
    assert meta["labels"] == {"0": "background", "1": "Anterior", "2": "Posterior"}
    assert meta["numTraining"] == len(meta["training"]) == DEFAULT_CASES
    assert meta["numTest"] == len(meta["test"]) == 4
    assert meta["training"][0] == {"image": "./imagesTr/synth_000.nii.gz", "label": "./labelsTr/synth_000.nii.gz"}
    assert meta["test"][0] == "./imagesTs/synth_024.nii.gz"
    listed = {e[k] for e in meta["training"] for k in ("image", "label")} | set(meta["test"])
    on_disk = {f"./{p.relative_to(mri).as_posix()}" for p in mri.rglob("*.nii.gz")}
    assert listed == on_disk


def test_same_arguments_give_identical_arrays_and_case_k_does_not_depend_on_cases(tmp_path):
    a = _arrays(generate_dataset(tmp_path / "a", cases=3, seed=5, test_cases=1))
    b = _arrays(generate_dataset(tmp_path / "b", cases=3, seed=5, test_cases=1))
    c = _arrays(generate_dataset(tmp_path / "c", cases=5, seed=5, test_cases=0))
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    for part in ("imagesTr", "labelsTr"):
        np.testing.assert_array_equal(a[f"{part}/synth_001.nii.gz"], c[f"{part}/synth_001.nii.gz"])
    # an id names its content: test case synth_003 here is training case synth_003 there
    np.testing.assert_array_equal(a["imagesTs/synth_003.nii.gz"], c["imagesTr/synth_003.nii.gz"])
    other = synthesize_case(1, seed=6)
    assert other.image.shape != a["imagesTr/synth_001.nii.gz"].shape or not np.array_equal(
        other.image, a["imagesTr/synth_001.nii.gz"]
    )


def test_files_hold_what_synthesize_case_returns(ct):
    case = synthesize_case(2, ct=True)
    image = sitk.ReadImage(str(ct / "imagesTr" / "synth_002.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), case.image)
    np.testing.assert_allclose(image.GetSpacing(), case.spacing[::-1], rtol=1e-6)  # NIfTI keeps float32


@pytest.mark.parametrize(
    "name, low, high",
    [("mri", (32, 46, 31), (40, 54, 39)), ("ct", (16, 88, 88), (24, 104, 104)), ("flat", (1, 46, 31), (1, 54, 39))],
)
def test_shapes_in_range_and_image_label_on_the_same_grid(name, low, high, request):
    root = request.getfixturevalue(name)
    for image, label in _pairs(root):
        shape = image.GetSize()[::-1]  # (z, y, x)
        assert all(lo <= n <= hi for lo, n, hi in zip(low, shape, high)), shape
        assert label.GetSize() == image.GetSize()
        assert label.GetSpacing() == image.GetSpacing()
        assert label.GetOrigin() == image.GetOrigin()
        assert label.GetDirection() == image.GetDirection()
        assert image.GetPixelID() == sitk.sitkFloat32 and label.GetPixelID() == sitk.sitkUInt8
    if name == "ct":
        assert all(sitk.ReadImage(str(p)).GetNumberOfPixels() < 300_000 for p in root.rglob("*.nii.gz"))


@pytest.mark.parametrize("name", ["mri", "ct", "flat"])
def test_both_classes_present_and_adjacent_in_every_training_case(name, request):
    for _, label in _pairs(request.getfixturevalue(name)):
        lab = sitk.GetArrayFromImage(label)
        assert set(np.unique(lab)) == {0, 1, 2}
        touching = ndi.binary_dilation(lab == 1, structure=ndi.generate_binary_structure(3, 1)) & (lab == 2)
        assert touching.any()


def test_mri_intensities_like_hippocampus(mri):
    spacings = []
    for image, label in _pairs(mri):
        img, lab = sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(label)
        spacings.append(image.GetSpacing())
        assert np.isfinite(img).all()
        assert 0.0 <= img.min() and 500.0 < img.max() < 4000.0
        bg, fg = img[lab == 0], img[lab > 0]
        assert bg.mean() - fg.mean() > 0.1 * bg.std()  # darker than the tissue around, not separable by threshold
        assert fg.max() > np.percentile(bg, 10)
    np.testing.assert_allclose(spacings, 1.0, atol=0.06)
    assert np.mean(np.all(np.array(spacings) == 1.0, axis=1)) > 0.5  # most cases exactly 1 mm


def test_ct_is_anisotropic_and_in_hounsfield_units(ct):
    meta = _meta(ct)
    assert meta["modality"] == {"0": "CT"}
    assert meta["labels"] == {"0": "background", "1": "organ", "2": "lesion"}
    for image, label in _pairs(ct):
        sx, sy, sz = image.GetSpacing()
        assert sz / sx >= 3 and sx == sy
        img, lab = sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(label)
        assert np.isfinite(img).all()
        assert -1024.0 <= img.min() and img.max() <= 3071.0
        assert np.mean(img < -900) > 0.1  # air around the body
        organ, lesion = img[lab == 1].mean(), img[lab == 2].mean()
        assert 40.0 < organ < 120.0 and 0.0 < lesion < organ


def test_dims2_gives_single_slice_images(flat):
    meta = _meta(flat)
    paths = [flat / e["image"] for e in meta["training"]] + [flat / p for p in meta["test"]]
    for p in paths:
        image = sitk.ReadImage(str(p))
        assert image.GetDimension() == 3 and image.GetSize()[2] == 1
        assert image.GetSpacing()[2] == 999.0  # nnU-Net's marker for the fake axis
    case = synthesize_case(0, dims=2, ct=True)
    assert case.image.shape[0] == 1 and set(np.unique(case.label)) == {0, 1, 2}


def test_rerun_with_fewer_cases_leaves_only_listed_files(tmp_path):
    generate_dataset(tmp_path, cases=4, test_cases=2, dims=2)
    (tmp_path / "imagesTr" / "notes.txt").write_text("kept")
    generate_dataset(tmp_path, cases=2, test_cases=1, dims=2)
    assert sorted(p.name for p in (tmp_path / "imagesTr").iterdir()) == [
        "notes.txt",
        "synth_000.nii.gz",
        "synth_001.nii.gz",
    ]
    assert sorted(p.name for p in (tmp_path / "imagesTs").iterdir()) == ["synth_002.nii.gz"]


@pytest.mark.parametrize("kwargs", [{"dims": 4}, {"cases": 0}, {"test_cases": -1}])
def test_bad_arguments_are_user_errors(tmp_path, kwargs):
    with pytest.raises(AlsegError):
        generate_dataset(tmp_path, **kwargs)


def test_easy_difficulty_keeps_the_shapes_and_separates_the_classes_by_intensity():
    hard, easy = synthesize_case(3, seed=1), synthesize_case(3, seed=1, difficulty="easy")
    np.testing.assert_array_equal(hard.label, easy.label)  # same draws: only the contrast changes

    def gap(case) -> float:
        anterior, posterior = (float(np.median(case.image[case.label == k])) for k in (1, 2))
        return abs(anterior - posterior) / anterior

    assert gap(easy) > 0.06 and gap(easy) > gap(hard) + 0.04, (gap(hard), gap(easy))
    with pytest.raises(AlsegError, match="difficulty must be one of hard, easy"):
        synthesize_case(0, difficulty="trivial")
