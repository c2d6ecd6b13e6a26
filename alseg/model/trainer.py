"""Interim Trainer factory (replaced by the model package's own)."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from pydantic import BaseModel


class TrainerSettings(BaseModel):
    accelerator: str = "auto"
    devices: int | str = "auto"
    strategy: str = "auto"
    precision: str | int | None = None
    gradient_clip_val: float = 12.0


def resolved_trainer_kwargs(settings: TrainerSettings, *, max_epochs: int, show_progress: bool = True,
                            validate: bool = False) -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    precision = settings.precision or ("16-mixed" if cuda else "32-true")
    return dict(accelerator=settings.accelerator, devices=settings.devices, strategy=settings.strategy,
                precision=precision, max_epochs=max_epochs, gradient_clip_val=settings.gradient_clip_val,
                deterministic="warn" if not cuda else False, enable_progress_bar=show_progress,
                enable_model_summary=False, enable_checkpointing=False,
                **({} if validate else {"limit_val_batches": 0, "num_sanity_val_steps": 0}))


def make_trainer(settings: TrainerSettings, *, max_epochs: int, callbacks: Sequence = (), logger=None,
                 show_progress: bool = True, validate: bool = False, **extra):
    import lightning.pytorch as pl

    kwargs = resolved_trainer_kwargs(settings, max_epochs=max_epochs, show_progress=show_progress, validate=validate)
    kwargs.update(extra)
    return pl.Trainer(callbacks=list(callbacks), logger=logger if logger is not None else False, **kwargs)
