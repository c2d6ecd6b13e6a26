"""Assemble the experiment report: PNG figures, ``summary.json`` and a self-contained ``report.html``."""

from __future__ import annotations

import base64
import csv
import html
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from pydantic import BaseModel

from alseg.active.rundir import read_case_metrics
from alseg.atomic import atomic_write_text
from alseg.errors import AlsegError
from alseg.report import figures
from alseg.report.curves import Curve, common_rounds, full_data_dice, items_to_reach, learning_curves, normalised_auc
from alseg.report.penalty import column_phi, penalty_matrix
from alseg.report.runs import RunRecord, load_runs

__all__ = [
    "MIN_PENALTY_SEEDS",
    "MIN_PENALTY_STRATEGIES",
    "TARGET_FRACTION",
    "AgreementRun",
    "PenaltySummary",
    "ReportSummary",
    "SETTING_FIGURES",
    "SettingSummary",
    "SettingView",
    "StrategySummary",
    "build_report",
]

TARGET_FRACTION = 0.95
"""Items-to-reach target: this fraction of the full-data Dice (the paper's 'near full performance')."""


class StrategySummary(BaseModel):
    """One strategy on one setting, over the rounds every strategy of that setting reached."""

    seeds: list[int]
    auc_mean: float
    auc_std: float
    items_to_target: float | None
    final_n_items: float
    final_n_voxels: float
    """Annotated voxels at the last round, mean over seeds."""
    voxels_to_target: float | None
    """Annotated voxels at which the seed-mean Dice first reaches the target (interpolated)."""
    final_dice_mean: float
    final_dice_std: float
    final_dice_per_class: dict[str, float]
    phi: float
    mean_seconds_per_round: dict[str, float | None]
    final_hd95_per_class: dict[str, float | None] | None = None
    """95th-percentile Hausdorff distance (mm) per class at the last round: mean over the test cases
    (where defined), then over seeds; None when the runs recorded no per-case metrics."""
    final_nsd_per_class: dict[str, float | None] | None = None
    """Normalised surface Dice per class at the last round, as ``final_hd95_per_class``."""


class PenaltySummary(BaseModel):
    """P[i][j] in percent (row i beats column j) and Φ_j = column mean, lower is better."""

    strategies: list[str]
    matrix: list[list[float]]
    phi: list[float]
    settings: list[str]
    rounds: dict[str, list[int]]
    seeds: dict[str, list[int]]


class SettingSummary(BaseModel):
    dataset: str
    config: str
    item_size: list[int] | None = None
    """The runs' annotation items when smaller than the patch (``--item-size``)."""
    x_axis: str = "items"
    """What the curves and the AUC run along: labelled ``items`` or annotated ``voxels``."""
    full_dice: float | None
    target_dice: float | None
    rounds: list[int]
    strategies: dict[str, StrategySummary]
    penalty: PenaltySummary
    penalty_shown: bool
    """False when the setting has fewer than 2 strategies or 2 shared seeds: the matrix says nothing then."""
    labelled_voxels: dict[str, dict[int, dict[str, int]]]
    """Strategy (lowest seed) → round → annotated voxels per label name (background included)."""


class AgreementRun(BaseModel):
    """A run without test labels: the agreement between its consecutive rounds (not accuracy)."""

    strategy: str
    seed: int | None
    rounds: list[int]
    n_items: list[int]
    agreement: list[float | None]
    """Mean Dice between round k's and round k−1's predictions on the run's agreement cases; None in round 0."""


class ReportSummary(BaseModel):
    """Everything ``summary.json`` holds; ``overall_penalty`` pools all settings (paper Fig. 2D).

    ``agreement``: setting → runs without test labels, reported apart from the Dice curves."""

    settings: dict[str, SettingSummary]
    overall_penalty: PenaltySummary | None
    figures: list[str]
    notes: list[str]
    agreement: dict[str, list[AgreementRun]] = {}


AGREEMENT_NOTE = (
    "Agreement between rounds (runs without test labels): mean Dice between a round's predicted labels "
    "and the previous round's on a fixed sample of pool cases. It shows how much the model still changes "
    "from round to round, not how accurate it is; round 0 has none."
)


MIN_PENALTY_STRATEGIES = 2
MIN_PENALTY_SEEDS = 2
"""A penalty matrix needs two strategies to compare and two paired seeds for a t-test."""


