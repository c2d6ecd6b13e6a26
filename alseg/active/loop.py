"""The active-learning loop (the paper's Algorithm 1) as a Lightning callback and a small driver.

Each round k trains a fresh ``Trainer`` (round 0 from scratch, later rounds fine-tuned from
round k-1's weights with a fresh schedule). When fitting ends, the :class:`ActiveLoop`
callback does the work between fit stages: save the checkpoint, evaluate on the test cases,
record the round, score the pool with the strategy, select the next batch, ask the oracle for
its masks and add them to the labelled set. The driver only decides which round comes next,
which is what makes ``--resume`` exact: every decision depends on the run directory and on
seeds derived from ``(seed, round)``, never on what happened earlier in the process.

Read top-down: :meth:`LoopDriver.run_all` → :meth:`~LoopDriver.prepare_batch` (select +
annotate) → :meth:`~LoopDriver.train_round` → (callback) :meth:`~LoopDriver.finish_round`.
The steps live with their owners: :mod:`~alseg.active.selection` (the batch),
:mod:`~alseg.active.oracles` (the masks), :mod:`~alseg.active.evaluation` (Dice, agreement,
pictures), :mod:`~alseg.active.resume` (what a resume checks), :mod:`~alseg.active.rundir` (files).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from alseg.active.checks import check_mc_passes, check_sizes
from alseg.active.evaluation import agreement_cases, log_round, measure_round, save_pictures
from alseg.active.oracles.base import OracleContext
from alseg.active.oracles.labels import UNLABELLED, LabelStore
from alseg.active.oracles.registry import oracle_class
from alseg.active.resume import check_same_data, loader_workers_warning, resumed_config, verify_run
from alseg.active.rundir import AGREEMENT_COLUMN, Pending, RoundRecord, RunConfig, RunDir, RunState
from alseg.active.selection import RoundSelector
from alseg.active.settings import LoopSettings
from alseg.active.workspace import Workspace, dataset_hash
from alseg.atomic import atomic_torch_save
from alseg.data.datamodule import Region, SegDataModule, resolve_num_workers
from alseg.errors import AlsegError
from alseg.model.module import SegmentationModule
from alseg.model.progress_bar import RoundProgressBar
from alseg.model.train import load_weights
from alseg.model.trainer import TrainerSettings, check_batch_memory, make_trainer, resolve_device
from alseg.progress import console, results
from alseg.scoring.sharding import FileDoorbell, RankContext, ShardGroup, lead, serve
from alseg.seeds import seed_for_round
from alseg.strategies import get_strategy
from alseg.strategies.base import EmbeddingMap

__all__ = ["LoopDriver", "ActiveLoop", "AnnotationIncomplete", "trainer_settings"]


def trainer_settings(settings: LoopSettings) -> TrainerSettings:
    """The Trainer settings of a loop's rounds (and of its full-data reference): one rule for both."""
    devices = int(settings.devices) if settings.devices.isdigit() else settings.devices
    return TrainerSettings(devices=devices)


def round_trainer(run: RunDir, settings: LoopSettings, round_: int, epochs: int, callbacks: list, bar: bool):
    """The Trainer of one round: the loop's devices, ``--iters-per-epoch``, and the round's CSV and
    TensorBoard logs in the run directory."""
    logs, version = run.logs_dir.name, run.log_version(round_)
    return make_trainer(
        trainer_settings(settings),
        max_epochs=epochs,
        callbacks=callbacks,
        logger=[
            CSVLogger(run.path, name=logs, version=version),
            TensorBoardLogger(run.path, name=logs, version=version, sub_dir="tensorboard", default_hp_metric=False),
        ],
        show_progress=bar,
        iterations_per_epoch=settings.iters_per_epoch,
        enable_model_summary=False,
    )


