"""The active loop end to end on tiny synthetic data: records, resume after SIGKILL, files oracle."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from alseg.active.loop import LoopDriver
from alseg.active.oracles.patches import manifest_items
from alseg.active.settings import LoopSettings
from alseg.dataset.io import read_volume, write_volume
from alseg.errors import AlsegError

TINY = dict(rounds=2, budget=4, initial=8, epochs=1, iters_per_epoch=2, batch_size=4, mc_passes=2)


def LoopOptions(**values) -> LoopSettings:  # noqa: N802 (reads like the settings it builds)
    return LoopSettings(**values)


def _driver(target: Path, run: Path, settings: LoopSettings, **kw) -> LoopDriver:
    return LoopDriver(target, run, settings, workers=0, show_progress=False, **kw)


@pytest.fixture(scope="module")
def plan_dir(make_synthetic_plan) -> Path:
    return make_synthetic_plan(cases=5)[1]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from alseg.cli import main; main()", *args]


def _loop_args(plan_dir: Path, run: Path, *extra: str) -> list[str]:
    return _cli(
        "loop",
        str(plan_dir),
        "-o",
        str(run),
        "--strategy",
        "random",
        "--rounds",
        "2",
        "--budget",
        "4",
        "--initial",
        "8",
        "--epochs",
        "1",
        "--iters-per-epoch",
        "2",
        "--batch-size",
        "4",
        "--workers",
        "0",
        "--seed",
        "3",
        *extra,
    )


def _rows(run: Path) -> list[dict]:
    with (run / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def test_loop_records_every_round(plan_dir: Path, tmp_path: Path):
    run = tmp_path / "run"
    state = _driver(plan_dir, run, LoopOptions(**TINY, seed=1)).run_all()
    assert state.finished and state.round == 2
    assert len(state.labelled) == 8 + 2 * 4 and len(set(state.labelled)) == 16
    rows = _rows(run)
    assert [int(r["round"]) for r in rows] == [0, 1, 2]
    assert [int(r["n_labelled_items"]) for r in rows] == [8, 12, 16]
    for r in rows:
        assert 0.0 <= float(r["dice_mean"]) <= 1.0
        assert {"dice_Anterior", "dice_Posterior", "seconds_train", "seconds_select", "n_labelled_voxels"} <= set(r)
    # voxels: each 2D item is one slice of the preprocessed case
    assert int(rows[1]["n_labelled_voxels"]) > int(rows[0]["n_labelled_voxels"])
    for k in (1, 2):
        rec = json.loads((run / "rounds" / f"round_{k:03d}.json").read_text())
        assert rec["round"] == k and len(rec["selected"]) == 4
        assert not set(rec["selected"]) & set(json.loads((run / "rounds" / "round_000.json").read_text())["selected"])
        assert (run / "checkpoints" / f"round_{k:03d}.ckpt").is_file()
    # labels on disk: annotated voxels exist exactly for labelled items
    config = json.loads((run / "config.json").read_text())
    assert config["strategy"] == "random" and config["labels"] == {"1": "Anterior", "2": "Posterior"}
    # a finished run refuses to start again without --resume
    with pytest.raises(AlsegError, match="already holds a run"):
        _driver(plan_dir, run, LoopOptions(**TINY, seed=1))


def test_bad_sizes_and_strategy_are_one_line_errors(plan_dir: Path, tmp_path: Path):
    with pytest.raises(AlsegError, match="--initial 100000 is larger than the pool"):
        _driver(plan_dir, tmp_path / "a", LoopOptions(**{**TINY, "initial": 100000}))
    with pytest.raises(AlsegError, match="--budget 100000 is larger"):
        _driver(plan_dir, tmp_path / "b", LoopOptions(**{**TINY, "budget": 100000}))
    with pytest.raises(AlsegError, match="unknown strategy 'magic' — choose one of"):
        _driver(plan_dir, tmp_path / "c", LoopOptions(**{**TINY, "strategy": "magic"}))
    with pytest.raises(AlsegError, match="only runs with --oracle simulated"):
        _driver(plan_dir, tmp_path / "d", LoopOptions(**{**TINY, "strategy": "random-fg", "oracle": "files"}))


def test_corrupt_state_is_a_one_line_error(plan_dir: Path, tmp_path: Path):
    run = tmp_path / "run"
    _driver(plan_dir, run, LoopOptions(**{**TINY, "rounds": 0, "seed": 3})).run_all()  # as _loop_args
    (run / "state.json").write_text("{not json")
    proc = subprocess.run(_loop_args(plan_dir, run, "--resume"), capture_output=True, text=True)
    assert proc.returncode == 2
    assert "state.json: is corrupt" in proc.stderr and "Traceback" not in proc.stderr


def test_sigkill_mid_round_then_resume_matches_uninterrupted(plan_dir: Path, tmp_path: Path):
    reference = tmp_path / "reference"
    subprocess.run(_loop_args(plan_dir, reference), check=True, capture_output=True)

    run = tmp_path / "killed"
    proc = subprocess.Popen(_loop_args(plan_dir, run), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    # round 1's batch is annotated and its training has started: kill it there
    while time.time() < deadline and not (run / "logs" / "round_001").exists():
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = json.loads((run / "state.json").read_text())
    assert state["round"] == 0 and not state["finished"]  # round 1 was lost, round 0 was not
    assert len(state["labelled"]) == 12  # round 1's batch was already annotated: not lost either

    resumed = subprocess.run(_loop_args(plan_dir, run, "--resume"), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "GPU available" not in resumed.stderr + resumed.stdout  # Lightning's banners stay quiet
    a, b = json.loads((reference / "state.json").read_text()), json.loads((run / "state.json").read_text())
    assert a["labelled"] == b["labelled"] and b["finished"]
    ra, rb = _rows(reference), _rows(run)
    assert [r["dice_mean"] for r in ra] == [r["dice_mean"] for r in rb]
    assert [r["n_labelled_voxels"] for r in ra] == [r["n_labelled_voxels"] for r in rb]


def _annotate_from_truth(folder: Path, plan_dir: Path, skip: int | None = None, wrong_shape: int | None = None) -> None:
    """The 'person': writes each item's mask, taken from the ground truth, on the exported grid."""
    from alseg.data.cache import CaseCache
    from alseg.plans.models import load_plans

    cache = CaseCache.of(plan_dir, load_plans(plan_dir / "plans.json"), "2d")
    for n, item in enumerate(manifest_items(folder)):
        if n == skip:
            continue
        image, geom = read_volume(folder / item["image"])
        case, _, z, y0, x0 = item["id"].split(":")
        seg = np.asarray(cache.label(case))
        z, y0, x0 = int(z), int(y0), int(x0)
        patch = seg[z : z + 1, y0 : y0 + image.shape[1], x0 : x0 + image.shape[2]]  # transpose is identity here
        mask = patch.astype(np.uint8)
        if n == wrong_shape:
            mask = mask[:, :-1]
        write_volume(mask, geom, folder / item["mask"])


