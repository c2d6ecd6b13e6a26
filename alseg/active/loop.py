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
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from alseg.active.oracles.base import OracleContext
from alseg.active.oracles.labels import UNLABELLED, LabelStore
from alseg.active.oracles.registry import oracle_class
from alseg.active.rundir import AGREEMENT_COLUMN, Pending, RunConfig, RunDir, RunState
from alseg.active.settings import LoopSettings
from alseg.active.workspace import Workspace, dataset_hash
from alseg.atomic import atomic_torch_save
from alseg.data.datamodule import Region, SegDataModule
from alseg.dataset.raw import CaseFiles, DatasetInfo, read_dataset
from alseg.errors import AlsegError
from alseg.model.inference import predict_volume
from alseg.model.metrics import dice_per_class, mean_dice
from alseg.model.module import SegmentationModule
from alseg.model.progress_bar import RoundProgressBar
from alseg.model.train import load_weights
from alseg.model.trainer import TrainerSettings, check_batch_memory, make_trainer, resolve_device
from alseg.progress import console, results
from alseg.scoring.pool_inference import inference_batch_size
from alseg.scoring.sharding import FileDoorbell, RankContext, ShardGroup, lead, serve
from alseg.seeds import seed_for_round
from alseg.strategies import SelectionContext, get_strategy, parse_strategy_options, select_batch

__all__ = [
    "AGREEMENT_CASES",
    "PICTURE_CASES",
    "LoopDriver",
    "ActiveLoop",
    "AnnotationIncomplete",
    "agreement_cases",
    "candidate_items",
    "picture_cases",
    "trainer_settings",
]

PICTURE_CASES = 2
"""Test cases whose prediction is saved each round for the report's segmentation pictures."""

AGREEMENT_CASES = 4
"""Pool cases whose predictions are compared between rounds when there are no test labels."""


def agreement_cases(train_ids: list[str], seed: int) -> list[str]:
    """The fixed agreement sample of a run without test labels: up to :data:`AGREEMENT_CASES`
    pool cases drawn once from the run's seed (its own stream, apart from the rounds')."""
    ids = sorted(train_ids)
    n = min(AGREEMENT_CASES, len(ids))
    idx = np.random.default_rng([seed, 0, 1]).choice(len(ids), size=n, replace=False)
    return sorted(ids[int(i)] for i in idx)


def picture_cases(test_ids: list[str]) -> list[str]:
    """The fixed picture cases: the first test cases by name, the same for every strategy and round."""
    return sorted(test_ids)[:PICTURE_CASES]


CANDIDATE_STREAM = 1
"""Third word of the candidates' seed (:meth:`LoopDriver.candidate_rng`)."""


