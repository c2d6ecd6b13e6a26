"""GPU check (issue #18): one command, four measurements, one table.

On a single-GPU machine (H100/H200 class) this prints, in one table, and writes as
``OUT/gpu_check.json`` and ``OUT/gpu_check.md``:

1. **selection** — USIMF selection at the Liver scale of the paper's round 1: synthetic decoder
   Fisher scores, 104,133 items x 10,000 sampled parameters (float32 on the device, as
   ``embedding_dtype=auto`` chooses there), query multiset Q = 6,665 draws, budget B = 100. Timed:
   the strategy's own steps 2, 4 and 5 (``plan_query_set``, ``USIMF.kernel`` — the raw Fisher
   kernel, ``maximise_flqmi`` — FLQMI stochastic greedy); the gradient embedding itself is not
   part of it (the loop row times it on real data). Best of 2, after an untimed warm-up.
2. **scoring** — pool scoring of 50,000 synthetic items of the 2D patch 56 x 40 (the demo plan's
   2D network, the same network as Task04 2d, 1.9M parameters) with ``score_pool``: one
   deterministic pass + 10 MC dropout passes, items/s and item-passes/s, and the ratio to plain
   forwards of the same kind (``benchmarks/scoring.py``'s context and plain forwards).
3. **train** — the training step alseg / nnU-Net v2, Task04 plan (2d at the plan's batch 292,
   3d_fullres at its batch 7), AMP on the GPU on both sides, random batch in memory, the two
   sides in their own worker processes taking turns (``benchmarks/train_throughput.py``'s
   ``measure``). nnU-Net runs from a separate install (``--nnunet-site``/``--nnunet-python``);
   where it is not importable the row gives alseg's it/s and says why nnU-Net was skipped.
4. **loop** — ``alseg loop TASK04 --strategy usimf --rounds 2 --devices 1`` end to end (planning
   and preprocessing on the fly, budget 100, initial 100, 50 iterations of the plan's batch per
   round, 10 MC passes): wall time, Dice per round, per-round train / score / select seconds.

Each part runs in its own process group with a time budget (selection 45 s, scoring 75 s,
train 150 s, loop 180 s) inside an overall deadline of 450 s; a part over its budget is killed
and its row says so, so the whole check ends in under 8 minutes even when a part misbehaves.
``--parts`` re-runs some parts only (a failed part can be repeated in the same lease).

Estimates for an H100 (not measured; no GPU machine was available when this was written), from
this project's CPU numbers and FLOP counts: selection: CPU 3.8 s at this size with 32-dim
embeddings (README), on the GPU the 104k x 10k x 6.6k kernel is 14 TFLOP in fp32 (~0.3–1 s)
and FLQMI's 100 steps a few ms each: ~2 s, plus ~15 s process start and synthetic data.
Scoring: 550k item-passes x 0.63 GFLOP = 345 TFLOP, ~20k item-passes/s (CPU: ~200/s per thread,
so the 50k run is ~45 min there): ~30–45 s with the plain forwards. Train: the steps take
milliseconds (2d: 0.55 TFLOP per batch of 292); the part is worker start-up (~15 s a side) and
nnU-Net's ``torch.compile`` in its warm-up (~30–60 s per configuration): ~100–150 s. Loop:
planning + preprocessing ~25 s (23 s on 2 CPU cores here), 3 x 50 iterations of batch 292
bound by the 8 loader processes (~1,000–1,500 augmented patches/s: ~10–15 s a round), scoring
6k items x 10 passes and USIMF embeddings of ~6k items a few seconds each: ~100–150 s. Total
~5–6.5 min, under the 8-minute goal with the 450 s deadline as the cap.

Prepare here (a machine with pip access), once, in the repository root:

    bash benchmarks/gpu_check_prepare.sh        # wheels + Task04 into the ignored .gpu_check/

Run on the GPU machine (no network; python3 there holds torch; ``carry: [".gpu_check"]``,
``timeout_s: 540``): the exact command, which installs offline from the carried wheels:

    W=.gpu_check/wheels; I='python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target'; $I /tmp/site $W/alseg/*.whl || exit 1; $I /tmp/nnunet-site $W/nnunet/*.whl || echo 'nnU-Net wheels missing or broken: alseg-only training row'; PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --out $OUT --data .gpu_check/Task04_Hippocampus --nnunet-site /tmp/nnunet-site

alseg's missing dependencies go to ``/tmp/site`` and nnU-Net's stack to ``/tmp/nnunet-site``,
which only the nnU-Net worker puts on its path, so nothing of nnU-Net replaces alseg's.

On a CPU, ``--smoke`` runs the same four parts at tiny sizes (a few minutes on one core):

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 .venv/bin/python benchmarks/gpu_check.py --smoke --out /tmp/gpuck \\
        [--nnunet-python /tmp/nnunet-venv/bin/python]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
PARTS = ("selection", "scoring", "train", "loop")
DEFAULT_DATA = (REPO / ".gpu_check" / "Task04_Hippocampus", REPO.parent / "shared" / "data" / "Task04_Hippocampus")

# Sizes of each part: the full check (GPU) and --smoke (a CPU, a few minutes on one core).
FULL: dict[str, dict[str, Any]] = {
    "selection": {"items": 104_133, "dim": 10_000, "query": 6_665, "budget": 100, "repeats": 2, "budget_s": 45},
    "scoring": {"items": 50_000, "passes": 10, "budget_s": 75},
    "train": {
        "configs": ["2d", "3d_fullres"],
        "batch": {"2d": 0, "3d_fullres": 0},  # 0: the plan's
        "warmup": 3,
        "repeats": 6,
        "iters": 5,
        "threads": 4,
        "budget_s": 150,
    },
    "loop": {
        "cases": None,  # all
        "args": "--rounds 2 --budget 100 --initial 100 --epochs 1 --iters-per-epoch 50 --mc-passes 10".split(),
        "budget_s": 180,
    },
}
SMOKE: dict[str, dict[str, Any]] = {
    "selection": {"items": 3_000, "dim": 256, "query": 192, "budget": 20, "repeats": 1, "budget_s": 120},
    "scoring": {"items": 96, "passes": 10, "budget_s": 180},
    "train": {
        "configs": ["2d"],
        "batch": {"2d": 4, "3d_fullres": 1},
        "warmup": 1,
        "repeats": 2,
        "iters": 1,
        "threads": 1,
        "budget_s": 240,
    },
    "loop": {
        "cases": 8,
        "args": (
            "--rounds 2 --budget 10 --initial 10 --epochs 1 --iters-per-epoch 3 --batch-size 8 --mc-passes 2 "
            "--workers 0 --option max_candidates=60 --option fisher_subset=10"
        ).split(),
        "budget_s": 300,
    },
}
DEADLINE_S = {"full": 450, "smoke": 900}


# ============================================================================ parts (child processes)
def _sync(torch, device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cuda_peak_gb(torch, device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def part_selection(spec: dict[str, Any]) -> dict[str, Any]:
    """USIMF's query set, kernel and FLQMI on synthetic Fisher scores at the given size."""
    # lazy: each part runs in its own process and imports only what it measures
    import numpy as np
    import torch

    from alseg.strategies.usim import USIMF, GradientEmbedding, USIMFOptions, maximise_flqmi, plan_query_set

    device = torch.device(spec["device"])
    n, d, q, budget = spec["items"], spec["dim"], spec["query"], spec["budget"]
    strategy = USIMF(USIMFOptions(query_size=q, embedding_dim=d))
    dtype = strategy.dtype(n)  # what embedding_dtype=auto stores at this size

    t0 = time.perf_counter()
    g = torch.Generator(device=device).manual_seed(0)
    centres = torch.randn(50, d, generator=g, device=device)  # clustered rows, as benchmarks/selection.py
    G = torch.empty(n, d, dtype=dtype, device=device)
    scale = torch.ones(n, dtype=torch.float32, device=device) if dtype == torch.float16 else None
    for r0 in range(0, n, 8192):
        m = min(8192, n - r0)
        rows = centres[torch.randint(0, 50, (m,), generator=g, device=device)]
        rows += 0.7 * torch.randn(m, d, generator=g, device=device)
        if scale is not None:  # float16 rows are stored divided by their largest magnitude (gradient_embeddings)
            s = rows.abs().amax(dim=1)
            scale[r0 : r0 + m] = s
            rows /= s[:, None]
        G[r0 : r0 + m] = rows.to(dtype)
    F_sel = torch.rand(d, generator=g, device=device, dtype=torch.float64) + 0.05  # Fisher diagonal, > 0
    emb = GradientEmbedding(G, scale, ["synthetic"], d, param_index=np.arange(d), fisher=F_sel)
    u = np.random.default_rng(0).gamma(2.0, size=n)  # weighted uncertainty of the candidates
    _sync(torch, device)
    build_s = time.perf_counter() - t0

    def select(e: GradientEmbedding, u_: np.ndarray, q_: int, seed: int) -> dict[str, Any]:
        rng = np.random.default_rng(seed)
        s = USIMF(USIMFOptions(query_size=q_, embedding_dim=d))
        t = [time.perf_counter()]
        query = plan_query_set(u_, budget, q_, rng)
        t.append(time.perf_counter())
        kern = s.kernel(e, query.columns)
        _sync(torch, device)
        t.append(time.perf_counter())
        picked, gains = maximise_flqmi(kern.S, budget, query, s.options, rng)
        t.append(time.perf_counter())
        shape = list(kern.S.shape)
        del kern
        ok = len(set(picked.tolist())) == len(picked) == budget and bool(np.isfinite(gains).all())
        return {
            "query_s": t[1] - t[0],
            "kernel_s": t[2] - t[1],
            "flqmi_s": t[3] - t[2],
            "total_s": t[3] - t[0],
            "kernel_shape": shape,
            "valid_selection": ok,
        }

    small = min(n, 2000)  # untimed warm-up: CUDA context, cuBLAS handles, allocator
    select(emb.rows(np.arange(small)), u[:small], min(q, 200), 1)
    runs = []
    for r in range(spec["repeats"]):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        runs.append(select(emb, u, q, r))
        runs[-1]["cuda_peak_gb"] = _cuda_peak_gb(torch, device)
    best = min(runs, key=lambda x: x["total_s"])
    return {
        "items": n,
        "dim": d,
        "query_draws": q,
        "budget": budget,
        "embedding_dtype": str(dtype).removeprefix("torch."),
        "build_s": build_s,
        "runs": runs,
        "best": best,
        "value": best["total_s"],
        "ok": all(x["valid_selection"] for x in runs),
    }


