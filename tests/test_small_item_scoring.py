"""Items smaller than the patch scored from one sliding window per case (alseg.scoring.case_windows):
box aggregation against numpy, the scores against a hand-made reference on the network's own
sliding-window prediction, forwards counted, embeddings from their windows, and every strategy
selecting on such items. Tiny networks and random volumes: seconds."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pytest
import torch
from builders import tiny_plans
from monai.inferers import sliding_window_inference

from alseg.data.pool import Pool, read_window
from alseg.model.inference import predict_volume, sliding_windows
from alseg.model.network import build_network, eval_mode, head_gradient_embedding, mc_dropout
from alseg.scoring.case_windows import embedding_windows
from alseg.scoring.pool_inference import case_chunks, chunk_seed, score_pool
from alseg.scoring.scores import MCDropoutAccumulator, box_means, box_sums
from alseg.strategies import diversity, get_strategy, select_batch
from alseg.strategies.base import SelectionContext
from alseg.strategies.registry import available

K = 3
SHAPES = {
    "3d_fullres": {"a": (12, 40, 36), "b": (6, 12, 20)},  # b is smaller than the 8 x 16 x 16 patch in z and y
    "2d": {"a": (4, 12, 40), "b": (3, 24, 20)},  # a is smaller than the 16 x 16 patch in y
}
ITEMS = {"3d_fullres": (4, 8, 8), "2d": (8, 8)}


def tiny(config: str):
    torch.manual_seed(0)
    cfg = tiny_plans(n_stages=3, features=(4, 8, 16)).configuration(config)
    return build_network(cfg, in_channels=1, n_classes=K), cfg


def make_ctx(config: str = "3d_fullres", item=None, labelled=(), shapes=None, **kw) -> SelectionContext:
    net, cfg = tiny(config)
    shapes = shapes or SHAPES[config]
    rng = np.random.default_rng(0)
    volumes = {c: rng.normal(size=(1, *s)).astype(np.float32) for c, s in shapes.items()}
    truth = {c: (v[0] > 1.0).astype(np.uint8) + (v[0] > 1.8) for c, v in volumes.items()}
    pool = Pool.build(shapes, config, tuple(cfg.patch_size), item_size=item or ITEMS[config])
    mask = np.zeros(len(pool), bool)
    mask[list(labelled)] = True
    args = dict(budget=3, mc_passes=3, batch_size=3, show_progress=False)
    args.update(kw)
    return SelectionContext(
        model=net,
        pool=pool,
        labelled=mask,
        rng=np.random.default_rng(0),
        load_image=volumes.__getitem__,
        labelled_voxels_per_class=np.array([100.0, 10.0, 5.0]),
        n_classes=K,
        ground_truth=truth.__getitem__,
        **args,
    )


@contextmanager
def counting(net):
    """Samples through the network's first block (every forward, whatever method runs it)."""
    seen = [0]
    hook = net.input_block.register_forward_pre_hook(lambda _m, args: seen.__setitem__(0, seen[0] + args[0].shape[0]))
    try:
        yield seen
    finally:
        hook.remove()


# ----------------------------------------------------------------------------- aggregation
def test_box_sums_and_means_equal_numpy_per_box():
    rng = np.random.default_rng(3)
    maps = rng.normal(size=(4, 9, 13, 11))
    shape = maps.shape[1:]
    boxes = [((0, 9), (0, 13), (0, 11)), ((2, 3), (5, 6), (10, 11)), ((8, 9), (0, 13), (4, 7))]
    for _ in range(30):
        lo = [int(rng.integers(0, n)) for n in shape]
        boxes.append(tuple((a, int(rng.integers(a + 1, n + 1))) for a, n in zip(lo, shape)))
    want = np.array([[m[tuple(slice(a, b) for a, b in box)].sum() for m in maps] for box in boxes])
    got = box_sums(torch.from_numpy(maps).float(), np.array(boxes))
    assert got.dtype == torch.float64 and got.shape == (len(boxes), 4)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-4)  # float32 maps, float64 sums
    sizes = np.array([np.prod([b - a for a, b in box]) for box in boxes])
    np.testing.assert_allclose(box_means(torch.from_numpy(maps), np.array(boxes)).numpy(), want / sizes[:, None])


def test_box_scores_equal_finalize_with_the_box_as_mask():
    """Per-box MC scores from the voxel maps are the per-item ones of an item whose mask is the box."""
    rng = np.random.default_rng(1)
    acc = MCDropoutAccumulator()
    for _ in range(4):
        acc.update(torch.from_numpy(rng.dirichlet(np.ones(K), size=(6, 7, 5)).transpose(3, 0, 1, 2)[None]).float())
    boxes = np.array([((0, 6), (0, 7), (0, 5)), ((1, 4), (2, 3), (0, 5)), ((5, 6), (6, 7), (4, 5))])
    got = acc.box_scores(boxes)
    for j, box in enumerate(boxes):
        mask = torch.zeros((1, 6, 7, 5), dtype=torch.bool)
        mask[(0, *(slice(a, b) for a, b in box))] = True
        want = acc.finalize(mask)
        for field in ("mean_std", "bald", "entropy_of_mean", "classwise_std_sum", "class_entropy"):
            np.testing.assert_allclose(getattr(got, field)[j].numpy(), getattr(want, field)[0].numpy(), rtol=1e-5)


