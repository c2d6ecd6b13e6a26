"""Learning parity: does alseg's training teach the model as much per step as nnU-Net v2's?

    .venv/bin/python benchmarks/learning_parity.py --nnunet-python /tmp/nnunet-venv/bin/python \\
        [--data ../shared/data/Task04_Hippocampus] [--work /tmp/alseg-parity] \\
        [--iterations 600,1200] [--seeds 0,1,2] [--batch-size 32] [--epoch-iterations 50] \\
        [--systems alseg,nnunet] [--variant NAME=key:value,key:value ...] [--threads 2] [--workers 1]

Both systems train the ``2d`` configuration of the same plan (alseg's, exported to nnU-Net with
:mod:`alseg.plans.nnunet_export` and preprocessed by ``nnUNetv2_preprocess``) on the same fold
(nnU-Net's fold 0: alseg's :func:`~alseg.model.train.make_split` written as nnU-Net's
``splits_final.json``), with the same batch, for the same number of iterations, split into epochs
of ``--epoch-iterations`` (nnU-Net steps its poly learning rate once per epoch, alseg once per
iteration). Then both predict the held-out cases of the fold from the original image files,
without test-time mirroring, and the Dice of each case is measured in the original image space
against the dataset's label file, with one function (:mod:`alseg.model.metrics`):

* alseg: :func:`alseg.model.train.train` (validation only after the last epoch) and
  :func:`alseg.predict.predict` (``tta=False``), in this interpreter, in a subprocess.
* nnU-Net v2: its own ``nnUNetTrainer``, subclassed only to set ``num_epochs``,
  ``num_iterations_per_epoch``, the batch size, one validation iteration per epoch and the seeds
  (Python, numpy, torch), ``run_training()``, then ``nnUNetPredictor`` (Gaussian sliding window,
  ``use_mirroring=False``) on the trained network, in ``--nnunet-python`` (a side venv).

Runs are serialised (one at a time, ``--threads`` torch threads and ``--workers`` data-loading
processes on both sides: ``nnUNet_n_proc_DA``) and interleaved (for each seed and length, the
systems in turn), so a busy machine slows both alike. Each run's result is a JSON file under
``WORK/runs``; finished runs are skipped, so the script can be stopped and restarted. The table
gives, per system and length: mean Dice (and per class) as mean ± sd over seeds, and the paired
difference to nnU-Net (same seed), with wall and CPU time per run.

``--variant NAME=key:value,...`` adds an alseg system with settings overridden
(:func:`alseg.model.module.apply_overrides` keys: plan trainer and network fields, e.g.
``nodrop=dropout_train:0``): the ablations of the README's parity table.

nnU-Net is not a dependency of alseg and this script installs nothing; the side venv is made as
``benchmarks/plans_vs_nnunet.py`` says (it needs alseg importable too: ``pip install -e .``
there, or ``PYTHONPATH``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SRC = Path(os.environ.get("ALSEG_PARITY_SRC", REPO))  # the alseg to train: this checkout or an older revision's
sys.path.insert(0, str(SRC))
sys.path.insert(0, str(REPO / "benchmarks"))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from alseg.dataset.io import read_volume  # noqa: E402
from alseg.dataset.raw import read_dataset  # noqa: E402
from alseg.model.metrics import dice_per_class, mean_dice  # noqa: E402

CONFIG = "2d"
DATASET_ID = 904
DATASET = f"Dataset{DATASET_ID}_Parity"

NNUNET_WORKER = r"""
import json, os, random, sys, time
import numpy as np, torch
from batchgenerators.utilities.file_and_folder_operations import load_json, join
from nnunetv2.paths import nnUNet_preprocessed
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
random.seed(args["seed"]); np.random.seed(args["seed"]); torch.manual_seed(args["seed"])


class nnUNetTrainerParity(nnUNetTrainer):
    # nnU-Net's own trainer; only the schedule length, batch size and validation count change
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cpu")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = args["epochs"]
        self.num_iterations_per_epoch = args["iters_per_epoch"]
        self.num_val_iterations_per_epoch = 1
        self.configuration_manager.configuration["batch_size"] = args["batch_size"]


