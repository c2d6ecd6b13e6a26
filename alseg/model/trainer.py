"""The one place a Lightning ``Trainer`` is configured: devices, precision, clipping, determinism.

Full-data training (``alseg train``), the active-learning rounds and the redundancy check must
train alike, or their results cannot be compared; so they all go through :func:`make_trainer`
with a :class:`TrainerSettings`. The rules, once:

* **precision** ``None`` resolves to ``"16-mixed"`` when a CUDA GPU is used (nnU-Net trains
  with AMP) and ``"32-true"`` otherwise; an explicit value is kept.
* **gradient clipping** at norm 12 (nnU-Net v2's ``nnUNetTrainer.train_step``).
* **deterministic** ``None`` resolves to ``"warn"`` on CPU (reproducible where torch can be,
  a warning where it cannot) and ``False`` on CUDA (deterministic cuDNN kernels are slow and
  some 3D ones do not exist).
* **log_every_n_steps** ``max(1, min(50, iterations_per_epoch))``: at least one logged step per
  epoch when epochs are short.
* **no distributed sampler**: on several devices each rank draws its own share of the global
  batch (:mod:`alseg.data.datamodule`), as nnU-Net v2 does.
* validation and the sanity check only when asked (``validate=True``); checkpointing only when
  a ``ModelCheckpoint`` is among the callbacks (no stray ``lightning_logs`` checkpoints).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from pydantic import BaseModel, ConfigDict

from alseg.errors import AlsegError
from alseg.model.callbacks import FiniteLoss

__all__ = [
    "GRADIENT_CLIP",
    "TrainerSettings",
    "check_batch_memory",
    "check_trainer_settings",
    "make_trainer",
    "one_device",
    "resolve_device",
    "resolved_trainer_kwargs",
    "uses_cuda",
]

GRADIENT_CLIP = 12.0  # nnU-Net v2 clips the gradient norm at 12
MAX_LOG_EVERY = 50  # Lightning's default log_every_n_steps


class TrainerSettings(BaseModel):
    """What may differ between machines and runs; everything else is fixed by :func:`make_trainer`."""

    model_config = ConfigDict(extra="forbid")

    accelerator: str = "auto"
    devices: int | str | list[int] = "auto"
    strategy: str = "auto"
    precision: str | int | None = None
    gradient_clip_val: float = GRADIENT_CLIP
    deterministic: bool | Literal["warn"] | None = None


def one_device(settings: TrainerSettings) -> TrainerSettings:
    """The same settings on at most one device: for training inside a process that does more than
    train (``alseg compare``'s full-data reference, ``alseg demo``), which Lightning's DDP
    launcher must not start again on the other devices."""
    devices = settings.devices
    if devices == "auto" or (isinstance(devices, int) and devices > 1):
        devices = 1
    elif isinstance(devices, list) and len(devices) > 1:
        devices = devices[:1]
    return settings.model_copy(update={"devices": devices})


def uses_cuda(settings: TrainerSettings) -> bool:
    """Whether the Trainer will run on a CUDA GPU (``accelerator`` auto/gpu/cuda and one present)."""
    return settings.accelerator in ("auto", "gpu", "cuda") and settings.devices != 0 and torch.cuda.is_available()


def resolved_trainer_kwargs(
    settings: TrainerSettings,
    *,
    max_epochs: int,
    callbacks: Sequence[Any] = (),
    logger: Any = None,
    show_progress: bool = True,
    validate: bool = False,
    iterations_per_epoch: int | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The keyword arguments :func:`make_trainer` passes to ``lightning.pytorch.Trainer``.

    ``logger=None`` means no logger. ``extra`` (e.g. ``default_root_dir``,
    ``check_val_every_n_epoch``) is added last and wins.
    """
    cuda = uses_cuda(settings)
    precision = settings.precision if settings.precision is not None else ("16-mixed" if cuda else "32-true")
    deterministic = settings.deterministic if settings.deterministic is not None else (False if cuda else "warn")
    callbacks = list(callbacks)
    if not any(isinstance(cb, FiniteLoss) for cb in callbacks):  # every fit stops with one line when it diverges
        callbacks.append(FiniteLoss())
    kwargs: dict[str, Any] = {
        "accelerator": settings.accelerator,
        "devices": settings.devices,
        "strategy": settings.strategy,
        "precision": precision,
        "deterministic": deterministic,
        "gradient_clip_val": settings.gradient_clip_val,
        "gradient_clip_algorithm": "norm",
        "max_epochs": max_epochs,
        "callbacks": callbacks,
        "logger": logger if logger is not None else False,
        "enable_checkpointing": any(isinstance(cb, ModelCheckpoint) for cb in callbacks),
        "enable_progress_bar": show_progress,
        "enable_model_summary": show_progress,
        "num_sanity_val_steps": 0,
        "use_distributed_sampler": False,  # patches are random draws per rank (alseg.data.datamodule)
        "log_every_n_steps": MAX_LOG_EVERY
        if iterations_per_epoch is None
        else max(1, min(MAX_LOG_EVERY, iterations_per_epoch)),
    }
    if not validate:
        kwargs["limit_val_batches"] = 0
    kwargs.update(extra)
    return kwargs


def check_trainer_settings(settings: TrainerSettings) -> None:
    """Let Lightning check devices, strategy and precision now (a Trainer is cheap to make and
    launches nothing): a wrong value is one line naming the option, before any work starts."""
    try:
        pl.Trainer(**resolved_trainer_kwargs(settings, max_epochs=1, show_progress=False))
    except (ValueError, TypeError, RuntimeError) as e:  # Lightning's MisconfigurationException is a ValueError
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        given = f"--devices {settings.devices}, --strategy {settings.strategy}, --precision {settings.precision}"
        raise AlsegError(f"Lightning refuses {given}: {first}") from None


def step_bytes_per_patch(configuration: Any) -> int:
    """A low estimate of the memory one patch of a training batch takes: the input and, per
    resolution stage and convolution of encoder and decoder, the three tensors kept for the
    backward pass (the convolution's, the norm's and the nonlinearity's outputs; 4 bytes a
    value). Measured on CPU (2026-12-07, demo plan): 7.7 MiB per 2D patch (estimate 6.2) and 186
    MiB per 3D patch (estimate 175): the real step takes more (skips, deep supervision, the
    optimiser), so a batch refused by :func:`check_batch_memory` cannot fit."""
    net = configuration.network
    voxels = math.prod(configuration.patch_size)
    scale = [1] * len(configuration.patch_size)
    kept = 0.0
    for features, stride in zip(net.features_per_stage, net.strides):
        scale = [a * b for a, b in zip(scale, stride)]
        kept += features * voxels / math.prod(scale)
    channels = len(configuration.normalization)
    return int(4 * (channels * voxels + 3 * 2 * net.n_conv_per_stage * kept))


def memory_bytes(device: str) -> tuple[int, str]:
    """The memory a training step may use, and its name: one GPU's, or the machine's RAM."""
    if device == "cuda":
        return int(torch.cuda.get_device_properties(0).total_memory), "the GPU's memory"
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")), "this machine's memory"


def check_batch_memory(
    configuration: Any, batch_size: int, devices: str | int = "auto", device: str | None = None
) -> None:
    """Refuse, before any work, a batch whose patches cannot fit in memory (one line with the
    estimate; the process would otherwise be killed by the kernel minutes later). ``devices``
    (``auto``, ``cpu``/``0`` or a number of GPUs): on GPUs the batch is split over them, each
    with its own memory, and values take 2 bytes (mixed precision, the GPU default)."""
    value = str(devices)
    cuda = torch.cuda.is_available() and value not in ("0", "cpu")
    device = device or ("cuda" if cuda else "cpu")
    devices = int(value) if value.isdigit() and int(value) > 0 else (torch.cuda.device_count() if cuda else 1)
    per_patch = step_bytes_per_patch(configuration) // (2 if device == "cuda" else 1)
    per_device = -(-batch_size // max(devices, 1)) if device == "cuda" else batch_size
    need = per_patch * per_device
    have, where = memory_bytes(device)
    if need > have:
        fit = max(have // per_patch * (max(devices, 1) if device == "cuda" else 1), 1)
        raise AlsegError(
            f"--batch-size {batch_size}: a training step needs at least {need / 2**30:.1f} GiB "
            f"({per_device} patch(es) of {' x '.join(map(str, configuration.patch_size))} voxels, about "
            f"{per_patch / 2**20:.1f} MiB each), more than the {have / 2**30:.1f} GiB of {where} — "
            f"use --batch-size {min(fit, batch_size - 1)} or less"
        )


def make_trainer(settings: TrainerSettings, **kwargs: Any) -> pl.Trainer:
    """A Lightning Trainer with alseg's rules (module docstring); ``kwargs`` are those of
    :func:`resolved_trainer_kwargs` (``max_epochs``, ``callbacks``, ``logger``, ...)."""
    return pl.Trainer(**resolved_trainer_kwargs(settings, **kwargs))


def resolve_device(devices: str | int = "auto") -> torch.device:
    """``auto`` (a GPU when present), ``0`` or ``cpu`` (CPU), or a number of GPUs (the first is used)."""
    value = str(devices)
    if value in ("0", "cpu"):
        return torch.device("cpu")
    if value == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if value.isdigit():
        if not torch.cuda.is_available():
            raise AlsegError(f"--devices {value} asks for a GPU but none is available — use --devices auto or 0")
        return torch.device("cuda:0")
    raise AlsegError(f"--devices must be 'auto', 'cpu' or a number, got '{value}'")
