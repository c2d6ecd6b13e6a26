"""Reliability of a run directory: one process per run, resume verifies what it relies on,
OS errors are one line, exit codes scripts can use.

Each damage a user (or a crash, or a full disk) can do to a finished tiny run is applied to a
copy of it; the resume must refuse with one line naming the file — never a traceback, never a
silent drop.
"""

from __future__ import annotations

import errno
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from alseg.active.loop import LoopDriver
from alseg.active.rundir import RunDir
from alseg.active.settings import LoopSettings
from alseg.atomic import atomic_write_text
from alseg.errors import AlsegError

TINY = dict(rounds=1, budget=4, initial=8, epochs=1, iters_per_epoch=2, batch_size=4, mc_passes=2, seed=3)


def _driver(target: Path, run: Path, resume: bool = False, **values) -> LoopDriver:
    settings = LoopSettings(**{**TINY, **values})
    return LoopDriver(target, run, settings, resume=resume, workers=0, show_progress=False, given=set(values))


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from alseg.cli import main; main()", *args]


def _loop_cmd(target: Path, run: Path, *extra: str) -> list[str]:
    opts = {"rounds": 1, "budget": 4, "initial": 8, "epochs": 1, "iters-per-epoch": 2, "batch-size": 4, "seed": 3}
    flat = [x for k, v in opts.items() for x in (f"--{k}", str(v))]
    return _cli("loop", str(target), "-o", str(run), "--workers", "0", *flat, *extra)


@pytest.fixture(scope="module")
def data(make_synthetic_plan) -> tuple[Path, Path]:
    """(dataset, plan folder) of a tiny synthetic dataset."""
    return make_synthetic_plan(cases=5)


@pytest.fixture(scope="module")
def finished(data, tmp_path_factory) -> Path:
    """A finished tiny run (rounds 0 and 1) on the plan folder; tests damage copies of it."""
    run = tmp_path_factory.mktemp("finished") / "run"
    _driver(data[1], run).run_all()
    return run


