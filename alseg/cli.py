"""The ``alseg`` command line. Thin: parse, call the library, print; errors become one line + exit 2."""

from __future__ import annotations

import functools
import inspect
import logging
import shlex
import sys
import warnings
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from alseg import __version__
from alseg.active.oracles.registry import ORACLES
from alseg.active.rundir import RunDir
from alseg.active.settings import ConfigName, LoopSettings, load_settings_file
from alseg.dataset.workers import watch_from_env
from alseg.errors import AlsegError
from alseg.runtime import tune_process
from alseg.seeds import MAX_SEED

EXIT_CODES_HELP = (
    "Exit codes: 0 done; 2 a user error (one line on stderr naming the file or option and the fix); "
    "3 'alseg loop --oracle files' waits for annotations (annotate the package it names, then run the same "
    "command with --resume); 130 interrupted (Ctrl-C). Results go to stdout; progress, warnings and logs to stderr."
)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Click's plain help: flags shown as flags, text wrapped between words at any width, nothing cut off
    rich_markup_mode=None,
    help="Active learning for medical image segmentation on a self-configuring, nnU-Net-compatible pipeline.",
    epilog=EXIT_CODES_HELP,
)
# results and messages are never wrapped: a path or a command printed for copying stays one line,
# also when stdout is a file or a pipe (rich would wrap at 80 columns there); tables keep the width
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def _print_version(value: bool) -> None:
    if value:
        out.print(f"alseg {__version__}", markup=False, highlight=False)
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print alseg's version and exit."),
    ] = False,
) -> None:
    # the options of 'alseg' itself, before the command; --debug (tracebacks) is read by main()
    pass


DEFAULT_DEMO_DIR = Path("alseg_demo")
EXIT_USER_ERROR = 2
EXIT_WAITING = 3
"""``alseg loop`` stopped to wait for a person's annotations (the files oracle); resume later."""
DEMO_BUDGET = 40
"""Items of the demo's initial set and of each round: with the easy synthetic data and 2 x 60 iterations
of batch 8 per round, both classes pass Dice 0.6 within 3 rounds (README, demo section)."""


@app.command("demo-data")
def demo_data(
    out_dir: Path = typer.Argument(..., help="Folder to write the dataset into (MSD layout)."),
    cases: int = typer.Option(24, "--cases", min=1, help="Number of labelled training cases."),
    seed: int = typer.Option(0, "--seed", min=0, max=MAX_SEED, help="Random seed; the same seed gives the same data."),
    dims: int = typer.Option(3, "--dims", min=2, max=3, help="3: volumes; 2: single-slice images (a 2D-only dataset)."),
    ct: bool = typer.Option(False, "--ct", help="Anisotropic CT-like volumes in Hounsfield units."),
    test_images: int = typer.Option(
        4, "--test-images", min=0, help="Number of unlabelled scans in imagesTs/ (to try 'alseg predict' on)."
    ),
    old_test_cases: Optional[int] = typer.Option(None, "--test-cases", min=0, hidden=True, help="Old --test-images."),
    difficulty: str = typer.Option(
        "hard", "--difficulty", help="hard: Hippocampus-like contrast; easy: the demo's, learnt in minutes on a CPU."
    ),
) -> None:
    """Write the built-in synthetic dataset, shaped like MSD Hippocampus (or CT-like with --ct)."""
    # lazy: each command loads only what it needs, so 'alseg --help' and option errors stay fast
    from alseg.dataset.synthetic import generate_dataset

    if dims not in (2, 3):
        raise AlsegError(f"--dims must be 2 or 3, got {dims}")
    if cases < 2:
        raise AlsegError(f"--cases must be at least 2, got {cases}")
    if old_test_cases is not None:  # the old name: one meaning per option name across commands
        _warn_renamed(
            "warning: 'alseg demo-data --test-cases N' is now '--test-images N' (a count of scans in imagesTs/); "
            "'--test-cases ID,ID,...' of 'alseg loop' and 'compare' names the test cases"
        )
        test_images = old_test_cases
    root = generate_dataset(
        out_dir, cases=cases, seed=seed, dims=dims, ct=ct, test_cases=test_images, difficulty=difficulty
    )
    out.print(f"wrote {cases} training and {test_images} test scans to [bold]{root}[/bold]")


def _usable_folder(path: Path, option: str = "-o") -> None:
    """An output folder that cannot be made is one line before any work (not after it)."""
    for p in [path, *path.parents]:
        if p.exists():
            if not p.is_dir():
                raise AlsegError(f"is a file, not a folder — choose a folder for {option}", p)
            return