def _penalty_gap(n_strategies: int, n_seeds: int) -> str | None:
    """Why no penalty matrix is drawn (one sentence), or None when it is."""
    if n_strategies < MIN_PENALTY_STRATEGIES:
        return "No penalty matrix: it compares strategies, and these runs hold only one."
    if n_seeds < MIN_PENALTY_SEEDS:
        return (
            f"No penalty matrix: its paired t-tests need at least {MIN_PENALTY_SEEDS} seeds shared by all "
            f"strategies, and these runs share {n_seeds}."
        )
    return None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


def _std(values: np.ndarray) -> float:
    return float(values.std(ddof=1)) if values.size > 1 else 0.0


def _penalty_inputs(curves: dict[str, Curve], strategies: list[str]) -> tuple[np.ndarray, list[int], list[int]]:
    """(strategies, paired seeds, rounds) Dice for the t-tests of one setting.

    Round 0 is left out when later rounds exist: its labelled set is the same seeded random draw
    for every strategy, so it cannot separate them and would only cap every entry below 100%.
    """
    rounds = common_rounds(curves[s].rounds for s in strategies)
    if (rounds >= 1).any():
        rounds = rounds[rounds >= 1]
    seeds = sorted(set.intersection(*(set(curves[s].seeds) for s in strategies)))
    scores = np.stack([curves[s].restricted(rounds).seed_rows(seeds) for s in strategies])
    return scores, seeds, rounds.tolist()


def _penalty(setting_curves: dict[str, dict[str, Curve]], strategies: list[str]) -> PenaltySummary:
    inputs = {setting: _penalty_inputs(curves, strategies) for setting, curves in setting_curves.items()}
    matrix = penalty_matrix([scores for scores, _, _ in inputs.values()])
    return PenaltySummary(
        strategies=strategies,
        matrix=matrix.tolist(),
        phi=column_phi(matrix).tolist(),
        settings=list(inputs),
        rounds={setting: rounds for setting, (_, _, rounds) in inputs.items()},
        seeds={setting: seeds for setting, (_, seeds, _) in inputs.items()},
    )


def _strategy_summary(
    curve: Curve, target: float | None, phi: float, run_seconds: dict[str, float | None]
) -> StrategySummary:
    aucs = np.array([normalised_auc(curve.x_per_seed[k], curve.dice[k]) for k in range(len(curve.seeds))])
    mean_dice = curve.dice.mean(axis=0)
    items, voxels = curve.n_items.mean(axis=0), curve.n_voxels.mean(axis=0)
    return StrategySummary(
        seeds=list(curve.seeds),
        auc_mean=float(aucs.mean()),
        auc_std=_std(aucs),
        items_to_target=None if target is None else items_to_reach(items, mean_dice, target),
        final_n_items=float(items[-1]),
        final_n_voxels=float(voxels[-1]),
        voxels_to_target=None if target is None else items_to_reach(voxels, mean_dice, target),
        final_dice_mean=float(mean_dice[-1]),
        final_dice_std=_std(curve.dice[:, -1]),
        final_dice_per_class={name: float(v[:, -1].mean()) for name, v in curve.dice_per_class.items()},
        phi=phi,
        mean_seconds_per_round=run_seconds,
    )


def _mean_seconds(runs: list[RunRecord]) -> dict[str, float | None]:
    """Mean seconds per round and phase over the given runs (None where never recorded)."""
    out: dict[str, float | None] = {}
    for phase in ("train", "score", "select"):
        values = np.concatenate([r.seconds[phase] for r in runs])
        values = values[np.isfinite(values)]
        out[phase] = float(values.mean()) if values.size else None
    return out


def _tsne_figures(runs: list[RunRecord], setting: str, out: Path) -> list[Path]:
    """One t-SNE map per strategy with embeddings: lowest seed, last round saved (paper Fig. 3)."""
    paths = []
    with_embeddings = sorted(
        (r for r in runs if r.setting == setting and r.embeddings), key=lambda r: (r.strategy, r.seed)
    )
    chosen: dict[str, RunRecord] = {}
    for run in with_embeddings:
        chosen.setdefault(run.strategy, run)
    for strategy, run in chosen.items():
        round_k = max(run.embeddings)
        npz_path = run.embeddings[round_k]
        try:
            with np.load(npz_path, allow_pickle=False) as data:
                embeddings, role = data["embeddings"], data["role"]
        except (OSError, ValueError, KeyError) as err:
            raise AlsegError(f"cannot read embeddings and role arrays ({err})", npz_path) from None
        title = f"{setting}: {strategy}, seed {run.seed}, round {round_k}"
        paths.append(
            figures.plot_embeddings_tsne(
                embeddings, role, out / f"tsne_{_slug(setting)}_{_slug(strategy)}.png", title, seed=run.seed or 0
            )
        )
    return paths


