"""The segmentation network: MONAI's DynUNet built from a plan, with MC dropout and a feature API.

Why a subclass of :class:`monai.networks.nets.DynUNet`: the topology (kernels, strides,
features per stage, instance norm, leaky ReLU, deep supervision) is exactly nnU-Net's and
MONAI already builds it from those concepts. Four things differ, three for active learning:

* **Dropout where the paper puts it** (MC dropout; docs/design.md): one
  :class:`MCDropout` after *each conv of the encoder and decoder blocks* (``conv -> dropout -> norm -> nonlin``, nnU-Net's
  ``ConvDropoutNormReLU`` order), none after the transposed convs and none in the
  segmentation heads. DynUNet's own ``dropout=`` would also hit the heads, so the network is
  built without it and the modules are inserted into the blocks' ``Convolution`` sequences.
  Training uses ``network.dropout_train`` (0 makes the modules the identity);
  :func:`mc_dropout` turns on only these modules, at ``network.dropout_mc``, for MC passes.
* **Instance norm as a group norm** with one channel per group (:mod:`alseg.model.norm`): the
  same function with the same parameter names, but its output is no view, so the blocks'
  in-place leaky ReLU costs no activation copy in the backward pass (5-15% of a CPU step).
* **Deep supervision at native resolution.** In training mode with deep supervision the
  forward returns a *list* of logits ``[full, 1/2, 1/4, ...]`` (each ``(N, K, *S_i)``), as
  nnU-Net does, and the loss downsamples the targets. MONAI's DynUNet instead upsamples every
  head to full size and stacks them into one ``(N, 1 + D, K, *S)`` tensor. In eval mode (and
  without deep supervision) the output is one ``(N, K, *S)`` tensor of logits.
  nnU-Net supervises all ``n_stages - 1`` decoder outputs but gives the coarsest weight 0;
  that head is not built here (``deep_supr_num = n_stages - 3``), which saves compute and
  keeps DDP free of unused parameters. With ``n_stages == 3`` no head remains and deep
  supervision is off.
* **Features and gradients for the strategies** (the paper's Core-Set, BADGE and USIM):
  :meth:`SegNetwork.bottleneck_features` (Core-Set), :attr:`SegNetwork.last_decoder_layer` and :func:`head_gradient_embedding`
  (BADGE), :meth:`SegNetwork.bottleneck_parameters` / :meth:`SegNetwork.decoder_parameters`
  with :func:`per_sample_gradients` (USIMC / USIMF).

Shapes (``S`` = spatial shape of the input, which must be divisible by the product of the
strides per axis; ``K`` = n_classes; ``F_b`` = features of the last stage, ``F_0`` of the first):

=============================================  ==========================================
``net(x)`` eval, or no deep supervision        ``(N, K, *S)`` logits
``net(x)`` train with deep supervision         list of ``(N, K, *S / prod(strides[:i+1]))``, i = 0..D
``net.bottleneck_features(x[, valid])``        ``(N, F_b)``
``net.decoder_features(x)``                    ``(N, F_0, *S)``, the input of the head
``per_sample_gradients(net, x, names)``        ``(N, P)``, P = sum of the parameters' sizes (or ``max_dim``)
``head_gradient_embedding(net, x[, valid])``   ``(N, K * (F_0 + 1))``
=============================================  ==========================================

Conv bias: MONAI's blocks create their convs without bias; every one is followed by an
instance norm, which removes a per-channel constant, so ``network.conv_bias`` changes nothing
there and is only used for the transposed convs. The heads always have a bias.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from monai.networks.blocks.dynunet_block import UnetBasicBlock
from monai.networks.nets import DynUNet
from torch import Tensor, nn

from alseg.errors import AlsegError
from alseg.model.dropout import MCDropout
from alseg.model.norm import replace_instance_norms
from alseg.plans.models import Configuration

__all__ = [
    "dynunet_arguments",
    "dynunet_for",
    "IGNORE_INDEX",
    "MCDropout",
    "dropout_modules",
    "SegNetwork",
    "build_network",
    "head_gradient_embedding",
    "mc_dropout",
    "output_logits",
    "per_sample_gradients",
    "unwrap_network",
]


IGNORE_INDEX = -100
"""Target value of pixels that add no loss in :func:`per_sample_gradients` (padding of items)."""

_EMPTY = torch.empty(0)  # placeholder for the deep-supervision head outputs between calls


class SegNetwork(DynUNet):
    """DynUNet with dropout after every encoder/decoder conv, native-resolution deep supervision
    and the feature/gradient API of the active-learning strategies (see the module docstring).

    Args:
        spatial_dims, in_channels, out_channels, kernel_size, strides, filters: as DynUNet;
            ``upsample_kernel_size`` is ``strides[1:]``.
        norm_eps, norm_affine: instance norm arguments.
        negative_slope: of the leaky ReLU.
        trans_bias: bias of the transposed convs.
        deep_supervision: supervise the decoder outputs (nnU-Net); needs ``len(strides) >= 4``
            to have any effect (see the module docstring).
        dropout_train: dropout rate in training mode (0 disables it).
        dropout_mc: default rate of :func:`mc_dropout`.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: Sequence[Sequence[int]],
        strides: Sequence[Sequence[int]],
        filters: Sequence[int],
        norm_eps: float = 1e-5,
        norm_affine: bool = True,
        negative_slope: float = 0.01,
        trans_bias: bool = True,
        deep_supervision: bool = True,
        dropout_train: float = 0.0,
        dropout_mc: float = 0.1,
    ):
        if len(strides) < 3:
            raise AlsegError(f"the network needs at least 3 stages (DynUNet), the plan has {len(strides)}")
        topology = dict(kernel_size=kernel_size, strides=strides, filters=filters, norm_eps=norm_eps)
        topology.update(norm_affine=norm_affine, negative_slope=negative_slope, trans_bias=trans_bias)
        super().__init__(
            **dynunet_arguments(spatial_dims, in_channels, out_channels, deep_supervision=deep_supervision, **topology)
        )
        self.dropout_train = float(dropout_train)
        self.dropout_mc = float(dropout_mc)
        for block in self.encoder_blocks() + self.decoder_blocks():
            for conv in (block.conv1, block.conv2):
                conv.add_module("dropout", MCDropout(self.dropout_train))
        replace_instance_norms(self)

    # ------------------------------------------------------------------ structure
    def encoder_blocks(self) -> list[UnetBasicBlock]:
        """The conv blocks from full resolution down to the bottleneck (included)."""
        return [self.input_block, *self.downsamples, self.bottleneck]

    def decoder_blocks(self) -> list[UnetBasicBlock]:
        """The conv blocks of the decoder, coarsest first (transposed convs excluded)."""
        return [up.conv_block for up in self.upsamples]

    @property
    def last_decoder_layer(self) -> nn.Conv2d | nn.Conv3d:
        """The final segmentation head: a 1x1 conv with bias, ``F_0 -> K`` (BADGE(LL), Ash et al. 2020)."""
        return self.output_block.conv.conv

    def head_parameters(self) -> list[str]:
        """Names of the final head's weight and bias."""
        return ["output_block.conv.conv.weight", "output_block.conv.conv.bias"]

    def bottleneck_parameters(self) -> list[str]:
        """Names of the bottleneck block's conv weights (USIMC, the paper's §3.3), in forward order."""
        return ["bottleneck.conv1.conv.weight", "bottleneck.conv2.conv.weight"]

    def decoder_parameters(self) -> list[str]:
        """Names of the decoder's conv weights (USIMF, the paper's §3.3): per decoder stage, coarsest
        first, the transposed conv then the two block convs. Norms and heads are excluded."""
        names = []
        for i in range(len(self.upsamples)):
            names += [
                f"upsamples.{i}.transp_conv.conv.weight",
                f"upsamples.{i}.conv_block.conv1.conv.weight",
                f"upsamples.{i}.conv_block.conv2.conv.weight",
            ]
        return names

    def parameter_count(self, names: Sequence[str]) -> int:
        params = dict(self.named_parameters())
        return sum(params[n].numel() for n in names)

    # ------------------------------------------------------------------ forward
    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        out = self.output_block(self.skip_layers(x))
        heads = list(self.heads)
        # The skip layers write the deep-supervision heads into this shared list; drop the
        # references so no graph (or vmap-batched tensor) outlives the call.
        for i in range(len(self.heads)):
            self.heads[i] = _EMPTY
        if self.training and self.deep_supervision:
            return [out, *heads]
        return out

    def decoder_features(self, x: Tensor) -> Tensor:
        """The last decoder block's output, the head's input: ``(N, F_0, *S)``."""
        h = self.skip_layers(x)
        for i in range(len(self.heads)):
            self.heads[i] = _EMPTY
        return h

    def bottleneck_features(self, x: Tensor, valid: Tensor | None = None, rows: Tensor | None = None) -> Tensor:
        """Global-average-pooled activation of the bottleneck block (Core-Set, Sener & Savarese 2018): ``(N, F_b)``.

        ``valid`` (``(N, *S)``, bool) marks real pixels of padded items: each bottleneck cell is
        then weighted by the share of valid pixels it covers, so padding does not dilute the mean.
        ``rows`` (``(M,)``): item ``j`` lies in input ``rows[j]``, its pixels ``valid[j]``
        (``(M, *S)``), so one forward of a window serves every small item in it; ``(M, F_b)``.
        """
        h = x
        for block in self.encoder_blocks():
            h = block(h)
        if rows is not None:
            h = h[rows]
        if valid is None:
            return h.flatten(2).mean(dim=2)
        pool = F.adaptive_avg_pool2d if h.ndim == 4 else F.adaptive_avg_pool3d
        w = pool(valid.unsqueeze(1).to(h.dtype), h.shape[2:])  # (N, 1, *S_b) valid share per cell
        return (h * w).flatten(2).sum(2) / w.flatten(2).sum(2).clamp(min=1e-12)


