"""How a round is measured: test Dice per class (and per case), the agreement between rounds when
there are no test labels, the pictures the report draws, and the round's numbers in TensorBoard.

Each runs the network in eval mode (:func:`alseg.model.network.eval_mode`) and leaves it as it was.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from alseg.active.oracles.labels import LabelStore
from alseg.active.rundir import MetricsRow, RoundRecord, RunDir
from alseg.active.workspace import Workspace
from alseg.model.inference import predict_volume
from alseg.model.metrics import dice_per_class, mean_dice
from alseg.model.network import eval_mode

__all__ = [
    "AGREEMENT_CASES",
    "PICTURE_CASES",
    "agreement",
    "agreement_cases",
    "evaluate",
    "log_round",
    "measure_round",
    "picture_cases",
    "save_pictures",
]

PICTURE_CASES = 2
"""Test cases whose prediction is saved each round for the report's segmentation pictures."""

AGREEMENT_CASES = 4
"""Pool cases whose predictions are compared between rounds when there are no test labels."""


def agreement_cases(train_ids: list[str], seed: int) -> list[str]:
    """The fixed agreement sample of a run without test labels: up to :data:`AGREEMENT_CASES`
    pool cases drawn once from the run's seed (its own stream, apart from the rounds')."""
    ids = sorted(train_ids)
    n = min(AGREEMENT_CASES, len(ids))
    idx = np.random.default_rng([seed, 0, 1]).choice(len(ids), size=n, replace=False)
    return sorted(ids[int(i)] for i in idx)


def picture_cases(test_ids: list[str]) -> list[str]:
    """The fixed picture cases: the first test cases by name, the same for every strategy and round."""
    return sorted(test_ids)[:PICTURE_CASES]


def evaluate(
    module, ws: Workspace, test_ids: list[str], run: RunDir | None = None, round_: int | None = None
) -> dict[str, float]:
    """Mean test Dice per class over the held-out cases, on the preprocessed grid; with ``run``
    and ``round_``, each case's Dice, HD95 and surface Dice also go to the round's per-case file."""
    rows = []
    with eval_mode(module.net), torch.inference_mode():
        for c in test_ids:
            image = torch.from_numpy(np.array(ws.image(c))).to(module.device)
            label = torch.from_numpy(np.array(ws.ground_truth(c))).to(module.device)
            spacing = ws.properties(c)["spacing_after_resampling"] if round_ is not None else None
            rows.append(module.evaluate_case(image, label, spacing=spacing))
    if run is not None and round_ is not None and rows:
        run.save_case_metrics(round_, [{"case": c, **r} for c, r in zip(test_ids, rows)])
    keys = [k for k in (rows[0] if rows else {}) if k.startswith("dice_")]  # metrics.csv: Dice only
    return {k: float(np.nanmean([r[k] for r in rows])) for k in keys}


def agreement(module, ws: Workspace, cases: list[str], run: RunDir, round_: int) -> float | None:
    """Mean Dice between this round's and the previous round's predicted labels on the run's
    agreement ``cases`` (Dice as the test metric: a class absent from both counts 1.0); None in
    round 0, or when the previous round's predictions are missing."""
    predictions = {}
    with eval_mode(module.net), torch.inference_mode():
        for c in cases:
            image = np.array(ws.image(c))  # a copy: torch refuses read-only memory maps
            pred = predict_volume(module.net, image, module.config, output="labels")
            predictions[c] = pred.cpu().numpy().astype(np.uint8)
    run.save_agreement_predictions(round_, predictions)
    previous = run.load_agreement_predictions(round_ - 1) if round_ > 0 else None
    if not previous or set(previous) != set(predictions):
        return None
    n = ws.plans.n_classes
    return float(np.mean([mean_dice(dice_per_class(predictions[c], previous[c], n)) for c in sorted(predictions)]))


