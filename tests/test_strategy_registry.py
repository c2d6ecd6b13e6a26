"""Strategy registry and the random baselines' invariants."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alseg.data.pool import Pool
from alseg.errors import AlsegError
from alseg.strategies import SelectionContext, available, get_strategy
from alseg.strategies.base import check_selection


def _ctx(seed=0, budget=5, ground_truth=None):
    pool = Pool.build({"a": (10, 8, 8), "b": (10, 8, 8)}, "2d", (8, 8))
    labelled = np.zeros(len(pool), bool)
    labelled[:3] = True
    return SelectionContext(
        model=torch.nn.Identity(),
        pool=pool,
        labelled=labelled,
        budget=budget,
        rng=np.random.default_rng(seed),
        load_image=lambda c: np.zeros((1, 10, 8, 8), np.float32),
        labelled_voxels_per_class=np.ones(3),
        n_classes=3,
        ground_truth=ground_truth,
    )


def test_unknown_strategy_lists_valid_ones():
    with pytest.raises(AlsegError, match="unknown strategy 'nope' — choose one of: .*random"):
        get_strategy("nope")
    assert {"random", "random-fg"} <= set(available())


def test_random_is_distinct_unlabelled_and_seeded():
    a = check_selection(get_strategy("random").select(_ctx(1)), _ctx(1))
    b = get_strategy("random").select(_ctx(1))
    c = get_strategy("random").select(_ctx(2))
    np.testing.assert_array_equal(a.indices, b.indices)
    assert not np.array_equal(a.indices, c.indices)
    assert (a.indices >= 3).all()


def test_random_fg_prefers_foreground_items():
    seg = np.zeros((10, 8, 8), np.uint8)
    seg[7:9, 2:4, 2:4] = 1  # slices 7 and 8 of each case hold foreground
    ctx = _ctx(0, budget=6, ground_truth=lambda c: seg)
    sel = check_selection(get_strategy("random-fg").select(ctx), ctx)
    fg_items = {i for i in range(len(ctx.pool)) if ctx.pool[i].box[0][0] in (7, 8)}
    assert len(fg_items & set(sel.indices.tolist())) >= 4  # 2/3 of 6 drawn among the 4 foreground items
    assert sel.artefacts.to_record() == {"n_foreground_draws": 4}
