"""A sweep's results from its folders alone: one observation per (method, test, shots, seed), mean and std
over seeds, TALLRec's Table 1 as a rich table, results.json / results.csv / sweep.png."""

from __future__ import annotations

import json
import math
import os
import socket
from collections import defaultdict
from pathlib import Path

from tallrec_cli.core.errors import ArtifactError
from tallrec_cli.core.files import MANIFEST_NAME, atomic_path, write_json_atomic, write_text_atomic
from tallrec_cli.core.metrics import MIN_GAUC_USERS
from tallrec_cli.sweep.spec import CELL_RESULT_NAME, INDEX_NAME, read_sweep_record


def cell_observations(results) -> list[dict]:
    """One row per (method, test) of each cell result (sweep-eval.json contents)."""
    rows = []
    for result in results:
        for method in result["methods"]:
            for label, metrics in result["tests"].items():
                rows.append({"method": method, "kind": "zero-shot" if result["shots"] == 0 else "lora",
                             "domain": result["domain"], "test": label, "shots": result["shots"], "seed": result["seed"],
                             "auc": metrics.get("auc"), "gauc": metrics.get("gauc"), "records": metrics.get("records"),
                             "users": metrics.get("users"), "gauc_users": metrics.get("gauc_users"),
                             "cell": result["id"]})
    return rows


def baseline_observations(stored: dict) -> list[dict]:
    return [{"method": name, "kind": "baseline", "domain": stored["domain"], "test": label, "shots": stored["shots"],
             "seed": stored["seed"], "auc": metrics.get("auc"), "gauc": metrics.get("gauc"),
             "records": metrics.get("n"), "cell": None}
            for label, by_name in stored["tests"].items() for name, metrics in by_name.items()]


def reference_observations(stored: dict, shots_columns: list[int]) -> list[dict]:
    """A full-data reference's result repeated in every shots column (it does not depend on shots)."""
    return [{"method": f"{name} (full data)" if name != "History share" else name, "kind": "reference",
             "domain": stored["domain"], "test": label, "shots": shots, "seed": None, "auc": metrics.get("auc"),
             "gauc": metrics.get("gauc"), "records": metrics.get("n"), "cell": None}
            for label, by_name in stored["tests"].items() for name, metrics in by_name.items()
            for shots in shots_columns]


def collect_observations(sweep_dir: str | Path) -> list[dict]:
    """Every observation, read from the cell folders and baseline files alone."""
    sweep_dir = Path(sweep_dir)
    results = [json.loads(path.read_text(encoding="utf-8"))
               for path in sorted((sweep_dir / "cells").glob(f"*/{CELL_RESULT_NAME}"))
               if (path.parent / MANIFEST_NAME).is_file()]
    results = list(results)
    shots_columns = sorted({result["shots"] for result in results if result["shots"] > 0})
    stored = [json.loads(path.read_text(encoding="utf-8")) for path in sorted((sweep_dir / "baselines").glob("*.json"))]
    baselines = [reference_observations(item, shots_columns) if item.get("kind") == "reference"
                 else baseline_observations(item) for item in stored]
    return cell_observations(results) + [row for rows in baselines for row in rows]


def missing_cells(sweep_dir: str | Path) -> list[dict]:
    """Cells of the sweep's index without a finished result (killed, failed or never run): id and status."""
    sweep_dir = Path(sweep_dir)
    index_path = sweep_dir / INDEX_NAME
    if not index_path.is_file():
        return []
    entries = json.loads(index_path.read_text(encoding="utf-8")).get("cells") or []
    return [{"id": entry["id"], "status": _status(entry), "error": entry.get("error")} for entry in entries
            if not ((sweep_dir / entry["dir"] / CELL_RESULT_NAME).is_file()
                    and (sweep_dir / entry["dir"] / MANIFEST_NAME).is_file())]