def _check(dataset: Path, quiet: bool = False) -> None:
    # lazy: each command loads only what it needs, so 'alseg --help' and option errors stay fast
    from alseg.dataset.raw import read_dataset
    from alseg.dataset.validate import check_dataset

    info = read_dataset(dataset)
    result = check_dataset(info, show_progress=not quiet)
    for w in result.warnings:
        err.print(f"warning: {w}", markup=False, highlight=False, soft_wrap=True)
    if not result.ok:
        for p in result.problems:
            err.print(f"error: {p}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2)
    if quiet:
        return
    table = Table(title=f"{info.name} ({info.layout} layout, {len(result.cases)} cases) — OK")
    for col in ("", "min", "median", "max"):
        table.add_column(col, justify="right")
    shapes = [c.shape for c in result.cases]
    spacings = [c.spacing for c in result.cases]
    fmt = lambda a: " x ".join(f"{v:g}" for v in a)  # noqa: E731
    # lazy: each command loads only what it needs, so 'alseg --help' and option errors stay fast
    import numpy as np

    table.add_row("shape (z, y, x)", fmt(np.min(shapes, 0)), fmt(np.median(shapes, 0)), fmt(np.max(shapes, 0)))
    table.add_row("spacing mm", fmt(np.min(spacings, 0)), fmt(np.median(spacings, 0)), fmt(np.max(spacings, 0)))
    out.print(table)
    counts = Table(title="voxels per class")
    counts.add_column("label")
    counts.add_column("name")
    counts.add_column("voxels", justify="right")
    counts.add_column("cases with it", justify="right")
    for k, name in sorted(info.labels.items()):
        total = sum(c.voxels_per_class.get(k, 0) for c in result.cases)
        present = sum(1 for c in result.cases if c.voxels_per_class.get(k, 0) > 0)
        counts.add_row(str(k), name, f"{total:,}", f"{present}/{len(result.cases)}")
    out.print(counts)
    out.print(f"channels: {', '.join(f'{k}={v}' for k, v in sorted(info.channel_names.items()))}")


@app.command()
def check(
    dataset: Path = typer.Argument(..., help="Dataset folder (MSD or nnU-Net v2 raw layout)."),
) -> None:
    """Validate a dataset: files, geometry, labels, NaNs, channels; print a summary."""
    _check(dataset)


@app.command()
def plan(
    dataset: Path = typer.Argument(..., help="Dataset folder (MSD or nnU-Net v2 raw layout)."),
    out_dir: Path = typer.Option(..., "-o", "--out", help="Folder for fingerprint.json and plans.json."),
    export_nnunet: bool = typer.Option(
        False,
        "--export-nnunet",
        help="Also write nnU-Net v2's OUT/nnUNet_preprocessed/DatasetXXX_Name/ (plans, fingerprint, dataset.json).",
    ),
    nnunet_id: Optional[int] = typer.Option(
        None,
        "--nnunet-id",
        min=1,
        max=999,
        help="nnU-Net dataset id XXX of the export (default: the folder's, else 999).",
    ),
    workers: Optional[int] = typer.Option(
        None, "--workers", min=0, help="Processes for the fingerprint (default: all cores)."
    ),
) -> None:
    """Fingerprint a dataset and configure it as nnU-Net v2 would; write the plan files."""
    # lazy: each command loads only what it needs, so 'alseg --help' and option errors stay fast
    from alseg.plans.models import FINGERPRINT_FILE, PLANS_FILE
    from alseg.plans.planner import plan_dataset, summarize_plans

    _usable_folder(out_dir)
    _check(dataset, quiet=True)
    plans = plan_dataset(dataset, out_dir, export_nnunet=export_nnunet, workers=workers, nnunet_id=nnunet_id)
    out.print(summarize_plans(plans))
    written = [str(out_dir / w) for w in (FINGERPRINT_FILE, PLANS_FILE)]
    if export_nnunet:
        written.append(f"{out_dir / 'nnUNet_preprocessed'}/ (nnU-Net v2's plans, fingerprint and dataset.json)")
    out.print(f"wrote {', '.join(written)}")


@app.command()
def preprocess(
    plan_dir: Path = typer.Argument(..., help="Folder written by 'alseg plan'."),
    config: list[str] = typer.Option(["2d"], "--config", "-c", help="Configuration(s) to preprocess: 2d, 3d_fullres."),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, help="Processes (default: all cores)."),
) -> None:
    """Crop, resample and normalise every case into the plan folder's cache (idempotent, resumable)."""
    # lazy: each command loads only what it needs, so 'alseg --help' and option errors stay fast
    from alseg.data.cache import build_cache
    from alseg.plans.models import load_plans, plans_file

    plans = load_plans(plans_file(plan_dir))
    for name in config:
        cache = build_cache(plans, name, plan_dir, workers=workers)
        n_unlabelled = len(cache.unlabelled_case_ids())
        images_only = f" ({n_unlabelled} of {len(cache.case_ids())} cases images only)" if n_unlabelled else ""
        out.print(f"{name}: cache complete in {cache.folder}{images_only}")


def _int_or_auto(value: str, flag: str) -> int | str:
    if value == "auto" or value.isdigit():
        return int(value) if value.isdigit() else value
    raise AlsegError(f"{flag} must be a number or 'auto', got '{value}'")


