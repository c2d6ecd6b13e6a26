"""The active-learning loop (the paper's Algorithm 1) as a Lightning callback and a small driver.

Each round k trains a fresh ``Trainer`` (round 0 from scratch, later rounds fine-tuned from
round k-1's weights with a fresh schedule). When fitting ends, the :class:`ActiveLoop`
callback does the work between fit stages: save the checkpoint, evaluate on the test cases,
record the round, score the pool with the strategy, select the next batch, ask the oracle for
its masks and add them to the labelled set. The driver only decides which round comes next,
which is what makes ``--resume`` exact: every decision depends on the run directory and on
seeds derived from ``(seed, round)``, never on what happened earlier in the process.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from alseg.atomic import atomic_save_npz, atomic_torch_save, atomic_write_json
from alseg.data.io import Geometry
from alseg.data.pool import Pool
from alseg.errors import AlsegError
from alseg.oracles import FilesOracle, LabelStore, SimulatedOracle
from alseg.plans.models import Plans, load_plans, save_model
from alseg.progress import console
from alseg.runstate import Pending, RunConfig, RunDir, RunState
from alseg.model.pool_inference import inference_batch_size
from alseg.strategies import SelectionContext, get_strategy, parse_strategy_options, select_batch


@dataclass
class LoopOptions:
    """Everything ``alseg loop`` accepts besides the target and the run directory."""

    strategy: str = "random"
    rounds: int = 3
    budget: int = 100
    initial: int = 100
    seed: int = 0
    config: str = "2d"
    fold: int = 0
    epochs: int = 1
    iters_per_epoch: int = 50
    mc_passes: int = 10
    batch_size: int | None = None
    oracle: str = "simulated"
    devices: str = "auto"
    workers: int | None = None
    strategy_options: dict[str, Any] | None = None
    show_progress: bool = True


def _hash_json(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def resolve_plans(target: Path, run_dir: Path, show_progress: bool = True) -> tuple[Plans, Path]:
    """(plans, plans folder) for a plan folder, or plan a dataset on the fly into ``RUN/plan``."""
    target = Path(target)
    if (target / "plans.json").is_file():
        return load_plans(target / "plans.json"), target
    if (target / "dataset.json").is_file():
        from alseg.plans.planner import plan_dataset

        plan_dir = run_dir / "plan"
        if (plan_dir / "plans.json").is_file():
            return load_plans(plan_dir / "plans.json"), plan_dir
        return plan_dataset(target, plan_dir, show_progress=show_progress), plan_dir
    raise AlsegError("neither a dataset (dataset.json) nor a plan folder (plans.json) — pass one of them", target)


def item_geometry(props: dict, box: tuple[tuple[int, int], ...]) -> Geometry:
    """World geometry of a pool item's first voxel, in the file's axis order.

    Inverts transpose, crop and resampling (cell-centred, as the preprocessing's zoom) so an
    exported patch overlays the original scan in a viewer.
    """
    orig = Geometry.from_json(props["original_geometry"])
    tf = list(props["transpose_forward"])
    crop = np.asarray(props["shape_after_cropping"], float)
    resampled = np.asarray(props["shape_after_resampling"], float)
    lo = np.asarray([b[0] for b in props["bbox_used_for_cropping"]], float)
    start_t = np.asarray([a for a, _ in box], float)
    idx_t = (start_t + 0.5) * crop / resampled - 0.5 + lo
    idx_file = np.empty(3)
    spacing_file = np.empty(3)
    for i, axis in enumerate(tf):
        idx_file[axis] = idx_t[i]
        spacing_file[axis] = props["spacing_after_resampling"][i]
    direction = np.asarray(orig.direction).reshape(3, 3)
    origin = np.asarray(orig.origin) + direction @ (idx_file * np.asarray(orig.spacing))
    return Geometry(tuple(float(s) for s in spacing_file), tuple(float(o) for o in origin), orig.direction)


class LoopDriver:
    """Owns the run directory and decides what happens next; see the module docstring."""

    def __init__(self, target: Path, run_dir: Path, options: LoopOptions, resume: bool = False):
        from alseg.data.datamodule import list_cases
        from alseg.data.preprocess import cache_dir_for, preprocess_dataset
        from alseg.model.train import make_split

        self.run = RunDir(run_dir)
        self.options = options
        if not resume:  # a bad strategy name or option fails here, before planning or training
            parse_strategy_options(options.strategy, options.strategy_options or {})
        if self.run.exists() and not resume:
            raise AlsegError("already holds a run — pass --resume to continue it, or choose another -o", self.run.path)
        if resume and not self.run.exists():
            raise AlsegError("holds no run to resume (no config.json) — start it without --resume", self.run.path)
        self.plans, self.plan_dir = resolve_plans(Path(target), self.run.path, options.show_progress)
        self.plans.configuration(options.config)
        self.cache_dir = cache_dir_for(self.plan_dir, self.plans.configuration(options.config))
        preprocess_dataset(self.plans, options.config, self.plan_dir, show_progress=options.show_progress)
        case_ids = list_cases(self.cache_dir)
        self.train_ids, self.test_ids = make_split(case_ids, options.fold)
        conf = self.plans.configuration(options.config)
        self.pool = Pool.from_cache(self.cache_dir, self.train_ids, options.config, tuple(conf.patch_size))
        shapes = {c: tuple(np.load(self.cache_dir / f"{c}.npy", mmap_mode="r").shape[1:]) for c in self.train_ids}
        self.labels = LabelStore(self.run.labels_dir, shapes)
        plans_hash = _hash_json(self.plans.model_dump(mode="json", exclude={"dataset_root"}))

        if resume:
            self.config = self.run.load_config()
            if self.config.plans_hash != plans_hash:
                raise AlsegError("was made with another dataset or plan — resume it with the same DATASET_OR_PLANDIR", self.run.config_path)
            if self.config.pool_hash != self.pool.fingerprint():
                raise AlsegError("was made with another pool (cases, configuration or fold) — resume with the same options", self.run.config_path)
            if options.rounds > self.config.rounds:  # allow extending a finished run
                self.config = self.config.model_copy(update={"rounds": options.rounds})
                self.run.save_config(self.config)
            self.state = self.run.load_state()
            if self.config.rounds > self.state.round and self.state.finished:
                self.state.finished = False
        else:
            self.config = RunConfig(
                dataset=self.plans.dataset_name, dataset_root=self.plans.dataset_root, plans_hash=plans_hash,
                pool_hash=self.pool.fingerprint(), config=options.config, strategy=options.strategy,
                rounds=options.rounds, budget=options.budget, initial=options.initial, seed=options.seed,
                fold=options.fold, epochs=options.epochs, iters_per_epoch=options.iters_per_epoch,
                mc_passes=options.mc_passes, batch_size=options.batch_size, oracle=options.oracle,
                devices=options.devices, strategy_options=options.strategy_options or {},
                labels={k: v for k, v in self.plans.labels.items() if k != 0},
            )
            self.state = RunState()
        self.strategy = get_strategy(self.config.strategy, parse_strategy_options(self.config.strategy, self.config.strategy_options))
        self._validate_sizes()
        if self.strategy.simulation_only and self.config.oracle != "simulated":
            raise AlsegError(f"strategy '{self.config.strategy}' reads the ground truth, so it only runs with --oracle simulated")
        if not resume:
            self.run.path.mkdir(parents=True, exist_ok=True)
            save_model(self.plans, self.run.path / "plans.json")
            atomic_write_json(self.run.path / "split.json", {"fold": options.fold, "train": self.train_ids, "test": self.test_ids})
            self.run.save_config(self.config)
            self.run.save_state(self.state)
        self.oracle = self._make_oracle()
        self._props: dict[str, dict] = {}

    # ----------------------------------------------------------------------------- helpers
    def _validate_sizes(self) -> None:
        n = len(self.pool)
        cfg = self.config
        if cfg.initial > n:
            raise AlsegError(f"--initial {cfg.initial} is larger than the pool ({n} items) — choose at most {n}")
        if cfg.initial + cfg.budget > n:
            raise AlsegError(f"--budget {cfg.budget} is larger than the unlabelled pool after the initial set ({n - cfg.initial} items) — lower --budget")
        if cfg.initial + cfg.rounds * cfg.budget > n:
            most = (n - cfg.initial) // cfg.budget
            raise AlsegError(f"{cfg.rounds} rounds of {cfg.budget} items need more than the pool's {n} items — use at most --rounds {most}")

    def _props_of(self, case_id: str) -> dict:
        if case_id not in self._props:
            self._props[case_id] = json.loads((self.cache_dir / f"{case_id}.json").read_text())
        return self._props[case_id]

    def load_image(self, case_id: str) -> np.ndarray:
        return np.load(self.cache_dir / f"{case_id}.npy", mmap_mode="r")

    def ground_truth(self, case_id: str) -> np.ndarray:
        return np.load(self.cache_dir / f"{case_id}_seg.npy", mmap_mode="r")[0]

    def _make_oracle(self):
        if self.config.oracle == "simulated":
            return SimulatedOracle(self.pool, self.ground_truth)
        return FilesOracle(
            self.run.path, self.pool, self.load_image,
            lambda i: item_geometry(self._props_of(self.pool[i].case_id), self.pool[i].box),
            self.plans.transpose_backward, self.plans.labels,
        )

    def rng(self, round_: int) -> np.random.Generator:
        """The generator of one round: the same on a resumed run as on an uninterrupted one."""
        return np.random.default_rng([self.config.seed, round_])

    @property
    def labelled_mask(self) -> np.ndarray:
        return self.pool.mask(self.state.labelled)

    # ----------------------------------------------------------------------------- rounds
    def select(self, round_: int, module) -> dict:
        """Choose round ``round_``'s batch (round 0: the random initial set); returns the record."""
        t0 = time.perf_counter()
        if round_ == 0:
            idx = np.sort(self.rng(0).choice(len(self.pool), size=self.config.initial, replace=False))
            record = {"round": 0, "strategy": "initial-random", "selected": [self.pool[i].id for i in idx],
                      "scores": [None] * len(idx), "batch_uncertainty": None, "seconds": {"select": time.perf_counter() - t0}}
            return record
        labelled = self.labelled_mask
        net = module.net
        device = module.device
        conf = module.config
        ctx = SelectionContext(
            model=net, pool=self.pool, labelled=labelled, budget=self.config.budget, rng=self.rng(round_),
            load_image=self.load_image,
            labelled_voxels_per_class=self.labels.voxels_per_class(self.pool, labelled, self.plans.n_classes),
            n_classes=self.plans.n_classes, device=device, mc_passes=self.config.mc_passes,
            dropout_mc=conf.network.dropout_mc, batch_size=inference_batch_size(conf, device),
            ground_truth=self.ground_truth if self.config.oracle == "simulated" else None,
            show_progress=self.options.show_progress,
        )
        # the batch uncertainty's MC masks depend on the run's seed and round only, never on the strategy
        sel = select_batch(self.strategy, ctx, uncertainty_seed=self.config.seed * 1000 + round_)
        seconds = dict(sel.seconds)
        seconds["select"] = time.perf_counter() - t0 - seconds.get("score", 0.0)
        scores = [None if s is None or (isinstance(s, float) and math.isnan(s)) else float(s) for s in sel.scores]
        record = {
            "round": round_, "strategy": self.config.strategy, "selected": [self.pool[int(i)].id for i in sel.indices],
            "scores": scores, "batch_uncertainty": sel.batch_uncertainty,
            "seconds": seconds, **(sel.artefacts.to_record() if sel.artefacts is not None else {}),
        }
        if sel.embedding_map is not None:
            record["embeddings"] = {"embeddings": sel.embedding_map.embeddings, "role": sel.embedding_map.role}
        return record

    def prepare_batch(self, round_: int, module=None) -> bool:
        """Make sure round ``round_``'s batch is selected and annotated; False while waiting for a person."""
        record = self.run.load_round(round_)
        if record is None:
            if round_ > 0 and module is None:
                module = self.load_module(round_ - 1)
            record = self.select(round_, module)
            embeddings = record.pop("embeddings", None)
            if embeddings is not None:  # for the report's t-SNE map (paper Fig. 3)
                atomic_save_npz(self.run.round_path(round_).with_name(f"round_{round_:03d}_embeddings.npz"),
                                embeddings=np.asarray(embeddings["embeddings"], np.float32),
                                role=np.asarray(embeddings["role"]).astype(str))
            self.run.save_round(round_, record)
            if self.options.show_progress and round_ > 0:
                sec = record.get("seconds", {})
                extra = f", Q = {record['Q']}" if "Q" in record else ""
                console.print(f"round {round_}: {len(record['selected'])} items selected by {record['strategy']} "
                              f"(score {sec.get('score', 0.0):.0f} s, select {sec.get('select', 0.0):.0f} s{extra})")
        selected = [i for i in record["selected"] if i not in set(self.state.labelled)]
        if not selected:
            return True
        self.state.pending = Pending(round=round_, selected=record["selected"])
        self.run.save_state(self.state)
        t0 = time.perf_counter()
        indices = self.pool.indices(selected)
        answer = self.oracle.annotate(round_, indices)
        self.labels.write(self.pool, answer.masks)
        if answer.problems or answer.waiting:
            accepted = [self.pool[i].id for i in sorted(answer.masks)]
            raise AnnotationIncomplete(round_, answer.problems, len(answer.waiting), accepted, self.oracle)
        self.state.labelled = self.state.labelled + selected
        self.state.pending = None
        self.run.save_state(self.state)
        record.setdefault("seconds", {})["annotate"] = time.perf_counter() - t0
        self.run.save_round(round_, record)
        return True

    def load_module(self, round_: int):
        from alseg.model.train import load_weights

        module = self.new_module()
        load_weights(module, self.run.checkpoint_path(round_))
        return module

    def new_module(self):
        from alseg.model.module import SegmentationModule

        overrides = {"epochs": self.config.epochs, "iterations_per_epoch": self.config.iters_per_epoch,
                     "batch_size": self.config.batch_size}
        return SegmentationModule(self.plans, self.config.config, overrides={k: v for k, v in overrides.items() if v is not None})

    def evaluate(self, module) -> dict[str, float]:
        """Mean test Dice per class over the held-out cases, on the preprocessed grid."""
        net = module.net
        was_training = net.training
        net.eval()
        rows = []
        with torch.inference_mode():
            for c in self.test_ids:
                image = torch.from_numpy(np.array(self.load_image(c))).to(module.device)
                label = torch.from_numpy(np.array(self.ground_truth(c))).to(module.device)
                rows.append(module.evaluate_case(image, label))
        net.train(was_training)
        keys = rows[0].keys() if rows else []
        return {k: float(np.nanmean([r[k] for r in rows])) for k in keys}

    def train_round(self, round_: int) -> None:
        """Fit round ``round_`` on the labelled items; the ActiveLoop callback does the rest."""
        import lightning.pytorch as pl
        from lightning.pytorch.loggers import CSVLogger

        from alseg.data.datamodule import Region, SegDataModule

        pl.seed_everything(self.config.seed * 1000 + round_, workers=False, verbose=False)
        module = self.load_module(round_ - 1) if round_ > 0 else self.new_module()
        regions = [Region(self.pool[i].case_id, self.pool[i].box) for i in self.pool.indices(self.state.labelled)]
        dm = SegDataModule(self.cache_dir, module.config, regions, label_dir=self.run.labels_dir,
                           num_workers=self.options.workers, seed=self.config.seed * 1000 + round_)
        devices: Any = self.config.devices
        if isinstance(devices, str) and devices.isdigit():
            devices = int(devices)
        trainer = pl.Trainer(
            accelerator="auto", devices=devices, max_epochs=self.config.epochs, limit_val_batches=0,
            num_sanity_val_steps=0, callbacks=[ActiveLoop(self, round_)], logger=CSVLogger(self.run.path, name="logs", version=f"round_{round_:03d}"),
            enable_checkpointing=False, enable_progress_bar=self.options.show_progress, enable_model_summary=False,
            gradient_clip_val=12.0, deterministic="warn" if not torch.cuda.is_available() else False,
            log_every_n_steps=max(1, min(50, self.config.iters_per_epoch)),
        )
        trainer.fit(module, datamodule=dm)
        if trainer.interrupted:
            raise KeyboardInterrupt

    def finish_round(self, round_: int, module, seconds_train: float) -> None:
        """Between fit stages: checkpoint, evaluate, record; then prepare the next batch."""
        atomic_torch_save(self.run.checkpoint_path(round_), {"state_dict": module.state_dict()})
        t0 = time.perf_counter()
        metrics = self.evaluate(module)
        seconds_eval = time.perf_counter() - t0
        record = self.run.load_round(round_) or {}
        sec = record.get("seconds", {})
        labelled = self.pool.indices(self.state.labelled)
        row = {"round": round_, "n_labelled_items": len(labelled), "n_labelled_voxels": self.pool.voxels(labelled)}
        row.update({k: f"{v:.6f}" for k, v in metrics.items()})
        row.update({"seconds_train": f"{seconds_train:.3f}", "seconds_eval": f"{seconds_eval:.3f}",
                    "seconds_score": f"{sec.get('score', 0.0):.3f}", "seconds_select": f"{sec.get('select', 0.0):.3f}"})
        self.run.write_metrics_row(row)
        self.state.round = round_
        self.state.finished = round_ >= self.config.rounds
        self.run.save_state(self.state)
        if self.options.show_progress:
            dice = ", ".join(f"{k.removeprefix('dice_')} {v:.3f}" for k, v in metrics.items())
            console.print(f"round {round_}: {len(labelled)} items labelled — Dice {dice}")
        if round_ < self.config.rounds:
            self.prepare_batch(round_ + 1, module)

    def run_all(self) -> RunState:
        """Run (or resume) until all rounds are finished; raises AnnotationIncomplete to wait."""
        while not self.state.finished:
            k = self.state.round + 1
            if k > self.config.rounds:
                self.state.finished = True
                self.run.save_state(self.state)
                break
            self.prepare_batch(k)
            self.train_round(k)
        return self.state


class AnnotationIncomplete(Exception):
    """The files oracle is waiting for masks (or some were rejected); the run resumes later."""

    def __init__(self, round_: int, problems: list[str], n_waiting: int, accepted: list[str], oracle):
        self.round = round_
        self.problems = problems
        self.n_waiting = n_waiting
        self.accepted = accepted
        self.folder = oracle.folder(round_) if hasattr(oracle, "folder") else None
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
        if trainer.interrupted or not trainer.is_global_zero:
            return
        self.driver.finish_round(self.round, pl_module, time.perf_counter() - self._t0)
