"""Evaluation and prediction: score records with P(yes), compute metrics, write eval folders.

``resolve_scoring`` fixes how a model scores (template, label tokens, mode, batch size, prefix cache) once;
``evaluate_records`` scores one list of records (calibration and audit call it); ``evaluate_tests`` (eval and
sweep) adds reading test files and writing ``<root>/<test-name>/`` folders (metrics.json, predictions.jsonl,
optional plots, manifest.json written last). ``predict_rows`` scores new histories and candidates.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tallrec_cli.calibration import Calibration, applied, calibration_metrics
from tallrec_cli.errors import ConfigError, DataError, ModelError
from tallrec_cli.io import read_manifest, sha256_file, staged_dir, write_json_atomic, write_jsonl_atomic
from tallrec_cli.manifests import EvalManifest
from tallrec_cli.metrics import BOOTSTRAP_RESAMPLES, compute_metrics, ranking_metrics
from tallrec_cli.prompts import load_template, resolve_label_tokens
from tallrec_cli.scoring import ScoringSpec

DEFAULT_TEMPLATE = "alpaca"
DEFAULT_LABEL_WORDS = ("Yes", "No")
DEFAULT_RANK_KS = (1, 3, 5, 10)
DOMAINS = ("movie", "book")
SPLIT_NAMES = ("train", "valid", "test")


def resolve_scoring(inference, template: str | None = None, label_words: Sequence[str] | None = None,
                    mode: str = "pair", batch_size: int | None = None, prefix_cache: str = "auto") -> ScoringSpec:
    """The scoring spec for ``inference`` (a ``models.InferenceModel``, weights loaded or not yet).

    Template and label words: explicit arguments win; otherwise what the run / export manifest recorded;
    otherwise the defaults (alpaca, Yes/No). Recorded label ids must still be what this tokenizer gives, or
    training and scoring would read different tokens.
    """
    prompt_template = load_template(template or inference.template or DEFAULT_TEMPLATE)
    recorded = inference.labels or {}
    if label_words is None:
        label_words = (recorded.get("positive_word", DEFAULT_LABEL_WORDS[0]),
                       recorded.get("negative_word", DEFAULT_LABEL_WORDS[1]))
    if len(label_words) != 2:
        raise ConfigError(f"expected two label words (positive, negative), got {list(label_words)}",
                          "pass them as --label-words Yes,No")
    labels = resolve_label_tokens(inference.tokenizer, prompt_template, label_words[0], label_words[1])
    if recorded and (recorded.get("positive_word"), recorded.get("negative_word")) == tuple(label_words):
        expected = (recorded.get("positive_id"), recorded.get("negative_id"))
        if expected != (labels.positive_id, labels.negative_id):
            raise ModelError(
                f"the run recorded label ids {expected} for {list(label_words)} but this tokenizer gives "
                f"{(labels.positive_id, labels.negative_id)}",
                "evaluate with the tokenizer the adapter was trained with (the run's base model)")
    return ScoringSpec(prompt_template, labels, mode, batch_size, prefix_cache)


def load_test_records(path: str | Path, split: str = "test", limit: int | None = None) -> list[dict]:
    """Validated records (label and id filled) of a dataset folder's split or a .jsonl / TALLRec .json file."""
    from data_builders import load_split

    records = load_split(path, split)
    if not records:
        raise DataError(f"{path} holds no records", "pass a non-empty test file")
    return records[:limit] if limit else records


def result_name(path: str | Path, split: str = "test") -> str:
    """Folder name for a test's results: ``ml-100k-test`` for a dataset folder or ``.../ml-100k/test.jsonl``,
    the file stem otherwise (``movie_test.jsonl`` -> ``movie_test``)."""
    path = Path(path)
    if path.is_dir():
        return f"{path.resolve().name}-{split}"
    if path.stem in SPLIT_NAMES:
        return f"{path.resolve().parent.name}-{path.stem}"
    return path.stem


