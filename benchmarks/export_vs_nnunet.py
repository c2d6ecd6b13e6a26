"""Does nnU-Net v2 accept what ``alseg export-nnunet`` writes? Its own checks, on real exports.

    python benchmarks/export_vs_nnunet.py --nnunet-python /tmp/nnunet-venv/bin/python [--datasets demo,task04]

Per dataset: a short simulated active-learning run (2D, random strategy, the oracle reveals
the requested slices from the ground truth), ``export_nnunet`` of its annotations, then, in
nnU-Net's own virtual environment (``--nnunet-python``; nnU-Net is never an alseg dependency):
``verify_dataset_integrity`` and ``nnUNetv2_plan_and_preprocess -c 3d_fullres`` on the export,
and a read-back of nnU-Net's preprocessed segmentations. Prints one table: cases exported,
the share of annotated voxels in the export, whether each nnU-Net step passed, whether nnU-Net
recognised the ignore label, and the share of ignore voxels in its preprocessed arrays (should
be close to the export's, differing only by nnU-Net's own crop and resampling).

Datasets: ``demo`` (``generate_dataset``, 12 cases), ``task04``
(/work/shared/data/Task04_Hippocampus or ``--task04 PATH``; 260 cases).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from alseg.active.export import export_nnunet  # noqa: E402
from alseg.active.loop import LoopDriver  # noqa: E402
from alseg.active.rundir import RunDir  # noqa: E402
from alseg.active.settings import LoopSettings  # noqa: E402
from alseg.dataset.io import read_volume  # noqa: E402
from alseg.dataset.raw import read_dataset  # noqa: E402
from alseg.dataset.synthetic import generate_dataset  # noqa: E402
from alseg.model.case_prediction import predict_case  # noqa: E402
from alseg.model.metrics import dice_per_class, mean_dice  # noqa: E402
from alseg.trained import load_model  # noqa: E402

TASK04 = Path("/work/shared/data/Task04_Hippocampus")
OK, BAD = "✓", "✗"

# Runs in nnU-Net's interpreter: its integrity check, its planning + preprocessing, then the
# share of ignore voxels in what it preprocessed. Prints one JSON line.
NNUNET_SIDE = r"""
import json, os, sys, time, subprocess
import numpy as np
raw, dataset_id = sys.argv[1], int(sys.argv[2])
import importlib.metadata
out = {"nnunetv2": importlib.metadata.version("nnunetv2")}
from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
t0 = time.time()
try:
    verify_dataset_integrity(raw, 1)
    out["verify"] = "ok"
except Exception as e:
    out["verify"] = f"{type(e).__name__}: {str(e)[:200]}"
out["verify_s"] = round(time.time() - t0, 1)
t0 = time.time()
exe = os.path.join(os.path.dirname(sys.executable), "nnUNetv2_plan_and_preprocess")
res = subprocess.run([exe, "-d", str(dataset_id), "-c", "3d_fullres", "-np", "1"], capture_output=True, text=True)
out["plan_preprocess"] = "ok" if res.returncode == 0 else ("failed: " + res.stderr.strip().splitlines()[-1][:200] if res.stderr.strip() else "failed")
out["plan_preprocess_s"] = round(time.time() - t0, 1)
if res.returncode == 0:
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    name = maybe_convert_to_dataset_name(dataset_id)
    pre = os.path.join(os.environ["nnUNet_preprocessed"], name)
    plans = PlansManager(os.path.join(pre, "nnUNetPlans.json"))
    ds_json = json.load(open(os.path.join(pre, "dataset.json")))
    lm = plans.get_label_manager(ds_json)
    out["has_ignore_label"] = bool(lm.has_ignore_label)
    out["ignore_label"] = lm.ignore_label
    cm = plans.get_configuration("3d_fullres")
    out["patch_size"] = list(cm.patch_size)
    folder = os.path.join(pre, cm.data_identifier)
    ds = infer_dataset_class(folder)(folder)
    n_ignore = n_inside = 0
    for key in ds.identifiers:
        seg = np.asarray(ds.load_case(key)[1])
        inside = seg >= 0  # nnU-Net marks the area outside its crop mask with -1
        n_inside += int(inside.sum())
        n_ignore += int((seg == lm.ignore_label).sum())
    out["ignore_share_preprocessed"] = n_ignore / max(n_inside, 1)
