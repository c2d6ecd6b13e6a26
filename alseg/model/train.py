"""``alseg train``: train one configuration on one fold of the preprocessed cache.

Output directory::

    OUT/metrics.csv            one row per epoch: epoch, train_loss, dice_mean, dice_<label>...
    OUT/model.ckpt             the final Lightning checkpoint (SegmentationModule.load_from_checkpoint)
    OUT/checkpoints/last.ckpt  written every epoch; ``resume=True`` continues from it
    OUT/logs/, OUT/tensorboard/  Lightning's CSV and TensorBoard logs

The fold split is nnU-Net v2's (:func:`make_split`); the training cases are whole-case
regions and the held-out cases are predicted in full for the Dice every validation epoch.
:func:`fit` is the part the active loop reuses with its own data module (labelled items,
oracle labels). Files are written by callbacks on global rank 0 (:mod:`alseg.model.callbacks`);
the Trainer (:func:`alseg.model.trainer.make_trainer`, the same rules as the active loop's)
owns devices (``accelerator="auto"``: a GPU when present), precision and DDP.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from sklearn.model_selection import KFold

from alseg.data.cache import CaseCache
from alseg.data.datamodule import SegDataModule, whole_case_region
from alseg.errors import AlsegError
from alseg.model.callbacks import FinalCheckpoint, MetricsCSV, metrics_columns, read_metrics
from alseg.model.module import SegmentationModule
from alseg.model.trainer import TrainerSettings, make_trainer
from alseg.plans.models import Plans, load_plans
from alseg.seeds import global_seed

__all__ = ["TRAIN_CHECKPOINT", "fit", "last_checkpoint", "load_weights", "make_split", "train"]

SPLIT_SEED = 12345  # nnU-Net v2's KFold random_state
TRAIN_CHECKPOINT = "model.ckpt"  # alseg train's final checkpoint (OUT/model.ckpt)
CHECKPOINTS = "checkpoints"  # OUT/checkpoints/last.ckpt, written every epoch
METRICS_CSV = "metrics.csv"  # alseg train's per-epoch record (OUT/metrics.csv; the run directory has its own)


def last_checkpoint(out_dir: Path) -> Path:
    """The checkpoint ``alseg train`` writes every epoch in ``out_dir`` (``resume`` continues from it)."""
    return Path(out_dir) / CHECKPOINTS / "last.ckpt"


def make_split(
    case_ids: Sequence[str], fold: int, n_folds: int = 5, seed: int = SPLIT_SEED
) -> tuple[list[str], list[str]]:
    """nnU-Net v2's cross-validation split: ``KFold(n_folds, shuffle=True, random_state=seed)``
    over the sorted case ids; returns ``(train_ids, test_ids)`` of fold ``fold``."""
    ids = sorted(case_ids)
    if not 0 <= fold < n_folds:
        raise AlsegError(f"--fold {fold} does not exist — choose 0..{n_folds - 1}")
    if len(ids) < n_folds:
        raise AlsegError(
            f"{len(ids)} cases cannot be split into nnU-Net's {n_folds} folds — add labelled cases (at least {n_folds})"
        )
    splits = list(KFold(n_splits=n_folds, shuffle=True, random_state=seed).split(ids))
    train_idx, test_idx = splits[fold]
    return [ids[i] for i in train_idx], [ids[i] for i in test_idx]


def fit(
    module: SegmentationModule,
    datamodule: SegDataModule,
    out_dir: str | Path,
    *,
    devices: int | str | Sequence[int] = "auto",
    strategy: str = "auto",
    precision: str | int | None = None,
    resume: bool = False,
    val_every: int = 1,
    progress: bool = True,
    seed: int = 0,
) -> dict[str, float]:
    """Train ``module`` (a :class:`~alseg.model.module.SegmentationModule`) for its configured
    epochs on ``datamodule`` (a :class:`~alseg.data.datamodule.SegDataModule`), validating every
    ``val_every`` epochs and after the last one; writes ``out_dir`` (see the module docstring)
    and returns the last row of ``metrics.csv``.

    ``precision=None``: ``"16-mixed"`` on a GPU (nnU-Net trains with AMP), else 32-bit
    (:class:`~alseg.model.trainer.TrainerSettings`).
    """
    out_dir = Path(out_dir)
    last = last_checkpoint(out_dir)
    if resume and not last.is_file():
        raise AlsegError("no checkpoint to resume from — train without --resume first", last)
    if not resume and last.exists():
        raise AlsegError(
            "holds a previous run — pass --resume to continue it or choose another output directory", out_dir
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = TrainerSettings(devices=devices, strategy=strategy, precision=precision)
    pl.seed_everything(global_seed(seed), workers=False, verbose=False)
    epochs = module.config.trainer.epochs
    iters = module.config.trainer.iterations_per_epoch
    callbacks = [
        ModelCheckpoint(
            dirpath=out_dir / CHECKPOINTS,
            filename="epoch{epoch:04d}",
            auto_insert_metric_name=False,
            save_top_k=1,
            monitor=None,
            save_last="link",
        ),
        MetricsCSV(out_dir / METRICS_CSV, metrics_columns(module.plans.labels)),
        FinalCheckpoint(out_dir / TRAIN_CHECKPOINT),
    ]
    if progress:
        callbacks.append(RichProgressBar())
    trainer = make_trainer(
        settings,
        max_epochs=epochs,
        callbacks=callbacks,
        logger=[CSVLogger(out_dir, name="logs"), TensorBoardLogger(out_dir, name="tensorboard")],
        show_progress=progress,
        validate=True,
        iterations_per_epoch=iters,
        default_root_dir=out_dir,
        check_val_every_n_epoch=val_every,
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(last) if resume else None)
    rows = read_metrics(out_dir / METRICS_CSV)
    if getattr(datamodule, "val_cases", None) and rows and math.isnan(rows[-1].get("dice_mean", math.nan)):
        # the last epoch was not a validation epoch: validate the final weights once
        trainer.validate(module, datamodule=datamodule, verbose=False)
        rows = read_metrics(out_dir / METRICS_CSV)
    return rows[-1] if rows else {}


def train(
    plans: str | Path | Plans,
    config_name: str,
    cache_dir: CaseCache | str | Path,
    out_dir: str | Path,
    fold: int = 0,
    epochs: int | None = None,
    iters_per_epoch: int | None = None,
    devices: int | str | Sequence[int] = "auto",
    strategy: str = "auto",
    precision: str | int | None = None,
    resume: bool = False,
    init_checkpoint: str | Path | None = None,
    seed: int = 0,
    overrides: dict[str, Any] | None = None,
    *,
    n_folds: int = 5,
    val_every: int = 1,
    num_workers: int | None = None,
    augment: bool = True,
    progress: bool = True,
    split: tuple[Sequence[str], Sequence[str]] | None = None,
) -> dict[str, float]:
    """Train ``config_name`` on the training cases of ``fold`` and evaluate on its held-out cases.

    Args:
        plans: ``plans.json`` path or a loaded :class:`Plans`.
        config_name: ``"2d"`` or ``"3d_fullres"``.
        cache_dir: the configuration's preprocessed cache (a :class:`CaseCache` or its folder).
        out_dir: output directory (see the module docstring).
        fold: nnU-Net fold (0..n_folds-1) held out for evaluation.
        epochs, iters_per_epoch: override the plan's trainer settings.
        devices, strategy, precision: passed to Lightning's Trainer (``accelerator="auto"``).
        resume: continue from ``out_dir/checkpoints/last.ckpt``.
        init_checkpoint: start from these weights (weights only; fresh optimiser and schedule).
        seed: seeds Lightning, the patch sampler and the augmentation.
        overrides: other settings (:func:`alseg.model.module.apply_overrides`: trainer and
            network fields, ``batch_size``, ``patch_size``).
        val_every: validate every this many epochs (and after the last).
        num_workers: data loader processes (default min(2, CPUs), 8 with a GPU).
        augment: nnU-Net-style augmentation (:mod:`alseg.data.augment`).
        progress: show Rich progress bars.
        split: ``(train_ids, test_ids)`` instead of ``fold``'s split (``alseg compare
            --test-cases``: the reference must hold out the loops' test cases); every case
            named must have a label.

    Returns:
        The last row of ``metrics.csv``: ``epoch``, ``train_loss``, ``dice_mean``, ``dice_<label>``.
    """
    cache = cache_dir if isinstance(cache_dir, CaseCache) else CaseCache(cache_dir)
    plans = plans if isinstance(plans, Plans) else load_plans(plans)
    pl.seed_everything(global_seed(seed), workers=False, verbose=False)  # the network's initial weights
    all_overrides = {**(overrides or {}), "epochs": epochs, "iterations_per_epoch": iters_per_epoch}
    module = SegmentationModule(plans, config_name, overrides={k: v for k, v in all_overrides.items() if v is not None})
    if init_checkpoint is not None:
        load_weights(module, init_checkpoint)
    if split is None:  # images-only cases: no truth to train on
        train_ids, test_ids = make_split(cache.labelled_case_ids(), fold, n_folds)
    else:
        train_ids, test_ids = list(split[0]), list(split[1])
        missing = sorted(set(train_ids + test_ids) - set(cache.labelled_case_ids()))
        if missing:
            raise AlsegError(f"case '{missing[0]}' has no label in the cache — train and test only on labelled cases")
    datamodule = SegDataModule(
        cache,
        module.config,
        [whole_case_region(cache, c) for c in train_ids],
        val_cases=test_ids,
        num_workers=num_workers,
        augment=augment,
        seed=global_seed(seed),
    )
    return fit(
        module,
        datamodule,
        out_dir,
        devices=devices,
        strategy=strategy,
        precision=precision,
        resume=resume,
        val_every=val_every,
        progress=progress,
        seed=seed,
    )


def load_weights(module: SegmentationModule, checkpoint: str | Path) -> None:
    """Copy the network weights of a checkpoint (Lightning ``.ckpt`` or a bare state dict) into
    ``module``: fine-tuning keeps nothing else (fresh optimiser and schedule)."""
    path = Path(checkpoint)
    if not path.is_file():
        raise AlsegError("checkpoint not found — pass an existing .ckpt or .pt of this plan's network", path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # truncated, not a torch file, or pickled objects: torch's errors are many and long
        raise AlsegError(
            "is not a readable PyTorch checkpoint (truncated, or not saved by torch) — pass a .ckpt or .pt of "
            "this plan's network",
            path,
        ) from None
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise AlsegError("holds no state dict — pass a .ckpt or .pt of this plan's network", path)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise AlsegError(
            f"does not match this plan's network ({first}) — use a checkpoint of the same plan", path
        ) from None