def part_scoring(spec: dict[str, Any]) -> dict[str, Any]:
    """score_pool over synthetic items: one deterministic + T MC passes, against plain forwards."""
    sys.path.insert(0, str(BENCH))
    # lazy: benchmarks/scoring.py imports torch and alseg at its top, only this part needs them
    import numpy as np
    import scoring
    import torch

    from alseg.scoring.pool_inference import score_pool

    device = torch.device(spec["device"])
    n_req, T = spec["items"], spec["passes"]
    ctx = scoring.build_context(n_req, device, None)
    n = len(ctx.unlabelled)
    warm = scoring.build_context(min(n, 2 * ctx.batch_size), device, None)  # untimed
    scoring.plain_forward(warm)
    warm.mc_passes = 2
    score_pool(warm)

    def timed(fn) -> tuple[float, float]:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        with scoring.RSSPeak() as mem:
            t0 = time.perf_counter()
            fn()
            _sync(torch, device)
            dt = time.perf_counter() - t0
        return dt, mem.peak / 2**30

    off, _ = timed(lambda: scoring.plain_forward(ctx))
    on, _ = timed(lambda: scoring.plain_forward(ctx, dropout=True))
    ctx.mc_passes = T
    result: dict[str, Any] = {}
    dt, rss = timed(lambda: result.setdefault("scores", score_pool(ctx)))
    scores = result["scores"]
    fields = (scores.entropy, scores.mean_std, scores.bald, scores.classwise_std)
    finite = len(scores.indices) == n and all(v is not None and bool(np.isfinite(v).all()) for v in fields)
    return {
        "items": n,
        "passes": 1 + T,
        "batch": ctx.batch_size,
        "patch": "56x40",
        "seconds": dt,
        "items_per_s": n / dt,
        "item_passes_per_s": n * (1 + T) / dt,
        "ratio_to_plain": (off + T * on) / dt,
        "plain_off_s": off,
        "plain_mc_s": on,
        "peak_rss_gb": rss,
        "cuda_peak_gb": _cuda_peak_gb(torch, device),
        "value": n / dt,
        "ok": finite,
    }


