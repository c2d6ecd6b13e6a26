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