PER_CASE_CSV = "per_case.csv"
"""Every run's test metrics per case and round: Dice, HD95 (mm) and normalised surface Dice per class."""
SURFACE_NOTE = (
    "Surface metrics, from MONAI: HD95 = 95th-percentile symmetric Hausdorff distance in mm; NSD = normalised "
    "surface Dice, the share of both boundaries within 1 mm of the other. Both on the preprocessed grid, with "
    "its spacing. A class absent from truth and prediction counts HD95 0 and NSD 1; absent from one only, NSD 0 "
    "and HD95 undefined (left out of its mean). Per case: " + PER_CASE_CSV + " and the per-case table."
)


def _class_key(name: str) -> str:
    return str(name).replace(" ", "_")


def _case_rows(runs: list[RunRecord]) -> list[dict]:
    """One row per run, round and test case, from the runs' per-case files (runs that have them)."""
    rows = []
    for run in sorted(runs, key=lambda r: (r.setting, r.strategy, r.seed if r.seed is not None else -1)):
        if run.is_full:
            continue
        items = dict(zip(run.rounds.tolist(), run.n_items.tolist()))
        for k, path in sorted(run.case_metrics.items()):
            for row in read_case_metrics(path):
                rows.append(
                    {
                        "setting": run.setting,
                        "strategy": run.strategy,
                        "seed": run.seed,
                        "round": k,
                        "n_labelled_items": items.get(k),
                        **row,
                    }
                )
    return rows


def _write_case_csv(rows: list[dict], path: Path) -> None:
    fields: list[str] = []
    for row in rows:
        fields.extend(k for k in row if k not in fields)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(v) for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())


def _csv_value(value) -> str:
    if isinstance(value, float):
        return "" if not np.isfinite(value) else f"{value:.6f}"
    return "" if value is None else str(value)


def _surface_means(rows: list[dict], metric: str, classes: list[str]) -> dict[str, float | None] | None:
    """Per class: the mean over cases of ``metric`` (NaN left out) per seed, then over seeds."""
    if not rows:
        return None
    out: dict[str, float | None] = {}
    for name in classes:
        per_seed = []
        for seed in sorted({r["seed"] for r in rows}, key=lambda s: -1 if s is None else s):
            values = np.array([r.get(f"{metric}_{_class_key(name)}", np.nan) for r in rows if r["seed"] == seed])
            values = values[np.isfinite(values)]
            if values.size:
                per_seed.append(float(values.mean()))
        out[name] = float(np.mean(per_seed)) if per_seed else None
    return out


def _surface_table(setting: "SettingSummary", classes: list[str]) -> str:
    """Dice, HD95 and NSD per class at the last round, one row per strategy."""
    head = "<tr><th>strategy</th>" + "".join(
        f"<th>{html.escape(n)}: Dice</th><th>{html.escape(n)}: HD95 (mm)</th><th>{html.escape(n)}: NSD</th>"
        for n in classes
    )
    rows = []
    for name, s in setting.strategies.items():
        if s.final_hd95_per_class is None:
            continue
        cells = "".join(
            f"<td>{_fmt(s.final_dice_per_class.get(n))}</td><td>{_fmt(s.final_hd95_per_class.get(n), 2)}</td>"
            f"<td>{_fmt(s.final_nsd_per_class.get(n))}</td>"
            for n in classes
        )
        rows.append(f"<tr><td>{html.escape(name)}</td>{cells}</tr>")
    return f"<table>{head}</tr>{''.join(rows)}</table>"