def evaluate_records(inference, records: Sequence[dict], spec: ScoringSpec, resamples: int = BOOTSTRAP_RESAMPLES,
                     seed: int = 0, on_batch: Callable[[int], None] | None = None,
                     calibration: Calibration | None = None) -> tuple[np.ndarray, dict]:
    """Score ``records`` (each with instruction, input, label; user_id enables GAUC) with ``inference``
    (a ``models.InferenceModel``) as ``spec`` says and compute every metric.

    Returns (P(yes) per record in input order, metrics dict with ``score_mode``, ``template``, ``labels``
    and ``scoring`` details).
    With ``calibration`` (see `tallrec calibrate`) the scores and metrics are the calibrated ones and
    ``uncalibrated`` keeps log-loss, Brier and ECE of the raw scores.
    """
    if not records:
        raise DataError("no records to evaluate", "pass a non-empty test file")
    truth = [_label(record, index) for index, record in enumerate(records)]
    result = spec.score(inference.model, inference.tokenizer, spec.render(records, inference.tokenizer), on_batch)
    users = [record["user_id"] for record in records] if all("user_id" in record for record in records) else None
    scores, calibration_note = applied(calibration, result.scores, spec.mode)
    metrics = compute_metrics(truth, scores, users, resamples, seed)
    if users is None:
        metrics["notes"].append("GAUC not computed: the records carry no user_id")
    if calibration_note:
        metrics["notes"].append(calibration_note)
    if calibration is not None and scores is not result.scores:
        metrics.update(calibration=calibration.as_dict(), uncalibrated=calibration_metrics(truth, result.scores))
    metrics.update(**spec.describe(), scoring=result.describe())
    return scores, metrics


def model_scorer(inference, spec: ScoringSpec, calibration: Calibration | None = None,
                 on_start: Callable[[str, int], Callable[[int], None] | None] | None = None):
    """``score(records, name)`` -> the P(yes) eval would report for them (e.g. validation records to fit
    an ensemble on), with the same spec and calibration."""
    def score(records: Sequence[dict], name: str = "validation") -> np.ndarray:
        progress = on_start(name, len(records)) if on_start else None
        return evaluate_records(inference, records, spec, resamples=0, on_batch=progress, calibration=calibration)[0]
    return score


def _label(record: dict, index: int) -> int:
    label = record.get("label")
    if label not in (0, 1):
        raise DataError(f"record {record.get('id', index)} has no 0/1 label", "give each record a label of 1 or 0")
    return int(label)


def eval_output_root(adapter: str | None, output: str | None) -> Path:
    """``--output`` when given, else the run's ``eval/`` folder (only a train run has one)."""
    if output:
        return Path(output)
    if adapter and read_manifest(adapter).get("kind") == "train-run":
        return Path(adapter) / "eval"
    raise ConfigError("no place to write the results", "pass --output DIR (or --adapter RUN_DIR to write into the run)")


def model_description(inference) -> dict[str, Any]:
    from tallrec_cli.models import model_identity

    return {"base_model": model_identity(inference.base), "adapter": inference.adapter,
            "dtype": inference.dtype, "quantization": inference.quantization}


def write_eval_folder(folder: Path, records: Sequence[dict], scores: np.ndarray, metrics: dict,
                      inputs: dict[str, Any], plots: bool = False, overwrite: bool = False,
                      extra: Callable[[Path], None] | None = None) -> Path:
    """metrics.json, predictions.jsonl, optional roc.png / reliability.png, whatever ``extra(staging)``
    writes, then manifest.json, atomically."""
    with staged_dir(folder, overwrite=overwrite) as staging:
        if extra:
            extra(staging)
        write_json_atomic(staging / "metrics.json", metrics)
        write_jsonl_atomic(staging / "predictions.jsonl", (
            {"id": record.get("id"), "user_id": record.get("user_id"), "item_id": record.get("item_id"),
             "p_yes": float(score), "label": record.get("label")}
            for record, score in zip(records, scores)))
        if plots:
            write_plots(staging, [record["label"] for record in records], scores, f"{folder.name} ({metrics['score_mode']})")
        EvalManifest.new(**inputs, metrics={key: metrics[key] for key in (
            "score_mode", "records", "positives", "auc", "auc_ci95", "gauc", "gauc_ci95", "users", "gauc_users",
            "log_loss", "accuracy", "brier", "ece")}, files=sorted(path.name for path in staging.iterdir())).write(staging)
    return folder