def part_train(spec: dict[str, Any]) -> dict[str, Any]:
    """train_throughput.measure on the Task04 plan, one row per configuration."""
    sys.path.insert(0, str(BENCH))
    # lazy: the training benchmark's parent side (its workers import torch themselves)
    import train_throughput as tt

    pythons = {"alseg": sys.executable}
    nnunet_note = None
    err = tt._check(
        spec["nnunet_python"],
        "import nnunetv2.training.nnUNetTrainer.nnUNetTrainer, alseg.plans.nnunet_export, alseg.plans.planner",
    )
    if err is None:
        pythons["nnunet"] = spec["nnunet_python"]
    else:
        nnunet_note = f"nnU-Net v2 not importable with {spec['nnunet_python']}: {err}"
        print(nnunet_note, flush=True)
    versions = {}
    for side, py in pythons.items():
        code = "import torch, sys; print(torch.__version__, sys.version.split()[0])"
        if side == "nnunet":
            code += "; import importlib.metadata as m; print(m.version('nnunetv2'))"
        r = subprocess.run([py, "-c", code], capture_output=True, text=True)
        versions[side] = " / ".join(r.stdout.split())
    args = argparse.Namespace(
        threads=spec["threads"],
        device=spec["device"],
        seed=0,
        no_amp=False,
        alseg_override=[],
        dense_dropout=False,
        warmup=spec["warmup"],
        repeats=spec["repeats"],
        iters=spec["iters"],
    )
    plans_dir = tt.PLANS["task04"]
    plan = json.loads((plans_dir / "plans.json").read_text())
    rows = []
    for config in spec["configs"]:
        batch = spec["batch"][config] or plan["configurations"][config]["batch_size"]
        t0 = time.perf_counter()
        row = tt.measure("task04", plans_dir, config, batch, args, pythons)
        out = {"config": config, "batch": batch, "seconds": time.perf_counter() - t0, "errors": row["errors"]}
        for side in tt.SIDES:
            s = row.get(side)
            if s:
                out[side] = {
                    "its": s.get("its"),
                    "network": s["ready"].get("network"),
                    "patch": s["ready"].get("patch"),
                    "params": s["ready"].get("params"),
                    "setup_s": s["ready"].get("setup_s"),
                    "warmup_s": s.get("warmup_s"),
                    "cuda_peak_gb": (s.get("final", {}).get("cuda_peak_bytes") or 0) / 2**30 or None,
                    "peak_rss_gb": (s.get("final", {}).get("peak_rss_kib") or 0) / 2**20 or None,
                }
        if "ratio" in row:
            out.update(ratio=row["ratio"], ratio_min=min(row["paired"]), ratio_max=max(row["paired"]))
        rows.append(out)
    ok = all(r.get("alseg", {}).get("its") for r in rows) and (
        "nnunet" not in pythons or all("ratio" in r for r in rows)
    )
    return {
        "rows": rows,
        "nnunet_note": nnunet_note,
        "versions": versions,
        "value": (rows[0].get("ratio") or rows[0].get("alseg", {}).get("its")) if rows else None,
        "ok": bool(ok),
    }