@app.command()
def train(
    plan_dir: Path = typer.Argument(..., help="Folder written by 'alseg plan' (preprocessed on the fly if needed)."),
    out_dir: Path = typer.Option(..., "-o", "--out", help="Output folder: metrics.csv, model.ckpt, logs."),
    config: str = typer.Option("2d", "--config", "-c", help="2d or 3d_fullres."),
    fold: int = typer.Option(0, "--fold", help="Held-out fold of nnU-Net's 5-fold split."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="Epochs (plan default: 1000)."),
    iters_per_epoch: Optional[int] = typer.Option(
        None, "--iters-per-epoch", min=1, help="Iterations per epoch (plan: 250)."
    ),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="Override the plan's batch size."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Override the initial learning rate."),
    devices: str = typer.Option("auto", "--devices", help="Lightning devices: a number or 'auto'."),
    strategy: str = typer.Option(
        "auto", "--ddp-strategy", help="Lightning's distributed strategy for several devices, e.g. ddp."
    ),
    old_strategy: Optional[str] = typer.Option(None, "--strategy", hidden=True, help="Old --ddp-strategy."),
    precision: Optional[str] = typer.Option(
        None, "--precision", help="e.g. 16-mixed (default: 16-mixed on GPU, 32 on CPU)."
    ),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, help="Data loader processes."),
    seed: int = typer.Option(0, "--seed", min=0, max=MAX_SEED),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT/checkpoints/last.ckpt."),
    init_checkpoint: Optional[Path] = typer.Option(None, "--init", help="Start from these weights (fine-tuning)."),
) -> None:
    """Train on all training cases of a fold and evaluate on the held-out fold (the full-data reference)."""
    # lazy: each command loads only what it needs, so 'alseg --help' and option errors stay fast
    from alseg.data.cache import build_cache
    from alseg.model.train import train as run_training
    from alseg.model.trainer import TrainerSettings, check_batch_memory, check_trainer_settings
    from alseg.plans.models import load_plans, plans_file

    if lr is not None and not 0 < lr < float("inf"):
        raise AlsegError(f"--lr must be a positive, finite learning rate, got {lr}")
    if old_strategy is not None:  # the old name: one meaning per option name across commands
        _warn_renamed(
            "warning: 'alseg train --strategy' is now '--ddp-strategy' (Lightning's distributed strategy); "
            "'--strategy' of 'alseg loop', 'compare' and 'demo' names the selection strategy"
        )
        strategy = old_strategy
    check_trainer_settings(  # Lightning's own checks, before any preprocessing or training
        TrainerSettings(devices=_int_or_auto(devices, "--devices"), strategy=strategy, precision=precision)
    )
    plans = load_plans(plans_file(plan_dir))
    if batch_size is not None and config in plans.configurations:  # a batch that cannot fit: before preprocessing
        check_batch_memory(plans.configurations[config], batch_size, devices)
    cache = build_cache(plans, config, plan_dir)
    final = run_training(
        plans,
        config,
        cache,
        out_dir,
        fold=fold,
        epochs=epochs,
        iters_per_epoch=iters_per_epoch,
        devices=_int_or_auto(devices, "--devices"),
        strategy=strategy,
        precision=precision,
        resume=resume,
        init_checkpoint=init_checkpoint,
        seed=seed,
        overrides={"batch_size": batch_size, "lr": lr},
        num_workers=workers,
    )
    dice = ", ".join(f"{k} {v:.3f}" for k, v in final.items() if k.startswith("dice"))
    out.print(f"test Dice (fold {fold}): {dice}; written to {out_dir}")


def _option_pairs(items: list[str]) -> dict[str, str]:
    """``--option key=value`` pairs as strings; :class:`~alseg.active.settings.LoopSettings` (or
    :func:`~alseg.strategies.typed_options`) types and checks them against the strategy."""
    opts: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise AlsegError(f"--option expects key=value, got '{item}'")
        key, value = item.split("=", 1)
        if not key.strip():
            raise AlsegError(f"--option expects key=value, got '{item}' (no key)")
        opts[key.strip()] = value.strip()
    return opts


def _warn_renamed(message: str) -> None:
    """One line on stderr for an option used under its old name (the command still runs)."""
    err.print(message, markup=False, highlight=False, soft_wrap=True)


def _h(name: str) -> str:
    """Help text of a loop option: the settings model's description (one source for both)."""
    return LoopSettings.model_fields[name].description or ""


def _d(name: str):
    """Default of a loop option, from the settings model."""
    return LoopSettings.model_fields[name].get_default(call_default_factory=True)


def _opt(name: str, *decls: str, kind=None, **kw) -> tuple[object, object]:
    """A loop setting as a command-line option: the flag (``--name``), the settings model's help
    and default; ``kind`` when the command line reads it as another type (a string ``ID,ID,...``)."""
    field = LoopSettings.model_fields[name]
    flags = decls or ("--" + name.replace("_", "-"),)
    return Annotated[kind or field.annotation, typer.Option(*flags, help=_h(name), **kw)], _d(name)


OracleName = Enum("OracleName", {name: name for name in ORACLES}, type=str)
"""``--oracle``'s choices: the registered oracles' names (Typer shows and checks them)."""

LOOP_OPTIONS: dict[str, tuple[object, object]] = {
    "rounds": _opt("rounds"),
    "budget": _opt("budget"),
    "initial": _opt("initial"),
    "config": (_opt("config", "--config", "-c")[0], ConfigName(_d("config"))),
    "item_size": _opt("item_size", kind=Optional[str], metavar="Z,Y,X"),
    "fold": _opt("fold"),
    "test_cases": _opt("test_cases", kind=Optional[str], metavar="ID,ID,..."),
    "epochs": _opt("epochs"),
    "initial_epochs": _opt("initial_epochs"),
    "iters_per_epoch": _opt("iters_per_epoch"),
    "batch_size": _opt("batch_size"),
    "mc_passes": _opt("mc_passes"),
    "candidates": _opt("candidates"),
    "devices": _opt("devices"),
}
"""The loop settings ``loop`` and ``compare`` both take, declared once: flag, type, help and
default come from :class:`LoopSettings` (:func:`with_loop_options` adds them to a command)."""


def with_loop_options(fn):
    """Give a command the :data:`LOOP_OPTIONS` in place of its ``loop_values`` parameter, and pass
    their values to it as that one dict (Typer reads the parameters from the signature)."""
    signature = inspect.signature(fn, eval_str=True)
    params = []
    for param in signature.parameters.values():
        if param.name != "loop_values":
            params.append(param)
            continue
        for name, (annotation, default) in LOOP_OPTIONS.items():
            params.append(inspect.Parameter(name, param.kind, default=default, annotation=annotation))

    @functools.wraps(fn)
    def command(*args, **kwargs):
        loop_values = {name: kwargs.pop(name) for name in LOOP_OPTIONS}
        return fn(*args, loop_values=loop_values, **kwargs)

    command.__signature__ = signature.replace(parameters=params)
    return command