def _status(entry: dict) -> str | None:
    """The index's status, except that a cell left ``running`` by a process of this machine that is gone (killed
    before it could record anything) is ``killed``; one on another machine cannot be told from here."""
    if entry.get("status") != "running" or entry.get("host") != socket.gethostname() or not entry.get("pid"):
        return entry.get("status")
    try:
        os.kill(entry["pid"], 0)
    except ProcessLookupError:
        return "killed"
    except PermissionError:  # alive, another user's
        pass
    return "running"


_KIND_ORDER = {"lora": 0, "zero-shot": 0, "baseline": 1, "reference": 2}


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    mean = sum(values) / len(values) if values else None
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
    return mean, std


def summarize(observations: list[dict]) -> list[dict]:
    """Mean / sample std / n of AUC over seeds per (method, test, shots); ``best`` marks each column's top mean."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in observations:
        groups[(row["method"], row["test"], row["shots"])].append(row)
    summary = []
    for (method, test, shots), rows in groups.items():
        rows = sorted(rows, key=lambda row: (row["seed"] is None, row["seed"] or 0))
        aucs = [row["auc"] for row in rows if row["auc"] is not None]
        mean, std = _mean_std(aucs)
        gauc_mean, gauc_std = _mean_std([row["gauc"] for row in rows if row.get("gauc") is not None])
        kind = rows[0]["kind"] if rows[0]["kind"] in ("baseline", "reference") else "lora"
        summary.append({"method": method, "kind": kind, "test": test, "shots": shots, "auc_mean": mean, "auc_std": std,
                        "gauc_mean": gauc_mean, "gauc_std": gauc_std,
                        "n": len(aucs), "seeds": [row["seed"] for row in rows], "aucs": [row["auc"] for row in rows],
                        "records": rows[0]["records"], "users": rows[0].get("users"),
                        "gauc_users": rows[0].get("gauc_users"), "best": False})
    columns: dict[tuple, list[dict]] = defaultdict(list)
    for row in summary:
        if row["auc_mean"] is not None:
            columns[(row["test"], row["shots"])].append(row)
    for rows in columns.values():
        top = max(row["auc_mean"] for row in rows)
        for row in rows:
            row["best"] = row["auc_mean"] == top
    summary.sort(key=lambda row: (row["test"], row["shots"], _KIND_ORDER[row["kind"]], row["method"]))
    return summary


def method_order(summary: list[dict]) -> list[str]:
    ordered = sorted({(_KIND_ORDER[row["kind"]], row["method"]) for row in summary})
    return [method for _, method in ordered]


def result_columns(summary: list[dict]) -> list[tuple[str, int]]:
    return sorted({(row["test"], row["shots"]) for row in summary})


def test_users_line(summary: list[dict]) -> str:
    """Per test: records, users, users carrying a per-user AUC, and a warning under MIN_GAUC_USERS."""

    parts = []
    for test in sorted({row["test"] for row in summary}):
        row = next((r for r in summary if r["test"] == test and r.get("users") is not None), None)
        if row is None:
            parts.append(f"{test}: users unknown (records without user_id: no GAUC)")
            continue
        text = f"{test}: {row['records']} records, {row['users']} users ({row['gauc_users']} with both labels)"
        if row["gauc_users"] < MIN_GAUC_USERS:
            text += f" - under {MIN_GAUC_USERS}: GAUC mostly reflects a few users"
        parts.append(text)
    return "; ".join(parts)


def write_report(sweep_dir: str | Path, summary: list[dict], observations: list[dict], config_hash: str | None) -> dict:
    """results.json, results.csv (one line per method x test x shots) and sweep.png, each atomically."""
    import csv
    import io

    sweep_dir = Path(sweep_dir)
    ordered = sorted(observations, key=lambda row: (row["test"], row["shots"], row["method"],
                                                    row["seed"] is None, row["seed"] or 0))
    payload = {"config_hash": config_hash, "methods": method_order(summary),
               "columns": [{"test": test, "shots": shots} for test, shots in result_columns(summary)],
               "summary": summary, "observations": ordered, "missing_cells": missing_cells(sweep_dir)}
    write_json_atomic(sweep_dir / "results.json", payload)
    buffer = io.StringIO()
    fields = ["method", "kind", "test", "shots", "auc_mean", "auc_std", "gauc_mean", "gauc_std", "n", "best"]
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(summary)
    write_text_atomic(sweep_dir / "results.csv", buffer.getvalue())
    with atomic_path(sweep_dir / "sweep.png") as tmp:
        plot_results(summary, tmp)
    return payload


def plot_results(summary: list[dict], path: str | Path) -> None:
    """AUC (top) and per-user AUC (bottom) vs training samples (log2 x), one column per test: mean ± std
    per method, zero-shot as a dotted line in its method's colour, few-shot baselines dashed, full-data
    references as dash-dot lines, chance at 0.5."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tests = sorted({row["test"] for row in summary}) or ["(no results)"]
    methods = method_order(summary)
    colours = {method: plt.get_cmap("tab10")(number % 10) for number, method in enumerate(methods)}
    figure, axes = plt.subplots(2, len(tests), figsize=(5.5 * len(tests), 8.0), squeeze=False)
    for metric, axis_row in zip(("auc", "gauc"), axes):
        for axis, test in zip(axis_row, tests):
            _plot_panel(axis, [row for row in summary if row["test"] == test], methods, colours, metric)
            axis.set(title=f"{test}: {'AUC' if metric == 'auc' else 'per-user AUC (GAUC)'}",
                     ylabel="AUC" if metric == "auc" else "GAUC")
    figure.tight_layout()
    figure.savefig(path, dpi=120, format="png")
    plt.close(figure)


