"""Numbers as people read them in tables and reports: one formatter for values, one for 95% intervals."""

from __future__ import annotations

from collections.abc import Sequence


def format_value(value: object) -> str:
    """A table cell: ``-`` for missing, 4 decimals for rates and AUCs, 1 for lengths in the hundreds."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def short_interval(interval: Sequence[float] | None, signed: bool = False) -> str:
    """``.699-.757`` / ``-.010,+.034``: an interval in few characters, for 80-column tables."""
    if not interval:
        return ""
    low, high = (f"{value:+.3f}" if signed else f"{value:.3f}" for value in interval)
    low, high = (text.replace("0.", ".", 1) for text in (low, high))
    return f"{low},{high}" if signed else f"{low}-{high}"


def value_with_interval(value: float | None, interval: Sequence[float] | None, signed: bool = False) -> str:
    """``0.7312`` with its 95% interval on the line under it (``-`` when there is no value)."""
    if value is None:
        return "-"
    text = f"{value:+.4f}" if signed else f"{value:.4f}"
    return text + ("\n" + short_interval(interval, signed) if interval else "")


def format_bytes(size: int) -> str:
    """``15 KB``, ``18.9 MB``, ``4.2 GB``: a file size with a unit that keeps it readable (decimal units)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if size >= scale:
            value = size / scale
            return f"{value:.0f} {unit}" if value >= 100 or unit == "KB" else f"{value:.1f} {unit}"
    return f"{size} B"
