"""Shared fixtures (the builders behind them are in ``builders.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from builders import write_msd, write_nnunet


@pytest.fixture
def msd_dataset(tmp_path: Path) -> Path:
    return write_msd(tmp_path / "Task99_Tiny")


@pytest.fixture
def nnunet_dataset(tmp_path: Path) -> Path:
    return write_nnunet(tmp_path / "Dataset099_Tiny")


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread per test: tiny networks gain nothing from more, and on shared cores
    threads only wait for each other."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def make_synthetic_plan(tmp_path_factory):
    """A factory: ``make(cases=5, test_cases=0, **generate_options)`` writes a synthetic demo
    dataset and plans it, in a folder of its own per call (tests may damage their copy); returns
    (dataset, plan folder), the dataset beside the plan in ``../data``."""
    from alseg.dataset.synthetic import generate_dataset  # lazy: heavier imports only for the tests that use it
    from alseg.plans.planner import plan_dataset

    def make(cases: int = 5, test_cases: int = 0, **options) -> tuple[Path, Path]:
        root = tmp_path_factory.mktemp("synthetic")
        data = generate_dataset(root / "data", cases=cases, test_cases=test_cases, **options)
        plan_dataset(data, root / "plan", show_progress=False)
        return data, root / "plan"

    return make


@pytest.fixture(scope="module")
def synthetic_plan(make_synthetic_plan) -> Path:
    """The plan folder of a 6-case demo dataset (every case labelled, no test images), planned once
    per test module; the dataset is beside it in ``../data``."""
    return make_synthetic_plan(cases=6)[1]


FINISHED_RUN = dict(rounds=1, budget=4, initial=8, epochs=1, iters_per_epoch=3, batch_size=4, mc_passes=2, seed=0)


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(dataset, plan folder, run directory) of a finished 2-round 2D loop on demo data with 2 test images."""
    # lazy: only the predict and export tests need a trained run (and its heavier imports)
    from alseg.active.loop import LoopDriver
    from alseg.active.settings import LoopSettings
    from alseg.dataset.synthetic import generate_dataset
    from alseg.plans.planner import plan_dataset

    root = tmp_path_factory.mktemp("finished_run")
    data = generate_dataset(root / "data", cases=5, test_cases=2)
    plan_dataset(data, root / "plan", show_progress=False)
    run = root / "run"
    LoopDriver(root / "plan", run, LoopSettings(**FINISHED_RUN), workers=0, show_progress=False).run_all()
    return data, root / "plan", run
