"""``alseg compare`` through submitit: the local executor for real, the SLURM job array up to its
sbatch script, requeue on pre-emption, ``alseg status``, and bad executor options."""

from __future__ import annotations

import csv
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from builders import run_cli

from alseg.active.experiments.compare import ExecutorOptions, grid_status, run_compare
from alseg.active.experiments.jobs import REQUEUED_NOTE, CellFailed, CellJob
from alseg.active.rundir import RunDir, RunState
from alseg.active.settings import LoopSettings
from alseg.cli import main

TINY = dict(rounds=1, budget=4, initial=8, epochs=1, iters_per_epoch=2, batch_size=4, mc_passes=2)
GRID = ("random", "entropy")
KILLED = "entropy"  # the cell killed mid-run (its scoring round takes longest)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from alseg.cli import main; main()", *args]


def _compare_args(plan: Path, exp: Path) -> list[str]:
    tiny = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    grid = ["--strategies", ",".join(GRID), "--seeds", "1", "--jobs", "2", "--workers", "0", "--no-full"]
    return _cli("compare", str(plan), "-o", str(exp), *grid, *tiny)


def _rows(run: Path) -> list[dict]:
    with (run / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def _dice(run: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k.startswith("dice_")} for row in _rows(run)]


def _labelled(run: Path) -> list[str]:
    return sorted(RunDir(run).load_state().labelled)


@pytest.fixture(scope="module")
def plan_dir(make_synthetic_plan) -> Path:
    return make_synthetic_plan(cases=5)[1]


@pytest.fixture(scope="module")
def grid(plan_dir: Path, tmp_path_factory) -> dict:
    """A 2 x 1 grid run locally with one cell killed mid-run, then re-run; beside it the same cells
    run directly with 'alseg loop --settings' (started first, in parallel)."""
    root = tmp_path_factory.mktemp("grid")
    exp, direct = root / "exp", root / "direct"
    direct_procs = []
    for s in GRID:
        settings = direct / f"{s}.settings.json"
        settings.parent.mkdir(parents=True, exist_ok=True)
        settings.write_text(LoopSettings(strategy=s, seed=0, **TINY).model_dump_json())
        cmd = _cli("loop", str(plan_dir), "-o", str(direct / s), "--settings", str(settings), "--workers", "0")
        direct_procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))

    first = subprocess.Popen(_compare_args(plan_dir, exp), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = exp / KILLED / "seed_0"
    deadline = time.time() + 240
    while time.time() < deadline:  # round 0 written: kill the loop during round 1
        if (killed / "metrics.csv").is_file() and len(_rows(killed)) >= 1:
            os.kill(int((killed / ".lock").read_text().strip()), signal.SIGKILL)
            break
        time.sleep(0.05)
    out, err = first.communicate(timeout=240)
    status_between = grid_status(exp)
    second = subprocess.run(_compare_args(plan_dir, exp), capture_output=True, text=True, timeout=240)
    for p in direct_procs:
        assert p.wait(timeout=240) == 0, p.stderr.read()
    return dict(exp=exp, direct=direct, first=(first.returncode, out, err), status=status_between, second=second)


def test_a_killed_cell_fails_in_one_line_and_the_rerun_resumes_it(grid: dict):
    code, out, err = grid["first"]
    assert code == 2, (out, err)
    errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]  # the progress lines go to stderr too
    assert len(errors) == 1 and errors[0].startswith("error: 1 run(s) failed; first: "), err
    assert f"{KILLED}/seed_0: failed (exit -9)" in errors[0] and "seed_0.log" in errors[0]
    assert err.strip().splitlines()[-1] == errors[0]
    second = grid["second"]
    assert second.returncode == 0, second.stderr
    assert "2 runs, 1 already finished" in second.stderr
    for s in GRID:
        assert RunDir(grid["exp"] / s / "seed_0").finished()
    assert (grid["exp"] / ".submitit").is_dir()


def test_grid_cells_equal_the_same_cells_run_directly(grid: dict):
    for s in GRID:
        cell, direct = grid["exp"] / s / "seed_0", grid["direct"] / s
        assert len(_rows(cell)) == TINY["rounds"] + 1
        assert _dice(cell) == _dice(direct), s
        assert _labelled(cell) == _labelled(direct), s  # the killed one too: resumed == uninterrupted


def test_status_of_a_partly_finished_grid(grid: dict, capsys):
    by = {r.strategy: r for r in grid["status"]}
    done, broken = by[next(s for s in GRID if s != KILLED)], by[KILLED]
    assert (done.state, done.rounds_done, done.rounds_total) == ("finished", 2, 2)
    assert (broken.state, broken.rounds_done, broken.rounds_total) == ("failed", 1, 2)
    assert broken.last_line == "alseg compare: 'alseg loop' was killed (signal 9)"  # the last line of its log
    sys_argv = sys.argv
    sys.argv = ["alseg", "status", str(grid["exp"])]
    try:
        main()
    finally:
        sys.argv = sys_argv
    text = capsys.readouterr().out
    assert "2 finished" in text and "2/2" in text


