"""Training throughput: alseg's training step next to nnU-Net v2's own, same plan, batch and patch.

    .venv/bin/python benchmarks/train_throughput.py                       # alseg only
    .venv/bin/python benchmarks/train_throughput.py --nnunet-python /tmp/nnunet-venv/bin/python
        [--plans demo,task04] [--configs 2d,3d_fullres] [--batch-size 32] [--batch-size-3d 2]
        [--iters 1] [--warmup 1] [--repeats 8] [--threads 2] [--cache PLANS_DIR | --demo-cache]

What is timed, per plan configuration, is **the model step only, no data loading on either
side**: one random batch of the plan's patch size (``randn`` images, ``randint`` labels, the
same tensors on both sides) sits in memory and every iteration runs

* alseg: ``SegmentationModule(plans, config)`` built from the plan (MONAI DynUNet subclass,
  with the plan's training dropout), ``training_step`` (forward, Dice + CE deep-supervision
  loss, which resizes the targets itself), backward, gradient clipping at norm 12 (what the
  Lightning Trainer of ``alseg train`` does), the SGD step and poly-LR step of the module's own
  ``configure_optimizers()``. Lightning's per-step bookkeeping is not included.
* nnU-Net v2 (when its interpreter can ``import nnunetv2``): the plan exported with
  ``alseg.plans.nnunet_export.to_nnunet_plans`` and read by nnU-Net's ``PlansManager``; then
  nnU-Net's own ``nnUNetTrainer`` methods, unchanged, on a trainer object that skips
  ``__init__`` (which needs nnU-Net's data folders): ``build_network_architecture``
  (``get_network_from_plans`` -> ``PlainConvUNet``, He init), ``configure_optimizers`` (SGD lr
  1e-2, momentum 0.99, Nesterov, weight decay 3e-5), ``_build_loss`` (``DC_and_CE_loss`` with
  ``MemoryEfficientSoftDiceLoss`` in ``DeepSupervisionWrapper``, nnU-Net's weights) and
  ``train_step`` itself. The deep-supervision targets are prepared outside the timed step, as
  nnU-Net's data loader does (``DownsampleSegForDSTransform``: nearest-exact, int16).

On a GPU both sides use AMP (fp16 autocast + GradScaler: alseg's default precision there,
``nnUNetTrainer``'s always) and nnU-Net compiles its network as it does by default unless
``nnUNet_compile=f``; the batch is moved to the device inside the step on both sides.

Each side runs in its own long-lived worker process (``--alseg-python`` / ``--nnunet-python``,
default: this interpreter), so peak RSS (``VmHWM``) is each side's own; the import baseline is
printed too. The two workers take turns, ``--repeats`` rounds of ``--iters`` iterations each
(A B, B A, A B, ...), after ``--warmup`` iterations each; it/s is 1 / the median time of all
timed iterations of a side, and the ratio alseg / nnU-Net is the ratio of those (the spread of
the per-round ratios, each from the rounds' medians, is printed beside it; on a loaded
machine that spread is the honest error bar). The CPU time of each iteration (all threads of
the worker, ``time.process_time``) is recorded too. Beside the median ratio the table gives the
"best-of" ratio, of each side's fastest iteration (the one least disturbed by other processes,
as ``timeit`` reports); the details add the ratio of the median CPU times (less sensitive to
other processes than wall time, not insensitive: OpenMP threads spin while waiting for a
descheduled partner). Goal: ratio >= 1.0x.
``torch.set_num_threads(--threads)`` (and OMP/MKL_NUM_THREADS) is the same on both sides.

``--cache`` (an ``alseg preprocess`` output: a plans folder holding ``plans.json`` and the
2d cache) or ``--demo-cache`` (builds one for a synthetic dataset in a temporary folder) adds
alseg's data loader alone: ``SegDataModule`` training batches with augmentation, patches/s.

nnU-Net is not a dependency of alseg and this script installs nothing. To get it, in a
separate virtual environment (never alseg's own), see ``benchmarks/plans_vs_nnunet.py``:

    python3 -m venv /tmp/nnunet-venv
    /tmp/nnunet-venv/bin/pip install torch==2.13.0
    printf 'torch==2.13.0+cpu\\ntorchvision==0.28.0\\n' > constraints.txt
    /tmp/nnunet-venv/bin/pip install nnunetv2 pydantic rich nibabel -c constraints.txt
    /tmp/nnunet-venv/bin/pip uninstall -y torchvision

The nnU-Net worker only needs ``alseg.plans`` from this repository (hence pydantic, rich and
nibabel there), which it finds by path. Use the same torch build on both sides (the header prints both versions).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PLANS = {
    "demo": REPO / "plans" / "demo_hippocampus_like",
    "task04": REPO / "plans" / "msd_task04_hippocampus",
}
SIDES = ("alseg", "nnunet")
LABEL = {"alseg": "alseg", "nnunet": "nnU-Net v2"}
GRADIENT_CLIP = 12.0  # alseg.model.trainer.GRADIENT_CLIP; nnUNetTrainer.train_step hard-codes 12
NNUNET_INSTALL = __doc__.split(
    "separate virtual environment (never alseg's own), see ``benchmarks/plans_vs_nnunet.py``:"
)[1]
NNUNET_INSTALL = NNUNET_INSTALL.split("\n\nThe nnU-Net worker")[0]


# ============================================================================ worker side
def _status_kib(field: str) -> int:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak resident) of this process in KiB (0 off Linux)."""
    try:
        with open("/proc/self/status") as f:
            m = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.MULTILINE)
        return int(m.group(1)) if m else 0
    except OSError:
        import resource  # lazy: only the fallback off Linux needs it

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) if field == "VmHWM" else 0