def save_pictures(module, ws: Workspace, test_ids: list[str], run: RunDir, round_: int) -> None:
    """Save one slice of each picture case (image, truth, prediction) for the report."""
    if not picture_cases(test_ids):  # no test labels: nothing to draw the truth from
        return
    net = module.net
    cases, slices, arrays = [], [], {}
    with eval_mode(net), torch.inference_mode():
        for j, c in enumerate(picture_cases(test_ids)):
            image = np.array(ws.image(c))  # a copy: torch refuses read-only memory maps
            label = np.asarray(ws.ground_truth(c))
            label = label[0] if label.ndim == image.ndim else label
            z = int(np.argmax((label > 0).reshape(label.shape[0], -1).sum(axis=1)))
            if len(module.config.patch_size) == 2:  # a 2-D network needs only the slice
                pred = predict_volume(net, image[:, z : z + 1], module.config, output="labels")[0]
            else:
                pred = predict_volume(net, image, module.config, output="labels")[z]
            cases.append(c)
            slices.append(z)
            arrays[f"image_{j}"] = image[0, z].astype(np.float32)
            arrays[f"label_{j}"] = label[z].astype(np.uint8)
            arrays[f"pred_{j}"] = pred.cpu().numpy().astype(np.uint8)
    run.save_pictures(round_, cases, slices, arrays)


def log_round(
    run: RunDir,
    ws: Workspace,
    labels: LabelStore,
    labelled: np.ndarray,
    round_: int,
    row: MetricsRow,
    loader_workers: int | None = None,
) -> None:
    """Annotated voxels per class and the data-loader processes of the fit into the round file; the
    round's numbers (``row`` of ``metrics.csv``) into TensorBoard. ``labelled`` marks the pool's
    labelled items."""
    counts = labels.voxels_per_class(ws.pool, labelled, ws.plans.n_classes)
    names = {0: "background", **ws.foreground_labels}
    record = run.load_round(round_) or RoundRecord(round=round_)
    record.labelled_voxels_per_class = {names.get(c, str(c)): int(n) for c, n in enumerate(counts)}
    record.loader_workers = loader_workers
    run.save_round(record)
    board = TensorBoardLogger(run.path, name=run.logs_dir.name, version=run.rounds_log_dir.name)
    scalars = {f"test/{k}": float(v) for k, v in row.dice.items()}
    if row.agreement is not None:
        scalars["agreement/between_rounds"] = float(row.agreement)
    scalars.update({f"seconds/{k}": float(v) for k, v in row.seconds.items()})
    scalars["labelled/items"] = float(labelled.sum())
    scalars.update({f"labelled/voxels_{k}": float(v) for k, v in record.labelled_voxels_per_class.items()})
    board.log_metrics(scalars, step=round_)
    board.finalize("success")


def measure_round(
    module,
    ws: Workspace,
    run: RunDir,
    round_: int,
    labelled: np.ndarray,
    seconds_train: float,
    agreement_with: list[str],
) -> tuple[dict[str, float], MetricsRow]:
    """The round's test Dice per class and its ``metrics.csv`` row: labelled items (pool indices
    ``labelled``) and voxels, Dice, the agreement on ``agreement_with`` (runs without test labels),
    and the seconds of each phase (score and select from the round file)."""
    t0 = time.perf_counter()
    metrics = evaluate(module, ws, ws.test_ids, run, round_)
    seconds_eval = time.perf_counter() - t0
    record = run.load_round(round_)
    sec = record.seconds if record is not None else {}
    row = MetricsRow(
        round=round_,
        n_labelled_items=len(labelled),
        n_labelled_voxels=ws.pool.voxels(labelled),
        dice=metrics,
        measures_agreement=bool(agreement_with),  # no test labels: how much the predictions still change
        agreement=agreement(module, ws, agreement_with, run, round_) if agreement_with else None,
        seconds={
            "train": seconds_train,
            "eval": seconds_eval,
            "score": sec.get("score", 0.0),
            "select": sec.get("select", 0.0),
        },
    )
    return metrics, row
