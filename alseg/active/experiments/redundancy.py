"""The redundancy scenario of the paper's Appendix E: is USIM's batch robust to duplicates?

Every item of one training case is duplicated ``copies`` times in the unlabelled pool (ids
``<item id>#dup<n>``, same case and box, so the copies read the very same pixels). The query
set, drawn ∝ uncertainty, then fills up with that case; a batch drawn uniformly from the query
set inherits the share, while FLQMI should not, since identical items have identical
gradients and one copy already covers all of its duplicates' query columns. The paper
(Hippocampus, case 172 x 100, Q = 1000, B = 100): 45% of the query set from the duplicated
scan, 18% of USIMF's batch, 45% when sampling uniformly from the query set.

:func:`redundancy_check` runs the scenario on a :class:`SelectionContext` (a trained model,
a pool); :func:`run_redundancy_check` builds everything from a plan folder, trains a small
model first when no checkpoint is given, and is what ``alseg redundancy-check`` calls.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch

from alseg.active.workspace import Workspace
from alseg.atomic import atomic_torch_save
from alseg.data.datamodule import Region, SegDataModule
from alseg.data.pool import Item, Pool
from alseg.errors import AlsegError
from alseg.model.module import SegmentationModule
from alseg.model.train import load_weights
from alseg.model.trainer import TrainerSettings, make_trainer
from alseg.plans.models import plans_file
from alseg.scoring.pool_inference import inference_batch_size
from alseg.seeds import global_seed
from alseg.strategies.base import SelectionContext
from alseg.strategies.registry import get_strategy
from alseg.strategies.submodular import nonnegative_kernel
from alseg.strategies.usim import FISHER_KERNELS, USIM, USIMC, USIMF, maximise_flqmi, plan_query_set
from alseg.strategies.usim.kernels import cosine_kernel, fisher_kernel

__all__ = [
    "DUP_SEPARATOR",
    "STUDY_VARIANTS",
    "duplicate_case",
    "original_id",
    "redundancy_check",
    "redundancy_study",
    "run_redundancy_check",
]

DUP_SEPARATOR = "#dup"
"""Separates an item id from the copy number of a duplicate: ``case:2d:12:0:0#dup7``."""


def original_id(item_id: str) -> str:
    """The id of the item a duplicate copies (the id itself for an original)."""
    return item_id.split(DUP_SEPARATOR, 1)[0]


def duplicate_case(pool: Pool, labelled: np.ndarray, case_id: str, copies: int) -> tuple[Pool, np.ndarray]:
    """A pool with every item of ``case_id`` repeated ``copies`` more times, appended after the
    original items (so original indices are unchanged), and the labelled mask extended with
    False: the copies are unlabelled even where the original is labelled."""
    if copies < 1:
        raise ValueError(f"copies must be at least 1, got {copies}")
    originals = [it for it in pool.items if it.case_id == case_id]
    if not originals:
        raise AlsegError(f"case '{case_id}' has no items in the pool — choose one of: {_some(pool.case_ids)}")
    extra = [Item(f"{it.id}{DUP_SEPARATOR}{n}", it.case_id, it.box) for n in range(1, copies + 1) for it in originals]
    bigger = Pool(list(pool.items) + extra, pool.config_name, pool.patch_size)
    return bigger, np.concatenate([np.asarray(labelled, dtype=bool), np.zeros(len(extra), dtype=bool)])


def _some(names: list[str], shown: int = 8) -> str:
    """The first ``shown`` names, and how many more: an error stays one readable line."""
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f", … ({more} more)" if more > 0 else "")


def _share(mask: np.ndarray) -> float:
    return float(mask.mean()) if mask.size else float("nan")