class _Side:
    """One side's model step on a fixed batch; ``step()`` runs one training iteration."""

    params: int
    info: dict[str, Any]

    def step(self) -> float:
        raise NotImplementedError


def _random_batch(torch, batch: int, channels: int, patch: list[int], n_classes: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn((batch, channels, *patch), generator=g)
    label = torch.randint(0, n_classes, (batch, 1, *patch), generator=g)
    return image, label


class _AlsegSide(_Side):
    def __init__(self, spec: dict[str, Any], torch, device):
        # lazy: each side runs in its own child process and imports only its own stack (measured in isolation)
        import warnings

        from alseg.model.module import SegmentationModule
        from alseg.plans.models import load_plans

        # training_step logs through self.log, a no-op (with a warning) without a Trainer
        warnings.filterwarnings("ignore", message=r".*self\.log\(\).*")
        plans = load_plans(Path(spec["plans_dir"]) / "plans.json")
        overrides = {"batch_size": spec["batch_size"], **spec["alseg_overrides"]}
        self.torch, self.device = torch, device
        self.module = SegmentationModule(plans, spec["config"], overrides=overrides).to(device)
        self.module.train()
        conf = self.module.config
        opt = self.module.configure_optimizers()
        self.optimizer = opt["optimizer"]
        self.scheduler = opt["lr_scheduler"]["scheduler"]
        self.amp = device.type == "cuda" and not spec["no_amp"]
        self.scaler = torch.amp.GradScaler("cuda") if self.amp else None
        image, label = _random_batch(
            torch, conf.batch_size, len(plans.channel_names), list(conf.patch_size), plans.n_classes, spec["seed"]
        )
        self.batch = {"image": image, "label": label.to(torch.uint8)}  # alseg's loader yields uint8 labels
        self.params = sum(p.numel() for p in self.module.net.parameters())
        net = self.module.net
        drop = [m for m in net.modules() if type(m).__name__ == "MCDropout"]
        for m in drop:
            m.sparse = not spec["dense_dropout"]
        d = self.optimizer.defaults
        self.info = {
            "patch": list(conf.patch_size),
            "batch": conf.batch_size,
            "outputs": 1 + (len(net.deep_supervision_heads) if net.deep_supervision else 0),
            "loss_weights": [round(w, 4) for w in self.module.loss.weights],
            "dropout": f"{len(drop)} x p={conf.network.dropout_train:g} ({'F.dropout' if spec['dense_dropout'] else 'sparse on CPU'})",
            "conv_bias": _conv_bias(torch, net, ("output_block", "deep_supervision_heads")),
            "optimizer": f"SGD lr={d['lr']:g} momentum={d['momentum']:g} nesterov={d['nesterov']} wd={d['weight_decay']:g}",
            "network": type(net).__name__ + " (MONAI DynUNet)",
        }
        self.i = 0

    def step(self) -> float:
        torch = self.torch
        self.optimizer.zero_grad(set_to_none=True)
        batch = {k: v.to(self.device, non_blocking=True) for k, v in self.batch.items()}
        if self.amp:
            with torch.autocast("cuda", dtype=torch.float16):
                loss = self.module.training_step(batch, self.i)
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), GRADIENT_CLIP)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss = self.module.training_step(batch, self.i)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), GRADIENT_CLIP)
            self.optimizer.step()
        self.scheduler.step()
        self.i += 1
        return float(loss.detach())