folder = join(nnUNet_preprocessed, args["dataset"])
plans = load_json(join(folder, "nnUNetPlans.json"))
plans["continue_training"] = False
dataset_json = load_json(join(folder, "dataset.json"))
trainer = nnUNetTrainerParity(plans, args["config"], 0, dataset_json, torch.device("cpu"))
t0 = time.perf_counter()
trainer.run_training()
train_s = time.perf_counter() - t0
log = getattr(trainer.logger, "local_logger", trainer.logger).my_fantastic_logging
trainer.set_deep_supervision_enabled(False)
net = trainer.network._orig_mod if hasattr(trainer.network, "_orig_mod") else trainer.network
net.eval()
predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                            perform_everything_on_device=False, device=torch.device("cpu"),
                            verbose=False, allow_tqdm=False)
predictor.manual_initialization(net, trainer.plans_manager, trainer.configuration_manager, [net.state_dict()],
                                dataset_json, type(trainer).__name__, None)
t1 = time.perf_counter()
predictor.predict_from_files([[f] for f in args["images"]], args["pred_dir"], save_probabilities=False,
                             overwrite=True, num_processes_preprocessing=1, num_processes_segmentation_export=1)
print("RESULT " + json.dumps({"train_seconds": train_s, "predict_seconds": time.perf_counter() - t1,
                              "train_loss": float(log["train_losses"][-1])}))
"""


BATCH_STATS_WORKER = r"""
import json, os, sys
import numpy as np, torch
args = json.loads(sys.argv[1])
torch.manual_seed(0); np.random.seed(0)


def stats(images, labels):
    # per-sample numbers of a training batch: foreground share per class, image moments, padding, fg centroid offset
    out = []
    for x, y in zip(images, labels):
        x, y = x[0].numpy().astype(np.float64), y[0].numpy()
        row = {"mean": x.mean(), "std": x.std(), "zero": float((np.abs(x) < 1e-6).mean())}
        for c in (1, 2):
            row[f"fg{c}"] = float((y == c).mean())
        fg = np.argwhere(y > 0)
        row["any_fg"] = float(len(fg) > 0)
        if len(fg):
            off = fg.mean(0) - (np.array(y.shape) - 1) / 2
            row["centroid_dy"], row["centroid_dx"] = float(off[0]), float(off[1])
        out.append(row)
    return out


rows = {"alseg": [], "nnunet": []}
from alseg.data.cache import CaseCache
from alseg.data.datamodule import SegDataModule, whole_case_region
from alseg.model.module import apply_overrides
from alseg.plans.models import load_plans

plan = args["plan"]
plans = load_plans(os.path.join(plan, "plans.json"))
config = apply_overrides(plans.configuration("2d"), {"batch_size": args["batch_size"], "iterations_per_epoch": args["batches"]})
cache = CaseCache(os.path.join(plan, "alsegPlans_2d"))
dm = SegDataModule(cache, config, [whole_case_region(cache, c) for c in args["train"]], num_workers=0, seed=0)
for b in dm.train_dataloader():
    rows["alseg"] += stats(b["image"], b["label"])

from batchgenerators.utilities.file_and_folder_operations import load_json, join
from nnunetv2.paths import nnUNet_preprocessed
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
folder = join(nnUNet_preprocessed, args["dataset"])
nplans = load_json(join(folder, "nnUNetPlans.json"))
nplans["configurations"]["2d"]["batch_size"] = args["batch_size"]
nplans["continue_training"] = False
trainer = nnUNetTrainer(nplans, "2d", 0, load_json(join(folder, "dataset.json")), torch.device("cpu"))
trainer.initialize()
dl_tr, _ = trainer.get_dataloaders()
for _ in range(args["batches"]):
    b = next(dl_tr)
    t = b["target"][0] if isinstance(b["target"], list) else b["target"]
    rows["nnunet"] += stats(b["data"], t)