def redundancy_check(
    ctx: SelectionContext,
    case_id: str | None = None,
    copies: int = 100,
    strategy: str = "usimf",
    kernels: Sequence[str] = (),
    options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Duplicate ``case_id``'s items ``copies`` times in ``ctx.pool``, run USIM on the bigger pool
    and report the duplicated case's share in the query set and in the batch.

    ``kernels`` (USIMF only): further Fisher kernels (``raw``, ``cosine``) to select with from
    the *same* scores, query set and embeddings (only the kernel and the greedy run again), so
    their batches differ by the kernel alone; reported under ``variants``.

    ``case_id=None`` draws a case with unlabelled items from ``ctx.rng``. ``options`` are the
    strategy's (the paper used ``query_size=1000``). Returned keys (shares are fractions in
    [0, 1], "the case" = its originals and copies):

    * ``pool_share``: of the unlabelled pool;
    * ``query_share``: of the Q draws (the paper's 45%); ``query_share_unique``: of the
      query set's distinct items;
    * ``batch_share``: of the selected batch (the paper's 18% for USIMF);
    * ``uniform_share``: of B items drawn uniformly without replacement from the Q draws (one
      realisation; its expectation is ``query_share``, the paper's 45%);
    * ``batch_repeats``: selected items whose content (original id) is already in the batch,
      the redundancy FLQMI should avoid; ``uniform_repeats`` the same for the uniform batch;
    * ``case_id``, ``copies``, ``strategy``, ``Q``, ``budget``, ``n_pool``, ``n_unlabelled``,
      ``selected`` (ids) and ``seconds``.
    """
    strat = get_strategy(strategy, dict(options or {}))
    if not isinstance(strat, USIM):
        raise AlsegError(f"the redundancy check runs a USIM strategy (usimc or usimf), not '{strategy}'")
    if kernels and not isinstance(strat, USIMF):
        raise AlsegError(f"comparing Fisher kernels needs --strategy usimf, not '{strategy}'")
    bad = [k for k in kernels if k not in FISHER_KERNELS]
    if bad:
        raise AlsegError(f"unknown Fisher kernel(s) {', '.join(bad)} — use {' or '.join(FISHER_KERNELS)}")
    if case_id is None:
        cases = sorted({ctx.pool[int(i)].case_id for i in ctx.unlabelled})
        case_id = str(ctx.rng.choice(cases))
    t0 = time.perf_counter()
    pool, labelled = duplicate_case(ctx.pool, ctx.labelled, case_id, copies)
    dup_ctx = dataclasses.replace(ctx, pool=pool, labelled=labelled)
    res = strat.run(dup_ctx)

    in_case = np.array([it.case_id == case_id for it in pool.items])
    content = [original_id(it.id) for it in pool.items]
    unl = dup_ctx.unlabelled
    draws = res.candidates[res.draws]
    columns = res.candidates[res.columns]
    selected = res.candidates[res.picked]
    budget = len(selected)
    uniform = draws[dup_ctx.rng.choice(len(draws), size=min(budget, len(draws)), replace=False)]

    variants = []
    for kernel in kernels:
        t1 = time.perf_counter()
        S = strat.kernel(res.embedding, res.columns, fisher_kernel=kernel).S
        picked, _ = maximise_flqmi(
            S, budget, res.query, strat.options, np.random.default_rng(int(dup_ctx.rng.integers(2**63 - 1)))
        )
        chosen = res.candidates[np.asarray(picked, dtype=np.int64)]
        variants.append(
            {
                "kernel": kernel,
                "batch_share": _share(in_case[chosen]),
                "batch_repeats": _repeats(content, chosen),
                "selected": [pool[int(i)].id for i in chosen],
                "seconds": time.perf_counter() - t1,
            }
        )
        del S

    return {
        "case_id": case_id,
        "copies": int(copies),
        "strategy": strategy,
        "n_pool": len(pool),
        "n_unlabelled": int(len(unl)),
        "Q": int(res.Q),
        "budget": int(budget),
        "pool_share": _share(in_case[unl]),
        "query_share": _share(in_case[draws]),
        "query_share_unique": _share(in_case[columns]),
        "batch_share": _share(in_case[selected]),
        "uniform_share": _share(in_case[uniform]),
        "batch_repeats": _repeats(content, selected),
        "uniform_repeats": _repeats(content, uniform),
        "selected": [pool[int(i)].id for i in selected],
        "kernel": strat.options.fisher_kernel if isinstance(strat, USIMF) else strat.kernel_kind,
        "variants": variants,
        "seconds": {**res.seconds, "total": time.perf_counter() - t0},
    }


def _repeats(content: Sequence[str], idx: np.ndarray) -> int:
    """Items of ``idx`` whose content (original id) is already among the earlier ones."""
    return int(len(idx) - len({content[int(i)] for i in idx}))


# ----------------------------------------------------------------------------- many cases
STUDY_VARIANTS: tuple[tuple[str, str, bool, float], ...] = tuple(
    (f"usimf-{kind}-{'multiset' if ms else 'distinct'}-eta{eta:g}", kind, ms, eta)
    for kind in ("raw", "cosine")
    for ms in (True, False)
    for eta in (1.0, 0.0)
)
"""USIMF variants of the study: (label, Fisher kernel, query multiset, η)."""


def redundancy_study(
    ctx: SelectionContext,
    cases: Sequence[str],
    copies: int = 100,
    options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The Appendix E scenario for each of ``cases`` in turn, from ONE pass over the base pool.

    The MC scores, the USIMF Fisher diagonal and parameter draw (estimated on a query set of
    the base pool) and both gradient embeddings are computed once for every pool item; a
    duplicate's scores and embeddings are its original's, so per case only the query-set draw
    and FLQMI run again, on kernels gathered from the all-pairs kernels (one per kind). Per
    case: pool, query-set and uniform-batch shares and repeats, and the batch share and repeats
    of every :data:`STUDY_VARIANTS` entry and of USIMC; ``summary`` gives their distribution
    over the cases."""
    t0 = time.perf_counter()
    base = dict(options or {})
    base.pop("max_candidates", None)  # every item is embedded once; its copies reuse the rows
    usimf = get_strategy("usimf", base)
    usimc = get_strategy("usimc", base)
    assert isinstance(usimf, USIMF) and isinstance(usimc, USIMC)
    pool = ctx.pool
    everything = dataclasses.replace(ctx, labelled=np.zeros(len(pool), dtype=bool))
    n_unl = int((~ctx.labelled).sum())
    budget = min(int(ctx.budget), n_unl)
    cand, t_score = usimf.uncertainty(everything, budget)
    assert np.array_equal(cand.indices, np.arange(len(pool)))
    unl_u = cand.u.copy()
    unl_u[ctx.labelled] = 0.0  # the Fisher estimate's query set: unlabelled items only, as a round
    base_query = plan_query_set(unl_u, budget, usimf.options.query_size, ctx.rng)
    t1 = time.perf_counter()
    emb_f = usimf.embed(everything, cand, base_query, usimf.dtype(len(pool)))
    emb_c = usimc.embed(everything, cand, base_query, usimc.dtype(len(pool)))
    t_embed = time.perf_counter() - t1
    t1 = time.perf_counter()
    all_rows = np.arange(len(pool))
    full = {
        "raw": fisher_kernel(emb_f, all_rows, "raw"),
        "cosine": fisher_kernel(emb_f, all_rows, "cosine"),
        "usimc": cosine_kernel(emb_c, all_rows),
    }
    t_kernel = time.perf_counter() - t1
    del emb_f, emb_c

    content = [it.id for it in pool.items]
    unl = np.flatnonzero(~ctx.labelled)
    results = []
    for case_id in cases:
        tc = time.perf_counter()
        originals = np.asarray([i for i, it in enumerate(pool.items) if it.case_id == case_id], dtype=np.int64)
        if len(originals) == 0:
            raise AlsegError(f"case '{case_id}' has no items in the pool — choose one of: {_some(pool.case_ids)}")
        rows = np.concatenate([unl, np.tile(originals, copies)])  # candidate -> base pool row
        in_case = np.isin(rows, originals)
        rng = np.random.default_rng(int(ctx.rng.integers(2**63 - 1)))
        query = plan_query_set(cand.u[rows], budget, usimf.options.query_size, rng)
        r = torch.as_tensor(rows)
        c = torch.as_tensor(rows[query.columns])
        draws = query.draws
        uniform = draws[rng.choice(len(draws), size=min(budget, len(draws)), replace=False)]
        out: dict[str, Any] = {
            "case_id": case_id,
            "n_case_items": int(len(originals)),
            "Q": int(query.Q),
            "query_distinct": int(len(query.columns)),
            "pool_share": _share(in_case),
            "query_share": _share(in_case[draws]),
            "query_share_unique": _share(in_case[query.columns]),
            "uniform_share": _share(in_case[uniform]),
            "uniform_repeats": _repeats(content, rows[uniform]),
        }
        batches: dict[str, Any] = {}

        def run(
            label: str,
            S: torch.Tensor,
            multiset: bool,
            eta: float,
            query=query,
            rng=rng,
            batches=batches,
            in_case=in_case,
            rows=rows,
        ) -> None:  # this case's values, bound explicitly
            opts = usimf.options.model_copy(update={"query_multiset": multiset, "eta": eta})
            picked, _ = maximise_flqmi(S, budget, query, opts, np.random.default_rng(int(rng.integers(2**63 - 1))))
            picked = np.asarray(picked, dtype=np.int64)
            batches[label] = {"batch_share": _share(in_case[picked]), "batch_repeats": _repeats(content, rows[picked])}

        for kind in ("raw", "cosine"):
            k = full[kind]
            S = k.S.index_select(1, c.to(k.S.device)).index_select(
                0, r.to(k.S.device)
            )  # columns first: a small temporary
            if kind == "raw":  # the shift is the candidates' minimum, as in a round on this pool
                S = nonnegative_kernel(S + k.shift, "fisher")
            for label, kk, ms, eta in STUDY_VARIANTS:
                if kk == kind:
                    run(label, S, ms, eta)
            del S
        k = full["usimc"]
        S = k.S.index_select(1, c.to(k.S.device)).index_select(0, r.to(k.S.device))  # columns first: a small temporary
        opts_c = usimc.options
        run("usimc", S, opts_c.query_multiset, opts_c.eta)
        del S
        out["variants"] = batches
        out["seconds"] = time.perf_counter() - tc
        results.append(out)

    return {
        "copies": int(copies),
        "budget": int(budget),
        "n_pool": len(pool),
        "n_unlabelled": n_unl,
        "cases": results,
        "summary": _summary(results),
        "seconds": {"score": t_score, "embed": t_embed, "kernel": t_kernel, "total": time.perf_counter() - t0},
    }


def _summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per quantity: median, quartiles, min and max over the cases; per variant also in how many
    cases its batch holds less of the duplicated case than the query set with no repeats."""

    def dist(values: list[float]) -> dict[str, float]:
        v = np.asarray(values, dtype=np.float64)
        q1, med, q3 = np.percentile(v, [25, 50, 75])
        return {"min": float(v.min()), "q1": float(q1), "median": float(med), "q3": float(q3), "max": float(v.max())}

    if not results:
        return {}
    out: dict[str, Any] = {
        k: dist([r[k] for r in results]) for k in ("pool_share", "query_share", "uniform_share", "uniform_repeats")
    }
    for label in results[0]["variants"]:
        shares = [r["variants"][label]["batch_share"] for r in results]
        reps = [r["variants"][label]["batch_repeats"] for r in results]
        good = sum(
            r["variants"][label]["batch_share"] < r["query_share"] and r["variants"][label]["batch_repeats"] == 0
            for r in results
        )
        out[label] = {
            "batch_share": dist(shares),
            "batch_repeats": dist(reps),
            "cases_below_query_without_repeats": int(good),
        }
    return out


def _labelled_voxels(pool: Pool, labelled: np.ndarray, ground_truth, n_classes: int) -> np.ndarray:
    counts = np.zeros(n_classes, dtype=np.int64)
    by_case: dict[str, list[int]] = {}
    for i in np.flatnonzero(labelled):
        by_case.setdefault(pool[int(i)].case_id, []).append(int(i))
    for case_id, idx in by_case.items():
        seg = ground_truth(case_id)
        for i in idx:
            counts += np.bincount(np.asarray(pool.patch(seg, i)).ravel().astype(np.int64), minlength=n_classes)[
                :n_classes
            ]
    return counts


def run_redundancy_check(
    plan_dir: Path,
    checkpoint: Path | None = None,
    *,
    config: str = "2d",
    fold: int = 0,
    case_id: str | None = None,
    copies: int = 100,
    budget: int = 100,
    initial: int = 100,
    query_size: int | None = 1000,
    seed: int = 0,
    strategy: str = "usimf",
    train_epochs: int = 1,
    train_iters: int = 50,
    train_batch_size: int | None = None,
    mc_passes: int = 10,
    options: dict[str, Any] | None = None,
    device: str | torch.device | None = None,
    save_model: Path | None = None,
    show_progress: bool = True,
    kernels: Sequence[str] = (),
    cases: Sequence[str] | int | None = None,
) -> dict[str, Any]:
    """The Appendix E scenario from a plan folder (``alseg plan`` output).

    The pool is the loop's (fold ``fold`` held out) and the labelled set is the loop's initial
    set for ``seed`` (``initial`` items). The model is ``checkpoint`` (a Lightning ``.ckpt`` or a
    state dict of this plan, e.g. ``RUN/checkpoints/round_000...``), or, when None, one trained
    here on the labelled items for ``train_epochs`` x ``train_iters`` iterations with the
    ground-truth masks (batch ``train_batch_size``, default the plan's). ``query_size=None``
    uses the elbow rule; ``options`` are further USIM options (``--option``). ``save_model`` writes the model used (``{"state_dict": ...}``, a
    valid ``checkpoint`` for the next call). Returns :func:`redundancy_check`'s dict plus
    ``seconds_train`` and ``checkpoint``; with ``cases`` (case ids, or a number of cases drawn
    from the pool with ``seed``) :func:`redundancy_study`'s instead, one model and one pass for
    all of them.
    """
    options = {**({"query_size": query_size} if query_size is not None else {}), **(options or {})}
    get_strategy(strategy, options)  # a bad option fails before any training
    plan_dir = Path(plan_dir)
    if not plans_file(plan_dir).is_file():
        raise AlsegError("holds no plans.json — run 'alseg plan DATASET -o PLAN_DIR' first", plan_dir)
    ws = Workspace.open(plan_dir, plan_dir, config, fold, show_progress=show_progress)
    plans, conf, pool = ws.plans, ws.configuration, ws.pool
    if initial + budget > len(pool):
        raise AlsegError(f"--initial {initial} plus --budget {budget} exceed the pool ({len(pool)} items) — lower them")
    if case_id is not None and case_id not in pool.case_ids:  # fail before any training
        raise AlsegError(
            f"case '{case_id}' has no items in the pool of fold {fold} (it is a test case or not in the dataset) — "
            f"choose one of: {_some(pool.case_ids)}"
        )
    if isinstance(cases, (list, tuple)):
        missing = [c for c in cases if c not in pool.case_ids]
        if missing:
            raise AlsegError(
                f"case(s) {', '.join(missing[:8])} have no items in the pool of fold {fold} — "
                f"choose from: {_some(pool.case_ids)}"
            )
    elif isinstance(cases, int):
        if not 1 <= cases <= len(pool.case_ids):
            raise AlsegError(
                f"--cases {cases}: the pool has {len(pool.case_ids)} cases — choose 1 to {len(pool.case_ids)}"
            )
        cases = sorted(np.random.default_rng([seed, 2]).choice(pool.case_ids, size=cases, replace=False).tolist())
    labelled = np.zeros(len(pool), dtype=bool)
    labelled[np.random.default_rng([seed, 0]).choice(len(pool), size=initial, replace=False)] = True

    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    pl.seed_everything(global_seed(seed), workers=False, verbose=False)
    overrides = {"epochs": train_epochs, "iterations_per_epoch": train_iters}
    if train_batch_size:
        overrides["batch_size"] = train_batch_size
    module = SegmentationModule(plans, config, overrides=overrides)
    t0 = time.perf_counter()
    if checkpoint is not None:
        load_weights(module, checkpoint)
    else:
        regions = [Region(pool[int(i)].case_id, pool[int(i)].box) for i in np.flatnonzero(labelled)]
        dm = SegDataModule(ws.cache, module.config, regions, num_workers=0, seed=global_seed(seed))
        trainer = make_trainer(
            TrainerSettings(accelerator=dev.type, devices=1),
            max_epochs=train_epochs,
            show_progress=show_progress,
            iterations_per_epoch=train_iters,
            enable_model_summary=False,
        )
        trainer.fit(module, datamodule=dm)
    seconds_train = time.perf_counter() - t0
    if save_model is not None:
        atomic_torch_save(Path(save_model), {"state_dict": module.state_dict()})
    net = module.net.to(dev)

    ctx = SelectionContext(
        model=net,
        pool=pool,
        labelled=labelled,
        budget=budget,
        rng=np.random.default_rng([seed, 1]),
        load_image=ws.image,
        labelled_voxels_per_class=_labelled_voxels(pool, labelled, ws.ground_truth, plans.n_classes),
        n_classes=plans.n_classes,
        device=dev,
        mc_passes=mc_passes,
        dropout_mc=conf.network.dropout_mc,
        batch_size=inference_batch_size(conf, dev),
        show_progress=show_progress,
    )
    if cases is not None:
        out = redundancy_study(ctx, list(cases), copies=copies, options=options)
    else:
        out = redundancy_check(ctx, case_id=case_id, copies=copies, strategy=strategy, kernels=kernels, options=options)
    out["seconds_train"] = seconds_train
    out["checkpoint"] = str(checkpoint) if checkpoint is not None else None
    return out
