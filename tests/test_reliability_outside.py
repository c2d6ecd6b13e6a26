"""Cases of the outside reliability battery (issue 27) that need more than one CLI call: outputs
that would overwrite inputs, seeds of any size, verified writes, degenerate options, extreme
intensities and geometry, processes that outlive their parent, messages naming the real thing.
The one-line refusals themselves are cases of ``tests/test_bad_inputs.py``."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from builders import run_cli

from alseg.errors import AlsegError


# --- 1. predict never overwrites inputs ------------------------------------------------------------
def test_predict_refuses_the_input_folder_and_overwrite_allows_a_plain_one(finished_run, tmp_path: Path, capsys):
    from alseg.predict import predict

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
    from alseg.seeds import MAX_SEED, derived_seed, global_seed, seed_for_round

    for seed in range(4):
        for round_ in range(60):
            assert seed_for_round(seed, round_) == seed * 1000 + round_  # runs with small seeds are unchanged
        assert global_seed(seed) == seed
    for seed in (4_294_968, 20261207, 2**32, MAX_SEED):
        seeds = [seed_for_round(seed, r) for r in range(20)]
        assert all(0 <= s < 2**32 for s in seeds) and len(set(seeds)) == 20
        assert 0 <= global_seed(seed) < 2**32
    assert seed_for_round(4_294_967, 295) == 4_294_967_295  # the last one that fits stays as it was
    assert derived_seed(5, 1) != derived_seed(1, 5)


def _tiny_plan(tmp_path: Path) -> Path:
    from alseg.dataset.synthetic import generate_dataset
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


# --- 3. every write verified ----------------------------------------------------------------------------
def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from alseg.cli import main; main()", *args]


def _limit_file_size(limit: int):
    def apply() -> None:
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def _one_line(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr
    return lines[0]


def _leftovers(folder: Path) -> list[Path]:
    from alseg.atomic import is_temp_file

    return [p for p in folder.rglob("*") if is_temp_file(p)]


def test_demo_data_at_a_file_size_limit_is_one_line_and_leaves_no_broken_file(tmp_path: Path):
    """SimpleITK reports success for a NIfTI file cut short by the limit; the read-back finds it."""
    out = tmp_path / "d"
    proc = subprocess.run(
        _cli("demo-data", str(out), "--cases", "2"), capture_output=True, text=True, preexec_fn=_limit_file_size(20_000)
    )
    line = _one_line(proc)
    assert "synth_000.nii.gz: cannot write (incomplete after writing)" in line and "ulimit -f" in line, line
    assert not list(out.rglob("*.nii.gz")) and not _leftovers(out)


def test_predict_at_a_file_size_limit_fails_cleanly_and_continue_repredicts_broken_outputs(finished_run, tmp_path):
    from alseg.dataset.io import read_volume

    data, _, run = finished_run
    out = tmp_path / "pred"
    args = ("predict", str(run), "-i", str(data / "imagesTs"), "-o", str(out), "--devices", "cpu")
    proc = subprocess.run(_cli(*args), capture_output=True, text=True, preexec_fn=_limit_file_size(300))
    line = _one_line(proc)
    assert "cannot write" in line and str(out) in line, line
    assert not list(out.glob("*.nii.gz")) and not _leftovers(out)
    # an output truncated by an older alseg (or damaged since) is predicted again by --continue
    proc = subprocess.run(_cli(*args), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    outputs = sorted(out.glob("*.nii.gz"))
    good = outputs[0].read_bytes()
    outputs[0].write_bytes(good[: len(good) // 2])
    before = outputs[1].stat().st_mtime_ns
    proc = subprocess.run(_cli(*args, "--continue"), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "wrote 1 label map" in proc.stdout
    read_volume(outputs[0])  # whole again
    assert outputs[1].stat().st_mtime_ns == before


@pytest.mark.parametrize("kind", ["text", "npy", "npz", "torch", "copy"])
def test_a_write_cut_short_without_an_error_is_caught(tmp_path: Path, monkeypatch, kind: str):
    """The verification of each atomic writer: a write that silently lost its tail fails, naming
    the destination, and the old file stays."""
    import alseg.atomic as atomic

    real = atomic._atomic

    def truncating(path, write, suffix="", verify=None):
        def cut(tmp: str) -> None:
            write(tmp)
            with open(tmp, "rb+") as f:
                f.truncate(max(Path(tmp).stat().st_size - 7, 0))

        real(path, cut, suffix, verify)

    target = tmp_path / "f"
    target.write_text("old")
    monkeypatch.setattr(atomic, "_atomic", truncating)
    write = {
        "text": lambda: atomic.atomic_write_text(target, "hello world"),
        "npy": lambda: atomic.atomic_save_npy(target, np.arange(100)),
        "npz": lambda: atomic.atomic_save_npz(target, a=np.arange(100)),
        "torch": lambda: atomic.atomic_torch_save(target, {"a": 1}),
        "copy": lambda: atomic.atomic_copy(Path(atomic.__file__), target),
    }[kind]
    with pytest.raises(AlsegError, match=r"f: cannot write \(incomplete after writing\)"):
        write()
    assert target.read_text() == "old" and not _leftovers(tmp_path)


def test_json_never_holds_nan_or_infinity(tmp_path: Path):
    from alseg.atomic import atomic_write_json

    for bad in (float("inf"), float("nan"), [1.0, float("-inf")]):
        with pytest.raises(AlsegError, match="non-finite"):
            atomic_write_json(tmp_path / "x.json", {"v": bad})
    assert not (tmp_path / "x.json").exists() and not _leftovers(tmp_path)


# --- 4. degenerate options and diverging training ------------------------------------------------------
def test_every_strategy_option_model_refuses_inf_and_nan():
    from pydantic import ValidationError

    from alseg.strategies import available, get_strategy

    checked = 0
    for name in available():
        model = type(get_strategy(name)).Options
        floats = [k for k, f in model.model_fields.items() if f.annotation in (float, float | None)]
        checked += len(floats)
        for key in floats:
            for bad in ("inf", "nan", "-inf"):
                with pytest.raises(ValidationError):
                    model(**{key: bad})
    assert checked >= 4  # eta and epsilon of usimc and usimf at least


def test_mc_strategies_say_how_many_passes_they_need():
    from alseg.strategies import get_strategy

    for name in ("bald", "meanstd", "usimc", "usimf"):
        assert type(get_strategy(name)).mc_passes_needed() == 2, name
    for name in ("random", "entropy", "coreset", "badge"):
        assert type(get_strategy(name)).mc_passes_needed() == 1, name


def test_training_that_diverges_stops_with_one_line_and_no_checkpoint(finished_run, tmp_path: Path, capsys):
    _, plan, _ = finished_run
    out = tmp_path / "t"
    args = ["train", str(plan), "-o", str(out), "--epochs", "2", "--iters-per-epoch", "3", "--batch-size", "2"]
    code, _, err = run_cli([*args, "--lr", "1e30", "--workers", "0", "--devices", "1"], capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert "training diverged at step" in lines[0] and "--lr" in lines[0]
    assert not (out / "model.ckpt").exists()


def test_a_round_whose_scores_are_all_nan_stops_naming_the_strategy(tiny_plan: Path, tmp_path: Path, monkeypatch):
    import alseg.active.loop as loop
    import alseg.active.selection as selection
    from alseg.active.settings import LoopSettings
    from alseg.strategies import Selection

    def nan_batch(strategy, ctx, uncertainty_seed):
        idx = ctx.unlabelled[: ctx.budget]
        return Selection(idx, [float("nan")] * len(idx))

    monkeypatch.setattr(selection, "select_batch", nan_batch)
    settings = LoopSettings(
        strategy="bald", rounds=1, budget=4, initial=8, epochs=1, iters_per_epoch=1, batch_size=4, mc_passes=2
    )
    driver = loop.LoopDriver(tiny_plan, tmp_path / "run", settings, workers=0, show_progress=False)
    with pytest.raises(AlsegError, match="every score of strategy 'bald' is NaN or infinite"):
        driver.run_all()
    assert not list((tmp_path / "run" / "rounds").glob("round_001*.json"))


# --- 5. intensities and geometry ---------------------------------------------------------------------
def _rewrite_nifti(path: Path, *, pixdim=None, affine=None, voxel=None) -> None:
    import nibabel as nib

    img = nib.load(str(path))
    data = np.asarray(img.dataobj).copy()
    if voxel is not None:
        data.flat[7] = voxel
    out = nib.Nifti1Image(data, affine if affine is not None else img.affine)
    if pixdim is not None:
        out.header["pixdim"][1:4] = pixdim
    nib.save(out, str(path))


GEOMETRY_DAMAGE = {
    "zero spacing": (dict(pixdim=(1.0, 0.0, 1.0)), "has voxel spacing (1.0, 0.0, 1.0)"),
    "NaN spacing": (dict(pixdim=(1.0, 1.0, float("nan"))), "has voxel spacing (1.0, 1.0, nan)"),
    "negative spacing": (dict(pixdim=(-1.0, 1.0, 1.0)), "every spacing must be a positive, finite number"),
    "singular affine": (
        dict(affine=np.array([[1.0, 1.0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])),
        "has a singular affine",
    ),
    "sheared affine": (
        dict(affine=np.array([[1.0, 0.4, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])),
        "has a sheared (non-orthogonal) affine: its axes are 21.8° off a right angle",
    ),
    "a voxel of 1e30": (dict(voxel=1e30), "holds 1 voxel(s) of absurd intensity (beyond ±1e+10, e.g. 1e+30)"),
    "a voxel of -inf": (dict(voxel=-np.inf), "contains Inf in 1 voxel(s)"),
}


@pytest.mark.parametrize("name", list(GEOMETRY_DAMAGE))
def test_check_names_the_real_cause_per_file(name: str, tmp_path: Path, capsys):
    from builders import write_msd

    root = write_msd(tmp_path / "ds")
    damage, expected = GEOMETRY_DAMAGE[name]
    _rewrite_nifti(root / "imagesTr" / "case_001.nii.gz", **damage)
    code, _, err = run_cli(["check", str(root)], capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and "Traceback" not in err, err
    assert all(ln.startswith(("error: ", "warning: ")) for ln in lines), err  # no library lines between alseg's
    hit = [ln for ln in lines if expected in ln]
    assert hit and "imagesTr/case_001.nii.gz" in hit[0], (expected, err)


def test_an_extreme_voxel_no_longer_overflows_the_statistics():
    """float32 statistics overflowed (std = inf) and normalised every voxel to -0.0; with the
    float64 fallback the statistics are finite (the outlier still dominates the z-score, which
    is why ``check`` and ``plan`` refuse such a file), and ordinary data keep their float32
    numbers exactly."""
    from alseg.data.normalize import normalize
    from alseg.plans.fingerprint import intensity_stats
    from alseg.plans.models import Normalization

    rng = np.random.default_rng(0)
    x = rng.normal(100, 10, (1, 4, 8, 8)).astype(np.float32)
    plain = x.copy()
    norm = [Normalization(scheme="zscore", use_mask_for_norm=False)]
    expected = (plain[0] - plain[0].mean()) / plain[0].std()
    assert np.array_equal(normalize(plain, np.ones(x.shape[1:], bool), norm)[0], expected.astype(np.float32))
    x[0, 0, 0, 0] = 1e30
    out = normalize(x.copy(), np.ones(x.shape[1:], bool), norm)[0]
    assert np.isfinite(out).all() and out[0, 0, 0] > 10 and not (out == 0).all()
    stats = intensity_stats(x.ravel())
    assert np.isfinite(stats.std) and stats.max == pytest.approx(1e30)


def test_predict_refuses_an_input_with_a_nan_voxel(finished_run, tmp_path: Path, capsys):
    data, _, run = finished_run
    scan = tmp_path / "in" / "scan.nii.gz"
    scan.parent.mkdir()
    shutil.copy(sorted((data / "imagesTs").glob("*.nii.gz"))[0], scan)
    _rewrite_nifti(scan, voxel=np.nan)
    code, _, err = run_cli(["predict", str(run), "-i", str(scan), "-o", str(tmp_path / "out")], capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1, err
    assert "scan.nii.gz: contains NaN in 1 voxel(s)" in lines[0] and "predict refuses it" in lines[0]
    assert not list((tmp_path / "out").glob("*.nii.gz"))


# --- 6. processes ------------------------------------------------------------------------------------
POOL_SCRIPT = """
import os, sys, time
from alseg.dataset.workers import make_executor
from concurrent.futures import ProcessPoolExecutor
from alseg.dataset.workers import worker_pool_args