def _topology(config: Configuration, in_channels: int, n_classes: int) -> dict:
    """The plan's network topology as :func:`dynunet_arguments` takes it (one mapping for both networks)."""
    net = config.network
    return dict(
        spatial_dims=net.dims,
        in_channels=in_channels,
        out_channels=n_classes,
        kernel_size=net.kernel_sizes,
        strides=net.strides,
        filters=net.features_per_stage,
        norm_eps=net.norm_eps,
        norm_affine=net.norm_affine,
        negative_slope=net.negative_slope,
        trans_bias=net.conv_bias,
        deep_supervision=net.deep_supervision,
    )


def build_network(config: Configuration, in_channels: int, n_classes: int) -> SegNetwork:
    """The network of a plan configuration (nnU-Net's U-Net as MONAI's DynUNet; module docstring)."""
    net = config.network
    return SegNetwork(
        **_topology(config, in_channels, n_classes), dropout_train=net.dropout_train, dropout_mc=net.dropout_mc
    )


def unwrap_network(model: nn.Module) -> SegNetwork:
    """The :class:`SegNetwork` itself, or the one a wrapper (e.g. the LightningModule) holds as ``.net``."""
    if isinstance(model, SegNetwork):
        return model
    inner = getattr(model, "net", None)
    if isinstance(inner, SegNetwork):
        return inner
    raise TypeError(f"expected a SegNetwork or a module with .net, got {type(model).__name__}")


