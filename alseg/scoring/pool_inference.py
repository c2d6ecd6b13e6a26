"""Pool inference: one streaming pass of the network over pool items (paper §3.3.1, MC dropout).

Every uncertainty strategy (Max Entropy, Mean STD, BALD, Stochastic Batches, USIM) needs the
same thing: per-item aggregates of the network's softmax over many items, with and without MC
dropout. :func:`score_pool` computes them all in one pass over the items and keeps only the
per-item numbers — never the pool's probability maps (104k items x 3 classes x 512 x 512
floats would be 300 GB).

How the pass is organised:

* **Items are read case by case** (:func:`item_batches`): the requested indices are grouped
  by case, so each case's preprocessed image (a memmap) is opened once; chunks of
  ``batch_size`` items may span two cases so every forward is full. A background thread
  prepares the next chunk (memmap reads, padding, pinned host memory) while the current one
  runs on the device.
* **Padding**: an item smaller than the plan's patch (a slice smaller than the patch) is
  zero-padded to the patch, centred as training pads it (``datamodule._axis_start``), so the
  network always sees patch-sized inputs whose sizes the strides divide. A ``valid`` mask
  marks the item's own pixels; every score is a mean (or sum) over those only.
* **Items smaller than the patch** (``--item-size``) are scored case by case instead
  (:mod:`alseg.scoring.case_windows`): one chunk per case holding requested items, the case
  predicted once per pass by the plan's sliding window and the voxel scores summed over the
  item boxes, so a pass costs the case's windows, not one forward per item. Per-item reading
  stays for USIM's gradients and as the reference (``score_pool(per_item=True)``): the
  patch-sized window :meth:`Pool.context_window` centred on the item, ``valid`` marking the
  item's voxels in it.
* **One deterministic pass** (eval mode, dropout off) gives Max Entropy.
* **T MC dropout passes** (:func:`alseg.model.network.mc_dropout` at ``ctx.dropout_mc``) are
  streamed through :class:`alseg.scoring.scores.MCDropoutAccumulator`. Several passes run
  in one forward by repeating the chunk (``passes_per_forward``); the accumulator still sees
  one pass at a time.
* **Randomness**: the dropout masks come from torch's generator inside a forked RNG state,
  reseeded for every chunk from (the pass's seed — one draw from ``ctx.rng`` —, the chunk's
  number) (:func:`chunk_seed`), so a strategy is deterministic under the round's seed, leaves
  torch's global state untouched, and a chunk's masks do not depend on which process scores it.
* **Batch uncertainty** (paper Appendix D, Fig. 5): :func:`measure_batch_uncertainty` is the one
  definition every strategy's round record uses: fresh MC passes over the selected items only,
  seeded independently of the strategy, so equal batches give equal numbers.

This module is inference, not a strategy: it needs from its caller only what
:class:`ScoringContext` lists (a :class:`alseg.strategies.base.SelectionContext` is one).

Multi-GPU: the chunks (:func:`pool_chunks`, fixed by the items and the batch size) are the
unit of work; with ``ctx.ranks`` set (``alseg loop --devices N``) the ranks of the DDP group
each score a contiguous run of whole chunks and rank 0 gathers them in order
(:mod:`alseg.scoring.sharding`), so the scores equal one process's exactly.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from alseg.data.pool import Pool, read_window
from alseg.model.network import eval_mode, mc_dropout, output_logits
from alseg.progress import console, make_progress
from alseg.scoring.case_windows import (
    CaseView,
    case_entropy,
    case_mc_scores,
    case_view,
    embedding_windows,
    window_valid,
)
from alseg.scoring.scores import MCDropoutAccumulator, MCScores, item_entropy
from alseg.scoring.sharding import Numbered, map_chunks

__all__ = [
    "DEFAULT_PASSES_PER_FORWARD",
    "PoolScores",
    "ScoringContext",
    "eval_mode",
    "measure_batch_uncertainty",
    "batch_uncertainty",
    "case_batches",
    "case_chunks",
    "chunk_batches",
    "chunk_seed",
    "inference_batch_size",
    "item_batches",
    "pool_chunks",
    "score_pool",
    "seeded_torch_from",
    "window_batches",
]

#: Most samples (items x passes) in one forward, as a multiple of ``ctx.batch_size``: T passes
#: over a chunk run as ``ceil(T / g)`` forwards of ``g`` repeated copies. Measured in
#: ``benchmarks/scoring.py``; :func:`score_pool`'s ``passes_per_forward``.
DEFAULT_PASSES_PER_FORWARD = 1

#: Chunks prepared ahead of the device by the loader thread.
PREFETCH_CHUNKS = 2

#: On CPU, the largest activation of one forward (float32) is kept under this, below
#: glibc's mmap threshold (see :mod:`alseg.runtime`): larger blocks are mapped and faulted in
#: again on every forward. Task04 2d at 292 items per forward spent 25 s of 72 s CPU in the
#: kernel, at 32 items 0.2 s, for the same user time.
CPU_ACTIVATION_BYTES = 24 << 20


def inference_batch_size(config, device: torch.device | str) -> int:
    """Items per forward when scoring or embedding the pool for a plan ``Configuration``.

    GPU: ``max(plan batch, 32)``. CPU: as many as keep the largest activation (the last
    decoder block's input, ``2 F_0 x patch`` float32 per item) under
    :data:`CPU_ACTIVATION_BYTES`, at least 1 and at most that GPU value; throughput per item is
    flat in the batch size on CPU (Task04 2d: 32, 43 and 87 items per forward within 10%).
    """
    most = max(int(config.batch_size), 32)
    if torch.device(device).type != "cpu":
        return most
    per_item = 4 * 2 * int(config.network.features_per_stage[0]) * int(np.prod(config.patch_size))
    return max(1, min(most, CPU_ACTIVATION_BYTES // per_item))


class ScoringContext(Protocol):
    """What pool inference reads from its caller (:class:`alseg.strategies.base.SelectionContext`
    has all of it): the network, the pool and how to read it, the device and the MC settings."""

    model: nn.Module
    pool: Pool
    load_image: Callable[[str], np.ndarray]
    device: torch.device
    mc_passes: int
    dropout_mc: float
    batch_size: int
    rng: np.random.Generator
    n_classes: int
    show_progress: bool

    @property
    def unlabelled(self) -> np.ndarray: ...


@dataclass
class PoolScores:
    """Per-item aggregates of one scoring pass, aligned with ``indices``."""

    indices: np.ndarray
    """Pool indices scored, in the order given."""
    entropy: np.ndarray | None
    """(N,) deterministic (dropout off) mean pixel entropy (Max Entropy, as the original code); None unless
    ``deterministic``."""
    mean_std: np.ndarray | None
    """(N,) MC: mean over valid pixels of ``mean_c std_t p_t(c)``; None unless ``mc``."""
    bald: np.ndarray | None
    """(N,) MC: ``H(p̄) - mean_t H(p_t)``, mean over valid pixels; None unless ``mc``."""
    classwise_std: np.ndarray | None
    """(N, C) MC: ``Σ_valid pixels std_t p_t(c)`` for every class, background in column 0
    (paper §3.3.1; USIM uses the foreground columns); None unless ``mc``."""
    seconds: float
    """Wall time of the pass."""
    predictive_entropy: np.ndarray | None = None
    """(N,) MC: ``H(p̄)``, the entropy of the mean of the T passes, mean over valid pixels
    (nnActive's predictive entropy, with MC dropout in place of its ensemble of folds); None
    unless ``mc``."""
    class_entropy: np.ndarray | None = None
    """(N, C) MC: mean over valid pixels of ``H(p̄) · p̄(c)`` (nnActive's class-specific
    entropy), background in column 0; None unless ``mc``."""


# ----------------------------------------------------------------------------- reading items
def _place(item_shape: tuple[int, ...], patch: tuple[int, ...]) -> tuple[slice, ...]:
    """Where an item of ``item_shape`` sits in a ``patch``-sized canvas: centred, as training pads."""
    if len(item_shape) != len(patch):
        raise ValueError(f"item of shape {item_shape} does not match the {len(patch)}D patch size {patch}")
    out = []
    for s, p in zip(item_shape, patch):
        if s > p:
            raise ValueError(f"item of shape {item_shape} is larger than the patch size {patch}")
        lo = (p - s) // 2
        out.append(slice(lo, lo + s))
    return tuple(out)


def _host_chunks(ctx: ScoringContext, chunks: list[np.ndarray]) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Padded numpy chunks ``(indices, images (n, C, *patch) float32, valid (n, *patch) bool)``,
    reading each case's image once (the chunks are grouped by case)."""
    pool = ctx.pool
    patch = tuple(pool.patch_size)
    case_id, volume = None, None
    for idx in chunks:
        images: np.ndarray | None = None
        valid = np.zeros((len(idx), *patch), dtype=bool)
        for j, i in enumerate(idx):
            item = pool[int(i)]
            if item.case_id != case_id:
                case_id, volume = item.case_id, ctx.load_image(item.case_id)
            if pool.small_items:  # the patch around the item: its image context, its own voxels valid
                window = pool.context_window(int(i), tuple(volume.shape[1:]))
                x = read_window(volume, window)
                x = x[:, 0] if len(patch) == 2 else x
                sl = tuple(slice(a - lo, b - lo) for (a, b), (lo, _) in list(zip(item.box, window))[-len(patch) :])
                where: tuple = (j,)  # the whole window
            else:
                x = np.asarray(pool.patch(volume, int(i)))
                sl = _place(tuple(x.shape[1:]), patch)
                where = (j, slice(None), *sl)
            if images is None:
                images = np.zeros((len(idx), x.shape[0], *patch), dtype=np.float32)
            images[where] = x
            valid[(j, *sl)] = True
        assert images is not None
        yield idx, images, valid


def _prefetch(it: Iterator, depth: int) -> Iterator:
    """Run ``it`` in a background thread, ``depth`` results ahead (memmap reads release the GIL)."""
    if depth <= 0:
        yield from it
        return
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def work() -> None:
        try:
            for x in it:
                while not stop.is_set():
                    try:
                        q.put(x, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as e:  # re-raised in the consumer
            q.put(e)

    t = threading.Thread(target=work, name="alseg-item-loader", daemon=True)
    t.start()
    try:
        while True:
            x = q.get()
            if x is done:
                return
            if isinstance(x, BaseException):
                raise x
            yield x
    finally:
        stop.set()


def _group_by_case(ctx: ScoringContext, indices: np.ndarray) -> np.ndarray:
    """``indices`` reordered so each case's items are contiguous (stable within a case)."""
    if len(indices) == 0:
        return indices
    case_rank: dict[str, int] = {}
    keys = np.empty(len(indices), dtype=np.int64)
    for j, i in enumerate(indices):
        keys[j] = case_rank.setdefault(ctx.pool[int(i)].case_id, len(case_rank))
    return indices[np.argsort(keys, kind="stable")]


def pool_chunks(ctx: ScoringContext, indices: np.ndarray, batch_size: int | None = None) -> list[np.ndarray]:
    """The fixed chunking of a pass over ``indices``: grouped by case (each case's image is
    loaded once), then cut every ``batch_size`` items (default ``ctx.batch_size``), so chunks
    may span two cases and every forward but the last is full. It depends on the items and the
    batch size only, never on how many processes share the pass
    (:mod:`alseg.scoring.sharding` hands out whole chunks)."""
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    bs = int(batch_size or ctx.batch_size)
    if bs < 1:
        raise ValueError(f"batch_size must be >= 1, got {bs}")
    order = _group_by_case(ctx, indices)
    return [order[start : start + bs] for start in range(0, len(order), bs)]


def case_chunks(ctx: ScoringContext, indices: np.ndarray) -> list[np.ndarray]:
    """The chunks of a pass over small items: one per case holding requested items (the cases
    in the order of their first item, each case's items in the order given). Like
    :func:`pool_chunks`, fixed by the items alone."""
    order = _group_by_case(ctx, np.asarray(indices, dtype=np.int64).reshape(-1))
    if len(order) == 0:
        return []
    cases = [ctx.pool[int(i)].case_id for i in order]
    return np.split(order, [j for j in range(1, len(order)) if cases[j] != cases[j - 1]])


def _to_device(a: np.ndarray, device: torch.device) -> Tensor:
    """A host array on ``device`` (through pinned memory to a GPU)."""
    t = torch.from_numpy(a)
    pin = device.type == "cuda"
    return (t.pin_memory() if pin else t).to(device, non_blocking=pin)


def case_batches(ctx: ScoringContext, numbered: Numbered) -> Iterator[tuple[int, np.ndarray, CaseView, Tensor]]:
    """``(chunk number, pool indices, the case's view, view.images on ctx.device)`` for each
    case chunk of :func:`case_chunks`; a background thread reads the next cases."""
    device = torch.device(ctx.device)

    def host() -> Iterator[CaseView]:
        for _, idx in numbered:
            yield case_view(ctx.pool, ctx.load_image(ctx.pool[int(idx[0])].case_id), idx)

    for (c, idx), view in zip(numbered, _prefetch(host(), PREFETCH_CHUNKS)):
        yield c, idx, view, _to_device(view.images, device)


def window_batches(
    ctx: ScoringContext, numbered: Numbered
) -> Iterator[tuple[int, np.ndarray, np.ndarray, Tensor, Tensor, Tensor]]:
    """Small items' embedding inputs, case chunk by case chunk (:func:`case_chunks`), at most
    ``ctx.batch_size`` windows at a time: ``(chunk number, the chunk's pool indices, positions
    in them of this batch's items, windows (n, C, *patch), rows (m,), valid (m, *patch))``, the
    tensors on ``ctx.device``; item ``pos[j]`` lies in window ``rows[j]``, its voxels
    ``valid[j]`` (:func:`alseg.scoring.case_windows.embedding_windows`)."""
    device = torch.device(ctx.device)
    pool, bs = ctx.pool, max(1, int(ctx.batch_size))
    two_d = len(pool.patch_size) == 2

    def host() -> Iterator[tuple]:
        for c, idx in numbered:
            volume = ctx.load_image(pool[int(idx[0])].case_id)
            windows, which = embedding_windows(pool, idx, tuple(volume.shape[1:]))
            for w0 in range(0, len(windows), bs):
                x = np.stack([read_window(volume, w) for w in windows[w0 : w0 + bs]]).astype(np.float32, copy=False)
                x = x[:, :, 0] if two_d else x
                pos = np.flatnonzero((which >= w0) & (which < w0 + bs))
                valid = window_valid(pool, idx[pos], windows, which[pos])
                yield c, idx, pos, x, which[pos] - w0, valid

    for c, idx, pos, x, rows, valid in _prefetch(host(), PREFETCH_CHUNKS):
        yield c, idx, pos, _to_device(x, device), _to_device(rows, device), _to_device(valid, device)


def chunk_batches(ctx: ScoringContext, numbered: Numbered) -> Iterator[tuple[int, np.ndarray, Tensor, Tensor]]:
    """``(chunk number, pool indices, images, valid)`` for each ``(number, indices)`` of
    ``numbered``, on ``ctx.device`` (see :func:`item_batches`); a background thread prepares
    the next chunks."""
    device = torch.device(ctx.device)
    numbers = [c for c, _ in numbered]
    host = _prefetch(_host_chunks(ctx, [idx for _, idx in numbered]), PREFETCH_CHUNKS)
    for j, (idx, images, valid) in enumerate(host):
        yield numbers[j], idx, _to_device(images, device), _to_device(valid, device)


def item_batches(
    ctx: ScoringContext, indices: np.ndarray, batch_size: int | None = None
) -> Iterator[tuple[np.ndarray, Tensor, Tensor]]:
    """Chunks of pool items ready for the network.

    Yields ``(pool indices of the chunk, images (n, C, *patch) float32 on ctx.device
    zero-padded (centred) to ctx.pool.patch_size, valid (n, *patch) bool)``, one per chunk of
    :func:`pool_chunks`. Items are grouped by case (each case's image is loaded once), so the
    chunks' order may differ from ``indices``; use the yielded indices to put results back.
    ``batch_size`` defaults to ``ctx.batch_size``.
    """
    for _, idx, x, v in chunk_batches(ctx, list(enumerate(pool_chunks(ctx, indices, batch_size)))):
        yield idx, x, v


# ----------------------------------------------------------------------------- network passes
@contextmanager
def _forked_rng(device: torch.device | str) -> Iterator[None]:
    """Torch's generators (CPU and ``device``) restored on exit."""
    device = torch.device(device)
    devices = (
        [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    )
    with torch.random.fork_rng(devices=devices):
        yield


@contextmanager
def seeded_torch_from(seed: int, device: torch.device | str) -> Iterator[None]:
    """Torch's generators (CPU and ``device``) seeded with ``seed`` and restored on exit."""
    with _forked_rng(device):
        torch.manual_seed(int(seed))
        yield


def chunk_seed(seed: int, chunk: int) -> int:
    """The seed of the dropout masks of chunk number ``chunk`` of a pass seeded ``seed``: each
    chunk's masks depend on (seed, chunk) only, so a chunk gives the same numbers in whichever
    process, and after whichever other chunks, it runs."""
    return int(np.random.SeedSequence([int(seed), int(chunk)]).generate_state(1, np.uint64)[0] >> np.uint64(1))


@contextmanager
def _scoring_pass(ctx: ScoringContext, n: int, label: str) -> Iterator[Callable[[int], None]]:
    """What every scoring pass runs in: inference mode, the network in eval mode (each module's
    mode restored after), a forked RNG (the MC masks leave the caller's stream alone) and a
    progress bar over ``n`` items on a terminal; yields ``advance(k)``."""
    show = bool(ctx.show_progress and console.is_terminal and n)
    with (
        make_progress() if show else nullcontext() as bar,
        torch.inference_mode(),
        eval_mode(ctx.model),
        _forked_rng(ctx.device),
    ):
        task = bar.add_task(label, total=n) if show else None
        yield (lambda k: bar.advance(task, k)) if show else (lambda k: None)


def _mc_chunk(net: nn.Module, x: Tensor, valid: Tensor, passes: int, group: int) -> MCScores:
    """T MC passes over one chunk (dropout already on): the per-item aggregates."""
    acc = MCDropoutAccumulator()
    n = x.shape[0]
    done = 0
    while done < passes:
        g = min(group, passes - done)
        xg = x if g == 1 else x.repeat(g, *([1] * (x.ndim - 1)))
        p = output_logits(net(xg)).float().softmax(1)
        for t in range(g):
            acc.update(p[t * n : (t + 1) * n])
        done += g
    return acc.finalize(valid)


def _score_chunks(
    ctx: ScoringContext, numbered: Numbered, *, mc: bool, deterministic: bool, group: int, seed: int, what: str
) -> Iterator[tuple[int, tuple[Tensor | None, MCScores | None]]]:
    """Chunk function of :func:`score_pool` (see :mod:`alseg.scoring.sharding`): per chunk
    ``(entropy, MC aggregates)``, MC masks seeded by :func:`chunk_seed`."""
    net = ctx.model
    n = sum(len(idx) for _, idx in numbered)
    with _scoring_pass(ctx, n, f"scoring {n} items ({what})") as advance:
        for c, chunk, x, valid in chunk_batches(ctx, numbered):
            entropy = mc_scores = None
            if deterministic:
                net.eval()
                p = output_logits(net(x)).float().softmax(1)
                entropy = item_entropy(p, valid)
                del p
            if mc:
                torch.manual_seed(chunk_seed(seed, c))
                with mc_dropout(net, ctx.dropout_mc):
                    mc_scores = _mc_chunk(net, x, valid, int(ctx.mc_passes), group)
            yield c, (entropy, mc_scores)
            advance(len(chunk))


def _score_cases(
    ctx: ScoringContext, numbered: Numbered, *, mc: bool, deterministic: bool, group: int, seed: int, what: str
) -> Iterator[tuple[int, tuple[Tensor | None, MCScores | None]]]:
    """Chunk function of :func:`score_pool` for small items: per case chunk ``(entropy, MC
    aggregates)`` from sliding windows over the case (:mod:`alseg.scoring.case_windows`), MC
    masks seeded by :func:`chunk_seed` of the case chunk."""
    net = ctx.model
    patch = tuple(ctx.pool.patch_size)
    bs = max(1, int(ctx.batch_size))
    n = sum(len(idx) for _, idx in numbered)
    with _scoring_pass(ctx, n, f"scoring {n} items by case ({what})") as advance:
        for c, idx, view, images in case_batches(ctx, numbered):
            entropy = mc_scores = None
            if deterministic:
                net.eval()
                entropy = case_entropy(net, view, images, patch, bs)
            if mc:
                torch.manual_seed(chunk_seed(seed, c))
                with mc_dropout(net, ctx.dropout_mc):
                    mc_scores = case_mc_scores(net, view, images, patch, bs, int(ctx.mc_passes), group)
            yield c, (entropy, mc_scores)
            advance(len(idx))


def score_pool(
    ctx: ScoringContext,
    indices: np.ndarray | None = None,
    mc: bool = True,
    deterministic: bool = True,
    *,
    passes_per_forward: int = DEFAULT_PASSES_PER_FORWARD,
    seed: int | None = None,
    per_item: bool = False,
) -> PoolScores:
    """Score pool items in one pass (see the module docstring).

    Args:
        ctx: the selection context (model, pool, device, ``mc_passes`` T, ``dropout_mc``,
            ``batch_size``, ``rng`` for the dropout masks, ``show_progress``; ``ranks`` to
            shard the pass over a DDP group, see :mod:`alseg.scoring.sharding`).
        indices: pool indices to score; default the unlabelled items.
        mc: run the T MC dropout passes (mean STD, BALD, class-wise STD).
        deterministic: run the dropout-off pass (Max Entropy).
        passes_per_forward: MC passes run in one forward (the chunk repeated), clipped to
            ``[1, T]``; measured in ``benchmarks/scoring.py``.
        seed: seeds the dropout masks (chunk by chunk, :func:`chunk_seed`); default one draw
            from ``ctx.rng``.
        per_item: items smaller than the patch each in its own window (one forward per item and
            pass), not by sliding window per case: the reference for tests and benchmarks.
            Default items are always read one by one.

    Returns per-item aggregates aligned with ``indices`` (fields not computed are None).
    """
    t0 = time.perf_counter()
    idx = ctx.unlabelled if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
    n = len(idx)
    if mc and ctx.mc_passes < 1:
        raise ValueError(f"MC scores need at least one pass, got mc_passes={ctx.mc_passes}")
    pos = {int(i): j for j, i in enumerate(idx)}
    if len(pos) != n:
        raise ValueError("score_pool indices must be distinct")
    if seed is None:
        seed = int(ctx.rng.integers(2**62))
    entropy = np.zeros(n, np.float32) if deterministic else None
    mean_std = np.zeros(n, np.float32) if mc else None
    bald = np.zeros(n, np.float32) if mc else None
    predictive = np.zeros(n, np.float32) if mc else None
    classwise = np.zeros((n, ctx.n_classes), np.float32) if mc else None  # resized to the net's K below
    class_entropy = np.zeros((n, ctx.n_classes), np.float32) if mc else None
    group = max(1, min(int(passes_per_forward), max(int(ctx.mc_passes), 1)))
    what = " + ".join(([f"{ctx.mc_passes} MC passes"] if mc else []) + (["deterministic"] if deterministic else []))
    by_case = ctx.pool.small_items and not per_item
    chunks = case_chunks(ctx, idx) if by_case else pool_chunks(ctx, idx)
    work = _score_cases if by_case else _score_chunks
    kwargs = dict(mc=mc, deterministic=deterministic, group=group, seed=seed, what=what)
    for c, (e, s) in map_chunks(ctx, list(enumerate(chunks)), work, **kwargs):
        rows = np.fromiter((pos[int(i)] for i in chunks[c]), dtype=np.int64, count=len(chunks[c]))
        if deterministic:
            entropy[rows] = e.cpu().numpy()
        if mc:
            k = s.classwise_std_sum.shape[1]
            if classwise.shape[1] != k:
                classwise = np.zeros((n, k), np.float32)
                class_entropy = np.zeros((n, k), np.float32)
            mean_std[rows] = s.mean_std.cpu().numpy()
            bald[rows] = s.bald.cpu().numpy()
            classwise[rows] = s.classwise_std_sum.cpu().numpy()
            predictive[rows] = s.entropy_of_mean.cpu().numpy()
            class_entropy[rows] = s.class_entropy.cpu().numpy()
    return PoolScores(idx, entropy, mean_std, bald, classwise, time.perf_counter() - t0, predictive, class_entropy)


# ----------------------------------------------------------------------------- batch uncertainty
def batch_uncertainty(classwise_std: np.ndarray) -> float:
    """The paper's Figure 5 measure of a selected batch (Appendix D):
    ``Uncert(X_B) = Σ_{x∈B} Σ_{c foreground} Σ_pixels std_t p_t(c)``, i.e. the foreground
    columns of :attr:`PoolScores.classwise_std` summed over the batch's rows."""
    cw = np.asarray(classwise_std, dtype=np.float64)
    return float(cw[:, 1:].sum()) if cw.size else 0.0


def measure_batch_uncertainty(
    ctx: ScoringContext, indices: np.ndarray, seed: int, passes_per_forward: int = DEFAULT_PASSES_PER_FORWARD
) -> float | None:
    """:func:`batch_uncertainty` of the batch ``indices`` from T fresh MC passes over those
    items only (B x T forwards, negligible next to scoring the pool).

    The one Figure 5 measure for every strategy: the items are sorted and the dropout masks
    seeded by ``seed`` alone (not by how much of the round's generator a strategy used), so the
    same batch gives the same number whichever strategy chose it, and Mean STD / BALD are not
    favoured by re-using the very passes whose spread picked the batch. None without items or
    passes."""
    idx = np.sort(np.asarray(indices, dtype=np.int64).reshape(-1))
    if len(idx) == 0 or ctx.mc_passes < 1:
        return None
    s = score_pool(ctx, idx, mc=True, deterministic=False, passes_per_forward=passes_per_forward, seed=seed)
    return batch_uncertainty(s.classwise_std)