def _plot_panel(axis, summary: list[dict], methods: list[str], colours: dict, metric: str) -> None:
    mean, std = f"{metric}_mean", f"{metric}_std"
    shots_seen = sorted({row["shots"] for row in summary if row["shots"] > 0})
    for method in methods:
        rows = sorted((row for row in summary if row["method"] == method and row.get(mean) is not None),
                      key=lambda row: row["shots"])
        if not rows:
            continue
        kind = rows[0]["kind"]
        if kind == "reference":
            axis.axhline(rows[0][mean], color=colours[method], linestyle="-.", linewidth=1.4, label=method)
            continue
        trained = [row for row in rows if row["shots"] > 0]
        baseline = kind == "baseline"
        if trained:
            axis.errorbar([row["shots"] for row in trained], [row[mean] for row in trained],
                          yerr=[row[std] or 0.0 for row in trained], label=method, color=colours[method],
                          marker="s" if baseline else "o", linestyle="--" if baseline else "-", capsize=3,
                          linewidth=1.0 if baseline else 1.8)
        for row in rows:
            if row["shots"] == 0:
                axis.axhline(row[mean], color=colours[method], linestyle=":", linewidth=1.5,
                             label=f"{method} zero-shot")
    axis.axhline(0.5, color="grey", linewidth=0.8, linestyle="-", alpha=0.6, label="chance (0.5)")
    if shots_seen:
        axis.set_xscale("log", base=2)
        axis.set_xticks(shots_seen, [str(value) for value in shots_seen])
        axis.minorticks_off()
    axis.set(xlabel="training samples (log2)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="best")


def build_report(sweep_dir: str | Path) -> list[dict]:
    """Rebuild results.json / results.csv / sweep.png from the cell folders and baseline files alone."""
    sweep_dir = Path(sweep_dir)
    config_hash = read_sweep_record(sweep_dir).config_hash
    observations = collect_observations(sweep_dir)
    if not observations:
        raise ArtifactError(f"{sweep_dir} holds no finished cells yet", "run the sweep (re-running resumes it)")
    summary = summarize(observations)
    write_report(sweep_dir, summary, observations, config_hash)
    return summary
