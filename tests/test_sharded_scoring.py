"""Pool passes sharded over 2 CPU processes (gloo) equal the single-process passes exactly."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from builders import tiny_plans

from alseg.data.pool import Pool
from alseg.model.network import build_network, head_gradient_embedding
from alseg.scoring.pool_inference import pool_chunks, score_pool
from alseg.scoring.sharding import FileDoorbell, LeaderGone, RankContext, lead, serve, shard_of
from alseg.strategies import diversity, get_strategy, select_batch
from alseg.strategies.base import SelectionContext
from alseg.strategies.usim import fisher_information, gradient_embeddings

K = 3
# 2-D items: 12 slices; case "a" is smaller than the 16 x 16 patch along y (its items are padded)
SHAPES = {"a": (5, 12, 16), "b": (4, 24, 20), "c": (3, 16, 16)}
LABELLED = (0, 6)


def _net():
    torch.manual_seed(0)
    cfg = tiny_plans(n_stages=3, features=(4, 8, 16)).configuration("2d")
    return build_network(cfg, in_channels=1, n_classes=K), tuple(cfg.patch_size)


class Images:
    """``load_image``: fixed random (1, z, y, x) volumes per case (picklable, the same in every process)."""

    def __init__(self, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.volumes = {c: rng.normal(size=(1, *s)).astype(np.float32) for c, s in SHAPES.items()}

    def __call__(self, case_id: str) -> np.ndarray:
        return self.volumes[case_id]


def _ctx(weights: Path | None = None, seed: int = 0) -> SelectionContext:
    net, patch = _net()
    if weights is not None:
        net.load_state_dict(torch.load(weights))
    pool = Pool.build(SHAPES, "2d", patch)
    mask = np.zeros(len(pool), bool)
    mask[list(LABELLED)] = True
    return SelectionContext(
        model=net,
        pool=pool,
        labelled=mask,
        budget=3,
        rng=np.random.default_rng(seed),
        load_image=Images(),
        labelled_voxels_per_class=np.array([100.0, 10.0, 5.0]),
        n_classes=K,
        mc_passes=3,
        dropout_mc=0.3,
        batch_size=2,
        show_progress=False,
    )


STRATEGIES = {
    "bald": {},
    "clasp-pe": {},
    "badge": {},
    "coreset": {},
    "usimf": {"query_size": 4, "embedding_dim": 20, "fisher_subset": 3, "grad_batch_size": 3, "figure": False},
    "usimc": {"query_size": 4, "embedding_dim": 20, "embedding_dtype": "float16", "figure": False},
}


def passes(ctx) -> dict[str, object]:
    """Every sharded pass of a round, with fixed seeds; the same calls in and out of DDP."""
    unl = ctx.unlabelled
    net = ctx.model
    out: dict[str, object] = {}
    s = score_pool(ctx, seed=11)
    out.update(entropy=s.entropy, mean_std=s.mean_std, bald=s.bald, classwise=s.classwise_std, order=s.indices)
    out.update(predictive_entropy=s.predictive_entropy, class_entropy=s.class_entropy)
    out["grouped"] = score_pool(ctx, unl[::-1], deterministic=False, passes_per_forward=2, seed=5).classwise_std
    out["one_item"] = score_pool(ctx, unl[:1], seed=3).classwise_std  # one chunk: rank 0's shard is empty
    out["badge"] = diversity.embed_items(ctx, unl, head_gradient_embedding, "badge")[0].numpy()
    out["coreset"] = diversity.embed_items(ctx, np.arange(len(ctx.pool)), diversity._bottleneck, "core-set")[0].numpy()
    params = net.decoder_parameters()
    g, scale = gradient_embeddings(ctx, unl, params, columns=np.array([0, 7, 3]), dtype=torch.float16, batch_size=3)
    out["usimf_g"], out["usimf_scale"] = g.float().numpy(), scale.numpy()
    out["usimc_g"] = gradient_embeddings(ctx, unl, net.bottleneck_parameters(), max_dim=30)[0].numpy()
    out["fisher"] = fisher_information(ctx, unl[:5], params, batch_size=2).numpy()
    for name, options in STRATEGIES.items():
        ctx.rng = np.random.default_rng(7)
        sel = select_batch(get_strategy(name, **options), ctx, uncertainty_seed=9)
        out[f"{name}_selected"] = np.asarray(sel.indices)
        out[f"{name}_scores"] = np.asarray(sel.scores, dtype=np.float64)
        out[f"{name}_batch_uncertainty"] = sel.batch_uncertainty
    return out


def _rank(rank: int, world: int, folder: str) -> None:
    torch.set_num_threads(1)
    folder_path = Path(folder)
    dist.init_process_group("gloo", init_method=f"file://{folder_path / 'rendezvous'}", rank=rank, world_size=world)
    try:
        ctx = _ctx(folder_path / "weights.pt")
        if rank == 0:
            with lead() as group:
                ctx.ranks = group
                out = passes(ctx)
            torch.save({"out": out, "passes": group.passes}, folder_path / "sharded.pt")
        else:

            def make_context(settings: dict) -> RankContext:
                return RankContext(
                    model=ctx.model, pool=ctx.pool, load_image=ctx.load_image, device=ctx.device, **settings
                )

            torch.save(serve(make_context), folder_path / f"served_{rank}.pt")
        dist.barrier()  # both ranks are done with the group before either tears it down (gloo aborts otherwise)
    finally:
        dist.destroy_process_group()


def test_shards_are_contiguous_runs_of_whole_chunks():
    numbered = list(enumerate("abcde"))
    assert [shard_of(numbered, r, 2) for r in range(2)] == [numbered[:2], numbered[2:]]
    assert [len(shard_of(numbered, r, 3)) for r in range(3)] == [1, 2, 2]
    assert [shard_of(numbered[:1], r, 2) for r in range(2)] == [[], numbered[:1]]


def test_chunks_depend_on_the_items_and_batch_size_only():
    ctx = _ctx()
    chunks = pool_chunks(ctx, ctx.unlabelled)
    assert [len(c) for c in chunks] == [2] * 11  # 22 unlabelled items; one chunk spans cases b and c
    assert np.array_equal(np.concatenate(chunks), ctx.unlabelled)  # already grouped by case


def test_sharded_passes_equal_one_process_exactly(tmp_path: Path):
    single = _ctx()
    torch.save(single.model.state_dict(), tmp_path / "weights.pt")
    mp.start_processes(_rank, args=(2, str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    saved = torch.load(tmp_path / "sharded.pt", weights_only=False)
    sharded = saved["out"]
    assert saved["passes"] >= 8 + 2 * len(STRATEGIES)  # every strategy shares its pass and its batch measure
    assert torch.load(tmp_path / "served_1.pt") == saved["passes"]  # rank 1 took part in every pass
    expected = passes(single)
    assert set(sharded) == set(expected)
    for key, value in expected.items():
        if value is None or isinstance(value, float):
            assert sharded[key] == value, key
        else:
            assert np.array_equal(sharded[key], value), key  # same numbers, same order
    assert not np.array_equal(expected["entropy"], np.zeros_like(expected["entropy"]))
    assert expected["mean_std"].min() > 0  # dropout at 0.3: the MC passes disagree on every item


@pytest.mark.parametrize("world", [1, 2, 3])
def test_the_scores_do_not_depend_on_which_chunks_a_process_runs_before(world: int):
    """In one process: each rank's shard scored on its own gives the full pass's rows (the masks are per chunk)."""
    from alseg.scoring.pool_inference import _score_chunks

    ctx = _ctx()
    chunks = list(enumerate(pool_chunks(ctx, ctx.unlabelled)))
    kw = dict(mc=True, deterministic=False, group=1, seed=4, what="")
    full = {c: r[1].classwise_std_sum for c, r in _score_chunks(ctx, chunks, **kw)}
    for rank in range(world):
        for c, r in _score_chunks(ctx, shard_of(chunks, rank, world), **kw):
            assert torch.equal(r[1].classwise_std_sum, full[c])


TIMEOUT_S = 4


def _slow_leader(rank: int, world: int, folder: str, use_doorbell: bool) -> None:
    """Rank 0 works alone for twice the process group's timeout before its pass (a long evaluation).
    The timeout also bounds each collective of the pass itself, so it leaves room for loaded cores."""
    from datetime import timedelta

    torch.set_num_threads(1)
    path = Path(folder)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{path / 'rendezvous'}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=TIMEOUT_S),
    )
    doorbell = FileDoorbell(path / "doorbell", poll_seconds=0.05) if use_doorbell else None
    ctx = _ctx(path / "weights.pt")
    try:
        if rank == 0:
            doorbell and doorbell.reset()
            with lead(doorbell) as group:
                ctx.ranks = group
                time.sleep(2 * TIMEOUT_S)
                bald = score_pool(ctx, seed=1).bald
            np.save(path / "bald.npy", bald)
        else:

            def make_context(settings: dict) -> RankContext:
                return RankContext(
                    model=ctx.model, pool=ctx.pool, load_image=ctx.load_image, device=ctx.device, **settings
                )

            try:
                (path / f"served_{rank}.txt").write_text(str(serve(make_context, doorbell)))
            except RuntimeError as e:  # gloo's timeout
                (path / f"failed_{rank}.txt").write_text(str(e))
                raise
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("use_doorbell", [True, False])
def test_the_others_wait_for_rank_0_past_the_process_group_timeout(tmp_path: Path, use_doorbell: bool):
    single = _ctx()
    torch.save(single.model.state_dict(), tmp_path / "weights.pt")
    args = (2, str(tmp_path), use_doorbell)
    if use_doorbell:
        mp.start_processes(_slow_leader, args=args, nprocs=2, join=True, start_method="spawn")
        assert (tmp_path / "served_1.txt").read_text() == "1"
        assert np.array_equal(np.load(tmp_path / "bald.npy"), score_pool(single, seed=1).bald)
        assert (tmp_path / "doorbell").read_text().strip() == "2"  # the pass and the end
    else:  # without it, rank 1 gives up inside the broadcast while rank 0 still works alone
        with pytest.raises(mp.ProcessRaisedException):
            mp.start_processes(_slow_leader, args=args, nprocs=2, join=True, start_method="spawn")
        assert "imed out" in (tmp_path / "failed_1.txt").read_text()


def test_a_doorbell_wait_ends_when_rank_0_is_gone(tmp_path: Path):
    alive = iter([True, True, False])
    bell = FileDoorbell(tmp_path / "d", alive=lambda: next(alive), poll_seconds=0.01)
    with pytest.raises(LeaderGone):
        bell.wait()
    leader, other = FileDoorbell(tmp_path / "e"), FileDoorbell(tmp_path / "e", poll_seconds=0.01)
    leader.ring()
    other.wait()  # rung: returns at once
    leader.reset()
    assert not (tmp_path / "e").exists() and leader.count == 0
