"""alseg's self-configuration next to nnU-Net v2's own, field by field.

    python benchmarks/plans_vs_nnunet.py [--datasets demo,ct,task04] [--workers 2]

For every dataset it runs alseg's fingerprint + planner and, when the ``nnunetv2`` package is
importable, nnU-Net v2's ``DatasetFingerprintExtractor`` + ``ExperimentPlanner`` on the same
files (converted to nnU-Net's raw layout with symlinks in a temporary folder), then prints a
table of the planned fields with ✓/✗ and the planning wall-time ratio alseg / nnU-Net measured
in the same run. With nnU-Net present it also preprocesses a few cases with both and reports the
largest difference of the arrays.

With ``--train`` (nnU-Net present) it also checks that nnU-Net trains from alseg's export: it
writes ``alseg plan --export-nnunet``'s ``nnUNet_preprocessed/DatasetXXX_Name/`` for the first
dataset, runs ``nnUNetv2_preprocess`` on it and one short epoch of nnU-Net's own
``nnUNetTrainer`` (a subclass with ``--train-iterations`` iterations, on the CPU), in a
subprocess of the same interpreter, and prints nnU-Net's losses and pseudo Dice.

Datasets: ``demo`` (``generate_dataset(tmp, seed=0)``, Hippocampus-like), ``ct`` (the CT-like
variant), ``task04`` (/work/shared/data/Task04_Hippocampus or ``--task04 PATH``, if present).

nnU-Net is not a dependency of alseg and this script installs nothing. To get it, in a
separate virtual environment (never alseg's own):

    python3 -m venv /tmp/nnunet-venv
    /tmp/nnunet-venv/bin/pip install torch==2.13.0
    printf 'torch==2.13.0+cpu\\ntorchvision==0.28.0\\n' > constraints.txt
    /tmp/nnunet-venv/bin/pip install nnunetv2 -c constraints.txt
    /tmp/nnunet-venv/bin/pip uninstall -y torchvision
    /tmp/nnunet-venv/bin/pip install -e /path/to/alseg   # or PYTHONPATH=/path/to/alseg
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rich.console import Console  # noqa: E402
from rich.markup import escape  # noqa: E402
from rich.table import Table  # noqa: E402

from alseg.dataset.io import read_volume, write_volume  # noqa: E402
from alseg.dataset.raw import load_case, read_dataset  # noqa: E402
from alseg.dataset.synthetic import generate_dataset  # noqa: E402
from alseg.plans.fingerprint import extract_fingerprint  # noqa: E402
from alseg.plans.models import Fingerprint, IntensityStats  # noqa: E402
from alseg.plans.nnunet_export import to_nnunet_plans, write_nnunet_export  # noqa: E402
from alseg.plans.planner import plan_experiment  # noqa: E402

TASK04 = Path("/work/shared/data/Task04_Hippocampus")
OK, BAD = "✓", "✗"


def nnunet_available() -> bool:
    try:
        import nnunetv2  # noqa: F401  lazy: optional, see the module docstring
    except ImportError:
        return False
    return True


def to_nnunet_raw(src: Path, raw_root: Path, dataset_id: int, name: str) -> str:
    """Write ``Dataset<ID>_<name>`` in nnU-Net's raw layout (symlinks to the original files)."""
    info = read_dataset(src)
    ds = f"Dataset{dataset_id:03d}_{name}"
    out = raw_root / ds
    (out / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out / "labelsTr").mkdir(parents=True, exist_ok=True)
    for case in info.training:
        if case.four_d:  # MSD multi-channel: one file per channel for nnU-Net
            arr, geom = read_volume(case.images[0])
            for c in range(arr.shape[0]):
                write_volume(arr[c], geom, out / "imagesTr" / f"{case.case_id}_{c:04d}.nii.gz")
        else:
            for c, img in enumerate(case.images):
                link = out / "imagesTr" / f"{case.case_id}_{c:04d}.nii.gz"
                link.unlink(missing_ok=True)
                link.symlink_to(img)
        link = out / "labelsTr" / f"{case.case_id}.nii.gz"
        link.unlink(missing_ok=True)
        link.symlink_to(case.label)
    meta = {
        "channel_names": {str(k): v for k, v in info.channel_names.items()},
        "labels": {v: k for k, v in sorted(info.labels.items())},
        "numTraining": len(info.training),
        "file_ending": ".nii.gz",
        "name": name,
    }
    (out / "dataset.json").write_text(json.dumps(meta, indent=2))
    return ds