def _conv_bias(torch, net, heads: tuple[str, ...]) -> str:
    """How many of the network's block convs (not the 1x1 segmentation heads named by the
    prefixes ``heads``, not the transposed convs) have a bias."""
    convs = [
        m
        for name, m in net.named_modules()
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d)) and not name.startswith(heads)
    ]
    with_bias = sum(m.bias is not None for m in convs)
    return f"{with_bias}/{len(convs)} block convs"


class _NnunetSide(_Side):
    def __init__(self, spec: dict[str, Any], torch, device):
        # lazy: each side runs in its own child process and imports only its own stack (measured in isolation)
        import torch.nn.functional as F
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
        from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        from alseg.plans.models import load_fingerprint, load_plans
        from alseg.plans.nnunet_export import to_nnunet_plans

        plans_dir = Path(spec["plans_dir"])
        plans = load_plans(plans_dir / "plans.json")
        fingerprint = load_fingerprint(plans_dir / "fingerprint.json")
        plans_dict = to_nnunet_plans(plans, fingerprint)
        plans_dict["configurations"][spec["config"]]["batch_size"] = spec["batch_size"]
        dataset_json = {
            "channel_names": {str(k): v for k, v in plans.channel_names.items()},
            "labels": {name: int(c) for c, name in sorted(plans.labels.items())},
            "numTraining": 0,
            "file_ending": ".nii.gz",
        }
        pm = PlansManager(plans_dict)
        cm = pm.get_configuration(spec["config"])

        # nnUNetTrainer.__init__ needs nnU-Net's raw/preprocessed/results folders; set what its
        # methods below read, with the values __init__ sets in nnU-Net 2.8.1.
        t = object.__new__(nnUNetTrainer)
        t.is_ddp, t.local_rank, t.device = False, 0, device
        t.plans_manager, t.configuration_manager, t.configuration_name = pm, cm, spec["config"]
        t.dataset_json = dataset_json
        t.label_manager = pm.get_label_manager(dataset_json)
        t.initial_lr, t.weight_decay, t.num_epochs, t.current_epoch = 1e-2, 3e-5, 1000, 0
        t.enable_deep_supervision = True
        t.log_file = os.devnull
        t.grad_scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" else None
        t.batch_size = cm.batch_size
        n_in = determine_num_input_channels(pm, cm, dataset_json)
        t.network = nnUNetTrainer.build_network_architecture(
            pm, cm, n_in, t.label_manager.num_segmentation_heads, t.enable_deep_supervision
        ).to(device)
        net = t.network
        compiled = t._do_i_compile()
        if compiled:
            t.network = torch.compile(t.network)
        t.optimizer, t.lr_scheduler = t.configure_optimizers()
        t.loss = t._build_loss()
        self.trainer = t

        image, label = _random_batch(torch, cm.batch_size, n_in, list(cm.patch_size), len(plans.labels), spec["seed"])
        seg = label.to(torch.int16)  # nnU-Net's data loader yields int16 segmentations
        targets = []
        for s in t._get_deep_supervision_scales():  # DownsampleSegForDSTransform
            if all(v == 1 for v in s):
                targets.append(seg)
            else:
                shape = [round(a * b) for a, b in zip(seg.shape[2:], s)]
                targets.append(F.interpolate(seg.float(), shape, mode="nearest-exact").to(torch.int16))
        self.batch = {"data": image, "target": targets}
        self.params = sum(p.numel() for p in net.parameters())
        d = t.optimizer.defaults
        weights = list(t.loss.weight_factors) if hasattr(t.loss, "weight_factors") else [1.0]
        self.info = {
            "patch": list(cm.patch_size),
            "batch": cm.batch_size,
            "outputs": len(targets),
            "loss_weights": [round(float(w), 4) for w in weights],
            "dropout": "none" if cm.network_arch_init_kwargs.get("dropout_op") is None else "yes",
            "conv_bias": _conv_bias(torch, net, ("decoder.seg_layers",)),
            "optimizer": f"SGD lr={d['lr']:g} momentum={d['momentum']:g} nesterov={d['nesterov']} wd={d['weight_decay']:g}",
            "network": type(net).__name__ + (" (torch.compile)" if compiled else ""),
        }

    def step(self) -> float:
        return float(self.trainer.train_step(self.batch)["loss"])