def dropout_modules(model: nn.Module) -> list[nn.Module]:
    """Every torch dropout module of ``model``: ``nn.Dropout``, ``Dropout1d/2d/3d``, ``AlphaDropout``,
    ``FeatureAlphaDropout`` and their subclasses (alseg's :class:`MCDropout`; MONAI builds its
    networks' dropout from these too)."""
    return [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]


@contextmanager
def mc_dropout(model: nn.Module, p: float | None = None) -> Iterator[nn.Module]:
    """Monte-Carlo dropout passes (Gal & Ghahramani 2016): the network in eval mode with only its
    dropout modules (:func:`dropout_modules`) in train mode at rate ``p`` (default: alseg's
    network's ``dropout_mc``; on another network, each module's own rate). Every module's mode
    and every dropout rate is restored on exit.

    A network without dropout modules raises :class:`~alseg.errors.AlsegError`: its "MC passes"
    would all be equal and every uncertainty score silently 0.

    Usage::

        with torch.no_grad(), mc_dropout(net):
            probs = torch.stack([net(x).softmax(1) for _ in range(10)])
    """
    if p is None and (isinstance(model, SegNetwork) or isinstance(getattr(model, "net", None), SegNetwork)):
        p = unwrap_network(model).dropout_mc
    if p is not None and not 0 <= p < 1:
        raise ValueError(f"dropout rate must be in [0, 1), got {p}")
    drops = dropout_modules(model)
    if not drops or (p is None and all(d.p == 0 for d in drops)):
        what = "no dropout modules (torch.nn.Dropout*)" if not drops else "only dropout modules of rate 0"
        raise AlsegError(
            f"the {type(model).__name__} has {what}, so MC-dropout passes would all be equal — build it with "
            "dropout (e.g. MONAI UNet(..., dropout=0.1)) or use a strategy without MC passes"
        )
    modes = {m: m.training for m in model.modules()}
    rates = [d.p for d in drops]
    try:
        model.eval()
        for d in drops:
            if p is not None:
                d.p = p
            d.train()
        yield model
    finally:
        for d, r in zip(drops, rates, strict=True):
            d.p = r
        for m, mode in modes.items():
            m.training = mode