OracleOpt = Annotated[OracleName, typer.Option("--oracle", help=_h("oracle"))]
WorkersOpt = Annotated[
    Optional[int],
    typer.Option(
        "--workers",
        min=0,
        help="Data loader processes (default: 2 on CPU; not stored). Each draws its own seeded patches: "
        "re-run with the same value to get the same numbers.",
    ),
]
OptionOpt = Annotated[list[str], typer.Option("--option", help=_h("strategy_options"))]


def _over_settings_file(
    ctx: typer.Context, values: dict, settings_file: Path | None, strategies: list[str] | None = None
) -> tuple[dict, set[str]]:
    """``values`` (``loop``'s or ``compare``'s options) over a settings file's: what the user typed
    wins, the file fills the rest. Also the names that count as given (typed, or all with a file).
    ``strategies``: a grid's, whose options the file may hold."""
    typed = _given(ctx, [k if k != "strategy_options" else "option" for k in values])
    given = {("strategy_options" if k == "option" else k) for k in typed}
    if settings_file is None:
        return values, given
    base = load_settings_file(settings_file, strategies).model_dump()
    merged = {**base, **{k: v for k, v in values.items() if k in given}}
    return merged, set(merged)


def _given(ctx: typer.Context, names: list[str]) -> set[str]:
    """The options a user typed (not defaults): what --resume compares with the stored run."""
    sources = {n: ctx.get_parameter_source(n) for n in names}
    return {n for n, src in sources.items() if src is not None and src.name != "DEFAULT"}


LOOP_EXIT_CODES_HELP = (
    "Exit codes: 0 the run is finished; 2 a user error (one line on stderr naming the file or option and the fix); "
    "3 waiting for annotations (--oracle files): the last line names the package folder RUN/annotate/round_XXX — "
    "annotate it as its README.txt says, then run the same command with --resume; repeat until exit 0; "
    "130 interrupted (Ctrl-C): the same command with --resume continues. Each round's result is a line on stdout; "
    "progress and logs go to stderr."
)


@app.command(epilog=LOOP_EXIT_CODES_HELP)
@with_loop_options
def loop(
    ctx: typer.Context,
    target: Annotated[
        Path, typer.Argument(metavar="DATASET_OR_PLANDIR", help="A dataset (planned on the fly) or a plan folder.")
    ],
    run_dir: Annotated[Path, typer.Option("-o", "--out", help="Run directory.")],
    strategy: Annotated[str, typer.Option("--strategy", "-s", help=_h("strategy"))] = _d("strategy"),
    seed: Annotated[int, typer.Option("--seed", help=_h("seed"))] = _d("seed"),
    loop_values: dict = None,  # the LOOP_OPTIONS (with_loop_options)
    oracle: OracleOpt = OracleName(_d("oracle")),
    workers: WorkersOpt = None,
    option: OptionOpt = [],  # noqa: B006 (Typer reads the default)
    settings_file: Annotated[
        Optional[Path],
        typer.Option(
            "--settings",
            help="Start from the options in this JSON file (as 'alseg compare' writes); options typed here override it.",
        ),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in -o exactly where it stopped (or start it).")
    ] = False,
) -> None:
    """Run active learning: train, score the pool, select, annotate, fine-tune — resumable."""
    # lazy: each command loads only what it needs, so 'alseg --help' and option errors stay fast
    from alseg.active.ddp import FollowerDriver, LeaderGone, launched_rank
    from alseg.active.loop import AnnotationIncomplete, LoopDriver

    values = dict(
        loop_values,
        strategy=strategy,
        seed=seed,
        oracle=oracle.value,
        strategy_options=_option_pairs(option),
    )
    values, given = _over_settings_file(ctx, values, settings_file)
    settings = LoopSettings.checked(**values)
    if launched_rank() > 0:  # a copy Lightning started for another device: it follows rank 0 silently
        try:
            FollowerDriver(target, run_dir, settings, workers=workers).run_all()
        except LeaderGone:
            pass
        return
    driver = LoopDriver(target, run_dir, settings, resume=resume, workers=workers, given=given)
    try:
        state = driver.run_all()
    except AnnotationIncomplete as e:
        for p in e.problems:
            err.print(f"error: {p}", markup=False, highlight=False, soft_wrap=True)
        rejected = f" in {len(e.problems)} file(s) named above" if e.problems else ""
        out.print(
            f"round {e.round}: of {e.n_selected} selected item(s), {len(e.accepted)} accepted, {e.n_waiting} still "
            f"missing{_case_list(e.waiting_cases)}, {e.n_rejected} rejected{rejected}. "
            f"Annotate the items in {e.folder} (see {e.guide.name if e.guide else 'its files'}), then run the same "
            "command with --resume.",
            markup=False,
            highlight=False,
            soft_wrap=True,  # one line: scripts read the package path from it (exit code 3)
        )
        raise typer.Exit(2 if e.problems else EXIT_WAITING) from None
    out.print(
        f"finished {state.round} round(s): {len(state.labelled)} items labelled; see {RunDir(run_dir).metrics_path}"
    )


def _case_list(cases: list[str], most: int = 10) -> str:
    """`` (no label file for case a, b, ...)``: the cases a person has still to annotate."""
    if not cases:
        return ""
    shown = ", ".join(cases[:most]) + (f" and {len(cases) - most} more" if len(cases) > most else "")
    return f" (no label file for case {shown})"