def _case_table(rows: list[dict], classes: list[str]) -> str:
    """One row per strategy (lowest seed) and test case: Dice, HD95 and NSD per class."""
    head = "<tr><th>strategy</th><th>seed</th><th>case</th>" + "".join(
        f"<th>{html.escape(n)}: Dice</th><th>HD95</th><th>NSD</th>" for n in classes
    )
    body = []
    for r in rows:
        cells = "".join(
            f"<td>{_fmt(r.get(f'dice_{_class_key(n)}'))}</td><td>{_fmt(r.get(f'hd95_{_class_key(n)}'), 2)}</td>"
            f"<td>{_fmt(r.get(f'nsd_{_class_key(n)}'))}</td>"
            for n in classes
        )
        body.append(
            f"<tr><td>{html.escape(r['strategy'])}</td><td>{r['seed']}</td><td>{html.escape(str(r['case']))}</td>"
            f"{cells}</tr>"
        )
    return f"<table>{head}</tr>{''.join(body)}</table>"


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def _img(path: Path) -> str:
    """Inline the PNG so the report is one file that can be mailed or archived."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<figure><img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}"></figure>'


def _strategy_table(setting: SettingSummary) -> str:
    target = "" if setting.target_dice is None else f" (Dice ≥ {setting.target_dice:.3f})"
    unit = "annotated voxels" if setting.x_axis == "voxels" else "items"
    head = (
        f"<tr><th>strategy</th><th>seeds</th><th>normalised AUC vs {unit} (mean ± std)</th>"
        f"<th>{unit} to {TARGET_FRACTION:.0%} of full-data Dice{target}</th><th>final {unit}</th>"
        "<th>final Dice (mean ± std)</th>"
        "<th>Φ (lower is better)</th></tr>"
    )
    best_auc = max(s.auc_mean for s in setting.strategies.values())
    rows = []
    for name, s in setting.strategies.items():
        to_target, final = s.items_to_target, s.final_n_items
        if setting.x_axis == "voxels":
            to_target, final = s.voxels_to_target, s.final_n_voxels
        items = "not reached" if to_target is None else f"{to_target:,.0f}"
        if setting.target_dice is None:
            items = "no full-data run"
        cls = ' class="best"' if s.auc_mean == best_auc else ""
        rows.append(
            f"<tr{cls}><td>{html.escape(name)}</td><td>{len(s.seeds)}</td>"
            f"<td>{_fmt(s.auc_mean)} ± {_fmt(s.auc_std)}</td><td>{items}</td><td>{final:,.0f}</td>"
            f"<td>{_fmt(s.final_dice_mean)} ± {_fmt(s.final_dice_std)}</td><td>{_fmt(s.phi, 1)}</td></tr>"
        )
    return f"<table>{head}{''.join(rows)}</table>"


def _penalty_table(penalty: PenaltySummary) -> str:
    names = [html.escape(s) for s in penalty.strategies]
    head = "<tr><th>i beats j (%)</th>" + "".join(f"<th>{n}</th>" for n in names) + "</tr>"
    rows = [
        f"<tr><th>{names[i]}</th>" + "".join(f"<td>{v:.1f}</td>" for v in row) + "</tr>"
        for i, row in enumerate(penalty.matrix)
    ]
    rows.append('<tr class="phi"><th>Φ</th>' + "".join(f"<td>{v:.1f}</td>" for v in penalty.phi) + "</tr>")
    return f"<table>{head}{''.join(rows)}</table>"


_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}
th:first-child,td:first-child{text-align:left}
tr.best td{font-weight:bold} tr.phi td{font-weight:bold;background:#f6f6f6}
figure{margin:1em 0} img{max-width:100%} .notes li{margin:.3em 0}
"""


