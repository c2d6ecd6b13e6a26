"""The pool scoring engine and the baseline strategies: known answers on tiny networks and pools."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from builders import tiny_plans
from torch import nn

from alseg.data.pool import Pool
from alseg.model.network import MCDropout, build_network, head_gradient_embedding
from alseg.scoring.pool_inference import batch_uncertainty, item_batches, score_pool
from alseg.scoring.scores import MCDropoutAccumulator
from alseg.strategies import diversity, get_strategy, select_batch
from alseg.strategies.base import SelectionContext, check_selection
from alseg.strategies.uncertainty import top_b

STRATEGIES = ["entropy", "meanstd", "bald", "stochastic-batches", "coreset", "badge"]
K = 3


def record_of(sel) -> dict:
    """The strategy's part of the round record, as the loop writes it."""
    return {
        "seconds": sel.seconds,
        "batch_uncertainty": sel.batch_uncertainty,
        **(sel.artefacts.to_record() if sel.artefacts is not None else {}),
    }


def tiny_net(config: str = "2d"):
    torch.manual_seed(0)
    cfg = tiny_plans(n_stages=3, features=(4, 8, 16)).configuration(config)
    return build_network(cfg, in_channels=1, n_classes=K), tuple(cfg.patch_size)


class CountingImages:
    """A fake ``load_image``: random (1, z, y, x) volumes per case, counting the loads."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], seed: int = 0):
        rng = np.random.default_rng(seed)
        self.volumes = {c: rng.normal(size=(1, *s)).astype(np.float32) for c, s in shapes.items()}
        self.loads: dict[str, int] = {}

    def __call__(self, case_id: str) -> np.ndarray:
        self.loads[case_id] = self.loads.get(case_id, 0) + 1
        return self.volumes[case_id]


# case "a" is smaller than the 16 x 16 patch along y: its items are padded
SHAPES_2D = {"a": (4, 12, 16), "b": (3, 24, 20)}


def make_ctx(
    net=None, shapes=SHAPES_2D, patch=(16, 16), config="2d", labelled=(0, 5), seed=0, **kw
) -> SelectionContext:
    if net is None:
        net, patch = tiny_net(config)
    pool = Pool.build(shapes, config, patch)
    mask = np.zeros(len(pool), bool)
    mask[list(labelled)] = True
    args = dict(budget=3, mc_passes=3, batch_size=5, show_progress=False)
    args.update(kw)
    return SelectionContext(
        model=net,
        pool=pool,
        labelled=mask,
        rng=np.random.default_rng(seed),
        load_image=CountingImages(shapes),
        labelled_voxels_per_class=np.ones(K),
        n_classes=K,
        **args,
    )


# ----------------------------------------------------------------------------- engine
def test_item_batches_pads_centred_and_reads_each_case_once():
    ctx = make_ctx()
    idx = np.array([0, 10, 1, 11, 2, 12, 3])  # interleaved cases "a" (0-3) and "b" (4-15)
    seen = []
    for chunk, x, valid in item_batches(ctx, idx, batch_size=3):
        assert x.dtype == torch.float32 and x.shape[1:] == (1, 16, 16) and valid.shape[1:] == (16, 16)
        for j, i in enumerate(chunk):
            raw = ctx.pool.patch(ctx.load_image.volumes[ctx.pool[int(i)].case_id], int(i))
            h, w = raw.shape[1:]
            y0, x0 = (16 - h) // 2, (16 - w) // 2  # centred, as training pads
            assert valid[j].sum() == h * w and valid[j, y0 : y0 + h, x0 : x0 + w].all()
            np.testing.assert_array_equal(x[j, :, y0 : y0 + h, x0 : x0 + w].numpy(), raw)
            assert (x[j][:, ~valid[j]] == 0).all()
        seen += list(chunk)
    assert sorted(seen) == sorted(idx) and ctx.load_image.loads == {"a": 1, "b": 1}


@pytest.mark.parametrize("config", ["2d", "3d_fullres"])
def test_uniform_prediction_has_entropy_log_k_and_no_mc_spread(config: str):
    net, patch = tiny_net(config)
    with torch.no_grad():
        net.last_decoder_layer.weight.zero_()
        net.last_decoder_layer.bias.zero_()
    shapes = SHAPES_2D if config == "2d" else {"a": (6, 12, 16), "b": (9, 16, 20)}
    ctx = make_ctx(net, shapes, patch, config, labelled=(0,))  # 3D: item 0 is padded in z and y
    s = score_pool(ctx)
    assert list(s.indices) == list(ctx.unlabelled)
    np.testing.assert_allclose(s.entropy, math.log(K), rtol=1e-6)
    np.testing.assert_allclose(s.mean_std, 0.0, atol=1e-7)
    np.testing.assert_allclose(s.bald, 0.0, atol=1e-6)
    assert s.classwise_std.shape == (len(s.indices), K) and np.abs(s.classwise_std).max() < 1e-4


def test_mc_scores_vanish_when_all_passes_agree():
    ctx = make_ctx(dropout_mc=0.0, mc_passes=4)
    s = score_pool(ctx)
    assert (s.entropy > 0).all()
    np.testing.assert_allclose(s.mean_std, 0.0, atol=1e-7)
    np.testing.assert_allclose(s.bald, 0.0, atol=1e-6)
    np.testing.assert_allclose(s.classwise_std, 0.0, atol=1e-4)


def test_mc_passes_disagree_with_dropout_and_are_deterministic_under_the_seed():
    a, b = score_pool(make_ctx(seed=3)), score_pool(make_ctx(seed=3))
    assert (a.mean_std > 0).all() and (a.bald > 0).all()
    np.testing.assert_array_equal(a.mean_std, b.mean_std)
    np.testing.assert_array_equal(a.classwise_std, b.classwise_std)
    c = score_pool(make_ctx(seed=4))
    assert not np.array_equal(a.mean_std, c.mean_std)


def test_grouping_passes_in_one_forward_changes_nothing_without_dropout():
    a = score_pool(make_ctx(dropout_mc=0.0))
    b = score_pool(make_ctx(dropout_mc=0.0), passes_per_forward=3)
    np.testing.assert_allclose(a.entropy, b.entropy, rtol=1e-5)
    np.testing.assert_allclose(a.classwise_std, b.classwise_std, atol=1e-4)


class ChannelDropout(MCDropout):
    """Drops whole channels: the random mask is (N, C, 1, 1) whatever the spatial size."""

    def forward(self, x):
        return F.dropout2d(x, self.p, True) if self.training and self.p > 0 else x


def pointwise_net() -> nn.Module:
    """A per-pixel network: its output at a pixel depends on that pixel only."""
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(1, 8, 1), ChannelDropout(0.0), nn.LeakyReLU(), nn.Conv2d(8, K, 1))


def test_padding_does_not_change_an_items_scores():
    """The same content scored as a padded item (12 x 14 in a 16 x 16 patch) and as an unpadded
    one (patch 12 x 14) gives the same entropy, mean STD, BALD and class-wise STD."""
    shapes = {"a": (4, 12, 14)}
    padded = make_ctx(pointwise_net(), shapes, (16, 16), labelled=(), dropout_mc=0.5, seed=7)
    exact = make_ctx(pointwise_net(), shapes, (12, 14), labelled=(), dropout_mc=0.5, seed=7)
    _, _, valid = next(item_batches(padded, np.array([0])))
    assert valid.sum() == 12 * 14  # really padded
    p, e = score_pool(padded), score_pool(exact)
    assert (p.mean_std > 0).all()
    for field in ("entropy", "mean_std", "bald", "classwise_std"):
        np.testing.assert_allclose(getattr(p, field), getattr(e, field), rtol=1e-5, atol=1e-6, err_msg=field)


def test_masked_accumulator_equals_accumulator_on_the_crop():
    torch.manual_seed(0)
    passes = [torch.rand(2, K, 6, 5).softmax(1) for _ in range(4)]
    mask = torch.zeros(2, 6, 5, dtype=torch.bool)
    mask[:, 1:4, :3] = True
    full, crop = MCDropoutAccumulator(), MCDropoutAccumulator()
    for p in passes:
        full.update(p)
        crop.update(p[:, :, 1:4, :3])
    a, b = full.finalize(mask), crop.finalize()
    for field in ("mean_std", "bald", "entropy_of_mean", "classwise_std_sum"):
        torch.testing.assert_close(getattr(a, field), getattr(b, field))


def test_batch_uncertainty_sums_foreground_columns():
    assert batch_uncertainty(np.array([[5.0, 1.0, 2.0], [7.0, 0.5, 0.25]])) == pytest.approx(3.75)


# ----------------------------------------------------------------------------- strategies
def test_top_b_breaks_ties_by_position():
    assert list(top_b(np.array([1.0, 3.0, 2.0, 3.0]), 3)) == [1, 3, 2]


@pytest.mark.parametrize("name,field", [("entropy", "entropy"), ("meanstd", "mean_std"), ("bald", "bald")])
def test_top_b_strategies_return_the_highest_scores(name: str, field: str):
    sel = select_batch(get_strategy(name), make_ctx(seed=2), uncertainty_seed=0)
    s = score_pool(make_ctx(seed=2))  # the same generator state: the same MC draws
    values = getattr(s, field)
    assert set(sel.indices) == set(s.indices[np.argsort(-values)[:3]])
    np.testing.assert_allclose(sorted(sel.scores, reverse=True), np.sort(values)[::-1][:3], rtol=1e-6)
    assert record_of(sel)["seconds"]["score"] > 0 and record_of(sel)["batch_uncertainty"] > 0
    json.dumps(record_of(sel))


def test_stochastic_batches_selects_the_best_drawn_batch():
    ctx = make_ctx(seed=11)
    sel = check_selection(get_strategy("stochastic-batches").select(ctx), ctx)
    # replay: the engine draws its dropout seed from ctx.rng, then the Q batches are drawn
    replay = make_ctx(seed=11)
    ent = score_pool(replay, mc=False).entropy.astype(np.float64)
    n = len(ent)
    q = n // 3
    batches = [replay.rng.choice(n, size=3, replace=False) for _ in range(q)]
    sums = [ent[b].sum() for b in batches]
    assert record_of(sel)["stb_batches"] == q == 4
    assert record_of(sel)["stb_best_batch_score"] == pytest.approx(max(sums))
    assert sum(sel.scores) == pytest.approx(max(sums))
    assert set(sel.indices) == set(replay.unlabelled[batches[int(np.argmax(sums))]])
    assert record_of(sel)["stb_median_batch_score"] == pytest.approx(float(np.median(sums)))


def test_coreset_picks_the_farthest_items(monkeypatch):
    """Hand-made 1D features: item i's feature is its image value; labelled item 0 sits at 0."""
    values = {0: 0.0, 1: 1.0, 2: 2.0, 3: 10.0, 4: 11.0, 5: 5.0}
    shapes = {"a": (6, 16, 16)}
    ctx = make_ctx(shapes=shapes, labelled=(0,), budget=2)
    for z, v in values.items():
        ctx.load_image.volumes["a"][0, z] = v
    monkeypatch.setattr(diversity, "_bottleneck", lambda net, x, valid: x.flatten(1)[:, :1])
    sel = check_selection(get_strategy("coreset").select(ctx), ctx)
    assert list(sel.indices) == [4, 5]  # 11 is farthest from 0; then 5 (5 from 0, 6 from 11)
    assert sel.scores == pytest.approx([11.0, 5.0])