@pytest.fixture
def copy(finished: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(finished, dst)
    return dst


def _one_line(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr
    return lines[0]


# --------------------------------------------------------------------------- one process per run


def test_second_process_is_refused_naming_the_holder_and_a_dead_holder_blocks_nothing(data, tmp_path: Path):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from alseg.active.rundir import RunDir; lock = RunDir({str(run)!r}).lock(); print('held', flush=True); import time; time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        proc = subprocess.run(_loop_cmd(data[1], run), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2
        line = _one_line(proc)
        assert f"is in use by another alseg process (pid {holder.pid})" in line and str(run) in line
        assert not (run / "config.json").exists()  # refused before any work
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the OS released the dead holder's lock: the run can start (the lock file stays, harmlessly)
    RunDir(run).lock().release()


def test_two_loops_on_one_run_directory(data, tmp_path: Path):
    """A real loop holds its run from start to end; a second loop (--resume) is refused."""
    run = tmp_path / "run"
    first = subprocess.Popen(
        _loop_cmd(data[1], run, "--iters-per-epoch", "400"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not (run / "config.json").is_file() and first.poll() is None:
            time.sleep(0.1)
        assert first.poll() is None, first.stderr.read()
        second = subprocess.run(
            _loop_cmd(data[1], run, "--resume", "--iters-per-epoch", "400"), capture_output=True, text=True
        )
        assert first.poll() is None, "the first loop ended before the second tried: make it longer"
        assert second.returncode == 2
        assert f"pid {first.pid}" in _one_line(second)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()


# --------------------------------------------------------------------------- resume checks the run


def test_an_intact_run_resumes_and_stray_temp_files_are_removed(data, copy: Path):
    strays = [copy / ".state.json.abcd_123.tmp", copy / "labels" / ".x.npy.zz9z9z9z.tmp", copy / ".tmp-ab12cd34.nii.gz"]
    for p in strays:
        p.write_text("half a write")
    keep = copy / "notes.tmp"  # a user's file that merely looks temporary is kept
    keep.write_text("mine")
    driver = _driver(data[1], copy, resume=True)
    assert driver.state.finished and driver.state.round == 1
    assert not any(p.exists() for p in strays) and keep.is_file()


def _refused(target: Path, run: Path) -> str:
    with pytest.raises(AlsegError) as e:
        _driver(target, run, resume=True)
    return str(e.value)


def test_deleted_label_file_is_refused_naming_it(data, copy: Path):
    victim = sorted((copy / "labels").glob("*.npy"))[0]
    victim.unlink()
    msg = _refused(data[1], copy)
    assert msg.startswith(f"{victim}: missing, but state.json relies on it (the annotations of ")
    assert "restore it from a backup" in msg


def test_changed_label_file_is_refused_naming_it(data, copy: Path):
    victim = sorted((copy / "labels").glob("*.npy"))[0]
    arr = np.load(victim)
    arr.flat[0] = 1 if arr.flat[0] != 1 else 2
    np.save(victim, arr)  # same size, other content: the hash sees it
    assert _refused(data[1], copy).startswith(f"{victim}: damaged: its size or hash differs")


def test_truncated_metrics_are_refused_naming_the_lost_round(data, copy: Path):
    metrics = copy / "metrics.csv"
    metrics.write_text("".join(metrics.read_text().splitlines(keepends=True)[:-1]))
    msg = _refused(data[1], copy)
    assert msg.startswith(f"{metrics}: has no row for finished round(s) 1 (state.json says 1 finished)")


@pytest.mark.parametrize("damage", ["delete", "garbage", "other round"])
def test_damaged_round_record_is_refused_naming_it(data, copy: Path, damage: str):
    record = RunDir(copy).round_path(1)
    if damage == "delete":
        record.unlink()
    elif damage == "garbage":
        record.write_text('{"round": 1, "sel')
    else:
        record.write_text(json.dumps({"round": 0, "selected": []}))
    msg = _refused(data[1], copy)
    assert msg.startswith(
        f"{record}: {'missing' if damage == 'delete' else 'corrupt'} (the selection of finished round 1)"
    )


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_damaged_last_checkpoint_is_refused_naming_it(data, copy: Path, damage: str):
    ckpt = RunDir(copy).checkpoint_path(1)
    if damage == "delete":
        ckpt.unlink()
    else:
        ckpt.write_bytes(ckpt.read_bytes()[:100])
    msg = _refused(data[1], copy)
    assert msg.startswith(f"{ckpt}: {'missing' if damage == 'delete' else 'damaged'}")


def test_checkpoint_without_a_recorded_hash_is_still_checked_when_loaded(data, copy: Path):
    """A run written before hashes were recorded: a truncated checkpoint is one line when loaded."""
    state = json.loads((copy / "state.json").read_text())
    state.pop("checksums")
    (copy / "state.json").write_text(json.dumps(state))
    ckpt = RunDir(copy).checkpoint_path(1)
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    driver = _driver(data[1], copy, resume=True, rounds=2)
    with pytest.raises(AlsegError, match="cannot be loaded \\(truncated or not this run's model\\)"):
        driver.load_module(1)


def test_a_resume_with_another_loader_worker_count_warns_and_records_it(data, copy: Path, capsys):
    """Each data-loader process draws its own seeded patches: a resume that changes their number
    cannot continue the run exactly, and says so (it still runs: another machine may need it)."""
    run = RunDir(copy)
    assert [run.load_round(k).loader_workers for k in (0, 1)] == [0, 0]  # the fit's count, recorded
    _driver(data[1], copy, resume=True, rounds=2)  # the same count: nothing to say
    assert "warning" not in capsys.readouterr().err
    settings = LoopSettings(**{**TINY, "rounds": 2})
    driver = LoopDriver(data[1], copy, settings, resume=True, workers=1, show_progress=False, given={"rounds"})
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert lines == [
        f"warning: {copy}: round(s) 0, 1 trained with 0 data-loader worker(s) and this process uses 1: the rounds "
        "trained now draw other random patches than an uninterrupted run would (resume with --workers 0 to "
        "continue it exactly)"
    ]
    driver.run_all()
    assert [run.load_round(k).loader_workers for k in (0, 1, 2)] == [0, 0, 1]


def test_dataset_changed_in_place_is_refused_before_planning(data, tmp_path: Path):
    dataset = tmp_path / "data"
    shutil.copytree(data[0], dataset)
    run = tmp_path / "run"
    _driver(dataset, run)  # plans into RUN/plan and writes config.json; no round yet
    assert json.loads((run / "config.json").read_text())["dataset_hash"]
    label = sorted((dataset / "labelsTr").glob("*.nii.gz"))[0]
    label.write_bytes(label.read_bytes() + b"\0")  # one file changed in place, same path
    msg = _refused(dataset, run)
    assert msg.startswith(
        f"{run / 'config.json'}: was made from other data: {dataset}'s dataset.json or image files changed"
    )


# --------------------------------------------------------------------------- OS errors


def test_output_path_that_is_a_file_is_one_line(data, tmp_path: Path):
    target = tmp_path / "file"
    target.write_text("not a folder")
    proc = subprocess.run(_loop_cmd(data[1], target), capture_output=True, text=True)
    assert proc.returncode == 2
    assert _one_line(proc) == f"error: {target}: is a file, not a folder — choose a folder for the run (-o)"
    nested = subprocess.run(_loop_cmd(data[1], target / "run"), capture_output=True, text=True)
    assert nested.returncode == 2 and "a parent of this path is a file" in _one_line(nested)


@pytest.mark.parametrize(
    ("where", "err", "says"),
    [
        (
            "write",
            OSError(errno.ENOSPC, "No space left on device"),
            "cannot write (No space left on device) — free some space",
        ),
        (
            "mkstemp",
            PermissionError(errno.EACCES, "Permission denied"),
            "cannot write (Permission denied) — choose a folder",
        ),
        (
            "mkstemp",
            OSError(errno.EROFS, "Read-only file system"),
            "cannot write (Read-only file system) — choose a writable",
        ),
    ],
)
def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path, monkeypatch, where, err, says):
    import alseg.atomic as atomic

    path = tmp_path / "state.json"
    atomic_write_text(path, "good\n")
    if where == "write":
        monkeypatch.setattr(Path, "write_text", lambda self, text, **kw: (_ for _ in ()).throw(err))
    else:
        monkeypatch.setattr(atomic.tempfile, "mkstemp", lambda **kw: (_ for _ in ()).throw(err))
    with pytest.raises(AlsegError) as e:
        atomic_write_text(path, "new\n")
    assert str(e.value).startswith(f"{path}: {says}")
    assert path.read_text() == "good\n" and sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def _limit_file_size(limit: int):
    def apply() -> None:
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_full_disk_during_a_loop_is_one_line_and_the_run_resumes(data, tmp_path: Path):
    """A real OS error: a file-size limit makes the checkpoint write fail (EFBIG) as a full disk would."""
    run = tmp_path / "run"
    proc = subprocess.run(_loop_cmd(data[1], run), capture_output=True, text=True, preexec_fn=_limit_file_size(1 << 20))
    assert proc.returncode == 2
    line = _one_line(proc)
    assert line.startswith("error: ") and "cannot write" in line and str(run) in line
    assert not RunDir(run).temp_files()  # no half-written file left
    state = json.loads((run / "state.json").read_text())  # the state is whole and unfinished
    assert not state["finished"]
    resumed = subprocess.run(_loop_cmd(data[1], run, "--resume"), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run / "state.json").read_text())["finished"]