def write_plots(folder: Path, labels: Sequence[int], scores: Sequence[float], title: str) -> list[Path]:
    """ROC curve (when both classes are present) and reliability diagram as PNG files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    from tallrec_cli.metrics import reliability_curve, safe_auc

    written = []
    auc = safe_auc(labels, scores)
    if auc is not None:
        fpr, tpr, _ = roc_curve(labels, scores)
        figure, axis = plt.subplots(figsize=(4.5, 4.5))
        axis.plot(fpr, tpr, label=f"AUC {auc:.4f}")
        axis.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8)
        axis.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC: {title}")
        axis.legend(loc="lower right")
        written.append(folder / "roc.png")
        figure.savefig(written[-1], dpi=120, bbox_inches="tight")
        plt.close(figure)
    mean_score, positive_rate, counts = reliability_curve(labels, scores)
    figure, axis = plt.subplots(figsize=(4.5, 4.5))
    axis.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8)
    axis.scatter(mean_score, positive_rate, s=12 + 60 * counts / counts.max())
    axis.plot(mean_score, positive_rate)
    axis.set(xlabel="mean P(yes) in bin", ylabel="share of positives", xlim=(0, 1), ylim=(0, 1),
             title=f"Reliability: {title}")
    written.append(folder / "reliability.png")
    figure.savefig(written[-1], dpi=120, bbox_inches="tight")
    plt.close(figure)
    return written


@dataclass
class TestSet:
    name: str  # results folder name
    path: Path
    split: str
    limit: int | None
    records: list[dict]


def load_tests(tests: Sequence[str | Path], split: str = "test", limit: int | None = None) -> list[TestSet]:
    """Read and check every test before any model work, so a bad last file fails fast."""
    names = [result_name(path, split) for path in tests]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigError(f"several tests would be written to the same folder: {', '.join(duplicates)}",
                          "rename the files so their names differ")
    return [TestSet(name, Path(path), split, limit, load_test_records(path, split, limit))
            for name, path in zip(names, tests)]


def evaluate_tests(inference, tests: Sequence[TestSet], output_root: str | Path, spec: ScoringSpec, *,
                   resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0, plots: bool = False, overwrite: bool = False,
                   on_start: Callable[[str, int], Callable[[int], None] | None] | None = None,
                   references: Sequence[str] = (), train_records: Sequence[dict] | None = None,
                   calibration: Calibration | None = None, ensembles: Sequence = ()) -> list[dict]:
    """Evaluate each test into ``output_root/<test-name>/``; returns one {test, source, folder, metrics} each
    (and ``comparison`` when ``references`` are given: baselines fitted on ``train_records``, or ``base``,
    the model with its adapter off; see ``tallrec_cli.compare``).

    ``on_start(name, records)`` may return a per-batch progress callback. ``calibration`` applies to the
    model's scores (not to the zero-shot ``base`` reference). ``ensembles`` (``ensemble.FittedBlend``, fitted
    on validation) add ``ensembles``: each blend compared with the model and its baseline.
    """
    from tallrec_cli.compare import BASE_MODEL, Scored, compare, score_baselines, write_comparison
    from tallrec_cli.ensemble import compare_blends, write_blends

    model = model_description(inference)
    results = []
    for test in tests:
        progress = on_start(test.name, len(test.records)) if on_start else None
        scores, metrics = evaluate_records(inference, test.records, spec, resamples, seed, progress, calibration)
        metrics = {"test": test.name, "source": str(test.path), **metrics}
        inputs = {**model, "test": {"name": test.name, "path": str(test.path.resolve()), "split": test.split,
                                    "limit": test.limit,
                                    "sha256": sha256_file(test.path) if test.path.is_file() else None},
                  "prompt": {"template": spec.template.name}, "labels": spec.labels.as_dict(), "score_mode": spec.mode,
                  "calibration": metrics.get("calibration")}
        comparison, model_label = None, "tuned model" if inference.adapter else "model"
        writers = []
        if references:
            scorers = [Scored("model", model_label, scores)]
            if BASE_MODEL in references:
                progress = on_start(f"{test.name} without adapter", len(test.records)) if on_start else None
                with inference.model.disable_adapter():
                    base_scores, _ = evaluate_records(inference, test.records, spec, 0, seed, progress)
                scorers.append(Scored(BASE_MODEL, "zero-shot base", base_scores))
            scorers += score_baselines([name for name in references if name != BASE_MODEL], train_records,
                                       test.records, seed)
            comparison = compare(test.records, scorers[0], scorers[1:], resamples, seed)
            inputs["compare"] = list(references)
            writers.append(lambda staging, comparison=comparison, scorers=scorers, test=test:
                           write_comparison(staging, test.records, comparison, scorers))
        blends = compare_blends(ensembles, test.records, scores, model_label, resamples, seed) if ensembles else []
        if blends:
            inputs["ensembles"] = [blend["blend"] for blend in blends]
            writers.append(lambda staging, blends=blends, test=test: write_blends(staging, test.records, blends))

        def extra(staging: Path, writers=writers) -> None:
            for write in writers:
                write(staging)
        folder = write_eval_folder(Path(output_root) / test.name, test.records, scores, metrics, inputs, plots,
                                   overwrite, extra)
        results.append({"test": test.name, "source": str(test.path), "folder": str(folder), "metrics": metrics,
                        "comparison": comparison, "ensembles": [blend["comparison"] for blend in blends]})
    return results


# --- predict ---------------------------------------------------------------------------------------------

def _history(value: Any, where: str) -> list[str]:
    """Titles from a JSON list, a JSON-list string, or a `|`-separated string."""
    if value is None or value == "":
        return []
    if isinstance(value, list):
        return [str(item) for item in value]
    if not isinstance(value, str):
        raise DataError(f"{where}: expected a list of titles, got {value!r}", "use a JSON list or titles separated by |")
    text = value.strip()
    if text.startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError:
            raise DataError(f"{where}: {text[:60]!r} is not a valid JSON list", "use a JSON list or titles separated by |") from None
        return [str(item) for item in items]
    return [part.strip() for part in text.split("|") if part.strip()]


def read_candidates(path: str | Path) -> list[dict]:
    """Rows of a .jsonl or .csv file: liked, disliked, candidate (optional user, label), or TALLRec records."""
    from tallrec_cli.io import read_jsonl

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist", "pass a .jsonl or .csv file of candidates")
    if path.suffix == ".csv":
        with open(path, encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
    elif path.suffix in (".jsonl", ".json"):
        rows = read_jsonl(path)
    else:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}", "use .jsonl or .csv")
    if not rows:
        raise DataError(f"{path} holds no rows", "pass a file with at least one candidate")
    for number, row in enumerate(rows, start=1):
        if not (row.get("candidate") or (row.get("instruction") and "input" in row)):
            raise DataError(f"{path}: row {number} has neither a candidate nor instruction/input",
                            "give each row liked, disliked and candidate columns (or TALLRec instruction/input)")
        if row.get("label") not in (None, ""):
            try:
                row["label"] = int(float(row["label"]))
            except ValueError:
                row["label"] = None
            if row["label"] not in (0, 1):
                raise DataError(f"{path}: row {number} has label {row.get('label')!r}", "labels are 1 (liked) or 0")
        else:
            row["label"] = None
    return rows


def candidate_prompt_parts(row: dict, domain: str = "movie", where: str = "row") -> dict[str, str]:
    """instruction/input for a row, worded like the data stage's TALLRec template of ``domain``."""
    from data_builders.templates import load_record_template

    if row.get("instruction"):
        return {"instruction": row["instruction"], "input": row.get("input") or ""}
    if domain not in DOMAINS:
        raise ConfigError(f"domain {domain!r} is not one of {', '.join(DOMAINS)}")
    wording = load_record_template(f"tallrec-{domain}")
    variant = wording.variants[0]
    join = wording.separator.join
    return {"instruction": variant["instruction"], "input": variant["input"].format(
        liked=join(wording.history_item.format(item=item) for item in _history(row.get("liked"), f"{where} liked")),
        disliked=join(wording.history_item.format(item=item)
                      for item in _history(row.get("disliked"), f"{where} disliked")),
        target=wording.target_item.format(item=str(row["candidate"]).strip()))}


