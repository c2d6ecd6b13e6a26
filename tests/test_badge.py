"""BADGE's k-means++ seeding as in Ash et al. 2020: the largest norm first, then D² draws."""

from __future__ import annotations

import numpy as np
import torch
from test_baselines import make_ctx

from alseg.strategies import diversity, get_strategy
from alseg.strategies.base import check_selection
from alseg.strategies.diversity import badge_seeding

X = np.array([[3.0, 0.0], [0.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.9, 0.1]])


def test_first_centre_is_the_largest_norm_and_draws_follow_d2_by_hand():
    """Seed 7 draws u = 0.6251, 0.8972. Centre 0 (norm 3). D² to it: [0, 9, 10, 5, 0.02], total
    24.02, u·total = 15.01 falls in item 2's step (9, 19]. D² to {0, 2}: [0, 1, 0, 1, 0.02],
    total 2.02, u·total = 1.81 falls in item 3's step (1, 2]."""
    assert badge_seeding(X, 3, np.random.default_rng(7)).tolist() == [0, 2, 3]
    # the near-duplicate of the first centre (item 4, D² = 0.02) is almost never drawn
    picks = [badge_seeding(X, 2, np.random.default_rng(s))[1] for s in range(200)]
    assert picks.count(4) <= 3 and 0 not in picks


def test_duplicates_are_never_drawn_and_k_distinct_rows_come_back():
    x = np.array([[1.0, 0.0]] * 3 + [[0.0, 2.0]])
    out = badge_seeding(x, 4, np.random.default_rng(0))
    assert out[0] == 3 and sorted(out.tolist()) == [0, 1, 2, 3]


def test_badge_strategy_picks_the_largest_norm_item_first(monkeypatch):
    ctx = make_ctx(labelled=(0,), budget=3)
    norms = {}

    def fake(net, x, valid):
        e = x.flatten(1)[:, :4].abs() + 0.1
        return e

    monkeypatch.setattr(diversity, "head_gradient_embedding", fake)
    sel = check_selection(get_strategy("badge").select(ctx), ctx)
    emb, _ = diversity.embed_items(make_ctx(labelled=(0,)), ctx.unlabelled, fake, "x")
    norms = torch.linalg.vector_norm(emb, dim=1).numpy()
    assert sel.indices[0] == ctx.unlabelled[int(np.argmax(norms))]
    assert sel.artefacts.seeding == "ash"
    alt = check_selection(get_strategy("badge", seeding="sklearn").select(make_ctx(labelled=(0,), budget=3)), ctx)
    assert alt.artefacts.seeding == "sklearn"
