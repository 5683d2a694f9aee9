"""Shared rich consoles and progress bars (stdout for results, stderr for progress and errors)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from rich.console import Console
from rich.progress import (
    BarColumn, MofNCompleteColumn, Progress, ProgressColumn, SpinnerColumn, TextColumn, TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

console = Console()
err_console = Console(stderr=True)


def progress(transient: bool = False, extra_columns: Sequence[ProgressColumn] = ()) -> Progress:
    """The standard progress bar for long work: description, ``extra_columns``, bar, n/total, elapsed, ETA."""
    return Progress(
        SpinnerColumn(), TextColumn("[progress.description]{task.description}"), *extra_columns, BarColumn(),
        MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
        console=err_console, transient=transient,
    )


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> Table:
    """A results table; numbers are right-aligned and floats shown with 4 decimals."""
    rows = [list(row) for row in rows]
    result = Table(title=title, title_justify="left")
    for index, name in enumerate(columns):
        numeric = bool(rows) and all(isinstance(row[index], (int, float)) or row[index] is None for row in rows)
        result.add_column(name, justify="right" if numeric else "left")
    for row in rows:
        result.add_row(*(_fmt(value) for value in row))
    return result


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        # Rates and AUCs need 4 decimals; lengths and counts in the hundreds do not.
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)