def run_alseg(src: Path, workers: int):
    t0 = time.perf_counter()
    info = read_dataset(src)
    fp = extract_fingerprint(info, workers=workers, show_progress=False)
    t1 = time.perf_counter()
    plans = plan_experiment(fp)
    t2 = time.perf_counter()
    return fp, plans, t1 - t0, t2 - t1


def run_nnunet(ds: str, workers: int):
    # lazy: nnunetv2 is optional (installed in a separate venv); only the comparison needs it
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner

    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        t0 = time.perf_counter()
        extractor = DatasetFingerprintExtractor(ds, num_processes=workers, verbose=False)
        extractor.show_progress_bar = False
        fp = extractor.run(overwrite_existing=True)
        t1 = time.perf_counter()
        plans = ExperimentPlanner(ds).plan_experiment()
        t2 = time.perf_counter()
    return fp, plans, t1 - t0, t2 - t1


def _same(a, b, tol: float = 1e-4) -> bool:
    try:
        return bool(np.allclose(np.asarray(a, float), np.asarray(b, float), rtol=tol, atol=tol)) and np.shape(
            a
        ) == np.shape(b)
    except (TypeError, ValueError):
        return a == b


def compare(mine: dict, theirs: dict | None, fp_mine, fp_theirs: dict | None) -> list[tuple[str, str, str, str]]:
    """Rows (field, alseg, nnU-Net, mark) for the planned fields of both plans (nnU-Net format)."""
    rows = []

    def add(field: str, a, b, tol: float = 1e-4) -> None:
        mark = "" if b is None else (OK if _same(a, b, tol) else BAD)
        rows.append((field, json.dumps(a), "-" if b is None else json.dumps(b), mark))

    get = lambda d, *keys: None if d is None else _dig(d, keys)  # noqa: E731
    add("transpose_forward", mine["transpose_forward"], get(theirs, "transpose_forward"))
    st = mine["foreground_intensity_properties_per_channel"]["0"]
    for key in ("mean", "std", "percentile_00_5", "percentile_99_5"):
        props = None if fp_theirs is None else fp_theirs["foreground_intensity_properties_per_channel"]
        b = None if props is None else (props["0"] if "0" in props else props[0])[key]
        add(f"fingerprint ch0 {key}", round(st[key], 4), None if b is None else round(b, 4), 1e-5)
    b = None if fp_theirs is None else round(float(fp_theirs["median_relative_size_after_cropping"]), 4)
    add("median relative size after crop", round(fp_mine.median_relative_size_after_cropping, 4), b)
    names = sorted(set(mine["configurations"]) | set((theirs or {}).get("configurations", {})) - {"3d_cascade_fullres"})
    for name in names:
        c = mine["configurations"].get(name)
        t = get(theirs, "configurations", name)
        if c is None:
            rows.append(
                (f"{name}", "(not planned by alseg)", "planned" if t else "-", "" if name == "3d_lowres" else BAD)
            )
            continue
        a_kw, t_kw = c["architecture"]["arch_kwargs"], get(t, "architecture", "arch_kwargs")
        add(
            f"{name} spacing",
            [round(s, 5) for s in c["spacing"]],
            None if t is None else [round(s, 5) for s in t["spacing"]],
        )
        add(f"{name} median shape", c["median_image_size_in_voxels"], get(t, "median_image_size_in_voxels"), 0.51)
        add(f"{name} patch size", c["patch_size"], get(t, "patch_size"))
        add(f"{name} batch size", c["batch_size"], get(t, "batch_size"))
        add(f"{name} n_stages", a_kw["n_stages"], get(t_kw, "n_stages"))
        add(f"{name} features", a_kw["features_per_stage"], get(t_kw, "features_per_stage"))
        add(f"{name} strides", a_kw["strides"], get(t_kw, "strides"))
        add(f"{name} kernels", a_kw["kernel_sizes"], get(t_kw, "kernel_sizes"))
        add(f"{name} normalisation", c["normalization_schemes"], get(t, "normalization_schemes"))
        add(f"{name} use_mask_for_norm", c["use_mask_for_norm"], get(t, "use_mask_for_norm"))
        add(f"{name} batch_dice", c["batch_dice"], get(t, "batch_dice"))
    return rows


def _dig(d, keys):
    for k in keys:
        if d is None:
            return None
        d = d.get(k) if isinstance(d, dict) else None
    return d


