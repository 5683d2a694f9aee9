"""A sweep's results from its folders alone: one observation per (method, test, shots, seed), mean and std
over seeds, the tuned model's paired differences from every reference at each N (`paired`) and what they
say, results.json / results.csv / sweep.png."""

from __future__ import annotations

import json
import math
import os
import socket
from collections import defaultdict
from pathlib import Path

import numpy as np

from tallrec_cli.core.errors import ArtifactError
from tallrec_cli.core.files import MANIFEST_NAME, atomic_path, write_json_atomic, write_text_atomic
from tallrec_cli.core.metrics import MIN_GAUC_USERS
from tallrec_cli.sweep.paired import findings, marks, seed_mean_difference
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


def equal_data_name(label: str, variant: str | None = None) -> str:
    """The row of a reference fitted on a cell's own records: ``equal-data GBDT``."""
    return f"equal-data {label}" + (f" on {variant}" if variant else "")


def full_data_name(label: str, variant: str | None = None) -> str:
    """The row of a reference fitted on the whole training split (the history share learns nothing)."""
    return (label if label == "History share" else f"{label} (full data)") + (f" on {variant}" if variant else "")


def baseline_observations(stored: dict) -> list[dict]:
    """An equal-data file's rows (one of an earlier version, fitted on the records without their histories, keeps
    its plain name until the next run refits it)."""
    name_of = equal_data_name if stored.get("kind") == "equal-data" else lambda plain, variant: plain
    return [{"method": name_of(name, stored.get("variant")), "kind": "baseline", "family": name,
             "domain": stored["domain"], "test": label, "shots": stored["shots"], "seed": stored["seed"],
             "auc": metrics.get("auc"), "gauc": metrics.get("gauc"), "records": metrics.get("n"), "cell": None}
            for label, by_name in stored["tests"].items() for name, metrics in by_name.items()]


def reference_observations(stored: dict, shots_columns: list[int]) -> list[dict]:
    """A full-data reference's result repeated in every shots column (it does not depend on shots)."""
    return [{"method": full_data_name(name, stored.get("variant")), "kind": "reference", "family": name,
             "domain": stored["domain"], "test": label, "shots": shots, "seed": None, "auc": metrics.get("auc"),
             "gauc": metrics.get("gauc"), "records": metrics.get("n"), "cell": None}
            for label, by_name in stored["tests"].items() for name, metrics in by_name.items()
            for shots in shots_columns]


def _cell_results(sweep_dir: Path) -> list[dict]:
    """Every finished cell's sweep-eval.json (a cell without its manifest never finished)."""
    return [json.loads(path.read_text(encoding="utf-8"))
            for path in sorted((sweep_dir / "cells").glob(f"*/{CELL_RESULT_NAME}"))
            if (path.parent / MANIFEST_NAME).is_file()]


def _stored_references(sweep_dir: Path) -> list[dict]:
    return [json.loads(path.read_text(encoding="utf-8")) for path in sorted((sweep_dir / "baselines").glob("*.json"))]


def collect_observations(sweep_dir: str | Path) -> list[dict]:
    """Every observation, read from the cell folders and baseline files alone."""
    sweep_dir = Path(sweep_dir)
    results = _cell_results(sweep_dir)
    shots_columns = sorted({result["shots"] for result in results if result["shots"] > 0})
    baselines = [reference_observations(item, shots_columns) if item.get("kind") == "reference"
                 else baseline_observations(item) for item in _stored_references(sweep_dir)]
    return cell_observations(results) + [row for rows in baselines for row in rows]


def _tuned_predictions(sweep_dir: Path, results: list[dict], notes: list[str]) -> dict[tuple, dict]:
    """{(method, test, shots, seed): the trained cell's per-record scores} from its eval folders."""
    tuned = {}
    for result in results:
        if result["shots"] == 0:
            continue
        for label, test in result["tests"].items():
            if not test.get("folder"):
                continue  # a runner that keeps no predictions: no paired comparison
            path = sweep_dir / "cells" / result["id"] / test["folder"] / "predictions.jsonl"
            if not path.is_file():
                notes.append(f"cell {result['id']}: {path.relative_to(sweep_dir)} is missing; its paired "
                             "comparisons are left out")
                continue
            rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            users = [row.get("user_id") for row in rows]
            entry = {"cell": result["id"], "ids": [row.get("id") for row in rows],
                     "labels": np.array([row["label"] for row in rows], dtype=np.int64),
                     "users": users if all(user is not None for user in users) else None,
                     "scores": np.array([row["p_yes"] for row in rows], dtype=np.float64)}
            for method in result["methods"]:
                tuned[(method, label, result["shots"], result["seed"])] = entry
    return tuned


