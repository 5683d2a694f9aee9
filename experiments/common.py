"""Helpers shared by the experiment scripts: markdown tables of paired comparisons."""

from __future__ import annotations

from tallrec_cli.core.formatting import short_interval
from tallrec_cli.eval.compare import compare


def print_difference_table(rows, against: str) -> None:
    """A markdown table of (label, comparison row) pairs: AUC, GAUC and, where the row has one, its paired
    difference with ``against`` and the 95% intervals (rows as `tallrec_cli.eval.compare.compare` writes them)."""
    print(f"| scorer | AUC | GAUC | {against}: ΔAUC (95% CI) | ΔGAUC (95% CI) |\n|---|---:|---:|---|---|")
    for label, row in rows:
        metrics, diff = row["metrics"], row.get("difference")
        cells = "| |" if diff is None else (
            f"| {diff['auc_diff']:+.3f} {short_interval(diff['auc_diff_ci95'], True)} "
            f"| {diff['gauc_diff']:+.3f} {short_interval(diff['gauc_diff_ci95'], True)} |")
        print(f"| {label} | {metrics['auc']:.3f} | {metrics['gauc']:.3f} {cells}", flush=True)


def rows_against(records, reference, scorers) -> list[tuple[str, dict]]:
    """(label, comparison row) for the ``reference`` Scored and for each of ``scorers`` with its paired
    difference to the reference, ready for `print_difference_table`."""
    rows = [(reference.label, compare(records, reference, [])["rows"][0])]
    for scored in scorers:
        own, versus = compare(records, scored, [reference])["rows"]
        rows.append((scored.label, {**own, "difference": versus["difference"]}))
    return rows
