"""Kill sweep: a tiny loop SIGKILLed at 20+ moments over all phases resumes to the state of an
uninterrupted run.

The kill comes from the test-only hook of :mod:`alseg.atomic` (``ALSEG_TEST_KILL_AT_WRITE=N``:
SIGKILL during the N-th atomic write, between writing the temp file and renaming it), so each
kill lands at a known write: planning, preprocessing, the run's config, state writes, round
records, label files, checkpoints, metrics rows. The DATASET (not a plan folder) is passed, so
planning and preprocessing into ``RUN/plan`` are part of the run and of the sweep.

Slow (about 25 loop processes, ~10 min on 2 shared cores): ``pytest -m slow tests/test_kill_sweep.py``.
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from alseg.atomic import KILL_AT_WRITE

N_KILLS = 20

_RECORDING_MAIN = """
import atexit, json, sys
import alseg.atomic as a
paths = []
inner = a._atomic
def recording(path, write, suffix=""):
    paths.append(str(path))
    return inner(path, write, suffix)
a._atomic = recording
out = sys.argv.pop(1)
atexit.register(lambda: open(out, "w").write(json.dumps(paths)))
from alseg.cli import main
main()
"""


def _args(dataset: Path, run: Path, *extra: str) -> list[str]:
    opts = {"rounds": 2, "budget": 4, "initial": 8, "epochs": 1, "iters-per-epoch": 2, "batch-size": 4, "seed": 5}
    flat = [x for k, v in opts.items() for x in (f"--{k}", str(v))]
    return ["loop", str(dataset), "-o", str(run), "--workers", "0", *flat, *extra]


def _phase(path: str, run: Path) -> str:
    rel = Path(path).relative_to(run).as_posix()
    if rel.startswith("plan/"):
        return "planning" if rel.count("/") == 1 else "preprocessing"
    for prefix, phase in [
        ("rounds/", "round record (selection)"),
        ("labels/", "label file (annotation)"),
        ("checkpoints/", "checkpoint (after training)"),
        ("metrics", "metrics row (after evaluation)"),
        ("state", "state"),
        ("config", "config"),
        ("plans", "run's plan copy"),
        ("split", "run's plan copy"),
    ]:
        if rel.startswith(prefix):
            return phase
    return rel


def _record(run: Path) -> dict:
    """What must equal the uninterrupted run: state (with its checksums), metrics without
    timings, round records without timings."""
    with (run / "metrics.csv").open() as f:
        rows = [{k: v for k, v in r.items() if not k.startswith("seconds_")} for r in csv.DictReader(f)]
    rounds = {}
    for p in sorted((run / "rounds").glob("*.json")):
        rec = json.loads(p.read_text())
        rec.pop("seconds", None)
        rounds[p.name] = rec
    return {"state": json.loads((run / "state.json").read_text()), "metrics": rows, "rounds": rounds}


def _loop(dataset: Path, run: Path, env: dict, kill_at: int | str | None = None) -> subprocess.CompletedProcess:
    """``alseg loop ... --resume`` (which starts the run when there is none yet), maybe with a kill."""
    env = {**env, KILL_AT_WRITE: str(kill_at)} if kill_at else env
    cmd = [sys.executable, "-c", "from alseg.cli import main; main()", *_args(dataset, run, "--resume")]
    # a new session: the kill hook then kills the loop's whole process group (its pool workers too)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, start_new_session=True, timeout=600)


@pytest.mark.slow
def test_twenty_kills_over_all_phases_resume_to_the_uninterrupted_result(tmp_path: Path):
    """Chains of kills: each run directory is killed again and again, every time at a seeded
    random write (1..8) of the resumed process, until it has gone through all its phases; the
    final resume must then equal an uninterrupted run. Every resume in between also passes the
    run's verification (files present and unchanged) or the chain fails."""
    from alseg.dataset.synthetic import generate_dataset

    dataset = generate_dataset(tmp_path / "data", cases=5, test_cases=0)
    reference = tmp_path / "reference"
    count_file = tmp_path / "writes.json"
    env = {k: v for k, v in os.environ.items() if k != KILL_AT_WRITE}
    subprocess.run(
        [sys.executable, "-c", _RECORDING_MAIN, str(count_file), *_args(dataset, reference)],
        check=True,
        env=env,
        capture_output=True,
    )
    expected = _record(reference)
    assert expected["state"]["finished"] and len(expected["metrics"]) == 3

    phases: Counter[str] = Counter()
    kills = 0
    for chain in range(4):
        if kills >= N_KILLS:
            break
        run = tmp_path / f"chain_{chain}"
        rng = random.Random(chain)
        for _ in range(14):
            n = rng.randint(1, 8)
            proc = _loop(dataset, run, env, kill_at=n)
            if proc.returncode == 0:  # finished before its n-th write
                break
            assert proc.returncode == -9, (chain, n, proc.stderr[-2000:])
            where = re.search(r"killed at write \d+: (.*)", proc.stderr)
            assert where, proc.stderr[-2000:]
            phase = _phase(where.group(1), run)
            phases[phase] += 1
            kills += 1
            print(f"chain {chain}: killed at write {n} of the process ({phase})", flush=True)
        final = _loop(dataset, run, env)
        assert final.returncode == 0, (chain, final.stderr[-2000:])
        assert _record(run) == expected, chain
        assert not [p for p in run.rglob(".*") if p.is_file() and p.name != ".lock"], "temp files left"
        print(f"chain {chain}: resumed to the uninterrupted result", flush=True)
    total = len(json.loads(count_file.read_text()))
    print(
        f"\nkill sweep: an uninterrupted run makes {total} atomic writes; {kills} kills, all resumed to the uninterrupted result; by phase: {dict(phases)}"
    )
    assert kills >= N_KILLS
    assert len(phases) >= 5, phases  # measured: preprocessing, state, labels, checkpoints, round records


TARGETED = {  # file (relative to the run directory) → its phase
    "plan/fingerprint.json": "planning",
    "plan/alsegPlans_2d/manifest.json": "preprocessing",
    "config.json": "config",
    "plans.json": "run's plan copy",
    "metrics.csv": "metrics row (after evaluation)",
}


@pytest.mark.slow
def test_a_kill_at_the_first_write_of_each_rare_phase_resumes_to_the_uninterrupted_result(tmp_path: Path):
    """The random sweep rarely lands on planning, the run's config, its plan copy or a metrics
    row (one write each per round or run); here a fresh run is killed exactly there (the hook's
    ``=PATH`` form: during the first write of that file) and then resumed to the end."""
    from alseg.dataset.synthetic import generate_dataset

    dataset = generate_dataset(tmp_path / "data", cases=5, test_cases=0)
    reference = tmp_path / "reference"
    env = {k: v for k, v in os.environ.items() if k != KILL_AT_WRITE}
    subprocess.run(
        [sys.executable, "-m", "alseg", *_args(dataset, reference)], check=True, env=env, capture_output=True
    )
    expected = _record(reference)
    for i, (rel, phase) in enumerate(TARGETED.items()):
        run = tmp_path / f"kill_{i}"
        proc = _loop(dataset, run, env, kill_at=str(run / rel))
        assert proc.returncode == -9, (phase, proc.stderr[-2000:])
        where = re.search(r"killed at write \S+: (.*)", proc.stderr)
        assert where and _phase(where.group(1), run) == phase, (phase, proc.stderr[-500:])
        final = _loop(dataset, run, env)
        assert final.returncode == 0, (phase, final.stderr[-2000:])
        assert _record(run) == expected, phase
        print(f"killed while writing {rel} ({phase}): resumed to the uninterrupted result", flush=True)