@contextmanager
def eval_mode(net: nn.Module) -> Iterator[None]:
    """The network in eval mode (no dropout, running norms); every module's mode restored on exit."""
    modes = {m: m.training for m in net.modules()}
    try:
        net.eval()
        yield
    finally:
        for m, mode in modes.items():
            m.training = mode


def output_logits(out: Tensor | list[Tensor]) -> Tensor:
    """The full-resolution logits of a forward: the first head under deep supervision, else ``out``."""
    return out[0] if isinstance(out, (list, tuple)) else out


def per_sample_gradients(
    model: nn.Module,
    x: Tensor,
    params: Sequence[str],
    max_dim: int | None = None,
    targets: Tensor | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    """Per-sample gradients of the pseudo-label cross-entropy w.r.t. a parameter group: ``(N, P)``.

    For each sample ``x_n`` (one item) the loss is ``sum_pixels CE(f(x_n), y_n)`` with
    ``y_n = argmax f(x_n)`` (the pseudo-label of BADGE and of the paper's §3.3) unless ``targets`` (N, *S) are
    given; target pixels equal to :data:`IGNORE_INDEX` add nothing. The gradient is of the
    loss, i.e. ``-∇ log p(ȳ|x)``; cosine similarities, the Fisher diagonal and the Fisher
    kernel are unchanged by the sign.

    The network runs deterministically (eval mode, no dropout; the mode is restored), through
    ``torch.func``: ``vmap(grad(loss))`` with ``functional_call``. ``params`` are parameter
    names (e.g. ``net.bottleneck_parameters()``); the gradients are flattened and
    concatenated in that order, and truncated to the first ``max_dim`` entries (USIMC's
    10,000), in which case only the parameters needed are differentiated. ``chunk_size``
    bounds how many samples vmap processes at once (memory).
    """
    net = unwrap_network(model)
    names = list(params)
    all_params = dict(net.named_parameters())
    unknown = [n for n in names if n not in all_params]
    if unknown:
        raise KeyError(f"unknown parameters: {unknown}")
    if max_dim is not None:
        kept, total = [], 0
        for n in names:
            if total >= max_dim:
                break
            kept.append(n)
            total += all_params[n].numel()
        names = kept
    with eval_mode(net):
        if targets is None:
            with torch.no_grad():
                targets = output_logits(net(x)).argmax(1)
        targets = targets.long()
        wrt = {n: all_params[n].detach() for n in names}
        frozen = {n: p.detach() for n, p in all_params.items() if n not in wrt}
        buffers = dict(net.named_buffers())

        def loss(w: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
            # DynUNet registers every block twice (e.g. ``bottleneck`` and inside ``skip_layers``);
            # swapping the parameter on the one module object under one name covers both paths,
            # while torch's weight tying would swap it twice and restore the wrong tensor.
            out = torch.func.functional_call(net, (w, frozen, buffers), (xi.unsqueeze(0),), tie_weights=False)
            return F.cross_entropy(output_logits(out), yi.unsqueeze(0), reduction="sum", ignore_index=IGNORE_INDEX)

        grads = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0), chunk_size=chunk_size)(wrt, x, targets)
    flat = torch.cat([grads[n].reshape(len(x), -1) for n in names], dim=1)
    return flat[:, :max_dim] if max_dim is not None else flat


