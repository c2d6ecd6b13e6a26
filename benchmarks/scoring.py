"""Throughput of the pool scoring engine against a plain forward pass over the same items.

    python benchmarks/scoring.py                      # 50,000 synthetic 2D items
    python benchmarks/scoring.py --items 2000 --threads 1

The network is the demo plan's 2D configuration (``plans/demo_hippocampus_like/plans.json``,
patch 56 x 40, 1.9M parameters); the pool is built from synthetic case shapes (a fifth of the
cases smaller than the patch, so their items are padded) and ``load_image`` returns seeded
random volumes. Every row reads the items the same way (:func:`item_batches`), so the ratio
isolates what the engine adds to the forwards: softmax, the float64 MC accumulator, the masked
per-item reductions and the copies back to the host.

Columns: seconds, items/s, *passes/s* (items x forward passes per second), the ratio to
plain forwards (the time the same number of plain forwards takes — dropout off for the
deterministic pass, MC dropout on for MC passes — over the run's time; goal >= 0.9: the engine
costs at most 10% on top of the network), and peak resident memory (RSS, sampled every 20 ms;
plus CUDA peak when on a GPU). The dropout modules themselves are part of the network's cost:
on CPU drawing their masks makes an MC forward ~1.45x a dropout-off one.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from alseg.data.pool import Pool  # noqa: E402
from alseg.model.network import (  # noqa: E402
    build_network,
    mc_dropout,  # noqa: E402
)
from alseg.plans.models import load_plans  # noqa: E402
from alseg.scoring.pool_inference import eval_mode, inference_batch_size, item_batches, score_pool  # noqa: E402
from alseg.strategies.base import SelectionContext  # noqa: E402

PLAN = ROOT / "plans" / "demo_hippocampus_like" / "plans.json"
SLICES_PER_CASE = 40


class RSSPeak:
    """Peak resident set size of this process while the block runs (sampled)."""

    def __init__(self, every: float = 0.02):
        self.every, self.peak = every, 0
        self._page = os.sysconf("SC_PAGE_SIZE")

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(self.every)

    def __enter__(self) -> "RSSPeak":
        self.peak = self._rss()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._rss())


class SyntheticImages:
    """``load_image`` over seeded random volumes, one case kept (the engine reads a case once)."""

    def __init__(self, shapes: dict[str, tuple[int, int, int]]):
        self.shapes = shapes
        self._cache: tuple[str, np.ndarray] | None = None

    def __call__(self, case_id: str) -> np.ndarray:
        if self._cache is None or self._cache[0] != case_id:
            seed = int(case_id.split("_")[1])
            vol = np.random.default_rng(seed).standard_normal((1, *self.shapes[case_id]), dtype=np.float32)
            self._cache = (case_id, vol)
        return self._cache[1]


def build_context(n_items: int, device: torch.device, batch_size: int | None) -> SelectionContext:
    plans = load_plans(PLAN)
    conf = plans.configuration("2d")
    patch = tuple(conf.patch_size)
    shapes = {}
    for c in range(-(-n_items // SLICES_PER_CASE)):
        small = c % 5 == 4  # a fifth of the cases: slices smaller than the patch (padded items)
        shapes[f"case_{c:05d}"] = (SLICES_PER_CASE, patch[0] - 6, patch[1] - 6) if small else (SLICES_PER_CASE, *patch)
    pool = Pool.build(shapes, "2d", patch)
    assert len(pool) >= n_items
    torch.manual_seed(0)
    net = build_network(conf, 1, plans.n_classes).to(device)
    labelled = np.zeros(len(pool), bool)
    labelled[n_items:] = True  # score exactly n_items
    return SelectionContext(
        model=net,
        pool=pool,
        labelled=labelled,
        budget=10,
        rng=np.random.default_rng(0),
        load_image=SyntheticImages(shapes),
        labelled_voxels_per_class=np.ones(plans.n_classes),
        n_classes=plans.n_classes,
        device=device,
        batch_size=batch_size or inference_batch_size(conf, device),
        show_progress=False,
    )


def plain_forward(ctx: SelectionContext, dropout: bool = False) -> None:
    """One forward per chunk and nothing else; with ``dropout`` the MC dropout modules are on."""
    with (
        torch.inference_mode(),
        eval_mode(ctx.model),
        mc_dropout(ctx.model, ctx.dropout_mc) if dropout else eval_mode(ctx.model),
    ):
        for _, x, _ in item_batches(ctx, ctx.unlabelled):
            ctx.model(x)
    if ctx.device.type == "cuda":
        torch.cuda.synchronize(ctx.device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=50_000, help="pool items to score (default 50,000)")
    ap.add_argument("--passes", type=int, nargs="+", default=[1, 10], help="MC passes T to time (default 1 10)")
    ap.add_argument(
        "--group", type=int, nargs="+", default=[1, 5], help="MC passes per forward to compare at the largest T"
    )
    ap.add_argument(
        "--batch-size", type=int, default=None, help="items per forward (default: the loop's, inference_batch_size)"
    )
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    ctx = build_context(args.items, device, args.batch_size)
    n = len(ctx.unlabelled)
    plain_forward(build_context(min(n, 2 * ctx.batch_size), device, args.batch_size))  # warm-up

    rows = []

    def run(label: str, det: int, mc: int, fn) -> None:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        with RSSPeak() as mem:
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
        gpu = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        rows.append((label, det, mc, dt, mem.peak / 2**20, gpu))

    run("plain forward, dropout off", 1, 0, lambda: plain_forward(ctx))
    run(f"plain forward, MC dropout on (p={ctx.dropout_mc})", 0, 1, lambda: plain_forward(ctx, dropout=True))
    run("score_pool deterministic (entropy)", 1, 0, lambda: score_pool(ctx, mc=False, deterministic=True))
    t_max = max(args.passes)
    for t in args.passes:
        ctx.mc_passes = t
        run(f"score_pool MC T={t}", 0, t, lambda: score_pool(ctx, mc=True, deterministic=False))
    for g in args.group:
        if g == 1 or g > t_max:
            continue
        ctx.mc_passes = t_max
        run(
            f"score_pool MC T={t_max}, {g} passes/forward",
            0,
            t_max,
            lambda g=g: score_pool(ctx, mc=True, deterministic=False, passes_per_forward=g),
        )
    ctx.mc_passes = t_max
    run(f"score_pool deterministic + MC T={t_max}", 1, t_max, lambda: score_pool(ctx))

    # the plain forwards' seconds per item and pass, with and without dropout: a run's ratio is
    # the time its forwards alone would take over the time it took
    off, on = rows[0][3] / n, rows[1][3] / n
    print(f"# pool scoring benchmark — {datetime.datetime.now():%Y-%m-%d %H:%M}")
    dev = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU ({platform.processor() or platform.machine()}), {torch.get_num_threads()} thread(s)"
    )
    print(f"# {n} items of 56 x 40 (demo 2d plan), batch {ctx.batch_size}, {dev}, torch {torch.__version__}")
    print()
    gpu_col = device.type == "cuda"
    head = "| run | passes | seconds | items/s | passes/s | ratio to plain | peak RSS MiB |" + (
        " peak CUDA MiB |" if gpu_col else ""
    )
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for label, det, mc, dt, rss, gpu in rows:
        passes = det + mc
        ratio = n * (det * off + mc * on) / dt
        line = f"| {label} | {passes} | {dt:.1f} | {n / dt:.1f} | {n * passes / dt:.1f} | {ratio:.2f} | {rss:.0f} |"
        if gpu_col:
            line += f" {gpu:.0f} |"
        print(line)


if __name__ == "__main__":
    main()
