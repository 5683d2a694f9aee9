"""`tallrec audit`: where a scorer's AUC comes from, and whether the test set can be trusted.

Any scorer (a model or a baseline) is a callable from records to P(like); the audit scores the test
records as they are, with each history shuffled (seeded) and with the history removed, both re-rendered
through the record's own template, and slices the metrics by how often the user and the item occur in
training and by item-popularity decile. Leakage checks read the records only: the target inside its own
history, identical records across splits, user/item overlap (facts), and test interactions older than
training ones when the dataset manifest says its split is ordered in time.

Counts "in training" are training *records* (labelled interactions) with that user or that target item;
items are keyed by ``item_id``, else by title (imported TALLRec JSON has titles only).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data_builders import load_split
from data_builders.bias import history_key, item_key, user_key
from data_builders.structure import find_template, has_structure, labels_of, shortened, users_of
from tallrec_cli.core.errors import ConfigError, DataError
from tallrec_cli.core.files import check_output_folder, staged_dir, write_json_atomic
from tallrec_cli.core.manifests import write_manifest
from tallrec_cli.core.metrics import BOOTSTRAP_RESAMPLES, compute_metrics, paired_difference
from tallrec_cli.eval.baselines import BASELINES, make_baseline, require_structure
from tallrec_cli.eval.score import evaluate_records, model_description
from tallrec_cli.model.scoring import resolve_scoring

Progress = Callable[[int], None]
EXAMPLES = 5  # record ids listed per leak
TEMPORAL_SPLITS = {"temporal": "global", "last-n": "per-user", "leave-last-out": "per-user"}
AUDIT_KIND = "audit"


@dataclass
class Scorer:
    """P(like) per record; ``score(records, on_progress)`` must keep the records' order."""

    name: str
    label: str
    score: Callable[[list[dict], Progress | None], np.ndarray]
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AuditSpec:
    resamples: int = BOOTSTRAP_RESAMPLES
    seed: int = 0
    warm_min: int = 10  # training records from which a user or item counts as warm
    deciles: int = 10


def baseline_scorer(name: str, train: Sequence[dict] | None, seed: int = 0) -> Scorer:
    """A baseline fitted once on ``train``; scoring the shuffled or ablated records reuses the fit."""

    baseline = make_baseline(name, seed)
    if baseline.needs_train:
        if not train:
            raise ConfigError(f"baseline {name} needs training records", "pass --train DATASET")
        baseline.fit(train)
    info = baseline.info()

    def score(records: list[dict], on_progress: Progress | None = None) -> np.ndarray:
        scores = baseline.score(records)
        info.update(baseline.info())  # cold-user/item counts are known only once records are scored
        if on_progress:
            on_progress(len(records))
        return scores

    return Scorer(name, BASELINES[name].label, score, info)


def model_scorer(inference, template: str | None = None, label_words: Sequence[str] | None = None,
                 mode: str = "pair", batch_size: int | None = None, prefix_cache: str = "auto") -> Scorer:
    """A loaded model (``models.load_for_inference``) scoring records through ``evaluate_records``."""

    spec = resolve_scoring(inference, template, label_words, mode, batch_size, prefix_cache)

    def score(records: list[dict], on_progress: Progress | None = None) -> np.ndarray:
        scores, _ = evaluate_records(inference, records, spec, resamples=0, on_batch=on_progress)
        return scores

    label = "tuned model" if inference.adapter else "model"
    return Scorer("model", label, score, {**model_description(inference), **spec.describe()})


# --- re-rendered histories ---------------------------------------------------------------------------------

def _templates(records: Sequence[dict], near: str | Path | None) -> dict:
    names = {record.get("template") for record in records}
    found = {name: find_template(name, near) for name in names}
    missing = sorted(str(name) for name, template in found.items() if template is None)
    if missing:
        raise DataError(f"cannot re-render the records: template {', '.join(missing)} not found",
                        "pass the test as a file inside its dataset folder (which holds template.yaml for a "
                        "custom template), or rebuild it with a bundled template")
    return found


