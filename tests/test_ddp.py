"""``alseg loop --devices 2`` on CPU: Lightning re-launches the command, rank 1 follows rank 0."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from alseg.active import ddp
from alseg.active.ddp import FollowerDriver, LeaderGone, launched_rank
from alseg.data.datamodule import rank_batch_size
from alseg.errors import AlsegError


def test_rank_batch_size_splits_the_global_batch_as_nnunet():
    assert [rank_batch_size(5, r, 2) for r in range(2)] == [3, 2]
    assert [rank_batch_size(8, r, 3) for r in range(3)] == [3, 3, 2]
    assert rank_batch_size(4, 0, 1) == 4
    with pytest.raises(AlsegError, match="cannot be split over 4 devices"):
        rank_batch_size(2, 0, 4)


@pytest.mark.parametrize(
    ("env", "rank"),
    [
        ({}, 0),
        ({"LOCAL_RANK": "0"}, 0),
        ({"LOCAL_RANK": "1"}, 1),
        ({"RANK": "3", "LOCAL_RANK": "1"}, 3),
        ({"LOCAL_RANK": "0", "NODE_RANK": "1"}, 1),
    ],
)
def test_launched_rank(monkeypatch, env, rank):
    for k in ("RANK", "LOCAL_RANK", "NODE_RANK"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert launched_rank() == rank


def test_follower_stops_when_rank0_is_gone(monkeypatch, tmp_path: Path):
    follower = FollowerDriver.__new__(FollowerDriver)
    follower.leader = os.getppid() + 1  # as if rank 0 had exited and we were re-parented
    monkeypatch.setattr(ddp, "POLL_SECONDS", 0.0)
    with pytest.raises(LeaderGone):
        follower._wait(lambda: None)


def _loop(plan: Path, run: Path, *extra: str, strategy: str = "random", rounds: int = 2) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "RANK", "NODE_RANK", "WORLD_SIZE")}
    cmd = [sys.executable, "-m", "alseg", "loop", str(plan), "-o", str(run), "--strategy", strategy, "--rounds",
           str(rounds), "--budget", "3", "--initial", "4", "--epochs", "1", "--iters-per-epoch", "2", "--batch-size",
           "2", "--workers", "0", *extra]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def test_loop_on_two_cpu_processes_trains_every_round_on_both(tmp_path: Path):
    from alseg.dataset.synthetic import generate_dataset
    from alseg.plans.planner import plan_dataset

    data = generate_dataset(tmp_path / "data", cases=5, test_cases=0, difficulty="easy")
    plan_dataset(data, tmp_path / "plan", show_progress=False)
    bad = _loop(tmp_path / "plan", tmp_path / "bad", "--devices", "2", "--batch-size", "1")
    assert bad.returncode == 2 and "cannot be split over 2 devices" in bad.stderr and "Traceback" not in bad.stderr

    proc = _loop(tmp_path / "plan", tmp_path / "ddp", "--devices", "2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "MEMBER: 1/2" in proc.stderr and "MEMBER: 2/2" in proc.stderr  # rank 1 joined every fit
    assert proc.stdout.count("finished 2 round(s)") == 1  # rank 1 prints nothing
    state = json.loads((tmp_path / "ddp" / "state.json").read_text())
    assert state["finished"] and len(state["labelled"]) == 10
    rows = (tmp_path / "ddp" / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["0", "1", "2"]
    for k in range(3):  # two optimiser steps per round (the global batch is split, not doubled)
        log = (tmp_path / "ddp" / "logs" / f"round_{k:03d}" / "metrics.csv").read_text().splitlines()
        assert max(int(line.split(",")[1]) for line in log[1:]) == 1

    # the same selections as on one device: the random draws depend on (seed, round) only
    single = _loop(tmp_path / "plan", tmp_path / "one", "--devices", "1")
    assert single.returncode == 0, single.stderr[-2000:]
    for k in range(3):
        a = json.loads((tmp_path / "ddp" / "rounds" / f"round_{k:03d}.json").read_text())["selected"]
        b = json.loads((tmp_path / "one" / "rounds" / f"round_{k:03d}.json").read_text())["selected"]
        assert a == b


def test_two_cpu_processes_share_the_pool_scoring_and_select_as_one_process_would(tmp_path: Path):
    """BALD on 2 devices: both ranks score the pool; the round's record equals scoring it again in one process
    with the same weights and seed (same scores, same batch, same batch uncertainty)."""
    from alseg.active.loop import LoopDriver
    from alseg.active.rundir import RunDir
    from alseg.dataset.synthetic import generate_dataset
    from alseg.plans.planner import plan_dataset

    data = generate_dataset(tmp_path / "data", cases=5, test_cases=0, difficulty="easy")
    plan_dataset(data, tmp_path / "plan", show_progress=False)
    proc = _loop(tmp_path / "plan", tmp_path / "ddp", "--devices", "2", "--mc-passes", "3", strategy="bald", rounds=1)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "selected by bald (score" in proc.stderr and "on 2 devices" in proc.stderr  # rank 1 took part
    stored = json.loads((tmp_path / "ddp" / "rounds" / "round_001.json").read_text())
    # rank 1 waited for every message on the doorbell file: each round's passes and end
    assert int((tmp_path / "ddp" / ".doorbell").read_text()) >= 3

    run = RunDir(tmp_path / "ddp")
    driver = LoopDriver(tmp_path / "plan", run.path, run.load_config().settings(), resume=True, show_progress=False)
    try:
        driver.state.labelled = run.load_round(0).selected  # the labelled set when round 1 was selected
        again, _ = driver.select(1, driver.load_module(0))  # one process, the round's seed and weights
    finally:
        driver.lock.release()
    assert again.selected == stored["selected"]
    assert again.scores == stored["scores"]
    assert again.batch_uncertainty == stored["batch_uncertainty"] and stored["batch_uncertainty"] > 0


def test_round_is_finished_on_the_training_device():
    """Lightning's teardown moves the module to the CPU before ``on_fit_end``; the callback moves it
    back to the strategy's device before evaluating and scoring (a GPU when training used one)."""
    from types import SimpleNamespace

    from alseg.active.loop import ActiveLoop

    events = []

    class Module:
        def to(self, device):
            events.append(("to", device))
            return self

    class Driver:
        def finish_round(self, round_, module, seconds):
            events.append(("finish", round_))

    device = torch.device("meta")  # any device other than the CPU the module was left on
    trainer = SimpleNamespace(
        interrupted=False, world_size=1, is_global_zero=True, strategy=SimpleNamespace(root_device=device)
    )
    cb = ActiveLoop(Driver(), 3)
    cb.on_fit_start(trainer, Module())
    cb.on_fit_end(trainer, Module())
    assert events == [("to", device), ("finish", 3)]