def compare_preprocessing(src: Path, plans, nnunet_plans: dict, dataset_json: dict, n_cases: int = 3) -> list[str]:
    """Largest |alseg - nnU-Net| of the preprocessed image and label disagreement on a few cases."""
    # lazy: nnunetv2 is optional (installed in a separate venv); only the comparison needs it
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from alseg.data.pipeline import preprocess_case

    info = read_dataset(src)
    pm = PlansManager(nnunet_plans)
    pre = DefaultPreprocessor(verbose=False)
    # prefer cases that need resampling (spacing differs from the target)
    target = np.asarray(plans.configurations.get("3d_fullres", plans.configurations["2d"]).spacing)
    cases = sorted(
        info.training, key=lambda c: read_volume(c.images[0])[1].spacing == tuple(target[plans.transpose_backward])
    )
    out = []
    for config in plans.configurations:
        worst_img, worst_seg, n_vox = 0.0, 0, 0
        for case in cases[:n_cases]:
            image, label, geom = load_case(case, info.n_channels)
            data, seg, _ = preprocess_case(image, label, geom, plans, config)
            with contextlib.redirect_stdout(io.StringIO()):
                nd, ns, _ = pre.run_case(
                    [str(p) for p in case.images], str(case.label), pm, pm.get_configuration(config), dataset_json
                )
            if nd.shape != data.shape:
                out.append(f"{config}: shape {data.shape} vs nnU-Net {nd.shape} ({case.case_id})")
                break
            worst_img = max(worst_img, float(np.abs(nd - data).max()))
            ns = np.where(ns < 0, 0, ns)
            worst_seg += int((ns != seg).sum())
            n_vox += seg.size
        else:
            out.append(
                f"{config}: max |image diff| {worst_img:.2e}, label voxels differing {worst_seg}/{n_vox} ({n_cases} cases)"
            )
    return out


# Planner-only cases: fingerprints of large and anisotropic datasets that the demo data does not
# reach (the patch-shrinking loop, 3d_lowres / batch_dice, anisotropic kernels, 2D images).
SYNTHETIC_FINGERPRINTS = {
    "large isotropic MRI": dict(spacing=(1.0, 1.0, 1.0), shape=(300, 300, 300), n=50, channel="MRI"),
    "abdominal CT": dict(spacing=(5.0, 0.7, 0.7), shape=(90, 512, 512), n=100, channel="CT"),
    "liver-like CT": dict(spacing=(1.0, 0.77, 0.77), shape=(430, 512, 512), n=130, channel="CT"),
    "prostate-like MRI": dict(spacing=(3.6, 0.62, 0.62), shape=(20, 320, 320), n=32, channel="T2"),
    "2D images": dict(spacing=(999.0, 0.5, 0.5), shape=(1, 1024, 768), n=300, channel="RGB"),
}


def synthetic_fingerprint(spacing, shape, n, channel):

    rng = np.random.default_rng(0)
    jitter = lambda v, k: [
        float(v[a]) if v[a] == 999.0 else float(v[a]) * (1 + 0.1 * rng.uniform(-1, 1)) for a in range(k)
    ]  # noqa: E731
    spacings = [jitter(spacing, 3) for _ in range(n)]
    shapes = [
        [max(1, int(round(s * (1 + 0.15 * rng.uniform(-1, 1))))) if s > 1 else 1 for s in shape] for _ in range(n)
    ]
    stats = IntensityStats(
        mean=50.0, median=45.0, std=100.0, min=-1000.0, max=2000.0, percentile_00_5=-900.0, percentile_99_5=1500.0
    )
    return Fingerprint(
        dataset_name="synthetic",
        dataset_root="/nowhere",
        channel_names={0: channel},
        labels={0: "background", 1: "a", 2: "b"},
        case_ids=[f"c{i}" for i in range(n)],
        spacings=spacings,
        shapes_after_crop=shapes,
        median_relative_size_after_cropping=0.9,
        foreground_intensity_properties_per_channel={0: stats},
        voxels_per_class={0: 10**9, 1: 10**6, 2: 10**5},
    )


def nnunet_plan_from_fingerprint(fp, raw_root: Path, pre_root: Path, dataset_id: int):
    """nnU-Net's ExperimentPlanner on a given fingerprint (two dummy image files satisfy its reader checks)."""
    # lazy: nnunetv2 is optional (installed in a separate venv); only the comparison needs it
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner

    from alseg.dataset.io import Geometry

    ds = f"Dataset{dataset_id:03d}_Synthetic"
    geom = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    for c in ("c0", "c1"):
        write_volume(np.zeros((4, 4, 4), np.float32), geom, raw_root / ds / "imagesTr" / f"{c}_0000.nii.gz")
        write_volume(np.zeros((4, 4, 4), np.uint8), geom, raw_root / ds / "labelsTr" / f"{c}.nii.gz")
    meta = {
        "channel_names": {str(k): v for k, v in fp.channel_names.items()},
        "labels": {v: k for k, v in fp.labels.items()},
        "numTraining": len(fp.case_ids),
        "file_ending": ".nii.gz",
    }
    (raw_root / ds / "dataset.json").write_text(json.dumps(meta))
    (pre_root / ds).mkdir(parents=True, exist_ok=True)
    nn_fp = {
        "spacings": fp.spacings,
        "shapes_after_crop": fp.shapes_after_crop,
        "median_relative_size_after_cropping": fp.median_relative_size_after_cropping,
        "foreground_intensity_properties_per_channel": {
            str(k): v.model_dump() for k, v in fp.foreground_intensity_properties_per_channel.items()
        },
    }
    (pre_root / ds / "dataset_fingerprint.json").write_text(json.dumps(nn_fp))
    with contextlib.redirect_stdout(io.StringIO()):
        t0 = time.perf_counter()
        plans = ExperimentPlanner(ds).plan_experiment()
    return plans, time.perf_counter() - t0


