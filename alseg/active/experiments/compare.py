"""``alseg compare``: the grid of loops (strategies x seeds) plus the full-data reference.

Every cell is an ordinary ``alseg loop`` run directory (``EXP/<strategy>/seed_<s>``), so
the grid is resumable as a whole: finished runs are skipped, unfinished ones resumed. Each cell
is started from a settings file (``EXP/<strategy>/seed_<s>.settings.json``, the cell's
:class:`~alseg.active.settings.LoopSettings`) as ``alseg loop --settings FILE --resume``: one
submitit job per cell (:class:`CellJob`), its output appended to ``EXP/<strategy>/seed_<s>.log``.

``--executor local`` runs the jobs on this machine through submitit's ``LocalExecutor``,
``--jobs`` at a time; with GPUs each job gets ``--gpus-per-job`` of them (round robin).
``--executor slurm`` submits one job array (one task per unfinished cell, ``--jobs`` of them at
once) and returns; a task that is pre-empted or reaches its time limit is requeued by submitit
(:meth:`CellJob.checkpoint`) and, its command being ``--resume``, continues from the run's last
finished round. submitit's own files are in ``EXP/.submitit/``. ``alseg status EXP``
(:func:`grid_status`) shows where every cell stands.

The full-data reference (``EXP/full``) trains the same network on every case of the loops'
pool (the fold's training cases, or every case but ``--test-cases``) for as many iterations as a
whole loop takes and is evaluated on the loops' test cases (in this process locally; one more job
on SLURM).
"""

from __future__ import annotations

import os
import re
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit
from submitit.helpers import Checkpointable

from alseg.active.checks import check_mc_passes, check_sizes
from alseg.active.experiments.jobs import REQUEUED_NOTE, CellFailed, CellJob
from alseg.active.loop import trainer_settings
from alseg.active.oracles.registry import oracle_class
from alseg.active.rundir import LOCK, MetricsRow, RunDir, RunLock
from alseg.active.settings import LoopSettings, load_settings_file
from alseg.active.workspace import Workspace
from alseg.atomic import atomic_write_text
from alseg.dataset.workers import DIE_WITH_ENV
from alseg.errors import AlsegError
from alseg.model.train import last_checkpoint, train
from alseg.model.trainer import check_batch_memory, one_device
from alseg.progress import console
from alseg.strategies import available, options_for

__all__ = [
    "Cell",
    "CellFailed",
    "ROUND0_DIR",
    "SHARED_ROUND0",
    "fork_initial_rounds",
    "CellJob",
    "CellStatus",
    "ExecutorOptions",
    "parse_strategies",
    "parse_slurm_options",
    "loop_command",
    "run_full_reference",
    "run_compare",
    "grid_status",
]

ROUND0_DIR = ".round0"
"""``EXP/.round0/seed_<s>``: round 0 of seed ``s``, trained once and forked into every strategy's
cell (``--shared-initial-round``); hidden, so reports skip it."""

EXECUTORS = ("local", "slurm")
SUBMITIT_DIR = ".submitit"
"""submitit's folder inside the experiment: its pickles, sbatch scripts and job logs."""
LOCAL_TIMEOUT_MIN = 60 * 24 * 365  # submitit's local jobs are killed after timeout_min; a grid runs as long as it takes


@dataclass
class Cell:
    """One run of the grid: a strategy and a seed, and the run directory it writes."""

    strategy: str
    seed: int
    run_dir: Path

    @property
    def settings_path(self) -> Path:
        """The worker's settings file, beside its run directory."""
        return self.run_dir.parent / f"seed_{self.seed}.settings.json"

    @property
    def log_path(self) -> Path:
        return self.run_dir.parent / f"seed_{self.seed}.log"

    def finished(self) -> bool:
        return RunDir(self.run_dir).finished()


