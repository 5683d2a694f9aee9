"""Calibration of P(yes): temperature or Platt scaling fitted on validation, carried in the run manifest.

A tuned (or zero-shot) model ranks well but its P(yes) is over- or under-confident: log-loss can be worse
than a constant 0.5. Both maps are monotone in the model's logit z = log(p / (1 - p)), so AUC and per-user
AUC are unchanged and only the probabilities move:

- temperature: p' = sigmoid(z / T), one parameter (the shape of the scores is kept);
- platt: p' = sigmoid(a z + b), also fixes a shifted base rate.

`tallrec calibrate RUN` fits both on the run's validation split, writes RUN/calibration/ (report and
reliability plots) and stores the chosen map under ``calibration`` in RUN/manifest.json; eval, predict and
adapter exports read it from there (`calibration_for`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tallrec_cli.errors import ArtifactError, DataError

METHODS = ("temperature", "platt")
EPSILON = 1e-7


def logit(scores: Sequence[float]) -> np.ndarray:
    p = np.clip(np.asarray(scores, dtype=np.float64), EPSILON, 1 - EPSILON)
    return np.log(p) - np.log1p(-p)


def sigmoid(values: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-values))


@dataclass(frozen=True)
class Calibration:
    """p' = sigmoid(slope * logit(p) + intercept); temperature scaling is slope 1/T, intercept 0."""
    method: str
    slope: float
    intercept: float
    score_mode: str  # the P(yes) it was fitted on (pair or tallrec scores)
    fitted_on: dict[str, Any]

    def apply(self, scores: Sequence[float]) -> np.ndarray:
        return sigmoid(self.slope * logit(scores) + self.intercept)

    @property
    def temperature(self) -> float | None:
        return 1.0 / self.slope if self.method == "temperature" else None

    def describe(self) -> str:
        if self.method == "temperature":
            return f"temperature scaling, T = {self.temperature:.4g}"
        return f"Platt scaling, p' = sigmoid({self.slope:.4g} * logit(p) + {self.intercept:.4g})"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "temperature": self.temperature, "formula": self.describe()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        return cls(data["method"], float(data["slope"]), float(data["intercept"]), data["score_mode"],
                   data.get("fitted_on", {}))


def _require_both_classes(labels: np.ndarray) -> None:
    if labels.size == 0 or labels.min() == labels.max():
        kind = "no records" if labels.size == 0 else f"every record has label {int(labels[0])}"
        raise DataError(f"cannot calibrate on the validation split: {kind}",
                        "calibration needs likes and dislikes; rebuild the dataset with a many-user split "
                        "(--preset many-users) or pass --valid with both labels")


def fit(labels: Sequence[int], scores: Sequence[float], method: str, score_mode: str = "pair",
        fitted_on: dict[str, Any] | None = None) -> Calibration:
    """Fit ``method`` by maximum likelihood on the logit (Platt: logistic regression, lightly regularised)."""
    from scipy.optimize import minimize_scalar
    from sklearn.linear_model import LogisticRegression

    labels = np.asarray(labels, dtype=np.int64)
    _require_both_classes(labels)
    z = logit(scores)
    if method == "temperature":
        def loss(log_t: float) -> float:
            margin = z / np.exp(log_t)
            return float(np.mean(np.logaddexp(0.0, margin) - labels * margin))

        best = minimize_scalar(loss, bounds=(-6.0, 6.0), method="bounded")
        slope, intercept = float(np.exp(-best.x)), 0.0
    elif method == "platt":
        model = LogisticRegression(C=1.0).fit(z[:, None], labels)  # C=1: finite on separable validation
        slope, intercept = float(model.coef_[0, 0]), float(model.intercept_[0])
    else:
        raise ValueError(f"unknown calibration method {method!r}")
    return Calibration(method, slope, intercept, score_mode, fitted_on or {})


def calibration_metrics(labels: Sequence[int], scores: Sequence[float]) -> dict[str, float]:
    from sklearn.metrics import brier_score_loss

    from tallrec_cli.metrics import expected_calibration_error, log_loss

    scores = np.clip(np.asarray(scores, dtype=np.float64), EPSILON, 1 - EPSILON)
    return {"log_loss": log_loss(labels, scores),
            "brier": float(brier_score_loss(labels, scores)),
            "ece": expected_calibration_error(labels, scores)}


def calibration_for(adapter: str | Path | None) -> Calibration | None:
    """The calibration a run or adapter export carries in its manifest, if any."""
    if not adapter or not (Path(adapter) / "manifest.json").is_file():
        return None
    from tallrec_cli.io import read_manifest

    stored = read_manifest(adapter).get("calibration")
    return Calibration.from_dict(stored["selected"]) if stored else None