def worker_main(side: str, spec: dict[str, Any]) -> None:
    """Build one side, then answer ``{"cmd": "run", "n": N}`` / ``{"cmd": "stop"}`` lines on stdin."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)  # the protocol channel
    os.dup2(2, 1)  # anything the libraries print goes to stderr
    sys.stdout = sys.stderr
    sys.path.insert(0, str(REPO))
    tmp = Path(tempfile.gettempdir()) / "alseg-train-throughput-nnunet"
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ.setdefault(var, str(tmp / var))  # silences nnunetv2.paths; nothing is written there

    def send(obj: dict[str, Any]) -> None:
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    try:
        # lazy: imported in the child, inside try, so a failed import is reported to the parent
        import torch

        torch.set_num_threads(spec["threads"])
        if side == "alseg":
            import alseg.model.module  # noqa: F401  lazy: this side's import baseline (torch + monai + lightning)
        else:
            import nnunetv2.training.nnUNetTrainer.nnUNetTrainer  # noqa: F401  lazy: this side's import baseline
        base_rss = _status_kib("VmRSS")
        device = torch.device(spec["device"])
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # nnU-Net sets it; Lightning's default on GPU too
        t0 = time.perf_counter()
        runner = (_AlsegSide if side == "alseg" else _NnunetSide)(spec, torch, device)
        setup_s = time.perf_counter() - t0
    except Exception as e:  # reported by the parent, which goes on with the other side
        # lazy: only a failure needs it
        import traceback

        traceback.print_exc()
        send({"error": f"{type(e).__name__}: {e}"})
        return
    send(
        {
            "ready": True,
            "params": runner.params,
            "base_rss_kib": base_rss,
            "setup_s": setup_s,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "python": sys.executable,
            **runner.info,
        }
    )
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "run":
            times, cpu, losses = [], [], []
            for _ in range(cmd["n"]):
                sync()
                t0, c0 = time.perf_counter(), time.process_time()
                losses.append(runner.step())
                sync()
                times.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
            send({"times": times, "cpu": cpu, "loss": losses[-1] if losses else None})
        else:
            out = {"peak_rss_kib": _status_kib("VmHWM")}
            if device.type == "cuda":
                out["cuda_peak_bytes"] = torch.cuda.max_memory_allocated()
            send(out)
            return


def loader_main(spec: dict[str, Any]) -> None:
    """alseg's data loader alone: patches/s of ``SegDataModule.train_dataloader()`` with augmentation."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    sys.path.insert(0, str(REPO))
    # lazy: the loader's child process imports once sys.path points at this checkout
    import torch

    from alseg.data.cache import CaseCache
    from alseg.data.datamodule import SegDataModule, whole_case_region
    from alseg.model.module import apply_overrides
    from alseg.plans.models import load_plans

    torch.set_num_threads(spec["threads"])
    result: dict[str, Any] = {}
    tmp = None
    try:
        plans_dir = Path(spec["plans_dir"]) if spec["plans_dir"] else None
        if plans_dir is None:  # --demo-cache
            # lazy: only --demo-cache builds a cache
            from alseg.data.cache import build_cache
            from alseg.dataset.synthetic import generate_dataset
            from alseg.plans.planner import plan_dataset

            tmp = tempfile.TemporaryDirectory(prefix="alseg-train-throughput-")
            t0 = time.perf_counter()
            data = generate_dataset(Path(tmp.name) / "data", seed=0)
            plans_dir = Path(tmp.name) / "plan"
            plan_dataset(data, plans_dir, show_progress=False)
            build_cache(load_plans(plans_dir / "plans.json"), spec["config"], plans_dir, show_progress=False)
            result["build_s"] = time.perf_counter() - t0
            try:  # the build's peak is not the loader's: reset VmHWM to the current RSS (Linux >= 4.0)
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                pass
        plans = load_plans(plans_dir / "plans.json")
        config = apply_overrides(plans.configuration(spec["config"]), {"batch_size": spec["batch_size"]})
        cache = CaseCache.of(plans_dir, plans, spec["config"])
        cases = cache.case_ids()
        regions = [whole_case_region(cache, c) for c in cases]
        dm = SegDataModule(cache, config, regions, num_workers=spec["num_workers"], augment=True, seed=0)
        loader = iter(dm.train_dataloader())
        t0 = time.perf_counter()
        next(loader)
        result["first_batch_s"] = time.perf_counter() - t0
        times = []
        for _ in range(spec["batches"]):
            t0 = time.perf_counter()
            b = next(loader)
            times.append(time.perf_counter() - t0)
        result.update(
            {
                "cache": str(cache),
                "dataset": plans.dataset_name,
                "cases": len(cases),
                "patch": list(config.patch_size),
                "batch": config.batch_size,
                "num_workers": dm.num_workers,
                "patches_per_s": config.batch_size * len(times) / sum(times),
                "batch_shape": list(b["image"].shape),
                "peak_rss_kib": _status_kib("VmHWM"),
            }
        )
    except Exception as e:
        # lazy: only a failure needs it
        import traceback

        traceback.print_exc()
        result = {"error": f"{type(e).__name__}: {e}"}
    finally:
        if tmp is not None:
            tmp.cleanup()
    proto.write(json.dumps(result) + "\n")
    proto.flush()


