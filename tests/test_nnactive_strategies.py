"""nnActive's strategies (power, softrank, class-balanced PE, ClaSP PE, random-label2): known answers.

The per-strategy tests recompute the batch from the same pool scores and the same generator
with nnActive's own formulas, written here from its code (``nnactive/strategies/utils.py``
``power_noising``: ``log s + Gumbel(0, 1/β)``; ``bald.py`` SoftRankBALD: ``-log rank + Gumbel(0, 1)``;
``entropy_balanced.py``: the class quotas and ``uncertainties.py`` ``class_pred_entropy``:
``H(p̄) · p̄_c``), not imported.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_baselines import make_ctx

from alseg.errors import AlsegError
from alseg.scoring.pool_inference import score_pool
from alseg.scoring.scores import MCDropoutAccumulator
from alseg.strategies import get_strategy, parse_strategy_options, select_batch
from alseg.strategies.class_balanced import PLAIN, class_balanced_select, class_quotas, scheduled_beta
from alseg.strategies.noising import (
    descending_ranks,
    exponential_schedule,
    gumbel_top_b,
    power_keys,
    softrank_keys,
)
from alseg.strategies.uncertainty import top_b

NEW = ["power-bald", "power-pe", "softrank-bald", "cla-pe", "clasp-pe"]


# ----------------------------------------------------------------------------- the noising rules
def test_infinite_beta_is_top_b_and_large_beta_too():
    rng = np.random.default_rng(0)
    s = rng.random(50)
    g = rng.gumbel(size=50)
    assert list(gumbel_top_b(power_keys(s, np.inf, g), 7)) == list(top_b(s, 7))
    assert list(gumbel_top_b(power_keys(s, 1e6, g), 7)) == list(top_b(s, 7))
    assert list(gumbel_top_b(softrank_keys(s, np.inf, g), 7)) == list(top_b(s, 7))
    assert list(gumbel_top_b(softrank_keys(s, 1e6, g), 7)) == list(top_b(s, 7))


def test_beta_zero_is_uniform():
    """β = 0 ignores the scores: each of 5 items is drawn first with probability 1/5."""
    s = np.array([1e-6, 0.0, 1.0, 5.0, 100.0])
    rng = np.random.default_rng(1)
    first = [int(gumbel_top_b(power_keys(s, 0.0, g := rng.gumbel(size=5)), 1, g)[0]) for _ in range(20000)]
    freq = np.bincount(first, minlength=5) / 20000
    assert np.allclose(freq, 0.2, atol=0.012), freq


def test_power_draws_proportional_to_score_power():
    """One item drawn: P(i) = s_i^β / Σ s^β (Gumbel max trick), here β = 2."""
    s = np.array([1.0, 2.0, 3.0, 0.0])
    want = s**2 / (s**2).sum()
    rng = np.random.default_rng(2)
    first = [int(gumbel_top_b(power_keys(s, 2.0, g := rng.gumbel(size=4)), 1, g)[0]) for _ in range(20000)]
    freq = np.bincount(first, minlength=4) / 20000
    assert np.allclose(freq, want, atol=0.012), (freq, want)
    assert freq[3] == 0.0  # a zero score is never drawn while a positive one is left


def test_softrank_draws_proportional_to_inverse_rank():
    """P(i) = r_i^-β / Σ r^-β with β = 1 on ranks 1..4 (the scores' values do not matter)."""
    s = np.array([0.3, 10.0, 0.2, 0.9])  # ranks 3, 1, 4, 2
    r = descending_ranks(s)
    assert list(r) == [3, 1, 4, 2]
    want = (1 / r) / (1 / r).sum()
    rng = np.random.default_rng(3)
    first = [int(gumbel_top_b(softrank_keys(s, 1.0, g := rng.gumbel(size=4)), 1, g)[0]) for _ in range(20000)]
    freq = np.bincount(first, minlength=4) / 20000
    assert np.allclose(freq, want, atol=0.012), (freq, want)


def test_zero_scores_fill_the_batch_uniformly_once_positives_are_gone():
    s = np.array([0.0, 0.0, 0.0, 0.5])
    rng = np.random.default_rng(4)
    picks = []
    for _ in range(6000):
        g = rng.gumbel(size=4)
        pos = gumbel_top_b(power_keys(s, 1.0, g), 2, g)
        assert pos[0] == 3
        picks.append(int(pos[1]))
    assert np.allclose(np.bincount(picks, minlength=3)[:3] / 6000, 1 / 3, atol=0.03)


def test_noising_refuses_negative_or_non_finite_input():
    with pytest.raises(ValueError):
        power_keys(np.array([-1.0, 1.0]), 1.0, np.zeros(2))
    with pytest.raises(ValueError):
        power_keys(np.array([np.nan, 1.0]), 1.0, np.zeros(2))
    with pytest.raises(ValueError):
        softrank_keys(np.array([1.0]), -1.0, np.zeros(1))


# ----------------------------------------------------------------------------- class balance
def test_class_quotas_split_as_nnactive():
    rng = np.random.default_rng(0)
    # B = 10, 2 foreground classes, 66%: int(6.6) = 6 → 3 + 3, and 4 by plain PE
    assert class_quotas(10, 2, 0.66, rng) == {1: 3, 2: 3, PLAIN: 4}
    # B = 11: int(7.26) = 7 → 3 + 3 and one more to a random class; 4 by plain PE
    seen = set()
    for seed in range(20):
        q = class_quotas(11, 2, 0.66, np.random.default_rng(seed))
        assert q[PLAIN] == 4 and sorted((q[1], q[2])) == [3, 4]
        seen.add(q[1])
    assert seen == {3, 4}
    # 100 items, 3 classes, 66% → 66 = 22 x 3; 34 plain
    assert class_quotas(100, 3, 0.66, rng) == {1: 22, 2: 22, 3: 22, PLAIN: 34}
    assert class_quotas(5, 2, 0.0, rng) == {1: 0, 2: 0, PLAIN: 5}


def test_class_balanced_select_by_hand():
    """6 items, 2 classes, B = 4, 50%: one item per class, two by plain PE, never twice."""
    class_scores = np.array(
        [
            [0.9, 0.0],  # 0: class 1's best
            [0.8, 0.7],  # 1: class 1's second, class 2's best
            [0.1, 0.6],  # 2: class 2's second
            [0.0, 0.0],
            [0.2, 0.1],
            [0.0, 0.5],
        ]
    )
    plain = np.array([1.0, 0.9, 0.8, 0.1, 0.7, 0.2])
    for seed in range(10):
        rng = np.random.default_rng(seed)
        pos, owner = class_balanced_select(class_scores, plain, 4, 0.5, rng)
        assert len(set(pos.tolist())) == 4
        chosen = dict(zip(pos.tolist(), owner.tolist()))
        # whatever the order of lists, items 0 and 1 are taken (each list's best is one of them)
        assert {0, 1} <= set(chosen)
        assert sorted(owner.tolist()) == [PLAIN, PLAIN, 1, 2]
    # the order of lists decides who takes item 0 / 1; replay the draws for one seed by hand
    rng = np.random.default_rng(3)
    q = class_quotas(4, 2, 0.5, rng)
    order = [[1, 2, PLAIN][i] for i in rng.permutation(3)]
    taken, want = set(), []
    for c in order:
        s = plain if c == PLAIN else class_scores[:, c - 1]
        free = [i for i in np.argsort(-s, kind="stable") if i not in taken]
        for i in free[: q[c]]:
            taken.add(int(i))
            want.append((int(i), c))
    pos, owner = class_balanced_select(class_scores, plain, 4, 0.5, np.random.default_rng(3))
    assert list(zip(pos.tolist(), owner.tolist())) == want


def test_exponential_schedule_values():
    assert np.allclose(exponential_schedule(5, 1, 100), [1, 100**0.25, 10, 100**0.75, 100])
    assert np.allclose(exponential_schedule(1, 1, 100), [1])
    assert scheduled_beta(1, 10, 1, 100) == pytest.approx(1.0)
    assert scheduled_beta(10, 10, 1, 100) == pytest.approx(100.0)
    assert scheduled_beta(4, 7, 1, 100) == pytest.approx(10.0)  # the middle of 7 steps
    assert scheduled_beta(12, 10, 1, 100) == pytest.approx(100.0)  # a run extended past its plan
    with pytest.raises(ValueError):
        exponential_schedule(0, 1, 100)


def test_class_entropy_is_entropy_times_mean_probability():
    """nnActive's class_pred_entropy channel c is H(p̄)·p̄_c; its pixel mean per item, and the
    plain predictive entropy H(p̄), come out of the MC accumulator."""
    gen = torch.Generator().manual_seed(0)
    passes = [torch.rand(2, 3, 4, 5, generator=gen).softmax(1) for _ in range(4)]
    acc = MCDropoutAccumulator()
    for p in passes:
        acc.update(p)
    s = acc.finalize()
    mean = torch.stack(passes).double().mean(0)
    h = -(mean * mean.log()).sum(1)
    want = (h.unsqueeze(1) * mean).mean(dim=(2, 3))
    assert torch.allclose(s.class_entropy.double(), want, atol=1e-6)
    assert torch.allclose(s.entropy_of_mean.double(), h.mean(dim=(1, 2)), atol=1e-6)
    # with a mask, only the masked pixels count
    mask = torch.zeros(2, 4, 5, dtype=torch.bool)
    mask[:, :2] = True
    s = acc.finalize(mask)
    want = (h.unsqueeze(1) * mean)[:, :, :2].mean(dim=(2, 3))
    assert torch.allclose(s.class_entropy.double(), want, atol=1e-6)


# ----------------------------------------------------------------------------- on a pool
def _replay_scores(name: str, **kw):
    """The strategy's selection, and the pool scores and generator it saw (same seed)."""
    ctx = make_ctx(budget=4, mc_passes=3, **kw)
    sel = get_strategy(name, batch_uncertainty=False).select(ctx)
    replay = make_ctx(budget=4, mc_passes=3, **kw)
    scores = score_pool(replay, mc=True, deterministic=False)
    return sel, scores, replay.rng


@pytest.mark.parametrize("name, field", [("power-bald", "bald"), ("power-pe", "predictive_entropy")])
def test_power_strategies_equal_nnactive_formula(name, field):
    sel, scores, rng = _replay_scores(name)
    s = getattr(scores, field).astype(np.float64)
    with np.errstate(divide="ignore"):
        noised = np.log(s) + rng.gumbel(0, 1.0**-1, size=s.shape)  # nnActive's power_noising, beta = 1
    want = scores.indices[np.argsort(-noised, kind="stable")[:4]]
    assert list(sel.indices) == list(want)


def test_softrank_bald_equals_nnactive_formula():
    sel, scores, rng = _replay_scores("softrank-bald")
    order = np.lexsort((np.arange(len(scores.bald)), -scores.bald.astype(np.float64)))  # sorted by score
    soft = -np.log(np.arange(len(order)) + 1) + rng.gumbel(0, 1, size=len(order))
    # nnActive draws the noise per rank position; alseg per item: the same draw, item = order[rank]
    per_item = np.empty_like(soft)
    per_item[order] = soft
    want = scores.indices[np.argsort(-per_item, kind="stable")[:4]]
    assert list(sel.indices) == list(want)


@pytest.mark.parametrize("name", ["cla-pe", "clasp-pe"])
def test_class_balanced_strategies_equal_nnactive_formula(name):
    sel, scores, rng = _replay_scores(name)
    mean_fg = scores.class_entropy[:, 1:].astype(np.float64)
    plain = scores.predictive_entropy.astype(np.float64)
    n_cls = int(4 * 0.66)  # nnActive's _compose_query_of_patches
    classes = [1, 2]
    per = {c: n_cls // 2 for c in classes}
    per[-1] = 4 - n_cls
    for c in rng.permutation(np.array(classes))[: n_cls % 2]:
        per[int(c)] += 1
    order = [[1, 2, -1][i] for i in rng.permutation(3)]
    lists = {1: mean_fg[:, 0], 2: mean_fg[:, 1], -1: plain}
    if name == "clasp-pe":  # round 1 of 1 planned: beta = exponential_schedule(1, 1, 100)[0] = 1
        with np.errstate(divide="ignore"):
            lists = {c: np.log(lists[c]) + rng.gumbel(0, 1.0, size=len(plain)) for c in (1, 2, -1)}
    taken: list[int] = []
    for c in order:
        ranked = [int(i) for i in np.argsort(-lists[c], kind="stable") if int(i) not in taken]
        taken += ranked[: per[c]]
    assert list(sel.indices) == list(scores.indices[taken])
    assert sorted(sel.artefacts.selected_for) == sorted([1] * per[1] + [2] * per[2] + [-1] * per[-1])


def test_clasp_pe_beta_follows_the_rounds():
    for round_index, want in [(1, 1.0), (3, 10.0), (5, 100.0)]:
        ctx = make_ctx(budget=4, mc_passes=3, round_index=round_index, planned_rounds=5)
        sel = get_strategy("clasp-pe", batch_uncertainty=False).select(ctx)
        assert sel.artefacts.beta == pytest.approx(want)
    ctx = make_ctx(budget=4, mc_passes=3)
    assert get_strategy("cla-pe", batch_uncertainty=False).select(ctx).artefacts.beta is None


@pytest.mark.parametrize("name", NEW)
def test_new_strategies_keep_the_invariants_and_are_seeded(name):
    a = select_batch(get_strategy(name), make_ctx(budget=5, mc_passes=2), uncertainty_seed=7)
    b = select_batch(get_strategy(name), make_ctx(budget=5, mc_passes=2), uncertainty_seed=7)
    assert list(a.indices) == list(b.indices)
    assert len(set(a.indices.tolist())) == 5
    assert a.batch_uncertainty is not None and np.isfinite(a.batch_uncertainty)
    assert all(np.isfinite(s) for s in a.scores)


def test_random_fg33_draws_a_third_among_foreground():
    shapes = {"a": (6, 16, 16), "b": (6, 16, 16)}
    seg = {c: np.zeros(s, np.uint8) for c, s in shapes.items()}
    seg["a"][0, 4:8, 4:8] = 1  # slice 0 of case a
    seg["b"][2:5, 4:8, 4:8] = 2  # slices 2-4 of case b
    ctx = make_ctx(shapes=shapes, labelled=(), budget=6, ground_truth=lambda c: seg[c])
    sel = get_strategy("random-fg33").select(ctx)
    assert sel.artefacts.n_foreground_draws == 2  # round(6 / 3)
    fg_items = {i for i in range(len(ctx.pool)) if (ctx.pool.patch(seg[ctx.pool[i].case_id], i) > 0).any()}
    assert len(fg_items) == 4
    assert len(fg_items & set(sel.indices.tolist())) >= 2
    assert (
        get_strategy("random-fg")
        .select(make_ctx(shapes=shapes, labelled=(), budget=6, ground_truth=lambda c: seg[c]))
        .artefacts.n_foreground_draws
        == 4
    )


@pytest.mark.parametrize(
    "name, raw",
    [
        ("power-bald", {"beta": "inf"}),
        ("power-pe", {"beta": "-1"}),
        ("clasp-pe", {"beta_end": "0"}),
        ("cla-pe", {"fg_ratio": "1.5"}),
    ],
)
def test_bad_options_are_refused_before_work(name, raw):
    with pytest.raises(AlsegError, match="invalid option"):
        parse_strategy_options(name, raw)