def _reference_scores(stored: list[dict]) -> dict[str, list[tuple[str, str, str, list, np.ndarray]]]:
    """{cell id: [(kind, reference row name, test, record ids, scores) of every reference stored beside it]};
    a file's score arrays are shared by all its cells (a full-data reference stands beside every cell)."""
    beside = defaultdict(list)
    for item in stored:
        kind = "reference" if item.get("kind") == "reference" else "baseline"
        name = full_data_name if kind == "reference" else equal_data_name
        scored = [(kind, name(label, item.get("variant")), test, predictions["ids"],
                   np.asarray(scores, dtype=np.float64))
                  for test, predictions in (item.get("predictions") or {}).items()
                  for label, scores in predictions.items() if label != "ids"]
        for cell in item.get("cells") or []:  # files of an earlier version list no cells and hold no scores
            beside[cell].extend(scored)
    return beside


def paired_comparisons(sweep_dir: str | Path, notes: list[str] | None = None) -> list[dict]:
    """The tuned model minus each reference per (test, tuned method, N): paired AUC and GAUC differences on
    the same test records, averaged over the seeds that have both (`paired.seed_mean_difference`)."""
    sweep_dir = Path(sweep_dir)
    notes = [] if notes is None else notes
    tuned = _tuned_predictions(sweep_dir, _cell_results(sweep_dir), notes)
    beside = _reference_scores(_stored_references(sweep_dir))
    groups: dict[tuple, list[tuple[int, dict]]] = defaultdict(list)
    for (method, test, shots, seed), entry in tuned.items():
        groups[(method, test, shots)].append((seed, entry))
    comparisons, memos = [], {}
    for (method, test, shots), seeds in sorted(groups.items(), key=lambda item: (item[0][1], item[0][0], item[0][2])):
        seeds.sort(key=lambda item: item[0])
        pairs: dict[tuple[str, str], list[tuple[int, np.ndarray, np.ndarray]]] = defaultdict(list)
        for seed, entry in seeds:
            for kind, reference, label, ids, scores in beside.get(entry["cell"], []):
                if label != test:
                    continue
                if ids != entry["ids"]:
                    notes.append(f"cell {entry['cell']}: {reference} was scored on other {test} records; "
                                 "left out of the comparison")
                    continue
                pairs[(kind, reference)].append((seed, entry["scores"], scores))
        first = seeds[0][1]
        memo = memos.setdefault(test, {})  # one test's records: its tuned and full-data scores are read once
        for (kind, reference), rows in pairs.items():
            difference = seed_mean_difference(first["labels"], [(a, b) for _, a, b in rows], first["users"], memo=memo)
            comparisons.append({"test": test, "method": method, "shots": shots, "reference": reference, "kind": kind,
                                "seeds": [seed for seed, _, _ in rows], **difference,
                                "verdict": "/".join(marks(difference).values())})
    return comparisons
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


def _range(values: list[float]) -> list[float] | None:
    return [min(values), max(values)] if values else None


