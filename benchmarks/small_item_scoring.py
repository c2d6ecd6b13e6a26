"""Scoring items smaller than the patch: one forward per item (the old path) against one sliding
window per case (the new one), same items, same run.

    nice -n 5 python benchmarks/small_item_scoring.py                 # 4 cases, T = 3, 20³ items
    python benchmarks/small_item_scoring.py --cases 20 --passes 10 --device cuda

The network is Task04 Hippocampus's 3d_fullres plan (``plans/msd_task04_hippocampus``: patch
40 x 56 x 40, 4 stages, untrained: the cost of a forward does not depend on the weights); the
cases have the shapes of the first Task04 training cases on the plan's grid (spacing 1 mm, so
the cropped shapes of ``fingerprint.json``), seeded random images; the items tile them at
``--item-size``. Both rows score every item with the T MC passes and the deterministic pass
(``score_pool``, as ``bald`` scores the pool), the first with ``per_item=True``.

Columns: seconds, network samples (patch-sized windows through the network, counted), items per
second, and the speed-up of the case path. The last line compares the two paths' BALD rankings
(Spearman): the scores are not equal by design (the case path blends overlapping windows, the
per-item path sees each item centred in its own window), on an untrained network.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from alseg.data.pool import Pool  # noqa: E402
from alseg.model.network import build_network  # noqa: E402
from alseg.plans.models import load_plans  # noqa: E402
from alseg.scoring.pool_inference import inference_batch_size, score_pool  # noqa: E402
from alseg.strategies.base import SelectionContext  # noqa: E402

PLAN = ROOT / "plans" / "msd_task04_hippocampus"


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=4, help="Task04 cases to score (default 4)")
    ap.add_argument("--passes", type=int, default=3, help="MC passes T (default 3; the protocol uses 10)")
    ap.add_argument("--item-size", default="20,20,20", help="item size Z,Y,X (default 20,20,20)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads on CPU (default 1)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    plans = load_plans(PLAN / "plans.json")
    config = plans.configuration("3d_fullres")
    transpose = plans.transpose_forward
    shapes_raw = json.loads((PLAN / "fingerprint.json").read_text())["shapes_after_crop"][: args.cases]
    shapes = {f"case_{j:03d}": tuple(int(s[t]) for t in transpose) for j, s in enumerate(shapes_raw)}
    item = tuple(int(s) for s in args.item_size.split(","))
    pool = Pool.build(shapes, "3d_fullres", tuple(config.patch_size), item_size=item)
    rng = np.random.default_rng(0)
    volumes = {c: rng.normal(size=(1, *s)).astype(np.float32) for c, s in shapes.items()}
    torch.manual_seed(0)
    net = build_network(config, in_channels=1, n_classes=len(plans.labels)).to(device)
    seen = [0]
    net.input_block.register_forward_pre_hook(lambda _m, a: seen.__setitem__(0, seen[0] + a[0].shape[0]))

    def ctx() -> SelectionContext:
        return SelectionContext(
            model=net,
            pool=pool,
            labelled=np.zeros(len(pool), bool),
            budget=1,
            rng=np.random.default_rng(0),
            load_image=volumes.__getitem__,
            labelled_voxels_per_class=np.ones(len(plans.labels)),
            n_classes=len(plans.labels),
            device=device,
            mc_passes=args.passes,
            batch_size=inference_batch_size(config, device),
            show_progress=False,
        )

    rows, scores = [], {}
    for name, per_item in (("per item (old)", True), ("per case, sliding window (new)", False)):
        seen[0] = 0
        t0 = time.perf_counter()
        s = score_pool(ctx(), seed=1, per_item=per_item)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        rows.append((name, dt, seen[0]))
        scores[per_item] = s.bald

    print(f"# small-item scoring benchmark — {datetime.datetime.now():%Y-%m-%d %H:%M}")
    print(
        f"# {len(shapes)} Task04 cases {sorted(set(shapes.values()))}, {len(pool)} items of {item}, "
        f"patch {tuple(config.patch_size)}, T = {args.passes} MC passes + 1 deterministic, "
        f"batch {ctx().batch_size}, {device} ({args.threads if device.type == 'cpu' else 1} thread(s)), "
        f"torch {torch.__version__}, {platform.machine()}"
    )
    print()
    print(f"| {'path':<32} | {'seconds':>8} | {'network samples':>15} | {'items/s':>8} |")
    print(f"|{'-' * 34}|{'-' * 10}|{'-' * 17}|{'-' * 10}|")
    for name, dt, n in rows:
        print(f"| {name:<32} | {dt:8.1f} | {n:15d} | {len(pool) / dt:8.2f} |")
    (_, old, n_old), (_, new, n_new) = rows
    print()
    print(f"speed-up (old / new seconds): {old / new:.2f}x; network samples {n_old / n_new:.2f}x fewer")
    print(f"BALD rank agreement between the paths (Spearman): {spearman(scores[True], scores[False]):.3f}")


if __name__ == "__main__":
    main()
