"""Results as tables and sentences for the terminal: a comparison of scorers, a sweep's Table 1, an audit.
Library code returns plain results; this layer alone turns them into rich tables."""

from __future__ import annotations

from tallrec_cli.cli.console import Column, ResultTable
from tallrec_cli.core.formatting import short_interval, value_with_interval
from tallrec_cli.eval.compare import verdict
from tallrec_cli.sweep.report import method_order, result_columns, test_users_line


def comparison_table(comparison: dict, title: str):
    """One row per scorer: AUC and GAUC with their 95% intervals under them, then the differences of the
    primary scorer minus that row (paired intervals) and the primary's verdict per metric (``verdict``)."""
    rows = []
    for row in comparison["rows"]:
        metrics, difference = row["metrics"], row.get("difference")
        rows.append([
            row["label"], value_with_interval(metrics["auc"], metrics["auc_ci95"]),
            value_with_interval(metrics["gauc"], metrics["gauc_ci95"]),
            value_with_interval(difference["auc_diff"], difference["auc_diff_ci95"], True) if difference else "",
            value_with_interval(difference["gauc_diff"], difference["gauc_diff_ci95"], True) if difference else "",
            verdict(difference) if difference else ""])
    return ResultTable(title, [Column("scorer"), *(Column(name, True) for name in ("AUC", "GAUC", "ΔAUC", "ΔGAUC")),
                               Column("sig")], rows, lines=True)


def _mean_std(row: dict, metric: str, best: bool = False) -> str:
    """``0.750±.071`` (mean ± std over seeds, three decimals so four N columns fit 80 columns)."""
    mean, std = row.get(f"{metric}_mean"), row.get(f"{metric}_std")
    if mean is None:
        return "-"
    return f"{mean:.3f}" + (f"±{std:.3f}".replace("0.", ".", 1) if std is not None else "") + (" *" if best else "")


def _sweep_cell(row: dict | None, seeds: int) -> str:
    if row is None or row["auc_mean"] is None:
        return ""
    text = _mean_std(row, "auc", row["best"] and row["shots"] > 0)
    text = f"[bold]{text}[/]" if row["best"] and row["shots"] > 0 else text
    if row["kind"] != "reference" and row["shots"] > 0 and row["n"] < seeds:
        text += f" ({row['n']})"
    return text + ("\ng " + _mean_std(row, "gauc") if row.get("gauc_mean") is not None else "")


def sweep_table(summary: list[dict], test: str | None = None):
    """AUC (per-user AUC under it, ``g``) of every scorer against training records N, mean ± std over seeds:
    one column per N (per test and N without ``test``), a row per tuned method, its zero-shot model,
    each equal-data reference and each full-data reference (those two repeated in every column); * marks
    each column's best AUC."""
    summary = [row for row in summary if test is None or row["test"] == test]
    trained = [(name, shots) for name, shots in result_columns(summary) if shots > 0]
    columns = trained or result_columns(summary)  # a zero-shot-only sweep: its one column
    cells = {(row["method"], row["test"], row["shots"]): row for row in summary}
    seeds = max((row["n"] for row in summary if row["kind"] == "lora" and row["shots"] > 0), default=1)
    rows = []
    for method in method_order(summary):
        rows.append([method, *(_sweep_cell(cells.get((method, name, shots)), seeds) for name, shots in columns)])
        zero = {name: cells.get((method, name, 0)) for name in {name for name, _ in columns}}
        if trained and any(zero.values()):
            rows.append([f"{method} zero-shot", *(_sweep_cell(zero[name], seeds) for name, _ in columns)])
    caption = (f"mean ± std over {seeds} seed(s), (n) where fewer; g = per-user AUC (GAUC); * = best AUC in column; "
               "equal-data references are fitted on each cell's N records and the ratings their histories list, "
               "full-data ones on the whole training split\n" + test_users_line(summary))
    title = f"{test}: AUC and GAUC by training records N" if test else "AUC and GAUC by training records N"
    headers = [str(shots or "zero-shot") if test else f"{name} {shots or 'zero-shot'}" for name, shots in columns]
    return ResultTable(title, [Column("method"), *(Column(header, True) for header in headers)], rows, caption=caption,
                       lines=True)


