"""Load an alseg checkpoint into a plain MONAI ``DynUNet``, for projects that do not use alseg.

alseg's :class:`~alseg.model.network.SegNetwork` *is* a ``DynUNet`` (same modules, same parameter
names); it only adds parameter-free dropout modules and computes instance norm as a group norm
with the same weights. So its state dict, without the LightningModule's ``net.`` prefix, loads
into a ``DynUNet`` built from the plan's configuration, and in eval mode both return the same
logits::

    from alseg.model import load_dynunet

    net, config = load_dynunet("RUN/checkpoints/round_003.ckpt")   # or OUT/model.ckpt of alseg train
    net.eval()
    logits = net(x)               # x: (N, C, *config.patch_size), preprocessed like the plan says

Sliding-window inference over whole cases is
``alseg.model.inference.predict_volume(net, image, config)``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from monai.networks.nets import DynUNet

from alseg.active.rundir import RunDir
from alseg.errors import AlsegError
from alseg.model.module import apply_overrides
from alseg.plans.models import Configuration, Plans

__all__ = ["dynunet_for", "load_dynunet"]

PREFIX = "net."
"""The LightningModule holds the network as ``.net``; its state-dict keys carry this prefix."""


def dynunet_for(config: Configuration, in_channels: int, n_classes: int) -> DynUNet:
    """A plain MONAI ``DynUNet`` with the topology alseg builds for ``config`` (no dropout)."""
    net = config.network
    n_heads = len(net.strides) - 3 if net.deep_supervision else 0
    return DynUNet(
        net.dims,
        in_channels,
        n_classes,
        kernel_size=[list(k) for k in net.kernel_sizes],
        strides=[list(s) for s in net.strides],
        upsample_kernel_size=[list(s) for s in net.strides[1:]],
        filters=list(net.features_per_stage),
        dropout=None,
        norm_name=("INSTANCE", {"affine": net.norm_affine, "eps": net.norm_eps}),
        act_name=("leakyrelu", {"inplace": True, "negative_slope": net.negative_slope}),
        deep_supervision=n_heads > 0,
        deep_supr_num=max(n_heads, 1),
        res_block=False,
        trans_bias=net.conv_bias,
    )


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