def shuffled_histories(records: Sequence[dict], seed: int, near: str | Path | None = None) -> tuple[list[dict], int]:
    """Each record with its history in a seeded random order other than the original (histories of two or
    more items), re-rendered; and how many histories were reordered."""
    templates = _templates(records, near)
    rng = np.random.default_rng(seed)
    result, changed = [], 0
    for record in records:
        items = record["history"]
        order = np.arange(len(items))
        while len(items) > 1 and np.all(order == np.arange(len(items))):  # a shuffle that moves something
            order = rng.permutation(len(items))
        changed += len(items) > 1
        result.append(shortened({**record, "history": [items[i] for i in order]}, 0, templates[record.get("template")]))
    return result, changed


def without_history(records: Sequence[dict], near: str | Path | None = None) -> list[dict]:
    """Each record with an empty history, re-rendered: what the target item alone earns."""
    templates = _templates(records, near)
    return [shortened(record, len(record["history"]), templates[record.get("template")]) for record in records]


# --- slices ----------------------------------------------------------------------------------------------

def training_counts(train: Sequence[dict]) -> tuple[Counter, Counter]:
    """Training records per user and per target item."""
    return Counter(user_key(r) for r in train if user_key(r) is not None), Counter(item_key(r) for r in train)


def _slice(name: str, member: np.ndarray, labels: np.ndarray, scores: np.ndarray, users: list | None,
           spec: AuditSpec, **extra) -> dict:
    row = {"group": name, **extra, "records": int(member.sum())}
    if not member.any():
        return {**row, "positives": 0, "auc": None, "auc_ci95": None, "gauc": None, "gauc_ci95": None,
                "users": None if users is None else 0, "gauc_users": None}
    metrics = compute_metrics(labels[member], scores[member],
                              None if users is None else [u for u, m in zip(users, member) if m],
                              spec.resamples, spec.seed)
    return {**row, **{key: metrics[key] for key in ("positives", "auc", "auc_ci95", "gauc", "gauc_ci95", "users",
                                                     "gauc_users")}}


def warm_cold(counts: np.ndarray, labels: np.ndarray, scores: np.ndarray, users: list | None,
              spec: AuditSpec, what: str) -> list[dict]:
    """Cold (never in training), rare (1 to warm_min - 1 training records) and warm slices."""
    bands = (("cold", counts == 0, "0"), ("rare", (counts > 0) & (counts < spec.warm_min), f"1-{spec.warm_min - 1}"),
             ("warm", counts >= spec.warm_min, f">={spec.warm_min}"))
    return [_slice(f"{band} {what}", member, labels, scores, users, spec, train_records=text)
            for band, member, text in bands]


def popularity_deciles(counts: np.ndarray, labels: np.ndarray, scores: np.ndarray, users: list | None,
                       spec: AuditSpec) -> list[dict]:
    """Test records cut into (up to) ``spec.deciles`` quantile bins of their item's training count; tied
    counts stay in one bin, so skewed counts give fewer bins."""
    edges = np.unique(np.quantile(counts, np.linspace(0, 1, spec.deciles + 1)))
    bins = np.searchsorted(edges[1:-1], counts, side="left")  # right-closed bins, as pandas.qcut
    rows = []
    for number, code in enumerate(np.unique(bins), start=1):
        member = bins == code
        low, high = int(counts[member].min()), int(counts[member].max())
        rows.append(_slice(f"decile {number}", member, labels, scores, users, spec,
                           train_records=f"{low}" if low == high else f"{low}-{high}"))
    return rows


# --- history sensitivity ------------------------------------------------------------------------------------

def sensitivity(labels: np.ndarray, scores: np.ndarray, changed: np.ndarray, users: list | None,
                spec: AuditSpec) -> dict:
    """AUC/GAUC of the changed scores and their paired difference from the original ones (changed - original)."""
    metrics = compute_metrics(labels, changed, users, resamples=0)
    difference = paired_difference(labels, changed, scores, users, spec.resamples, spec.seed)
    return {"auc": metrics["auc"], "gauc": metrics["gauc"], **difference,
            "mean_abs_score_change": float(np.mean(np.abs(changed - scores))),
            "records_score_changed": int(np.sum(~np.isclose(changed, scores, rtol=0, atol=1e-9)))}


def _history_lift(full: float | None, without: float | None) -> float | None:
    """Share of the AUC above chance that disappears without the history."""
    if full is None or without is None or full <= 0.5:
        return None
    return (full - without) / (full - 0.5)


# --- leakage ---------------------------------------------------------------------------------------------

