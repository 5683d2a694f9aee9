"""What a person sees: the shared consoles (stdout for results, stderr for progress and errors), result
tables that never cut a number, progress that turns into plain lines when stderr is not a terminal, and the
`RichReporter` through which library code's notes, warnings, status lines and progress reach the terminal."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from tallrec_cli.core.formatting import format_value
from tallrec_cli.core.reporting import Reporter

console = Console()
err_console = Console(stderr=True)


# ------------------------------------------------------------------------------------------------ tables

TEXT_COLUMN_MIN = 12  # a text column narrower than its longest word folds that word


@dataclass(frozen=True)
class Column:
    header: str
    numeric: bool = False  # right-aligned and never wrapped or cut


class ResultTable:
    """A results table whose numbers are never cut, laid out when printed at the console's width: columns
    side by side when every number fits (headers and text wrap), else turned (one column per row, for a few
    long rows such as per-split statistics), else one block of ``column  value`` lines per row. Cells may
    hold rich markup and line breaks."""

    def __init__(self, title: str, columns: Sequence[Column | str], rows: Iterable[Sequence[str]],
                 caption: str | None = None, lines: bool = False):
        self.title, self.caption, self.lines = title, caption, lines
        self.columns = [column if isinstance(column, Column) else Column(column) for column in columns]
        self.rows = [[Text.from_markup(cell) if isinstance(cell, str) else cell for cell in row] for row in rows]

    def __rich_console__(self, console, options):
        if self.narrowest_width() <= options.max_width:
            yield self.side_by_side()
        elif self._turned_width() <= options.max_width:
            yield self.turned()
        else:
            yield self.one_block_per_row()

    def narrowest_width(self) -> int:
        """Characters the side-by-side layout needs: whole numbers, headers wrapped at spaces, text folded
        to at most TEXT_COLUMN_MIN, plus rich's borders and padding (3 per column and 1)."""
        return sum(self._needed(index) for index in range(len(self.columns))) + 3 * len(self.columns) + 1

    def _needed(self, index: int) -> int:
        column, cells = self.columns[index], [row[index] for row in self.rows]
        header = _longest_word(Text(column.header))  # headers wrap at spaces and keep their own line breaks
        if column.numeric:
            return max([header, *(_widest_line(cell) for cell in cells)])
        # text folds: a long name (a test path, a model id) may take several lines rather than push numbers out
        return min(max([header, *(_longest_word(cell) for cell in cells)]), TEXT_COLUMN_MIN)

    def _row_needed(self, row: list[Text]) -> int:
        """Width of ``row`` as a column of the turned table: its numbers whole, its text folded."""
        numbers = [_widest_line(cell) for cell, column in zip(row[1:], self.columns[1:]) if column.numeric]
        words = [_longest_word(cell) for cell in row]
        return max([*numbers, min(max(words, default=0), TEXT_COLUMN_MIN)])

    def _turned_width(self) -> int:
        headers = max((_longest_word(Text(column.header)) for column in self.columns), default=0)
        return headers + sum(self._row_needed(row) for row in self.rows) + 3 * (len(self.rows) + 1) + 1

    def turned(self) -> Table:
        table = Table(title=self.title, title_justify="left", caption=self.caption, caption_justify="left",
                      show_lines=self.lines)
        table.add_column(self.columns[0].header)
        for row in self.rows:  # a fixed width: rich never narrows it below its numbers
            table.add_column(row[0], justify="right", width=self._row_needed(row), overflow="fold")
        for index, column in enumerate(self.columns[1:], start=1):
            table.add_row(column.header.replace("\n", " "), *(row[index] for row in self.rows))
        return table

    def side_by_side(self) -> Table:
        table = Table(title=self.title, title_justify="left", caption=self.caption, caption_justify="left",
                      show_lines=self.lines)
        for index, column in enumerate(self.columns):
            header = _wrap_words(column.header, self._needed(index)) if column.numeric else column.header
            table.add_column(header, justify="right" if column.numeric else "left", no_wrap=column.numeric,
                             overflow="fold")
        for row in self.rows:
            table.add_row(*row)
        return table

    def one_block_per_row(self) -> Table:
        table = Table(title=self.title, title_justify="left", caption=self.caption, caption_justify="left",
                      show_header=False)
        table.add_column("column", style="bold", no_wrap=True)
        table.add_column("value", overflow="fold")
        for row in self.rows:
            for number, (column, cell) in enumerate(zip(self.columns, row)):
                table.add_row(column.header.replace("\n", " "), cell, end_section=number == len(row) - 1)
        return table


