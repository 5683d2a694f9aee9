"""Results as tables and sentences for the terminal: a comparison of scorers, a sweep's Table 1, an audit.
Library code returns plain results; this layer alone turns them into rich tables."""

from __future__ import annotations

from tallrec_cli.cli.console import Column, ResultTable
from tallrec_cli.core.formatting import format_value, value_with_interval
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


def sweep_table(summary: list[dict],
                  title: str = "AUC (GAUC under it) by training samples (mean ± std over seeds, n)"):
    """A result table shaped like TALLRec's Table 1: methods x (test, shots), per-user AUC under each AUC;
    * marks each column's best AUC."""
    columns = result_columns(summary)
    cells = {(row["method"], row["test"], row["shots"]): row for row in summary}
    rows = []
    for method in method_order(summary):
        line = [method]
        for test, shots in columns:
            row = cells.get((method, test, shots))
            if row is None or row["auc_mean"] is None:
                line.append("")
                continue
            text = format_value(row["auc_mean"]) + (f" ± {row['auc_std']:.4f}" if row["auc_std"] is not None else "")
            text += f" ({row['n']})"
            text = f"[bold]{text} *[/]" if row["best"] else text
            if row.get("gauc_mean") is not None:
                text += "\ng " + format_value(row["gauc_mean"]) + (f" ± {row['gauc_std']:.4f}"
                                                                   if row["gauc_std"] is not None else "")
            line.append(text)
        rows.append(line)
    caption = ("shots 0 = zero-shot base model; * = best AUC in column; full-data references are fitted on the "
               "whole training split\n" + test_users_line(summary))
    return ResultTable(title, [Column("method"), *(Column(f"{test} {'zero-shot' if shots == 0 else shots}", True)
                                                   for test, shots in columns)], rows, caption=caption, lines=True)


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
