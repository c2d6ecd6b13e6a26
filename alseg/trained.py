"""A trained model, found by what a user points at: a run directory (a round's checkpoint), an
``alseg train`` output folder, or a checkpoint file.

:func:`load_model` gives the :class:`~alseg.model.module.SegmentationModule` that ``alseg predict``
runs. :func:`load_dynunet` is for projects that do not use alseg: alseg's
:class:`~alseg.model.network.SegNetwork` *is* a ``DynUNet`` (same modules, same parameter names);
it only adds parameter-free dropout modules and computes instance norm as a group norm with the
same weights. So its state dict, without the LightningModule's ``net.`` prefix, loads into a
``DynUNet`` built from the plan's configuration, and in eval mode both return the same logits::

    from alseg.trained import load_dynunet

    net, config = load_dynunet("RUN/checkpoints/round_003.ckpt")   # or OUT/model.ckpt of alseg train
    net.eval()
    logits = net(x)               # x: (N, C, *config.patch_size), preprocessed like the plan says

Sliding-window inference over whole cases is
``alseg.model.inference.predict_volume(net, image, config)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from monai.networks.nets import DynUNet

from alseg.active.rundir import RunDir
from alseg.errors import AlsegError
from alseg.model.module import SegmentationModule, apply_overrides
from alseg.model.network import dynunet_for
from alseg.model.train import TRAIN_CHECKPOINT, load_weights
from alseg.plans.models import Configuration, Plans, load_plans

__all__ = ["LoadedModel", "load_dynunet", "load_model"]

PREFIX = "net."
"""The LightningModule holds the network as ``.net``; its state-dict keys carry this prefix."""


def _plan_of(path: Path, ckpt: dict) -> tuple[Plans, Configuration]:
    """The plan and configuration a checkpoint was trained with: its own hyper-parameters
    (``alseg train``'s Lightning checkpoint) or the run directory it lies in (``alseg loop``)."""
    hparams = ckpt.get("hyper_parameters")
    if isinstance(hparams, dict) and "plans" in hparams:
        plans = Plans.model_validate(hparams["plans"])
        config = apply_overrides(plans.configuration(hparams["config_name"]), hparams.get("overrides") or {})
        return plans, config
    run = RunDir(path.parent.parent)
    if not run.exists():
        raise AlsegError(
            "holds no plan and lies in no run directory — pass an alseg train model.ckpt or RUN/checkpoints/round_XXX.ckpt",
            path,
        )
    plans = Plans.model_validate_json(run.plans_path.read_text())
    return plans, plans.configuration(run.load_config().config)  # a loop's overrides leave the network as planned


def load_dynunet(path: str | Path) -> tuple[DynUNet, Configuration]:
    """A MONAI ``DynUNet`` with the weights of an alseg checkpoint, and the plan configuration it needs.

    ``path``: ``RUN/checkpoints/round_XXX.ckpt`` of ``alseg loop`` or ``OUT/model.ckpt`` of
    ``alseg train``. The network is returned on the CPU in eval mode; the configuration says how to
    preprocess its input (spacing, normalisation, patch size). See the module docstring.
    """
    path = Path(path)
    if not path.is_file():
        raise AlsegError("checkpoint not found", path)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    plans, config = _plan_of(path, ckpt)
    state = {k.removeprefix(PREFIX): v for k, v in ckpt.get("state_dict", ckpt).items() if k.startswith(PREFIX)}
    net = dynunet_for(config, len(plans.channel_names), plans.n_classes)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise AlsegError(f"does not match its plan's network ({first})", path) from None
    return net.eval(), config


@dataclass
class LoadedModel:
    """A network ready to predict, with where it came from (for messages)."""

    module: SegmentationModule
    checkpoint: Path
    round: int | None = None


def load_model(model: str | Path, round_: int | None = None) -> LoadedModel:
    """The model of a run directory (round ``round_``, default the last finished one), of an
    ``alseg train`` output folder, or of a ``.ckpt`` written by ``alseg train``."""
    path = Path(model)
    run = RunDir(path)
    if run.exists():
        config = run.load_config()
        if not run.plans_path.is_file():
            raise AlsegError("missing — this run directory is incomplete; predict with another model", run.plans_path)
        last = run.load_state().round
        k = last if round_ is None else round_
        if k < 0:
            raise AlsegError("no round has finished yet — run 'alseg loop --resume' first", path)
        if k > last:
            raise AlsegError(
                f"round {k} has not finished (last finished round: {last}) — choose --round 0..{last}", path
            )
        overrides = {"batch_size": config.batch_size} if config.batch_size is not None else {}
        module = SegmentationModule(load_plans(run.plans_path), config.config, overrides=overrides)
        load_weights(module, run.checkpoint_path(k))
        return LoadedModel(module, run.checkpoint_path(k), k)
    if round_ is not None:
        raise AlsegError("--round needs a run directory (written by 'alseg loop')", path)
    ckpt = path / TRAIN_CHECKPOINT if path.is_dir() else path
    if not ckpt.is_file():
        raise AlsegError(
            "neither a run directory (config.json) nor an 'alseg train' output (model.ckpt) — pass one of them", path
        )
    try:
        module = SegmentationModule.load_from_checkpoint(ckpt, map_location="cpu")
    except (KeyError, TypeError, RuntimeError, OSError) as e:
        raise AlsegError(
            f"cannot be loaded as an alseg model ({type(e).__name__}) — pass 'alseg train' output", ckpt
        ) from None
    return LoadedModel(module, ckpt, None)