def _widest_line(text: Text) -> int:
    return max((line.cell_len for line in text.split("\n", allow_blank=True)), default=0)


def _longest_word(text: Text) -> int:
    return max((len(word) for word in text.plain.split()), default=0)


def _wrap_words(text: str, width: int) -> str:
    """``text`` with line breaks between words so no line is wider than ``width`` (a longer word stays
    whole); line breaks already in ``text`` are kept."""
    lines: list[str] = []
    for given in text.split("\n"):
        start = len(lines)
        for word in given.split():
            if len(lines) > start and len(lines[-1]) + 1 + len(word) <= width:
                lines[-1] += " " + word
            else:
                lines.append(word)
    return "\n".join(lines)


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> ResultTable:
    """A results table from plain values: columns of numbers are right-aligned, floats go through
    ``format_value``."""
    rows = [list(row) for row in rows]
    return ResultTable(title, [Column(name, numeric=bool(rows) and all(
        isinstance(row[index], (int, float)) or row[index] is None for row in rows))
        for index, name in enumerate(columns)], [[format_value(value) for value in row] for row in rows])


# ---------------------------------------------------------------------------------------------- progress

def progress(transient: bool = False, extra_columns: Sequence[ProgressColumn] = ()) -> Progress | PlainProgress:
    """The standard progress bar for long work: description, ``extra_columns``, bar, n/total, elapsed, ETA;
    on a stderr that is not a terminal (CI logs, files), plain lines instead of a redrawn bar."""
    if not err_console.is_terminal:
        return PlainProgress()
    return Progress(
        SpinnerColumn(), TextColumn("[progress.description]{task.description}"), *extra_columns, BarColumn(),
        MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
        console=err_console, transient=transient,
    )


@dataclass
class _PlainTask:
    description: str
    total: float | None
    completed: float
    started: float
    printed_tenth: int = -1


class PlainProgress:
    """The part of rich's ``Progress`` this tool uses, written as whole lines: one when a task starts, one per
    tenth of it done, one when it ends, so a log shows the work without control characters."""

    def __init__(self):
        self.tasks: list[_PlainTask] = []

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def start(self) -> None:
        """Lines are written as the work goes; nothing to start."""

    def stop(self) -> None:
        for task in self.tasks:
            if task.total is not None and task.printed_tenth < 10 <= self._tenth(task):
                self._print(task)

    def add_task(self, description: str, total: float | None = None, completed: float = 0, **_fields) -> int:
        self.tasks.append(_PlainTask(description, total, completed, time.monotonic()))
        self._report(len(self.tasks) - 1)
        return len(self.tasks) - 1

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.tasks[task_id].completed += advance
        self._report(task_id)

    def update(self, task_id: int, *, completed: float | None = None, total: float | None = None,
               description: str | None = None, advance: float | None = None, **_fields) -> None:
        task = self.tasks[task_id]
        task.total = task.total if total is None else total
        task.completed = task.completed if completed is None else completed
        task.completed += advance or 0
        task.description = task.description if description is None else description
        self._report(task_id)

    @staticmethod
    def _tenth(task: _PlainTask) -> int:
        return int(10 * task.completed / task.total) if task.total else 0

    def _report(self, task_id: int) -> None:
        task = self.tasks[task_id]
        if self._tenth(task) > task.printed_tenth:
            self._print(task)

    def _print(self, task: _PlainTask) -> None:
        task.printed_tenth = self._tenth(task)
        done = f"{task.completed:g}/{task.total:g}" if task.total is not None else f"{task.completed:g}"
        elapsed = int(time.monotonic() - task.started)
        err_console.print(f"{task.description}: {done} ({elapsed // 60}:{elapsed % 60:02d})", highlight=False,
                          soft_wrap=True)


class RichReporter(Reporter):
    """Library reports on stderr: notes in yellow, status spinners, `progress` bars (plain lines off a terminal)."""

    def note(self, message: str) -> None:
        err_console.print(f"[yellow]note:[/] {message}", highlight=False)

    def warning(self, message: str) -> None:
        err_console.print(f"[yellow]warning:[/] {message}", highlight=False)

    @contextlib.contextmanager
    def status(self, message: str) -> Iterator[None]:
        with err_console.status(message):
            yield

    def progress(self, transient: bool = False) -> Progress | PlainProgress:
        return progress(transient)
