"""The ``alseg`` command line. Thin: parse, call the library, print; errors become one line + exit 2."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from alseg.errors import AlsegError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Active learning for medical image segmentation on a self-configuring, nnU-Net-compatible pipeline.",
)
out = Console()
err = Console(stderr=True)

DEFAULT_DEMO_DIR = Path("alseg_demo")


@app.command("demo-data")
def demo_data(
    out_dir: Path = typer.Argument(..., help="Folder to write the dataset into (MSD layout)."),
    cases: int = typer.Option(24, "--cases", help="Number of labelled training cases."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same data."),
    dims: int = typer.Option(3, "--dims", help="3: volumes; 2: single-slice images (a 2D-only dataset)."),
    ct: bool = typer.Option(False, "--ct", help="Anisotropic CT-like volumes in Hounsfield units."),
    test_cases: int = typer.Option(4, "--test-cases", help="Unlabelled cases in imagesTs/."),
) -> None:
    """Write the built-in synthetic dataset, shaped like MSD Hippocampus (or CT-like with --ct)."""
    from alseg.data.synthetic import generate_dataset

    if dims not in (2, 3):
        raise AlsegError(f"--dims must be 2 or 3, got {dims}")
    if cases < 2:
        raise AlsegError(f"--cases must be at least 2, got {cases}")
    root = generate_dataset(out_dir, cases=cases, seed=seed, dims=dims, ct=ct, test_cases=test_cases)
    out.print(f"wrote {cases} training and {test_cases} test cases to [bold]{root}[/bold]")


def _check(dataset: Path, quiet: bool = False) -> None:
    from alseg.data.dataset import read_dataset
    from alseg.data.validate import check_dataset

    info = read_dataset(dataset)
    result = check_dataset(info, show_progress=not quiet)
    for w in result.warnings:
        err.print(f"warning: {w}", markup=False, highlight=False, soft_wrap=True)
    if not result.ok:
        for p in result.problems:
            err.print(f"error: {p}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2)
    if quiet:
        return
    table = Table(title=f"{info.name} ({info.layout} layout, {len(result.cases)} cases) — OK")
    for col in ("", "min", "median", "max"):
        table.add_column(col, justify="right")
    shapes = [c.shape for c in result.cases]
    spacings = [c.spacing for c in result.cases]
    fmt = lambda a: " x ".join(f"{v:g}" for v in a)  # noqa: E731
    import numpy as np

    table.add_row("shape (z, y, x)", fmt(np.min(shapes, 0)), fmt(np.median(shapes, 0)), fmt(np.max(shapes, 0)))
    table.add_row("spacing mm", fmt(np.min(spacings, 0)), fmt(np.median(spacings, 0)), fmt(np.max(spacings, 0)))
    out.print(table)
    counts = Table(title="voxels per class")
    counts.add_column("label")
    counts.add_column("name")
    counts.add_column("voxels", justify="right")
    counts.add_column("cases with it", justify="right")
    for k, name in sorted(info.labels.items()):
        total = sum(c.voxels_per_class.get(k, 0) for c in result.cases)
        present = sum(1 for c in result.cases if c.voxels_per_class.get(k, 0) > 0)
        counts.add_row(str(k), name, f"{total:,}", f"{present}/{len(result.cases)}")
    out.print(counts)
    out.print(f"channels: {', '.join(f'{k}={v}' for k, v in sorted(info.channel_names.items()))}")


@app.command()
def check(
    dataset: Path = typer.Argument(..., help="Dataset folder (MSD or nnU-Net v2 raw layout)."),
) -> None:
    """Validate a dataset: files, geometry, labels, NaNs, channels; print a summary."""
    _check(dataset)


@app.command()
def demo(
    out_dir: Path = typer.Option(DEFAULT_DEMO_DIR, "-o", "--out", help="Where the demo writes its data and results."),
) -> None:
    """The main job on the built-in synthetic data: generate it, then check it."""
    from alseg.data.synthetic import generate_dataset

    data = out_dir / "data"
    generate_dataset(data)
    out.print(f"[bold]1/2[/bold] synthetic dataset in {data}")
    _check(data)
    out.print("[bold]2/2[/bold] dataset checked")


def main() -> None:
    """Console entry point: user errors are one line on stderr and exit code 2 (``--debug``: traceback)."""
    debug = "--debug" in sys.argv
    if debug:
        sys.argv.remove("--debug")
    try:
        app()
    except AlsegError as e:
        if debug:
            raise
        err.print(f"error: {e}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