def _check(name: str, status: str, count: int | None, total: int | None, detail: str,
           examples: Sequence[str] = ()) -> dict:
    return {"check": name, "status": status, "count": count, "total": total, "detail": detail,
            "examples": [str(e) for e in list(examples)[:EXAMPLES]]}


def target_in_history(records: Sequence[dict], split: str) -> dict:
    hits = [r.get("id") for r in records if item_key(r) in {history_key(item) for item in r["history"]}]
    return _check(f"target in own history ({split})", "leak" if hits else "ok", len(hits), len(records),
                  f"{len(hits)} of {len(records)} {split} records list their target item in their history", hits)


def duplicates_across(other: Sequence[dict], test: Sequence[dict], split: str = "train") -> list[dict]:
    """Test records that also stand in split ``split``: by user + item + label (needs ids), and by prompt."""
    checks, name = [], f"in {split} and test"
    if all(user_key(r) is not None for r in (*other, *test)):
        seen = {(user_key(r), item_key(r), int(r["label"])) for r in other}
        hits = [r.get("id") for r in test if (user_key(r), item_key(r), int(r["label"])) in seen]
        checks.append(_check(f"same user+item+label {name}", "leak" if hits else "ok", len(hits), len(test),
                             f"{len(hits)} test records repeat a {split} record's user, item and label", hits))
    else:
        checks.append(_check(f"same user+item+label {name}", "skipped", None, len(test),
                             "the records carry no user_id"))
    prompts = {(r["instruction"], r["input"]) for r in other}
    hits = [r.get("id") for r in test if (r["instruction"], r["input"]) in prompts]
    checks.append(_check(f"same prompt {name}", "leak" if hits else "ok", len(hits), len(test),
                         f"{len(hits)} test prompts appear word for word in {split}", hits))
    return checks


def overlap(train: Sequence[dict], test: Sequence[dict]) -> list[dict]:
    """Test users and items also seen in training: facts, not leaks (most splits share users by design)."""
    checks = []
    for what, key in (("users", user_key), ("items", item_key)):
        test_keys = {key(r) for r in test} - {None}
        if not test_keys:
            checks.append(_check(f"{what} in train and test", "skipped", None, None,
                                 f"the records carry no {what[:-1]} id"))
            continue
        shared = test_keys & {key(r) for r in train}
        checks.append(_check(f"{what} in train and test", "fact", len(shared), len(test_keys),
                             f"{len(shared)} of {len(test_keys)} test {what} also occur in training"))
    return checks


def dataset_manifest(*paths: str | Path | None) -> dict | None:
    """The dataset manifest of the first path (a dataset folder or a file inside one) that has one."""
    for path in paths:
        if path is None:
            continue
        folder = Path(path) if Path(path).is_dir() else Path(path).parent
        manifest = folder / "manifest.json"
        if manifest.is_file():
            data = json.loads(manifest.read_text(encoding="utf-8"))
            if data.get("kind") == "dataset":
                return data
    return None


def time_order(train: Sequence[dict], test: Sequence[dict], manifest: dict | None) -> dict:
    """Test interactions older than training ones, where the manifest's split claims time order: globally
    for ``temporal``, within each user for ``last-n`` and ``leave-last-out``."""
    name = "test older than train"
    strategy = ((manifest or {}).get("config") or {}).get("split")
    if strategy not in TEMPORAL_SPLITS:
        reason = ("no dataset manifest beside the data" if manifest is None else
                  "the dataset manifest names no split" if strategy is None else f"split {strategy!r} is not temporal")
        return _check(name, "skipped", None, None, f"{reason}: no time order is claimed")
    stamped = [r for r in test if r.get("timestamp") is not None]
    train_times = [r["timestamp"] for r in train if r.get("timestamp") is not None]
    if not stamped or not train_times:
        return _check(name, "skipped", None, None, f"split {strategy!r} claims time order, but the records carry "
                      "no timestamps")
    if TEMPORAL_SPLITS[strategy] == "global":
        newest = max(train_times)
        hits = [r.get("id") for r in stamped if r["timestamp"] < newest]
        detail = f"{len(hits)} test records are older than the newest training record ({strategy} split)"
    else:
        newest_of: dict[str, Any] = defaultdict(lambda: None)
        for record in train:
            user, stamp = user_key(record), record.get("timestamp")
            if stamp is not None and (newest_of[user] is None or stamp > newest_of[user]):
                newest_of[user] = stamp
        hits = [r.get("id") for r in stamped
                if newest_of.get(user_key(r)) is not None and r["timestamp"] < newest_of[user_key(r)]]
        detail = f"{len(hits)} test records are older than their user's newest training record ({strategy} split)"
    return _check(name, "leak" if hits else "ok", len(hits), len(stamped), detail, hits)