def test_status_names_the_shared_round_0_and_a_forked_cell_not_yet_launched_waits(grid: dict, tmp_path: Path, capsys):
    """With --shared-initial-round every cell of a seed is forked from EXP/.round0 before it is
    launched: such a cell has round 0 but no log, and waits (it used to read as failed)."""
    import shutil

    exp = tmp_path / "exp"
    shutil.copytree(grid["exp"], exp)
    shutil.copytree(exp / "random" / "seed_0", exp / ".round0" / "seed_0")
    RunDir(exp / ".round0" / "seed_0").fork(exp / "bald" / "seed_0", strategy="bald", rounds=3)
    by = {(r.strategy, r.seed): r for r in grid_status(exp)}
    assert by[("(shared round 0)", 0)].state == "finished" and (".round0", 0) not in by
    forked = by[("bald", 0)]
    assert (forked.state, forked.rounds_done, forked.rounds_total, forked.last_line) == ("waiting", 2, 4, "")
    (exp / "bald" / "seed_0.log").write_text("")  # launched, still importing: not a failure
    assert {(r.strategy, r.state) for r in grid_status(exp)} >= {("bald", "waiting")}
    (exp / "bald" / "seed_0.log").write_text("alseg loop: error: something broke\n")  # launched, then stopped
    assert {(r.strategy, r.state) for r in grid_status(exp)} >= {("bald", "failed")}
    (exp / "bald" / "seed_0.log").unlink()
    sys_argv = sys.argv
    sys.argv = ["alseg", "status", str(exp)]
    try:
        main()
    finally:
        sys.argv = sys_argv
    assert (
        capsys.readouterr().out.strip().splitlines()[-1] == "cells: 2 finished, 1 waiting; shared round 0: 1 finished"
    )


def _fake_slurm(tmp_path: Path, monkeypatch) -> Path:
    """'srun' and 'sbatch' that only keep the script submitit writes (no cluster here)."""
    bin_dir, kept = tmp_path / "bin", tmp_path / "sbatch_scripts"
    bin_dir.mkdir()
    kept.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sbatch").write_text(
        f'#!/bin/sh\nn=$(ls {kept} | wc -l)\ncp "$1" {kept}/script_$n.sh\necho "Submitted batch job $((4200 + n))"\n'
    )
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return kept


def test_slurm_submits_one_array_task_per_unfinished_cell(plan_dir: Path, tmp_path: Path, monkeypatch):
    kept = _fake_slurm(tmp_path, monkeypatch)
    exp = tmp_path / "exp"
    RunDir(exp / "random" / "seed_0").save_state(RunState(round=1, finished=True))  # one finished cell of 4
    options = ExecutorOptions(
        executor="slurm",
        gpus_per_job=1,
        partition="gpu",
        cpus_per_job=6,
        time_min=90,
        mem_gb=32,
        slurm_options={"account": "proj42"},
    )
    settings = LoopSettings(**TINY)
    run_compare(plan_dir, exp, ["random", "entropy"], 2, settings, jobs=2, executor=options, show_progress=False)
    scripts = sorted(kept.iterdir())
    assert len(scripts) == 2  # the cells' array, then the full-data reference
    array = scripts[0].read_text()
    for flag in [
        "#SBATCH --array=0-2%2",  # 3 unfinished cells, 2 at a time
        "#SBATCH --gpus-per-node=1",
        "#SBATCH --cpus-per-task=6",
        "#SBATCH --time=90",
        "#SBATCH --mem=32GB",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=proj42",
        "#SBATCH --signal=USR2@90",  # submitit's warning before the time limit: checkpoint + requeue
    ]:
        assert flag in array, (flag, array)
    assert "--array" not in scripts[1].read_text()
    assert (exp / ".submitit").is_dir()
    status = {(r.strategy, r.seed): r.state for r in grid_status(exp)}
    assert status[("random", 0)] == "finished" and status[("entropy", 1)] == "waiting"


def test_a_requeued_cell_resumes_with_the_same_command(tmp_path: Path):
    log = tmp_path / "cell.log"
    cmd = [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)", "--resume"]
    job = CellJob(cmd, log)
    failed: list[BaseException] = []

    def call() -> None:
        try:
            job()
        except BaseException as e:  # noqa: BLE001 (the thread hands it to the test)
            failed.append(e)

    t = threading.Thread(target=call)
    t.start()
    while "started" not in (log.read_text() if log.is_file() else ""):
        time.sleep(0.05)
    again = job.checkpoint()  # what submitit calls on pre-emption or at the time limit
    t.join(timeout=30)
    assert isinstance(failed[0], CellFailed) and str(failed[0]) == f"exit {-signal.SIGTERM}"
    assert isinstance(again.function, CellJob) and again.function.command == cmd and "--resume" in cmd
    assert log.read_text().strip().splitlines()[-1] == REQUEUED_NOTE
    assert pickle.loads(pickle.dumps(again.function)).command == cmd


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["--executor", "kubernetes"], "--executor 'kubernetes' is not one of: local, slurm"),
        (["--executor", "slurm", "--gpus-per-job", "-1"], "--gpus-per-job must be at least 0, got -1"),
        (["--executor", "slurm", "--slurm-option", "account"], "--slurm-option 'account' is not key=value"),
        (["--executor", "slurm", "--slurm-option", "=x"], "--slurm-option '=x' is not key=value"),
        (["--executor", "slurm", "--time-min", "0"], "--time-min must be at least 1, got 0"),
        (["--slurm-partition", "gpu"], "--slurm-partition is for --executor slurm"),
        (["--executor", "slurm"], "--executor slurm: no 'srun' on this machine"),
    ],
)
def test_bad_executor_options_are_one_line_before_any_work(args, expect, tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun: the last case
    exp = tmp_path / "exp"
    code, _, err = run_cli(["compare", str(tmp_path / "no_plan"), "-o", str(exp), *args], capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert expect in lines[0], lines[0]
    assert not exp.exists()  # nothing was started


def test_status_of_a_folder_without_a_grid(tmp_path: Path, capsys):
    code, _, err = run_cli(["status", str(tmp_path)], capsys)
    assert code == 2 and "holds no 'alseg compare' grid" in err and len(err.strip().splitlines()) == 1
