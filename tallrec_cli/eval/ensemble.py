"""Model + baseline ensembles: a logistic blend of the model's logit and a baseline's, fitted on validation.

CoLLM and BinLLM report that even a plain blend of an LLM recommender with a collaborative model beats
both parts; here that is the test of whether the tuned model adds signal to a full-data baseline:
``P = sigmoid(a * logit(p_model) + b * logit(p_baseline) + c)``, (a, b, c) fitted by logistic regression on
the run's validation split, the baseline fitted on the run's own training split (any other training
data is refused: the blend's weights would describe another baseline). `tallrec eval --ensemble gbdt`
reports the blend as its own scorer, compared (paired bootstrap) with the model and the baseline alone,
and saves the fitted blend as ``ensembles.json`` in the eval folder; `tallrec predict --ensemble FILE`
applies a saved blend.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data_builders import load_split
from data_builders.structure import labels_of
from tallrec_cli.core.errors import ConfigError, DataError
from tallrec_cli.core.files import write_json_atomic, write_jsonl_atomic
from tallrec_cli.core.manifests import TrainedAdapter, TrainRunManifest, split_sha256
from tallrec_cli.core.metrics import logit, sigmoid
from tallrec_cli.eval.baselines import BASELINES, Baseline, make_baseline
from tallrec_cli.eval.records import load_test_records

ENSEMBLES_FILE = "ensembles.json"


@dataclass(frozen=True)
class Blend:
    baseline: str
    model_weight: float
    baseline_weight: float
    intercept: float
    train: dict[str, Any]  # the baseline's training data: source and sha256 (the run's train split)
    fitted_on: dict[str, Any]  # validation records the weights were fitted on

    @property
    def name(self) -> str:
        return f"model+{self.baseline}"

    @property
    def label(self) -> str:
        return f"model + {BASELINES[self.baseline].label}"

    def apply(self, model_scores: Sequence[float], baseline_scores: Sequence[float]) -> np.ndarray:
        return sigmoid(self.model_weight * logit(model_scores) + self.baseline_weight * logit(baseline_scores)
                       + self.intercept)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Blend:
        return cls(data["baseline"], float(data["model_weight"]), float(data["baseline_weight"]),
                   float(data["intercept"]), data["train"], data["fitted_on"])


@dataclass
class FittedBlend:
    """A blend with its baseline fitted in memory (baselines are refitted, never pickled)."""
    blend: Blend
    baseline: Baseline

    def score(self, records: Sequence[dict], model_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(blend scores, baseline scores) for ``records``."""
        baseline_scores = self.baseline.score(records)
        return self.blend.apply(model_scores, baseline_scores), baseline_scores


def fit_blend(baseline: str, labels: Sequence[int], model_scores: Sequence[float], baseline_scores: Sequence[float],
              train: dict[str, Any], fitted_on: dict[str, Any]) -> Blend:
    """Logistic regression of the labels on the two logits, lightly regularised (C=1: negligible on
    hundreds of records, and a validation split one part separates perfectly keeps finite weights)."""
    from sklearn.linear_model import LogisticRegression

    labels = np.asarray(labels, dtype=np.int64)
    if labels.size == 0 or labels.min() == labels.max():
        raise DataError(f"cannot fit the {baseline} ensemble: the validation split holds one class",
                        "the blend is fitted on validation likes and dislikes; use a many-user split")
    features = np.column_stack([logit(model_scores), logit(baseline_scores)])
    model = LogisticRegression(C=1.0, max_iter=1000).fit(features, labels)
    return Blend(baseline, float(model.coef_[0, 0]), float(model.coef_[0, 1]), float(model.intercept_[0]),
                 train, fitted_on)