def parse_strategies(spec: str) -> list[str]:
    names = available()
    if spec == "all":
        return names
    wanted = [s.strip() for s in spec.split(",") if s.strip()]
    if not wanted:
        raise AlsegError(f"--strategies '{spec}' names no strategy — use 'all' or some of: {', '.join(names)}")
    unknown = [s for s in wanted if s not in names]
    if unknown:
        raise AlsegError(f"unknown strategy '{unknown[0]}' — choose from: all, {', '.join(names)}")
    return wanted


def loop_command(plan_dir: Path, cell: Cell, settings: LoopSettings, workers: int | None = None) -> list[str]:
    """Write the cell's settings file and return the ``alseg loop`` command that runs it.

    The grid's ``--option`` set is shared by all strategies; each cell keeps the keys its own
    strategy accepts.
    """
    own = options_for([cell.strategy], settings.strategy_options)[cell.strategy]
    cell_settings = settings.model_copy(update={"strategy": cell.strategy, "seed": cell.seed, "strategy_options": own})
    cell.settings_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cell.settings_path, cell_settings.model_dump_json(indent=2) + "\n")
    cmd = [
        sys.executable,
        "-m",  # as 'python -m alseg', so that Lightning's DDP launcher can start the command again
        "alseg",
        "loop",
        str(plan_dir),
        "-o",
        str(cell.run_dir),
        "--settings",
        str(cell.settings_path),
        "--resume",
    ]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    return cmd


def run_full_reference(
    plan_dir: Path, exp_dir: Path, settings: LoopSettings, workers: int | None = None, ws: Workspace | None = None
) -> None:
    """Train on every training case of the fold: the horizontal line of the learning curves."""
    full = RunDir(Path(exp_dir) / "full")
    if full.metrics_path.is_file():
        return
    if ws is None:  # the grid passes the workspace it already opened
        ws = Workspace.open(
            plan_dir,
            Path(exp_dir),
            settings.config,
            settings.fold,
            show_progress=False,
            test_cases=settings.test_cases,
            item_size=settings.item_size,
        )
    epochs = settings.total_epochs  # as many iterations as a whole loop
    ts = one_device(trainer_settings(settings))  # trains inside 'alseg compare': never re-launched for DDP
    final = train(
        ws.plans,
        settings.config,
        ws.cache_dir,
        full.path / "train",
        fold=settings.fold,
        epochs=epochs,
        iters_per_epoch=settings.iters_per_epoch,
        devices=ts.devices,
        precision=ts.precision,
        resume=last_checkpoint(full.path / "train").is_file(),
        seed=0,
        overrides={"batch_size": settings.batch_size},
        num_workers=workers,
        val_every=epochs,
        progress=False,
        split=(ws.train_ids, ws.test_ids),  # the loops' pool (all labelled: simulated oracle) and test cases
    )
    labels = ws.foreground_labels
    dice_cols = {
        f"dice_{n.replace(' ', '_')}": final.get(f"dice_{n.replace(' ', '_')}", float("nan")) for n in labels.values()
    }
    pool = ws.pool
    row = MetricsRow(
        round=0,
        n_labelled_items=len(pool),
        n_labelled_voxels=pool.voxels(range(len(pool))),
        dice={"dice_mean": final.get("dice_mean", float("nan")), **dice_cols},
    )
    full.write_reference(
        {
            "dataset": ws.plans.dataset_name,
            "config": settings.config,
            "labels": {str(k): v for k, v in labels.items()},
            "seed": 0,
            "budget": None,
            "initial": None,
            "epochs": epochs,
        },
        row,
    )


def parse_slurm_options(values: list[str]) -> dict[str, str]:
    """``--slurm-option key=value`` (repeatable) as sbatch parameters, e.g. ``account=proj`` → ``--account=proj``."""
    out: dict[str, str] = {}
    for v in values:
        key, sep, value = v.partition("=")
        key = key.strip()
        if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", key) or not value.strip():
            raise AlsegError(f"--slurm-option '{v}' is not key=value — e.g. --slurm-option account=myproject")
        out[key] = value.strip()
    return out