def _voxel_table(setting: SettingSummary) -> str:
    """Annotated voxels per class after each round, one block of rows per strategy (lowest seed)."""
    names = sorted({n for by_round in setting.labelled_voxels.values() for v in by_round.values() for n in v})
    names = [n for n in names if n != "background"] + (["background"] if "background" in names else [])
    head = "<tr><th>strategy</th><th>round</th>" + "".join(f"<th>{html.escape(n)}</th>" for n in names) + "</tr>"
    rows = []
    for strategy, by_round in setting.labelled_voxels.items():
        for k in sorted(by_round):
            cells = "".join(f"<td>{by_round[k].get(n, 0):,}</td>" for n in names)
            rows.append(f"<tr><td>{html.escape(strategy)}</td><td>{k}</td>{cells}</tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _agreement_table(runs: list[AgreementRun]) -> str:
    head = (
        "<tr><th>strategy</th><th>seed</th><th>round</th><th>labelled items</th><th>agreement with round k−1</th></tr>"
    )
    rows = [
        f"<tr><td>{html.escape(r.strategy)}</td><td>{r.seed}</td><td>{k}</td><td>{n:,}</td><td>{_fmt(a)}</td></tr>"
        for r in runs
        for k, n, a in zip(r.rounds, r.n_items, r.agreement)
    ]
    return f"<table>{head}{''.join(rows)}</table>"


def _agreement_runs(runs: list[RunRecord]) -> dict[str, list[AgreementRun]]:
    out: dict[str, list[AgreementRun]] = {}
    for run in sorted(runs, key=lambda r: (r.setting, r.strategy, r.seed if r.seed is not None else -1)):
        values = [None if not np.isfinite(v) else float(v) for v in run.agreement]
        out.setdefault(run.setting, []).append(
            AgreementRun(
                strategy=run.strategy,
                seed=run.seed,
                rounds=run.rounds.tolist(),
                n_items=run.n_items.tolist(),
                agreement=values,
            )
        )
    return out


def _html(
    summary: ReportSummary,
    figure_paths: dict[str, dict[str, list[Path]]],
    case_tables: dict[str, tuple[list[str], list[dict]]] | None = None,
) -> str:
    parts = [
        '<!DOCTYPE html><html><head><meta charset="utf-8"><title>alseg report</title>',
        f"<style>{_CSS}</style></head><body><h1>Active learning report</h1>",
    ]
    for key, runs in summary.agreement.items():
        parts += [
            f"<h2>{html.escape(key)}: agreement between rounds (no test labels)</h2>",
            *(_img(p) for p in figure_paths.get(f"agreement:{key}", {}).get("curves", [])),
            f"<p>{html.escape(AGREEMENT_NOTE)}</p>",
            _agreement_table(runs),
        ]
    for key, setting in summary.settings.items():
        found = figure_paths[key]
        full = "no full-data run found" if setting.full_dice is None else f"{setting.full_dice:.3f}"
        classes, rows = (case_tables or {}).get(key, ([], []))
        parts += [
            f"<h2>{html.escape(key)}</h2>",
            *(_img(p) for p in found["curves"]),
            *(_img(p) for p in found["pictures"]),
            f"<p>Full-data Dice: {full}. Rounds compared: {setting.rounds[0]}–{setting.rounds[-1]}.</p>",
            _strategy_table(setting),
        ]
        if rows:
            parts += [
                f"<h3>Dice, HD95 and surface Dice per class, round {setting.rounds[-1]}</h3>",
                "<p>Mean over the test cases, then over seeds.</p>",
                _surface_table(setting, classes),
                f"<details><summary>Per test case, round {setting.rounds[-1]} (lowest seed of each strategy; "
                f"every run and round: {PER_CASE_CSV})</summary>",
                _case_table(rows, classes),
                "</details>",
            ]
        parts += [
            "<h3>Annotated voxels per class</h3>",
            _voxel_table(setting)
            if setting.labelled_voxels
            else "<p>The runs recorded no annotated voxels per class (runs of an older alseg).</p>",
            "<h3>Pairwise penalty matrix</h3>",
        ]
        if setting.penalty_shown:
            parts += [_penalty_table(setting.penalty), *(_img(p) for p in found["penalty"])]
        else:
            gap = _penalty_gap(len(setting.penalty.strategies), len(next(iter(setting.penalty.seeds.values()))))
            parts.append(f"<p>{html.escape(gap or '')}</p>")
        parts += [_img(p) for p in found["more"]]
    if summary.overall_penalty is not None:
        parts += [
            "<h2>All settings: pairwise penalty matrix</h2>",
            f"<p>Settings pooled: {html.escape(', '.join(summary.overall_penalty.settings))}.</p>",
            _penalty_table(summary.overall_penalty),
            *(_img(p) for p in figure_paths["overall"]["penalty"]),
        ]
    items = "".join(f"<li>{html.escape(n)}</li>" for n in summary.notes)
    parts.append(f'<h2>Notes</h2><ul class="notes">{items}</ul>')
    parts.append("</body></html>")
    return "\n".join(parts)


_METHOD_NOTES = [
    "Normalised AUC: trapezoid area under Dice vs labelled items divided by the item range "
    "(per seed, then mean ± std).",
    f"Items to target: first labelled-item count at which the seed-mean Dice reaches {TARGET_FRACTION:.0%} "
    "of the full-data Dice, interpolated linearly between rounds.",
    "Penalty matrix (Ash et al. 2020): per setting and round, a two-sided paired t-test over seeds; "
    "a win (p < 0.05, higher mean) adds 1/L; sums are divided by the number of settings and given in %. "
    "Φ_j is the mean of column j over all strategies (diagonal included). Round 0, the shared random "
    "initial set, is excluded.",
    "Per-setting numbers use the rounds every strategy of that setting reached; curves show each strategy's own.",
]


def _setting_summary(
    key: str,
    by_strategy: dict[str, Curve],
    runs: list[RunRecord],
    full: float | None,
    notes: list[str],
    case_rows: list[dict] | None = None,
) -> SettingSummary:
    """Numbers for one setting on the rounds all its strategies reached; caveats go to ``notes``.
    ``case_rows``: the runs' per-case metrics (:func:`_case_rows`), for HD95 and NSD per class."""
    strategies = sorted(by_strategy)
    group = [r for r in runs if r.setting == key and not r.is_full]
    rounds = common_rounds(c.rounds for c in by_strategy.values())
    if rounds.size == 0:
        raise AlsegError(f"the runs of {key} share no round; check that every run logged round 0", group[0].path)
    target = None if full is None else TARGET_FRACTION * full
    penalty = _penalty({key: by_strategy}, strategies)
    gap = _penalty_gap(len(strategies), len(penalty.seeds[key]))
    if full is None:
        notes.append(f"{key}: no full-data run, so no reference line and no items-to-target.")
    classes = [group[0].labels[k] for k in sorted(group[0].labels, key=int)]
    last = [r for r in case_rows or [] if r["setting"] == key and r["round"] == int(rounds[-1])]
    surface = {
        s: (
            _surface_means([r for r in last if r["strategy"] == s], "hd95", classes),
            _surface_means([r for r in last if r["strategy"] == s], "nsd", classes),
        )
        for s in strategies
    }
    first = next(iter(by_strategy.values()))
    summary = SettingSummary(
        dataset=group[0].dataset,
        config=group[0].config,
        item_size=None if group[0].item_size is None else list(group[0].item_size),
        x_axis=first.x_axis,
        full_dice=full,
        target_dice=target,
        rounds=rounds.tolist(),
        strategies={
            s: _strategy_summary(
                by_strategy[s].restricted(rounds),
                target,
                penalty.phi[k],
                _mean_seconds([r for r in group if r.strategy == s]),
            )
            for k, s in enumerate(strategies)
        },
        penalty=penalty,
        penalty_shown=gap is None,
        labelled_voxels={s: run.labelled_voxels for s, run in _first_seed_runs(group).items() if run.labelled_voxels},
    )
    for s, (hd95, nsd) in surface.items():
        summary.strategies[s].final_hd95_per_class = hd95
        summary.strategies[s].final_nsd_per_class = nsd
    return summary


def _first_seed_runs(runs: list[RunRecord]) -> dict[str, RunRecord]:
    """The lowest-seed run of each strategy, strategies sorted: the run a picture or table shows."""
    chosen: dict[str, RunRecord] = {}
    for run in sorted(runs, key=lambda r: (r.strategy, r.seed if r.seed is not None else -1)):
        if not run.is_full:
            chosen.setdefault(run.strategy, run)
    return chosen


def picture_rounds(rounds: list[int]) -> list[int]:
    """The first, a middle and the last round (fewer when the runs have fewer)."""
    rounds = sorted(set(rounds))
    if not rounds:
        return []
    return sorted({rounds[0], rounds[len(rounds) // 2], rounds[-1]})


def _segmentation_figures(runs: list[RunRecord], setting: str, out: Path) -> list[Path]:
    """Per picture case: image, truth and each strategy's prediction after the first, a middle and the last round."""
    chosen = {s: r for s, r in _first_seed_runs([r for r in runs if r.setting == setting]).items() if r.pictures}
    if not chosen:
        return []
    shared = sorted(set.intersection(*(set(r.pictures) for r in chosen.values())))
    rounds = picture_rounds(shared)
    loaded: dict[str, dict[int, dict[str, np.ndarray]]] = {}
    for strategy, run in chosen.items():
        loaded[strategy] = {}
        for k in rounds:
            try:
                with np.load(run.pictures[k], allow_pickle=False) as data:
                    loaded[strategy][k] = {name: data[name] for name in data.files}
            except (OSError, ValueError) as err:
                raise AlsegError(f"cannot read the picture arrays ({err})", run.pictures[k]) from None
    first = next(iter(chosen.values()))
    label_names = [first.labels[k] for k in sorted(first.labels, key=int)]
    reference = loaded[next(iter(chosen))][rounds[0]]
    paths = []
    for j, case in enumerate(reference["cases"].tolist()):
        predictions: dict[str, dict[int, np.ndarray]] = {}
        for strategy, by_round in loaded.items():
            row = {}
            for k, data in by_round.items():
                cases = data["cases"].tolist()
                if case in cases:
                    row[k] = data[f"pred_{cases.index(case)}"]
            predictions[f"{strategy} (seed {chosen[strategy].seed})"] = row
        z = int(reference["slices"][j])
        paths.append(
            figures.plot_segmentations(
                reference[f"image_{j}"],
                reference[f"label_{j}"],
                predictions,
                label_names,
                out / f"segmentation_{_slug(setting)}_{_slug(case)}.png",
                f"{setting}: test case {case}, slice {z}",
            )
        )
    return paths


@dataclass(frozen=True)
class SettingView:
    """What a figure of one setting (dataset/configuration) can draw from."""

    key: str
    """The setting, e.g. ``Hippocampus/2d``."""
    summary: SettingSummary
    curves: dict[str, Curve]
    """Strategy → its curve over seeds, on the rounds every strategy reached."""
    runs: list[RunRecord]
    """This setting's runs (every seed, the full-data reference included)."""
    out: Path
    """The report folder: write figures here."""
    colours: dict[str, tuple[float, ...]]
    """Strategy → its colour, the same in every figure."""

    @property
    def slug(self) -> str:
        """The setting as a file-name part."""
        return _slug(self.key)


def _learning_curves_figure(view: SettingView) -> list[Path]:
    return [
        figures.plot_learning_curves(
            view.curves,
            view.out / f"learning_curve_{view.slug}.png",
            f"{view.key}: learning curves",
            full_dice=view.summary.full_dice,
            x_unit=figures.X_UNITS[view.summary.config],
            colours=view.colours,
            x_label="annotated voxels" if view.summary.x_axis == "voxels" else None,
        )
    ]


def _penalty_figure(view: SettingView) -> list[Path]:
    penalty = view.summary.penalty
    if not view.summary.penalty_shown:
        return []
    return [
        figures.plot_penalty_matrix(
            np.array(penalty.matrix),
            np.array(penalty.phi),
            penalty.strategies,
            view.out / f"penalty_{view.slug}.png",
            f"{view.key}: pairwise penalty matrix",
        )
    ]


def _batch_uncertainty_figure(view: SettingView) -> list[Path]:
    if not any(np.isfinite(c.batch_uncertainty).any() for c in view.curves.values()):
        return []
    return [
        figures.plot_batch_uncertainty(
            view.curves,
            view.out / f"batch_uncertainty_{view.slug}.png",
            f"{view.key}: batch uncertainty per round",
            colours=view.colours,
        )
    ]


SETTING_FIGURES: list[tuple[str, Callable[[SettingView], list[Path]]]] = [
    ("curves", _learning_curves_figure),
    ("pictures", lambda view: _segmentation_figures(view.runs, view.key, view.out)),
    ("penalty", _penalty_figure),
    ("more", _batch_uncertainty_figure),
    ("more", lambda view: _tsne_figures(view.runs, view.key, view.out)),
]
"""The figures of each setting, in order, with the report section each goes to (``curves``,
``pictures``, ``penalty``, ``more``). A new figure is a function of a :class:`SettingView` that
returns the files it wrote, and one line here (or ``SETTING_FIGURES.append`` at run time)."""


def _setting_figures(
    key: str,
    setting: SettingSummary,
    by_strategy: dict[str, Curve],
    runs: list[RunRecord],
    out: Path,
    colours: dict[str, tuple[float, ...]],
) -> dict[str, list[Path]]:
    """The setting's figures by section: ``curves``, ``pictures``, ``penalty``, ``more``."""
    view = SettingView(key, setting, by_strategy, [r for r in runs if r.setting == key], out, colours)
    found: dict[str, list[Path]] = {"curves": [], "pictures": [], "penalty": [], "more": []}
    for section, figure in SETTING_FIGURES:
        found.setdefault(section, []).extend(figure(view))
    return found


def _unfinished_note(unfinished: list[RunRecord], left_out: bool) -> str:
    """One line naming the active-learning runs whose loop has not finished (a grid in progress)."""
    names = ", ".join(
        f"{r.strategy} seed {r.seed}" for r in sorted(unfinished, key=lambda r: (r.strategy, r.seed or 0))
    )
    if left_out:
        return f"Left out {len(unfinished)} unfinished run(s) (--finished-only): {names}."
    return (
        f"{len(unfinished)} run(s) have not finished ({names}): the numbers of their setting stop at the last "
        "round every run reached; 'alseg report --finished-only' leaves them out."
    )


def build_report(exp_dirs: list[Path], out: Path, finished_only: bool = False, x_axis: str = "items") -> dict:
    """Read every run below ``exp_dirs`` and write figures, ``summary.json`` and ``report.html`` to ``out``.

    ``finished_only`` leaves out active-learning runs whose ``state.json`` says they have not
    finished (a grid still running), so the finished cells are compared over all their rounds.
    ``x_axis``: ``items`` (labelled items, the paper's axis) or ``voxels`` (annotated voxels, the
    cost when runs annotate items of different sizes, ``--item-size``); curves, AUC and the
    table's "to target" column run along it.
    Returns the summary as a JSON-compatible dict (the content of ``summary.json``).
    """
    loaded = load_runs(exp_dirs)
    unfinished = [r for r in loaded if not r.is_full and r.finished is False]
    if finished_only:
        loaded = [r for r in loaded if r.is_full or r.finished is not False]
        if not any(not r.is_full for r in loaded):
            raise AlsegError("no active-learning run below it has finished; leave out --finished-only", exp_dirs[0])
    runs = [r for r in loaded if r.has_dice]
    agreement = _agreement_runs([r for r in loaded if not r.has_dice and not r.is_full])
    curves = learning_curves(runs, x_axis)
    if not curves and not agreement:
        raise AlsegError("only full-data runs found; the report needs active-learning runs", exp_dirs[0])
    references = full_data_dice(runs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    all_strategies = sorted({s for by_strategy in curves.values() for s in by_strategy})
    colours = figures.strategy_colours(all_strategies)
    notes = list(_METHOD_NOTES) if curves else []
    if agreement:
        notes.append(AGREEMENT_NOTE)
    notes += [
        f"{s}: full-data run without active-learning runs, ignored." for s in sorted(set(references) - set(curves))
    ]
    if unfinished:
        notes.append(_unfinished_note(unfinished, finished_only))

    settings: dict[str, SettingSummary] = {}
    figure_paths: dict[str, dict[str, list[Path]]] = {}
    for key, agreement_runs in agreement.items():
        figure_paths[f"agreement:{key}"] = {
            "curves": [
                figures.plot_agreement(
                    {f"{r.strategy} (seed {r.seed})": (r.n_items, r.agreement) for r in agreement_runs},
                    out / f"agreement_{_slug(key)}.png",
                    f"{key}: agreement between rounds (no test labels)",
                    x_unit=figures.X_UNITS.get(key.rsplit("/", 1)[-1], "items"),
                )
            ]
        }
    case_rows = _case_rows(runs)
    if case_rows:
        _write_case_csv(case_rows, out / PER_CASE_CSV)
        notes.append(SURFACE_NOTE)
    case_tables: dict[str, tuple[list[str], list[dict]]] = {}
    for key, by_strategy in curves.items():
        data_setting = next(r.data_setting for r in runs if r.setting == key)
        settings[key] = _setting_summary(key, by_strategy, runs, references.get(data_setting), notes, case_rows)
        figure_paths[key] = _setting_figures(key, settings[key], by_strategy, runs, out, colours)
        first = {(r.strategy, r.seed) for r in _first_seed_runs([r for r in runs if r.setting == key]).values()}
        last = settings[key].rounds[-1]
        shown = [
            r for r in case_rows if r["setting"] == key and r["round"] == last and (r["strategy"], r["seed"]) in first
        ]
        group = next(r for r in runs if r.setting == key)
        case_tables[key] = ([group.labels[k] for k in sorted(group.labels, key=int)], shown)

    overall = None
    if len(curves) > 1:
        shared = sorted(set.intersection(*(set(by_strategy) for by_strategy in curves.values())))
        dropped = sorted(set(all_strategies) - set(shared))
        if dropped:
            notes.append(
                f"Overall penalty matrix leaves out strategies missing from some setting: {', '.join(dropped)}."
            )
        if len(shared) >= MIN_PENALTY_STRATEGIES:
            overall = _penalty(curves, shared)
        if overall is not None and min(len(seeds) for seeds in overall.seeds.values()) < MIN_PENALTY_SEEDS:
            notes.append(f"No overall penalty matrix: some setting has fewer than {MIN_PENALTY_SEEDS} shared seeds.")
            overall = None
        if overall is not None:
            figure_paths["overall"] = {
                "penalty": [
                    figures.plot_penalty_matrix(
                        np.array(overall.matrix),
                        np.array(overall.phi),
                        shared,
                        out / "penalty_overall.png",
                        f"All settings ({len(curves)}): pairwise penalty matrix",
                    )
                ]
            }

    summary = ReportSummary(
        settings=settings,
        overall_penalty=overall,
        figures=sorted(p.name for found in figure_paths.values() for paths in found.values() for p in paths),
        notes=notes,
        agreement=agreement,
    )
    atomic_write_text(out / "summary.json", summary.model_dump_json(indent=2))  # inf/NaN as null (pydantic)
    atomic_write_text(out / "report.html", _html(summary, figure_paths, case_tables))
    return summary.model_dump(mode="json")
