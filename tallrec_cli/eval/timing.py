"""Where an evaluation's wall time goes: seconds per phase (process start, imports, model load, adapter fold,
tokenise, score, metrics, write), kept by the eval workflow, written into each test's metrics.json and shown by
`tallrec eval --timings`."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path


class PhaseTimes:
    """Wall seconds per named phase, in the order first entered; a phase entered again adds up. ``before``: the
    phases that came first (a run's model load, before each test's own phases)."""

    def __init__(self, before: PhaseTimes | None = None) -> None:
        self.seconds: dict[str, float] = dict(before.seconds) if before else {}

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - started)

    def as_dict(self) -> dict[str, float]:
        return {name: round(seconds, 3) for name, seconds in self.seconds.items()}


def process_age() -> float | None:
    """Seconds since this process started (interpreter start-up and every import since), from /proc on Linux;
    None where it cannot be read."""
    try:
        # the fields after the parenthesised command name; starttime (field 22) is the 20th of them
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return max(0.0, uptime - int(fields[19]) / ticks)
