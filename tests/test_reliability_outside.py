"""Cases of the outside reliability battery (issue 27) that need more than one CLI call: outputs
that would overwrite inputs, seeds of any size, verified writes, degenerate options, extreme
intensities and geometry, processes that outlive their parent, messages naming the real thing.
The one-line refusals themselves are cases of ``tests/test_bad_inputs.py``."""

from __future__ import annotations

import json
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


# --- 2. seeds of any size ----------------------------------------------------------------------------
def test_round_seeds_are_the_old_ones_where_they_fit_and_32_bit_everywhere():
    from alseg.seeds import MAX_SEED, derived_seed, global_seed, round_seed

    for seed in range(4):
        for round_ in range(60):
            assert round_seed(seed, round_) == seed * 1000 + round_  # runs with small seeds are unchanged
        assert global_seed(seed) == seed
    for seed in (4_294_968, 20261207, 2**32, MAX_SEED):
        seeds = [round_seed(seed, r) for r in range(20)]
        assert all(0 <= s < 2**32 for s in seeds) and len(set(seeds)) == 20
        assert 0 <= global_seed(seed) < 2**32
    assert round_seed(4_294_967, 295) == 4_294_967_295  # the last one that fits stays as it was
    assert derived_seed(5, 1) != derived_seed(1, 5)


def _tiny_plan(tmp_path: Path) -> Path:
    from alseg.data.synthetic import generate_dataset
    from alseg.plans.planner import plan_dataset

    data = generate_dataset(tmp_path / "data", cases=5, test_cases=0)
    plan_dataset(data, tmp_path / "plan", show_progress=False)
    return tmp_path / "plan"


@pytest.fixture(scope="module")
def tiny_plan(tmp_path_factory) -> Path:
    return _tiny_plan(tmp_path_factory.mktemp("tiny"))


LOOP = ["--rounds", "1", "--budget", "4", "--initial", "8", "--epochs", "1", "--iters-per-epoch", "2"]
LOOP += ["--batch-size", "4", "--mc-passes", "2", "--workers", "0"]


def test_a_date_seed_runs_and_a_run_that_crashed_with_it_resumes(tiny_plan: Path, tmp_path: Path, capsys, monkeypatch):
    """``--seed 20261207`` once overflowed numpy's 32-bit seeds in round 0, after config.json was
    written: the stored run must resume now (here: the first fit fails as it once did)."""
    from alseg.active.loop import LoopDriver

    run = tmp_path / "run"
    real = LoopDriver.train_round

    def crash(self, round_):
        raise ValueError("Seed must be between 0 and 2**32 - 1")

    monkeypatch.setattr(LoopDriver, "train_round", crash)
    with pytest.raises(ValueError):
        run_cli(["loop", str(tiny_plan), "-o", str(run), "--seed", "20261207", *LOOP, "--debug"], capsys)
    assert (run / "config.json").is_file()
    monkeypatch.setattr(LoopDriver, "train_round", real)
    code, _, err = run_cli(["loop", str(tiny_plan), "-o", str(run), "--seed", "20261207", *LOOP, "--resume"], capsys)
    assert code == 0, err
    assert json.loads((run / "state.json").read_text())["finished"]
    big = tmp_path / "big"
    code, _, err = run_cli(["loop", str(tiny_plan), "-o", str(big), "--seed", str(2**63 - 1), *LOOP], capsys)
    assert code == 0, err