@pytest.mark.parametrize("shape", [(12, 40, 36), (6, 12, 20), (8, 16, 16)])
def test_sliding_windows_are_the_windows_monai_predicts(shape):
    patch = (8, 16, 16)
    seen = []

    def predictor(x, where):
        seen.extend(tuple((s.start, s.stop) for s in w[2:]) for w in where)
        return x

    sliding_window_inference(torch.zeros(1, 1, *shape), patch, 1, predictor, overlap=0.5, with_coord=True)
    pad = [max(p - s, 0) // 2 for s, p in zip(shape, patch)]
    assert sliding_windows(shape, patch) == [tuple((a - d, b - d) for (a, b), d in zip(w, pad)) for w in seen]


# ----------------------------------------------------------------------------- scores
def _entr(p: np.ndarray, axis: int) -> np.ndarray:
    return np.where(p > 0, -p * np.log(np.where(p > 0, p, 1.0)), 0.0).sum(axis=axis)


def _predict(net, volume: np.ndarray, cfg, sw_batch_size: int) -> np.ndarray:
    return predict_volume(net, volume, cfg, sw_batch_size=sw_batch_size).double().numpy()


def reference_scores(ctx: SelectionContext, cfg, idx: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Each case with requested items predicted by ``predict_volume`` (the network's sliding window),
    the passes kept, the voxel scores averaged over each box by hand (numpy, float64)."""
    pool, net, T = ctx.pool, ctx.model, ctx.mc_passes
    out: dict[str, np.ndarray] = {f: np.zeros(len(idx)) for f in ("entropy", "mean_std", "bald", "predictive")}
    out |= {f: np.zeros((len(idx), K)) for f in ("classwise", "class_entropy")}
    row = {int(i): j for j, i in enumerate(idx)}
    for c, chunk in enumerate(case_chunks(ctx, idx)):  # the case order score_pool numbers its seeds by
        volume = ctx.load_image(pool[int(chunk[0])].case_id)
        boxes = np.array([pool[int(i)].box for i in chunk])
        if cfg.name == "2d":  # only the slices holding items are predicted (and drawn masks for)
            slices = np.unique(boxes[:, 0, 0])
            volume, boxes[:, 0, 0] = volume[:, slices], np.searchsorted(slices, boxes[:, 0, 0])
            boxes[:, 0, 1] = boxes[:, 0, 0] + 1

        with torch.no_grad(), eval_mode(net):
            h_det = _entr(_predict(net, volume, cfg, ctx.batch_size), 0)
        torch.manual_seed(chunk_seed(seed, c))
        with torch.no_grad(), mc_dropout(net, ctx.dropout_mc):
            ps = np.stack([_predict(net, volume, cfg, ctx.batch_size) for _ in range(T)])
        mean, std = ps.mean(0), ps.std(0)
        h = _entr(mean, 0)
        bald = np.clip(h - _entr(ps, 1).mean(0), 0, None)
        for i, box in zip(chunk, boxes):
            sl = tuple(slice(a, b) for a, b in box)
            j = row[int(i)]
            out["entropy"][j] = h_det[sl].mean()
            out["mean_std"][j] = std.mean(0)[sl].mean()
            out["bald"][j] = bald[sl].mean()
            out["predictive"][j] = h[sl].mean()
            out["classwise"][j] = [s[sl].sum() for s in std]
            out["class_entropy"][j] = [(h * m)[sl].mean() for m in mean]
    return out


@pytest.mark.parametrize("config", ["3d_fullres", "2d"])
def test_sliding_window_scores_equal_a_reference_on_the_whole_case(config: str):
    ctx = make_ctx(config)
    _, cfg = tiny(config)
    idx = np.random.default_rng(2).permutation(len(ctx.pool))[: len(ctx.pool) // 2 + 3]  # both cases, interleaved
    s = score_pool(ctx, idx, seed=7)
    want = reference_scores(ctx, cfg, idx, seed=7)
    assert list(s.indices) == list(idx)
    pairs = dict(entropy=s.entropy, mean_std=s.mean_std, bald=s.bald, predictive=s.predictive_entropy)
    pairs |= dict(classwise=s.classwise_std, class_entropy=s.class_entropy)
    for name, got in pairs.items():
        np.testing.assert_allclose(got, want[name], rtol=1e-5, atol=1e-7, err_msg=name)
    assert s.mean_std.min() > 0  # the MC passes differ: the comparison is not of zeros


def test_a_case_smaller_than_the_patch_is_one_window_in_both_paths():
    """The per-item window of a case smaller than the patch is the sliding window's single one
    (centred, padded alike): the deterministic scores of both paths agree."""
    ctx = make_ctx(shapes={"a": (6, 12, 14)})
    assert len(sliding_windows((6, 12, 14), ctx.pool.patch_size)) == 1 and len(ctx.pool) > 1
    by_case = score_pool(ctx, mc=False)
    by_item = score_pool(ctx, mc=False, per_item=True)
    np.testing.assert_allclose(by_case.entropy, by_item.entropy, rtol=1e-5)


@pytest.mark.parametrize("config", ["3d_fullres", "2d"])
def test_forwards_are_windows_times_passes_not_items_times_passes(config: str):
    ctx = make_ctx(config, batch_size=1)
    T, patch, pool = ctx.mc_passes, tuple(ctx.pool.patch_size), ctx.pool
    idx = np.arange(len(pool))
    windows = 0
    for case, shape in SHAPES[config].items():
        per_view = len(sliding_windows(shape[-len(patch) :], patch))
        slices = {pool[i].box[0][0] for i in idx if pool[i].case_id == case} if config == "2d" else {0}
        windows += per_view * len(slices)
    with counting(ctx.model) as by_case:
        score_pool(ctx, idx, seed=0)
    with counting(ctx.model) as by_item:
        score_pool(ctx, idx, seed=0, per_item=True)
    with counting(ctx.model) as grouped:  # 2 passes per sliding window: the copies share its batches
        s = score_pool(ctx, idx, seed=0, passes_per_forward=2)
    assert by_case[0] == windows * (T + 1) == grouped[0]  # T MC passes and the deterministic one
    assert by_item[0] == len(idx) * (T + 1)
    assert by_case[0] < by_item[0]
    assert np.isfinite(s.bald).all() and s.mean_std.min() > 0


def test_a_case_chunk_scores_alike_in_whichever_shard():
    """Under --devices N each rank scores a run of whole case chunks: a case's numbers do not
    depend on the cases scored before it (its masks are seeded by its chunk number)."""
    from alseg.scoring.pool_inference import _score_cases
    from alseg.scoring.sharding import shard_of

    ctx = make_ctx()
    chunks = list(enumerate(case_chunks(ctx, ctx.unlabelled)))
    assert len(chunks) == len(SHAPES["3d_fullres"])
    kw = dict(mc=True, deterministic=True, group=1, seed=4, what="")
    full = dict(_score_cases(ctx, chunks, **kw))
    for rank in range(2):
        for c, (entropy, mc) in _score_cases(ctx, shard_of(chunks, rank, 2), **kw):
            assert torch.equal(entropy, full[c][0]) and torch.equal(mc.bald, full[c][1].bald)


# ----------------------------------------------------------------------------- embeddings
@pytest.mark.parametrize(("config", "item"), [("3d_fullres", (4, 8, 8)), ("3d_fullres", (4, 14, 8)), ("2d", (8, 8))])
def test_embeddings_come_from_a_window_that_holds_the_item(config: str, item: tuple[int, ...]):
    """(4, 14, 8): an item of 14 voxels in y lies in no window of the 16-voxel grid (stride 8), so
    it gets its own centred window."""
    ctx = make_ctx(config, item=item)
    pool, net, dims = ctx.pool, ctx.model, len(item)
    idx = np.arange(len(pool))
    with counting(net) as forwards:
        core, _ = diversity.embed_items(ctx, idx, diversity._bottleneck, "bottleneck")
    badge, _ = diversity.embed_items(ctx, idx, head_gradient_embedding, "head gradient")
    n_windows, own = 0, 0
    for chunk in case_chunks(ctx, idx):
        volume = ctx.load_image(pool[int(chunk[0])].case_id)
        windows, which = embedding_windows(pool, chunk, volume.shape[1:])
        grid = sliding_windows(volume.shape[-dims:], pool.patch_size)
        n_windows += len(windows)
        for j, i in enumerate(chunk):
            window, box = windows[which[j]], pool[int(i)].box
            assert all(a <= b0 and b1 <= b for (a, b), (b0, b1) in zip(window, box))  # holds the item whole
            own += window[-dims:] not in grid
            x = read_window(volume, window)
            x = torch.from_numpy(x[:, 0] if dims == 2 else x)[None]
            valid = torch.zeros((1, *pool.patch_size), dtype=torch.bool)
            valid[(0, *(slice(b0 - a, b1 - a) for (a, _), (b0, b1) in list(zip(window, box))[-dims:]))] = True
            with torch.no_grad(), eval_mode(net):
                want_core = net.bottleneck_features(x, valid)[0]
            want_badge = head_gradient_embedding(net, x, valid)[0]
            np.testing.assert_allclose(core[int(i)].numpy(), want_core.numpy(), rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(badge[int(i)].numpy(), want_badge.numpy(), rtol=1e-4, atol=1e-5)
    assert forwards[0] == n_windows < len(idx)  # one forward per window, not per item
    assert (own > 0) == (item == (4, 14, 8))


# ----------------------------------------------------------------------------- every strategy
@pytest.mark.parametrize("name", available())
def test_every_strategy_selects_small_3d_items(name: str):
    ctx = make_ctx("3d_fullres", labelled=(0, 40), mc_passes=2)
    strategy = get_strategy(name)
    sel = select_batch(strategy, ctx, uncertainty_seed=5)
    assert len(sel.indices) == ctx.budget and not ctx.labelled[sel.indices].any()
    assert sel.batch_uncertainty is not None and np.isfinite(sel.batch_uncertainty)
