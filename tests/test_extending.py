"""docs/extending.md's worked example, run as written: a strategy and an oracle registered at run
time, then a loop with both; the run shows each did its part."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_the_page_has_the_four_blocks():
    assert len(python_blocks(DOC.read_text())) == 4


@pytest.fixture
def registries():
    """Leave the registries as they were (the example adds to them)."""
    from alseg.active.oracles.registry import ORACLES
    from alseg.report.build import SETTING_FIGURES
    from alseg.strategies.registry import STRATEGIES

    strategies, oracles, figures = dict(STRATEGIES), dict(ORACLES), list(SETTING_FIGURES)
    yield
    SETTING_FIGURES[:] = figures
    STRATEGIES.clear()
    STRATEGIES.update(strategies)
    ORACLES.clear()
    ORACLES.update(oracles)


def test_the_worked_example_runs_and_each_extension_does_its_part(synthetic_plan: Path, tmp_path: Path, registries):
    out = tmp_path / "run"
    namespace: dict = {"PLAN": synthetic_plan, "OUT": out}
    for block in python_blocks(DOC.read_text()):
        exec(compile(block, str(DOC), "exec"), namespace)
    state = namespace["state"]
    assert state.finished and state.round == 1 and len(state.labelled) == 6 + 3

    record = json.loads((out / "rounds" / "round_001.json").read_text())
    assert record["strategy"] == "entropy-per-case"
    cases = [item.split(":")[0] for item in record["selected"]]
    assert len(set(cases)) == len(cases) == 3  # one item per case
    assert record["scores"] == sorted(record["scores"], reverse=True)

    from alseg.active.workspace import Workspace

    ws = Workspace.open(synthetic_plan, out, "2d", 0, False)
    missed = 0
    for i in ws.pool.indices(state.labelled):
        item = ws.pool[int(i)]
        box = tuple(slice(a, b) for a, b in item.box)
        stored = np.load(out / "labels" / f"{item.case_id}.npy")[box]
        truth = np.asarray(ws.ground_truth(item.case_id))[box]
        assert np.array_equal(stored[stored > 0], truth[stored > 0])  # what it draws is true
        assert not stored[truth == 0].any()  # and nothing outside the truth
        missed += int(((truth > 0) & (stored == 0)).sum())
    assert missed > 0  # each structure's rim is missed

    drawn = [name for name in namespace["summary"]["figures"] if name.startswith("dice_per_voxel_")]
    assert len(drawn) == 1 and (out / "report" / drawn[0]).stat().st_size > 0
    assert f'alt="{Path(drawn[0]).stem}"' in (out / "report" / "report.html").read_text()  # shown in the report


def test_block_extraction_finds_only_python_blocks():
    text = "a\n```python\nx = 1\n```\n```bash\nls\n```\n```python\ny = 2\n```\n"
    assert python_blocks(text) == ["x = 1\n", "y = 2\n"]
