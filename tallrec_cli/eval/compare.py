"""A model beside its references on the same records: baselines scored like a model (eval folders of
their own), and comparisons with paired-bootstrap intervals of the AUC and GAUC differences, so "is it
better?" has an answer.

A reference is a baseline name (``tallrec_cli.eval.baselines``) or ``base``: the same model with its
adapter switched off (zero-shot), scored in the same pass as the model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data_builders.structure import labels_of, users_of
from tallrec_cli.core.errors import ConfigError, DataError
from tallrec_cli.core.files import sha256_file, write_json_atomic, write_jsonl_atomic
from tallrec_cli.core.metrics import BOOTSTRAP_RESAMPLES, compute_metrics, paired_difference
from tallrec_cli.eval.baselines import BASELINES, check_baseline_names, fit_and_score
from tallrec_cli.eval.results import write_eval_folder

BASE_MODEL = "base"  # the model without its adapter


@dataclass
class Scored:
    """One scorer's P(like) for a list of records."""

    name: str
    label: str
    scores: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)


def parse_names(values: Sequence[str] | None) -> list[str]:
    """``--compare a,b --compare c`` -> [a, b, c], order kept, repeats dropped."""
    names = [part.strip() for value in values or () for part in value.split(",") if part.strip()]
    return list(dict.fromkeys(names))


def check_references(names: Sequence[str], has_train: bool, has_model: bool) -> list[str]:
    """Every problem with the requested references, before any loading."""
    problems = check_baseline_names([name for name in names if name != BASE_MODEL], has_train)
    if BASE_MODEL in names and not has_model:
        problems.append("'base' (the model without its adapter) needs --adapter")
    return problems


def score_baselines(names: Sequence[str], train: Sequence[dict] | None, records: Sequence[dict],
                    seed: int = 0) -> list[Scored]:
    result = []
    for name in names:
        scores, info = fit_and_score(name, train, records, seed)
        result.append(Scored(name, BASELINES[name].label, scores, info))
    return result


def compare(records: Sequence[dict], primary: Scored, references: Sequence[Scored],
            resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> dict[str, Any]:
    """Metrics of every scorer and the paired differences primary - reference."""
    lengths = {len(primary.scores), *(len(reference.scores) for reference in references)}
    if lengths != {len(records)}:
        raise DataError("the scorers were not run on the same records",
                        "compare scores of one test file: same records, same order")
    labels, users = labels_of(records), users_of(records)
    rows = []
    for scorer in (primary, *references):
        metrics = compute_metrics(labels, scorer.scores, users, resamples, seed)
        row = {"name": scorer.name, "label": scorer.label, "metrics": metrics, "info": scorer.info}
        if scorer is not primary:
            row["difference"] = paired_difference(labels, primary.scores, scorer.scores, users, resamples, seed)
        rows.append(row)
    return {"records": len(records), "primary": primary.name, "rows": rows,
            "bootstrap": {"resamples": resamples, "seed": seed, "level": 0.95,
                          "auc": "records drawn with replacement, the same draw for both scorers",
                          "gauc": "users drawn with replacement (a user's records stay together)"}}


def verdict(difference: dict) -> str:
    """Per metric, AUC then GAUC: '+' when the paired interval of the difference lies above zero (the primary
    scorer wins), '-' below (it loses), '=' when it spans zero, '?' when there is no interval: e.g. '-/='."""
    def mark(interval) -> str:
        if not interval:
            return "?"
        return "+" if interval[0] > 0 else "-" if interval[1] < 0 else "="

    return f"{mark(difference.get('auc_diff_ci95'))}/{mark(difference.get('gauc_diff_ci95'))}"


def write_comparison(folder: Path, records: Sequence[dict], comparison: dict, scorers: Sequence[Scored]) -> None:
    """comparison.json and comparison_predictions.jsonl (every scorer's P(like) per record) in ``folder``."""

    write_json_atomic(folder / "comparison.json", comparison)
    write_jsonl_atomic(folder / "comparison_predictions.jsonl", (
        {"id": record.get("id"), "user_id": record.get("user_id"), "label": record.get("label"),
         **{scorer.name: float(scorer.scores[index]) for scorer in scorers}}
        for index, record in enumerate(records)))


def evaluate_baseline_tests(names: Sequence[str], train: Sequence[dict] | None, train_source: str | None, tests,
                            output_root: str | Path, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0,
                            plots: bool = False, overwrite: bool = False,
                            on_start: Callable[[str], None] | None = None) -> list[dict]:
    """Each baseline on each test into ``output_root/<baseline>/<test>/`` (metrics.json, predictions.jsonl,
    manifest.json), like a model's eval; returns one {baseline, test, folder, metrics} each."""

    problems = check_references(names, train is not None, has_model=False)
    if problems:
        raise ConfigError("; ".join(problems))
    results = []
    for name in names:
        for test in tests:
            if on_start:
                on_start(f"{name} on {test.name}")
            scores, info = fit_and_score(name, train, test.records, seed)
            metrics = compute_metrics(labels_of(test.records), scores, users_of(test.records), resamples, seed)
            metrics.update(test=test.name, source=str(test.path), score_mode=f"baseline:{name}", baseline=info)
            inputs = {"baseline": name, "train": train_source,
                      "test": {"name": test.name, "path": str(test.path.resolve()), "split": test.split,
                               "limit": test.limit, "sha256": sha256_file(test.path) if test.path.is_file() else None}}
            folder = write_eval_folder(Path(output_root) / name / test.name, test.records, scores, metrics, inputs,
                                       plots, overwrite)
            results.append({"baseline": name, "test": test.name, "folder": str(folder), "metrics": metrics})
    return results


def cold_note(info: dict) -> str | None:
    """'gbdt: 70 of 3050 records have a user and 113 an item unseen in training ...', or None."""
    cold = info.get("cold") or {}
    parts = [f"{cold[key]} {what}" for key, what in (("records_with_cold_user", "a user"),
                                                     ("records_with_cold_item", "an item")) if cold.get(key)]
    if not parts:
        return None
    return (f"{info['baseline']}: of {cold['records']} records, {' and '.join(parts)} unseen in training "
            "(their statistics fall back to the training prior)")
