"""Report figures (Föllmer et al. 2024 Figs. 2, 3 and 5), each saved as a PNG whose path is returned.

Figures are built on ``matplotlib.figure.Figure`` with an Agg canvas rather than pyplot, so no
global state or display is touched and plots can be drawn from any thread or headless machine.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from alseg.atomic import atomic_save_figure
from alseg.report.curves import Curve, mean_std_ci
from alseg.seeds import global_seed

__all__ = [
    "plot_agreement",
    "plot_batch_uncertainty",
    "plot_embeddings_tsne",
    "plot_learning_curves",
    "plot_penalty_matrix",
    "plot_segmentations",
    "strategy_colours",
]

DPI = 120
TSNE_MAX_POINTS = 2000
"""t-SNE of 2000 points takes ~20 s on 2 cores; Liver pools hold ~10^5 items, so larger maps are subsampled."""

ROLE_STYLE = {  # Figure 3 of the paper: black labelled, grey unlabelled, blue query, red selected
    "unlabelled": dict(color="0.7", s=6, zorder=1),
    "labelled": dict(color="black", s=8, zorder=2),
    "query": dict(color="tab:blue", s=10, zorder=3),
    "selected": dict(color="tab:red", s=24, zorder=4, edgecolors="white", linewidths=0.4),
}
X_UNITS = {"2d": "2D slice patches", "3d_fullres": "3D patches"}


def strategy_colours(strategies: Sequence[str]) -> dict[str, tuple[float, ...]]:
    """A fixed colour per strategy so every figure of a report uses the same one."""
    cmap = colormaps["tab10"] if len(strategies) <= 10 else colormaps["tab20"]
    return {name: cmap(k % cmap.N) for k, name in enumerate(sorted(strategies))}


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, out: Path) -> Path:
    atomic_save_figure(out, fig, format="png", dpi=DPI, facecolor="white")
    return out


def plot_learning_curves(
    curves: Mapping[str, Curve],
    out: Path,
    title: str,
    full_dice: float | None = None,
    x_unit: str = "items",
    colours: Mapping[str, tuple[float, ...]] | None = None,
    x_label: str | None = None,
) -> Path:
    """Dice vs labelled items (or ``x_label``: what the curves' x is) per strategy: the mean
    foreground Dice, then one panel per class.

    Lines are means over seeds with a 95% CI band; a strategy with one seed has no band, and the
    legend and title say "one seed" (a band there would promise a spread nobody measured). The
    full-data Dice (mean panel) is dashed. A class the model misses shows in its own panel, where
    the mean would hide it.
    """
    colours = colours or strategy_colours(list(curves))
    classes = sorted(set.intersection(*(set(c.dice_per_class) for c in curves.values()))) if curves else []
    panels = [("mean foreground", None), *((name, name) for name in classes)]
    fig = _new_figure(4.2 * len(panels) + 0.6, 4.4)
    axes = np.atleast_1d(fig.subplots(1, len(panels), sharey=True))
    for ax, (panel, key) in zip(axes, panels, strict=True):
        for name, curve in curves.items():
            values = curve.dice if key is None else curve.dice_per_class[key]
            mean, _, half = mean_std_ci(values)
            x = curve.x
            n = len(curve.seeds)
            label = f"{name} ({'one seed' if n < 2 else f'n={n}'})"
            ax.plot(x, mean, marker="o", ms=3.5, lw=1.6, color=colours[name], label=label)
            if n >= 2:
                ax.fill_between(x, mean - half, mean + half, color=colours[name], alpha=0.18, lw=0)
        if key is None and full_dice is not None:
            ax.axhline(full_dice, color="black", ls="--", lw=1.2, label=f"full data ({full_dice:.3f})")
        ax.set_title(f"Dice: {panel}", fontsize=10)
        ax.set_xlabel(x_label or f"labelled items ({x_unit})")
        ax.set_ylim(0.0, 1.0)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("Dice (test set)")
    axes[0].legend(fontsize=8, loc="lower right", frameon=True)
    fig.suptitle(f"{title} — {_spread_caption(curves, 'band: 95% CI')}", fontsize=10)
    return _save(fig, out)


def _spread_caption(curves: Mapping[str, Curve], spread: str) -> str:
    """What the lines and their spread show: "one seed" when no strategy has two."""
    seeds = [len(c.seeds) for c in curves.values()]
    if not seeds or max(seeds) < 2:
        return "one seed (no spread to show)"
    if min(seeds) < 2:
        return f"mean over seeds, {spread} (one-seed strategies: no band)"
    return f"mean over seeds, {spread}"


def plot_agreement(
    runs: Mapping[str, tuple[Sequence[float], Sequence[float | None]]],
    out: Path,
    title: str,
    x_unit: str = "items",
) -> Path:
    """Runs without test labels: agreement between consecutive rounds vs labelled items (one line
    per run; round 0 has no point). Labelled as agreement, never as accuracy."""
    colours = strategy_colours(list(runs))
    fig = _new_figure(6.4, 4.4)
    ax = fig.subplots()
    for name, (x, y) in runs.items():
        values = np.array([np.nan if v is None else v for v in y], dtype=float)
        ax.plot(np.asarray(x, float), values, marker="o", ms=3.5, lw=1.6, color=colours[name], label=name)
    ax.set_xlabel(f"labelled items ({x_unit})")
    ax.set_ylabel("agreement with the previous round\n(mean Dice of predictions, not accuracy)")
    ax.set_ylim(0.0, 1.0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right", frameon=True)
    ax.set_title(f"{title}", fontsize=10)
    return _save(fig, out)


LABEL_COLOURS = colormaps["tab10"]
"""Label k is drawn in tab10 colour k-1 in every segmentation picture."""


def _overlay(ax, image: np.ndarray, labels: np.ndarray | None, n_labels: int) -> None:
    ax.imshow(image, cmap="gray", interpolation="nearest")
    if labels is not None and n_labels > 0:
        rgba = np.zeros((*labels.shape, 4))
        for k in range(1, n_labels + 1):
            rgba[labels == k] = (*LABEL_COLOURS((k - 1) % 10)[:3], 0.55)
        ax.imshow(rgba, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def plot_segmentations(
    image: np.ndarray,
    truth: np.ndarray,
    predictions: Mapping[str, Mapping[int, np.ndarray]],
    label_names: Sequence[str],
    out: Path,
    title: str,
) -> Path:
    """One test slice: the image with its ground truth, then each strategy's prediction per round.

    ``predictions`` maps a row name (strategy) to round → label slice; every row shows the same
    rounds (those of the first row), one column each.
    """
    rows = list(predictions)
    rounds = sorted(predictions[rows[0]]) if rows else []
    n_labels = len(label_names)
    cols = 2 + len(rounds)
    height = image.shape[0] / max(image.shape[1], 1)
    fig = _new_figure(2.1 * cols, 2.1 * height * max(len(rows), 1) + 0.9)
    axes = np.array(fig.subplots(max(len(rows), 1), cols, squeeze=False))
    for i, row in enumerate(rows):
        _overlay(axes[i, 0], image, None, n_labels)
        _overlay(axes[i, 1], image, truth, n_labels)
        axes[i, 0].set_ylabel(row, fontsize=9)
        for j, k in enumerate(rounds):
            pred = predictions[row].get(k)
            _overlay(axes[i, 2 + j], image, pred, n_labels)
            if pred is None:
                axes[i, 2 + j].text(
                    0.5, 0.5, "not reached", ha="center", va="center", transform=axes[i, 2 + j].transAxes
                )
    for j, name in enumerate(["image", "ground truth", *(f"after round {k}" for k in rounds)]):
        axes[0, j].set_title(name, fontsize=9)
    legend = ", ".join(f"{name}: {_colour_name(k)}" for k, name in enumerate(label_names, start=1))
    fig.suptitle(f"{title}\n{legend}", fontsize=9)
    return _save(fig, out)


def _colour_name(k: int) -> str:
    return ["blue", "orange", "green", "red", "purple", "brown", "pink", "grey", "olive", "cyan"][(k - 1) % 10]


def plot_penalty_matrix(matrix: np.ndarray, phi: np.ndarray, strategies: Sequence[str], out: Path, title: str) -> Path:
    """Heatmap of P (row beats column, % of rounds) with values written in, and Φ as a row below."""
    n = len(strategies)
    matrix, phi = np.asarray(matrix, dtype=float), np.asarray(phi, dtype=float)
    vmax = max(float(matrix.max(initial=0.0)), 1e-9)
    size = max(3.8, 0.75 * n + 2.2)
    fig = _new_figure(size + 0.8, size + 0.6)
    ax, ax_phi = fig.subplots(2, 1, height_ratios=[n, 1], sharex=True)
    image = ax.imshow(matrix, cmap="Reds", vmin=0.0, vmax=vmax, aspect="auto")
    ax_phi.imshow(phi[None, :], cmap="Reds", vmin=0.0, vmax=vmax, aspect="auto")
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(
            j, i, f"{value:.1f}", ha="center", va="center", fontsize=8, color="white" if value > 0.6 * vmax else "black"
        )
    for j, value in enumerate(phi):
        ax_phi.text(
            j,
            0,
            f"{value:.1f}",
            ha="center",
            va="center",
            fontsize=8,
            fontweight="bold",
            color="white" if value > 0.6 * vmax else "black",
        )
    ax.set_yticks(range(n), strategies)
    ax.set_ylabel("strategy i (winner)")
    ax.set_title(f"{title}\nP[i, j] = % of rounds where i beats j (paired t-test, p < 0.05)", fontsize=10)
    ax.tick_params(labelbottom=False)
    ax_phi.set_yticks([0], ["Φ (mean)"])
    ax_phi.set_xticks(range(n), strategies, rotation=45, ha="right")
    ax_phi.set_xlabel("strategy j (loser); Φ_j lower is better")
    fig.colorbar(image, ax=[ax, ax_phi], label="% of rounds", shrink=0.8)
    return _save(fig, out)


def plot_batch_uncertainty(
    curves: Mapping[str, Curve],
    out: Path,
    title: str,
    colours: Mapping[str, tuple[float, ...]] | None = None,
) -> Path:
    """MC uncertainty of each selected batch per sampling round (paper Fig. 5: the sum over the
    batch's items, foreground classes and pixels of std_t p_t(c)), mean ± std over seeds (one seed: no bar)."""
    colours = colours or strategy_colours(list(curves))
    fig = _new_figure(7.0, 4.2)
    ax = fig.subplots()
    for name, curve in curves.items():
        recorded = np.all(np.isfinite(curve.batch_uncertainty), axis=0)
        if not recorded.any():
            continue
        mean, std, _ = mean_std_ci(curve.batch_uncertainty[:, recorded])
        one = len(curve.seeds) < 2
        ax.errorbar(
            curve.rounds[recorded],
            mean,
            yerr=None if one else std,
            marker="o",
            ms=4,
            capsize=3,
            lw=1.4,
            color=colours[name],
            label=f"{name} (one seed)" if one else name,
        )
    ax.set_xlabel("sampling round k (batch selected with the round k−1 model)")
    ax.set_ylabel("batch uncertainty (sum of foreground MC-dropout std)")
    ax.set_title(f"{title}\n{_spread_caption(curves, '± std')}", fontsize=10)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out)


def _subsample(role: np.ndarray, max_points: int, rng: np.random.Generator) -> np.ndarray:
    """Indices to draw: every selected item, then a uniform sample of the rest up to ``max_points``."""
    if role.size <= max_points:
        return np.arange(role.size)
    selected = np.flatnonzero(role == "selected")
    others = np.flatnonzero(role != "selected")
    room = max(max_points - selected.size, 0)
    return np.sort(np.concatenate([selected, rng.choice(others, size=room, replace=False)]))


def plot_embeddings_tsne(
    embeddings: np.ndarray,
    role: np.ndarray,
    out: Path,
    title: str,
    seed: int = 0,
    max_points: int = TSNE_MAX_POINTS,
) -> Path:
    """2-D t-SNE of item embeddings coloured by role (paper Fig. 3); PCA to 50 dims first if wider."""
    # lazy: sklearn takes seconds to import and only the t-SNE map needs it (start-up of alseg report)
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    embeddings = np.asarray(embeddings, dtype=float)
    role = np.asarray(role).astype(str)
    if embeddings.ndim != 2 or embeddings.shape[0] != role.shape[0]:
        raise ValueError(f"embeddings (N, D) and role (N,) must agree, got {embeddings.shape} and {role.shape}")
    unknown = sorted(set(role) - set(ROLE_STYLE))
    if unknown:
        raise ValueError(f"unknown role(s) {unknown}; expected {sorted(ROLE_STYLE)}")
    if embeddings.shape[0] < 2:
        raise ValueError("t-SNE needs at least 2 embeddings")
    rng = np.random.default_rng(seed)
    keep = _subsample(role, max_points, rng)
    seed = global_seed(seed)  # scikit-learn takes 32-bit seeds; a run's seed may be up to 2**63 - 1
    x, r = embeddings[keep], role[keep]
    if x.shape[1] > 50 and x.shape[0] > 50:
        x = PCA(n_components=50, random_state=seed).fit_transform(x)
    perplexity = float(min(30.0, x.shape[0] - 1))
    init = "pca" if min(x.shape) >= 2 else "random"
    xy = TSNE(n_components=2, perplexity=perplexity, init=init, random_state=seed).fit_transform(x)

    fig = _new_figure(6.0, 5.2)
    ax = fig.subplots()
    for name, style in ROLE_STYLE.items():
        mask = r == name
        if mask.any():
            ax.scatter(xy[mask, 0], xy[mask, 1], label=f"{name} (n={int((role == name).sum())})", **style)
    shown = "" if keep.size == role.size else f", {keep.size} of {role.size} items shown"
    ax.set_title(f"{title}\nt-SNE of embeddings (perplexity {perplexity:g}{shown})", fontsize=10)
    ax.set_xlabel("t-SNE 1 (a.u.)")
    ax.set_ylabel("t-SNE 2 (a.u.)")
    ax.legend(fontsize=8, markerscale=1.5)
    return _save(fig, out)
