"""Ranking and calibration metrics over P(yes) scores (scikit-learn underneath)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def safe_auc(labels: Sequence[int], scores: Sequence[float]) -> float | None:
    """ROC AUC, or None when only one class is present (AUC is undefined there)."""
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels)
    if labels.size == 0 or np.unique(labels).size < 2:
        return None
    return float(roc_auc_score(labels, np.asarray(scores, dtype=np.float64)))