def part_loop(spec: dict[str, Any]) -> dict[str, Any]:
    """alseg loop --strategy usimf --rounds 2 --devices 1 on Task04 (or a subset / synthetic data)."""
    work = Path(spec["work"])
    data = Path(spec["data"]) if spec["data"] else None
    src = "Task04_Hippocampus"
    env = _child_env()
    if data is None:  # no Task04 here: the synthetic dataset (smoke only)
        data = work / "loop_data"
        shutil.rmtree(data, ignore_errors=True)
        n = str(spec["cases"] or 24)
        subprocess.run(
            [sys.executable, "-m", "alseg", "demo-data", str(data), "--cases", n, "--test-cases", "0"],
            check=True,
            env=env,
            cwd=REPO,
        )
        src = f"synthetic demo data ({n} cases)"
    elif spec["cases"]:  # a subset of the dataset's cases (smoke)
        sub = work / "loop_data"
        shutil.rmtree(sub, ignore_errors=True)
        meta = json.loads((data / "dataset.json").read_text())
        meta["training"] = meta["training"][: spec["cases"]]
        meta["numTraining"] = len(meta["training"])
        for entry in meta["training"]:
            for key in ("image", "label"):
                (sub / entry[key]).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(data / entry[key], sub / entry[key])
        (sub / "dataset.json").write_text(json.dumps(meta, indent=1))
        data, src = sub, f"Task04_Hippocampus, first {meta['numTraining']} cases"
    else:
        src = f"Task04_Hippocampus ({json.loads((data / 'dataset.json').read_text())['numTraining']} cases)"
    run = work / "loop_run"
    shutil.rmtree(run, ignore_errors=True)
    cmd = [sys.executable, "-m", "alseg", "loop", str(data), "-o", str(run), "--strategy", "usimf"]
    cmd += ["--seed", "0", "--devices", "1", *spec["args"]]
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    rc = subprocess.run(cmd, env=env, cwd=REPO).returncode
    wall = time.perf_counter() - t0
    metrics = run / "metrics.csv"
    rows = list(csv.DictReader(metrics.open())) if metrics.is_file() else []
    if metrics.is_file():
        shutil.copy(metrics, Path(spec["out"]) / "loop_metrics.csv")
    rounds = [
        {
            "round": int(r["round"]),
            "labelled": int(r["n_labelled_items"]),
            "dice": float(r["dice_mean"]),
            **{k: float(r[f"seconds_{k}"]) for k in ("train", "eval", "score", "select")},
        }
        for r in rows
    ]
    expected = 1 + int(spec["args"][spec["args"].index("--rounds") + 1])
    return {
        "data": src,
        "command": " ".join(cmd[1:]),
        "exit_code": rc,
        "seconds": wall,
        "rounds": rounds,
        "value": wall,
        "ok": rc == 0 and len(rounds) == expected,
    }