def _difference(comparison: dict | None) -> str:
    """ΔAUC with its verdict mark over its interval, then ``g`` ΔGAUC the same way."""
    if comparison is None:
        return ""
    marks = dict(zip(("auc", "gauc"), comparison["verdict"].split("/")))
    lines = []
    for metric, prefix in (("auc", ""), ("gauc", "g ")):
        value = comparison[f"{metric}_diff"]
        lines.append(f"{prefix}{value:+.4f} {marks[metric]}" if value is not None else f"{prefix}-")
        if comparison[f"{metric}_diff_ci95"]:
            lines.append(short_interval(comparison[f"{metric}_diff_ci95"], signed=True))
    return "\n".join(lines)


def sweep_comparison_table(comparisons: list[dict], test: str, method: str):
    """The tuned ``method`` minus each reference at every N on ``test``: paired ΔAUC and ΔGAUC, mean over
    seeds, with 95% intervals and verdict marks; equal-data references first, then the full-data lines."""
    rows_of = [row for row in comparisons if row["test"] == test and row["method"] == method]
    shots = sorted({row["shots"] for row in rows_of})
    by_key = {(row["reference"], row["shots"]): row for row in rows_of}
    references = list(dict.fromkeys(row["reference"] for row in sorted(rows_of, key=lambda row: row["kind"])))
    rows = [[reference, *(_difference(by_key.get((reference, value))) for value in shots)] for reference in references]
    caption = ("Δ = tuned model - reference on the same records, mean over the seeds both have; under each Δ its "
               "paired bootstrap 95% interval; + the tuned model wins (interval above 0), - it loses, = tie")
    return ResultTable(f"{test}: {method} minus each reference", [Column("reference"), *(Column(str(value), True)
                                                                                        for value in shots)],
                       rows, caption=caption, lines=True)


def _at(shots: int | None, all_shots: list[int]) -> str:
    span = f"{all_shots[0]}-{all_shots[-1]}" if len(all_shots) > 1 else f"{all_shots[0]}"
    return f"first at N={shots}" if shots is not None else f"at no N of {span}"


def _nearest(closest: dict | None) -> str:
    if not closest:
        return ""
    interval = f", {short_interval(closest['ci95'], signed=True)}" if closest["ci95"] else ""
    return f" (nearest N={closest['shots']}: {closest['diff']:+.4f}{interval})"


def sweep_findings_lines(findings: list[dict]) -> list[str]:
    """Per test and tuned method, in words: the smallest N at which each equal-data reference ties or beats
    the tuned model, and whether the tuned model ever reaches each full-data line (paired intervals)."""
    lines = []
    for finding in findings:
        shots = finding["shots"]
        lines.append(f"{finding['test']}: {finding['method']} against each reference (paired 95% intervals, "
                     f"mean over up to {finding['seeds']} seed(s)):")
        for row in finding["equal_data"]:
            lines.append(f"  {row['reference']} ties or beats the tuned model: AUC {_at(row['auc'], shots)}, "
                         f"GAUC {_at(row['gauc'], shots)}")
        for row in finding["full_data"]:
            auc, gauc = ((_at(row[metric], shots) + ("" if row[metric] is not None else _nearest(row["closest"][metric])))
                         for metric in ("auc", "gauc"))
            lines.append(f"  the tuned model reaches {row['reference']}: AUC {auc}; GAUC {gauc}")
    return lines


def sweep_report(report: dict) -> list:
    """What `tallrec sweep` prints: per test its AUC/GAUC table and each tuned method's comparison table."""
    renderables = []
    for test in sorted({row["test"] for row in report["summary"]}):
        renderables.append(sweep_table(report["summary"], test))
        for method in dict.fromkeys(row["method"] for row in report.get("comparisons", []) if row["test"] == test):
            renderables.append(sweep_comparison_table(report["comparisons"], test, method))
    return renderables


