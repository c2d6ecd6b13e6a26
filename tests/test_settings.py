"""One settings model for a run: checked before any work, shared by the CLI, config.json and compare."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from alseg.active.experiments.compare import Cell, loop_command
from alseg.active.rundir import RunConfig
from alseg.active.settings import LoopSettings, load_settings_file
from alseg.errors import AlsegError


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "from alseg.cli import main; main()", *args], capture_output=True, text=True
    )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"budget": 0}, "--budget: Input should be greater than or equal to 1 (got 0)"),
        ({"seed": -1}, "--seed: Input should be greater than or equal to 0 (got -1)"),
        ({"fold": 7}, "--fold: Input should be less than or equal to 4 (got 7)"),
        ({"config": "4d"}, "--config: Input should be '2d' or '3d_fullres' (got '4d')"),
        ({"devices": "two"}, "--devices: must be a positive number or 'auto', got 'two'"),
        ({"batch_size": 0}, "--batch-size: Input should be greater than or equal to 1 (got 0)"),
        ({"budgets": 3}, "--budgets: is not a loop setting — valid ones: strategy, strategy_options, rounds"),
    ],
)
def test_bad_values_are_one_line_naming_the_option(values, message):
    with pytest.raises(AlsegError) as info:
        LoopSettings.checked(**values)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_cli_usage_errors_are_one_line_exit_2_and_come_before_any_work(tmp_path: Path):
    for args, fragment in [
        (["--config", "4d"], "Invalid value for '--config'"),
        (["--budget", "0"], "--budget: Input should be greater than or equal to 1"),
        (["--bogus"], "No such option: --bogus"),
        (["--workers", "-1"], "Invalid value for '--workers'"),
    ]:
        proc = _cli("loop", str(tmp_path / "no_dataset"), "-o", str(tmp_path / "run"), *args)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], proc.stderr
        assert not (tmp_path / "run").exists()  # nothing was started


def test_settings_file_round_trip_and_command_line_overrides(tmp_path: Path):
    base = LoopSettings(strategy="usimf", budget=7, strategy_options={"query_size": "40", "eta": "0.5"})
    assert base.strategy_options == {"query_size": 40, "eta": 0.5}  # typed once, here
    assert base.strategy_settings().query_size == 40 and base.strategy_settings().eta == 0.5
    path = tmp_path / "s.json"
    path.write_text(base.model_dump_json())
    assert load_settings_file(path) == base
    path.write_text(json.dumps({"budget": 7, "budgetz": 1}))
    with pytest.raises(AlsegError, match="s.json: --budgetz: is not a loop setting"):
        load_settings_file(path)
    path.write_text("{")
    with pytest.raises(AlsegError, match="is not valid JSON"):
        load_settings_file(path)


def test_compare_starts_each_cell_from_a_settings_file(tmp_path: Path):
    settings = LoopSettings.checked(
        strategies=["usimf", "random"],
        rounds=2,
        budget=5,
        initial=6,
        epochs=1,
        iters_per_epoch=3,
        mc_passes=2,
        strategy_options={"query_size": "30"},
    )
    cell = Cell("usimf", 2, tmp_path / "usimf" / "seed_2")
    cmd = loop_command(tmp_path / "plan", cell, settings, workers=0)
    assert cmd[cmd.index("--settings") + 1] == str(cell.settings_path) and "--resume" in cmd
    assert "--budget" not in cmd  # no re-serialised flags
    assert cmd[1:3] == ["-m", "alseg"]  # so that DDP (--devices N) can start the cell again per device
    written = load_settings_file(cell.settings_path)
    assert written == settings.model_copy(update={"strategy": "usimf", "seed": 2})


def test_run_config_is_the_settings_plus_the_identity_of_the_data():
    settings = LoopSettings(strategy="entropy", budget=9)
    config = RunConfig(
        **settings.model_dump(), dataset="D", dataset_root="/d", plans_hash="p", pool_hash="q", labels={1: "a"}
    )
    assert config.settings() == settings
    again = RunConfig.model_validate_json(config.model_dump_json())
    assert again == config


def test_strategy_options_are_typed_once_for_the_strategy_or_the_grid():
    """Strings from the command line, typed values from a stored run: the same settings."""
    typed = LoopSettings(strategy="usimf", strategy_options={"query_size": "auto", "eta": "1e-3"})
    stored = LoopSettings.model_validate_json(typed.model_dump_json())
    assert stored == typed and stored.strategy_options == {"query_size": None, "eta": 0.001}  # auto: None
    with pytest.raises(AlsegError, match=r"^unknown option query_size for strategy 'bald' — valid keys: "):
        LoopSettings.checked(strategy="bald", strategy_options={"query_size": "5"})
    with pytest.raises(AlsegError, match=r"^invalid option eta='x' for strategy 'usimf'"):
        LoopSettings.checked(strategy="usimf", strategy_options={"eta": "x"})
    grid = LoopSettings.checked(strategies=["bald", "usimf"], strategy_options={"query_size": "5"})
    assert grid.strategy_options == {"query_size": 5}  # a grid's key needs one strategy that takes it
    with pytest.raises(AlsegError, match="unknown option quer_size for strategies bald, usimf"):
        LoopSettings.checked(strategies=["bald", "usimf"], strategy_options={"quer_size": "5"})


def test_resume_differences_name_each_changed_option_but_rounds_may_grow():
    stored = LoopSettings(strategy="usimf", budget=4, seed=3, strategy_options={"query_size": 5})
    given = LoopSettings(strategy="usimf", budget=5, seed=3, rounds=9, strategy_options={"query_size": "6"})
    assert stored.differences(given) == ['--option {"query_size": 5} → {"query_size": 6}', "--budget 4 → 5"]
    assert stored.differences(given, names={"seed", "rounds"}) == []  # only what the user typed is compared


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"item_size": "20,0,20", "config": "3d_fullres"}, "--item-size: every size must be at least 1"),
        ({"item_size": "20,20,20"}, "--item-size: 2d items have 2 sizes"),
        ({"item_size": "20,20", "config": "3d_fullres"}, "--item-size: 3d_fullres items have 3 sizes"),
        ({"item_size": "20x20"}, "--item-size: expects sizes separated by commas"),
    ],
)
def test_bad_item_sizes_are_one_line(values, message):
    with pytest.raises(AlsegError) as info:
        LoopSettings.checked(**values)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_item_size_is_stored_and_defaults_to_the_patch():
    assert LoopSettings().item_size is None
    s = LoopSettings.checked(item_size="20,20,20", config="3d_fullres")
    assert s.item_size == [20, 20, 20]
    config = RunConfig(**s.model_dump(), dataset="D", dataset_root="/d", plans_hash="p", pool_hash="q", labels={})
    assert json.loads(config.model_dump_json())["item_size"] == [20, 20, 20]
    assert s.differences(LoopSettings(config="3d_fullres")) == ["--item-size 20,20,20 → None"]


def test_item_size_larger_than_the_patch_exits_2_before_preprocessing(synthetic_plan: Path, tmp_path: Path):
    proc = _cli(
        "loop", str(synthetic_plan), "-o", str(tmp_path / "run"), "-c", "3d_fullres", "--item-size", "20,20,999"
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--item-size 20,20,999 is larger than the 3d_fullres patch size" in lines[0], proc.stderr
    assert not (tmp_path / "run" / "config.json").exists()
    assert not [p for p in synthetic_plan.iterdir() if p.is_dir()]  # nothing preprocessed
