"""benchmarks/gpu_check.py at its smoke sizes: the script no GPU machine runs in CI keeps working
as the modules it reuses (USIMF's steps, scoring, the training benchmark, the loop) change."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
TASK04 = REPO.parent / "shared" / "data" / "Task04_Hippocampus"


def _run(tmp_path: Path, parts: str, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, str(SCRIPT), "--smoke", "--device", "cpu", "--parts", parts, "--out", str(tmp_path / "out")]
    proc = subprocess.run(cmd + ["--work", str(tmp_path / "work"), *extra], capture_output=True, text=True, env=env)
    report = tmp_path / "out" / "gpu_check.json"
    assert report.is_file(), proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc, json.loads(report.read_text())


def test_smoke_selection_scoring_training(tmp_path):
    proc, report = _run(tmp_path, "selection,scoring,train")
    assert proc.returncode == 0, proc.stdout[-3000:]
    parts = report["parts"]
    assert set(parts) == {"selection", "scoring", "train"}
    assert all(p["status"] == "ok" for p in parts.values()), parts

    sel = parts["selection"]
    assert sel["best"]["total_s"] > 0 and sel["best"]["valid_selection"]
    rows, cols = sel["best"]["kernel_shape"]
    assert rows == sel["items"] and 0 < cols <= sel["query_draws"]  # distinct columns of the query multiset

    sc = parts["scoring"]
    assert sc["items"] == 96 and sc["passes"] == 11
    assert sc["items_per_s"] > 0 and sc["item_passes_per_s"] == pytest.approx(11 * sc["items_per_s"])
    assert sc["ratio_to_plain"] > 0

    (train,) = parts["train"]["rows"]
    assert train["config"] == "2d" and train["alseg"]["its"] > 0
    assert train["alseg"]["patch"] == [56, 40]
    if "nnunet" not in train:  # nnunetv2 is not a dependency: the row says why it is missing
        assert parts["train"]["nnunet_note"]

    table = report["table"]["rows"]
    assert [r[0] for r in table] == ["USIMF selection", "pool scoring", "training step, Task04 2d"]
    md = (tmp_path / "out" / "gpu_check.md").read_text()
    assert md.count("\n| ") == 4  # header + 3 rows
    assert {p.name for p in (tmp_path / "out").iterdir()} <= {
        "gpu_check.json",
        "gpu_check.md",
        "selection.log",
        "scoring.log",
        "train.log",
    }


def test_part_over_its_budget_is_killed(tmp_path):
    # 1 s is less than starting Python and importing torch takes: the part is killed and reported
    proc, report = _run(tmp_path, "selection,scoring", "--budget", "scoring=1")
    assert proc.returncode == 2
    assert report["parts"]["selection"]["status"] == "ok"
    assert report["parts"]["scoring"]["status"] == "timeout"
    assert "killed after 1 s" in report["parts"]["scoring"]["error"]
    assert report["table"]["rows"][1][-1] == "timeout"


@pytest.mark.slow
def test_smoke_loop_on_task04(tmp_path):
    if not (TASK04 / "dataset.json").is_file():
        pytest.skip(f"no {TASK04}")
    proc, report = _run(tmp_path, "loop", "--data", str(TASK04))
    assert proc.returncode == 0, proc.stdout[-3000:]
    loop = report["parts"]["loop"]
    assert loop["status"] == "ok" and loop["exit_code"] == 0
    assert [r["labelled"] for r in loop["rounds"]] == [10, 20, 30]
    assert all(0 <= r["dice"] <= 1 for r in loop["rounds"])
    assert all(r["score"] > 0 and r["select"] > 0 for r in loop["rounds"][1:])
    assert (tmp_path / "out" / "loop_metrics.csv").is_file()