def candidate_items(labelled: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted pool indices a strategy sees with ``--candidates n``: every labelled item and the
    first ``n`` unlabelled items of a uniform permutation of the whole pool. The permutation
    depends on the generator only, so two strategies with the same seed see the same order of
    items; only which of them are labelled already differs."""
    order = rng.permutation(len(labelled))
    unlabelled = order[~labelled[order]][:n]
    return np.sort(np.concatenate([np.flatnonzero(labelled), unlabelled])).astype(np.int64)


def check_mc_passes(strategy: str, mc_passes: int) -> None:
    """A strategy whose scores measure disagreement between MC dropout passes gives every item
    the score 0 with one pass (and would take the pool's first items): one line before any work.
    The strategy class says how many it needs (:meth:`Strategy.mc_passes_needed`)."""
    need = type(get_strategy(strategy)).mc_passes_needed()
    if mc_passes < need:
        raise AlsegError(
            f"--mc-passes {mc_passes} is too few for strategy '{strategy}': its scores compare Monte-Carlo "
            f"dropout passes, so with fewer than {need} every item scores the same — use --mc-passes {need} or "
            "more (the default is 10)"
        )


def check_sizes(settings: LoopSettings, n_items: int, plan_batch_size: int) -> None:
    """The run's sizes against its pool of ``n_items`` items and its devices (one line if they do not fit)."""
    cfg, n = settings, n_items
    if cfg.devices.isdigit() and int(cfg.devices) > 1:  # DDP splits the (global) batch over the devices
        batch = cfg.batch_size or plan_batch_size
        if batch < int(cfg.devices):
            raise AlsegError(
                f"a batch of {batch} cannot be split over {cfg.devices} devices — use --batch-size "
                f"{cfg.devices} or more, or fewer --devices"
            )
    if cfg.initial > n:
        raise AlsegError(f"--initial {cfg.initial} is larger than the pool ({n} items) — choose at most {n}")
    if cfg.initial + cfg.budget > n:
        raise AlsegError(
            f"--budget {cfg.budget} is larger than the unlabelled pool after the initial set ({n - cfg.initial} "
            "items) — lower --budget"
        )
    if cfg.candidates is not None and cfg.candidates < cfg.budget:
        raise AlsegError(
            f"--candidates {cfg.candidates} is smaller than --budget {cfg.budget} — draw at least as many candidates"
        )
    if cfg.candidates is not None and cfg.devices.isdigit() and int(cfg.devices) > 1:
        raise AlsegError("--candidates works on one device for now — use --devices 1, or drop --candidates")
    if cfg.initial + cfg.rounds * cfg.budget > n:
        most = (n - cfg.initial) // cfg.budget
        raise AlsegError(
            f"{cfg.rounds} rounds of {cfg.budget} items need more than the pool's {n} items — use at most --rounds {most}"
        )


def trainer_settings(settings: LoopSettings) -> TrainerSettings:
    """The Trainer settings of a loop's rounds (and of its full-data reference): one rule for both."""
    devices = int(settings.devices) if settings.devices.isdigit() else settings.devices
    return TrainerSettings(devices=devices)


class LoopDriver:
    """Owns the run directory and decides what happens next; see the module docstring.

    ``settings`` are the run's choices (stored in ``config.json``); on resume, those named in
    ``given`` (default: all) must equal the stored ones — the CLI passes the options a user typed.
    ``workers`` and ``show_progress`` only affect this process.
    """

    _dataset: DatasetInfo | None = None  # the plan's dataset, read when the files oracle needs a case's files
    ranks: ShardGroup | None = None  # rank 0 of several devices, between fits: the ranks share its pool passes

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
        if not resume:  # a bad strategy name or option fails here, before planning or training
            parse_strategy_options(settings.strategy, settings.strategy_options)
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
            if stored.dataset_hash is not None and data_hash is not None and stored.dataset_hash != data_hash:
                raise AlsegError(
                    f"was made from other data: {target}'s dataset.json or image files changed since (or it is "
                    "another dataset) — resume with the data the run was made from, or start a new run with another -o",
                    self.run.config_path,
                )
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
            self.config = self._resumed_config(settings)
            self.state = self.run.load_state()
            self._verify_run()
            if self.config.rounds > self.state.round and self.state.finished:
                self.state.finished = False
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
        self.strategy = get_strategy(
            self.config.strategy, parse_strategy_options(self.config.strategy, self.config.strategy_options)
        )
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
            OracleContext(self.run, self.pool, self.ws, self.config.config, self._case_files)
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
            record = self.select(round_, module)
            embeddings = record.pop("embeddings", None)
            if embeddings is not None:  # for the report's t-SNE map (paper Fig. 3)
                self.run.save_embeddings(round_, embeddings["embeddings"], embeddings["role"])
            self.run.save_round(round_, record)
            if self.show_progress and round_ > 0:
                sec = record.get("seconds", {})
                extra = f", Q = {record['Q']}" if "Q" in record else ""
                shared = f" on {self.ranks.world_size} devices" if self.ranks is not None and self.ranks.passes else ""
                console.print(
                    f"round {round_}: {len(record['selected'])} items selected by {record['strategy']} "
                    f"(score {sec.get('score', 0.0):.0f} s{shared}, select {sec.get('select', 0.0):.0f} s{extra})"
                )
        selected = [i for i in record["selected"] if i not in set(self.state.labelled)]
        if not selected:
            return True
        pending = self.state.pending
        earlier = set(pending.accepted) if pending is not None and pending.round == round_ else set()
        self.state.pending = Pending(round=round_, selected=record["selected"], accepted=sorted(earlier))
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
                round=round_, selected=record["selected"], accepted=sorted(earlier | set(accepted))
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
        record.setdefault("seconds", {})["annotate"] = time.perf_counter() - t0
        self.run.save_round(round_, record)
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
        epochs = self.config.round0_epochs if round_ == 0 else self.config.epochs
        bar = self.show_progress and _terminal()  # a log file gets the round lines, not a bar's redraws
        trainer = make_trainer(
            trainer_settings(self.config),
            max_epochs=epochs,
            callbacks=[ActiveLoop(self, round_)] + ([RoundProgressBar(round_, epochs)] if bar else []),
            logger=[
                CSVLogger(self.run.path, name=self.run.logs_dir.name, version=self.run.log_version(round_)),
                TensorBoardLogger(
                    self.run.path,
                    name=self.run.logs_dir.name,
                    version=self.run.log_version(round_),
                    sub_dir="tensorboard",
                    default_hp_metric=False,
                ),
            ],
            show_progress=bar,
            iterations_per_epoch=self.config.iters_per_epoch,
            enable_model_summary=False,
        )
        trainer.fit(module, datamodule=dm)
        if trainer.interrupted:
            raise KeyboardInterrupt

    def finish_round(self, round_: int, module, seconds_train: float) -> None:
        """Between fit stages: checkpoint, evaluate, record; then prepare the next batch."""
        atomic_torch_save(self.run.checkpoint_path(round_), {"state_dict": module.state_dict()})
        self.run.record_checksum(self.state, self.run.checkpoint_path(round_))
        t0 = time.perf_counter()
        metrics = self.evaluate(module, round_)
        seconds_eval = time.perf_counter() - t0
        record = self.run.load_round(round_) or {}
        sec = record.get("seconds", {})
        labelled = self.pool.indices(self.state.labelled)
        row = {"round": round_, "n_labelled_items": len(labelled), "n_labelled_voxels": self.pool.voxels(labelled)}
        row.update({k: f"{v:.6f}" for k, v in metrics.items()})
        if self.config.agreement_cases:  # no test labels: how much the predictions still change
            agreement = self.agreement(round_, module)
            row[AGREEMENT_COLUMN] = "" if agreement is None else f"{agreement:.6f}"
        row.update(
            {
                "seconds_train": f"{seconds_train:.3f}",
                "seconds_eval": f"{seconds_eval:.3f}",
                "seconds_score": f"{sec.get('score', 0.0):.3f}",
                "seconds_select": f"{sec.get('select', 0.0):.3f}",
            }
        )
        self.save_pictures(round_, module)
        self.record_round_extras(round_, labelled, row)
        self.run.write_metrics_row(row)
        self.state.round = round_
        self.state.finished = round_ >= self.config.rounds
        self.run.save_state(self.state)
        if self.show_progress:
            if metrics:
                shown = "Dice " + ", ".join(f"{k.removeprefix('dice_')} {v:.3f}" for k, v in metrics.items())
            else:
                value = row.get(AGREEMENT_COLUMN) or "—"
                shown = f"no test labels; agreement with the previous round {value}"
            results.print(f"round {round_}: {len(labelled)} items labelled — {shown}", soft_wrap=True)
        if round_ < self.config.rounds:
            self.prepare_batch(round_ + 1, module)

    # ----------------------------------------------------------------------------- the steps
    def select(self, round_: int, module) -> dict:
        """Choose round ``round_``'s batch (round 0: the random initial set); returns the record."""
        t0 = time.perf_counter()
        if round_ == 0:
            idx = np.sort(self.rng(0).choice(len(self.pool), size=self.config.initial, replace=False))
            record = {
                "round": 0,
                "strategy": "initial-random",
                "selected": [self.pool[i].id for i in idx],
                "scores": [None] * len(idx),
                "batch_uncertainty": None,
                "seconds": {"select": time.perf_counter() - t0},
            }
            return record
        pool, labelled = self.pool, self.labelled_mask
        if self.config.candidates is not None:  # the strategy chooses among the labelled items and the candidates
            shown = candidate_items(labelled, self.config.candidates, self.candidate_rng(round_))
            pool, labelled = self.pool.subset(shown), labelled[shown]
        net = module.net
        device = module.device
        conf = module.config
        ctx = SelectionContext(
            model=net,
            pool=pool,
            labelled=labelled,
            budget=self.config.budget,
            rng=self.rng(round_),
            load_image=self.ws.image,
            labelled_voxels_per_class=self.labels.voxels_per_class(self.pool, labelled, self.ws.plans.n_classes),
            n_classes=self.ws.plans.n_classes,
            device=device,
            mc_passes=self.config.mc_passes,
            dropout_mc=conf.network.dropout_mc,
            batch_size=inference_batch_size(conf, device),
            ground_truth=self.ws.ground_truth if self.oracle.reveals_ground_truth else None,
            show_progress=self.show_progress,
            ranks=self.ranks,
            round_index=round_,
            planned_rounds=self.config.rounds,
        )
        # the batch uncertainty's MC masks depend on the run's seed and round only, never on the strategy
        sel = select_batch(self.strategy, ctx, uncertainty_seed=seed_for_round(self.config.seed, round_))
        seconds = dict(sel.seconds)
        seconds["select"] = time.perf_counter() - t0 - seconds.get("score", 0.0)
        given = [s for s in sel.scores if s is not None]
        if given and not any(math.isfinite(s) for s in given):  # the batch would be the pool's first items
            raise AlsegError(
                f"round {round_}: every score of strategy '{self.config.strategy}' is NaN or infinite, so its "
                f"batch would be arbitrary — check its options ({self.config.strategy_options or 'the defaults'}) "
                "and that the model of the previous round trained (metrics.csv)",
                self.run.path,
            )
        scores = [None if s is None or not math.isfinite(s) else float(s) for s in sel.scores]  # JSON: no NaN/inf
        record = {
            "round": round_,
            "strategy": self.config.strategy,
            "selected": [pool[int(i)].id for i in sel.indices],
            "scores": scores,
            "batch_uncertainty": sel.batch_uncertainty,
            "seconds": seconds,
            **({"n_candidates": int((~labelled).sum())} if self.config.candidates is not None else {}),
            **(sel.artefacts.to_record() if sel.artefacts is not None else {}),
        }
        if sel.embedding_map is not None:
            record["embeddings"] = {"embeddings": sel.embedding_map.embeddings, "role": sel.embedding_map.role}
        return record

    def serve_passes(self, module) -> int:
        """A rank > 0 between fits: score and embed its shards of rank 0's pool passes with its
        copy of the round's network (the same weights after DDP's fit) until rank 0 is done."""

        def context(settings: dict) -> RankContext:
            return RankContext(
                model=module.net, pool=self.pool, load_image=self.ws.image, device=module.device, **settings
            )

        return serve(context, self.doorbell)

    def evaluate(self, module, round_: int | None = None) -> dict[str, float]:
        """Mean test Dice per class over the held-out cases, on the preprocessed grid; with
        ``round_``, each case's Dice, HD95 and surface Dice also go to the round's per-case file."""
        net = module.net
        was_training = net.training
        net.eval()
        rows = []
        with torch.inference_mode():
            for c in self.test_ids:
                image = torch.from_numpy(np.array(self.ws.image(c))).to(module.device)
                label = torch.from_numpy(np.array(self.ws.ground_truth(c))).to(module.device)
                spacing = self.ws.properties(c)["spacing_after_resampling"] if round_ is not None else None
                rows.append(module.evaluate_case(image, label, spacing=spacing))
        net.train(was_training)
        if round_ is not None and rows:
            self.run.save_case_metrics(round_, [{"case": c, **r} for c, r in zip(self.test_ids, rows)])
        keys = [k for k in (rows[0] if rows else {}) if k.startswith("dice_")]  # metrics.csv: Dice only
        return {k: float(np.nanmean([r[k] for r in rows])) for k in keys}

    def agreement(self, round_: int, module) -> float | None:
        """Mean Dice between this round's and the previous round's predicted labels on the run's
        agreement cases (Dice as the test metric: a class absent from both counts 1.0); None in
        round 0, or when the previous round's predictions are missing."""
        net = module.net
        was_training = net.training
        net.eval()
        predictions = {}
        with torch.inference_mode():
            for c in self.config.agreement_cases:
                image = np.array(self.ws.image(c))  # a copy: torch refuses read-only memory maps
                pred = predict_volume(net, image, module.config, output="labels")
                predictions[c] = pred.cpu().numpy().astype(np.uint8)
        net.train(was_training)
        self.run.save_agreement_predictions(round_, predictions)
        previous = self.run.load_agreement_predictions(round_ - 1) if round_ > 0 else None
        if not previous or set(previous) != set(predictions):
            return None
        n = self.ws.plans.n_classes
        return float(np.mean([mean_dice(dice_per_class(predictions[c], previous[c], n)) for c in sorted(predictions)]))

    def save_pictures(self, round_: int, module) -> None:
        """Save one slice of each picture case (image, truth, prediction) for the report."""
        if not picture_cases(self.test_ids):  # no test labels: nothing to draw the truth from
            return
        net = module.net
        was_training = net.training
        net.eval()
        cases, slices, arrays = [], [], {}
        with torch.inference_mode():
            for j, c in enumerate(picture_cases(self.test_ids)):
                image = np.array(self.ws.image(c))  # a copy: torch refuses read-only memory maps
                label = np.asarray(self.ws.ground_truth(c))
                label = label[0] if label.ndim == image.ndim else label
                z = int(np.argmax((label > 0).reshape(label.shape[0], -1).sum(axis=1)))
                if len(module.config.patch_size) == 2:  # a 2-D network needs only the slice
                    pred = predict_volume(net, image[:, z : z + 1], module.config, output="labels")[0]
                else:
                    pred = predict_volume(net, image, module.config, output="labels")[z]
                cases.append(c)
                slices.append(z)
                arrays[f"image_{j}"] = image[0, z].astype(np.float32)
                arrays[f"label_{j}"] = label[z].astype(np.uint8)
                arrays[f"pred_{j}"] = pred.cpu().numpy().astype(np.uint8)
        net.train(was_training)
        self.run.save_pictures(round_, cases, slices, arrays)

    def record_round_extras(self, round_: int, labelled: np.ndarray, row: dict) -> None:
        """Annotated voxels per class into the round file; the round's numbers into TensorBoard."""
        counts = self.labels.voxels_per_class(self.pool, self.labelled_mask, self.ws.plans.n_classes)
        names = {0: "background", **self.ws.foreground_labels}
        record = self.run.load_round(round_) or {"round": round_}
        record["labelled_voxels_per_class"] = {names.get(c, str(c)): int(n) for c, n in enumerate(counts)}
        self.run.save_round(round_, record)
        board = TensorBoardLogger(self.run.path, name=self.run.logs_dir.name, version=self.run.rounds_log_dir.name)
        scalars = {f"test/{k}": float(v) for k, v in row.items() if k.startswith("dice_")}
        if row.get(AGREEMENT_COLUMN):
            scalars["agreement/between_rounds"] = float(row[AGREEMENT_COLUMN])
        scalars.update({f"seconds/{k.removeprefix('seconds_')}": float(v) for k, v in row.items() if "seconds" in k})
        scalars["labelled/items"] = float(len(labelled))
        scalars.update({f"labelled/voxels_{k}": float(v) for k, v in record["labelled_voxels_per_class"].items()})
        board.log_metrics(scalars, step=round_)
        board.finalize("success")

    @property
    def ignore_label(self) -> int | None:
        """Items smaller than the patch are partial labels: training reads the image around them
        and the loss skips the label store's unlabelled voxels (None: items of the patch size)."""
        return UNLABELLED if self.pool.small_items else None

    def new_module(self):
        overrides = {
            "epochs": self.config.epochs,
            "iterations_per_epoch": self.config.iters_per_epoch,
            "batch_size": self.config.batch_size,
        }
        return SegmentationModule(
            self.ws.plans,
            self.config.config,
            overrides={k: v for k, v in overrides.items() if v is not None},
            ignore_label=self.ignore_label,
        )

    def load_module(self, round_: int):
        module = self.new_module()
        path = self.run.checkpoint_path(round_)
        try:
            load_weights(module, path)
        except Exception:  # truncated or foreign: for a run's own checkpoint the fix is the run's, not a new file
            raise AlsegError(
                "cannot be loaded (truncated or not this run's model) — restore it from a backup, or start a new "
                "run with another -o",
                path,
            ) from None
        return module

    # ----------------------------------------------------------------------------- helpers
    def _resumed_config(self, settings: LoopSettings) -> RunConfig:
        """The stored config, checked against the data and the options given now."""
        config = self.run.load_config()
        if config.plans_hash != self.ws.plans_hash:
            raise AlsegError(
                "was made with another dataset or plan — resume it with the same DATASET_OR_PLANDIR",
                self.run.config_path,
            )
        changed = config.settings().differences(settings, self.given)  # first: it names the option
        if changed:
            raise AlsegError(
                f"was started with other options ({'; '.join(changed)}) — resume with the options it was "
                "started with (only --rounds may grow)",
                self.run.config_path,
            )
        if config.pool_hash != self.pool.fingerprint():
            raise AlsegError(
                "was made with another pool (cases, configuration, fold or item size) — resume with the same options",
                self.run.config_path,
            )
        if (self.given is None or "rounds" in self.given) and settings.rounds > config.rounds:  # extending a run
            config = config.model_copy(update={"rounds": settings.rounds})
            self.run.save_config(config)
        if (self.given is None or "devices" in self.given) and settings.devices != config.devices:
            config = config.model_copy(update={"devices": settings.devices})
        return config

    def _verify_run(self) -> None:
        """Every file the resumed run relies on is there and as written (one line if not)."""
        split = self.run.load_split()
        if sorted(split["train"]) != sorted(self.ws.train_ids) or sorted(split["test"]) != sorted(self.ws.test_ids):
            raise AlsegError(
                "names other pool or test cases than the run's data and options give — resume with the data and "
                "--test-cases the run was started with, or restore the file from a backup",
                self.run.split_path,
            )
        per_case: dict[str, int] = {}
        for i in self.pool.indices(self.state.labelled):
            per_case[self.pool[i].case_id] = per_case.get(self.pool[i].case_id, 0) + 1
        pending = self.state.pending.selected if self.state.pending else []
        rewritten = {self.labels.path(self.pool[i].case_id) for i in self.pool.indices(pending)}
        self.run.verify(self.state, {self.labels.path(c): n for c, n in per_case.items()}, rewritten)

    def _validate_sizes(self) -> None:
        check_sizes(self.config, len(self.pool), self.ws.configuration.batch_size)
        batch = self.config.batch_size or self.ws.configuration.batch_size
        check_batch_memory(self.ws.configuration, batch, self.config.devices)  # fits in memory?

    def _case_files(self, case_id: str) -> CaseFiles:
        """A training case's files in the dataset the plan was made from (the package copies them)."""
        if self._dataset is None:
            self._dataset = read_dataset(self.ws.plans.dataset_root)
        try:
            return self._dataset.case(case_id)
        except KeyError:
            raise AlsegError(
                f"has no training case '{case_id}' any more — resume with the dataset the run was made from",
                Path(self.ws.plans.dataset_root) / "dataset.json",
            ) from None

    def rng(self, round_: int) -> np.random.Generator:
        """The generator of one round: the same on a resumed run as on an uninterrupted one."""
        return np.random.default_rng([self.config.seed, round_])

    def candidate_rng(self, round_: int) -> np.random.Generator:
        """The generator of a round's candidates (``--candidates``): its own stream, apart from the
        strategy's, so that the same seed draws the same order of items for every strategy."""
        return np.random.default_rng([self.config.seed, round_, CANDIDATE_STREAM])

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
