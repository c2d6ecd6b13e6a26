"""The files a training run writes, each owned by one callback: ``metrics.csv`` (one row per
epoch; :func:`read_metrics` reads it back) and the final ``model.ckpt``.

Kept apart from the LightningModule (Lightning style: cross-cutting behaviour in callbacks) so
that the module, the ``alseg train`` code and the active loop can all use them.
"""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback

from alseg.atomic import atomic_write_text, verify_archive, write_error
from alseg.errors import AlsegError
from alseg.model.metrics import metric_names

__all__ = ["FiniteLoss", "FinalCheckpoint", "MetricsCSV", "metrics_columns", "read_metrics"]


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    """Rows of a ``metrics.csv`` (empty cells are NaN)."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            rows.append({k: (int(v) if k == "epoch" else float(v) if v != "" else math.nan) for k, v in row.items()})
    return rows


def metrics_columns(labels: dict[int, str]) -> list[str]:
    """Columns of ``metrics.csv``: epoch, train_loss, dice_mean, dice_<label>..."""
    return ["epoch", "train_loss", "dice_mean", *metric_names(labels).values()]


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return str(v) if isinstance(v, int) else f"{v:.6g}"


class MetricsCSV(Callback):
    """One row per training epoch in ``path`` (``metrics_columns``), rewritten atomically on
    global rank 0. Rows of later epochs are dropped, so a resumed run continues the file; a
    ``trainer.validate`` after fit fills the last epoch's Dice. Epochs without validation
    leave the Dice cells empty."""

    def __init__(self, path: str | Path, columns: list[str]):
        self.path = Path(path)
        self.columns = columns
        self.dice: dict[str, float] = {}

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        m = trainer.callback_metrics
        self.dice = {k: float(m[k]) for k in self.columns[2:] if k in m}
        if trainer.state.fn != "fit":  # trainer.validate() after fit
            self._write(trainer, trainer.current_epoch - 1, None)

    def on_train_epoch_end(self, trainer, pl_module) -> None:  # runs after that epoch's validation
        loss = trainer.callback_metrics.get("train_loss_epoch")
        self._write(trainer, trainer.current_epoch, None if loss is None else float(loss))
        self.dice = {}

    def _write(self, trainer, epoch: int, loss: float | None) -> None:
        if not trainer.is_global_zero:
            return
        rows = {r["epoch"]: r for r in read_metrics(self.path) if r["epoch"] <= epoch}
        row = rows.get(epoch, {"epoch": epoch})
        if loss is not None:
            row["train_loss"] = loss
        row.update(self.dice)
        rows[epoch] = row
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.columns, lineterminator="\n")
        writer.writeheader()
        for e in sorted(rows):
            writer.writerow({c: _fmt(rows[e].get(c)) for c in self.columns})
        atomic_write_text(self.path, buf.getvalue())


class FiniteLoss(Callback):
    """Stop training with one line when it has diverged: the loss is NaN or infinite and the
    weights are no longer finite (nothing can recover them), or the loss stayed non-finite for
    ``patience`` steps in a row (a single overflowing step under mixed precision is skipped by
    the gradient scaler and does no harm). Raised inside ``fit``, so no checkpoint of the
    diverged network is written as if it were fine."""

    def __init__(self, patience: int = 5):
        self.patience = patience
        self.bad_steps = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is None or bool(torch.isfinite(loss.detach()).all()):
            self.bad_steps = 0
            return
        self.bad_steps += 1
        weights_ok = all(bool(torch.isfinite(p).all()) for p in pl_module.parameters())
        if weights_ok and self.bad_steps < self.patience:
            return
        raise AlsegError(
            f"training diverged at step {trainer.global_step}: the loss is {float(loss.detach().float().mean())} — "
            "lower the learning rate (--lr), or check the images for extreme intensities (alseg check); "
            "no checkpoint of this network was written"
        )


class FinalCheckpoint(Callback):
    """``path`` once fit ends: weights and hyperparameters, enough for ``load_from_checkpoint``
    and ``init_checkpoint`` (no optimiser state; resuming uses ``checkpoints/last.ckpt``).
    Every rank calls ``save_checkpoint`` (a collective), rank 0 writes and renames."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def on_fit_end(self, trainer, pl_module) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        trainer.save_checkpoint(tmp, weights_only=True)
        if trainer.is_global_zero:
            try:
                verify_archive(str(tmp))  # a checkpoint cut short at a full disk is not renamed into place
                os.replace(tmp, self.path)
            except OSError as err:
                tmp.unlink(missing_ok=True)
                raise write_error(err, self.path) from None
