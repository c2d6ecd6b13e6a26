"""nnU-Net's training loss: Dice + cross-entropy, deep supervision with halving weights
(``nnUNetTrainer``: ``DC_and_CE_loss`` in a ``DeepSupervisionWrapper``).

The Dice term is nnU-Net's ``MemoryEfficientSoftDiceLoss`` in MONAI terms: softmax, one-hot
targets, background excluded (``do_bg=False``), *batch* Dice (intersection and sums over the
whole batch before dividing), ``smooth = 1e-5`` added to numerator and denominator. nnU-Net
returns ``-dice`` and MONAI ``1 - dice``: a constant apart, the same gradients. CE and Dice
have weight 1 each.

Deep supervision (see :mod:`alseg.model.network`): the network returns logits at full, 1/2,
1/4, ... resolution; each gets the loss against the target resized to its grid with
nearest-neighbour interpolation (MONAI's :class:`~monai.losses.DeepSupervisionLoss`,
``nearest-exact``). nnU-Net weights its ``n_stages - 1`` outputs ``1, 1/2, 1/4, ...`` with
the coarsest set to 0 and normalises them to sum 1; the network does not build that
zero-weight head, so the weights here are ``2^-i`` over the outputs that exist, normalised
— the same numbers nnU-Net uses.
"""

from __future__ import annotations

from monai.losses import DeepSupervisionLoss, DiceCELoss
from torch import Tensor, nn

__all__ = ["SMOOTH", "SegLoss", "deep_supervision_weights"]

SMOOTH = 1e-5  # nnU-Net's soft Dice smoothing


def deep_supervision_weights(n_outputs: int) -> list[float]:
    """Weights of the ``n_outputs`` supervised outputs (full resolution first): ``2^-i``, sum 1.

    ``deep_supervision_weights(3) == [4/7, 2/7, 1/7]``, nnU-Net's weights for a 5-stage
    network (4 decoder outputs, the coarsest with weight 0).
    """
    if n_outputs < 1:
        raise ValueError("n_outputs must be >= 1")
    w = [0.5**i for i in range(n_outputs)]
    return [v / sum(w) for v in w]


class SegLoss(nn.Module):
    """Dice + CE over one output ``(N, K, *S)`` or a deep-supervision list of them.

    ``target``: integer labels ``(N, 1, *S)`` (or ``(N, *S)``) at full resolution, any
    integer or float dtype.
    """

    def __init__(self, n_outputs: int = 1, batch_dice: bool = True):
        super().__init__()
        dice_ce = DiceCELoss(
            include_background=False,
            to_onehot_y=True,
            softmax=True,
            batch=batch_dice,
            smooth_nr=SMOOTH,
            smooth_dr=SMOOTH,
            lambda_dice=1.0,
            lambda_ce=1.0,
        )
        self.weights = deep_supervision_weights(n_outputs)
        self.loss = DeepSupervisionLoss(dice_ce, weights=self.weights)

    def forward(self, output: Tensor | list[Tensor], target: Tensor) -> Tensor:
        first = output[0] if isinstance(output, (list, tuple)) else output
        if target.ndim == first.ndim - 1:
            target = target.unsqueeze(1)
        if isinstance(output, (list, tuple)) and len(output) > len(self.weights):
            raise ValueError(f"{len(output)} outputs but weights for {len(self.weights)}")
        return self.loss(output, target.float())