@dataclass
class ExecutorOptions:
    """Where the cells run: ``local`` (this machine) or ``slurm`` (a job array), and what each job gets."""

    executor: str = "local"
    gpus_per_job: int | None = None  # None: local one GPU each when there are GPUs; slurm 1
    partition: str | None = None
    cpus_per_job: int | None = None
    time_min: int | None = None
    mem_gb: int | None = None
    slurm_options: dict[str, str] = field(default_factory=dict)

    def check(self) -> None:
        """Every option checked before any work: one line each."""
        if self.executor not in EXECUTORS:
            raise AlsegError(f"--executor '{self.executor}' is not one of: {', '.join(EXECUTORS)}")
        for name, value, low in [
            ("--gpus-per-job", self.gpus_per_job, 0),
            ("--cpus-per-job", self.cpus_per_job, 1),
            ("--time-min", self.time_min, 1),
            ("--mem-gb", self.mem_gb, 1),
        ]:
            if value is not None and value < low:
                raise AlsegError(f"{name} must be at least {low}, got {value}")
        if self.executor == "local":
            slurm_only = {
                "--slurm-partition": self.partition,
                "--cpus-per-job": self.cpus_per_job,
                "--time-min": self.time_min,
                "--mem-gb": self.mem_gb,
                "--slurm-option": self.slurm_options or None,
            }
            given = [k for k, v in slurm_only.items() if v is not None]
            if given:
                raise AlsegError(f"{given[0]} is for --executor slurm (this grid runs locally)")

    def slurm_parameters(self, jobs: int) -> dict[str, Any]:
        """The parameters of submitit's ``SlurmExecutor`` (sbatch's names)."""
        gpus = 1 if self.gpus_per_job is None else self.gpus_per_job
        params: dict[str, Any] = {
            "job_name": "alseg",
            "time": self.time_min or 24 * 60,
            "array_parallelism": max(1, jobs),
        }
        if gpus:
            params["gpus_per_node"] = gpus
        if self.cpus_per_job is not None:
            params["cpus_per_task"] = self.cpus_per_job
        if self.mem_gb is not None:
            params["mem"] = f"{self.mem_gb}GB"
        if self.partition:
            params["partition"] = self.partition
        if self.slurm_options:
            params["additional_parameters"] = dict(self.slurm_options)
        return params


def slurm_executor(folder: Path, options: ExecutorOptions, jobs: int) -> submitit.SlurmExecutor:
    try:
        ex = submitit.SlurmExecutor(folder=folder)
    except RuntimeError:  # submitit looks for 'srun'
        raise AlsegError(
            "--executor slurm: no 'srun' on this machine — run 'alseg compare' on a node of the SLURM cluster"
        ) from None
    try:
        ex.update_parameters(**options.slurm_parameters(jobs))
    except ValueError as e:
        raise AlsegError(f"--executor slurm: {str(e).splitlines()[0]}") from None
    return ex


def fork_initial_rounds(
    plan_dir: Path, exp_dir: Path, cells: list[Cell], settings: LoopSettings, workers: int | None
) -> None:
    """Give every cell that has not started a copy of its seed's round 0, trained once.

    Round 0 depends on the seed only (the initial set is drawn from the seed, the network is
    trained from scratch with the seed), never on the strategy, so one training per seed serves
    every strategy and the cells start at round 1's selection. The seed's round 0 is an
    ordinary run (``random``, ``--rounds 0``) in ``EXP/.round0/seed_<s>``, resumable like any
    cell; each cell is a :meth:`RunDir.fork` of it with the cell's strategy, options and rounds.
    """
    for seed in sorted({c.seed for c in cells}):
        fresh = [c for c in cells if c.seed == seed and not c.run_dir.exists()]
        if not fresh:
            continue
        template = Cell("random", seed, Path(exp_dir) / ROUND0_DIR / f"seed_{seed}")
        if not template.finished():
            base = settings.model_copy(update={"rounds": 0, "strategy_options": {}})
            console.print(f"seed {seed}: training round 0 once for {len(fresh)} cell(s) ({template.run_dir})")
            try:
                CellJob(loop_command(plan_dir, template, base, workers), template.log_path)()
            except CellFailed as e:
                raise AlsegError(f"round 0 of seed {seed} failed ({e}); see {template.log_path}") from None
        for c in fresh:
            own = options_for([c.strategy], settings.strategy_options)[c.strategy]
            RunDir(template.run_dir).fork(c.run_dir, strategy=c.strategy, strategy_options=own, rounds=settings.rounds)