def leakage(train: Sequence[dict] | None, test: Sequence[dict], manifest: dict | None,
            valid: Sequence[dict] | None = None) -> list[dict]:
    checks = [target_in_history(test, "test")]
    if train is None:
        return checks + [_check("train/test checks", "skipped", None, None, "needs --train")]
    if all(has_structure(record) for record in train):
        checks.append(target_in_history(train, "train"))
    else:
        checks.append(_check("target in own history (train)", "skipped", None, len(train),
                             "training records without history structure"))
    checks += duplicates_across(train, test) + (duplicates_across(valid, test, "valid") if valid else [])
    return checks + overlap(train, test) + [time_order(train, test, manifest)]


def valid_records(train_path: str | Path | None) -> list[dict] | None:
    """The valid split beside the training data, when --train is a dataset folder that has one."""

    folder = None if train_path is None else Path(train_path)
    if folder is None or not folder.is_dir() or not any((folder / f"valid{suffix}").is_file()
                                                        for suffix in (".jsonl", ".json")):
        return None
    return load_split(folder, "valid")


# --- the audit ---------------------------------------------------------------------------------------------

def run_audit(scorer: Scorer, test: Sequence[dict], train: Sequence[dict] | None = None, spec: AuditSpec = AuditSpec(),
              test_path: str | Path | None = None, train_path: str | Path | None = None,
              on_stage: Callable[[str, int], Progress | None] | None = None,
              valid: Sequence[dict] | None = None) -> dict[str, Any]:
    """Every section of the audit as one JSON-ready dict (see the module docstring); ``valid`` (the
    dataset's valid split) is checked for records repeated in the test too."""
    test = list(test)
    if not test:
        raise DataError("no test records to audit", "pass a non-empty test file")
    require_structure(test, "audit")
    # every re-rendering is done before any scoring, so a missing template fails fast
    shuffled, reordered = shuffled_histories(test, spec.seed, test_path)
    ablated = without_history(test, test_path)

    def score(what: str, records: list[dict]) -> np.ndarray:
        return np.asarray(scorer.score(records, on_stage(what, len(records)) if on_stage else None), dtype=np.float64)

    labels, users = labels_of(test), users_of(test)
    scores = score("test records", test)
    notes = [] if users is not None else ["the records carry no user_id: no GAUC and no user slices"]
    overall = compute_metrics(labels, scores, users, spec.resamples, spec.seed)
    result: dict[str, Any] = {
        "scorer": {"name": scorer.name, "label": scorer.label, **scorer.info},
        "spec": {"resamples": spec.resamples, "seed": spec.seed, "warm_min": spec.warm_min, "deciles": spec.deciles},
        "test": {"path": None if test_path is None else str(test_path), "records": len(test)},
        "train": None if train is None else {"path": None if train_path is None else str(train_path),
                                             "records": len(train)},
        "overall": overall,
    }
    if train is None:
        result["slices"] = None
        notes.append("no training data (--train): warm/cold and popularity slices and the train/test leakage "
                     "checks are skipped")
    else:
        user_counts, item_counts = training_counts(train)
        per_item = np.array([item_counts.get(item_key(r), 0) for r in test])
        slices = {"items": warm_cold(per_item, labels, scores, users, spec, "items"),
                  "popularity_deciles": popularity_deciles(per_item, labels, scores, users, spec)}
        if users is not None:
            per_user = np.array([user_counts.get(user_key(r), 0) for r in test])
            slices["users"] = warm_cold(per_user, labels, scores, users, spec, "users")
        result["slices"] = slices
    order = sensitivity(labels, scores, score("shuffled histories", shuffled), users, spec)
    result["history_order"] = {**order, "records_reordered": reordered,
                               "shuffle": f"one seeded permutation per history, never the original order "
                                          f"(seed {spec.seed}), re-rendered through the record's template"}
    ablation = sensitivity(labels, scores, score("without history", ablated), users, spec)
    result["history_ablation"] = {**ablation, "auc_lift_share_from_history": _history_lift(overall["auc"],
                                                                                           ablation["auc"])}
    result["leakage"] = leakage(train, test, dataset_manifest(test_path, train_path), valid)
    result["leaks_found"] = [check["check"] for check in result["leakage"] if check["status"] == "leak"]
    result["notes"] = notes + overall["notes"]
    return result


