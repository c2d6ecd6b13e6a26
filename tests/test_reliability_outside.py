"""Cases of the outside reliability battery (issue 27) that need more than one CLI call: outputs
that would overwrite inputs, seeds of any size, verified writes, degenerate options, extreme
intensities and geometry, processes that outlive their parent, messages naming the real thing.
The one-line refusals themselves are cases of ``tests/test_bad_inputs.py``."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from builders import run_cli

from alseg.errors import AlsegError


# --- 1. predict never overwrites inputs ------------------------------------------------------------
def test_predict_refuses_the_input_folder_and_overwrite_allows_a_plain_one(finished_run, tmp_path: Path, capsys):
    from alseg.model.predict import predict

    data, _, run = finished_run
    folder = tmp_path / "scans"
    folder.mkdir()
    image = sorted((data / "imagesTs").glob("*.nii.gz"))[0]
    shutil.copy(image, folder / "scan.nii.gz")
    before = (folder / "scan.nii.gz").read_bytes()
    with pytest.raises(AlsegError, match="holds input image"):
        predict(run, [folder / "scan.nii.gz"], folder, show_progress=False)
    assert (folder / "scan.nii.gz").read_bytes() == before
    code, _, err = run_cli(["predict", str(run), "-i", str(folder), "-o", str(folder)], capsys)
    assert code == 2 and "--overwrite" in err
    assert (folder / "scan.nii.gz").read_bytes() == before
    # the label map is written beside a differently named input when the user says so
    shutil.move(folder / "scan.nii.gz", folder / "scan_0000.nii.gz")
    code, out, err = run_cli(["predict", str(run), "-i", str(folder), "-o", str(folder), "--overwrite"], capsys)
    assert code == 0, err
    assert (folder / "scan.nii.gz").is_file() and (folder / "scan_0000.nii.gz").read_bytes() == before