def head_gradient_embedding(
    model: nn.Module, x: Tensor, valid: Tensor | None = None, rows: Tensor | None = None
) -> Tensor:
    """BADGE(LL) gradient embedding (Ash et al. 2020) in closed form: ``(N, K * (F_0 + 1))``.

    For the 1x1 head conv ``z = W h + b`` and the pseudo-label ``ŷ = argmax z`` the gradient
    of ``sum_pixels CE(z, ŷ)`` is ``sum_pixels (softmax(z) - onehot(ŷ)) ⊗ [h, 1]``; the rows
    are the classes, each ``[dW_k (F_0 values), db_k]``, flattened class-major. Equal to
    ``per_sample_gradients(net, x, net.head_parameters())`` up to the order of the entries,
    without a backward pass. ``valid`` (``(N, *S)``, bool) drops the terms of padding pixels.
    ``rows`` (``(M,)``): item ``j`` lies in input ``rows[j]``, its pixels ``valid[j]``, so one
    forward of a window serves every small item in it; ``(M, K * (F_0 + 1))``.
    Runs in eval mode (restored afterwards), without gradients, in float32.
    """
    net = unwrap_network(model)
    with eval_mode(net), torch.no_grad():
        h = net.decoder_features(x).float()
        z = net.output_block(h).float()
        p = z.softmax(1)
        residual = p - F.one_hot(z.argmax(1), z.shape[1]).movedim(-1, 1).to(p.dtype)
        if rows is not None:
            h, residual = h[rows], residual[rows]
        if valid is not None:
            residual = residual * valid.unsqueeze(1).to(p.dtype)
        dw = residual.flatten(2) @ h.flatten(2).transpose(1, 2)
        db = residual.flatten(2).sum(2, keepdim=True)
    return torch.cat([dw, db], dim=2).flatten(1)


def dynunet_arguments(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    kernel_size: Sequence[Sequence[int]],
    strides: Sequence[Sequence[int]],
    filters: Sequence[int],
    norm_eps: float,
    norm_affine: bool,
    negative_slope: float,
    trans_bias: bool,
    deep_supervision: bool,
) -> dict:
    """MONAI ``DynUNet``'s arguments for nnU-Net's U-Net: written once, for :class:`SegNetwork`
    and for the plain ``DynUNet`` of :func:`dynunet_for`, so both have the same parameters."""
    n_heads = len(strides) - 3 if deep_supervision else 0
    return dict(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels,
        kernel_size=[list(k) for k in kernel_size],
        strides=[list(s) for s in strides],
        upsample_kernel_size=[list(s) for s in strides[1:]],
        filters=list(filters),
        dropout=None,
        norm_name=("INSTANCE", {"affine": norm_affine, "eps": norm_eps}),
        act_name=("leakyrelu", {"inplace": True, "negative_slope": negative_slope}),
        deep_supervision=n_heads > 0,
        deep_supr_num=max(n_heads, 1),
        res_block=False,
        trans_bias=trans_bias,
    )


def dynunet_for(config: Configuration, in_channels: int, n_classes: int) -> DynUNet:
    """A plain MONAI ``DynUNet`` with the topology alseg builds for ``config`` (no dropout)."""
    return DynUNet(**dynunet_arguments(**_topology(config, in_channels, n_classes)))