PART_FUNCS = {"selection": part_selection, "scoring": part_scoring, "train": part_train, "loop": part_loop}


def child_main(name: str, spec: dict[str, Any], result_file: Path) -> int:
    sys.path.insert(0, str(REPO))
    t0 = time.perf_counter()
    result = PART_FUNCS[name](spec)
    result["part_s"] = time.perf_counter() - t0
    result["status"] = "ok" if result.pop("ok") else "failed"
    result_file.write_text(json.dumps(result, indent=1, default=str))
    return 0


# ============================================================================ parent
def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run_part(name: str, spec: dict[str, Any], out: Path, work: Path, timeout: float) -> dict[str, Any]:
    """One part in its own process group; killed with everything it started after ``timeout`` s."""
    result_file = work / f"{name}.json"
    result_file.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_part", name, "--_spec", json.dumps(spec)]
    cmd += ["--_result", str(result_file)]
    t0 = time.perf_counter()
    with open(out / f"{name}.log", "w") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=_child_env(), cwd=REPO, start_new_session=True
        )
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the part's own process group (its workers included)
            proc.wait()
            return {"status": "timeout", "error": f"over its budget: killed after {timeout:.0f} s", "part_s": timeout}
        finally:
            try:  # anything the part left behind in its group (loader workers of a failed loop)
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    wall = time.perf_counter() - t0
    if rc == 0 and result_file.is_file():
        result = json.loads(result_file.read_text())
        result["wall_s"] = wall
        return result
    tail = [ln for ln in (out / f"{name}.log").read_text(errors="replace").splitlines() if ln.strip()][-3:]
    return {"status": "failed", "error": f"exit {rc}: " + " | ".join(tail), "part_s": wall, "wall_s": wall}


def _f(v: float | None, fmt: str = ".2f", none: str = "—") -> str:
    return none if v is None else format(v, fmt)


