"""The LightningModule: network, loss, optimiser and evaluation of one plan configuration.

Thin on purpose (Lightning style): the Trainer (:mod:`alseg.model.trainer`) owns devices,
precision and DDP; the callbacks of :mod:`alseg.model.callbacks` own the output files. The module is rebuilt from its hyperparameters (the plan as a dict, the configuration
name and the overrides), so ``load_from_checkpoint`` needs nothing else.

Optimisation is nnU-Net v2's (``nnUNetTrainer``: ``configure_optimizers``, ``PolyLRScheduler``), read from the plan's ``Trainer`` and overridable:
SGD (lr 1e-2, momentum 0.99, Nesterov, weight decay 3e-5) with poly decay
``lr_t = lr * (1 - t / T) ** 0.9`` stepped every iteration (``trainer.lr_step = "epoch"``:
once per epoch, ``T`` = epochs, as nnU-Net's ``PolyLRScheduler``); ``T`` is the number of optimiser
steps the Trainer will take (``epochs * iterations_per_epoch`` on one device; under DDP each
process takes ``iterations_per_epoch / world_size`` steps of its own batch per epoch, and
``T`` follows). Gradients are clipped to norm 12 by the Trainer, as nnU-Net does.

Validation and test take one whole preprocessed case per batch, predict it with
:func:`alseg.model.inference.predict_volume` and log ``dice_mean`` and ``dice_<label name>``
(per case, averaged over cases by Lightning; empty classes see :mod:`alseg.model.metrics`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch import LightningModule
from pydantic import ValidationError

from alseg.errors import AlsegError
from alseg.model.inference import predict_volume
from alseg.model.loss import SegLoss
from alseg.model.metrics import dice_per_class, mean_dice, metric_names, surface_metrics_per_class
from alseg.model.network import SegNetwork, build_network
from alseg.plans.models import Configuration, Network, Plans, Trainer

__all__ = ["SegmentationModule", "apply_overrides", "metric_names"]

_CONFIG_FIELDS = ("batch_size", "patch_size")


def apply_overrides(config: Configuration, overrides: dict[str, Any] | None) -> Configuration:
    """A validated copy of ``config`` with ``overrides`` applied.

    Keys are fields of the plan's ``Trainer`` (``lr``, ``epochs``, ``iterations_per_epoch``,
    ...), of its ``Network`` (``dropout_train``, ...), or ``batch_size`` / ``patch_size``.
    ``None`` values are ignored.
    """
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    if not overrides:
        return config
    data = config.model_dump(mode="json")
    for key, value in overrides.items():
        if key in Trainer.model_fields:
            data["trainer"][key] = value
        elif key in Network.model_fields:
            data["network"][key] = value
        elif key in _CONFIG_FIELDS:
            data[key] = value
        else:
            valid = sorted([*Trainer.model_fields, *Network.model_fields, *_CONFIG_FIELDS])
            raise AlsegError(f"unknown training setting '{key}' — choose from {', '.join(valid)}")
    try:
        return Configuration.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        raise AlsegError(f"invalid override {'.'.join(map(str, err['loc']))}: {err['msg']}") from None


class SegmentationModule(LightningModule):
    """Training and evaluation of one plan configuration (see the module docstring).

    Args:
        plans: the plan (a :class:`~alseg.plans.models.Plans` or its dict).
        config_name: ``"2d"`` or ``"3d_fullres"``.
        overrides: settings replacing the plan's (see :func:`apply_overrides`); keyword
            arguments are merged into them, e.g. ``SegmentationModule(plans, "2d", lr=1e-3)``.
        ignore_label: a label value that counts in neither loss term (partial labels: items
            smaller than the patch, :class:`~alseg.model.loss.SegLoss`); None: every voxel counts.
    """

    def __init__(
        self,
        plans: Plans | dict,
        config_name: str,
        overrides: dict[str, Any] | None = None,
        ignore_label: int | None = None,
        **kwargs: Any,
    ):
        super().__init__()
        plans_dict = plans.model_dump(mode="json") if isinstance(plans, Plans) else dict(plans)
        merged = {**(overrides or {}), **kwargs}
        hparams = {"plans": plans_dict, "config_name": config_name, "overrides": merged}
        if ignore_label is not None:  # only then: checkpoints of fully labelled training are as before
            hparams["ignore_label"] = int(ignore_label)
        self.save_hyperparameters(hparams)
        self.plans = Plans.model_validate(plans_dict)
        self.config = apply_overrides(self.plans.configuration(config_name), merged)
        self.net: SegNetwork = build_network(self.config, len(self.plans.channel_names), self.plans.n_classes)
        n_outputs = 1 + (len(self.net.deep_supervision_heads) if self.net.deep_supervision else 0)
        self.loss = SegLoss(n_outputs=n_outputs, ignore_label=ignore_label)
        self.metric_names = metric_names(self.plans.labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        return self.net(x)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.loss(self.net(batch["image"]), batch["label"])
        n = len(batch["image"])
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=n, sync_dist=True)
        return loss

    def total_steps(self) -> int:
        """Optimiser steps of the whole schedule (``T`` of the poly decay)."""
        t = self.config.trainer
        total = t.epochs * t.iterations_per_epoch
        try:
            trainer = self.trainer
        except RuntimeError:  # not attached to a Trainer
            trainer = None
        if trainer is not None:
            est = trainer.estimated_stepping_batches
            if est != float("inf") and est > 0:
                total = int(est)
        return max(total, 1)

    def configure_optimizers(self) -> dict[str, Any]:
        t = self.config.trainer
        optimizer = torch.optim.SGD(
            self.net.parameters(), lr=t.lr, momentum=t.momentum, nesterov=t.nesterov, weight_decay=t.weight_decay
        )
        per_epoch = t.lr_step == "epoch"  # nnU-Net's PolyLRScheduler: once per epoch
        total, exponent = (t.epochs if per_epoch else self.total_steps()), t.poly_exponent

        def poly(step: int) -> float:
            return (1 - min(step, total) / total) ** exponent

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, poly)
        interval = "epoch" if per_epoch else "step"
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": interval, "frequency": 1}}

    # ------------------------------------------------------------------ evaluation
    def evaluate_case(
        self, image: torch.Tensor, label: torch.Tensor, spacing: Sequence[float] | None = None
    ) -> dict[str, float]:
        """Dice of one case: ``image (C, z, y, x)``, ``label (1, z, y, x)`` or ``(z, y, x)``; with
        the grid's ``spacing`` (mm, z, y, x) also ``hd95_<class>`` and ``nsd_<class>`` (surface metrics)."""
        pred = predict_volume(self.net, image, self.config, output="labels")
        gt = label[0] if label.ndim == image.ndim else label
        per_class = dice_per_class(pred, gt, self.plans.n_classes)
        out = {"dice_mean": mean_dice(per_class)}
        out.update({self.metric_names[c]: v for c, v in per_class.items()})
        if spacing is not None:
            surface = surface_metrics_per_class(pred, gt, self.plans.n_classes, spacing)
            for c, (hd95, nsd) in surface.items():
                name = self.metric_names[c].removeprefix("dice_")
                out[f"hd95_{name}"], out[f"nsd_{name}"] = hd95, nsd
        return out

    def _eval_step(self, batch: dict[str, Any]) -> dict[str, float]:
        metrics = self.evaluate_case(batch["image"][0], batch["label"][0])
        for name, value in metrics.items():
            bar = name == "dice_mean"
            self.log(name, value, on_step=False, on_epoch=True, batch_size=1, sync_dist=True, prog_bar=bar)
        return metrics

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, float]:
        return self._eval_step(batch)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, float]:
        return self._eval_step(batch)
