"""The bad-input battery: every command, every kind of wrong input a user can give it.

Each case runs the real CLI (``alseg.cli.main``) in-process and must end with exit code 2 and
one line on stderr — ``error: <path or option>: <what is wrong> — <what to do>`` — naming the
file or option, never a traceback, before any work starts. The expected fragment of each
message is part of the case: a message that loses its file name or its fix fails here.
``tests/test_dataset.py`` (broken datasets), ``tests/test_reliability.py`` (damaged runs, full
disks) and ``tests/test_settings.py`` try more; the README's Reliability table counts them all.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from builders import run_cli


@dataclass
class Env:
    """Paths a case may use: a dataset, its plan, a finished run (copy before damaging), a fresh folder."""

    data: Path
    plan: Path
    run: Path
    t: Path

    def run_copy(self) -> Path:
        dst = self.t / "run"
        shutil.copytree(self.run, dst)
        return dst

    def plan_copy(self) -> Path:
        dst = self.t / "plan"
        shutil.copytree(self.plan, dst, ignore=shutil.ignore_patterns("*.npy", "*.npz", "*.pkl"))
        return dst

    def file(self, name: str = "file.txt", text: str = "x") -> Path:
        p = self.t / name
        p.write_text(text)
        return p

    @property
    def image(self) -> Path:
        return sorted((self.data / "imagesTs").glob("*.nii.gz"))[0]


@dataclass
class Case:
    name: str
    argv: Callable[[Env], list[str]]
    expect: str


SMALL = ["--initial", "8", "--budget", "4", "--copies", "2"]  # fits the tiny pool, so each case's own check speaks


def _loop(e: Env, *extra: str, out: Path | None = None) -> list[str]:
    return ["loop", str(e.plan), "-o", str(out or e.t / "r"), *extra]


def _write_json(p: Path, data) -> Path:
    p.write_text(json.dumps(data))
    return p


def _settings(e: Env, **values) -> Path:
    return _write_json(e.t / "settings.json", values)


def _plan_with(e: Env, plans_text: str) -> Path:
    plan = e.plan_copy()
    (plan / "plans.json").write_text(plans_text)
    return plan


def _damaged(e: Env, rel: str, text: str | None = None, delete: bool = False) -> Path:
    run = e.run_copy()
    p = run / rel
    if delete:
        p.unlink()
    else:
        p.write_text(text or "")
    return run


def _images(e: Env) -> Path:
    """A plain folder holding a copy of one test image."""
    folder = e.t / "imgs"
    if not folder.is_dir():
        folder.mkdir()
        shutil.copy(e.image, folder / e.image.name)
    return folder


CASES: list[Case] = []


def case(name: str, expect: str):
    def register(fn: Callable[[Env], list[str]]):
        CASES.append(Case(name, fn, expect))
        return fn

    return register


def cases(*items: tuple[str, Callable[[Env], list[str]], str]) -> None:
    CASES.extend(Case(n, f, x) for n, f, x in items)


# --- usage: commands and options ---------------------------------------------------------------
cases(
    ("unknown command", lambda e: ["frobnicate"], "No such command 'frobnicate'"),
    ("unknown option", lambda e: ["check", str(e.data), "--fast"], "No such option: --fast"),
    ("loop without -o", lambda e: ["loop", str(e.plan)], "Missing option '-o'"),
    ("loop extra argument", lambda e: [*_loop(e), "extra"], "Got unexpected extra argument(s) (extra)"),
    (
        "integer option given text",
        lambda e: _loop(e, "--rounds", "three"),
        "Invalid value for '--rounds': Input should be a valid integer",
    ),
    (
        "choice option outside its choices",
        lambda e: _loop(e, "--config", "4d"),
        "'4d' is not one of '2d', '3d_fullres'",
    ),
    ("oracle outside its choices", lambda e: _loop(e, "--oracle", "human"), "'human' is not one of"),
    (
        "negative workers",
        lambda e: _loop(e, "--workers", "-1"),
        "Invalid value for '--workers': Input should be greater than or equal to 0",
    ),
)

# --- alseg loop: every option checked before any work ------------------------------------------
cases(
    ("loop: unknown strategy", lambda e: _loop(e, "--strategy", "magic"), "unknown strategy 'magic' — choose one of"),
    ("loop: budget 0", lambda e: _loop(e, "--budget", "0"), "--budget"),
    ("loop: negative budget", lambda e: _loop(e, "--budget", "-3"), "--budget"),
    ("loop: initial 0", lambda e: _loop(e, "--initial", "0"), "--initial"),
    ("loop: rounds -1", lambda e: _loop(e, "--rounds", "-1"), "--rounds"),
    ("loop: seed -1", lambda e: _loop(e, "--seed", "-1"), "--seed"),
    ("loop: fold 7", lambda e: _loop(e, "--fold", "7"), "--fold"),
    ("loop: fold -1", lambda e: _loop(e, "--fold", "-1"), "--fold"),
    ("loop: epochs 0", lambda e: _loop(e, "--epochs", "0"), "--epochs"),
    ("loop: iterations 0", lambda e: _loop(e, "--iters-per-epoch", "0"), "--iters-per-epoch"),
    ("loop: batch size 0", lambda e: _loop(e, "--batch-size", "0"), "--batch-size"),
    ("loop: MC passes 0", lambda e: _loop(e, "--mc-passes", "0"), "--mc-passes"),
    ("loop: devices 'two'", lambda e: _loop(e, "--devices", "two"), "--devices: must be a positive number or 'auto'"),
    ("loop: devices -1", lambda e: _loop(e, "--devices", "-1"), "--devices"),
    (
        "loop: batch smaller than devices",
        lambda e: _loop(e, "--devices", "2", "--batch-size", "1"),
        "cannot be split over 2 devices",
    ),
    (
        "loop: initial larger than the pool",
        lambda e: _loop(e, "--initial", "100000"),
        "--initial 100000 is larger than the pool",
    ),
    ("loop: budget larger than the pool", lambda e: _loop(e, "--budget", "100000"), "--budget 100000 is larger"),
    (
        "loop: more rounds than the pool holds",
        lambda e: _loop(e, "--rounds", "1000", "--budget", "8"),
        "use at most --rounds",
    ),
    (
        "loop: ground-truth strategy with the files oracle",
        lambda e: _loop(e, "--strategy", "random-fg", "--oracle", "files"),
        "only runs with --oracle simulated",
    ),
    ("loop: option without '='", lambda e: _loop(e, "--strategy", "usimf", "--option", "eta"), "--option"),
    ("loop: option with an empty key", lambda e: _loop(e, "--strategy", "usimf", "--option", "=1"), "--option"),
    ("loop: usimf eta not a number", lambda e: _loop(e, "--strategy", "usimf", "--option", "eta=abc"), "eta"),
    (
        "loop: usimf unknown kernel",
        lambda e: _loop(e, "--strategy", "usimf", "--option", "fisher_kernel=bogus"),
        "fisher_kernel",
    ),
    (
        "loop: usimf negative query size",
        lambda e: _loop(e, "--strategy", "usimf", "--option", "query_size=-5"),
        "query_size",
    ),
    (
        "loop: usimf query_multiset not a bool",
        lambda e: _loop(e, "--strategy", "usimf", "--option", "query_multiset=maybe"),
        "query_multiset",
    ),
    ("loop: random has no options", lambda e: _loop(e, "--strategy", "random", "--option", "eta=1"), "eta"),
)
for _s in [
    "random",
    "entropy",
    "meanstd",
    "bald",
    "coreset",
    "badge",
    "stochastic-batches",
    "usimc",
    "usimf",
    "random-fg",
]:
    CASES.append(
        Case(
            f"loop: {_s} with an unknown option key",
            lambda e, s=_s: _loop(e, "--strategy", s, "--option", "nope=1"),
            "nope",
        )
    )
cases(
    ("loop: dataset path missing", lambda e: ["loop", str(e.t / "nowhere"), "-o", str(e.t / "r")], "nowhere"),
    ("loop: dataset path is a file", lambda e: ["loop", str(e.file()), "-o", str(e.t / "r")], "file.txt"),
    (
        "loop: folder without dataset.json or plans.json",
        lambda e: ["loop", str(e.t), "-o", str(e.t / "r")],
        "neither a dataset (dataset.json) nor a plan folder",
    ),
    ("loop: -o is a file", lambda e: _loop(e, out=e.file("occupied")), "is a file, not a folder"),
    ("loop: -o below a file", lambda e: _loop(e, out=e.file("occupied") / "run"), "occupied"),
    ("loop: run exists, no --resume", lambda e: _loop(e, out=e.run_copy()), "already holds a run — pass --resume"),
    (
        "loop: resume with another strategy",
        lambda e: _loop(e, "--resume", "--strategy", "bald", out=e.run_copy()),
        "was started with other options",
    ),
    (
        "loop: resume with another budget",
        lambda e: _loop(e, "--resume", "--budget", "5", out=e.run_copy()),
        "--budget 4 → 5",
    ),
    ("loop: resume with another seed", lambda e: _loop(e, "--resume", "--seed", "9", out=e.run_copy()), "--seed"),
    (
        "loop: resume with another oracle",
        lambda e: _loop(e, "--resume", "--oracle", "files", out=e.run_copy()),
        "--oracle",
    ),
    ("loop: resume with a strategy option", lambda e: _loop(e, "--resume", "--option", "x=1", out=e.run_copy()), "x"),
    (
        "loop: resume, state.json garbage",
        lambda e: _loop(e, "--resume", out=_damaged(e, "state.json", "{not json")),
        "state.json: is corrupt",
    ),
    (
        "loop: resume, state.json deleted",
        lambda e: _loop(e, "--resume", out=_damaged(e, "state.json", delete=True)),
        "state.json",
    ),
    (
        "loop: resume, config.json garbage",
        lambda e: _loop(e, "--resume", out=_damaged(e, "config.json", "[]")),
        "config.json",
    ),
    (
        "loop: resume, config.json empty",
        lambda e: _loop(e, "--resume", out=_damaged(e, "config.json", "")),
        "config.json",
    ),
    (
        "loop: resume, metrics.csv emptied",
        lambda e: _loop(e, "--resume", out=_damaged(e, "metrics.csv", "")),
        "metrics.csv",
    ),
    (
        "loop: resume, split.json garbage",
        lambda e: _loop(e, "--resume", out=_damaged(e, "split.json", "nope")),
        "split.json",
    ),
    (
        "loop: resume, round record garbage",
        lambda e: _loop(e, "--resume", out=_damaged(e, "rounds/round_001.json", "{")),
        "round_001.json",
    ),
    (
        "loop: resume, round record deleted",
        lambda e: _loop(e, "--resume", out=_damaged(e, "rounds/round_000.json", delete=True)),
        "round_000.json",
    ),
    (
        "loop: resume, checkpoint deleted",
        lambda e: _loop(e, "--resume", "--rounds", "2", out=_damaged(e, "checkpoints/round_001.ckpt", delete=True)),
        "round_001.ckpt",
    ),
    (
        "loop: resume, checkpoint truncated",
        lambda e: _loop(e, "--resume", "--rounds", "2", out=_damaged(e, "checkpoints/round_001.ckpt", "x")),
        "round_001.ckpt",
    ),
    ("loop: settings file missing", lambda e: _loop(e, "--settings", str(e.t / "none.json")), "none.json"),
    ("loop: settings file not JSON", lambda e: _loop(e, "--settings", str(e.file("s.json", "{"))), "s.json"),
    ("loop: settings file a list", lambda e: _loop(e, "--settings", str(e.file("s.json", "[1]"))), "s.json"),
    ("loop: settings file unknown key", lambda e: _loop(e, "--settings", str(_settings(e, speed=3))), "speed"),
    ("loop: settings file bad value", lambda e: _loop(e, "--settings", str(_settings(e, budget=0))), "budget"),
    ("loop: settings file bad type", lambda e: _loop(e, "--settings", str(_settings(e, rounds="many"))), "rounds"),
    (
        "loop: settings file unknown strategy",
        lambda e: _loop(e, "--settings", str(_settings(e, strategy="magic"))),
        "magic",
    ),
    ("loop: settings file is a folder", lambda e: _loop(e, "--settings", str(e.t)), str("settings")),
)

# --- plan folders --------------------------------------------------------------------------------
cases(
    (
        "loop: plans.json garbage",
        lambda e: ["loop", str(_plan_with(e, "{")), "-o", str(e.t / "r"), "--resume"],
        "plans.json",
    ),
    ("preprocess: not a plan folder", lambda e: ["preprocess", str(e.t)], str("plans.json")),
    ("preprocess: plan folder missing", lambda e: ["preprocess", str(e.t / "nowhere")], "nowhere"),
    (
        "preprocess: plans.json garbage",
        lambda e: ["preprocess", str(_plan_with(e, "[]"))],
        "plans.json",
    ),
    (
        "preprocess: plans.json wrong schema",
        lambda e: ["preprocess", str(_plan_with(e, json.dumps({"dataset_name": 3})))],
        "plans.json",
    ),
    ("preprocess: unknown configuration", lambda e: ["preprocess", str(e.plan), "--config", "3d_lowres"], "3d_lowres"),
    ("preprocess: negative workers", lambda e: ["preprocess", str(e.plan), "--workers", "-2"], "--workers"),
    ("plan: dataset missing", lambda e: ["plan", str(e.t / "nowhere"), "-o", str(e.t / "p")], "nowhere"),
    ("plan: dataset is a file", lambda e: ["plan", str(e.file()), "-o", str(e.t / "p")], "file.txt"),
    ("plan: -o is a file", lambda e: ["plan", str(e.data), "-o", str(e.file("occupied"))], "occupied"),
    ("plan: empty folder", lambda e: ["plan", str(e.t), "-o", str(e.t / "p")], "dataset.json"),
    (
        "plan: nnU-Net id 0",
        lambda e: ["plan", str(e.data), "-o", str(e.t / "p"), "--export-nnunet", "--nnunet-id", "0"],
        "--nnunet-id",
    ),
    (
        "plan: nnU-Net id 1000",
        lambda e: ["plan", str(e.data), "-o", str(e.t / "p"), "--export-nnunet", "--nnunet-id", "1000"],
        "--nnunet-id",
    ),
    ("plan: negative workers", lambda e: ["plan", str(e.data), "-o", str(e.t / "p"), "--workers", "-1"], "--workers"),
    ("check: dataset missing", lambda e: ["check", str(e.t / "nowhere")], "nowhere"),
    ("check: dataset is a file", lambda e: ["check", str(e.file())], "file.txt"),
    ("check: empty folder", lambda e: ["check", str(e.t)], "dataset.json"),
    (
        "check: dataset.json is a list",
        lambda e: ["check", str(_write_json(e.t / "dataset.json", []).parent)],
        "dataset.json",
    ),
    (
        "check: dataset.json without training",
        lambda e: ["check", str(_write_json(e.t / "dataset.json", {"labels": {"0": "background"}}).parent)],
        "dataset.json",
    ),
)

# --- alseg train ----------------------------------------------------------------------------------
cases(
    ("train: plan folder missing", lambda e: ["train", str(e.t / "nowhere"), "-o", str(e.t / "o")], "nowhere"),
    ("train: not a plan folder", lambda e: ["train", str(e.t), "-o", str(e.t / "o")], "plans.json"),
    (
        "train: unknown configuration",
        lambda e: ["train", str(e.plan), "-o", str(e.t / "o"), "--config", "3d_lowres"],
        "3d_lowres",
    ),
    ("train: fold 5", lambda e: ["train", str(e.plan), "-o", str(e.t / "o"), "--fold", "5"], "--fold"),
    ("train: lr inf", lambda e: ["train", str(e.plan), "-o", str(e.t / "o"), "--lr", "inf"], "--lr"),
    ("train: lr nan", lambda e: ["train", str(e.plan), "-o", str(e.t / "o"), "--lr", "nan"], "--lr"),
    (
        "loop: bald with one MC pass",
        lambda e: _loop(e, "--strategy", "bald", "--mc-passes", "1"),
        "--mc-passes 1 is too few for strategy 'bald'",
    ),
    ("loop: usimc with one MC pass", lambda e: _loop(e, "--strategy", "usimc", "--mc-passes", "1"), "usimc"),
    (
        "compare: meanstd with one MC pass",
        lambda e: ["compare", str(e.plan), "-o", str(e.t / "x"), "--strategies", "random,meanstd", "--mc-passes", "1"],
        "--mc-passes 1 is too few for strategy 'meanstd'",
    ),
    (
        "loop: usimf eta=inf",
        lambda e: _loop(e, "--strategy", "usimf", "--option", "eta=inf"),
        "invalid option eta='inf'",
    ),
    ("loop: usimf eta=nan", lambda e: _loop(e, "--strategy", "usimf", "--option", "eta=nan"), "eta='nan'"),
    (
        "loop: usimc epsilon=-inf",
        lambda e: _loop(e, "--strategy", "usimc", "--option", "epsilon=-inf"),
        "epsilon",
    ),
    (
        "loop: usimf query_size=0",
        lambda e: _loop(e, "--strategy", "usimf", "--option", "query_size=0"),
        "query_size='0'",
    ),
    (
        "train: a batch that cannot fit in memory",
        lambda e: ["train", str(e.plan), "-o", str(e.t / "o"), "--batch-size", str(10**7), "--devices", "1"],
        f"--batch-size {10**7}: a training step needs at least",
    ),
    (
        "loop: a batch that cannot fit in memory",
        lambda e: _loop(e, "--batch-size", str(10**7), "--initial", "8", "--budget", "4", "--rounds", "1"),
        "more than the",
    ),
    ("train: negative seed", lambda e: ["train", str(e.plan), "-o", str(e.t / "o"), "--seed", "-1"], "--seed"),
    (
        "train: seed beyond 2**63-1",
        lambda e: ["train", str(e.plan), "-o", str(e.t / "o"), "--seed", str(2**63)],
        "--seed",
    ),
    ("loop: seed beyond 2**63-1", lambda e: _loop(e, "--seed", str(2**63)), "seed"),
    ("demo-data: seed beyond 2**63-1", lambda e: ["demo-data", str(e.t / "d"), "--seed", str(2**63)], "--seed"),
    ("train: epochs 0", lambda e: ["train", str(e.plan), "-o", str(e.t / "o"), "--epochs", "0"], "--epochs"),
    (
        "train: iterations 0",
        lambda e: ["train", str(e.plan), "-o", str(e.t / "o"), "--iters-per-epoch", "0"],
        "--iters-per-epoch",
    ),
    (
        "train: batch size 0",
        lambda e: ["train", str(e.plan), "-o", str(e.t / "o"), "--batch-size", "0"],
        "--batch-size",
    ),
    ("train: negative learning rate", lambda e: ["train", str(e.plan), "-o", str(e.t / "o"), "--lr", "-0.1"], "--lr"),
    ("train: devices 'many'", lambda e: ["train", str(e.plan), "-o", str(e.t / "o"), "--devices", "many"], "--devices"),
    (
        "train: unknown Lightning strategy",
        lambda e: ["train", str(e.plan), "-o", str(e.t / "o"), "--ddp-strategy", "warp"],
        "warp",
    ),
    (
        "train: unknown precision",
        lambda e: ["train", str(e.plan), "-o", str(e.t / "o"), "--precision", "7-bit"],
        "7-bit",
    ),
    (
        "train: --resume without a checkpoint",
        lambda e: ["train", str(e.plan), "-o", str(e.t / "o"), "--resume"],
        "no checkpoint to resume from",
    ),
    (
        "train: --init missing",
        lambda e: ["train", str(e.plan), "-o", str(e.t / "o"), "--init", str(e.t / "w.pt")],
        "w.pt",
    ),
    (
        "train: --init not a checkpoint",
        lambda e: ["train", str(e.plan), "-o", str(e.t / "o"), "--init", str(e.file("w.pt", "garbage"))],
        "w.pt",
    ),
    ("train: -o is a file", lambda e: ["train", str(e.plan), "-o", str(e.file("occupied"))], "occupied"),
)

# --- alseg compare and redundancy-check -------------------------------------------------------------
cases(
    (
        "compare: unknown strategy",
        lambda e: ["compare", str(e.plan), "-o", str(e.t / "x"), "--strategies", "random,magic"],
        "magic",
    ),
    (
        "compare: empty strategy list",
        lambda e: ["compare", str(e.plan), "-o", str(e.t / "x"), "--strategies", ","],
        "--strategies",
    ),
    ("compare: seeds 0", lambda e: ["compare", str(e.plan), "-o", str(e.t / "x"), "--seeds", "0"], "--seeds"),
    ("compare: jobs 0", lambda e: ["compare", str(e.plan), "-o", str(e.t / "x"), "--jobs", "0"], "--jobs"),
    ("compare: budget 0", lambda e: ["compare", str(e.plan), "-o", str(e.t / "x"), "--budget", "0"], "--budget"),
    (
        "compare: unknown option key",
        lambda e: ["compare", str(e.plan), "-o", str(e.t / "x"), "--strategies", "usimf", "--option", "nope=1"],
        "nope",
    ),
    ("compare: -o is a file", lambda e: ["compare", str(e.plan), "-o", str(e.file("occupied"))], "occupied"),
    ("compare: plan folder missing", lambda e: ["compare", str(e.t / "nowhere"), "-o", str(e.t / "x")], "nowhere"),
    (
        "compare: initial larger than the pool",
        lambda e: [
            "compare",
            str(e.plan),
            "-o",
            str(e.t / "x"),
            "--strategies",
            "random",
            "--seeds",
            "1",
            "--initial",
            "100000",
        ],
        "--initial",
    ),
    (
        "compare: unknown test case",
        lambda e: ["compare", str(e.plan), "-o", str(e.t / "x"), "--strategies", "random", "--test-cases", "nope_7"],
        "--test-cases: 'nope_7'",
    ),
    ("redundancy: not a plan folder", lambda e: ["redundancy-check", str(e.t)], "plans.json"),
    (
        "redundancy: strategy random",
        lambda e: ["redundancy-check", str(e.plan), *SMALL, "--strategy", "random"],
        "usimf or usimc",
    ),
    ("redundancy: copies 0", lambda e: ["redundancy-check", str(e.plan), *SMALL, "--copies", "0"], "--copies"),
    ("redundancy: budget 0", lambda e: ["redundancy-check", str(e.plan), *SMALL, "--budget", "0"], "--budget"),
    (
        "redundancy: negative query size",
        lambda e: ["redundancy-check", str(e.plan), *SMALL, "--query-size", "-1"],
        "--query-size",
    ),
    ("redundancy: unknown case", lambda e: ["redundancy-check", str(e.plan), *SMALL, "--case", "nobody"], "nobody"),
    ("redundancy: cases 0", lambda e: ["redundancy-check", str(e.plan), *SMALL, "--cases", "0"], "--cases"),
    (
        "redundancy: cases not a number or list",
        lambda e: ["redundancy-check", str(e.plan), *SMALL, "--cases", "nobody,none"],
        "nobody",
    ),
    (
        "redundancy: unknown kernel",
        lambda e: ["redundancy-check", str(e.plan), *SMALL, "--kernels", "raw,gauss"],
        "gauss",
    ),
    (
        "redundancy: checkpoint missing",
        lambda e: ["redundancy-check", str(e.plan), *SMALL, "--checkpoint", str(e.t / "m.pt")],
        "m.pt",
    ),
    (
        "redundancy: checkpoint garbage",
        lambda e: ["redundancy-check", str(e.plan), *SMALL, "--checkpoint", str(e.file("m.pt", "zz"))],
        "m.pt",
    ),
    ("redundancy: unknown option", lambda e: ["redundancy-check", str(e.plan), *SMALL, "--option", "nope=2"], "nope"),
)

# --- alseg report ------------------------------------------------------------------------------------
cases(
    ("report: folder missing", lambda e: ["report", str(e.t / "nowhere"), "-o", str(e.t / "rep")], "nowhere"),
    ("report: no runs in the folder", lambda e: ["report", str(e.t), "-o", str(e.t / "rep")], "no"),
    ("report: -o is a file", lambda e: ["report", str(e.run), "-o", str(e.file("occupied"))], "occupied"),
    (
        "report: run with garbage config.json",
        lambda e: ["report", str(_damaged(e, "config.json", "{")), "-o", str(e.t / "rep")],
        "config.json",
    ),
    (
        "report: run with garbage metrics.csv",
        lambda e: ["report", str(_damaged(e, "metrics.csv", "a,b\n1")), "-o", str(e.t / "rep")],
        "metrics.csv",
    ),
    (
        "report: run with garbage round record",
        lambda e: ["report", str(_damaged(e, "rounds/round_001.json", "{")), "-o", str(e.t / "rep")],
        "round_001.json",
    ),
)

# --- alseg predict ------------------------------------------------------------------------------------
cases(
    (
        "predict: model missing",
        lambda e: ["predict", str(e.t / "nowhere"), "-i", str(e.image), "-o", str(e.t / "p")],
        "nowhere",
    ),
    (
        "predict: model folder is not a run",
        lambda e: ["predict", str(e.t), "-i", str(e.image), "-o", str(e.t / "p")],
        "neither a run directory (config.json) nor an 'alseg train' output",
    ),
    (
        "predict: part beyond the parts",
        lambda e: [
            "predict",
            str(e.run),
            "-i",
            str(e.image),
            "-o",
            str(e.t / "p"),
            "--num-parts",
            "2",
            "--part-id",
            "2",
        ],
        "--part-id 2",
    ),
    (
        "predict: round beyond the run",
        lambda e: ["predict", str(e.run), "--round", "9", "-i", str(e.image), "-o", str(e.t / "p")],
        "--round",
    ),
    (
        "predict: input missing",
        lambda e: ["predict", str(e.run), "-i", str(e.t / "x.nii.gz"), "-o", str(e.t / "p")],
        "x.nii.gz",
    ),
    (
        "predict: input not an image",
        lambda e: ["predict", str(e.run), "-i", str(e.file("x.nii.gz", "text")), "-o", str(e.t / "p")],
        "x.nii.gz",
    ),
    (
        "predict: input a text file",
        lambda e: ["predict", str(e.run), "-i", str(e.file("notes.txt")), "-o", str(e.t / "p")],
        "notes.txt",
    ),
    (
        "predict: empty input folder",
        lambda e: ["predict", str(e.run), "-i", str((e.t / "empty").mkdir() or e.t / "empty"), "-o", str(e.t / "p")],
        "empty",
    ),
    (
        "predict: devices 'x'",
        lambda e: ["predict", str(e.run), "-i", str(e.image), "-o", str(e.t / "p"), "--devices", "x"],
        "--devices",
    ),
    (
        "predict: -o is a file",
        lambda e: ["predict", str(e.run), "-i", str(e.image), "-o", str(e.file("occupied"))],
        "occupied",
    ),
    (
        "predict: truncated checkpoint",
        lambda e: [
            "predict",
            str(_damaged(e, "checkpoints/round_001.ckpt", "x")),
            "-i",
            str(e.image),
            "-o",
            str(e.t / "p"),
        ],
        "round_001.ckpt",
    ),
    (
        "predict: run without plans",
        lambda e: ["predict", str(_damaged(e, "plans.json", delete=True)), "-i", str(e.image), "-o", str(e.t / "p")],
        "plans.json",
    ),
    # outputs never overwrite inputs (all refused before the model is loaded)
    (
        "predict: -o is the input folder",
        lambda e: ["predict", str(e.run), "-i", str(_images(e)), "-o", str(_images(e))],
        "holds input images — predictions could replace them",
    ),
    (
        "predict: -o holds the input file",
        lambda e: ["predict", str(e.run), "-i", str(_images(e) / e.image.name), "-o", str(_images(e))],
        "--overwrite",
    ),
    (
        "predict: -o is the input folder, given with a trailing ./",
        lambda e: ["predict", str(e.run), "-i", str(_images(e)), "-o", str(_images(e) / ".")],
        "holds input images",
    ),
    (
        "predict: -o is a dataset's labelsTr",
        lambda e: ["predict", str(e.run), "-i", str(e.image), "-o", str(e.data / "labelsTr")],
        "lies inside the dataset folder labelsTr",
    ),
    (
        "predict: -o is a dataset's imagesTs, the input",
        lambda e: ["predict", str(e.run), "-i", str(e.data / "imagesTs"), "-o", str(e.data / "imagesTs")],
        "imagesTs",
    ),
    (
        "predict: -o below a dataset's imagesTr",
        lambda e: ["predict", str(e.run), "-i", str(e.image), "-o", str(e.data / "imagesTr" / "pred")],
        "choose an output folder outside the dataset",
    ),
    (
        "predict: -o is a dataset's labelsTr, even with --overwrite",
        lambda e: ["predict", str(e.run), "-i", str(e.data), "-o", str(e.data / "labelsTr"), "--overwrite"],
        "labelsTr",
    ),
)

# --- alseg export-nnunet ---------------------------------------------------------------------------------
cases(
    ("export: run missing", lambda e: ["export-nnunet", str(e.t / "nowhere"), "-o", str(e.t / "nn")], "nowhere"),
    (
        "export: not a run",
        lambda e: ["export-nnunet", str(e.t), "-o", str(e.t / "nn")],
        "not a run directory (no config.json)",
    ),
    (
        "export: dataset id 0",
        lambda e: ["export-nnunet", str(e.run), "-o", str(e.t / "nn"), "--dataset-id", "0"],
        "--dataset-id",
    ),
    (
        "export: dataset id 1000",
        lambda e: ["export-nnunet", str(e.run), "-o", str(e.t / "nn"), "--dataset-id", "1000"],
        "--dataset-id",
    ),
    (
        "export: name with a slash",
        lambda e: ["export-nnunet", str(e.run), "-o", str(e.t / "nn"), "--name", "a/b"],
        "--name",
    ),
    (
        "export: name with spaces",
        lambda e: ["export-nnunet", str(e.run), "-o", str(e.t / "nn"), "--name", "my data"],
        "--name",
    ),
    ("export: -o is a file", lambda e: ["export-nnunet", str(e.run), "-o", str(e.file("occupied"))], "occupied"),
    (
        "export: state.json garbage",
        lambda e: ["export-nnunet", str(_damaged(e, "state.json", "{")), "-o", str(e.t / "nn")],
        "state.json",
    ),
)

# --- demo-data and demo ---------------------------------------------------------------------------------
cases(
    ("demo-data: cases 0", lambda e: ["demo-data", str(e.t / "d"), "--cases", "0"], "--cases"),
    ("demo-data: dims 4", lambda e: ["demo-data", str(e.t / "d"), "--dims", "4"], "--dims"),
    ("demo-data: unknown difficulty", lambda e: ["demo-data", str(e.t / "d"), "--difficulty", "medium"], "medium"),
    ("demo-data: negative test cases", lambda e: ["demo-data", str(e.t / "d"), "--test-cases", "-1"], "--test-cases"),
    ("demo-data: out is a file", lambda e: ["demo-data", str(e.file("occupied"))], "occupied"),
    ("demo: unknown strategy", lambda e: ["demo", "-o", str(e.t / "demo"), "--strategy", "magic"], "magic"),
    ("demo: rounds 0", lambda e: ["demo", "-o", str(e.t / "demo"), "--rounds", "0"], "--rounds"),
    ("demo: -o is a file", lambda e: ["demo", "-o", str(e.file("occupied"))], "occupied"),
)


@pytest.fixture(scope="module")
def base(finished_run) -> tuple[Path, Path, Path]:
    return finished_run


def test_the_battery_is_large():
    assert len(CASES) >= 120
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("c", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_line_exit_2(c: Case, base, tmp_path: Path, capsys):
    data, plan, run = base
    env = Env(data, plan, run, tmp_path)
    argv = c.argv(env)
    code, out, err = run_cli(argv, capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert code == 2, (code, out[-500:], err[-500:])
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert c.expect in lines[0], (c.expect, lines[0])