def main():
    spawn = make_executor(2)
    fork = ProcessPoolExecutor(1, **worker_pool_args())  # as alseg check makes its pool
    futures = [spawn.submit(time.sleep, 60) for _ in range(2)] + [fork.submit(time.sleep, 60)]
    time.sleep(3)
    pids = [p.pid for pool in (spawn, fork) for p in pool._processes.values()]
    print(" ".join(map(str, pids)), flush=True)
    time.sleep(60)

if __name__ == "__main__":
    main()
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"  # a zombie is dead (waiting for its reaper)
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_pool_workers_die_with_a_killed_parent(tmp_path: Path):
    """``kill -9`` of the process that made a pool (fingerprint, preprocessing, check) leaves no
    worker behind: they used to wait on their task queue for good, each holding its memory."""
    script = tmp_path / "pool.py"
    script.write_text(POOL_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 3 and all(_alive(p) for p in pids)
    finally:
        proc.kill()
        proc.wait()
    deadline = time.time() + 30  # an upper bound only: loaded cores may delay the workers' watch
    while any(_alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.2)
    assert not any(_alive(p) for p in pids)


def test_a_second_compare_on_a_running_experiment_is_refused_at_once(tiny_plan: Path, tmp_path: Path, capsys):
    import os

    from alseg.active.rundir import RunLock

    exp = tmp_path / "exp"
    with RunLock(exp / ".lock"):  # as a running 'alseg compare' holds it
        t0 = time.time()
        code, _, err = run_cli(["compare", str(tiny_plan), "-o", str(exp), "--strategies", "random"], capsys)
    assert code == 2 and f"is in use by another alseg process (pid {os.getpid()})" in err and str(exp) in err
    assert time.time() - t0 < 10 and not (exp / "plan").exists()  # before any planning


# --- 7. messages that name the real thing ---------------------------------------------------------------
def test_predict_speaks_of_the_models_channels(finished_run, tmp_path: Path, capsys):
    import nibabel as nib

    data, _, run = finished_run
    image = nib.load(str(sorted((data / "imagesTs").glob("*.nii.gz"))[0]))
    two = np.stack([np.asarray(image.dataobj)] * 2, axis=-1)  # two channels in one file
    nib.save(nib.Nifti1Image(two, image.affine), str(tmp_path / "scan.nii.gz"))
    code, _, err = run_cli(
        ["predict", str(run), "-i", str(tmp_path / "scan.nii.gz"), "-o", str(tmp_path / "o")], capsys
    )
    assert code == 2 and "the model takes 1" in err and "dataset.json" not in err, err


def test_the_files_oracle_names_each_missing_case_and_a_misnamed_label(tiny_plan: Path, tmp_path: Path, capsys):
    run = tmp_path / "run"
    args = ["loop", str(tiny_plan), "-o", str(run), "--oracle", "files", *LOOP]
    code, out, err = run_cli(args, capsys)
    assert code == 3, err
    cases = sorted(p.name for p in (run / "annotate").glob("round_000/cases/*"))
    assert cases and "no label file for case " + ", ".join(cases) in out, out
    first = run / "annotate" / "round_000" / "cases" / cases[0]
    shutil.copy(next(first.glob("image*")), first / "seg.nii.gz")  # annotated, saved under another name
    code, out, err = run_cli([*args, "--resume"], capsys)
    assert code == 2 and f"{first / 'seg.nii.gz'}: is not a name alseg reads" in err and "label.nii.gz" in err, err
    assert cases[0] not in out.split("no label file for case")[-1], out


def test_status_names_the_damaged_file_of_a_cell(tmp_path: Path, capsys):
    cell = tmp_path / "exp" / "bald" / "seed_0"
    cell.mkdir(parents=True)
    (cell / "config.json").write_text('{"rounds": 2}')
    (cell / "state.json").write_text('{"round": 1, "fin')  # cut short
    code, out, err = run_cli(["status", str(tmp_path / "exp")], capsys)
    assert code == 0, err
    assert "damaged" in out and "state.json" in out, out


def test_a_compare_cell_stops_when_compare_is_killed():
    """``alseg compare`` (local) names itself in ALSEG_DIE_WITH for its cells; a cell's
    ``alseg loop`` is a grandchild (through submitit's job process), so it watches that pid."""
    import os

    from alseg.dataset.workers import DIE_WITH_ENV

    starter = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    env = {**os.environ, DIE_WITH_ENV: str(starter.pid)}
    code = "from alseg.dataset.workers import watch_from_env; import time; watch_from_env(); time.sleep(60)"
    cell = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)
        assert cell.poll() is None  # runs while its starter runs
        starter.kill()  # left a zombie until waited for: it counts as gone
        assert cell.wait(timeout=30) == 1  # an upper bound only (loaded cores)
        assert f"(pid {starter.pid}) is gone" in cell.stderr.read()
    finally:
        for p in (starter, cell):
            if p.poll() is None:
                p.kill()
        starter.wait()