def test_embeddings_with_a_valid_mask_equal_the_plain_ones_when_unpadded_and_ignore_padding():
    net, _ = tiny_net()
    net.eval()
    torch.manual_seed(2)
    x = torch.randn(3, 1, 16, 16)
    full = torch.ones(3, 16, 16, dtype=torch.bool)
    with torch.no_grad():
        torch.testing.assert_close(
            head_gradient_embedding(net, x, full), head_gradient_embedding(net, x), rtol=1e-4, atol=1e-4
        )
        torch.testing.assert_close(net.bottleneck_features(x, full), net.bottleneck_features(x))
        part = full.clone()
        part[:, :4] = False
        a = head_gradient_embedding(net, x, part)
        assert not torch.allclose(a, head_gradient_embedding(net, x, full))
        assert not torch.allclose(net.bottleneck_features(x, part), net.bottleneck_features(x))
        # the bias gradient is exactly the residual summed over the valid pixels
        z = net(x)
        r = z.softmax(1) - F.one_hot(z.argmax(1), K).movedim(-1, 1)
        db = (r * part.unsqueeze(1)).flatten(2).sum(2)
        torch.testing.assert_close(a.reshape(3, K, -1)[:, :, -1], db, rtol=1e-4, atol=1e-4)


def test_badge_returns_distinct_items_deterministic_under_a_seed():
    a = check_selection(get_strategy("badge").select(make_ctx(seed=5, budget=5)), make_ctx(seed=5, budget=5))
    b = get_strategy("badge").select(make_ctx(seed=5, budget=5))
    assert list(a.indices) == list(b.indices) and len(set(a.indices)) == 5
    assert all(s > 0 for s in a.scores)


@pytest.mark.parametrize("name", STRATEGIES)
def test_every_strategy_returns_b_distinct_unlabelled_items_deterministically(name: str):
    runs = []
    for _ in range(2):
        ctx = make_ctx(seed=21, labelled=(0, 3, 6, 9))
        sel = select_batch(get_strategy(name), ctx, uncertainty_seed=0)
        assert len(sel.indices) == 3 and not ctx.labelled[sel.indices].any()
        assert all(isinstance(s, float) for s in sel.scores)
        rec = json.loads(json.dumps(record_of(sel)))
        assert rec["seconds"]["score"] >= 0 and rec["batch_uncertainty"] is not None
        runs.append(list(sel.indices))
    assert runs[0] == runs[1]


@pytest.mark.parametrize("name", STRATEGIES)
def test_budget_of_the_whole_pool_returns_every_unlabelled_item(name: str):
    ctx = make_ctx(labelled=tuple(range(12)), budget=10)  # 16 items, 4 unlabelled
    sel = check_selection(get_strategy(name).select(ctx), ctx)
    assert sorted(sel.indices) == list(range(12, 16))