def round_module(ws: Workspace, settings: LoopSettings, ignore_label: int | None) -> SegmentationModule:
    """A fresh model of the run's configuration, with the loop's training budget and batch size."""
    overrides = {
        "epochs": settings.epochs,
        "iterations_per_epoch": settings.iters_per_epoch,
        "batch_size": settings.batch_size,
    }
    return SegmentationModule(
        ws.plans,
        settings.config,
        overrides={k: v for k, v in overrides.items() if v is not None},
        ignore_label=ignore_label,
    )


def load_run_checkpoint(module: SegmentationModule, path: Path) -> SegmentationModule:
    """``module`` with the weights of a run's own checkpoint (one line naming it if that fails)."""
    try:
        load_weights(module, path)
    except Exception:  # truncated or foreign: for a run's own checkpoint the fix is the run's, not a new file
        raise AlsegError(
            "cannot be loaded (truncated or not this run's model) — restore it from a backup, or start a new "
            "run with another -o",
            path,
        ) from None
    return module


class LoopDriver:
    """Owns the run directory and decides what happens next; see the module docstring.

    ``settings`` are the run's choices (stored in ``config.json``); on resume, those named in
    ``given`` (default: all) must equal the stored ones — the CLI passes the options a user typed.
    ``workers`` and ``show_progress`` only affect this process.
    """

    ranks: ShardGroup | None = None  # rank 0 of several devices, between fits: the ranks share its pool passes
    loader_workers: int | None = None  # data-loader processes of the last fit (recorded in its round file)

    def __init__(
        self,
        target: Path,
        run_dir: Path,
        settings: LoopSettings,
        resume: bool = False,
        workers: int | None = None,
        show_progress: bool = True,
        given: set[str] | None = None,
    ):
        self.given = given
        self.run = RunDir(run_dir)
        self.workers = workers
        self.show_progress = show_progress
        if not resume:  # a strategy that cannot work with these MC passes fails before planning or training
            check_mc_passes(settings.strategy, settings.mc_passes)
        if self.run.exists() and not resume:
            raise AlsegError("already holds a run — pass --resume to continue it, or choose another -o", self.run.path)
        self.lock = self.run.lock()  # held until run_all ends (or the process dies)
        # on several devices the other ranks wait here for this process's pool passes; a file left
        # by an earlier process must not count (they join only at this process's first fit)
        self.doorbell = FileDoorbell(self.run.doorbell_path)
        self.doorbell.reset()
        try:
            self._open(Path(target), settings, resume)
        except BaseException:
            self.lock.release()
            raise

    def _open(self, target: Path, settings: LoopSettings, resume: bool) -> None:
        """Check a resumed run against its data and files, or start a new one; then the oracle."""
        show_progress = self.show_progress
        resume = resume and self.run.exists()  # --resume on a run that never started starts it
        data_hash = dataset_hash(Path(target))
        if resume:  # checked before planning: a dataset changed since is refused at once
            stored = self.run.load_config()
            check_same_data(self.run, stored, target, data_hash)
        for tmp in self.run.temp_files():  # leftovers of writes killed half-way; nobody else writes (lock)
            tmp.unlink()
        # what decides the pool and the test cases: on resume, the stored choice unless typed again
        chosen = settings
        if resume and self.given is not None:
            kept = {k: getattr(stored, k) for k in ("test_cases", "oracle", "item_size") if k not in self.given}
            chosen = settings.model_copy(update=kept)
        self.ws = Workspace.open(
            Path(target),
            self.run.path,
            settings.config,
            settings.fold,
            show_progress,
            test_cases=chosen.test_cases,
            pool_needs_labels=oracle_class(chosen.oracle).reveals_ground_truth,
            item_size=chosen.item_size,
        )
        self.labels = LabelStore(self.run.labels_dir, self.ws.train_shapes())
        if resume:
            self.config = resumed_config(self.run, self.ws, settings, self.given)
            self.state = self.run.load_state()
            verify_run(self.run, self.ws, self.state, self.labels)
            if self.config.rounds > self.state.round and self.state.finished:
                self.state.finished = False
            warning = loader_workers_warning(self.run, self.state, resolve_num_workers(self.workers))
            if warning is not None:
                console.print(warning, markup=False, highlight=False, soft_wrap=True)
        else:
            self.config = RunConfig(
                **settings.model_dump(),
                dataset=self.ws.plans.dataset_name,
                dataset_root=self.ws.plans.dataset_root,
                dataset_hash=data_hash,
                plans_hash=self.ws.plans_hash,
                pool_hash=self.pool.fingerprint(),
                labels=self.ws.foreground_labels,
                agreement_cases=[] if self.ws.test_ids else agreement_cases(self.ws.train_ids, settings.seed),
            )
            self.state = RunState()
        self.strategy = get_strategy(self.config.strategy, self.config.strategy_settings())
        if self.strategy.simulation_only and not oracle_class(self.config.oracle).reveals_ground_truth:
            raise AlsegError(
                f"strategy '{self.config.strategy}' reads the ground truth, so it only runs with --oracle simulated"
            )
        self._validate_sizes()
        if not resume:
            self.run.path.mkdir(parents=True, exist_ok=True)
            self.run.save_plans_and_split(
                self.ws.plans, self.config.fold, self.ws.train_ids, self.ws.test_ids, self.ws.split_rule
            )
            self.run.save_config(self.config)
            self.run.save_state(self.state)
        self.oracle = oracle_class(self.config.oracle).build(
            OracleContext(self.run, self.pool, self.ws, self.config.config)
        )
        self.selector = RoundSelector(
            self.config,
            self.strategy,
            self.pool,
            self.ws,
            self.labels,
            self.oracle.reveals_ground_truth,
            self.run.path,
            self.show_progress,
        )

    @property
    def pool(self):
        return self.ws.pool

    @property
    def test_ids(self) -> list[str]:
        return self.ws.test_ids

    # ----------------------------------------------------------------------------- the rounds
    def run_all(self) -> RunState:
        """Run (or resume) until all rounds are finished; raises AnnotationIncomplete to wait.

        Holds the run's lock throughout (taken again if an earlier call gave it back)."""
        with self.lock:
            while not self.state.finished:
                k = self.state.round + 1
                if k > self.config.rounds:
                    self.state.finished = True
                    self.run.save_state(self.state)
                    break
                self.prepare_batch(k)
                self.train_round(k)
        return self.state

    def prepare_batch(self, round_: int, module=None) -> bool:
        """Make sure round ``round_``'s batch is selected and annotated; raises while waiting for a person."""
        record = self.run.load_round(round_)
        if record is None:
            if round_ > 0 and module is None:
                module = self.load_module(round_ - 1)
            record, embeddings = self.select(round_, module)
            if embeddings is not None:  # for the report's t-SNE map (paper Fig. 3)
                self.run.save_embeddings(round_, embeddings.embeddings, embeddings.role)
            self.run.save_round(record)
            if self.show_progress and round_ > 0:
                sec = record.seconds
                q = (record.model_extra or {}).get("Q")
                extra = f", Q = {q}" if q is not None else ""
                shared = f" on {self.ranks.world_size} devices" if self.ranks is not None and self.ranks.passes else ""
                console.print(
                    f"round {round_}: {len(record.selected)} items selected by {record.strategy} "
                    f"(score {sec.get('score', 0.0):.0f} s{shared}, select {sec.get('select', 0.0):.0f} s{extra})"
                )
        selected = [i for i in record.selected if i not in set(self.state.labelled)]
        if not selected:
            return True
        pending = self.state.pending
        earlier = set(pending.accepted) if pending is not None and pending.round == round_ else set()
        self.state.pending = Pending(round=round_, selected=record.selected, accepted=sorted(earlier))
        self.run.save_state(self.state)
        t0 = time.perf_counter()

        def model():  # the model that selected the batch (loaded on resume), for the files oracle's pre-segmentation
            if module is not None:
                return module
            return self.load_module(round_ - 1).to(resolve_device(self.config.devices))

        answer = self.oracle.annotate(round_, self.pool.indices(selected), model if round_ > 0 else None)
        for path in self.labels.write(self.pool, answer.masks):
            self.run.record_checksum(self.state, path)
        gone = sorted({self.pool[i].case_id for i in answer.waiting if self.pool[i].id in earlier})
        waiting = [i for i in answer.waiting if self.pool[i].case_id not in gone]
        problems = answer.problems + [  # accepted by an earlier call of this round, then deleted: said, not re-asked
            f"{self.oracle.folder(round_) or self.run.path}: the label file of case {case} was "
            "accepted earlier in this round but is gone now — put it back, then run the same command with --resume"
            for case in gone
        ]
        if problems or waiting:
            accepted = [self.pool[i].id for i in sorted(answer.masks)]
            self.state.pending = Pending(
                round=round_, selected=record.selected, accepted=sorted(earlier | set(accepted))
            )
            self.run.save_state(self.state)
            incomplete = AnnotationIncomplete(
                round_, problems, len(waiting), accepted, self.oracle, n_selected=len(selected)
            )
            incomplete.waiting_cases = [c for c in incomplete.waiting_cases if c not in gone]
            raise incomplete
        self.state.labelled = self.state.labelled + selected
        self.state.pending = None
        self.run.save_state(self.state)
        record.seconds["annotate"] = time.perf_counter() - t0
        self.run.save_round(record)
        return True

    def train_round(self, round_: int) -> None:
        """Fit round ``round_`` on the labelled items; the ActiveLoop callback does the rest."""
        seed = seed_for_round(self.config.seed, round_)  # seed * 1000 + round while it fits 32 bits (alseg.seeds)
        pl.seed_everything(seed, workers=False, verbose=False)
        module = self.load_module(round_ - 1) if round_ > 0 and self.config.fine_tune else self.new_module()
        regions = [Region(self.pool[i].case_id, self.pool[i].box) for i in self.pool.indices(self.state.labelled)]
        dm = SegDataModule(
            self.ws.cache_dir,
            module.config,
            regions,
            label_dir=self.run.labels_dir,
            num_workers=self.workers,
            seed=seed,
            ignore_label=self.ignore_label,
        )
        self.loader_workers = dm.num_workers
        epochs = self.config.round0_epochs if round_ == 0 else self.config.epochs
        bar = self.show_progress and _terminal()  # a log file gets the round lines, not a bar's redraws
        callbacks = [ActiveLoop(self, round_)] + ([RoundProgressBar(round_, epochs)] if bar else [])
        trainer = round_trainer(self.run, self.config, round_, epochs, callbacks, bar)
        trainer.fit(module, datamodule=dm)
        if trainer.interrupted:
            raise KeyboardInterrupt

    def finish_round(self, round_: int, module, seconds_train: float) -> None:
        """Between fit stages: checkpoint, evaluate, record; then prepare the next batch."""
        atomic_torch_save(self.run.checkpoint_path(round_), {"state_dict": module.state_dict()})
        self.run.record_checksum(self.state, self.run.checkpoint_path(round_))
        labelled = self.pool.indices(self.state.labelled)
        metrics, row = measure_round(
            module, self.ws, self.run, round_, labelled, seconds_train, self.config.agreement_cases
        )
        save_pictures(module, self.ws, self.test_ids, self.run, round_)
        log_round(self.run, self.ws, self.labels, self.labelled_mask, round_, row, self.loader_workers)
        self.run.write_metrics_row(row)
        self.state.round = round_
        self.state.finished = round_ >= self.config.rounds
        self.run.save_state(self.state)
        if self.show_progress:
            if metrics:
                shown = "Dice " + ", ".join(f"{k.removeprefix('dice_')} {v:.3f}" for k, v in metrics.items())
            else:
                value = row.columns().get(AGREEMENT_COLUMN) or "—"
                shown = f"no test labels; agreement with the previous round {value}"
            results.print(f"round {round_}: {len(labelled)} items labelled — {shown}", soft_wrap=True)
        if round_ < self.config.rounds:
            self.prepare_batch(round_ + 1, module)

    # ----------------------------------------------------------------------------- the steps
    def select(self, round_: int, module) -> tuple[RoundRecord, EmbeddingMap | None]:
        """Choose round ``round_``'s batch (round 0: the random initial set): its record, and the
        embeddings for the report's map when the strategy made some."""
        if round_ == 0:
            return self.selector.initial()
        return self.selector.select(round_, module, self.labelled_mask, self.ranks)

    def serve_passes(self, module) -> int:
        """A rank > 0 between fits: score and embed its shards of rank 0's pool passes with its
        copy of the round's network (the same weights after DDP's fit) until rank 0 is done."""

        def context(settings: dict) -> RankContext:
            return RankContext(
                model=module.net, pool=self.pool, load_image=self.ws.image, device=module.device, **settings
            )

        return serve(context, self.doorbell)

    @property
    def ignore_label(self) -> int | None:
        """Items smaller than the patch are partial labels: training reads the image around them
        and the loss skips the label store's unlabelled voxels (None: items of the patch size)."""
        return UNLABELLED if self.pool.small_items else None

    def new_module(self):
        return round_module(self.ws, self.config, self.ignore_label)

    def load_module(self, round_: int):
        return load_run_checkpoint(self.new_module(), self.run.checkpoint_path(round_))

    # ----------------------------------------------------------------------------- helpers
    def _validate_sizes(self) -> None:
        check_sizes(self.config, len(self.pool), self.ws.configuration.batch_size)
        batch = self.config.batch_size or self.ws.configuration.batch_size
        check_batch_memory(self.ws.configuration, batch, self.config.devices)  # fits in memory?

    @property
    def labelled_mask(self) -> np.ndarray:
        return self.pool.mask(self.state.labelled)


