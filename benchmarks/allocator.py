"""CPU memory allocation during pool scoring: glibc's defaults vs alseg's settings, side by side.

    python benchmarks/allocator.py [--items 400] [--passes 10] [--repeats 2] [--threads 1]

Why: activations are allocated and freed on every forward. With glibc's defaults, blocks above
the mmap threshold are returned to the kernel when freed and the heap top is trimmed, so every
forward faults its pages in again (kernel time, see ``alseg/runtime.py``). alseg raises both
thresholds on import and, on CPU, scores with batches whose largest activation stays under the
mmap threshold (``inference_batch_size``).

Each row is a fresh child process scoring the same synthetic items (the demo plan's 2D network,
``benchmarks/scoring.py``'s pool) with T MC passes + the deterministic pass:

* allocator ``glibc`` (``ALSEG_KEEP_MALLOC=1``: glibc's defaults) or ``alseg`` (the import's
  ``mallopt``);
* batch ``292`` (the Task04 plan's training batch, what scoring used before) or alseg's CPU
  inference batch.

Rows take turns (``--repeats`` rounds); the table gives the median wall, user and system CPU
seconds and minor page faults, and the wall ratio to glibc with batch 292.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OLD_BATCH = 292


def child(args) -> None:
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    # lazy: the child imports torch only once sys.path points at this checkout and the parent has set its allocator environment
    import torch
    from scoring import build_context  # benchmarks/scoring.py

    from alseg.scoring.pool_inference import score_pool

    torch.set_num_threads(args.threads)
    ctx = build_context(args.items, torch.device("cpu"), args.batch_size or None)
    ctx.mc_passes = args.passes
    score_pool(ctx, ctx.unlabelled[: min(64, args.items)])  # warm-up
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    score_pool(ctx)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    print(
        json.dumps(
            {
                "wall": time.perf_counter() - t0,
                "user": r1.ru_utime - r0.ru_utime,
                "sys": r1.ru_stime - r0.ru_stime,
                "minflt": r1.ru_minflt - r0.ru_minflt,
                "batch": ctx.batch_size,
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=400)
    ap.add_argument("--passes", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    rows = [("glibc", OLD_BATCH), ("alseg", OLD_BATCH), ("glibc", 0), ("alseg", 0)]
    results: dict[tuple[str, int], list[dict]] = {r: [] for r in rows}
    for _ in range(args.repeats):
        for alloc, batch in rows:
            env = {k: v for k, v in os.environ.items() if k != "ALSEG_KEEP_MALLOC"}
            if alloc == "glibc":
                env["ALSEG_KEEP_MALLOC"] = "1"
            cmd = [
                sys.executable,
                __file__,
                "--child",
                "--items",
                str(args.items),
                "--passes",
                str(args.passes),
                "--threads",
                str(args.threads),
                "--batch-size",
                str(batch),
            ]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            results[(alloc, batch)].append(json.loads(out.stdout.strip().splitlines()[-1]))

    def med(xs: list[float]) -> float:
        xs = sorted(xs)
        return xs[len(xs) // 2] if len(xs) % 2 else 0.5 * (xs[len(xs) // 2 - 1] + xs[len(xs) // 2])

    base = med([r["wall"] for r in results[("glibc", OLD_BATCH)]])
    print(
        f"scoring {args.items} items x ({args.passes} MC + 1) passes, demo 2D network, {args.threads} thread(s), "
        f"{args.repeats} repeats; medians"
    )
    print(
        f"{'allocator':<10}| {'batch':>5} | {'wall s':>7} | {'user s':>7} | {'sys s':>6} | {'minor faults':>12} | wall vs glibc/292"
    )
    for alloc, batch in rows:
        rs = results[(alloc, batch)]
        wall = med([r["wall"] for r in rs])
        print(
            f"{alloc:<10}| {rs[0]['batch']:>5} | {wall:7.1f} | {med([r['user'] for r in rs]):7.1f} | "
            f"{med([r['sys'] for r in rs]):6.1f} | {int(med([r['minflt'] for r in rs])):>12,} | {base / wall:.2f}x"
        )


if __name__ == "__main__":
    main()