def table_rows(parts: dict[str, dict[str, Any]], cuda: bool) -> list[list[str]]:
    """[part, setting, result, details, seconds, status] per row."""
    rows = []
    for name in PARTS:
        r = parts.get(name)
        if r is None:
            continue
        sec = _f(r.get("wall_s", r.get("part_s")), ".0f")
        if r["status"] in ("timeout", "skipped") or ("error" in r and r["status"] == "failed" and "rows" not in r):
            rows.append([name, "", "—", r.get("error") or r.get("reason", ""), sec, r["status"]])
            continue
        if name == "selection":
            b = r["best"]
            rows.append(
                [
                    "USIMF selection",
                    f"{b['kernel_shape'][0]:,} x {b['kernel_shape'][1]:,} kernel ({r['query_draws']:,} draws), "
                    f"{r['dim']:,}-dim {r['embedding_dtype']} embeddings, B = {r['budget']}",
                    f"{b['total_s']:.2f} s",
                    f"query {b['query_s']:.3f} + kernel {b['kernel_s']:.3f} + FLQMI {b['flqmi_s']:.3f} s"
                    + (f"; CUDA peak {b['cuda_peak_gb']:.1f} GB" if b.get("cuda_peak_gb") else "")
                    + f"; best of {len(r['runs'])}",
                    sec,
                    r["status"],
                ]
            )
        elif name == "scoring":
            rows.append(
                [
                    "pool scoring",
                    f"{r['items']:,} items x (1 + {r['passes'] - 1} MC passes), {r['patch']}, batch {r['batch']}",
                    f"{r['items_per_s']:,.0f} items/s",
                    f"{r['item_passes_per_s']:,.0f} item-passes/s, {r['seconds']:.1f} s; ratio to plain forwards "
                    f"{r['ratio_to_plain']:.2f}"
                    + (f"; CUDA peak {r['cuda_peak_gb']:.1f} GB" if r.get("cuda_peak_gb") else ""),
                    sec,
                    r["status"],
                ]
            )
        elif name == "train":
            amp = "AMP fp16" if cuda else "fp32 (CPU)"
            for t in r["rows"]:
                a, n = t.get("alseg", {}), t.get("nnunet", {})
                patch = "x".join(map(str, a.get("patch") or n.get("patch") or []))
                if "ratio" in t:
                    result = f"{t['ratio']:.2f}x alseg/nnU-Net"
                    detail = (
                        f"alseg {a['its']:.2f} it/s, nnU-Net {n['its']:.2f} it/s ({n.get('network')}); "
                        f"per round {t['ratio_min']:.2f}–{t['ratio_max']:.2f}"
                    )
                else:
                    result = f"alseg {_f(a.get('its'))} it/s"
                    why = "; ".join(f"{k}: {v}" for k, v in t["errors"].items()) or r.get("nnunet_note") or ""
                    detail = f"nnU-Net skipped — {why}"[:300]
                warm = [max(x["warmup_s"]) for x in (a, n) if x.get("warmup_s")]
                if warm:  # nnU-Net's torch.compile happens in its first iterations
                    detail += "; slowest warm-up it " + " / ".join(f"{w:.1f}" for w in warm) + " s"
                if a.get("cuda_peak_gb"):
                    detail += (
                        f"; CUDA peak alseg {a['cuda_peak_gb']:.1f} / nnU-Net {_f(n.get('cuda_peak_gb'), '.1f')} GB"
                    )
                rows.append(
                    [
                        f"training step, Task04 {t['config']}",
                        f"batch {t['batch']}, patch {patch}, {amp}",
                        result,
                        detail,
                    ]
                    + [_f(t["seconds"], ".0f"), r["status"]]
                )
        elif name == "loop":
            rd = r["rounds"]
            dice = " → ".join(f"{x['dice']:.3f}" for x in rd) or "—"
            per = "; ".join(
                f"r{x['round']}: train {x['train']:.0f} s"
                + (f", score {x['score']:.0f} s, select {x['select']:.0f} s" if x["round"] else "")
                for x in rd
            )
            rows.append(
                [
                    "usimf loop, --devices 1",
                    f"{r['data']}, {len(rd) - 1 if rd else 0} rounds, {rd[-1]['labelled'] if rd else 0} items labelled",
                    f"{r['seconds']:.0f} s",
                    f"Dice {dice}; {per}" + (f"; exit {r['exit_code']}" if r["exit_code"] else ""),
                    sec,
                    r["status"],
                ]
            )
    return rows


COLUMNS = ["part", "setting", "result", "details", "s", "status"]


