"""The command line's manners: --version, help that reads well at 80 columns, exit codes in the help,
one meaning per option name (``demo-data --test-images``; ``--test-cases`` names cases)."""

from __future__ import annotations

import re

import pytest
import typer
from builders import run_cli

from alseg import __version__
from alseg.cli import app

COMMANDS = [c.name for c in typer.main.get_command(app).commands.values()]


def _help(args: list[str], columns: int, monkeypatch) -> str:
    """``alseg ARGS --help`` as a terminal of ``columns`` shows it (click caps the text at max_content_width)."""
    monkeypatch.setenv("COLUMNS", str(columns))
    command = typer.main.get_command(app)
    with pytest.raises(SystemExit) as exit_info:
        command.main([*args, "--help"], prog_name="alseg", max_content_width=columns)
    assert exit_info.value.code in (0, None)
    return exit_info


def _render(args: list[str], columns: int, capsys, monkeypatch) -> str:
    capsys.readouterr()
    _help(args, columns, monkeypatch)
    return capsys.readouterr().out


def test_version(capsys):
    code, out, err = run_cli(["--version"], capsys)
    assert code == 0 and out.strip() == f"alseg {__version__}"


def test_commands_are_listed():
    assert {"loop", "demo-data", "export-nnunet", "predict", "report", "check"} <= set(COMMANDS)


@pytest.mark.parametrize("args", [[], *[[c] for c in COMMANDS]], ids=lambda a: " ".join(a) or "alseg")
def test_help_at_80_columns_breaks_no_word(args, capsys, monkeypatch):
    narrow = _render(args, 80, capsys, monkeypatch)
    wide = _render(args, 400, capsys, monkeypatch)
    assert max(len(line) for line in narrow.splitlines()) <= 80
    assert "<bool>" not in narrow, "a flag takes no value: shown as --flag, not --flag <bool>"
    assert "…" not in narrow, "nothing is cut off"
    tokens = narrow.split()
    words = set(wide.split()) | {w.rstrip(",;:.") for w in wide.split()}
    k = 0
    while k < len(tokens):
        token = tokens[k]
        if token not in words and token.endswith("-") and k + 1 < len(tokens):
            token, k = token + tokens[k + 1], k + 1  # wrapped after a hyphen of a compound word: fine
        if token not in words and token.endswith("..."):
            token = token[:-3].rstrip(",;:")  # the command list's short help, cut after a whole word (click)
        assert token in words, f"'alseg {' '.join(args)} --help' breaks a word at 80 columns: {token!r}"
        k += 1


@pytest.mark.parametrize("args", [[], ["loop"]], ids=["alseg", "loop"])
def test_help_names_the_exit_codes(args, capsys, monkeypatch):
    text = " ".join(_render(args, 80, capsys, monkeypatch).split())
    for code in ("0 ", "2 a user error", "3 ", "130 interrupted"):
        assert code in text, (code, text)
    assert "--resume" in text and "stdout" in text and "stderr" in text


def test_loop_flags_are_flags(capsys, monkeypatch):
    text = _render(["loop"], 80, capsys, monkeypatch)
    assert re.search(r"^\s+--resume\s+Continue", text, re.M), text


def test_demo_data_counts_test_images_and_the_old_name_says_so(tmp_path, capsys, monkeypatch):
    text = _render(["demo-data"], 80, capsys, monkeypatch)
    assert "--test-images" in text and "--test-cases" not in text  # the old name is hidden
    code, out, err = run_cli(["demo-data", str(tmp_path / "a"), "--cases", "2", "--test-images", "1"], capsys)
    assert code == 0 and "1 test scans" in out
    assert len(list((tmp_path / "a" / "imagesTs").iterdir())) == 1
    code, out, err = run_cli(["demo-data", str(tmp_path / "b"), "--cases", "2", "--test-cases", "1"], capsys)
    assert code == 0 and len(list((tmp_path / "b" / "imagesTs").iterdir())) == 1
    assert "is now '--test-images N'" in err and "names the test cases" in err


def test_train_names_lightnings_strategy_ddp_strategy(tmp_path, capsys, monkeypatch):
    """'--strategy' is the selection strategy everywhere; train's Lightning strategy is --ddp-strategy."""
    text = _render(["train"], 80, capsys, monkeypatch)
    assert "--ddp-strategy" in text and "--strategy" not in text.replace("--ddp-strategy", "")
    code, out, err = run_cli(["train", str(tmp_path), "-o", str(tmp_path / "o"), "--ddp-strategy", "warp"], capsys)
    assert code == 2 and "warp" in err and "is now" not in err
    code, out, err = run_cli(["train", str(tmp_path), "-o", str(tmp_path / "o"), "--strategy", "warp"], capsys)
    assert code == 2 and "warp" in err and "is now '--ddp-strategy'" in err


def test_results_are_never_wrapped(tmp_path, capsys, monkeypatch):
    """A written path (or a command to copy) stays on one line however narrow the terminal or pipe."""
    monkeypatch.setenv("COLUMNS", "40")
    deep = tmp_path / ("a_rather_long_folder_name_" * 3) / "data"
    code, out, err = run_cli(["demo-data", str(deep), "--cases", "2", "--test-images", "0"], capsys)
    assert code == 0
    assert any(str(deep) in line for line in out.splitlines()), out
