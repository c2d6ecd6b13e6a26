"""Kill sweep over ``alseg predict``: SIGKILLed at every write, it leaves no half-written output
and no process, and ``predict --continue`` then gives the uninterrupted run's files (label maps exactly).

Each kill lands at a known write through :mod:`alseg.atomic`'s test hook (between the temp file
and its rename); one more kill comes from outside, at a moment of the OS's choosing, to the main
process only, as ``kill -9 PID`` of a user would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from alseg.atomic import KILL_AT_WRITE, is_temp_file
from alseg.dataset.io import read_volume, readable_volume
from alseg.predict import predict


def _predict_cmd(run: Path, images: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "alseg", "predict", str(run), "-i", str(images), "-o", str(out)]


def _outputs(folder: Path) -> dict[str, np.ndarray]:
    """Every visible output, read back (a half-written one would raise here)."""
    out = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        if p.name.endswith(".nii.gz"):
            out[p.name] = np.asarray(read_volume(p)[0])
        else:
            with np.load(p) as z:
                out[p.name] = z["probabilities"]
    return out


def _same(name: str, a: np.ndarray, b: np.ndarray) -> bool:
    """Label maps exactly; probabilities to float32 rounding (another process may sum its
    convolutions in another order with another number of threads)."""
    if name.endswith(".nii.gz"):
        return np.array_equal(a, b)
    return a.shape == b.shape and np.allclose(a, b, rtol=0, atol=1e-5)


def _group_gone(pgid: int, within: float = 10.0) -> bool:
    end = time.monotonic() + within
    while time.monotonic() < end:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


@pytest.fixture(scope="module")
def reference(finished_run, tmp_path_factory) -> tuple[Path, Path, dict[str, np.ndarray]]:
    data, _, run = finished_run
    out = tmp_path_factory.mktemp("uninterrupted")
    predict(run, [data / "imagesTs"], out, save_probabilities=True, show_progress=False)
    return run, data / "imagesTs", _outputs(out)


@pytest.mark.parametrize(
    "kills", [pytest.param([3], id="one-kill"), pytest.param([1, 2, 3, 4], id="every-write", marks=pytest.mark.slow)]
)
def test_predict_killed_at_a_write_continues_to_the_same_files(reference, tmp_path: Path, kills: list[int]):
    """The fast suite kills at the 3rd write (the second case's label map); ``-m slow`` at each of the 4."""
    run, images, expected = reference
    assert len(expected) == 4  # a label map and a probabilities file per case: 4 writes
    for k in kills:
        out = tmp_path / f"kill{k}"
        env = {**os.environ, KILL_AT_WRITE: str(k)}
        proc = subprocess.Popen(
            [*_predict_cmd(run, images, out), "--save-probabilities"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # the hook then kills the process group whole, as a real kill of it
        )
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == -signal.SIGKILL and f"killed at write {k}" in err, err
        assert _group_gone(proc.pid)
        temps = [p for p in out.iterdir() if is_temp_file(p)]
        assert len(temps) == 1 and temps[0].name.startswith("."), temps  # the killed write's, hidden
        done = _outputs(out)  # what is visible reads back whole...
        assert len(done) == k - 1 and all(_same(n, v, expected[n]) for n, v in done.items())  # ...and is final
        predict(run, [images], out, save_probabilities=True, skip_existing=True, show_progress=False)
        assert not [p for p in out.iterdir() if p.name.startswith(".")]  # the debris is gone
        again = _outputs(out)
        assert again.keys() == expected.keys()
        for name, value in expected.items():
            assert _same(name, again[name], value), name


def test_a_kill_of_the_main_process_leaves_no_process_and_no_broken_output(reference, tmp_path: Path):
    """``kill -9 PID`` at whatever moment the first output appears: the group empties (no worker
    or helper outlives it) and every visible file reads back whole."""
    run, images, expected = reference
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [*_predict_cmd(run, images, out), "--save-probabilities"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        end = time.monotonic() + 120
        while time.monotonic() < end and proc.poll() is None and not (out.is_dir() and any(out.iterdir())):
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)  # the main process only, not its group
        proc.wait()
        assert _group_gone(proc.pid)
    finally:
        if proc.poll() is None:
            proc.kill()
    for p in out.iterdir():
        assert p.name.startswith(".") or (
            readable_volume(p) if p.name.endswith(".nii.gz") else np.load(p)["probabilities"].size
        )
    code = subprocess.run(
        [*_predict_cmd(run, images, out), "--save-probabilities", "--continue"], capture_output=True, text=True
    )
    assert code.returncode == 0, code.stderr
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    again = _outputs(out)
    assert again.keys() == expected.keys() and all(_same(n, again[n], v) for n, v in expected.items())


def test_a_later_predict_removes_only_its_own_cases_debris(reference, tmp_path: Path):
    """Parts share a folder: part 0 deletes the temp files of its own cases, never another's."""
    run, images, _ = reference
    out = tmp_path / "parts"
    out.mkdir()
    cases = sorted(p.name.removesuffix(".nii.gz") for p in images.glob("*.nii.gz"))
    mine, theirs = out / f".{cases[0]}.nii.gz.abcd1234.tmp.nii.gz", out / f".{cases[1]}.nii.gz.wxyz5678.tmp.nii.gz"
    mine.write_bytes(b"half")
    theirs.write_bytes(b"half")
    predict(run, [images], out, num_parts=2, part_id=0, show_progress=False)
    assert not mine.exists() and theirs.exists()
