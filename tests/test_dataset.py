"""Dataset reading and `alseg check`: both layouts, and one clear line per kind of broken input."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from builders import IDENTITY, run_cli, write_msd, write_nnunet

from alseg.cli import main
from alseg.dataset.io import Geometry, read_volume, write_volume
from alseg.dataset.raw import load_case, read_dataset
from alseg.dataset.validate import check_dataset
from alseg.errors import AlsegError


def test_msd_layout_is_read_with_geometry(msd_dataset: Path):
    info = read_dataset(msd_dataset)
    assert info.layout == "msd"
    assert [c.case_id for c in info.training] == ["case_000", "case_001", "case_002"]
    assert info.labels == {0: "background", 1: "Anterior", 2: "Posterior"}
    assert info.channel_names == {0: "MRI"}
    image, label, geom = load_case(info.training[0], info.n_channels)
    assert image.shape == (1, 8, 10, 9) and image.dtype == np.float32
    assert label.shape == (8, 10, 9) and set(np.unique(label)) == {0, 1, 2}
    assert geom.spacing == (1.0, 1.0, 1.0)


def test_nnunet_layout_multichannel(nnunet_dataset: Path):
    info = read_dataset(nnunet_dataset)
    assert info.layout == "nnunet" and info.n_channels == 2
    assert info.labels == {0: "background", 1: "Anterior", 2: "Posterior"}
    image, label, geom = load_case(info.training[1], 2)
    assert image.shape == (2, 8, 10, 9)
    np.testing.assert_allclose(image[1], 2 * image[0], rtol=1e-5)
    assert geom.spacing == (2.0, 1.0, 1.0)  # (z, y, x) order
    assert check_dataset(info, show_progress=False).ok


def test_geometry_axis_order_roundtrip(tmp_path: Path):
    geom = Geometry((3.0, 1.5, 0.5), (10.0, 20.0, 30.0), IDENTITY)
    arr = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    write_volume(arr, geom, tmp_path / "a.nii.gz")
    back, g2 = read_volume(tmp_path / "a.nii.gz")
    np.testing.assert_array_equal(back, arr)
    assert g2.spacing == geom.spacing and g2.origin == geom.origin


def test_check_passes_and_prints_summary(msd_dataset: Path, capsys):
    code, out, err = run_cli(["check", str(msd_dataset)], capsys)
    assert code == 0, err
    assert "3 cases" in out and "Anterior" in out and "Posterior" in out


# --- broken inputs: each gives exactly the expected one-line error and exit code 2 -------------


def _corrupt_missing_json(root: Path) -> None:
    (root / "dataset.json").unlink()


def _corrupt_invalid_json(root: Path) -> None:
    (root / "dataset.json").write_text('{"modality": {"0": "MRI"},,}')


def _corrupt_missing_file(root: Path) -> None:
    (root / "imagesTr" / "case_001.nii.gz").unlink()


def _corrupt_truncated(root: Path) -> None:
    p = root / "imagesTr" / "case_001.nii.gz"
    p.write_bytes(p.read_bytes()[:200])


def _write_label(root: Path, lab: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> None:
    write_volume(lab, Geometry(spacing, (0.0, 0.0, 0.0), IDENTITY), root / "labelsTr" / "case_001.nii.gz")


def _corrupt_shape(root: Path) -> None:
    _write_label(root, np.zeros((8, 11, 9), np.uint8))


def _corrupt_spacing(root: Path) -> None:
    _write_label(root, np.zeros((8, 10, 9), np.uint8), spacing=(1.0, 1.0, 1.5))


def _corrupt_label_value(root: Path) -> None:
    lab = np.zeros((8, 10, 9), np.uint8)
    lab[2, 2, 2] = 7
    _write_label(root, lab)


def _corrupt_nan(root: Path) -> None:
    img = np.ones((8, 10, 9), np.float32)
    img[1, 1, 1] = np.nan
    write_volume(img, Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), IDENTITY), root / "imagesTr" / "case_001.nii.gz")


def _corrupt_channels(root: Path) -> None:
    meta = json.loads((root / "dataset.json").read_text())
    meta["modality"] = {"0": "T1", "1": "T2"}
    (root / "dataset.json").write_text(json.dumps(meta))


def _corrupt_empty(root: Path) -> None:
    meta = json.loads((root / "dataset.json").read_text())
    meta["training"] = []
    (root / "dataset.json").write_text(json.dumps(meta))


def _corrupt_duplicate(root: Path) -> None:
    meta = json.loads((root / "dataset.json").read_text())
    meta["training"].append(meta["training"][0])
    (root / "dataset.json").write_text(json.dumps(meta))


def _corrupt_all_background(root: Path) -> None:
    for i in range(3):
        write_volume(
            np.zeros((8, 10, 9), np.uint8),
            Geometry((1.0,) * 3, (0.0,) * 3, IDENTITY),
            root / "labelsTr" / f"case_{i:03d}.nii.gz",
        )


def _edit_json(root: Path, **changes) -> None:
    meta = json.loads((root / "dataset.json").read_text())
    meta.update(changes)
    (root / "dataset.json").write_text(json.dumps(meta))


def _corrupt_num_training(root: Path) -> None:
    _edit_json(root, numTraining=5)


def _corrupt_gap_in_labels(root: Path) -> None:
    _edit_json(root, labels={"0": "background", "1": "Anterior", "3": "Posterior"})


def _corrupt_negative_label(root: Path) -> None:
    lab = np.zeros((8, 10, 9), np.int16)
    lab[2, 2, 2] = -1
    _write_label(root, lab)


def _corrupt_single_slice_case(root: Path) -> None:
    rng = np.random.default_rng(0)
    img = rng.normal(100, 10, (1, 10, 9)).astype(np.float32)
    lab = np.zeros((1, 10, 9), np.uint8)
    lab[0, 4:6, 4:6] = 1
    geom = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), IDENTITY)
    write_volume(img, geom, root / "imagesTr" / "case_001.nii.gz")
    write_volume(lab, geom, root / "labelsTr" / "case_001.nii.gz")


CORRUPTIONS = {
    "missing dataset.json": (_corrupt_missing_json, "dataset.json: dataset.json not found"),
    "invalid JSON": (_corrupt_invalid_json, "dataset.json: invalid JSON at line 1"),
    "missing file": (
        _corrupt_missing_file,
        "imagesTr/case_001.nii.gz: file not found — add it or remove it from dataset.json",
    ),
    "truncated file": (
        _corrupt_truncated,
        "imagesTr/case_001.nii.gz: cannot be read (truncated or corrupt image file)",
    ),
    "shape mismatch": (
        _corrupt_shape,
        "labelsTr/case_001.nii.gz: shape (8, 11, 9) differs from its image (8, 10, 9) — re-export the label on the image grid",
    ),
    "spacing mismatch": (
        _corrupt_spacing,
        "labelsTr/case_001.nii.gz: spacing (1.0, 1.0, 1.5) differs from its image (1.0, 1.0, 1.0)",
    ),
    "unknown label": (_corrupt_label_value, "labelsTr/case_001.nii.gz: holds label value(s) [7] not declared"),
    "NaN": (_corrupt_nan, "imagesTr/case_001.nii.gz: contains NaN in 1 voxel(s)"),
    "channel count": (_corrupt_channels, "has 1 channel(s), dataset.json declares 2"),
    "empty training": (_corrupt_empty, "dataset.json: the training list is empty"),
    "duplicate": (_corrupt_duplicate, "dataset.json: case case_000 is listed more than once"),
    "all background": (_corrupt_all_background, "every label map is all background"),
    "numTraining": (
        _corrupt_num_training,
        """dataset.json: numTraining is 5 but 'training' lists 3 case(s) — set "numTraining": 3""",
    ),
    "labels 0, 1, 3": (
        _corrupt_gap_in_labels,
        "dataset.json: labels must be consecutive integers 0..2 (nnU-Net requires it), found [0, 1, 3] — renumber "
        """3 → 2 in the label files and declare 'labels': {"0": "background", "1": "Anterior", "2": "Posterior"}""",
    ),
    "negative label": (
        _corrupt_negative_label,
        "labelsTr/case_001.nii.gz: holds negative label value(s) [-1] — a label map holds class indices 0..K",
    ),
    "2D case in a 3D dataset": (
        _corrupt_single_slice_case,
        "dataset.json: case case_001 is a single slice (1 x 10 x 9) but 2 case(s) are 3D volumes — a dataset is "
        "all 3D or all 2D; remove it from training or convert it",
    ),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_broken_dataset_gives_one_line_and_exit_2(name: str, tmp_path: Path, capsys):
    root = write_msd(tmp_path / "ds")
    corrupt, expected = CORRUPTIONS[name]
    corrupt(root)
    code, out, err = run_cli(["check", str(root)], capsys)
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert lines, err
    assert any(expected in line for line in lines), (expected, err)
    assert "Traceback" not in err
    # every error line names a file
    assert all(str(tmp_path) in line for line in lines)


def test_single_case_is_refused(tmp_path: Path):
    root = write_msd(tmp_path / "ds", n=1)
    result = check_dataset(read_dataset(root), show_progress=False)
    assert any("only 1 case" in p for p in result.problems)


def test_unlisted_file_is_a_warning(tmp_path: Path, capsys):
    root = write_msd(tmp_path / "ds")
    (root / "imagesTr" / "stray.nii.gz").write_bytes((root / "imagesTr" / "case_000.nii.gz").read_bytes())
    code, out, err = run_cli(["check", str(root)], capsys)
    assert code == 0
    assert "stray.nii.gz: not listed in dataset.json" in err


def test_debug_flag_shows_traceback(tmp_path: Path):
    sys.argv, old = ["alseg", "--debug", "check", str(tmp_path / "nope")], sys.argv
    try:
        with pytest.raises(AlsegError):
            main()
    finally:
        sys.argv = old


def test_gzip_garbage_is_a_user_error(tmp_path: Path):
    p = tmp_path / "x.nii.gz"
    p.write_bytes(gzip.compress(b"not a nifti at all" * 10))
    with pytest.raises(AlsegError, match="cannot be read"):
        read_volume(p)


def _nnunet_file_ending(root: Path) -> None:
    _edit_json(root, file_ending=".nii")


def _nnunet_missing_channel(root: Path) -> None:
    (root / "imagesTr" / "case_001_0001.nii.gz").unlink()


def _nnunet_misnumbered_channel(root: Path) -> None:
    (root / "imagesTr" / "case_001_0001.nii.gz").rename(root / "imagesTr" / "case_001_0002.nii.gz")


def _nnunet_num_training(root: Path) -> None:
    _edit_json(root, numTraining=4)


def _nnunet_gap_in_labels(root: Path) -> None:
    _edit_json(root, labels={"background": 0, "Anterior": 2, "Posterior": 3})


NNUNET_CORRUPTIONS = {
    "file_ending": (
        _nnunet_file_ending,
        "dataset.json: no file in imagesTr ends in file_ending '.nii', but 6 end in '.nii.gz' (e.g. "
        """case_000_0000.nii.gz) — set "file_ending": ".nii.gz" in dataset.json or rename the files""",
    ),
    "missing channel file": (
        _nnunet_missing_channel,
        "imagesTr: case case_001 lacks case_001_0001.nii.gz — dataset.json declares 2 channel(s), files "
        "case_001_0000..0001.nii.gz; add/rename the files or fix 'channel_names'",
    ),
    "misnumbered channel file": (_nnunet_misnumbered_channel, "imagesTr: case case_001 lacks case_001_0001.nii.gz"),
    "numTraining": (
        _nnunet_num_training,
        """dataset.json: numTraining is 4 but imagesTr holds 3 case(s) — set "numTraining": 3 or add the missing cases""",
    ),
    "labels 0, 2, 3": (
        _nnunet_gap_in_labels,
        """renumber 2 → 1, 3 → 2 in the label files and declare 'labels': {"background": 0, "Anterior": 1, "Posterior": 2}""",
    ),
}


@pytest.mark.parametrize("name", list(NNUNET_CORRUPTIONS))
def test_broken_nnunet_dataset_gives_one_line_with_its_fix(name: str, tmp_path: Path, capsys):
    root = write_nnunet(tmp_path / "ds")
    corrupt, expected = NNUNET_CORRUPTIONS[name]
    corrupt(root)
    code, out, err = run_cli(["check", str(root)], capsys)
    assert code == 2 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert any(expected in line for line in lines), (expected, err)
    assert all(str(tmp_path) in line for line in lines)


def test_fewer_than_five_cases_is_a_warning_naming_no_option(tmp_path: Path, capsys):
    root = write_msd(tmp_path / "ds", n=4)
    code, out, err = run_cli(["check", str(root)], capsys)
    assert code == 0
    line = next(ln for ln in err.splitlines() if "only 4 labelled cases" in ln)
    assert "need at least 5; add cases" in line and "--" not in line and "fewer folds" not in line


def test_missing_label_file_names_both_fixes(tmp_path: Path, capsys):
    """A listed label file that is missing: add it, or drop the case's 'label' key (images only); the second works."""
    root = write_msd(tmp_path / "ds", n=3)
    (root / "labelsTr" / "case_002.nii.gz").unlink()
    code, out, err = run_cli(["check", str(root)], capsys)
    assert code == 2
    assert (
        "labelsTr/case_002.nii.gz: file not found — add it, or drop this case's 'label' key from dataset.json "
        "to use case_002 unlabelled (images only)"
    ) in err
    meta = json.loads((root / "dataset.json").read_text())
    del meta["training"][2]["label"]
    (root / "dataset.json").write_text(json.dumps(meta))
    code, out, err = run_cli(["check", str(root)], capsys)
    assert code == 0, err
    assert "1 of 3 training cases have no label file" in err