def check_output(folder: str | Path, overwrite: bool) -> None:
    """Refuse a taken output folder before any scoring (``staged_dir`` would refuse it only at the end)."""
    check_output_folder(folder, AUDIT_KIND, overwrite)


def write_audit(folder: str | Path, audit: dict, inputs: dict[str, Any], plots: bool = True,
                overwrite: bool = False) -> Path:
    """audit.json, the PNGs, then manifest.json, into ``folder`` atomically."""

    folder = Path(folder)
    with staged_dir(folder, AUDIT_KIND, overwrite=overwrite) as staging:
        write_json_atomic(staging / "audit.json", audit)
        if plots:
            write_audit_plots(staging, audit)
        write_manifest(staging, AUDIT_KIND, {**inputs, "leaks_found": audit["leaks_found"],
                                          "auc": audit["overall"]["auc"], "gauc": audit["overall"]["gauc"],
                                          "files": sorted(path.name for path in staging.iterdir())})
    return folder


def _bars(axis, rows: list[dict], names: list[str], title: str) -> None:
    """AUC and GAUC bars per row with their 95% intervals (``auc_ci95`` / ``gauc_ci95``)."""
    positions = np.arange(len(rows))
    for offset, metric in ((-0.2, "auc"), (0.2, "gauc")):
        values = np.array([np.nan if row.get(metric) is None else row[metric] for row in rows], dtype=np.float64)
        intervals = [row.get(f"{metric}_ci95") for row in rows]
        errors = np.array([[v - i[0], i[1] - v] if i else [0, 0] for v, i in zip(values, intervals)]).T
        axis.bar(positions + offset, values, width=0.4, yerr=errors, capsize=2, label=metric.upper())
    axis.axhline(0.5, color="grey", linestyle="--", linewidth=0.8)
    axis.set_xticks(positions, names, fontsize=7)
    axis.set(ylim=(0, 1), title=title)
    axis.legend(loc="lower right", fontsize=7)


def _changed_row(overall: dict, change: dict) -> dict:
    """AUC/GAUC after a history change, its interval = the original value + the paired difference interval."""
    row = {}
    for metric in ("auc", "gauc"):
        interval, original = change.get(f"{metric}_diff_ci95"), overall.get(metric)
        row[metric] = change.get(metric)
        row[f"{metric}_ci95"] = None if interval is None else [original + bound for bound in interval]
    return row


def write_audit_plots(folder: Path, audit: dict) -> list[Path]:
    """slices.png (warm/cold users and items, popularity deciles) and history.png (as is, shuffled, no history)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    slices = audit.get("slices")
    if slices:
        panels = [(slices[key], title) for key, title in (("users", "users by training records"),
                                                           ("items", "items by training records"),
                                                           ("popularity_deciles", "item-popularity deciles"))
                  if key in slices]
        widths = [max(3, len(rows)) for rows, _ in panels]  # a bar pair per row, deciles get the room they need
        figure, axes = plt.subplots(1, len(panels), figsize=(0.9 * sum(widths) + 1.5, 4), squeeze=False,
                                    gridspec_kw={"width_ratios": widths})
        for axis, (rows, title) in zip(axes[0], panels):
            # deciles: the number over its range of training records; others: the band and its range
            names = [f"{row['group'].removeprefix('decile ')}\n{row['train_records']}" for row in rows]
            _bars(axis, rows, names, title)
        written.append(folder / "slices.png")
        figure.savefig(written[-1], dpi=110, bbox_inches="tight")
        plt.close(figure)
    figure, axis = plt.subplots(figsize=(5, 4))
    overall = audit["overall"]
    rows = [overall, _changed_row(overall, audit["history_order"]), _changed_row(overall, audit["history_ablation"])]
    _bars(axis, rows, ["as is", "shuffled\nhistory", "no\nhistory"],
          f"history: {audit['scorer']['label']} (paired 95% CI)")
    written.append(folder / "history.png")
    figure.savefig(written[-1], dpi=110, bbox_inches="tight")
    plt.close(figure)
    return written
