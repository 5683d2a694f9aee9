"""Helpers shared by the benchmark scripts."""

from __future__ import annotations


def random_model(config, device: str, dtype=None):
    """A causal LM with random weights, initialised directly in ``dtype`` (bf16 by default) on ``device``: a
    7B model never exists as a 25.6 GiB fp32 copy first (the model class's constructor ignores ``config.dtype``)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device(device):
        return AutoModelForCausalLM.from_config(config, dtype=dtype or torch.bfloat16).eval()


def print_difference_table(rows, against: str) -> None:
    """A markdown table of (label, comparison row) pairs: AUC, GAUC and, where the row has one, its paired
    difference with ``against`` and the 95% intervals (rows as `tallrec_cli.compare.compare` writes them)."""
    from tallrec_cli.console import short_interval

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
    from tallrec_cli.compare import compare

    rows = [(reference.label, compare(records, reference, [])["rows"][0])]
    for scored in scorers:
        own, versus = compare(records, scored, [reference])["rows"]
        rows.append((scored.label, {**own, "difference": versus["difference"]}))
    return rows
