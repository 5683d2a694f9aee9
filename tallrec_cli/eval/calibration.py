"""Calibration of P(yes): temperature or Platt scaling fitted on validation, carried in the run manifest.

A tuned (or zero-shot) model ranks well but its P(yes) is over- or under-confident: log-loss can be worse
than a constant 0.5. Both maps are monotone in the model's logit z = log(p / (1 - p)), so AUC and per-user
AUC are unchanged and only the probabilities move:

- temperature: p' = sigmoid(z / T), one parameter (the shape of the scores is kept);
- platt: p' = sigmoid(a z + b), also fixes a shifted base rate.

`tallrec calibrate RUN` (`tallrec_cli.eval.calibrate`) fits both on the run's validation split, writes RUN/calibration/ (report and
reliability plots) and stores the chosen map under ``calibration`` in RUN/manifest.json; eval, predict and
adapter exports read it from there (`calibration_for`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tallrec_cli.core.errors import DataError
from tallrec_cli.core.manifests import read_manifest
from tallrec_cli.core.metrics import (
    PROBABILITY_FLOOR,
    expected_calibration_error,
    log_loss,
    logit,
    reliability_curve,
    sigmoid,
)

METHODS = ("temperature", "platt")


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


def require_both_classes(labels: np.ndarray) -> None:
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
    require_both_classes(labels)
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

    scores = np.clip(np.asarray(scores, dtype=np.float64), PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR)
    return {"log_loss": log_loss(labels, scores),
            "brier": float(brier_score_loss(labels, scores)),
            "ece": expected_calibration_error(labels, scores)}


def calibration_for(adapter: str | Path | None) -> Calibration | None:
    """The calibration a run or adapter export carries in its manifest, if any."""
    if not adapter or not (Path(adapter) / "manifest.json").is_file():
        return None

    stored = read_manifest(adapter).get("calibration")
    return Calibration.from_dict(stored["selected"]) if stored else None


def calibrated_scores(calibration: Calibration | None, scores: np.ndarray, score_mode: str) -> tuple[np.ndarray, str | None]:
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
