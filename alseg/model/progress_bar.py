"""The training bar of a loop round: one line that disappears when the round's training ends.

Lightning's default bar counts epochs from 0, shows the logger's ``v_num`` and leaves the finished
bar behind, so after a round the terminal held a stale bar with the round's result line glued onto
it. :class:`RoundProgressBar` says ``round k · epoch e/E`` (from 1), shows only the train loss, draws
on stderr (where alseg's own lines go, so the two never interleave mid-line) and clears itself when
training ends: what stays on the screen is one line per round, printed by the loop.
"""

from __future__ import annotations

import sys
from typing import Any

from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm, convert_inf

__all__ = ["RoundProgressBar"]


class RoundProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar, labelled with the round and cleared at the end of training."""

    def __init__(self, round_: int, epochs: int):
        super().__init__(leave=False)
        self.round = round_
        self.epochs = epochs

    def init_train_tqdm(self) -> Tqdm:
        return Tqdm(
            desc=f"round {self.round}",
            position=2 * self.process_position,
            disable=self.is_disabled,
            leave=False,
            dynamic_ncols=True,
            file=sys.stderr,
            smoothing=0,
            bar_format=self.BAR_FORMAT,
        )

    def on_train_epoch_start(self, trainer, *args: Any) -> None:
        # not super(): it would first draw Lightning's "Epoch 0" label
        bar = self.train_progress_bar
        bar.reset(total=convert_inf(self.total_train_batches))
        bar.initial = 0
        bar.set_description(f"round {self.round} · epoch {trainer.current_epoch + 1}/{self.epochs}")

    def get_metrics(self, trainer, pl_module) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics
