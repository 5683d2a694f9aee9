"""How library code tells a person what it is doing without printing: notes, warnings, a status line for a
wait of known cause, and progress bars, all through the current `Reporter`.

The default reporter is silent, so the library stays quiet when used from Python; the command line installs
one that renders with rich (`tallrec_cli.cli.console.RichReporter`). Functions that report per item also take
callbacks (``on_start``, ``on_batch``, ``log``), which callers wire to a reporter's progress.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Protocol


class Progress(Protocol):
    """The part of rich's ``Progress`` library code uses."""

    def __enter__(self) -> Progress: ...

    def __exit__(self, *exc_info: Any) -> None: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def add_task(self, description: str, total: float | None = None, completed: float = 0) -> int: ...

    def advance(self, task_id: int, advance: float = 1) -> None: ...

    def update(self, task_id: int, *, completed: float | None = None, total: float | None = None,
               description: str | None = None) -> None: ...


class SilentProgress:
    """A progress that shows nothing."""

    def __enter__(self) -> SilentProgress:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        return None

    def start(self) -> None:
        return None

    def stop(self) -> None:
        return None

    def add_task(self, description: str, total: float | None = None, completed: float = 0) -> int:
        return 0

    def advance(self, task_id: int, advance: float = 1) -> None:
        return None

    def update(self, task_id: int, *, completed: float | None = None, total: float | None = None,
               description: str | None = None) -> None:
        return None


class Reporter:
    """Silent: what library code reports goes nowhere unless a caller installs another reporter."""

    def note(self, message: str) -> None:
        """Something the user may want to know (a skipped checkpoint, a fallback taken)."""

    def warning(self, message: str) -> None:
        """Something that may make the result not what the user expects."""

    @contextlib.contextmanager
    def status(self, message: str) -> Iterator[None]:
        """A wait with a known cause (a one-time conversion) while the block runs."""
        yield

    def progress(self, transient: bool = False) -> Progress:
        """Bars for work of known size; ``transient`` ones disappear when done."""
        return SilentProgress()


_current: Reporter = Reporter()


def reporter() -> Reporter:
    return _current


def use_reporter(new: Reporter) -> Reporter:
    """Install ``new`` as the process's reporter; returns the previous one (to restore it)."""
    global _current
    previous, _current = _current, new
    return previous