def print_table(title: str, rows, timing: str) -> None:

    table = Table(title=title, caption=timing)
    for col in ("field", "alseg", "nnU-Net v2", ""):
        table.add_column(col, overflow="fold")

    for r in rows:
        table.add_row(*[escape(x) for x in r])
    Console(width=160).print(table)


NNUNET_SMOKE_TRAINING = """
import json, sys, torch
from batchgenerators.utilities.file_and_folder_operations import load_json, join
from nnunetv2.paths import nnUNet_preprocessed
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

dataset, config, iterations = sys.argv[1], sys.argv[2], int(sys.argv[3])


class nnUNetTrainerAlsegSmoke(nnUNetTrainer):
    # nnU-Net's trainer, one epoch of a few iterations: does it train from alseg's export?
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cpu")):
        # explicit arguments: nnU-Net records them from locals() for its checkpoints
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 1
        self.num_iterations_per_epoch = iterations
        self.num_val_iterations_per_epoch = 2


folder = join(nnUNet_preprocessed, dataset)
plans = load_json(join(folder, "nnUNetPlans.json"))
plans["continue_training"] = False  # what nnunetv2.run.run_training adds before building a trainer
trainer = nnUNetTrainerAlsegSmoke(plans, config, 0, load_json(join(folder, "dataset.json")), torch.device("cpu"))
trainer.run_training()
log = getattr(trainer.logger, "local_logger", trainer.logger).my_fantastic_logging  # 2.8.1: MetaLogger
print("RESULT " + json.dumps({
    "train_loss": float(log["train_losses"][-1]), "val_loss": float(log["val_losses"][-1]),
    "pseudo_dice": [float(d) for d in log["dice_per_class_or_region"][-1]],
    "epoch_seconds": float(log["epoch_end_timestamps"][-1] - log["epoch_start_timestamps"][-1]),
}))
"""