def check_ensemble_request(names: Sequence[str], run: TrainedAdapter | None, train_source: str | None) -> list[str]:
    """Problems before any loading: unknown baselines, no train run (no validation split to fit on), a
    baseline that would be trained on other data than the run."""

    problems = [f"--ensemble: unknown baseline {name!r} (use {', '.join(BASELINES)})"
                for name in names if name not in BASELINES]
    if not names:
        return problems
    if not isinstance(run, TrainRunManifest):
        return [*problems, "--ensemble needs --adapter RUN (a train run: its validation split fits the blend)"]
    if not train_source:
        problems.append("--ensemble: the run names no training data; pass --train with the run's data")
    elif run.data.train_sha256 and split_sha256(train_source, "train") != run.data.train_sha256:
        problems.append(f"--ensemble: --train {train_source} is not the data the run was trained on "
                        f"({run.data.train}); the baseline must learn from the run's own training split")
    return problems


def fit_blends(names: Sequence[str], run: TrainRunManifest, train_records: Sequence[dict],
               train_source: str, score_valid: Callable[[list[dict]], np.ndarray], seed: int = 0,
               limit: int | None = None, on_fit: Callable[[str], None] | None = None) -> list[FittedBlend]:
    """Fit each baseline on the training records and its blend on the run's validation split (its first
    ``limit`` records when given). ``score_valid(records)`` returns the model's P(yes) for them (scored
    once for every blend).
    """

    valid_source = run.data.valid or run.data.train
    valid = load_test_records(valid_source, "valid", limit)
    model_scores = score_valid(valid)
    labels = labels_of(valid)
    train = {"source": str(train_source), "sha256": split_sha256(train_source, "train")}
    fitted_on = {"source": str(valid_source), "split": "valid", "records": len(valid), "limit": limit,
                 "sha256": split_sha256(valid_source, "valid")}
    blends = []
    for name in names:
        if on_fit:
            on_fit(name)
        baseline = make_baseline(name, seed)
        if baseline.needs_train:
            baseline.fit(train_records)
        blend = fit_blend(name, labels, model_scores, baseline.score(valid), train, fitted_on)
        blends.append(FittedBlend(blend, baseline))
    return blends


def load_blend(path: str | Path, baseline: str | None = None) -> Blend:
    """A blend saved by `tallrec eval --ensemble` (the file, or the eval folder holding it)."""
    import json

    path = Path(path)
    if path.is_dir():
        path = path / ENSEMBLES_FILE
    if not path.is_file():
        raise ConfigError(f"{path} does not exist", "pass the ensembles.json an `eval --ensemble` run wrote")
    saved = json.loads(path.read_text(encoding="utf-8"))
    blends = {entry["blend"]["baseline"]: entry["blend"] for entry in saved.get("ensembles", [])}
    if not blends:
        raise ConfigError(f"{path} holds no ensembles")
    if baseline is None and len(blends) > 1:
        raise ConfigError(f"{path} holds several ensembles ({', '.join(blends)})", "name one with --ensemble-baseline")
    chosen = baseline or next(iter(blends))
    if chosen not in blends:
        raise ConfigError(f"{path} has no ensemble with {chosen!r}", f"use one of {', '.join(blends)}")
    return Blend.from_dict(blends[chosen])


def refit_baseline(blend: Blend, seed: int = 0) -> FittedBlend:
    """The blend's baseline fitted again on its recorded training data, refused if that data changed."""

    source = blend.train["source"]
    if not Path(source).exists() or split_sha256(source, "train") != blend.train["sha256"]:
        raise ConfigError(f"the {blend.baseline} ensemble was fitted with training data {source} that is gone or "
                          "has changed", "run `tallrec eval --ensemble` again")
    baseline = make_baseline(blend.baseline, seed)
    if baseline.needs_train:
        baseline.fit(load_split(source, "train"))
    return FittedBlend(blend, baseline)


def write_blends(folder: Path, records: Sequence[dict], results: Sequence[dict[str, Any]]) -> None:
    """ensembles.json (fitted blends and their comparisons) and ensemble_predictions.jsonl in ``folder``."""

    write_json_atomic(folder / ENSEMBLES_FILE, {"ensembles": [
        {key: value for key, value in result.items() if key != "scores"} for result in results]})
    write_jsonl_atomic(folder / "ensemble_predictions.jsonl", (
        {"id": record.get("id"), "user_id": record.get("user_id"), "label": record.get("label"),
         **{result["blend"]["baseline"]: float(result["scores"][index]) for result in results}}
        for index, record in enumerate(records)))