def predict_rows(inference, rows: Sequence[dict], spec: ScoringSpec, *, domain: str = "movie", rank: bool = False,
                 ks: Sequence[int] = DEFAULT_RANK_KS,
                 on_batch: Callable[[int], None] | None = None,
                 calibration: Calibration | None = None, blend=None) -> tuple[list[dict], dict]:
    """P(yes) per row (``p_yes`` added, calibrated when ``calibration`` is given; ``rank`` within the user
    with ``rank=True``) and a summary (score mode, HR@K / NDCG@K when ranking rows that carry labels).
    With ``blend`` (an ``ensemble.FittedBlend``) ``p_yes`` is the ensemble's and ``p_yes_model`` the model's."""
    parts = [candidate_prompt_parts(row, domain, f"row {number}") for number, row in enumerate(rows, start=1)]
    result = spec.score(inference.model, inference.tokenizer, spec.render(parts, inference.tokenizer), on_batch)
    scores, calibration_note = applied(calibration, result.scores, spec.mode)
    output = [{**row, "p_yes": float(score)} for row, score in zip(rows, scores)]
    if blend is not None:
        model_scores, (scores, _) = scores, blend.score(rows, scores)
        output = [{**row, "p_yes": float(score), "p_yes_model": float(model_score)}
                  for row, score, model_score in zip(rows, scores, model_scores)]
    summary: dict[str, Any] = {"rows": len(output), **spec.describe(), "scoring": result.describe(),
                               "calibration_note": calibration_note,
                               "ensemble": blend.blend.as_dict() if blend is not None else None}
    if rank:
        users = [row.get("user") for row in rows]
        if any(user in (None, "") for user in users):
            raise DataError("--rank needs a user column on every row", "add a user column naming whose candidates they are")
        _add_ranks(output, users)
        if all(row["label"] is not None for row in rows):
            summary["ranking"] = ranking_metrics(users, scores, [row["label"] for row in rows], ks)
        else:
            summary["ranking_note"] = "HR@K / NDCG@K need a label on every row"
    return output, summary


def _add_ranks(rows: list[dict], users: Sequence) -> None:
    by_user: dict[str, list[int]] = {}
    for index, user in enumerate(users):
        by_user.setdefault(str(user), []).append(index)
    for indices in by_user.values():
        for position, index in enumerate(sorted(indices, key=lambda i: -rows[i]["p_yes"]), start=1):
            rows[index]["rank"] = position


def write_predictions(path: str | Path, rows: Sequence[dict]) -> Path:
    """JSON lines, or CSV (lists written as JSON) when ``path`` ends in .csv."""
    from tallrec_cli.io import atomic_path

    path = Path(path)
    if path.suffix != ".csv":
        write_jsonl_atomic(path, rows)
        return path
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: json.dumps(value) if isinstance(value, (list, dict)) else value
                             for key, value in row.items()})
    return path