# ============================================================================ parent side
class Worker:
    """A worker process of one side, driven through JSON lines."""

    def __init__(self, side: str, python: str, spec: dict[str, Any], threads: int):
        env = dict(os.environ)
        env.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
        self.side = side
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            [python, str(Path(__file__).resolve()), "--_worker", side, "--_spec", json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            env=env,
            cwd=str(REPO),
        )
        self.ready = self._read()

    def _read(self) -> dict[str, Any]:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            return {"error": f"worker exited with code {self.proc.returncode}: {self.stderr_tail()}"}
        return json.loads(line)

    def stderr_tail(self, n: int = 6) -> str:
        self.stderr.seek(0)
        lines = [ln for ln in self.stderr.read().splitlines() if ln.strip()]
        return " | ".join(lines[-n:])

    def ask(self, cmd: dict[str, Any]) -> dict[str, Any]:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.proc.poll() is None:
            try:
                out = self.ask({"cmd": "stop"})
            except (OSError, ValueError):  # the worker is gone already
                pass
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.stderr.close()
        return out


def _check(python: str, code: str) -> str | None:
    """None when ``python -c code`` runs, else the last line of its error."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    try:
        r = subprocess.run([python, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    if r.returncode == 0:
        return None
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    return lines[-1] if lines else f"exit code {r.returncode}"


def _mib(kib: float | None) -> str:
    return "—" if not kib else f"{kib / 1024:.0f} MiB"


def _fmt_params(n: int | None) -> str:
    return "—" if n is None else f"{n:,}"


def measure(plan: str, plans_dir: Path, config: str, batch: int, args, pythons: dict[str, str]) -> dict[str, Any]:
    """Both sides of one plan configuration, interleaved; returns the row and notes."""
    spec = {
        "plans_dir": str(plans_dir),
        "config": config,
        "batch_size": batch,
        "threads": args.threads,
        "device": args.device,
        "seed": args.seed,
        "no_amp": args.no_amp,
        "alseg_overrides": dict(args.alseg_override),
        "dense_dropout": args.dense_dropout,
    }
    workers: dict[str, Worker] = {}
    row: dict[str, Any] = {"plan": plan, "config": config, "batch": batch, "errors": {}}
    for side, python in pythons.items():
        w = Worker(side, python, spec, args.threads)
        if "error" in w.ready:
            row["errors"][side] = w.ready["error"]  # the traceback went to the worker's stderr
            w.close()
            continue
        workers[side] = w
        row[side] = {"ready": w.ready, "blocks": [], "block_its": [], "cpu": []}
    sides = [s for s in SIDES if s in workers]
    try:
        if args.warmup:
            for s in sides:
                r = workers[s].ask({"cmd": "run", "n": args.warmup})
                if "times" not in r:
                    raise RuntimeError(f"{s}: {r.get('error', r)} {workers[s].stderr_tail(3)}")
                row[s]["warmup_s"] = r["times"]
        for k in range(args.repeats):
            for s in sides if k % 2 == 0 else sides[::-1]:
                r = workers[s].ask({"cmd": "run", "n": args.iters})
                if "times" not in r:
                    raise RuntimeError(f"{s}: {r.get('error', r)} {workers[s].stderr_tail(3)}")
                row[s]["blocks"].append(r["times"])
                row[s]["cpu"].extend(r["cpu"])
                row[s]["block_its"].append(1 / statistics.median(r["times"]))
                row[s]["loss"] = r["loss"]
            print(
                f"  . {plan} {config} round {k + 1}/{args.repeats}: "
                + ", ".join(f"{LABEL[s]} {row[s]['block_its'][-1]:.3f} it/s" for s in sides),
                flush=True,
            )
    finally:
        for s in sides:
            row[s]["final"] = workers[s].close()
    for s in sides:
        times = [t for block in row[s]["blocks"] for t in block]
        row[s]["its"] = 1 / statistics.median(times) if times else None
    if len(sides) == 2 and row["alseg"]["its"] and row["nnunet"]["its"]:
        row["ratio"] = row["alseg"]["its"] / row["nnunet"]["its"]
        row["paired"] = [a / b for a, b in zip(row["alseg"]["block_its"], row["nnunet"]["block_its"])]
        row["cpu_ratio"] = statistics.median(row["nnunet"]["cpu"]) / statistics.median(row["alseg"]["cpu"])
        fastest = {s: min(t for block in row[s]["blocks"] for t in block) for s in sides}
        row["best_ratio"] = fastest["nnunet"] / fastest["alseg"]
    return row


def print_table(rows: list[dict[str, Any]], cuda: bool) -> None:
    cols = [
        "config",
        "batch",
        "patch",
        "alseg it/s",
        "nnU-Net it/s",
        "ratio alseg/nnU-Net",
        "best-of ratio",
        "alseg peak RSS",
        "nnU-Net peak RSS",
        "params alseg",
        "params nnU-Net",
    ]
    if cuda:
        cols += ["alseg CUDA peak", "nnU-Net CUDA peak"]
    table = []
    for r in rows:
        a, n = r.get("alseg", {}), r.get("nnunet", {})
        patch = (a.get("ready") or n.get("ready") or {}).get("patch")
        ratio = "—"
        if "ratio" in r:
            ratio = f"{r['ratio']:.2f}x ({min(r['paired']):.2f}–{max(r['paired']):.2f})"
        cells = [
            f"{r['plan']} {r['config']}",
            str(r["batch"]),
            "x".join(map(str, patch)) if patch else "—",
            f"{a['its']:.3f}" if a.get("its") else "—",
            f"{n['its']:.3f}" if n.get("its") else "—",
            ratio,
            f"{r['best_ratio']:.2f}x" if "best_ratio" in r else "—",
            _mib(a.get("final", {}).get("peak_rss_kib")),
            _mib(n.get("final", {}).get("peak_rss_kib")),
            _fmt_params(a.get("ready", {}).get("params")),
            _fmt_params(n.get("ready", {}).get("params")),
        ]
        if cuda:
            for s in (a, n):
                b = s.get("final", {}).get("cuda_peak_bytes")
                cells.append("—" if b is None else f"{b / 2**20:.0f} MiB")
        table.append(cells)
    widths = [max(len(c), *(len(t[i]) for t in table)) for i, c in enumerate(cols)]
    print(" | ".join(c.ljust(w) for c, w in zip(cols, widths)))
    print("-+-".join("-" * w for w in widths))
    for t in table:
        print(" | ".join(c.ljust(w) for c, w in zip(t, widths)))


def print_details(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        print(f"\n{r['plan']} {r['config']} (batch {r['batch']}, plan's batch {r['plan_batch']}):")
        for side, err in r["errors"].items():
            print(f"  {LABEL[side]}: FAILED — {err}")
        if "ratio" in r:
            print(
                f"  ratio alseg/nnU-Net {r['ratio']:.2f}x (1 / median wall s/it); per round "
                f"[{', '.join(f'{v:.2f}' for v in r['paired'])}], median {statistics.median(r['paired']):.2f}x; "
                f"fastest iteration of each side {r['best_ratio']:.2f}x; by median CPU time (all threads) {r['cpu_ratio']:.2f}x"
            )
        for side in SIDES:
            s = r.get(side)
            if not s:
                continue
            ready, final = s["ready"], s.get("final", {})
            warm = ", ".join(f"{t:.2f}" for t in s.get("warmup_s", []))
            rounds = ", ".join(f"{v:.3f}" for v in s["block_its"])
            times = [t for block in s["blocks"] for t in block]
            spread = (
                (
                    f"wall s/it min {min(times):.2f} median {statistics.median(times):.2f} max {max(times):.2f}, "
                    f"CPU s/it median {statistics.median(s['cpu']):.2f}"
                )
                if times
                else ""
            )
            print(
                f"  {LABEL[side]:<10} {ready['network']}; torch threads {ready['threads']}; {ready['outputs']} outputs, loss weights "
                f"{ready['loss_weights']}; dropout {ready['dropout']}; conv bias {ready['conv_bias']}; {ready['optimizer']}"
            )
            print(
                f"  {'':<10} it/s per round [{rounds}]; {spread}; warm-up s/it [{warm}]; setup {ready['setup_s']:.1f} s; "
                f"RSS after imports {_mib(ready['base_rss_kib'])}, peak {_mib(final.get('peak_rss_kib'))} "
                f"(+{_mib(final.get('peak_rss_kib', 0) - ready['base_rss_kib'])}); last loss {s.get('loss', float('nan')):.4f}"
            )


def run_loader(args, python: str, plans_dir: Path | None) -> None:
    spec = {
        "plans_dir": str(plans_dir) if plans_dir else None,
        "config": "2d",
        "batch_size": args.batch_size,
        "threads": args.threads,
        "num_workers": args.loader_workers,
        "batches": args.loader_batches,
    }
    what = (
        f"cache {plans_dir}" if plans_dir else "a synthetic demo cache (generate_dataset + plan + preprocess, in /tmp)"
    )
    print(f"\nalseg data loader alone (SegDataModule 2d, augmentation on), {what}:", flush=True)
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)})
    proc = subprocess.run(
        [python, str(Path(__file__).resolve()), "--_loader", "--_spec", json.dumps(spec)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=str(REPO),
    )
    lines = proc.stdout.strip().splitlines()
    if not lines:
        tail = " | ".join(proc.stderr.strip().splitlines()[-4:])
        print(f"  FAILED (exit {proc.returncode}): {tail}")
        return
    r = json.loads(lines[-1])
    if "error" in r:
        print(f"  FAILED: {r['error']}")
        return
    built = f"; cache built in {r['build_s']:.0f} s" if "build_s" in r else ""
    print(
        f"  {r['dataset']} ({r['cases']} cases), patch {'x'.join(map(str, r['patch']))}, batch {r['batch']}, "
        f"{r['num_workers']} worker processes: {r['patches_per_s']:.0f} patches/s "
        f"= {r['patches_per_s'] / r['batch']:.2f} batches/s over {args.loader_batches} batches "
        f"(first batch {r['first_batch_s']:.1f} s, worker start-up){built}; main-process peak RSS {_mib(r['peak_rss_kib'])}"
    )


def _override(text: str) -> tuple[str, Any]:
    key, _, value = text.partition("=")
    if not key or not _:
        raise argparse.ArgumentTypeError("expected KEY=VALUE")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main() -> int:
    if "--_worker" in sys.argv or "--_loader" in sys.argv:
        spec = json.loads(sys.argv[sys.argv.index("--_spec") + 1])
        if "--_loader" in sys.argv:
            loader_main(spec)
        else:
            worker_main(sys.argv[sys.argv.index("--_worker") + 1], spec)
        return 0

    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--plans",
        default="demo,task04",
        help="comma-separated: demo, task04, or folders holding plans.json + fingerprint.json ('' : none, e.g. loader only)",
    )
    ap.add_argument("--configs", default="2d", help="comma-separated: 2d, 3d_fullres")
    ap.add_argument(
        "--batch-size",
        type=int,
        default=32,
        help="2d batch size (0: the plan's; default 32, the Task04 plan's 292 is slow on a CPU)",
    )
    ap.add_argument("--batch-size-3d", type=int, default=2, help="3d_fullres batch size (0: the plan's)")
    ap.add_argument("--iters", type=int, default=1, help="timed iterations per round and side")
    ap.add_argument("--warmup", type=int, default=1, help="untimed iterations per side first")
    ap.add_argument("--repeats", type=int, default=8, help="rounds; the sides take turns")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads on both sides")
    ap.add_argument("--device", default="auto", help="cpu, cuda or auto")
    ap.add_argument(
        "--no-amp", action="store_true", help="fp32 on a GPU too (alseg side only; nnU-Net always uses AMP there)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--alseg-python", default=sys.executable, help="interpreter with alseg's dependencies (default: this one)"
    )
    ap.add_argument("--nnunet-python", default=sys.executable, help="interpreter with nnunetv2 (default: this one)")
    ap.add_argument("--no-nnunet", action="store_true", help="alseg only")
    ap.add_argument(
        "--dense-dropout",
        action="store_true",
        help="alseg's dropout through F.dropout (the reference) instead of sparse_dropout",
    )
    ap.add_argument(
        "--alseg-override",
        type=_override,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="alseg setting for the module (e.g. dropout_train=0), repeatable",
    )
    ap.add_argument(
        "--cache", type=Path, help="an 'alseg preprocess' plans folder with a 2d cache: time alseg's loader too"
    )
    ap.add_argument(
        "--demo-cache", action="store_true", help="build a synthetic 2d cache in /tmp and time alseg's loader"
    )
    ap.add_argument("--loader-batches", type=int, default=10)
    ap.add_argument(
        "--loader-workers", type=int, default=2, help="loader processes (alseg's CPU default is min(2, CPUs))"
    )
    args = ap.parse_args()

    err = _check(args.alseg_python, "import alseg.model.module")
    if err:
        venv = REPO / ".venv" / "bin" / "python"
        print(
            f"alseg's side cannot run in {args.alseg_python}: {err}\n"
            f"Run this script with alseg's venv or pass --alseg-python (e.g. --alseg-python {venv})."
        )
        return 1
    device = args.device
    if device == "auto":
        device = (
            "cuda" if _check(args.alseg_python, "import torch; assert torch.cuda.is_available()") is None else "cpu"
        )
    args.device = device
    pythons = {"alseg": args.alseg_python}
    nnunet_note = ""
    if not args.no_nnunet:
        err = _check(
            args.nnunet_python,
            "import nnunetv2.training.nnUNetTrainer.nnUNetTrainer, alseg.plans.nnunet_export, alseg.plans.planner",
        )
        if err is None:
            pythons["nnunet"] = args.nnunet_python
        else:
            nnunet_note = (
                f"nnU-Net v2 is not importable in {args.nnunet_python} ({err}): alseg's numbers only. "
                f"To compare, install nnU-Net in a separate venv and pass --nnunet-python:{NNUNET_INSTALL}"
            )

    versions = {}
    for side, python in pythons.items():
        code = "import torch, sys; print(torch.__version__, sys.version.split()[0])"
        r = subprocess.run([python, "-c", code], capture_output=True, text=True)
        versions[side] = r.stdout.strip()
    if "nnunet" in pythons:
        r = subprocess.run(
            [
                pythons["nnunet"],
                "-c",
                "import importlib.metadata as m; print(m.version('nnunetv2'), m.version('dynamic_network_architectures'))",
            ],
            capture_output=True,
            text=True,
        )
        versions["nnunetv2"] = r.stdout.strip()

    load = os.getloadavg()
    print(
        f"# train_throughput {date.today()}  {platform.machine()}, {os.cpu_count()} CPUs, load average "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; device {device}; torch threads {args.threads} on both sides"
    )
    for side, python in pythons.items():
        print(
            f"# {LABEL[side]:<10} {python}: torch, python {versions[side]}"
            + (f"; nnunetv2, dynamic_network_architectures {versions['nnunetv2']}" if side == "nnunet" else "")
        )
    if len({versions[s].split()[0] for s in pythons}) > 1:
        print("# WARNING: the two sides run different torch versions; the ratio compares them too")
    print(
        f"# model step only, no data loading: one random batch in memory, {args.warmup} warm-up + "
        f"{args.repeats} rounds x {args.iters} iterations per side, sides alternating (AB BA AB ...); "
        f"it/s = 1 / median s/it, ratio = alseg / nnU-Net of those (per-round ratios min–max in brackets; goal >= 1.0x)"
    )
    print(
        f"# batch: 2d {args.batch_size or 'plan'}, 3d_fullres {args.batch_size_3d or 'plan'} "
        f"(overriding the plan's); peak RSS = VmHWM of each side's own worker process"
        + (f"; alseg overrides {dict(args.alseg_override)}" if args.alseg_override else "")
    )
    if device == "cuda":
        print(
            "# GPU: AMP (fp16 autocast + GradScaler) on both sides"
            + (" (alseg: --no-amp, fp32)" if args.no_amp else "")
            + "; nnU-Net compiles its network unless nnUNet_compile=f"
        )
    if "nnunet" in pythons:
        print(
            "# nnU-Net side: to_nnunet_plans -> PlansManager -> nnUNetTrainer.build_network_architecture, "
            "configure_optimizers, _build_loss, train_step (nnU-Net's own code; targets downsampled outside the step, as its loader does)"
        )
    if nnunet_note:
        print(nnunet_note)
    sys.stdout.flush()

    rows = []
    t_start = time.perf_counter()
    for name in filter(None, args.plans.split(",")):
        plans_dir = PLANS.get(name, Path(name))
        if not (plans_dir / "plans.json").is_file():
            print(f"skipping {name}: no plans.json in {plans_dir}")
            continue
        plan_json = json.loads((plans_dir / "plans.json").read_text())
        for config in args.configs.split(","):
            if config not in plan_json["configurations"]:
                print(f"skipping {name} {config}: not in the plan")
                continue
            plan_batch = plan_json["configurations"][config]["batch_size"]
            batch = (args.batch_size if config == "2d" else args.batch_size_3d) or plan_batch
            run_pythons = dict(pythons)
            if "nnunet" in run_pythons and not (plans_dir / "fingerprint.json").is_file():
                print(f"{name}: no fingerprint.json next to plans.json, nnU-Net side skipped")
                run_pythons.pop("nnunet")
            row = measure(name, plans_dir, config, batch, args, run_pythons)
            row["plan_batch"] = plan_batch
            rows.append(row)
    print(
        f"\n# {time.perf_counter() - t_start:.0f} s; load average now {' '.join(f'{v:.2f}' for v in os.getloadavg())}"
    )
    if rows:
        print_table(rows, device == "cuda")
        print_details(rows)
    if args.cache or args.demo_cache:
        cache = args.cache
        if cache is not None and (cache / "manifest.json").is_file() and (cache.parent / "plans.json").is_file():
            cache = cache.parent  # the cache folder itself was given
        run_loader(args, args.alseg_python, cache)
    return 0


if __name__ == "__main__":
    sys.exit(main())