def summarize(observations: list[dict]) -> list[dict]:
    """Mean / sample std / range / n of AUC and GAUC over seeds per (method, test, shots); ``best`` marks each
    column's top mean AUC."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in observations:
        groups[(row["method"], row["test"], row["shots"])].append(row)
    summary = []
    for (method, test, shots), rows in groups.items():
        rows = sorted(rows, key=lambda row: (row["seed"] is None, row["seed"] or 0))
        aucs = [row["auc"] for row in rows if row["auc"] is not None]
        mean, std = _mean_std(aucs)
        gaucs = [row["gauc"] for row in rows if row.get("gauc") is not None]
        gauc_mean, gauc_std = _mean_std(gaucs)
        kind = rows[0]["kind"] if rows[0]["kind"] in ("baseline", "reference") else "lora"
        summary.append({"method": method, "kind": kind, "family": rows[0].get("family"), "test": test, "shots": shots,
                        "auc_mean": mean, "auc_std": std, "auc_range": _range(aucs),
                        "gauc_mean": gauc_mean, "gauc_std": gauc_std, "gauc_range": _range(gaucs),
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
    """results.json (with the paired comparisons and their findings), results.csv (one line per method x
    test x shots) and sweep.png, each atomically; returns what results.json holds."""
    import csv
    import io

    sweep_dir = Path(sweep_dir)
    ordered = sorted(observations, key=lambda row: (row["test"], row["shots"], row["method"],
                                                    row["seed"] is None, row["seed"] or 0))
    notes: list[str] = []
    comparisons = paired_comparisons(sweep_dir, notes)
    payload = {"config_hash": config_hash, "methods": method_order(summary),
               "columns": [{"test": test, "shots": shots} for test, shots in result_columns(summary)],
               "summary": summary, "observations": ordered, "comparisons": comparisons,
               "findings": findings(comparisons), "notes": notes, "missing_cells": missing_cells(sweep_dir)}
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


def _colour_key(row: dict) -> str:
    """One colour per reference family, shared by its equal-data curve and its full-data line."""
    return row["method"].removeprefix("equal-data ").replace(" (full data)", "") if row["kind"] != "lora" else row["method"]


def plot_results(summary: list[dict], path: str | Path) -> None:
    """AUC (top) and per-user AUC (bottom) against training samples N (log2 x), one column per test: the
    tuned model and each equal-data reference as the mean over seeds with the seeds' range as an interval
    (equal-data dashed, nudged sideways so intervals do not hide each other), zero-shot dotted in its method's
    colour, full-data references as dash-dot lines in their equal-data curve's colour, chance at 0.5."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tests = sorted({row["test"] for row in summary}) or ["(no results)"]
    methods = method_order(summary)
    tuned = [method for method in methods if any(row["method"] == method and row["kind"] == "lora" for row in summary)]
    families = list(dict.fromkeys(_colour_key(row) for method in methods for row in summary
                                  if row["method"] == method and row["kind"] != "lora"))
    colours = {key: plt.get_cmap("Dark2")(number % 8) for number, key in enumerate(tuned)}
    colours.update({key: plt.get_cmap("tab10")(number % 10) for number, key in enumerate(families)})
    figure, axes = plt.subplots(2, len(tests), figsize=(6.0 * len(tests), 8.5), squeeze=False)
    for metric, axis_row in zip(("auc", "gauc"), axes):
        for axis, test in zip(axis_row, tests):
            _plot_panel(axis, [row for row in summary if row["test"] == test], methods, colours, metric)
            axis.set(title=f"{test}: {'AUC' if metric == 'auc' else 'per-user AUC (GAUC)'}",
                     ylabel="AUC" if metric == "auc" else "GAUC")
    handles = {label: handle for axis in axes.flat for handle, label in zip(*axis.get_legend_handles_labels())}
    # the table's order: tuned methods (each before its zero-shot line), equal-data, full-data, chance
    rank = {**{method: 2 * number for number, method in enumerate(methods)},
            **{f"{method} zero-shot": 2 * number + 1 for number, method in enumerate(methods)}}
    labels = sorted(handles, key=lambda label: rank.get(label, 2 * len(methods)))
    figure.legend([handles[label] for label in labels], labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    rows_of_legend = -(-len(handles) // 3)
    figure.tight_layout(rect=(0, 0.025 * rows_of_legend + 0.01, 1, 1))
    figure.savefig(path, dpi=120, format="png")
    plt.close(figure)


def _plot_panel(axis, summary: list[dict], methods: list[str], colours: dict, metric: str) -> None:
    mean, spread = f"{metric}_mean", f"{metric}_range"
    shots_seen = sorted({row["shots"] for row in summary if row["shots"] > 0})
    curves = [method for method in methods if any(row["method"] == method and row["kind"] != "reference"
                                                  and row["shots"] > 0 for row in summary)]
    for method in methods:
        rows = sorted((row for row in summary if row["method"] == method and row.get(mean) is not None),
                      key=lambda row: row["shots"])
        if not rows:
            continue
        colour = colours[_colour_key(rows[0])]
        if rows[0]["kind"] == "reference":
            axis.axhline(rows[0][mean], color=colour, linestyle="-.", linewidth=1.3, label=method)
            continue
        trained = [row for row in rows if row["shots"] > 0]
        baseline = rows[0]["kind"] == "baseline"
        if trained:
            nudge = 2 ** (0.04 * (curves.index(method) - (len(curves) - 1) / 2))
            values = np.array([row[mean] for row in trained])
            spreads = np.array([row[spread] or [row[mean]] * 2 for row in trained]).T
            axis.errorbar([row["shots"] * nudge for row in trained], values,
                          yerr=np.clip([values - spreads[0], spreads[1] - values], 0, None), label=method,
                          color=colour, marker="s" if baseline else "o", markersize=4 if baseline else 6,
                          linestyle="--" if baseline else "-", capsize=2, linewidth=1.0 if baseline else 2.2,
                          zorder=2 if baseline else 3)
        for row in rows:
            if row["shots"] == 0:
                axis.axhline(row[mean], color=colour, linestyle=":", linewidth=1.5, label=f"{method} zero-shot")
    axis.axhline(0.5, color="grey", linewidth=0.8, linestyle="-", alpha=0.6, label="chance (0.5)")
    if shots_seen:
        axis.set_xscale("log", base=2)
        axis.set_xticks(shots_seen, [str(value) for value in shots_seen])
        axis.minorticks_off()
    axis.set(xlabel="training records N (log scale; bars: range over seeds)")
    axis.grid(alpha=0.3)


def build_report(sweep_dir: str | Path) -> dict:
    """Rebuild results.json / results.csv / sweep.png from the cell folders and baseline files alone; returns
    what results.json holds."""
    sweep_dir = Path(sweep_dir)
    config_hash = read_sweep_record(sweep_dir).config_hash
    observations = collect_observations(sweep_dir)
    if not observations:
        raise ArtifactError(f"{sweep_dir} holds no finished cells yet", "run the sweep (re-running resumes it)")
    return write_report(sweep_dir, summarize(observations), observations, config_hash)