def audit_tables(audit: dict) -> list:
    """The audit as result tables (they keep every number whole at any width): slices, history, leakage."""
    tables = []
    overall = audit["overall"]
    if audit.get("slices"):
        rows = [["all", "", str(overall["records"]), value_with_interval(overall["auc"], overall["auc_ci95"]),
                 _gauc(overall)]]
        for key in ("users", "items", "popularity_deciles"):
            rows += [[row["group"], str(row["train_records"]), str(row["records"]),
                      value_with_interval(row["auc"], row["auc_ci95"]), _gauc(row)]
                     for row in audit["slices"].get(key, [])]
        tables.append(ResultTable("AUC and GAUC by training records (95% CI)",
                                  [Column("slice"), Column("train records", True), Column("records", True),
                                   Column("AUC", True), Column("GAUC (users)", True)], rows, lines=True))
    rows = [["as is", value_with_interval(overall["auc"], None), value_with_interval(overall["gauc"], None), "", "", ""]]
    for name, row in (("shuffled", audit["history_order"]), ("no history", audit["history_ablation"])):
        rows.append([name, value_with_interval(row["auc"], None), value_with_interval(row["gauc"], None),
                     value_with_interval(row["auc_diff"], row["auc_diff_ci95"], True),
                     value_with_interval(row["gauc_diff"], row["gauc_diff_ci95"], True),
                     f"{row['mean_abs_score_change']:.4f}"])
    tables.append(ResultTable("history re-scored (Δ = changed - as is, paired 95% CI)",
                              [Column("history"), *(Column(name, True) for name in ("AUC", "GAUC", "ΔAUC", "ΔGAUC",
                                                                                    "mean |Δp|"))], rows, lines=True))
    style = {"leak": "[bold red]LEAK[/]", "ok": "[green]ok[/]", "fact": "fact", "skipped": "[dim]skipped[/]"}
    rows = [[check["check"], style[check["status"]],
             check["detail"] + (f" (e.g. {', '.join(check['examples'][:3])})" if check["examples"] else "")]
            for check in audit["leakage"]]
    tables.append(ResultTable("leakage checks", ["check", "result", "detail"], rows, lines=True))
    return tables


def _gauc(row: dict) -> str:
    text = value_with_interval(row.get("gauc"), row.get("gauc_ci95"))
    return text if row.get("gauc_users") is None else f"{text}\n({row['gauc_users']})"


def audit_summary_lines(audit: dict) -> list[str]:
    """Plain sentences under the tables: what moved and what leaked."""
    lines = [_history_line(audit)]
    leaks = audit["leaks_found"]
    lines.append(f"leaks found: {', '.join(leaks)}" if leaks else "no leak found by the checks that ran")
    return [line for line in lines if line] + audit["notes"]


def _history_line(audit: dict) -> str | None:
    """What removing the history did to the AUC, as a share of the AUC above chance only when both the AUC's
    lead over 0.5 and the change are significant (a share of a lead that may be 0 means nothing)."""
    overall, ablation = audit["overall"], audit["history_ablation"]
    change, interval = ablation.get("auc_diff"), ablation.get("auc_diff_ci95")
    if change is None:
        return None
    moved = f"removing the history changes the AUC by {change:+.4f}" + (
        f" (95% CI {interval[0]:+.4f}, {interval[1]:+.4f})" if interval else "")
    if interval and interval[0] <= 0 <= interval[1]:
        return f"{moved}: not significant"
    auc_interval = overall.get("auc_ci95")
    if auc_interval and auc_interval[0] <= 0.5:
        return (f"{moved}; the AUC {overall['auc']:.4f} is not significantly above chance (95% CI "
                f"{auc_interval[0]:.4f}-{auc_interval[1]:.4f}), so no share of it is put on the history")
    lift = ablation["auc_lift_share_from_history"]
    return f"{moved}: {lift:.0%} of the AUC above 0.5 goes with it" if lift is not None else moved