def test_a_final_checkpoint_cut_short_is_not_renamed_into_place(tmp_path: Path):
    from types import SimpleNamespace

    from alseg.model.callbacks import FinalCheckpoint

    def save_checkpoint(path, weights_only=False):
        import torch

        torch.save({"w": torch.ones(100)}, path)
        with open(path, "rb+") as f:
            f.truncate(Path(path).stat().st_size // 2)

    trainer = SimpleNamespace(save_checkpoint=save_checkpoint, is_global_zero=True)
    with pytest.raises(AlsegError, match=r"model.ckpt: cannot write \(incomplete after writing\)"):
        FinalCheckpoint(tmp_path / "model.ckpt").on_fit_end(trainer, None)
    assert not list(tmp_path.iterdir())


def test_a_label_file_deleted_after_acceptance_is_reported_not_asked_again(tiny_plan: Path, tmp_path: Path, capsys):
    run = tmp_path / "run"
    args = ["loop", str(tiny_plan), "-o", str(run), "--oracle", "files", *LOOP]
    assert run_cli(args, capsys)[0] == 3
    cases = run / "annotate" / "round_000" / "cases"
    first = sorted(cases.iterdir())[0]
    shutil.copy(tiny_plan.parent / "data" / "labelsTr" / f"{first.name}.nii.gz", first / "label.nii.gz")
    code, out, err = run_cli([*args, "--resume"], capsys)
    assert code == 3 and f"no label file for case {first.name}" not in out, (out, err)
    (first / "label.nii.gz").unlink()  # deleted after it was accepted
    code, out, err = run_cli([*args, "--resume"], capsys)
    assert code == 2, (out, err)
    assert f"the label file of case {first.name} was accepted earlier in this round but is gone now" in err, err
    assert f"case {first.name}" not in out.split("no label file for")[-1], out