print(json.dumps(out))
"""


def simulated_run(dataset: Path, work: Path, initial: int, budget: int, epochs: int, iters: int) -> Path:
    settings = LoopSettings(
        strategy="random", rounds=1, budget=budget, initial=initial, epochs=epochs, iters_per_epoch=iters, batch_size=8
    )
    run = work / "run"
    LoopDriver(dataset, run, settings, resume=True, workers=0, show_progress=False).run_all()
    return run


def predicted_test_dice(run_dir: Path) -> tuple[float, float, float]:
    """(loop's recorded test Dice, alseg predict's Dice in the files' own grid, seconds per case)."""
    run = RunDir(run_dir)
    loaded = load_model(run_dir)
    plans = loaded.module.plans
    info = read_dataset(plans.dataset_root)
    test = json.loads(run.split_path.read_text())["test"]
    t0 = time.perf_counter()
    scores = []
    for case_id in test:
        pred = predict_case(loaded.module, info.case(case_id))
        truth, _ = read_volume(info.case(case_id).label)
        scores.append(mean_dice(dice_per_class(pred.labels, truth.astype(np.int64), plans.n_classes)))
    recorded = float(run.read_metrics()[-1]["dice_mean"])
    return recorded, float(np.mean(scores)), (time.perf_counter() - t0) / len(test)


def check_with_nnunet(python: str, raw_root: Path, dataset_id: int, folder: Path, work: Path) -> dict:
    env = {
        **os.environ,
        "nnUNet_raw": str(raw_root),
        "nnUNet_preprocessed": str(work / "nnUNet_preprocessed"),
        "nnUNet_results": str(work / "nnUNet_results"),
        "OMP_NUM_THREADS": "1",
    }
    env.pop("PYTHONPATH", None)
    res = subprocess.run(
        [python, "-c", NNUNET_SIDE, str(folder), str(dataset_id)], capture_output=True, text=True, env=env
    )
    lines = [ln for ln in res.stdout.strip().splitlines() if ln.startswith("{")]
    if res.returncode != 0 or not lines:
        return {"verify": f"side script failed: {(res.stderr.strip().splitlines() or ['?'])[-1][:200]}"}
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nnunet-python", default="/tmp/nnunet-venv/bin/python")
    parser.add_argument("--datasets", default="demo,task04")
    parser.add_argument("--task04", type=Path, default=TASK04)
    args = parser.parse_args()
    console = Console(width=150)
    table = Table(title=f"alseg export-nnunet → nnU-Net v2, alseg predict ({time.strftime('%Y-%m-%d')})")
    for col in (
        "dataset",
        "cases",
        "annotated",
        "verify_dataset_integrity",
        "plan_and_preprocess",
        "ignore label",
        "ignore share export / nnU-Net",
        "test Dice loop / predict",
    ):
        table.add_column(col)
    for i, name in enumerate(d.strip() for d in args.datasets.split(",") if d.strip()):
        with tempfile.TemporaryDirectory(prefix=f"export_{name}_") as tmp:
            work = Path(tmp)
            if name == "demo":
                dataset = generate_dataset(work / "data", cases=12, test_cases=0)
                initial, budget, epochs, iters = 20, 10, 2, 20
            elif name == "task04":
                if not (args.task04 / "dataset.json").is_file():
                    console.print(f"skipping task04: {args.task04} not found")
                    continue
                dataset, initial, budget, epochs, iters = args.task04, 200, 100, 3, 40
            else:
                raise SystemExit(f"unknown dataset {name}")
            t0 = time.perf_counter()
            run = simulated_run(dataset, work, initial, budget, epochs, iters)
            t_run = time.perf_counter() - t0
            recorded, predicted, per_case = predicted_test_dice(run)
            console.print(
                f"{name}: test Dice recorded by the loop (plan grid) {recorded:.4f}, "
                f"alseg predict (files' grid) {predicted:.4f} ({per_case:.2f} s/case)"
            )
            dataset_id = 900 + i
            summary = export_nnunet(run, work / "raw", dataset_id=dataset_id, name=f"alseg{name}", show_progress=False)
            share = 1 - summary.annotated_voxels / summary.total_voxels
            result = check_with_nnunet(args.nnunet_python, work / "raw", dataset_id, summary.folder, work)
            console.print(f"{name}: run {t_run:.0f} s; nnU-Net: {json.dumps(result)}")
            pre = result.get("ignore_share_preprocessed")
            table.add_row(
                name,
                str(len(summary.cases)),
                f"{summary.annotated_voxels:,} vox ({1 - share:.1%})",
                OK if result.get("verify") == "ok" else f"{BAD} {result.get('verify')}",
                OK
                if result.get("plan_and_preprocess", result.get("plan_preprocess")) == "ok"
                else f"{BAD} {result.get('plan_preprocess')}",
                f"{OK} {result.get('ignore_label')}" if result.get("has_ignore_label") else BAD,
                f"{share:.1%} / {pre:.1%}" if pre is not None else f"{share:.1%} / -",
                f"{recorded:.4f} / {predicted:.4f}",
            )
    console.print(table)


if __name__ == "__main__":
    main()
