"""Ranking and calibration metrics over P(yes) scores (scikit-learn underneath where it has them)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

CALIBRATION_BINS = 10
BOOTSTRAP_RESAMPLES = 1000


def safe_auc(labels: Sequence[int], scores: Sequence[float]) -> float | None:
    """ROC AUC, or None when only one class is present (AUC is undefined there)."""
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels)
    if labels.size == 0 or np.unique(labels).size < 2:
        return None
    return float(roc_auc_score(labels, np.asarray(scores, dtype=np.float64)))


def group_auc(labels: Sequence[int], scores: Sequence[float], groups: Sequence) -> tuple[float | None, int, int]:
    """Per-user AUC averaged with weights = the user's record count (GAUC).

    Returns (gauc, users used, users skipped); users with a single class have no AUC and are skipped.
    """
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    codes = np.unique(np.asarray([str(group) for group in groups]), return_inverse=True)[1]
    total = weighted = 0.0
    used = skipped = 0
    for code in range(codes.max() + 1 if codes.size else 0):
        member = codes == code
        auc = safe_auc(labels[member], scores[member])
        if auc is None:
            skipped += 1
            continue
        used += 1
        total += member.sum()
        weighted += auc * member.sum()
    return (weighted / total if used else None), used, skipped


def expected_calibration_error(labels: Sequence[int], scores: Sequence[float], bins: int = CALIBRATION_BINS) -> float:
    """Sum over equal-width bins of |positive rate - mean score| weighted by the bin's share of records."""
    labels, scores = np.asarray(labels, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    if labels.size == 0:
        return float("nan")
    index = np.minimum((scores * bins).astype(int), bins - 1)
    counts = np.bincount(index, minlength=bins)
    gap = np.abs(np.bincount(index, labels, minlength=bins) - np.bincount(index, scores, minlength=bins))
    return float(gap.sum() / labels.size) if counts.sum() else float("nan")


def reliability_curve(labels: Sequence[int], scores: Sequence[float], bins: int = CALIBRATION_BINS):
    """(mean score, positive rate, count) per non-empty equal-width bin, for reliability plots."""
    labels, scores = np.asarray(labels, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    index = np.minimum((scores * bins).astype(int), bins - 1)
    counts = np.bincount(index, minlength=bins)
    filled = counts > 0
    mean_score = np.bincount(index, scores, minlength=bins)[filled] / counts[filled]
    positive_rate = np.bincount(index, labels, minlength=bins)[filled] / counts[filled]
    return mean_score, positive_rate, counts[filled]


def bootstrap_indices(size: int, resamples: int, seed: int) -> np.ndarray:
    """Resampled record indices, shape [resamples, size] (drawn with replacement, seeded)."""
    return np.random.default_rng(seed).integers(0, size, size=(resamples, size))


def bootstrap_aucs(labels: Sequence[int], scores: Sequence[float], resamples: int = BOOTSTRAP_RESAMPLES,
                   seed: int = 0, chunk: int = 100) -> np.ndarray:
    """AUC of each bootstrap resample (NaN where a resample holds one class), vectorised.

    A resample is a count per record; with records sorted by score and grouped by tied score,
    AUC = sum over groups of positives x (negatives below + half the tied negatives) / (P x N),
    i.e. the Mann-Whitney statistic with ties counted as halves, exactly as roc_auc_score.
    """
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(scores, kind="stable")
    sorted_scores, positive = scores[order], labels[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    aucs = np.empty(resamples)
    rank_of = np.empty(labels.size, dtype=np.int64)
    rank_of[order] = np.arange(labels.size)
    for first in range(0, resamples, chunk):
        rows = min(chunk, resamples - first)
        drawn = bootstrap_indices(labels.size, resamples, seed)[first:first + rows] if first == 0 or True else None
        counts = np.zeros((rows, labels.size))
        np.add.at(counts, (np.repeat(np.arange(rows), labels.size), rank_of[drawn].ravel()), 1.0)
        pos = np.add.reduceat(counts * positive, starts, axis=1)
        neg = np.add.reduceat(counts * ~positive, starts, axis=1)
        below = np.cumsum(neg, axis=1) - neg
        pairs = pos.sum(axis=1) * neg.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            aucs[first:first + rows] = np.where(pairs > 0, (pos * (below + 0.5 * neg)).sum(axis=1) / pairs, np.nan)
    return aucs
