"""USIMC and USIMF end to end on a tiny network (paper §3.3, Appendix A), and the Appendix E redundancy scenario.

Known answers: the class weights and the weighted uncertainty, the query set ∝ u, the USIMC
embedding (truncated bottleneck gradient) and the USIMF kernel recomputed by hand with
autograd, one item at a time, on the item's own (unpadded) pixels.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from builders import tiny_plans

from alseg.active.experiments.redundancy import duplicate_case, original_id, redundancy_check
from alseg.data.pool import Pool
from alseg.errors import AlsegError
from alseg.model.network import build_network
from alseg.scoring.pool_inference import item_batches, score_pool
from alseg.strategies import SelectionContext, get_strategy, parse_strategy_options
from alseg.strategies.base import check_selection
from alseg.strategies.submodular import nonnegative_kernel
from alseg.strategies.usim import IGNORE_INDEX
from alseg.strategies.usim_math import FISHER_DAMPING, cosine_similarity

# case -> preprocessed (z, y, x); "b" is taller than the 16 x 16 patch (two windows) and
# narrower (zero-padded): the padded pixels must not enter any gradient
SHAPES = {"a": (6, 16, 16), "b": (5, 20, 12), "c": (6, 16, 16)}
VOXELS = np.array([5000, 100, 400])  # labelled voxels per class, background first


@pytest.fixture(scope="module")
def net():
    cfg = tiny_plans(n_stages=3, features=(4, 8, 8)).configuration("2d")
    torch.manual_seed(0)
    return build_network(cfg, in_channels=1, n_classes=3).eval()


def _images(shapes=SHAPES, seed=0):
    rng = np.random.default_rng(seed)
    return {c: rng.normal(size=(1, *s)).astype(np.float32) for c, s in shapes.items()}


def _ctx(net, seed=0, budget=4, labelled=(0, 1, 2), shapes=SHAPES):
    pool = Pool.build(shapes, "2d", (16, 16))
    images = _images(shapes)
    mask = np.zeros(len(pool), bool)
    mask[list(labelled)] = True
    return SelectionContext(
        model=net,
        pool=pool,
        labelled=mask,
        budget=budget,
        rng=np.random.default_rng(seed),
        load_image=images.__getitem__,
        labelled_voxels_per_class=VOXELS,
        n_classes=3,
        mc_passes=3,
        batch_size=8,
        show_progress=False,
    )


CTX_KEYS = ("seed", "budget", "labelled", "shapes")


def _usim(name, net, **kw):
    """``(strategy configured with the USIM options in kw, context from the rest)``."""
    ctx = _ctx(net, **{k: v for k, v in kw.items() if k in CTX_KEYS})
    opts = {"embedding_dim": 700, **{k: v for k, v in kw.items() if k not in CTX_KEYS}}
    return get_strategy(name, **opts), ctx


def _run(name, net, **kw):
    strat, ctx = _usim(name, net, **kw)
    return strat.run(ctx)


def _select(name, net, **kw):
    strat, ctx = _usim(name, net, **kw)
    return strat.select(ctx)


def _opts(**kw):
    """The USIM options of kw (the test default embedding_dim=700 included)."""
    return {"embedding_dim": 700, **{k: v for k, v in kw.items() if k not in CTX_KEYS}}


def _hand_gradients(net, ctx, indices, names):
    """Per item: autograd of ``sum_{valid pixels} CE(f(x), argmax f(x))`` w.r.t. ``names``."""
    params = dict(net.named_parameters())
    rows = {}
    for chunk, x, valid in item_batches(ctx, np.asarray(indices)):
        for j, i in enumerate(chunk):
            logits = net(x[j : j + 1])
            y = logits.argmax(1)
            loss = F.cross_entropy(logits, y, reduction="none")[valid[j : j + 1]].sum()
            grads = torch.autograd.grad(loss, [params[n] for n in names])
            rows[int(i)] = torch.cat([g.flatten() for g in grads])
    return torch.stack([rows[int(i)] for i in indices])


def _assert_rows_close(a, b, rel=1e-4):
    """Equal up to float32 noise: every row within ``rel`` of that row's largest magnitude
    (vmap's batched convolutions sum in another order than one item at a time)."""
    a, b = a.double(), b.double()
    assert a.shape == b.shape
    err = (a - b).abs().amax(dim=1)
    scale = b.abs().amax(dim=1).clamp(min=1e-12)
    assert bool((err <= rel * scale).all()), f"worst row error {float((err / scale).max()):.2e}"


# ----------------------------------------------------------------------------- options
def test_options_parse_strings_and_reject_bad_values():
    o = parse_strategy_options(
        "usimf", {"query_size": "300", "max_candidates": "none", "eta": "2", "optimizer": "submodlib", "figure": "0"}
    )
    assert (o.query_size, o.max_candidates, o.eta, o.optimizer, o.figure) == (300, None, 2.0, "submodlib", False)
    assert parse_strategy_options("usimc", {"query_size": "auto"}).query_size is None
    with pytest.raises(AlsegError, match="optimizer=.*'alseg' or 'submodlib'"):
        parse_strategy_options("usimf", {"optimizer": "lazy"})
    with pytest.raises(AlsegError, match="epsilon"):
        parse_strategy_options("usimf", {"epsilon": "1.5"})
    # another strategy's key is unknown here: refused, naming the valid keys
    with pytest.raises(AlsegError, match="unknown option fg_share for strategy 'usimf' — valid keys: .*query_size"):
        parse_strategy_options("usimf", {"fg_share": "0.5"})


# ----------------------------------------------------------------------------- uncertainty and query set
def test_class_weights_and_weighted_uncertainty(net):
    strat, ctx = _usim("usimc", net)
    res = strat.run(ctx)
    np.testing.assert_allclose(res.weights, [1 / 100, 1 / 400])  # foreground only
    ref = score_pool(_ctx(net), ctx.unlabelled, mc=True, deterministic=False)  # same seed, same masks
    np.testing.assert_array_equal(res.candidates, ref.indices)
    expected = ref.classwise_std[:, 1] / 100 + ref.classwise_std[:, 2] / 400
    np.testing.assert_allclose(res.u, expected, rtol=1e-6)
    np.testing.assert_allclose(res.uncertainty, ref.classwise_std[:, 1:].sum(1), rtol=1e-6)


def test_query_set_is_drawn_proportionally_to_u(net):
    res = _run("usimc", net, query_size=40000)
    assert res.Q == 40000 and len(res.draws) == 40000
    freq = np.bincount(res.draws, minlength=len(res.u)) / res.Q
    np.testing.assert_allclose(freq, res.u / res.u.sum(), atol=0.01)
    np.testing.assert_array_equal(res.columns, np.unique(res.draws))
    assert res.kernel.shape == (len(res.candidates), len(res.columns))


def test_elbow_query_size_is_the_knee_of_a_known_curve():
    """8 large uncertainties then a flat tail: the knee is index 8 (the first small value),
    so with B = 1 (5 B = 5 < 8) Q = 8; with B = 2 the floor 5 B = 10 wins."""
    from alseg.strategies.usim import plan_query_set

    u = np.array([100, 95, 90, 85, 80, 75, 70, 65, 3, 2.8, 2.6, 2.4, 2.2, 2.0, 1.8, 1.6, 1.4, 1.2, 1.0, 0.8])
    q = plan_query_set(np.random.default_rng(0).permutation(u), 1, None, np.random.default_rng(0))
    assert (q.knee, q.Q, q.rule) == (8, 8, "elbow")
    assert plan_query_set(u, 2, None, np.random.default_rng(0)).Q == 10
    q = plan_query_set(u, 1, 30, np.random.default_rng(0))
    assert (q.Q, q.rule, int(q.counts.sum())) == (30, "fixed", 30)
    np.testing.assert_array_equal(q.counts, np.bincount(q.draws)[q.columns])


def test_max_candidates(net):
    res = _run("usimc", net, budget=2)
    full = res
    res = _run("usimc", net, budget=2, max_candidates=6)
    assert len(res.candidates) == 6
    # the 6 most uncertain items (same seed -> same MC masks -> same u)
    top = np.sort(full.candidates[np.argsort(-full.u, kind="stable")[:6]])
    np.testing.assert_array_equal(res.candidates, top)
    sel = _select("usimc", net, budget=2, max_candidates=6)
    assert sel.artefacts.max_candidates == 6 and set(sel.indices) <= set(top)


# ----------------------------------------------------------------------------- embeddings and kernels
def test_usimc_embedding_is_the_truncated_bottleneck_gradient(net):
    strat, ctx = _usim("usimc", net)
    res = strat.run(ctx)
    names = net.bottleneck_parameters()  # conv1 has 576 weights: 700 reaches into conv2
    hand = _hand_gradients(net, ctx, res.candidates, names)[:, :700]
    assert res.embeddings.shape == (len(res.candidates), 700)
    _assert_rows_close(res.embeddings, hand)
    S = nonnegative_kernel(cosine_similarity(hand, hand[res.columns]), "cosine")
    torch.testing.assert_close(res.kernel, S, rtol=0, atol=1e-4)
    assert res.kernel_shift == 0.0 and float(res.kernel.min()) >= 0.0


def test_usimf_kernel_equals_the_fisher_formula(net):
    strat, ctx = _usim("usimf", net, embedding_dim=300, fisher_subset=5)
    res = strat.run(ctx)
    names = net.decoder_parameters()
    assert len(res.fisher_subset) == 5 and set(res.fisher_subset) <= set(res.columns)
    g = _hand_gradients(net, ctx, res.candidates, names).double()
    assert res.n_parameters == g.shape[1]
    F_hand = (
        g[res.fisher_subset].square().mean(0)
    )  # mean over the Fisher subset (paper Appendix A, Eq. 3; not the original code's one-sample square)
    idx = torch.as_tensor(res.param_index)
    assert len(idx) == 300 and bool((F_hand[idx] > 0).all())
    torch.testing.assert_close(res.fisher.double(), F_hand[idx], rtol=1e-3, atol=1e-4 * float(F_hand.max()))
    _assert_rows_close(res.embeddings, g[:, idx])
    f = F_hand[idx]
    f = f + FISHER_DAMPING * f.mean()  # the documented relative damping
    S = (g[:, idx] / f) @ g[res.columns][:, idx].T / 300
    torch.testing.assert_close(res.kernel.double() + res.kernel_shift, S, rtol=0, atol=1e-3 * float(S.abs().max()))
    assert float(res.kernel.min()) == 0.0  # min-shifted to >= 0


def test_usimf_cosine_ablation_is_the_cosine_in_the_fisher_metric(net):
    raw = _run("usimf", net, embedding_dim=300, fisher_subset=5)
    cos = _run("usimf", net, embedding_dim=300, fisher_subset=5, fisher_kernel="cosine")
    np.testing.assert_array_equal(cos.param_index, raw.param_index)  # same seed, same draws
    S = raw.kernel.double() + raw.kernel_shift  # the raw Fisher kernel
    G = raw.embeddings.double()
    f = raw.fisher.double()
    n = ((G.square() / (f + FISHER_DAMPING * f.mean())).sum(1) / 300).sqrt()  # sqrt(S_uu)
    expected = (S / n[:, None] / n[raw.columns][None, :] + 1) / 2
    torch.testing.assert_close(cos.kernel.double(), expected, rtol=0, atol=1e-4)
    sel = _select("usimf", net, fisher_kernel="cosine")
    assert sel.artefacts.kernel == "fisher-cosine"


def test_padded_pixels_have_no_gradient(net):
    ctx = _ctx(net)
    chunk, x, valid = next(item_batches(ctx, np.arange(len(ctx.pool)), 64))
    assert not bool(valid.all())  # case "b" is padded
    from alseg.strategies.usim import pseudo_label_targets

    y = pseudo_label_targets(net, x, valid)
    assert bool((y[~valid] == IGNORE_INDEX).all()) and bool((y[valid] >= 0).all())


def test_float16_embeddings_give_the_same_cosine_fisher_kernel(net):
    """The cosine Fisher kernel of float16 rows (stored divided by their largest magnitude)
    equals the float32 one: the row scales cancel in a cosine."""
    a = _run("usimf", net, embedding_dim=300, embedding_dtype="float32", fisher_kernel="cosine")
    b = _run("usimf", net, embedding_dim=300, embedding_dtype="float16", fisher_kernel="cosine")
    assert b.embeddings.dtype == torch.float16 and float(a.kernel.max() - a.kernel.min()) > 0.1
    torch.testing.assert_close(b.kernel, a.kernel, rtol=0, atol=1e-3)


@pytest.mark.parametrize(
    "name,multiset,eta", [("usimc", True, 1.0), ("usimf", True, 0.0), ("usimf", True, 1.0), ("usimc", False, 1.0)]
)
def test_usim_batch_is_the_greedy_maximiser_of_its_own_kernel(name, multiset, eta, net):
    """With a tiny epsilon stochastic greedy scores every item each step: the batch is plain
    greedy on FLQMI of the run's kernel with the run's eta (usimf's default 0, usimc's 1),
    weighted by the query multiplicities (or not)."""
    from alseg.strategies import get_strategy
    from alseg.strategies.submodular import FLQMI, naive_greedy

    extra = {} if eta == get_strategy(name).options.eta else {"eta": eta}  # the default, or set explicitly
    res = _run(name, net, epsilon=1e-9, query_size=30, query_multiset=multiset, **extra)
    fn = FLQMI(res.kernel, eta, query_weights=res.query.counts if multiset else None)
    picked, gains = naive_greedy(fn, 4)
    np.testing.assert_array_equal(res.picked, picked)
    np.testing.assert_allclose(res.gains, gains, rtol=1e-5)


def test_float16_embeddings_give_the_same_kernel(net):
    a = _run("usimf", net, embedding_dim=300, embedding_dtype="float32")
    b = _run("usimf", net, embedding_dim=300, embedding_dtype="float16")
    assert b.embeddings.dtype == torch.float16
    scale = float(a.kernel.abs().max())
    torch.testing.assert_close(b.kernel / scale, a.kernel / scale, rtol=0, atol=5e-3)


# ----------------------------------------------------------------------------- selection
@pytest.mark.parametrize("name", ["usimc", "usimf"])
def test_selection_is_distinct_unlabelled_and_seeded(name, net):
    a = check_selection(_select(name, net, seed=3), _ctx(net, seed=3))
    b = _select(name, net, seed=3)
    assert len(a.indices) == 4 and len(set(a.indices.tolist())) == 4
    assert not (a.indices < 3).any()  # items 0..2 are labelled
    np.testing.assert_array_equal(a.indices, b.indices)
    assert a.scores == b.scores and a.scores == a.artefacts.gains
    rec = {**a.artefacts.to_record(), "seconds": a.seconds}
    assert {"score", "embed", "kernel", "optimize"} <= set(rec["seconds"])
    assert rec["Q"] == sum(rec["query_set"]["draws"]) and len(rec["query_set"]["ids"]) == len(rec["query_set"]["draws"])
    emb = {"embeddings": a.embedding_map.embeddings, "role": a.embedding_map.role}
    assert emb["embeddings"].dtype == np.float32 and len(emb["embeddings"]) == len(emb["role"])
    assert (
        set(emb["role"]) <= {"labelled", "unlabelled", "query", "selected"} and (emb["role"] == "selected").sum() == 4
    )
    assert (emb["role"] == "labelled").sum() == 3
    c = _select(name, net, seed=3, figure="0")
    np.testing.assert_array_equal(c.indices, a.indices)  # the figure never changes the batch
    assert c.embedding_map is None


def test_submodlib_optimizer_and_tiny_pools(net):
    sel = check_selection(_select("usimc", net, optimizer="submodlib"), _ctx(net))
    assert sel.artefacts.optimizer == "submodlib" and len(set(sel.indices.tolist())) == 4
    # the budget covers every unlabelled item: all of them, no scoring
    ctx = _ctx(net, budget=50)
    sel = check_selection(get_strategy("usimf", embedding_dim=700).select(ctx), ctx)
    np.testing.assert_array_equal(np.sort(sel.indices), ctx.unlabelled)


# ----------------------------------------------------------------------------- redundancy (Appendix E)
def test_duplicate_case_appends_unlabelled_copies():
    pool = Pool.build(SHAPES, "2d", (16, 16))
    lab = np.zeros(len(pool), bool)
    lab[0] = True
    big, big_lab = duplicate_case(pool, lab, "a", 3)
    n_a = sum(it.case_id == "a" for it in pool.items)
    assert len(big) == len(pool) + 3 * n_a and big.ids[: len(pool)] == pool.ids
    assert big_lab.sum() == 1 and big_lab[0]
    copy = big[len(pool)]
    assert copy.id == pool[0].id + "#dup1" and copy.box == pool[0].box and original_id(copy.id) == pool[0].id
    with pytest.raises(AlsegError, match="choose one of"):
        duplicate_case(pool, lab, "zzz", 2)


@pytest.mark.parametrize("name", ["usimc", "usimf"])
def test_redundancy_batch_share_is_well_below_the_query_share(name, net):
    """Appendix E in miniature: 4 items of case "d" copied 20x flood the pool and the query set,
    but identical items have identical gradients, so once one copy is in the batch its
    duplicates' columns are covered and the batch moves on. (How far below the query share the
    batch lands on real data depends on how similar a case's distinct slices are to each other
    in gradient space, i.e. on the trained model.)"""
    shapes = {c: (4, 16, 16) for c in "abcde"}  # 20 distinct items, 4 per case
    ctx = _ctx(net, seed=0, budget=10, labelled=(0, 1), shapes=shapes)
    usim_opts = _opts(query_size=200, embedding_dim=300, fisher_subset=20)
    out = redundancy_check(ctx, case_id="d", copies=20, strategy=name, options=usim_opts)
    assert out["n_pool"] == 20 + 4 * 20 and out["Q"] == 200 and out["budget"] == 10
    assert out["query_share"] > 0.6  # the duplicated case floods the query set
    assert out["batch_share"] <= 0.5 and out["batch_share"] < out["query_share"] - 0.3
    assert out["uniform_share"] > out["batch_share"] and out["batch_repeats"] < out["uniform_repeats"]
    if name == "usimc":
        # a copy's cosine row equals its original's: once one is in, another adds no coverage and
        # the same relevance (1) as any uncovered query item, which also adds coverage
        assert out["batch_repeats"] == 0
    # (USIMF's kernel is not normalised: a copy of a large-gradient item can still win on the
    # relevance term, so it may repeat one; the paper's batch kept 18% from the duplicated scan)
    with pytest.raises(AlsegError, match="USIM strategy"):
        redundancy_check(dataclasses.replace(ctx), case_id="d", copies=2, strategy="random")


def test_redundancy_kernel_variants_select_from_the_same_scores_and_query_set(net):
    """``kernels=("cosine",)`` re-selects with the cosine Fisher kernel from the raw run's scores,
    query set and embeddings: with a plain greedy (tiny epsilon) it is exactly the batch a
    separate run with ``fisher_kernel=cosine`` and the same seed selects."""
    shapes = {c: (4, 16, 16) for c in "abcde"}
    where = dict(seed=0, budget=6, labelled=(0, 1), shapes=shapes)
    opts = _opts(query_size=60, embedding_dim=300, fisher_subset=10, epsilon=1e-9)
    both = redundancy_check(
        _ctx(net, **where), case_id="d", copies=5, strategy="usimf", kernels=("cosine",), options=opts
    )
    direct = redundancy_check(
        _ctx(net, **where), case_id="d", copies=5, strategy="usimf", options={**opts, "fisher_kernel": "cosine"}
    )
    assert both["kernel"] == "raw" and direct["kernel"] == "cosine"
    (variant,) = both["variants"]
    assert variant["kernel"] == "cosine" and variant["selected"] == direct["selected"]
    assert variant["batch_share"] == direct["batch_share"] and variant["batch_repeats"] == direct["batch_repeats"]
    with pytest.raises(AlsegError, match="needs --strategy usimf"):
        redundancy_check(_ctx(net, **where), case_id="d", copies=2, strategy="usimc", kernels=("cosine",), options=opts)
    with pytest.raises(AlsegError, match="unknown Fisher kernel"):
        redundancy_check(_ctx(net, **where), case_id="d", copies=2, strategy="usimf", kernels=("dot",), options=opts)


def test_unknown_case_error_lists_a_few_cases_not_all():
    from alseg.active.experiments.redundancy import _some

    names = [f"case_{i:03d}" for i in range(166)]
    text = _some(names)
    assert text.startswith("case_000, case_001") and text.endswith("(158 more)") and "case_100" not in text
    assert _some(names[:3]) == "case_000, case_001, case_002"


def test_redundancy_study_runs_many_cases_from_one_pass(net, monkeypatch):
    """Two cases, one scoring pass and one embedding pass each for USIMF and USIMC (a
    duplicate's rows are its original's); every variant reported per case and summarised."""
    import alseg.active.experiments.redundancy as red
    from alseg.strategies.usim import pipeline

    calls = {"score": 0, "grad": 0}
    real_score, real_grad = pipeline.score_pool, pipeline.gradient_embeddings

    def count_score(*a, **k):
        calls["score"] += 1
        return real_score(*a, **k)

    def count_grad(*a, **k):
        calls["grad"] += 1
        return real_grad(*a, **k)

    monkeypatch.setattr(pipeline, "score_pool", count_score)
    monkeypatch.setattr(pipeline, "gradient_embeddings", count_grad)
    shapes = {c: (4, 16, 16) for c in "abcde"}
    ctx = _ctx(net, seed=0, budget=6, labelled=(0, 1), shapes=shapes)
    out = red.redundancy_study(
        ctx, ["c", "d"], copies=10, options=_opts(query_size=60, embedding_dim=300, fisher_subset=10)
    )
    assert calls == {"score": 1, "grad": 2}
    assert [r["case_id"] for r in out["cases"]] == ["c", "d"] and out["n_pool"] == 20
    labels = {v[0] for v in red.STUDY_VARIANTS} | {"usimc"}
    assert len(labels) == 9
    for r in out["cases"]:
        assert set(r["variants"]) == labels
        assert r["pool_share"] == pytest.approx(44 / 58)  # 4 originals + 40 copies of 18 + 40 unlabelled
        assert r["query_share"] > 0.5 and r["uniform_repeats"] > 0
        assert r["variants"]["usimc"]["batch_repeats"] == 0  # identical cosine rows: a copy adds nothing
        for v in r["variants"].values():
            assert 0.0 <= v["batch_share"] <= 1.0
    s = out["summary"]
    assert s["usimc"]["batch_repeats"]["max"] == 0
    assert 0 <= s["usimf-raw-multiset-eta1"]["cases_below_query_without_repeats"] <= 2
    import json

    json.dumps(out)