def print_table(title: str, rows: list[list[str]]) -> None:
    try:
        # lazy: rich draws the final table only; plain text when it is missing
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # rich is one of alseg's dependencies; plain text if it is missing
        print(title)
        for r in rows:
            print(" | ".join(r))
        return
    table = Table(title=title, show_lines=True)
    for c in COLUMNS:
        table.add_column(c, overflow="fold", max_width=70 if c == "details" else None)
    for r in rows:
        table.add_row(*r)
    Console(width=200).print(table)


def markdown(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_report(
    out: Path,
    header: str,
    results: dict[str, dict[str, Any]],
    t_start: float,
    deadline: float,
    device: str,
    dev_name: str,
    mode: str,
    final: bool = True,
) -> tuple[list[list[str]], float]:
    """``gpu_check.json`` and ``gpu_check.md`` with the parts done so far (rewritten after each part,
    so a run stopped from outside leaves what it measured)."""
    import torch  # lazy: already imported by the caller; only its version is read here

    total = time.perf_counter() - t_start
    try:
        rows = table_rows(results, device == "cuda")
    except (KeyError, TypeError, ValueError, IndexError) as e:
        rows = [["(table)", "", "—", f"could not be built: {type(e).__name__}: {e}", "", "failed"]]
    done = "" if final else f" (so far: {', '.join(results)})"
    md_text = f"{header}\n\n{markdown(rows)}\nTotal {total:.0f} s{done}.\n"
    report = {
        "date": datetime.now().isoformat(timespec="seconds"),
        "mode": mode,
        "device": dev_name,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "total_s": total,
        "deadline_s": deadline,
        "finished": final,
        "parts": results,
        "table": {"columns": COLUMNS, "rows": rows},
    }
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "gpu_check.md").write_text(md_text)
    return rows, total


def _nnunet_wrapper(site: Path, work: Path) -> str:
    """An interpreter for nnU-Net's worker: this Python with ``site`` first on its path."""
    path = work / "nnunet-python"
    path.write_text(f'#!/bin/sh\nPYTHONPATH="{site}${{PYTHONPATH:+:$PYTHONPATH}}" exec "{sys.executable}" "$@"\n')
    path.chmod(0o755)
    return str(path)


def main() -> int:
    if "--_part" in sys.argv:
        a = sys.argv
        return child_main(
            a[a.index("--_part") + 1], json.loads(a[a.index("--_spec") + 1]), Path(a[a.index("--_result") + 1])
        )

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json, gpu_check.md and the logs")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, for a CPU")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    ap.add_argument("--data", type=Path, help="Task04_Hippocampus (default: .gpu_check/ or ../shared/data/)")
    ap.add_argument("--nnunet-python", help="interpreter that imports nnunetv2 (default: this one)")
    ap.add_argument("--nnunet-site", type=Path, help="a pip --target folder holding nnunetv2: used with this Python")
    ap.add_argument("--device", default="auto", help="cuda, cpu or auto")
    ap.add_argument("--deadline", type=float, help="seconds for all parts (default 450; --smoke 900)")
    ap.add_argument(
        "--budget",
        action="append",
        default=[],
        metavar="PART=SECONDS",
        help="override a part's time budget (repeatable), e.g. loop=240",
    )
    ap.add_argument("--work", type=Path, help="scratch folder, kept (default: a temporary one, removed at the end)")
    args = ap.parse_args()

    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        ap.error(f"unknown part(s) {unknown}; choose from {', '.join(PARTS)}")
    try:
        args.budget = {k: float(v) for k, _, v in (b.partition("=") for b in args.budget)}
    except ValueError:
        ap.error("--budget takes PART=SECONDS, e.g. loop=240")
    if set(args.budget) - set(PARTS):
        ap.error(f"--budget: unknown part(s) {sorted(set(args.budget) - set(PARTS))}")
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="alseg-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        return check(args, parts, work)
    finally:
        if args.work is None:  # the loop's run directory (checkpoints) and the nnU-Net wrapper
            shutil.rmtree(work, ignore_errors=True)