def train_nnunet_on_export(src: Path, ds: str, tmp: Path, workers: int, config: str, iterations: int) -> int:
    """alseg's export → ``nnUNetv2_preprocess`` → one short nnU-Net epoch; prints what nnU-Net reports."""
    fp, plans, _, _ = run_alseg(src, workers)
    export_root = tmp / "alseg_export"
    folder = write_nnunet_export(export_root, plans, fp, ds)
    env = dict(
        os.environ,
        nnUNet_raw=str(tmp / "nnUNet_raw"),
        nnUNet_preprocessed=str(export_root / "nnUNet_preprocessed"),
        nnUNet_results=str(tmp / "alseg_export_results"),
        nnUNet_n_proc_DA="0",
        nnUNet_compile="f",
    )
    bin_dir = Path(sys.executable).parent
    dataset_id = ds.removeprefix("Dataset").split("_")[0]
    steps = [
        [str(bin_dir / "nnUNetv2_preprocess"), "-d", dataset_id, "-c", config, "-np", str(workers)],
        [sys.executable, "-c", NNUNET_SMOKE_TRAINING, ds, config, str(iterations)],
    ]
    print(f"nnU-Net v2 on alseg's export {folder} ({time.strftime('%Y-%m-%d')}):")
    for cmd in steps:
        t0 = time.perf_counter()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        name = Path(cmd[0]).name if cmd[0] != sys.executable else f"nnUNetTrainer, 1 epoch of {iterations} iterations"
        if done.returncode != 0:
            print(f"  {name}: FAILED (exit {done.returncode})\n" + "\n".join(done.stderr.splitlines()[-15:]))
            return 1
        print(f"  {name}: ok in {time.perf_counter() - t0:.0f} s")
    result = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
    numbers = json.loads(result.removeprefix("RESULT "))
    dice = ", ".join(f"{d:.3f}" for d in numbers["pseudo_dice"])
    print(
        f"  nnU-Net's log: train loss {numbers['train_loss']:.3f}, val loss {numbers['val_loss']:.3f}, "
        f"pseudo Dice per class [{dice}], epoch {numbers['epoch_seconds']:.0f} s"
    )
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", default="demo,ct,task04")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--task04", type=Path, default=TASK04)
    ap.add_argument("--no-nnunet", action="store_true", help="print alseg's plans only")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (converted data, nnU-Net's files)")
    ap.add_argument(
        "--train", action="store_true", help="let nnU-Net preprocess and train one short epoch on the export"
    )
    ap.add_argument("--train-config", default="2d", help="configuration nnU-Net trains with --train")
    ap.add_argument("--train-iterations", type=int, default=10, help="iterations of the --train epoch")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="alseg-vs-nnunet-"))
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ[var] = str(tmp / var)  # before nnunetv2 is imported: nnunetv2.paths reads them once
        (tmp / var).mkdir(parents=True, exist_ok=True)
    use_nnunet = nnunet_available() and not args.no_nnunet
    if not use_nnunet:
        print("nnunetv2 is not importable: showing alseg's plans only. To compare, install it in a separate venv:")
        print(__doc__.split("separate virtual environment (never alseg's own):")[1])

    sources: dict[str, Path] = {}
    for name in args.datasets.split(","):
        if name == "demo":
            sources["demo"] = generate_dataset(tmp / "demo", seed=0)
        elif name == "ct":
            sources["ct"] = generate_dataset(tmp / "ct", seed=0, ct=True)
        elif name == "task04":
            if args.task04.is_dir():
                sources["task04"] = args.task04
            else:
                print(f"skipping task04: {args.task04} not found")

    n_bad = 0
    trained: list[tuple[Path, str]] = []
    for i, (name, src) in enumerate(sources.items(), start=1):
        fp, plans, t_fp, t_plan = run_alseg(src, args.workers)
        mine = to_nnunet_plans(plans, fp)
        theirs = fp_theirs = None
        timing = f"alseg: fingerprint {t_fp:.1f} s + plan {t_plan * 1e3:.0f} ms"
        notes: list[str] = []
        if use_nnunet:
            ds = to_nnunet_raw(src, tmp / "nnUNet_raw", i, name)
            fp_theirs, theirs, n_fp, n_plan = run_nnunet(ds, args.workers)
            timing += (
                f" | nnU-Net v2: fingerprint {n_fp:.1f} s + plan {n_plan * 1e3:.0f} ms"
                f" | ratio alseg/nnU-Net: fingerprint {t_fp / n_fp:.2f}, plan {t_plan / n_plan:.3f}, total {(t_fp + t_plan) / (n_fp + n_plan):.2f}"
            )
            dataset_json = json.loads((tmp / "nnUNet_raw" / ds / "dataset.json").read_text())
            notes = compare_preprocessing(src, plans, theirs, dataset_json)
            trained.append((src, ds))
        rows = compare(mine, theirs, fp, fp_theirs)
        n_bad += sum(r[3] == BAD for r in rows)
        print_table(f"{name}: {src} ({len(fp.case_ids)} cases, {time.strftime('%Y-%m-%d')})", rows, timing)
        for note in notes:
            print(f"  preprocessing {note}")
    for j, (label, spec) in enumerate(SYNTHETIC_FINGERPRINTS.items(), start=100):
        fp = synthetic_fingerprint(**spec)
        t0 = time.perf_counter()
        plans = plan_experiment(fp)
        t_plan = time.perf_counter() - t0
        theirs, n_plan = (None, None)
        if use_nnunet:
            theirs, n_plan = nnunet_plan_from_fingerprint(fp, tmp / "nnUNet_raw", tmp / "nnUNet_preprocessed", j)
        rows = [r for r in compare(to_nnunet_plans(plans, fp), theirs, fp, None) if not r[0].startswith("fingerprint")]
        n_bad += sum(r[3] == BAD for r in rows)
        timing = f"alseg plan {t_plan * 1e3:.0f} ms" + (
            "" if n_plan is None else f" | nnU-Net v2 plan {n_plan * 1e3:.0f} ms | ratio {t_plan / n_plan:.3f}"
        )
        print_table(f"planner only, synthetic fingerprint: {label} {spec}", rows, timing)
    if args.train and trained:
        n_bad += train_nnunet_on_export(*trained[0], tmp, args.workers, args.train_config, args.train_iterations)
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{n_bad} field(s) differ" if use_nnunet else "(no nnU-Net comparison)")
    return 1 if n_bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