def applied(calibration: Calibration | None, scores: np.ndarray, score_mode: str) -> tuple[np.ndarray, str | None]:
    """(scores to report, note). A calibration fitted on another score mode is not applied: its logits
    mean something else."""
    if calibration is None:
        return scores, None
    if calibration.score_mode != score_mode:
        return scores, (f"calibration not applied: fitted on {calibration.score_mode} scores, these are "
                        f"{score_mode} scores")
    return calibration.apply(scores), f"calibrated: {calibration.describe()} (fitted on validation)"


def write_reliability_plot(path: Path, labels: Sequence[int], curves: dict[str, np.ndarray], title: str) -> Path:
    """One reliability diagram with a curve per named score set (e.g. raw, temperature, platt)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tallrec_cli.metrics import reliability_curve

    figure, axis = plt.subplots(figsize=(5, 5))
    axis.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8)
    for name, scores in curves.items():
        mean_score, positive_rate, _ = reliability_curve(labels, scores)
        axis.plot(mean_score, positive_rate, marker="o", markersize=3, label=name)
    axis.set(xlabel="mean P(yes) in bin", ylabel="share of positives", xlim=(0, 1), ylim=(0, 1), title=title)
    axis.legend(loc="upper left")
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)
    return path


def calibrate_run(run_dir: str | Path, method: str = "temperature", valid: str | Path | None = None,
                  score_mode: str = "pair", limit: int | None = None, batch_size: int | None = None,
                  dtype: str = "auto", on_start=None) -> dict[str, Any]:
    """Score the run's validation split, fit both maps, store ``method``'s in the run manifest.

    Returns the report (also RUN/calibration/calibration.json). Everything is checked before the model
    loads; the manifest is rewritten last, atomically.
    """
    from tallrec_cli.evaluate import evaluate_records, load_test_records, resolve_scoring
    from tallrec_cli.io import read_manifest, sha256_file, staged_dir, write_json_atomic
    from tallrec_cli.models import load_for_inference

    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}")
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir, "train-run")
    data = manifest.get("data", {})
    source = valid or data.get("valid") or data.get("train")
    if not source:
        raise ArtifactError(f"{run_dir}/manifest.json names no validation data", "pass --valid FILE")
    records = load_test_records(source, "valid", limit)
    labels = np.asarray([int(record["label"]) for record in records])
    _require_both_classes(labels)
    inference = load_for_inference(adapter=str(run_dir), dtype=dtype)
    progress = on_start("validation", len(records)) if on_start else None
    spec = resolve_scoring(inference, mode=score_mode, batch_size=batch_size)
    scores, _ = evaluate_records(inference, records, spec, resamples=0, on_batch=progress)
    path = Path(source)
    fitted_on = {"source": str(source), "split": "valid", "records": len(records), "limit": limit,
                 "sha256": sha256_file(path) if path.is_file() else data.get("valid_sha256")}
    fits = {name: fit(labels, scores, name, score_mode, fitted_on) for name in METHODS}
    report = {
        "selected": fits[method].as_dict(),
        "fits": {name: calibration.as_dict() for name, calibration in fits.items()},
        "validation": {"raw": calibration_metrics(labels, scores),
                       **{name: calibration_metrics(labels, c.apply(scores)) for name, c in fits.items()}},
    }
    with staged_dir(run_dir / "calibration", overwrite=True) as staging:
        write_json_atomic(staging / "calibration.json", report)
        write_reliability_plot(staging / "reliability.png", labels,
                               {"raw": scores, **{name: c.apply(scores) for name, c in fits.items()}},
                               f"Reliability on validation ({run_dir.name})")
    write_json_atomic(run_dir / "manifest.json", {**manifest, "calibration": report})
    return report


def card_section(manifest: dict[str, Any]) -> str:
    """Model-card paragraph: the stored calibration and how to apply it after a plain PEFT load."""
    stored = (manifest.get("calibration") or {}).get("selected")
    if not stored:
        return ""
    calibration = Calibration.from_dict(stored)
    fitted = calibration.fitted_on
    return (
        f"\n## Calibration\n\n`tallrec calibrate` fitted {calibration.describe()} on {fitted.get('records')} "
        f"validation records ({calibration.score_mode} scores); tallrec eval and predict apply it. After a plain "
        "PEFT load, apply it to P(yes) yourself:\n\n```python\nimport math\n\n"
        "z = math.log(p_yes / (1 - p_yes))\n"
        f"p_calibrated = 1 / (1 + math.exp(-({calibration.slope!r} * z + {calibration.intercept!r})))\n```\n"
    )
