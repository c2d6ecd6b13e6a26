"""One round's selection as the loop runs it: select, check, then measure the batch."""

from __future__ import annotations

import time

from alseg.scoring.pool_inference import measure_batch_uncertainty
from alseg.strategies.base import Selection, SelectionContext, Strategy, check_selection

__all__ = ["select_batch"]


def select_batch(strategy: Strategy, ctx: SelectionContext, uncertainty_seed: int) -> Selection:
    """``strategy.select(ctx)``, checked, with :attr:`Selection.batch_uncertainty` measured by
    :func:`alseg.scoring.pool_inference.measure_batch_uncertainty` — the same function and the
    same ``uncertainty_seed`` for every strategy (paper Appendix D, Fig. 5), so equal batches
    get equal numbers. ``--option batch_uncertainty=false`` skips the measurement."""
    was_training = ctx.model.training
    sel = check_selection(strategy.select(ctx), ctx)
    ctx.model.train(was_training)
    if strategy.options.batch_uncertainty:
        t0 = time.perf_counter()
        sel.batch_uncertainty = measure_batch_uncertainty(
            ctx, sel.indices, uncertainty_seed, strategy.options.mc_passes_per_forward
        )
        sel.seconds["batch_uncertainty"] = time.perf_counter() - t0
        ctx.model.train(was_training)
    return sel