@app.command()
@with_loop_options
def compare(
    ctx: typer.Context,
    target: Annotated[
        Path, typer.Argument(metavar="DATASET_OR_PLANDIR", help="A dataset (planned once) or a plan folder.")
    ],
    exp_dir: Annotated[
        Path, typer.Option("-o", "--out", help="Experiment folder: one run directory per strategy and seed.")
    ],
    strategies_: Annotated[str, typer.Option("--strategies", help="'all' or a comma-separated list.")] = "all",
    seeds: Annotated[int, typer.Option("--seeds", min=1, help="Seeds per strategy (0..N-1).")] = 3,
    loop_values: dict = None,  # the LOOP_OPTIONS (with_loop_options)
    workers: WorkersOpt = None,
    option: OptionOpt = [],  # noqa: B006 (Typer reads the default)
    settings_file: Annotated[
        Optional[Path],
        typer.Option(
            "--settings",
            help="Start from the loop options in this JSON file (a protocol; strategy and seed are the grid's); "
            "options typed here override it.",
        ),
    ] = None,
    shared_initial_round: Annotated[
        bool,
        typer.Option(
            "--shared-initial-round",
            help="Train round 0 once per seed and copy it into every strategy's run (it depends on the seed only).",
        ),
    ] = False,
    jobs: Annotated[
        int, typer.Option("--jobs", min=1, help="Runs in parallel (one GPU each when there are GPUs).")
    ] = 1,
    full: Annotated[bool, typer.Option("--full/--no-full", help="Also train the full-data reference.")] = True,
    executor: Annotated[
        str,
        typer.Option(
            "--executor", help="local: run the cells on this machine; slurm: submit them as one job array and return."
        ),
    ] = "local",
    gpus_per_job: Annotated[
        Optional[int],
        typer.Option("--gpus-per-job", help="GPUs per cell (default: 1; locally only when there are GPUs)."),
    ] = None,
    slurm_partition: Annotated[Optional[str], typer.Option("--slurm-partition", help="slurm: the partition.")] = None,
    cpus_per_job: Annotated[Optional[int], typer.Option("--cpus-per-job", help="slurm: CPUs per cell.")] = None,
    time_min: Annotated[
        Optional[int], typer.Option("--time-min", help="slurm: time limit per task in minutes (default 1440).")
    ] = None,
    mem_gb: Annotated[Optional[int], typer.Option("--mem-gb", help="slurm: memory per cell in GB.")] = None,
    slurm_option: Annotated[
        list[str],
        typer.Option("--slurm-option", metavar="KEY=VALUE", help="slurm: any other sbatch option (repeatable)."),
    ] = [],  # noqa: B006 (Typer reads the default)
) -> None:
    """Run strategies x seeds (resumable: finished runs are skipped) plus the full-data reference."""
    # lazy: each command loads only what it needs, so 'alseg --help' and option errors stay fast
    from alseg.active.experiments.compare import ExecutorOptions, parse_slurm_options, parse_strategies, run_compare

    executor_options = ExecutorOptions(
        executor=executor,
        gpus_per_job=gpus_per_job,
        partition=slurm_partition,
        cpus_per_job=cpus_per_job,
        time_min=time_min,
        mem_gb=mem_gb,
        slurm_options=parse_slurm_options(slurm_option),
    )
    executor_options.check()  # before any work
    names = parse_strategies(strategies_)
    values = dict(loop_values, strategy_options=_option_pairs(option))
    values, _ = _over_settings_file(ctx, values, settings_file, names)  # a protocol file: typed options override it
    settings = LoopSettings.checked(strategies=names, **values)  # the options typed for the grid's strategies
    cells = run_compare(
        target,
        exp_dir,
        names,
        seeds,
        settings,
        jobs=jobs,
        full_reference=full,
        workers=workers,
        executor=executor_options,
        shared_initial_round=shared_initial_round,
    )
    if executor_options.executor == "slurm":
        out.print(f"{len(cells)} runs in {exp_dir}; when 'alseg status {exp_dir}' shows them finished: alseg report")
        return
    out.print(f"{len(cells)} runs in {exp_dir}; render them with: alseg report {exp_dir} -o {exp_dir / 'report'}")