def test_patches_oracle_round_trip(plan_dir: Path, tmp_path: Path):
    run = tmp_path / "run"
    args = _loop_args(plan_dir, run, "--oracle", "patches", "--rounds", "1")
    first = subprocess.run(args, capture_output=True, text=True)
    assert first.returncode == 3, first.stderr  # waiting for annotations: its own exit code
    folder = run / "annotate" / "round_000"
    items = manifest_items(folder)
    assert len(items) == 8 and all((folder / it["image"]).is_file() for it in items)
    assert f"Annotate the items in {folder} (see" in first.stdout
    for it in items:  # the person's tools (another user, a viewer run as another account) can read them
        assert (folder / it["image"]).stat().st_mode & 0o044 == 0o044

    # one mask has the wrong shape, one is missing: the rest are kept, a one-line error names the bad one
    _annotate_from_truth(folder, plan_dir, skip=0, wrong_shape=1)
    second = subprocess.run(args + ["--resume"], capture_output=True, text=True)
    assert second.returncode == 2
    bad = [line for line in second.stderr.splitlines() if line.startswith("error:")]
    assert len(bad) == 1 and items[1]["mask"].split("/")[-1] in bad[0] and "differs from its image" in bad[0]
    assert "of 8 selected item(s), 6 accepted, 1 still missing, 1 rejected in 1 file(s)" in " ".join(
        second.stdout.split()
    )  # one unit: items (the patches layout has one file per item)

    _annotate_from_truth(folder, plan_dir)  # the person fixes both
    third = subprocess.run(args + ["--resume"], capture_output=True, text=True)
    assert third.returncode == 3, third.stderr
    assert (run / "annotate" / "round_001" / "manifest.json").is_file()  # now waiting for round 1
    _annotate_from_truth(run / "annotate" / "round_001", plan_dir)
    fourth = subprocess.run(args + ["--resume"], capture_output=True, text=True)
    assert fourth.returncode == 0, fourth.stderr
    state = json.loads((run / "state.json").read_text())
    assert state["finished"] and len(state["labelled"]) == 12
    # the imported masks equal the ground truth of the items
    labels = {p.stem: np.load(p) for p in (run / "labels").glob("*.npy")}
    from alseg.data.cache import CaseCache
    from alseg.plans.models import load_plans

    cache = CaseCache.of(plan_dir, load_plans(plan_dir / "plans.json"), "2d")
    for item_id in state["labelled"]:
        case, _, z, y0, x0 = item_id.split(":")
        gt = cache.label(case)[int(z)]
        np.testing.assert_array_equal(labels[case][int(z)], gt)  # a slice fits the patch: item = slice


REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "Task04_Hippocampus"