def run_compare(target: Path, exp_dir: Path, *args: Any, **kwargs: Any) -> list[Cell]:
    """:func:`_run_compare` (its arguments) while holding ``EXP/.lock``: a second ``alseg compare``
    on a running experiment is refused at once, naming the holder's pid (not cell by cell, after
    planning); the OS drops the lock when its holder dies, even by ``kill -9``."""
    with ExitStack() as held:  # taken once the options are checked, before any planning
        return _run_compare(target, exp_dir, *args, lock=held, **kwargs)


def _run_compare(
    target: Path,
    exp_dir: Path,
    strategies: list[str],
    seeds: int,
    settings: LoopSettings,
    jobs: int = 1,
    full_reference: bool = True,
    workers: int | None = None,
    show_progress: bool = True,
    executor: ExecutorOptions | None = None,
    shared_initial_round: bool = False,
    lock: ExitStack | None = None,
) -> list[Cell]:
    """Run (locally) or submit (SLURM) every unfinished cell, then the full-data reference.

    ``shared_initial_round``: round 0 is trained once per seed and copied into each strategy's
    cell (:func:`fork_initial_rounds`); cells run seed by seed."""
    options = executor or ExecutorOptions()
    options.check()
    for strategy in strategies:  # a strategy that needs more MC passes fails before any planning
        check_mc_passes(strategy, settings.mc_passes)
    if shared_initial_round and options.executor != "local":
        raise AlsegError("--shared-initial-round trains round 0 on this machine — use it with --executor local")
    exp_dir = Path(exp_dir)
    folder = exp_dir / SUBMITIT_DIR
    slurm = slurm_executor(folder, options, jobs) if options.executor == "slurm" else None  # before any work
    exp_dir.mkdir(parents=True, exist_ok=True)
    if lock is not None:  # held until run_compare returns
        lock.enter_context(RunLock(exp_dir / LOCK))
    # a dataset is planned once, into EXP/plan, and preprocessed before the workers share the cache
    ws = Workspace.open(
        Path(target),
        exp_dir,
        settings.config,
        settings.fold,
        show_progress=show_progress,
        test_cases=settings.test_cases,
        pool_needs_labels=oracle_class(settings.oracle).reveals_ground_truth,
        item_size=settings.item_size,
    )
    plan_dir = ws.plan_dir
    check_sizes(settings, len(ws.pool), ws.configuration.batch_size)  # before any cell or the reference trains
    check_batch_memory(ws.configuration, settings.batch_size or ws.configuration.batch_size, settings.devices)
    cells = [Cell(s, seed, exp_dir / s / f"seed_{seed}") for s in strategies for seed in range(seeds)]
    todo = [c for c in cells if not c.finished()]
    busy = [c for c in todo if RunDir(c.run_dir).running()]
    todo = [c for c in todo if c not in busy]
    console.print(
        f"{len(cells)} runs, {len(cells) - len(todo) - len(busy)} already finished"
        + (f", {len(busy)} running elsewhere (left alone)" if busy else "")
    )
    if shared_initial_round:
        fork_initial_rounds(plan_dir, exp_dir, todo, settings, workers)
        todo.sort(key=lambda c: c.seed)  # a grid stopped half-way has whole seeds
    jobs_of = [(c, CellJob(loop_command(plan_dir, c, settings, workers), c.log_path)) for c in todo]
    if slurm is not None:
        _submit_slurm(slurm, jobs_of, plan_dir, exp_dir, settings, workers, full_reference)
        return cells
    failures = _run_local(folder, jobs_of, jobs, options.gpus_per_job)
    if full_reference:
        t0 = time.time()
        run_full_reference(plan_dir, exp_dir, settings, workers, ws=ws)
        console.print(f"full-data reference: done in {time.time() - t0:.0f} s")
    if failures:
        raise AlsegError(f"{len(failures)} run(s) failed; first: {failures[0]}")
    return cells