@app.command()
def status(
    exp_dir: Annotated[Path, typer.Argument(metavar="EXP", help="Experiment folder written by 'alseg compare'.")],
) -> None:
    """Where each cell of an 'alseg compare' grid stands: rounds finished, running, failed (last log line)."""
    # lazy: each command loads only what it needs, so 'alseg --help' and option errors stay fast
    from alseg.active.experiments.compare import SHARED_ROUND0, grid_status

    rows = grid_status(exp_dir)
    table = Table(title=str(exp_dir))
    for col in ("strategy", "seed", "rounds", "state", "last log line"):
        table.add_column(col, overflow="fold")
    for r in rows:
        rounds = f"{r.rounds_done}/{r.rounds_total}" if r.rounds_total is not None else f"{r.rounds_done}/?"
        table.add_row(r.strategy, "" if r.seed is None else str(r.seed), rounds, r.state, r.last_line)
    out.print(table)
    states = ("finished", "running", "failed", "requeued", "waiting", "damaged")
    parts = []
    for label, group in (
        ("cells", [r for r in rows if r.strategy != SHARED_ROUND0]),
        ("shared round 0", [r for r in rows if r.strategy == SHARED_ROUND0]),
    ):
        counts = {s: sum(r.state == s for r in group) for s in states}
        if group:
            parts.append(f"{label}: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    out.print("; ".join(parts), markup=False, highlight=False)


@app.command("redundancy-check")
def redundancy_check(
    plan_dir: Path = typer.Argument(..., help="Folder written by 'alseg plan'."),
    checkpoint: Optional[Path] = typer.Option(
        None, "--checkpoint", help="Model to use (e.g. RUN/checkpoints/round_000.ckpt); default: train one briefly."
    ),
    strategy: str = typer.Option("usimf", "--strategy", help="usimf or usimc."),
    copies: int = typer.Option(100, "--copies", min=1, help="How often one case's items are duplicated."),
    case_id: Optional[str] = typer.Option(None, "--case", help="The duplicated case (default: drawn at random)."),
    budget: int = typer.Option(100, "--budget", min=1),
    initial: int = typer.Option(100, "--initial", min=1),
    query_size: Optional[int] = typer.Option(
        1000, "--query-size", min=0, help="Q (the paper used 1000); 0 = elbow rule."
    ),
    seed: int = typer.Option(0, "--seed", min=0, max=MAX_SEED),
    train_epochs: int = typer.Option(1, "--train-epochs", min=1, help="Epochs when no checkpoint is given."),
    train_iters: int = typer.Option(
        50, "--train-iters", min=1, help="Iterations per epoch when no checkpoint is given."
    ),
    batch_size: Optional[int] = typer.Option(
        None, "--batch-size", min=1, help="Training batch when no checkpoint is given (default: the plan's)."
    ),
    save_model: Optional[Path] = typer.Option(
        None, "--save-model", help="Write the model used here (a --checkpoint for the next check)."
    ),
    mc_passes: int = typer.Option(10, "--mc-passes", min=1),
    option: list[str] = typer.Option([], "--option", help="USIM option key=value (repeatable)."),
    cases: str = typer.Option(
        "",
        "--cases",
        help="A number N of cases (drawn with --seed) or a comma list: duplicate each in turn with one model and one pass, comparing every USIMF variant and USIMC.",
    ),
    kernels: str = typer.Option(
        "",
        "--kernels",
        help="usimf: Fisher kernels to compare on the same scores, query set and embeddings, e.g. raw,cosine (the first is the main one).",
    ),
    json_out: Optional[Path] = typer.Option(
        None, "--json", help="Also write the full result (ids, shares, timings) to this JSON file."
    ),
) -> None:
    """The paper's Appendix E: duplicate one case 100x; share of duplicates in the query set vs the batch."""
    # lazy: each command loads only what it needs, so 'alseg --help' and option errors stay fast
    from alseg.active.experiments.redundancy import run_redundancy_check
    from alseg.atomic import atomic_write_json

    if strategy not in ("usimf", "usimc"):
        raise AlsegError(f"--strategy '{strategy}': the redundancy check is for usimf or usimc — choose one of them")
    from alseg.strategies import typed_options  # lazy, as the CLI's other imports: start-up time

    options = typed_options([strategy], _option_pairs(option))
    names = [k.strip() for k in kernels.split(",") if k.strip()]
    case_list = [c.strip() for c in cases.split(",") if c.strip()]
    study: list[str] | int | None = None
    if case_list:
        study = int(case_list[0]) if len(case_list) == 1 and case_list[0].isdigit() else case_list
    if study == 0:
        raise AlsegError("--cases 0 duplicates no case — give a number of cases ≥ 1 or a comma list of case ids")
    if names and strategy != "usimf":
        raise AlsegError(f"--kernels compares USIMF's Fisher kernels — use it with --strategy usimf, not '{strategy}'")
    for name in names:  # each kernel is a value of usimf's fisher_kernel option: checked as one
        typed_options(["usimf"], {"fisher_kernel": name})
    if names:
        options["fisher_kernel"] = names[0]
    result = run_redundancy_check(
        plan_dir,
        checkpoint,
        case_id=case_id,
        copies=copies,
        budget=budget,
        initial=initial,
        query_size=query_size or None,
        seed=seed,
        strategy=strategy,
        train_epochs=train_epochs,
        train_iters=train_iters,
        train_batch_size=batch_size,
        mc_passes=mc_passes,
        options=options,
        save_model=save_model,
        kernels=names[1:],
        cases=study,
    )
    if json_out is not None:
        atomic_write_json(json_out, result)
    if study is not None:
        _print_study(result)
        return
    table = Table(
        title=f"redundancy check: case {result['case_id']} x{result['copies']}, {result['strategy']}, Q={result['Q']}, B={result['budget']}"
    )
    table.add_column("share of the duplicated case in")
    table.add_column("measured", justify="right")
    table.add_column("paper (Hippocampus)", justify="right")
    table.add_row("unlabelled pool", f"{result['pool_share']:.0%}", "")
    table.add_row("query set (draws)", f"{result['query_share']:.0%}", "45%")
    table.add_row("batch, uniform from the query set", f"{result['uniform_share']:.0%}", "45%")
    table.add_row(
        f"batch, {result['strategy']} (FLQMI, {result['kernel']} kernel)", f"{result['batch_share']:.0%}", "18% (USIMF)"
    )
    for v in result["variants"]:
        table.add_row(f"batch, {result['strategy']} (FLQMI, {v['kernel']} kernel)", f"{v['batch_share']:.0%}", "")
    out.print(table)
    repeats = ", ".join(
        [
            f"{result['batch_repeats']} ({result['kernel']})",
            *(f"{v['batch_repeats']} ({v['kernel']})" for v in result["variants"]),
        ]
    )
    out.print(f"repeated content in the batch: {repeats} vs {result['uniform_repeats']} (uniform)")


def _print_study(result: dict) -> None:
    """Per case and as a distribution: shares of the duplicated case and repeats, per variant."""
    first = result["cases"][0]
    labels = list(first["variants"])
    table = Table(title=f"redundancy study: {len(result['cases'])} case(s) x{result['copies']}, B={result['budget']}")
    short = [k.removeprefix("usimf-").replace("multiset", "ms").replace("distinct", "dist") for k in labels]
    for col in ["case", "pool", "query", "uniform (rep)", *short]:
        table.add_column(col, justify="right")
    for r in result["cases"]:
        cells = [f"{r['variants'][k]['batch_share']:.0%} ({r['variants'][k]['batch_repeats']})" for k in labels]
        table.add_row(
            r["case_id"],
            f"{r['pool_share']:.0%}",
            f"{r['query_share']:.0%}",
            f"{r['uniform_share']:.0%} ({r['uniform_repeats']})",
            *cells,
        )
    out.print(table)
    summ = result["summary"]
    out.print(
        f"query share median {summ['query_share']['median']:.0%} (IQR {summ['query_share']['q1']:.0%}-{summ['query_share']['q3']:.0%})"
    )
    for k in labels:
        v = summ[k]
        out.print(
            f"{k}: batch share median {v['batch_share']['median']:.0%} (IQR {v['batch_share']['q1']:.0%}-"
            f"{v['batch_share']['q3']:.0%}), below the query share without repeats in "
            f"{v['cases_below_query_without_repeats']}/{len(result['cases'])} cases"
        )


@app.command()
def strategies() -> None:
    """List the selection strategies, where each comes from, and their options with defaults."""
    # lazy: each command loads only what it needs, so 'alseg --help' and option errors stay fast
    from alseg.strategies import available, describe

    for name in available():
        out.print(describe(name), highlight=False, markup=False, soft_wrap=True)


@app.command()
def report(
    exp_dirs: list[Path] = typer.Argument(..., help="Run or experiment directories (searched recursively)."),
    out_dir: Path = typer.Option(..., "-o", "--out", help="Report folder: report.html, summary.json, PNGs."),
    finished_only: bool = typer.Option(
        False, "--finished-only", help="Leave out runs still in progress (a grid not finished yet)."
    ),
    x_axis: str = typer.Option(
        "items",
        "--x-axis",
        help="items: curves and AUC vs labelled items; voxels: vs annotated voxels (to compare --item-size runs).",
    ),
) -> None:
    """Learning curves, AUC, pairwise penalty matrix and figures from the runs' recorded rounds."""
    # lazy: each command loads only what it needs, so 'alseg --help' and option errors stay fast
    from alseg.report import build_report
    from alseg.report.curves import X_AXES

    if x_axis not in X_AXES:
        raise AlsegError(f"--x-axis must be one of {', '.join(X_AXES)}, got {x_axis!r}")
    build_report(list(exp_dirs), out_dir, finished_only=finished_only, x_axis=x_axis)
    out.print(f"wrote {out_dir / 'report.html'} and {out_dir / 'summary.json'}")


@app.command()
def demo(
    out_dir: Path = typer.Option(DEFAULT_DEMO_DIR, "-o", "--out", help="Where the demo writes its data and results."),
    strategy: str = typer.Option("random", "--strategy", "-s", help="Selection strategy of the demo loop."),
    rounds: int = typer.Option(3, "--rounds", min=1),
) -> None:
    """The main job on built-in data: synthetic dataset → check → plan → active loop → report."""
    # lazy: each command loads only what it needs, so 'alseg --help' and option errors stay fast
    from alseg.active.loop import LoopDriver
    from alseg.dataset.synthetic import generate_dataset
    from alseg.plans.planner import plan_dataset, summarize_plans
    from alseg.report import build_report
    from alseg.strategies import parse_strategy_options

    _usable_folder(out_dir)
    parse_strategy_options(strategy, {})  # an unknown strategy fails before the data is made
    data = out_dir / "data"
    generate_dataset(data, difficulty="easy")
    out.print(f"[bold]1/4[/bold] synthetic dataset in {data}")
    _check(data, quiet=True)
    plans = plan_dataset(data, out_dir / "plan", show_progress=False)
    out.print(summarize_plans(plans))
    out.print(f"[bold]2/4[/bold] dataset checked and planned in {out_dir / 'plan'}")
    run_dir = out_dir / "runs" / f"{strategy}_seed0"
    settings = LoopSettings.checked(
        strategy=strategy,
        rounds=rounds,
        budget=DEMO_BUDGET,
        initial=DEMO_BUDGET,
        epochs=2,
        iters_per_epoch=60,
        batch_size=8,
        mc_passes=4,
        devices="1",  # runs inside 'alseg demo': one device, never re-launched for DDP
    )
    driver = LoopDriver(out_dir / "plan", run_dir, settings, resume=True, workers=0)
    state = driver.run_all()
    out.print(f"[bold]3/4[/bold] active loop: {state.round} rounds, {len(state.labelled)} items labelled ({run_dir})")
    build_report([out_dir / "runs"], out_dir / "report")
    out.print(f"[bold]4/4[/bold] report: {out_dir / 'report' / 'report.html'}")


@app.command()
def predict(
    model: Annotated[
        Path, typer.Argument(metavar="MODEL", help="A run directory (alseg loop) or an 'alseg train' output folder.")
    ],
    inputs: Annotated[
        list[Path],
        typer.Option("-i", "--input", help="Image files, a folder of images (MSD or nnU-Net _XXXX), or a dataset."),
    ],
    out_dir: Annotated[Path, typer.Option("-o", "--out", help="Folder for <case>.nii.gz (and <case>.npz).")],
    round_: Annotated[
        Optional[int], typer.Option("--round", min=0, help="Round of a run to use (default: the last finished).")
    ] = None,
    tta: Annotated[
        bool, typer.Option("--tta", help="Average over all mirrorings (nnU-Net's test-time augmentation).")
    ] = False,
    save_probabilities: Annotated[
        bool, typer.Option("--save-probabilities", help="Also write <case>.npz with per-class probabilities.")
    ] = False,
    devices: Annotated[
        str, typer.Option("--devices", help="auto (a GPU when present), 0 or cpu, or N (a GPU).")
    ] = "auto",
    num_parts: Annotated[
        int, typer.Option("--num-parts", min=1, help="Split the cases into this many parts (one process each).")
    ] = 1,
    part_id: Annotated[
        int, typer.Option("--part-id", min=0, help="The part this process predicts: every N-th case from this one.")
    ] = 0,
    skip_existing: Annotated[
        bool, typer.Option("--continue", help="Skip cases whose outputs are already written (resume).")
    ] = False,
    overwrite: Annotated[
        bool,
        typer.Option("--overwrite", help="Allow -o to be a folder that holds input images (never a dataset's)."),
    ] = False,
) -> None:
    """Segment scans with a trained model; one label map per input, in the input's own geometry."""
    # lazy: each command loads only what it needs, so 'alseg --help' and option errors stay fast
    from alseg.predict import check_output_folder, check_part
    from alseg.predict import predict as run_prediction
    from alseg.trained import load_model

    check_part(num_parts, part_id)  # before loading the model
    check_output_folder(inputs, out_dir, overwrite=overwrite)
    loaded = load_model(model, round_)
    written = run_prediction(
        loaded,
        inputs,
        out_dir,
        tta=tta,
        save_probabilities=save_probabilities,
        devices=devices,
        num_parts=num_parts,
        part_id=part_id,
        skip_existing=skip_existing,
        overwrite=overwrite,
    )
    source = f"round {loaded.round}" if loaded.round is not None else str(loaded.checkpoint)
    out.print(f"wrote {len(written)} label map(s) to {out_dir} (model: {source})")


@app.command("export-nnunet")
def export_nnunet(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN", help="A run directory (written by 'alseg loop').")],
    out_dir: Annotated[Path, typer.Option("-o", "--out", help="nnU-Net raw folder to write DatasetNNN_Name into.")],
    dataset_id: Annotated[int, typer.Option("--dataset-id", help="nnU-Net dataset id NNN (1..999).")] = 500,
    name: Annotated[
        Optional[str], typer.Option("--name", help="Dataset name (default: the plan's dataset name + 'AL').")
    ] = None,
) -> None:
    """Write what was annotated as an nnU-Net v2 raw dataset (unannotated voxels = nnU-Net's ignore label)."""
    # lazy: each command loads only what it needs, so 'alseg --help' and option errors stay fast
    from alseg.active.export import export_nnunet as run_export

    summary = run_export(run_dir, out_dir, dataset_id=dataset_id, name=name)
    share = summary.annotated_voxels / max(summary.total_voxels, 1)
    out.print(
        f"wrote {summary.folder}: {len(summary.cases)} case(s), {summary.annotated_voxels:,} annotated voxels "
        f"({share:.1%} of their voxels; the rest is 'ignore'). For nnU-Net:",
        markup=False,
        highlight=False,
    )
    # a command to copy: one line at any width, also when stdout is a file or a pipe
    command = f"nnUNet_raw={shlex.quote(str(out_dir))} nnUNetv2_plan_and_preprocess -d {dataset_id} --verify_dataset_integrity"
    out.print(command, markup=False, highlight=False, soft_wrap=True)


def _quiet_libraries() -> None:
    """Keep the terminal for alseg's own progress: Lightning's banners and tips are noise here."""
    # Lightning sets its package loggers to INFO when it is imported (lazily, after this runs),
    # but not the loggers its banners and tips go through: those keep this level.
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")


# click's base of usage errors, found through Typer's public BadParameter (Typer may vendor click)
_CLICK_EXCEPTION = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def main() -> None:
    """Console entry point: user errors are one line on stderr and exit code 2 (``--debug``: traceback).

    Tunes the CPU runtime first (OpenMP waiting, malloc thresholds: see :mod:`alseg.runtime`),
    before anything imports torch; a library user of alseg keeps the process as it was.
    """
    tune_process()
    watch_from_env()  # a cell of 'alseg compare' stops when compare is killed
    debug = "--debug" in sys.argv
    if debug:
        sys.argv.remove("--debug")
    else:
        _quiet_libraries()
    try:
        code = app(standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except _CLICK_EXCEPTION as e:  # a usage error: one line, naming the option, like every user error
        if type(e).__name__ == "NoArgsIsHelpError":  # bare 'alseg' or 'alseg loop': the help
            out.print(
                e.ctx.get_help() if getattr(e, "ctx", None) else e.format_message(), markup=False, highlight=False
            )
            sys.exit(0 if len(sys.argv) <= 1 else 2)
        if debug:
            raise
        err.print(
            f"error: {e.format_message()} (see 'alseg {' '.join(a for a in sys.argv[1:2])} --help')",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(2)
    except typer.Abort:
        err.print("interrupted")
        sys.exit(130)
    except AlsegError as e:
        if debug:
            raise
        err.print(f"error: {e}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(EXIT_USER_ERROR)
    except OSError as e:  # a path the user chose that cannot be read or written (writes say so themselves)
        if debug:
            raise
        where = f"{e.filename}: " if e.filename else ""
        err.print(
            f"error: {where}{e.strerror or e} — check the path, its permissions and free space",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
