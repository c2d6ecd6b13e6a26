"""The README is tested: its commands run as written, and the demo numbers it quotes are printed.

How the README's code blocks are found and run:

* Every ```bash and ```python block of ``README.md`` is preceded by an HTML comment (invisible
  on GitHub) that says what this file does with it:

  - ``<!-- doc-test: run -->``: executed, in README order, in one scratch folder, as a newcomer
    runs them from the repository's folder: the folder holds links to this checkout's ``.venv``
    and ``examples/``, and ``PATH`` does not contain the venv (nothing is activated). A bash
    block runs as one ``bash -e`` script (its variables carry over from line to line); a python
    block runs with ``.venv/bin/python``.
  - ``<!-- doc-test: quick-start -->``: the install-and-demo command. Its install steps must be
    the ones ``.ci/run`` runs (``-q`` aside) and its test command ``.ci/run``'s last line;
    ``test_demo_numbers`` (slow) runs its ``alseg demo`` and compares the quoted table.
  - ``<!-- doc-test: not run (why) -->``: shown only.

  A block with no such comment fails ``test_every_block_is_classified``.
* A command whose comment says ``exit N`` must exit with code N (the loop's exit 3 while it
  waits for annotations); any other command must exit 0. Text quoted in such a comment
  (``"finished 2 round(s)"``) must appear in the block's output, ``...`` marking a cut.
* **Tiny settings**: a README run must take seconds here, so the only change made to a block's
  text is the number after each option in :data:`TINY` (``--iters-per-epoch 20`` → ``2``).
  Every entry must match a command of the README (else the test fails: it would no longer make
  the run tiny), so the commands that run are the README's, with fewer iterations.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CI = ROOT / ".ci" / "run"
VENV = Path(sys.executable).parent.parent  # the venv this test runs in: the README's .venv in CI

TINY = {"--epochs": "1", "--iters-per-epoch": "2"}
"""Option → the value a README run uses instead of the README's (numbers of iterations only)."""

MARKER = re.compile(r"<!--\s*doc-test:\s*(run|quick-start|not run\b[^>]*?)\s*-->")
FENCE = re.compile(r"^```(\w*)\s*$")
EXIT = re.compile(r"#.*\bexit (\d+)")
QUOTED = re.compile(r'"([^"]+)"')


@dataclass
class Block:
    lang: str
    kind: str  # run | quick-start | not run (...) | "" (no marker)
    text: str
    line: int


def readme_blocks(text: str | None = None) -> list[Block]:
    """The fenced code blocks of the README, with the doc-test marker just above each."""
    lines = (README.read_text() if text is None else text).splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, lang = i, m.group(1)
        j = i + 1
        while j < len(lines) and lines[j].strip() != "```":
            j += 1
        above = next((lines[k] for k in range(start - 1, -1, -1) if lines[k].strip()), "")
        marker = MARKER.search(above)
        blocks.append(Block(lang, marker.group(1).strip() if marker else "", "\n".join(lines[i + 1 : j]), start + 1))
        i = j + 1
    return blocks


def shrink(text: str, used: set[str]) -> str:
    """``text`` with the number after each :data:`TINY` option replaced; records which matched."""
    for option, value in TINY.items():
        pattern = re.compile(rf"(?<![\w-]){re.escape(option)} \d+\b")
        if pattern.search(text):
            used.add(option)
            text = pattern.sub(f"{option} {value}", text)
    return text


def checked_script(text: str) -> tuple[str, list[str]]:
    """A bash script of a block: stops at the first failure; a line whose comment says ``exit N``
    must exit with N. Returns the script and the fragments the output must contain."""
    out, expect = ["set -eo pipefail"], []
    for line in text.splitlines():
        command, _, comment = line.partition(" #")
        if line.lstrip().startswith("#") or not comment:
            out.append(line)
            continue
        expect += [q.split("...")[0].strip() for q in QUOTED.findall(comment)]
        m = EXIT.search(" #" + comment)
        if m is None:
            out.append(line)
            continue
        code, command = m.group(1), command.strip()
        out.append(
            f"rc=0; {command} || rc=$?; "
            f'[ "$rc" -eq {code} ] || {{ echo "README command exited $rc, expected {code}: "{shlex.quote(command)} >&2; exit 99; }}'
        )
    return "\n".join(out) + "\n", [e for e in expect if e]


def newcomer_env(one_thread: bool = True) -> dict[str, str]:
    """The environment of a fresh shell: the venv not on PATH, plots without a display.
    ``one_thread``: one OpenMP thread per process (tiny runs on shared cores); the demo's numbers
    are measured with PyTorch's default threads, and another thread count changes them slightly."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(str(VENV)))
    env.pop("VIRTUAL_ENV", None)
    env["MPLBACKEND"] = "Agg"
    if one_thread:
        env.setdefault("OMP_NUM_THREADS", "1")
    else:
        env.pop("OMP_NUM_THREADS", None)
    return env


def scratch(tmp: Path) -> Path:
    """A folder laid out as the repository for the README's relative paths."""
    (tmp / ".venv").symlink_to(VENV)
    (tmp / "examples").symlink_to(ROOT / "examples")
    return tmp


def _venv_ready() -> None:
    if not (VENV / "bin" / "alseg").exists():
        pytest.skip(f"no 'alseg' in {VENV}/bin: install alseg into the venv as the README says")


