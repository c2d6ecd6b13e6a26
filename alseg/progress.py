"""Rich progress bars that stay quiet in tests and CI logs when asked to."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

__all__ = ["console", "results", "make_progress", "progress_map"]

console = Console(stderr=True)
"""Progress, logs and warnings: stderr."""
results = Console()
"""Results (a finished round's line, summaries): stdout, so that ``> file`` keeps the results only."""


def make_progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def progress_map(
    mapper: Callable, fn: Callable, items: list, description: str, show: bool = True, **kwargs: Any
) -> list:
    """``list(mapper(fn, items))`` with a progress bar; ``mapper`` is ``map`` or a pool's ``map``."""
    results: Iterable = mapper(fn, items, **kwargs)
    if not (show and console.is_terminal):
        return list(results)
    out = []
    with make_progress() as bar:
        task = bar.add_task(description, total=len(items))
        for r in results:
            out.append(r)
            bar.advance(task)
    return out