@pytest.mark.slow
@pytest.mark.skipif(not REAL.is_dir(), reason="../shared/data/Task04_Hippocampus is not here")
def test_real_data_check_plan_and_one_round(tmp_path: Path):
    """Opt-in (pytest -m slow): the real MSD Hippocampus data through check, plan and one round."""
    from alseg.dataset.raw import read_dataset
    from alseg.dataset.validate import check_dataset

    assert check_dataset(read_dataset(REAL), show_progress=False).ok
    run = tmp_path / "run"
    driver = _driver(REAL, run, LoopOptions(**{**TINY, "rounds": 1, "budget": 20, "initial": 20}))
    assert len(driver.pool) == 6102 and len(driver.test_ids) == 42
    state = driver.run_all()
    assert state.finished and len(state.labelled) == 40
    assert [int(r["round"]) for r in _rows(run)] == [0, 1]


def test_redundancy_check_command_trains_saves_and_reuses_its_model(plan_dir: Path, tmp_path: Path):
    from typer.testing import CliRunner

    from alseg.cli import app

    model = tmp_path / "m.pt"
    common = [
        "redundancy-check",
        str(plan_dir),
        "--strategy",
        "usimc",
        "--copies",
        "3",
        "--budget",
        "4",
        "--initial",
        "8",
        "--query-size",
        "20",
        "--mc-passes",
        "2",
        "--seed",
        "1",
    ]
    first = CliRunner().invoke(
        app, [*common, "--train-epochs", "1", "--train-iters", "2", "--batch-size", "2", "--save-model", str(model)]
    )
    assert first.exit_code == 0, first.output
    assert model.is_file() and "query set (draws)" in first.output
    again = CliRunner().invoke(app, [*common, "--checkpoint", str(model)])
    assert again.exit_code == 0, again.output
    table = lambda out: [line for line in out.splitlines() if "%" in line]  # noqa: E731
    assert table(again.output) == table(first.output)  # same model, same seed: the same shares


def test_redundancy_check_compares_fisher_kernels_and_writes_json(plan_dir: Path, tmp_path: Path):
    from typer.testing import CliRunner

    from alseg.cli import app

    out = tmp_path / "red.json"
    common = [
        "redundancy-check",
        str(plan_dir),
        "--copies",
        "3",
        "--budget",
        "4",
        "--initial",
        "8",
        "--query-size",
        "20",
        "--mc-passes",
        "2",
        "--seed",
        "1",
        "--train-epochs",
        "1",
        "--train-iters",
        "2",
        "--batch-size",
        "2",
    ]
    res = CliRunner().invoke(app, [*common, "--strategy", "usimf", "--kernels", "raw,cosine", "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "raw kernel" in res.output and "cosine kernel" in res.output
    data = json.loads(out.read_text())
    assert data["kernel"] == "raw" and [v["kernel"] for v in data["variants"]] == ["cosine"]
    assert len(data["selected"]) == 4 and len(data["variants"][0]["selected"]) == 4
    assert 0.0 <= data["variants"][0]["batch_share"] <= 1.0
    bad = CliRunner().invoke(app, [*common, "--strategy", "usimc", "--kernels", "raw,cosine"])
    # a user error (main() prints it as one line with exit code 2), raised before any training
    assert isinstance(bad.exception, AlsegError) and "--strategy usimf" in str(bad.exception)
    # a case outside the pool fails before the model is trained (nothing saved)
    model = tmp_path / "never.pt"
    missing = CliRunner().invoke(app, [*common, "--case", "no_such_case", "--save-model", str(model)])
    assert isinstance(missing.exception, AlsegError) and "no_such_case" in str(missing.exception)
    assert "has no items in the pool" in str(missing.exception) and not model.exists()


def test_loop_rounds_and_the_full_data_reference_get_the_same_trainer(plan_dir: Path, tmp_path: Path, monkeypatch):
    """One Trainer factory: precision, devices, determinism and clipping agree (the report compares them)."""
    import lightning.pytorch as pl

    from alseg.active.experiments.compare import run_full_reference

    seen: list[dict] = []
    original = pl.Trainer.__init__

    def spy(self, *args, **kwargs):
        seen.append(kwargs)
        original(self, *args, **kwargs)

    monkeypatch.setattr(pl.Trainer, "__init__", spy)
    settings = LoopOptions(**{**TINY, "rounds": 0})
    _driver(plan_dir, tmp_path / "run", settings).run_all()
    run_full_reference(plan_dir, tmp_path / "exp", settings, workers=0)
    assert len(seen) == 2
    keys = (
        "accelerator",
        "devices",
        "strategy",
        "precision",
        "deterministic",
        "gradient_clip_val",
        "gradient_clip_algorithm",
        "max_epochs",
    )
    loop_kw, full_kw = seen
    same = [k for k in keys[:-1] if k != "devices"]
    assert {k: loop_kw[k] for k in same} == {k: full_kw[k] for k in same}
    # the reference trains inside 'alseg compare', so on one device ('auto' is one CPU or the first GPU there)
    assert loop_kw["devices"] == "auto" and full_kw["devices"] == 1
    assert loop_kw["precision"] == "32-true" and loop_kw["gradient_clip_val"] == 12.0  # CPU here
    assert full_kw["max_epochs"] == loop_kw["max_epochs"] * (settings.rounds + 1)