def test_every_block_is_classified():
    blocks = [b for b in readme_blocks() if b.lang in ("bash", "sh", "python", "")]
    unmarked = [f"README.md line {b.line}" for b in blocks if not b.kind]
    assert not unmarked, f"code blocks without a '<!-- doc-test: ... -->' comment above: {unmarked}"
    assert sum(b.kind == "quick-start" for b in blocks) == 1
    assert any(b.kind == "run" for b in blocks)


def test_readme_is_short():
    assert len(README.read_text().splitlines()) <= 360, "the README is for newcomers: move details to docs/"


def test_links_to_docs_exist():
    missing = [
        link
        for link in re.findall(r"\]\(((?:docs/)[^)#]+)", README.read_text())
        if not (ROOT / link).exists() and link != "docs/hippocampus-grid.md"  # the lead's page, being written
    ]
    assert not missing, f"README links to files that do not exist: {missing}"


def _quick_start() -> tuple[list[str], str]:
    block = next(b for b in readme_blocks() if b.kind == "quick-start")
    first, second = [line.strip() for line in block.text.splitlines() if line.strip()]
    return [step.strip() for step in first.split("&&")], second


def test_quick_start_matches_ci():
    """``.ci/run`` installs exactly as the README's Quick start and runs its test command."""
    steps, tests = _quick_start()
    assert steps[-1] == ".venv/bin/alseg demo"
    ci_lines = [line.strip() for line in CI.read_text().splitlines() if line.strip() and not line.startswith("#")]
    normalised = [re.sub(r" -q\b", "", line) for line in ci_lines]
    for step in steps[:-1]:
        assert step in normalised, f".ci/run does not run the README's install step {step!r}"
    assert normalised.index(steps[0]) < normalised.index(steps[1]) < normalised.index(steps[2])
    assert ci_lines[-1] == tests, f".ci/run's last line {ci_lines[-1]!r} is not the README's {tests!r}"


def test_readme_runs_as_written(tmp_path):
    """Every ``run`` block, in order, in one scratch folder (the walkthrough included)."""
    _venv_ready()
    work = scratch(tmp_path)
    env = newcomer_env()
    used: set[str] = set()
    for k, block in enumerate(b for b in readme_blocks() if b.kind == "run"):
        text = shrink(block.text, used)
        if block.lang == "python":
            script = work / f"block_{k}.py"
            script.write_text(text)
            cmd, expect = [str(work / ".venv" / "bin" / "python"), script.name], []
        else:
            body, expect = checked_script(text)
            script = work / f"block_{k}.sh"
            script.write_text(body)
            cmd = ["bash", script.name]
        proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=300)
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0, f"README.md block at line {block.line} failed:\n{text}\n---\n{output[-4000:]}"
        for fragment in expect:
            assert fragment in output, f"README.md line {block.line}: {fragment!r} not printed:\n{output[-3000:]}"
    assert used == set(TINY), f"TINY options no README command uses any more: {set(TINY) - used}"


def test_checked_script_expects_exit_codes(tmp_path):
    """The mechanism itself: a wrong exit code fails the block, the announced one passes."""
    ok, _ = checked_script("(exit 3)   # exit 3\ntrue")
    bad, _ = checked_script("(exit 0)   # exit 3")
    fails, _ = checked_script("false\ntrue")
    run = lambda s: subprocess.run(["bash", "-c", s], capture_output=True).returncode  # noqa: E731
    assert (run(ok), run(bad), run(fails)) == (0, 99, 1)
    _, expect = checked_script('x   # exit 3: "Annotate the items in a ..." more')
    assert expect == ["Annotate the items in a"]


DEMO_ROW = re.compile(r"round (\d+): (\d+) items labelled — Dice mean ([\d.]+), Anterior ([\d.]+), Posterior ([\d.]+)")
TABLE_ROW = re.compile(r"^\| (\d+) \| (\d+) \| \**([\d.]+)\** \| \**([\d.]+)\** \| \**([\d.]+)\** \|$", re.M)


def quoted_demo_table() -> list[tuple[str, ...]]:
    text = README.read_text()
    section = text[text.index("## Quick start") : text.index("## Walkthrough")]
    return TABLE_ROW.findall(section)


def test_demo_table_is_quoted():
    rows = quoted_demo_table()
    assert [r[0] for r in rows] == ["0", "1", "2", "3"]


@pytest.mark.slow
def test_demo_numbers(tmp_path):
    """The Quick start's ``alseg demo``, as written, prints the README's table (the demo is deterministic)."""
    _venv_ready()
    steps, _ = _quick_start()
    work = scratch(tmp_path)
    proc = subprocess.run(
        ["bash", "-c", steps[-1]],
        cwd=work,
        env=newcomer_env(one_thread=False),
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = DEMO_ROW.findall(proc.stdout + proc.stderr)
    assert printed == quoted_demo_table(), f"README's demo table is stale; the demo printed {printed}"


def test_strategies_table_lists_every_registered_strategy():
    """One row per strategy of ``alseg strategies`` (the registry), none missing, none extra."""
    from alseg.strategies import available

    text = README.read_text()
    section = text[text.index("## Strategies") : text.index("## Python API")]
    rows = re.findall(r"^\| `([a-z0-9-]+)` \|", section, re.M)
    assert sorted(rows) == sorted(available()) and len(rows) == len(set(rows))