def _terminal() -> bool:
    """Whether stderr is a terminal, where the training bar can redraw itself in place."""
    return sys.stderr.isatty()


class AnnotationIncomplete(Exception):
    """The files oracle is waiting for masks (or some were rejected); the run resumes later."""

    def __init__(
        self, round_: int, problems: list[str], n_waiting: int, accepted: list[str], oracle, n_selected: int = 0
    ):
        self.round = round_
        self.problems = problems
        self.n_waiting = n_waiting
        self.accepted = accepted
        self.n_selected = max(n_selected, len(accepted) + n_waiting)
        self.n_rejected = self.n_selected - len(accepted) - n_waiting
        """Items whose file was rejected (one unit with accepted and waiting: items)."""
        self.folder = oracle.folder(round_)
        self.guide = oracle.guide(round_)
        self.waiting_cases: list[str] = oracle.waiting_cases()
        """The cases whose label file is not there yet (files oracle)."""
        super().__init__(f"round {round_}: {n_waiting} mask(s) missing, {len(problems)} rejected")


class ActiveLoop(Callback):
    """At the end of each fit stage, hand over to the driver (evaluate, record, select, annotate)."""

    def __init__(self, driver: LoopDriver, round_: int):
        self.driver = driver
        self.round = round_
        self._t0 = 0.0

    def on_fit_start(self, trainer, pl_module) -> None:
        self._t0 = time.perf_counter()

    def on_fit_end(self, trainer, pl_module) -> None:
        """Rank 0 finishes the round; on several devices the other ranks share its pool passes."""
        if trainer.interrupted:
            return
        seconds = time.perf_counter() - self._t0
        # Lightning's teardown has moved the module to the CPU before this hook: evaluation and the
        # pool passes belong on the training device (a GPU when there is one)
        pl_module.to(trainer.strategy.root_device)
        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            if trainer.is_global_zero:
                with lead(self.driver.doorbell) as ranks:
                    self.driver.ranks = ranks
                    try:
                        self.driver.finish_round(self.round, pl_module, seconds)
                    finally:
                        self.driver.ranks = None
            else:
                self.driver.serve_passes(pl_module)
            return
        if trainer.is_global_zero:
            self.driver.finish_round(self.round, pl_module, seconds)