print("RESULT " + json.dumps(rows))
"""


def run_side_worker(code: str, job: dict, cfg: dict, a: argparse.Namespace, threads: int) -> dict:
    """Run ``code`` in nnU-Net's interpreter with the job as JSON; its ``RESULT`` line, parsed."""
    env = dict(nnunet_env(Path(cfg["nnunet"]), 0), OMP_NUM_THREADS=str(threads))
    done = subprocess.run([a.nnunet_python, "-c", code, json.dumps(job)], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(next(x for x in done.stdout.splitlines() if x.startswith("RESULT ")).removeprefix("RESULT "))


def batch_stats(cfg: dict, a: argparse.Namespace) -> None:
    """Training batches of both pipelines side by side: what the model sees per sample."""
    job = {
        "plan": cfg["plan"],
        "train": cfg["train"],
        "dataset": DATASET,
        "batch_size": a.batch_size,
        "batches": a.batch_stats,
    }
    rows = run_side_worker(BATCH_STATS_WORKER, job, cfg, a, threads=1)
    table = Table(title=f"Training samples, {a.batch_stats} batches of {a.batch_size} per pipeline ({date.today()})")
    table.add_column("per sample")
    for system in rows:
        table.add_column(system)
    keys = ["any_fg", "fg1", "fg2", "mean", "std", "zero", "centroid_dy", "centroid_dx"]
    for key in keys:
        cells = []
        for system in rows:
            v = np.array([r[key] for r in rows[system] if key in r])
            q = np.percentile(v, [10, 50, 90])
            cells.append(f"{v.mean():.4f} (p10/50/90 {q[0]:.3f} / {q[1]:.3f} / {q[2]:.3f})")
        if key.startswith("centroid"):
            key = f"{key} (sd)"
            cells = [
                c + f" sd {np.std([r[key.split()[0]] for r in rows[s] if key.split()[0] in r]):.2f}"
                for c, s in zip(cells, rows)
            ]
        table.add_row(key, *cells)
    Console(width=200).print(table)


EQUIVALENCE_WORKER = r"""
# alseg's network, loss, optimiser loop and predictor against nnU-Net's, with the same weights
import json, sys
import numpy as np, torch
import lightning.pytorch as pl
from batchgenerators.utilities.file_and_folder_operations import load_json, join
from nnunetv2.paths import nnUNet_preprocessed
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch.utils.data import DataLoader, Dataset
from alseg.dataset.raw import read_dataset
from alseg.dataset.io import read_volume
from alseg.model.metrics import dice_per_class, mean_dice
from alseg.model.module import SegmentationModule
from alseg.model.case_prediction import predict_case
from alseg.model.trainer import TrainerSettings, make_trainer
from alseg.plans.models import load_plans

args = json.loads(sys.argv[1])
torch.manual_seed(0); np.random.seed(0)
folder = join(nnUNet_preprocessed, args["dataset"])
nplans = load_json(join(folder, "nnUNetPlans.json")); nplans["continue_training"] = False
nplans["configurations"]["2d"]["batch_size"] = args["batch_size"]
tr = nnUNetTrainer(nplans, "2d", 0, load_json(join(folder, "dataset.json")), torch.device("cpu"))
tr.initialize()
nn_net = tr.network
plans = load_plans(join(args["plan"], "plans.json"))
am = SegmentationModule(plans, "2d", dropout_train=0.0)
stages = ["input_block"] + [f"downsamples.{i}" for i in range(len(plans.configuration("2d").network.strides) - 2)] + ["bottleneck"]
mapping = {}
for s, block in enumerate(stages):
    for j in range(2):
        b = f"encoder.stages.{s}.0.convs.{j}"
        mapping[f"{b}.conv.weight"] = f"{block}.conv{j + 1}.conv.weight"
        mapping[f"{b}.norm.weight"] = f"{block}.norm{j + 1}.weight"
        mapping[f"{b}.norm.bias"] = f"{block}.norm{j + 1}.bias"
n_up = len(stages) - 1
for i in range(n_up):
    mapping[f"decoder.transpconvs.{i}.weight"] = f"upsamples.{i}.transp_conv.conv.weight"
    mapping[f"decoder.transpconvs.{i}.bias"] = f"upsamples.{i}.transp_conv.conv.bias"
    for j in range(2):
        b = f"decoder.stages.{i}.convs.{j}"
        mapping[f"{b}.conv.weight"] = f"upsamples.{i}.conv_block.conv{j + 1}.conv.weight"
        mapping[f"{b}.norm.weight"] = f"upsamples.{i}.conv_block.norm{j + 1}.weight"
        mapping[f"{b}.norm.bias"] = f"upsamples.{i}.conv_block.norm{j + 1}.bias"
mapping[f"decoder.seg_layers.{n_up - 1}.weight"] = "output_block.conv.conv.weight"
mapping[f"decoder.seg_layers.{n_up - 1}.bias"] = "output_block.conv.conv.bias"
for h in range(len(am.net.deep_supervision_heads)):
    mapping[f"decoder.seg_layers.{n_up - 2 - h}.weight"] = f"deep_supervision_heads.{h}.conv.conv.weight"
    mapping[f"decoder.seg_layers.{n_up - 2 - h}.bias"] = f"deep_supervision_heads.{h}.conv.conv.bias"


def copy_into_nnunet(alseg_net):
    # alseg's weights into nnU-Net's network; conv biases before instance norm and unbuilt heads are zero
    npar, apar = dict(nn_net.named_parameters()), dict(alseg_net.named_parameters())
    with torch.no_grad():
        for k, v in npar.items():
            v.copy_(apar[mapping[k]]) if k in mapping else v.zero_()


def relative(a, b):
    return ((a - b).norm() / a.norm().clamp(min=1e-12)).item()


out = {}
copy_into_nnunet(am.net)
loader, _ = tr.get_dataloaders()
batches = [next(loader) for _ in range(args["steps"])]
x, targets = batches[0]["data"], batches[0]["target"]
nn_net.train(); am.net.train()
on, oa = nn_net(x), am.net(x)
out["outputs, largest absolute difference"] = max((a - b).abs().max().item() for a, b in zip(on, oa))
ln, la = tr.loss(on, targets), am.loss(oa, targets[0])
out["loss nnU-Net / alseg - 1 (MONAI's Dice is 1 - dice)"] = f"{ln.item():.6f} / {la.item() - 1:.6f}"
ln.backward(); la.backward()
npar, apar = dict(nn_net.named_parameters()), dict(am.net.named_parameters())
out["gradients, largest relative difference"] = max(relative(npar[k].grad, apar[v].grad) for k, v in mapping.items())

# the same batches through alseg's Lightning Trainer and through nnU-Net's network, loss and SGD in a plain loop
n = args["steps"]
fresh = SegmentationModule(plans, "2d", dropout_train=0.0, epochs=1, iterations_per_epoch=n, batch_size=args["batch_size"])
copy_into_nnunet(fresh.net)
losses_a = []


class Fixed(Dataset):
    def __len__(self):
        return n

    def __getitem__(self, i):
        return {"image": batches[i]["data"], "label": batches[i]["target"][0].to(torch.uint8)}


class Record(pl.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        losses_a.append(float(outputs["loss"]) - 1.0)


make_trainer(TrainerSettings(devices=1, accelerator="cpu"), max_epochs=1, callbacks=[Record()], show_progress=False).fit(
    fresh, train_dataloaders=DataLoader(Fixed(), batch_size=None))
opt = torch.optim.SGD(nn_net.parameters(), 0.01, weight_decay=3e-5, momentum=0.99, nesterov=True)
losses_n = []
for i, b in enumerate(batches):
    for g in opt.param_groups:
        g["lr"] = 0.01 * (1 - i / n) ** 0.9
    opt.zero_grad(set_to_none=True)
    loss = tr.loss(nn_net(b["data"]), b["target"])
    loss.backward()
    torch.nn.utils.clip_grad_norm_(nn_net.parameters(), 12)
    opt.step()
    losses_n.append(float(loss))
out[f"{n} optimiser steps: largest loss difference"] = max(abs(a - b) for a, b in zip(losses_a, losses_n))
out[f"{n} optimiser steps: last loss nnU-Net / alseg"] = f"{losses_n[-1]:.4f} / {losses_a[-1]:.4f}"
apar = dict(fresh.net.named_parameters())
out[f"{n} optimiser steps: conv weights, largest relative difference"] = max(
    relative(npar[k], apar[v]) for k, v in mapping.items() if v.endswith("conv.weight"))

# nnU-Net's trained weights predicted by alseg's predictor, against nnU-Net's own predictions
if args.get("checkpoint"):
    ck = torch.load(args["checkpoint"], map_location="cpu", weights_only=False)
    nn_net.load_state_dict(ck["network_weights"])
    npar, apar = dict(nn_net.named_parameters()), dict(am.net.named_parameters())
    with torch.no_grad():
        for k, v in mapping.items():
            apar[v].copy_(npar[k])
    am.eval()
    info = read_dataset(args["data"])
    ours, theirs = [], []
    for cid in args["test"]:
        gt = np.asarray(read_volume(info.case(cid).label)[0])
        ours.append(mean_dice(dice_per_class(np.asarray(predict_case(am, info.case(cid)).labels), gt, 3)))
        pred = np.asarray(read_volume(join(args["pred_dir"], cid + ".nii.gz"))[0])
        theirs.append(mean_dice(dice_per_class(pred, gt, 3)))
    out["nnU-Net's trained weights: mean Dice, alseg predictor / nnU-Net predictor"] = f"{np.mean(ours):.4f} / {np.mean(theirs):.4f}"
    out["nnU-Net's trained weights: largest per-case Dice difference"] = float(np.max(np.abs(np.array(ours) - np.array(theirs))))

    # test-time mirroring: nnU-Net's default prediction (its predictor, the axes its checkpoint records)
    # against alseg's --tta, same weights; labels compared voxel by voxel in the original image space
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    tr.set_deep_supervision_enabled(False)
    nn_net.eval()
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                perform_everything_on_device=False, device=torch.device("cpu"),
                                verbose=False, allow_tqdm=False)
    predictor.manual_initialization(nn_net, tr.plans_manager, tr.configuration_manager, [nn_net.state_dict()],
                                    tr.dataset_json, "nnUNetTrainer", ck["inference_allowed_mirroring_axes"])
    predictor.predict_from_files([[f] for f in args["raw_images"]], args["tta_dir"], save_probabilities=False,
                                 overwrite=True, num_processes_preprocessing=1, num_processes_segmentation_export=1)
    ours, theirs, differ, total = [], [], 0, 0
    for cid in args["test"]:
        gt = np.asarray(read_volume(info.case(cid).label)[0])
        mine = np.asarray(predict_case(am, info.case(cid), tta=True).labels)
        pred = np.asarray(read_volume(join(args["tta_dir"], cid + ".nii.gz"))[0])
        ours.append(mean_dice(dice_per_class(mine, gt, 3)))
        theirs.append(mean_dice(dice_per_class(pred, gt, 3)))
        differ, total = differ + int((mine != pred).sum()), total + pred.size
    out["with mirroring (alseg --tta, nnU-Net's default): mean Dice, alseg / nnU-Net"] = f"{np.mean(ours):.4f} / {np.mean(theirs):.4f}"
    out["with mirroring: largest per-case Dice difference"] = float(np.max(np.abs(np.array(ours) - np.array(theirs))))
    out["with mirroring: voxels labelled differently"] = f"{differ} of {total} ({differ / total:.1e})"
print("RESULT " + json.dumps(out))
"""


def equivalence(cfg: dict, a: argparse.Namespace) -> None:
    """Same weights, same batches: alseg's network, loss, training loop and predictor next to nnU-Net's."""
    job = {
        "plan": cfg["plan"],
        "dataset": DATASET,
        "batch_size": a.batch_size,
        "steps": a.equivalence,
        "data": str(a.data),
        "test": cfg["test"],
        "checkpoint": None,
    }
    finished = sorted((a.work / "runs").glob("nnunet_*_s0/results/*/*/fold_0/checkpoint_final.pth"))
    if finished:  # nnU-Net's weights of a finished seed-0 run (the shortest), with its own predictions
        ckpt = min(finished, key=lambda p: int(p.parts[-6].split("_")[1]))
        done_nnunet = ckpt.parents[4]
        tta_dir = a.work / "equivalence_tta"
        shutil.rmtree(tta_dir, ignore_errors=True)
        job.update(
            checkpoint=str(ckpt),
            pred_dir=str(done_nnunet / "pred"),
            raw_images=nnunet_test_images(cfg),
            tta_dir=str(tta_dir),
        )
    rows = run_side_worker(EQUIVALENCE_WORKER, job, cfg, a, threads=a.threads)
    table = Table(title=f"alseg and nnU-Net v2 with the same weights and batches ({date.today()})")
    table.add_column("check")
    table.add_column("result")
    for key, value in rows.items():
        table.add_row(key, f"{value:.2e}" if isinstance(value, float) else str(value))
    Console(width=200).print(table)


# ----------------------------------------------------------------------------- setup
def setup(data: Path, work: Path, nnunet_python: str | None, workers: int) -> dict:
    """Plan + preprocess with alseg, the nnU-Net export + preprocessing, the fold's split (once)."""
    # lazy: only the setup needs these (the workers import alseg from the revision they train)
    from plans_vs_nnunet import to_nnunet_raw

    from alseg.model.train import make_split
    from alseg.plans.models import load_fingerprint, load_plans
    from alseg.plans.nnunet_export import write_nnunet_export

    done = work / "setup.json"
    if done.is_file():
        return json.loads(done.read_text())
    plan = work / "plan"
    alseg = [sys.executable, "-m", "alseg"]
    if not (plan / "plans.json").is_file():
        subprocess.run([*alseg, "plan", str(data), "-o", str(plan), "--workers", str(workers)], check=True)
    subprocess.run([*alseg, "preprocess", str(plan), "-c", CONFIG, "--workers", str(workers)], check=True)
    info = read_dataset(data)
    train_ids, test_ids = make_split([c.case_id for c in info.training], 0)
    out = {"plan": str(plan), "train": train_ids, "test": test_ids, "nnunet": None}
    if nnunet_python:
        nn = work / "nnunet"
        env = nnunet_env(nn, workers)
        raw = Path(env["nnUNet_raw"])
        ds = to_nnunet_raw(data, raw, DATASET_ID, "Parity")
        pre = write_nnunet_export(nn, load_plans(plan / "plans.json"), load_fingerprint(plan / "fingerprint.json"), ds)
        bin_dir = Path(nnunet_python).parent
        cmd = [str(bin_dir / "nnUNetv2_preprocess"), "-d", str(DATASET_ID), "-c", CONFIG, "-np", str(max(1, workers))]
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
        (pre / "splits_final.json").write_text(json.dumps([{"train": train_ids, "val": test_ids}], indent=1))
        out["nnunet"] = str(nn)
    done.write_text(json.dumps(out, indent=1))
    return out


def nnunet_test_images(cfg: dict) -> list[str]:
    """The fold's test images in nnU-Net's raw layout (nnU-Net names its outputs after these)."""
    raw = Path(cfg["nnunet"]) / "nnUNet_raw" / DATASET / "imagesTr"
    return [str(raw / f"{c}_0000.nii.gz") for c in cfg["test"]]


def nnunet_env(nn: Path, workers: int) -> dict[str, str]:
    return dict(
        os.environ,
        nnUNet_raw=str(nn / "nnUNet_raw"),
        nnUNet_preprocessed=str(nn / "nnUNet_preprocessed"),
        nnUNet_results=str(nn / "nnUNet_results"),
        nnUNet_n_proc_DA=str(workers),
        nnUNet_compile="f",
    )


# ----------------------------------------------------------------------------- runs
def alseg_worker(args: dict) -> None:
    """Train and predict with alseg (in a subprocess of the benchmark)."""
    # lazy: a worker process imports the training stack, the benchmark's driver does not
    import torch

    from alseg.model.train import train
    from alseg.predict import predict

    torch.set_num_threads(args["threads"])
    plan = Path(args["plan"])
    out = Path(args["out"])
    overrides = dict(args["overrides"])
    t0 = time.perf_counter()
    if overrides.pop("data", None) == "nnunet":
        last = train_on_nnunet_batches(args, plan, out, overrides)
    else:
        last = train(
            plan / "plans.json",
            CONFIG,
            plan / f"alsegPlans_{CONFIG}",
            out,
            fold=0,
            epochs=args["epochs"],
            iters_per_epoch=args["iters_per_epoch"],
            devices=1,
            seed=args["seed"],
            overrides={"batch_size": args["batch_size"], **overrides},
            val_every=args["epochs"],
            num_workers=args["workers"],
            progress=False,
        )
    t1 = time.perf_counter()
    predict(out, args["images"], args["pred_dir"], tta=False, devices="cpu", show_progress=False)
    result = {"train_seconds": t1 - t0, "predict_seconds": time.perf_counter() - t1}
    result["train_loss"] = float(last.get("train_loss", float("nan")))
    print("RESULT " + json.dumps(result))


def train_on_nnunet_batches(args: dict, plan: Path, out: Path, overrides: dict) -> dict:
    """alseg's module and Lightning loop fed by nnU-Net v2's own data loader and augmentation (the
    ablation that separates the data pipeline from the model, loss and optimiser). Runs in the
    nnU-Net interpreter, with nnU-Net's environment variables."""
    # lazy: nnunetv2 exists only in the side venv this worker runs in
    import lightning.pytorch as pl
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from torch.utils.data import DataLoader, Dataset

    from alseg.data.cache import CaseCache
    from alseg.data.datamodule import SegDataModule, whole_case_region
    from alseg.model.module import SegmentationModule
    from alseg.model.train import fit
    from alseg.plans.models import load_plans

    np.random.seed(args["seed"])
    folder = Path(nnUNet_preprocessed) / DATASET
    nplans = load_json(str(folder / "nnUNetPlans.json"))
    nplans["continue_training"] = False
    nplans["configurations"][CONFIG]["batch_size"] = args["batch_size"]
    trainer = nnUNetTrainer(nplans, CONFIG, 0, load_json(str(folder / "dataset.json")), torch.device("cpu"))
    trainer.initialize()
    loader, _ = trainer.get_dataloaders()

    class Batches(Dataset):
        def __len__(self) -> int:
            return args["iters_per_epoch"]

        def __getitem__(self, i: int) -> dict:
            b = next(loader)
            t = b["target"][0] if isinstance(b["target"], list) else b["target"]
            return {"image": b["data"], "label": t.to(torch.uint8)}

    class NnunetData(SegDataModule):
        def train_dataloader(self) -> DataLoader:
            return DataLoader(Batches(), batch_size=None, num_workers=0)

    pl.seed_everything(args["seed"], workers=False, verbose=False)
    settings = {**overrides, "batch_size": args["batch_size"], "epochs": args["epochs"]}
    module = SegmentationModule(
        load_plans(plan / "plans.json"), CONFIG, overrides={**settings, "iterations_per_epoch": args["iters_per_epoch"]}
    )
    cache = CaseCache(plan / f"alsegPlans_{CONFIG}")
    data = NnunetData(
        cache, module.config, [whole_case_region(cache, c) for c in args["train"]], val_cases=args["test"]
    )
    return fit(module, data, out, devices=1, val_every=args["epochs"], progress=False, seed=args["seed"])


def run_one(system: str, overrides: dict, iters: int, seed: int, cfg: dict, a: argparse.Namespace) -> dict:
    name = f"{system}_{iters}_s{seed}"
    out = a.work / "runs" / name
    result_file = out / "result.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    info = read_dataset(a.data)
    images = [str(info.case(c).images[0]) for c in cfg["test"]]
    job = {
        "epochs": iters // a.epoch_iterations,
        "iters_per_epoch": a.epoch_iterations,
        "batch_size": a.batch_size,
        "seed": seed,
        "threads": a.threads,
        "workers": a.workers,
        "images": images,
        "pred_dir": str(out / "pred"),
    }
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads))
    if overrides.get("data") == "nnunet":  # alseg's training on nnU-Net's batches: the side venv
        job.update(plan=cfg["plan"], out=str(out / "model"), overrides=overrides, train=cfg["train"], test=cfg["test"])
        env.update(nnunet_env(Path(cfg["nnunet"]), a.workers))
        cmd = [a.nnunet_python, __file__, "--alseg-worker", json.dumps(job)]
    elif system == "nnunet":  # nnU-Net names its outputs after <case>_0000 inputs: its raw layout's links
        job.update(dataset=DATASET, config=CONFIG, images=nnunet_test_images(cfg))
        env.update(nnunet_env(Path(cfg["nnunet"]), a.workers))
        env["nnUNet_results"] = str(out / "results")
        cmd = [a.nnunet_python, "-c", NNUNET_WORKER, json.dumps(job)]
    else:
        job.update(plan=cfg["plan"], out=str(out / "model"), overrides=overrides)
        cmd = [sys.executable, __file__, "--alseg-worker", json.dumps(job)]
    rev = overrides.get("rev")
    if rev is not None:  # alseg as it was at that revision: a detached worktree, imported instead
        src = a.work / f"rev-{rev}"
        if not src.is_dir():
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(src), rev], check=True)
        env["ALSEG_PARITY_SRC"] = str(src)
        job["overrides"] = {k: v for k, v in overrides.items() if k != "rev"}
    print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    (out / "log.txt").write_text(done.stdout + "\n--- stderr ---\n" + done.stderr)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-12:])
        raise SystemExit(f"{name} failed (exit {done.returncode}), log {out / 'log.txt'}:\n{tail}")
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line.removeprefix("RESULT "))
    result.update(
        system=system,
        iterations=iters,
        seed=seed,
        wall_seconds=wall,
        cpu_seconds=(after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
        cases=score(out / "pred", cfg["test"], a.data),
        date=date.today().isoformat(),
        overrides=overrides,
    )
    result_file.write_text(json.dumps(result, indent=1))
    return result


def score(pred_dir: Path, test_ids: list[str], data: Path) -> dict[str, dict[str, float]]:
    """Dice per case and class in the original image space (``alseg.model.metrics``)."""
    info = read_dataset(data)
    names = {int(k): v for k, v in info.labels.items() if int(k) != 0}
    out = {}
    for case_id in test_ids:
        pred, _ = read_volume(pred_dir / f"{case_id}.nii.gz")
        gt, _ = read_volume(info.case(case_id).label)
        per = dice_per_class(np.asarray(pred), np.asarray(gt), len(names) + 1)
        out[case_id] = {"mean": mean_dice(per), **{names[c]: v for c, v in per.items()}}
    return out


# ----------------------------------------------------------------------------- table
def summarise(results: list[dict], label_names: list[str]) -> Table:
    table = Table(title=f"Learning parity, {CONFIG}, fold 0 test cases, original space, no TTA ({date.today()})")
    for col in ("system", "iterations", "seeds", "mean Dice", *label_names, "paired diff vs nnU-Net", "wall / CPU s"):
        table.add_column(col)
    by = {}
    for r in results:
        by.setdefault((r["system"], r["iterations"]), {})[r["seed"]] = r

    def case_mean(r: dict, key: str) -> float:
        return float(np.mean([c[key] for c in r["cases"].values()]))

    def ms(values: list[float]) -> str:
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{np.mean(values):.3f} ± {sd:.3f}"

    for (system, iters), runs in sorted(by.items(), key=lambda kv: (kv[0][1], kv[0][0] != "nnunet", kv[0][0])):
        seeds = sorted(runs)
        cells = [ms([case_mean(runs[s], "mean") for s in seeds])]
        cells += [ms([case_mean(runs[s], n) for s in seeds]) for n in label_names]
        ref = by.get(("nnunet", iters), {})
        paired = [case_mean(runs[s], "mean") - case_mean(ref[s], "mean") for s in seeds if s in ref]
        diff = "" if system == "nnunet" or not paired else ms(paired) + f" (n={len(paired)})"
        wall = np.mean([runs[s]["wall_seconds"] for s in seeds])
        cpu = np.mean([runs[s]["cpu_seconds"] for s in seeds])
        table.add_row(system, str(iters), ",".join(map(str, seeds)), *cells, diff, f"{wall:.0f} / {cpu:.0f}")
    return table


def parse_variant(text: str) -> tuple[str, dict]:
    name, _, spec = text.partition("=")
    overrides = {}
    for kv in filter(None, spec.split(",")):
        key, _, value = kv.partition(":")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return name, overrides


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--alseg-worker":
        alseg_worker(json.loads(sys.argv[2]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "Task04_Hippocampus")
    ap.add_argument("--work", type=Path, default=Path("/tmp/alseg-parity"))
    ap.add_argument("--nnunet-python", default=None)
    ap.add_argument("--iterations", default="600,1200")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--epoch-iterations", type=int, default=50)
    ap.add_argument("--systems", default="alseg,nnunet")
    ap.add_argument("--variant", action="append", default=[])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--table-only", action="store_true", help="print the table of the finished runs")
    ap.add_argument(
        "--equivalence",
        type=int,
        default=0,
        metavar="STEPS",
        help="only check alseg against nnU-Net with the same weights and batches, STEPS optimiser steps",
    )
    ap.add_argument(
        "--batch-stats",
        type=int,
        default=0,
        metavar="N",
        help="only compare N training batches of both pipelines (needs --nnunet-python)",
    )
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    systems = {s: {} for s in a.systems.split(",") if s}
    systems.update(parse_variant(v) for v in a.variant)
    if "nnunet" in systems and not a.nnunet_python:
        systems.pop("nnunet")
        print("nnU-Net: no --nnunet-python given, alseg only")
    info = read_dataset(a.data)
    names = [v for k, v in sorted(info.labels.items()) if int(k) != 0]
    results = []
    if a.equivalence:
        equivalence(setup(a.data, a.work, a.nnunet_python, a.workers), a)
        return 0
    if a.batch_stats:
        batch_stats(setup(a.data, a.work, a.nnunet_python, a.workers), a)
        return 0
    if not a.table_only:
        cfg = setup(a.data, a.work, a.nnunet_python if "nnunet" in systems else None, a.workers)
        for seed in map(int, a.seeds.split(",")):
            for iters in map(int, a.iterations.split(",")):
                if iters % a.epoch_iterations:
                    raise SystemExit(f"--iterations {iters} is not a multiple of --epoch-iterations")
                for system, overrides in systems.items():
                    results.append(run_one(system, overrides, iters, seed, cfg, a))
    else:
        results = [json.loads(p.read_text()) for p in sorted((a.work / "runs").glob("*/result.json"))]
    Console(width=200).print(summarise(results, names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