def _run_local(folder: Path, jobs_of: list[tuple[Cell, CellJob]], jobs: int, gpus_per_job: int | None) -> list[str]:
    """submitit's LocalExecutor, ``jobs`` at a time; the failures, one line each."""
    gpus = _visible_gpus()
    per_job = 0 if not gpus else (1 if gpus_per_job is None else gpus_per_job)
    if per_job > len(gpus) > 0:
        raise AlsegError(f"--gpus-per-job {per_job}: this machine has {len(gpus)} GPU(s)")
    ex = submitit.LocalExecutor(folder=folder)
    os.environ[DIE_WITH_ENV] = str(os.getpid())  # the cells stop if this process is killed (watch_from_env)
    queue = list(jobs_of)
    running: list[tuple[Cell, Any, float]] = []
    failures: list[str] = []
    slot = 0
    try:
        while queue or running:
            while queue and len(running) < max(1, jobs):
                cell, fn = queue.pop(0)
                visible = [gpus[(slot * per_job + i) % len(gpus)] for i in range(per_job)] if per_job else []
                slot += 1
                ex.update_parameters(timeout_min=LOCAL_TIMEOUT_MIN, gpus_per_node=per_job, visible_gpus=visible)
                running.append((cell, ex.submit(fn), time.time()))
            time.sleep(0.5)
            for entry in list(running):
                cell, job, t0 = entry
                if not job.done():
                    continue
                running.remove(entry)
                status = "done" if cell.finished() else f"failed ({_failure(job)})"
                if status != "done":
                    failures.append(f"{cell.run_dir}: {status} — see {cell.log_path}")
                console.print(f"{cell.strategy} seed {cell.seed}: {status} in {time.time() - t0:.0f} s")
    finally:
        os.environ.pop(DIE_WITH_ENV, None)
        for _, job, _ in running:  # interrupted: stop what still runs (each resumes on the next call)
            job.cancel(check=False)
    return failures


def _failure(job: Any) -> str:
    """Why a local job ended without finishing its cell: 'exit N' from :class:`CellFailed`, or submitit's word."""
    job._results_timeout_s = 2  # the result file is written before the job ends; no need to wait for it
    try:
        job.result()
    except Exception as e:  # submitit re-raises the job's error as text
        m = re.search(r"CellFailed: (.+)", str(e))
        if m:
            return m.group(1).strip()
        lines = [ln for ln in str(e).splitlines() if ln.strip()]
        return lines[0] if lines else type(e).__name__
    return "exit 0 but the run is not finished"


def _submit_slurm(
    ex: submitit.SlurmExecutor,
    jobs_of: list[tuple[Cell, CellJob]],
    plan_dir: Path,
    exp_dir: Path,
    settings: LoopSettings,
    workers: int | None,
    full_reference: bool,
) -> None:
    if jobs_of:
        with ex.batch():  # one array: one task per unfinished cell
            submitted = [ex.submit(fn) for _, fn in jobs_of]
        array_id = submitted[0].job_id.split("_")[0]
        console.print(f"submitted job array {array_id}: {len(submitted)} task(s), one per unfinished cell")
    if full_reference and not RunDir(Path(exp_dir) / "full").metrics_path.is_file():
        ref = ex.submit(FullReference(plan_dir, exp_dir, settings, workers))
        console.print(f"submitted the full-data reference: job {ref.job_id}")
    console.print(f"follow them with: alseg status {exp_dir}")


