"""Process-wide CPU settings applied by the ``alseg`` command (alseg/runtime.py) and not by
``import alseg``, and the CPU batch size that keeps activations under glibc's mmap threshold."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from builders import tiny_plans

from alseg.scoring.pool_inference import CPU_ACTIVATION_BYTES, inference_batch_size

# runs the CLI's entry point (the 'strategies' command), then asks what is left to tune
PROBE = (
    "import sys, json, os; sys.argv = ['alseg', 'strategies']; from alseg.cli import main\n"
    "try:\n    main()\nexcept SystemExit:\n    pass\n"
    "from alseg.runtime import tune_process\n"
    "print(json.dumps({'omp': os.environ.get('OMP_WAIT_POLICY'), 'again': tune_process()}))"
)
LIBRARY = "import alseg, alseg.active.loop, json, os; print(json.dumps({'omp': os.environ.get('OMP_WAIT_POLICY')}))"


def _probe(code: str = PROBE, **env: str) -> dict:
    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OMP_WAIT_POLICY", "ALSEG_KEEP_MALLOC", "LD_PRELOAD") and not k.startswith("MALLOC_")
    }
    out = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_alseg_leaves_the_process_alone():
    assert _probe(LIBRARY)["omp"] is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
def test_the_command_sets_passive_openmp_and_tunes_malloc_unless_the_user_chose():
    fresh = _probe()
    assert fresh["omp"] == "PASSIVE"
    assert fresh["again"] == {"omp_passive": False, "malloc": True}  # mallopt available and accepted
    assert _probe(OMP_WAIT_POLICY="ACTIVE")["omp"] == "ACTIVE"
    assert _probe(ALSEG_KEEP_MALLOC="1")["again"]["malloc"] is False
    assert _probe(MALLOC_TRIM_THRESHOLD_="0")["again"]["malloc"] is False


def test_cpu_inference_batch_keeps_the_largest_activation_under_the_threshold():
    plans = tiny_plans(patch_2d=(56, 40), patch_3d=(40, 56, 40), batch_size=292, features=(32, 64, 128, 256))
    two = plans.configuration("2d")
    per_item = 4 * 2 * 32 * 56 * 40
    assert inference_batch_size(two, "cpu") == CPU_ACTIVATION_BYTES // per_item == 43
    assert inference_batch_size(two, torch.device("cuda")) == 292  # a GPU keeps the plan's batch
    three = plans.configuration("3d_fullres")
    assert inference_batch_size(three, "cpu") == 1  # 22 MiB per item: one at a time
    small = tiny_plans(batch_size=2).configuration("2d")
    assert inference_batch_size(small, "cpu") == 32  # capped by max(plan batch, 32)