def check(args: argparse.Namespace, parts: list[str], work: Path) -> int:
    t_start = time.perf_counter()
    sizes = SMOKE if args.smoke else FULL
    deadline = args.deadline or DEADLINE_S["smoke" if args.smoke else "full"]

    try:
        # lazy: the parent needs torch only to find the device, after the arguments are checked
        import torch
    except ImportError as e:
        print(f"torch is not importable ({e}): install it first (see the docstring)")
        return 1
    cuda_ok = torch.cuda.is_available()
    device = ("cuda" if cuda_ok else "cpu") if args.device == "auto" else args.device
    if device == "cuda" and not cuda_ok:
        print("--device cuda: no CUDA device is visible")
        return 1
    dev_name = (
        torch.cuda.get_device_name(0) if device == "cuda" else f"CPU ({platform.machine()}, {os.cpu_count()} CPUs)"
    )
    nnunet_python = args.nnunet_python or sys.executable
    if args.nnunet_site:
        nnunet_python = _nnunet_wrapper(args.nnunet_site.resolve(), work)
    data = args.data or next((d for d in DEFAULT_DATA if (d / "dataset.json").is_file()), None)
    if data is not None and not (data / "dataset.json").is_file():
        print(f"--data {data}: no dataset.json there")
        return 1

    import importlib.metadata as md  # lazy: the versions in the header only

    def version(dist: str) -> str:
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return "missing"

    mode = "smoke (tiny sizes)" if args.smoke else "full"
    header = (
        f"alseg GPU check {datetime.now():%Y-%m-%d %H:%M}, {mode}: {dev_name}; torch {torch.__version__} "
        f"(CUDA {torch.version.cuda}), Python {platform.python_version()}, monai {version('monai')}, "
        f"lightning {version('lightning')}"
    )
    print(header, flush=True)
    missing = [
        d for d in ("monai", "pydantic", "SimpleITK", "nibabel", "lightning", "typer") if version(d) == "missing"
    ]
    if missing:
        print(f"alseg's dependencies {missing} are not installed: see the install line in the docstring")
        return 1

    results: dict[str, dict[str, Any]] = {}
    for name in PARTS:
        if name not in parts:
            continue
        spec = dict(sizes[name])
        budget = args.budget.get(name, spec.pop("budget_s"))
        spec.pop("budget_s", None)
        spec.update(device=device, work=str(work), out=str(args.out))
        if name == "train":
            spec["nnunet_python"] = nnunet_python
        if name == "loop":
            spec["data"] = str(data.resolve()) if data else None
            if data is None and not args.smoke:
                results[name] = {"status": "skipped", "reason": "no Task04_Hippocampus: run gpu_check_prepare.sh"}
                continue
        left = deadline - (time.perf_counter() - t_start)
        if left < 20:
            results[name] = {"status": "skipped", "reason": f"deadline of {deadline:.0f} s reached"}
            print(f"[{name}] skipped: deadline reached", flush=True)
            continue
        timeout = min(budget, left)
        print(f"[{name}] running (budget {timeout:.0f} s, log {args.out / (name + '.log')}) ...", flush=True)
        results[name] = run_part(name, spec, args.out, work, timeout)
        r = results[name]
        try:  # the part's numbers at once: the output of a command stopped later still holds them
            got = "; ".join(f"{row[0]}: {row[2]}" for row in table_rows({name: r}, device == "cuda"))
        except (KeyError, TypeError, ValueError, IndexError) as e:  # a malformed result is reported, not fatal
            got = f"(result not readable: {type(e).__name__}: {e})"
        print(
            f"[{name}] {r['status']} in {r.get('wall_s', r.get('part_s', 0)):.0f} s"
            + (f": {r['error']}" if "error" in r else f" — {got}"),
            flush=True,
        )
        write_report(args.out, header, results, t_start, deadline, device, dev_name, mode, final=False)

    rows, total = write_report(args.out, header, results, t_start, deadline, device, dev_name, mode)
    title = f"alseg GPU check, {datetime.now():%Y-%m-%d}, {dev_name}, {mode}: {total:.0f} s in all"
    print()
    print_table(title, rows)
    print()
    print((args.out / "gpu_check.md").read_text())
    print(f"wrote {args.out / 'gpu_check.json'} and {args.out / 'gpu_check.md'}")
    return 0 if all(r["status"] == "ok" for r in results.values()) else 2


if __name__ == "__main__":
    sys.exit(main())