class FullReference(Checkpointable):
    """The full-data reference as a SLURM job; requeued, it resumes from its last checkpoint."""

    def __init__(self, plan_dir: Path, exp_dir: Path, settings: LoopSettings, workers: int | None):
        self.plan_dir, self.exp_dir, self.settings, self.workers = plan_dir, exp_dir, settings, workers

    def __call__(self) -> None:
        run_full_reference(self.plan_dir, self.exp_dir, self.settings, self.workers)


SHARED_ROUND0 = "(shared round 0)"
"""How ``alseg status`` names the runs in :data:`ROUND0_DIR`: not cells, the round 0 the cells of a seed fork."""


@dataclass
class CellStatus:
    """Where one cell of a grid stands (``alseg status``)."""

    strategy: str
    seed: int | None
    rounds_done: int
    rounds_total: int | None
    state: str  # finished | running | failed | requeued | waiting | damaged
    last_line: str = ""


def grid_status(exp_dir: Path) -> list[CellStatus]:
    """Every cell of an ``alseg compare`` grid, from its settings file, run directory, lock and log."""
    exp_dir = Path(exp_dir)
    if not exp_dir.is_dir():
        raise AlsegError("experiment directory does not exist", exp_dir)
    seeds = re.compile(r"seed_(\d+)(?:\.settings\.json)?")
    found: dict[tuple[str, int], Cell] = {}
    for path in exp_dir.glob("*/seed_*"):  # settings files (every started cell) and run directories
        m = seeds.fullmatch(path.name)
        if m and (path.is_dir() or path.is_file()):
            seed = int(m.group(1))
            name = SHARED_ROUND0 if path.parent.name == ROUND0_DIR else path.parent.name
            found[(path.parent.name, seed)] = Cell(name, seed, path.parent / f"seed_{seed}")
    if not found:
        raise AlsegError("holds no 'alseg compare' grid (no <strategy>/seed_<n>)", exp_dir)
    out: list[CellStatus] = []
    for _, cell in sorted(found.items()):
        run = RunDir(cell.run_dir)
        progress = run.progress()
        done, total = progress if progress else (0, _planned_rounds(cell))
        last = _last_line(cell.log_path)
        damaged = run.damaged_file()
        if damaged is not None:  # named, not read as "waiting" or "failed" with an unrelated log line
            state = "damaged"
            last = f"{damaged}: cannot be read — restore it from a backup, or delete {cell.run_dir} to rerun the cell"
        elif cell.finished():
            state = "finished"
        elif run.running():
            state = "running"
        elif not last:  # no log line yet: never launched (forked from a shared round 0), queued, or starting
            state = "waiting"
        elif last == REQUEUED_NOTE:
            state = "requeued"
        else:
            state = "failed"
        out.append(CellStatus(cell.strategy, cell.seed, done, total, state, "" if state == "finished" else last))
    full = RunDir(exp_dir / "full")
    if full.path.is_dir():
        state = "finished" if full.metrics_path.is_file() else ("running" if full.running() else "waiting")
        out.append(CellStatus("full", None, int(state == "finished"), 1, state))
    return out


def _planned_rounds(cell: Cell) -> int | None:
    try:
        return load_settings_file(cell.settings_path).rounds + 1
    except AlsegError:
        return None


def _last_line(path: Path) -> str:
    """The last non-empty line of a log (its end only: logs of long runs are large)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            tail = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [ln.strip() for ln in tail.replace("\r", "\n").splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _visible_gpus() -> list[int]:
    """The GPUs jobs may use: this process's CUDA_VISIBLE_DEVICES (when it lists indices), else 0..n-1."""
    n = _gpu_count()
    if not n:
        return []
    env = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    ids = [x.strip() for x in env.split(",") if x.strip()]
    if ids and all(x.isdigit() for x in ids):
        return [int(x) for x in ids][:n]
    return list(range(n))


def _gpu_count() -> int:
    try:
        import torch  # lazy: only to count GPUs for the workers

        return torch.cuda.device_count()
    except Exception:
        return 0
