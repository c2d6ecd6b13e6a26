"""``alseg compare --test-cases``: every cell and the full-data reference hold out the same cases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from builders import run_cli

import alseg.active.experiments.compare as compare_mod
from alseg.data.cache import build_cache
from alseg.errors import AlsegError
from alseg.model.train import train
from alseg.plans.models import load_plans

TINY = ["--rounds=1", "--budget=4", "--initial=8", "--epochs=1", "--iters-per-epoch=2", "--batch-size=4"]


def test_compare_test_cases_are_held_out_by_every_cell_and_the_reference(synthetic_plan, tmp_path, capsys, monkeypatch):
    cases = sorted(_case_ids(synthetic_plan))
    chosen = [cases[1], cases[4]]  # not what fold 0 would hold out
    seen: list[tuple[list[str], list[str]]] = []

    def spy(*args, **kwargs):
        seen.append(kwargs["split"])
        return train(*args, **kwargs)

    monkeypatch.setattr(compare_mod, "train", spy)
    exp = tmp_path / "exp"
    args = ["compare", str(synthetic_plan), "-o", str(exp), "--strategies", "random", "--seeds", "2"]
    code, _, err = run_cli([*args, *TINY, "--mc-passes=2", "--workers=0", "--test-cases", ",".join(chosen)], capsys)
    assert code == 0, err
    others = [c for c in cases if c not in chosen]
    for seed in (0, 1):
        split = json.loads((exp / "random" / f"seed_{seed}" / "split.json").read_text())
        assert split["test"] == chosen and split["train"] == others
    assert [(list(a), list(b)) for a, b in seen] == [(others, chosen)]
    rows = (exp / "full" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 2 and "dice_mean" in rows[0]


def test_train_refuses_a_split_with_an_unlabelled_case(synthetic_plan, tmp_path):
    plans = load_plans(synthetic_plan / "plans.json")
    cache = build_cache(plans, "2d", synthetic_plan, show_progress=False, workers=0)
    ids = cache.labelled_case_ids()
    with pytest.raises(AlsegError, match="'ghost_case' has no label"):
        train(plans, "2d", cache, tmp_path / "t", split=(ids[:-1], ["ghost_case"]), progress=False)


def _case_ids(synthetic_plan: Path) -> list[str]:
    from alseg.dataset.raw import read_dataset

    return [c.case_id for c in read_dataset(load_plans(synthetic_plan / "plans.json").dataset_root).training]
