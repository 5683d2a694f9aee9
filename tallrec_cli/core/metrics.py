"""Ranking and calibration metrics over P(yes) scores (scikit-learn underneath where it has them)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

CALIBRATION_BINS = 10
BOOTSTRAP_RESAMPLES = 1000
MIN_GAUC_USERS = 30  # fewer users carrying a per-user AUC than this gets a warning
PROBABILITY_FLOOR = 1e-7  # P(yes) is clipped to [floor, 1 - floor]: one confident miss stays finite


def logit(scores: Sequence[float]) -> np.ndarray:
    """log(p / (1 - p)), with p clipped to the probability floor so 0 and 1 stay finite."""
    p = np.clip(np.asarray(scores, dtype=np.float64), PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR)
    return np.log(p) - np.log1p(-p)


def sigmoid(values: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-values))


def safe_auc(labels: Sequence[int], scores: Sequence[float]) -> float | None:
    """ROC AUC, or None when only one class is present (AUC is undefined there)."""
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels)
    if labels.size == 0 or np.unique(labels).size < 2:
        return None
    return float(roc_auc_score(labels, np.asarray(scores, dtype=np.float64)))


def log_loss(labels: Sequence[int], scores: Sequence[float]) -> float:
    """Mean binary cross-entropy of P(yes) ``scores``; defined with one class too (validation loss, eval,
    calibration)."""
    p = np.clip(np.asarray(scores, dtype=np.float64), PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR)
    y = np.asarray(labels, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def user_aucs(labels: Sequence[int], scores: Sequence[float], groups: Sequence) -> tuple[np.ndarray, np.ndarray, int]:
    """AUC and record count of every user with both classes (in first-seen order), and how many users
    were skipped for having one class."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    keys = np.asarray([str(group) for group in groups])
    _, first, codes = np.unique(keys, return_index=True, return_inverse=True)
    aucs, counts, skipped = [], [], 0
    for code in np.argsort(first):
        member = codes == code
        auc = safe_auc(labels[member], scores[member])
        if auc is None:
            skipped += 1
            continue
        aucs.append(auc)
        counts.append(int(member.sum()))
    return np.asarray(aucs, dtype=np.float64), np.asarray(counts, dtype=np.float64), skipped


def group_auc(labels: Sequence[int], scores: Sequence[float], groups: Sequence) -> tuple[float | None, int, int]:
    """Per-user AUC averaged with weights = the user's record count (GAUC).

    Returns (gauc, users used, users skipped); users with a single class have no AUC and are skipped.
    """
    aucs, counts, skipped = user_aucs(labels, scores, groups)
    return (float(aucs @ counts / counts.sum()) if aucs.size else None), int(aucs.size), skipped


def user_bootstrap_gaucs(aucs: np.ndarray, counts: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """GAUC of each resample of the users (a user's AUC does not change when the user is drawn again)."""
    weights = np.zeros((resamples, aucs.size))
    first = 0
    for drawn in bootstrap_samples(aucs.size, resamples, seed):
        rows = np.arange(first, first + drawn.shape[0])[:, None]
        np.add.at(weights, (np.broadcast_to(rows, drawn.shape), drawn), 1.0)
        first += drawn.shape[0]
    weights *= counts
    return weights @ aucs / weights.sum(axis=1)


def _percentiles(values: np.ndarray, level: float = 0.95) -> list[float]:
    tail = (1 - level) / 2 * 100
    return [float(v) for v in np.nanpercentile(values, [tail, 100 - tail])]


def gauc_interval(labels: Sequence[int], scores: Sequence[float], groups: Sequence,
                  resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> list[float] | None:
    """Percentile interval of GAUC over users drawn with replacement; None with under two users."""
    aucs, counts, _ = user_aucs(labels, scores, groups)
    if resamples <= 0 or aucs.size < 2:
        return None
    return _percentiles(user_bootstrap_gaucs(aucs, counts, resamples, seed))


def paired_difference(labels: Sequence[int], scores: Sequence[float], reference: Sequence[float],
                      groups: Sequence | None = None, resamples: int = BOOTSTRAP_RESAMPLES,
                      seed: int = 0) -> dict:
    """AUC and GAUC of ``scores`` minus those of ``reference`` on the same records, with paired bootstrap
    95% intervals: records are drawn once and both score sets are read on the same draw (AUC); for GAUC
    users are drawn (a user's records stay together). ``better``: the interval lies above zero."""
    auc_a, auc_b = safe_auc(labels, scores), safe_auc(labels, reference)
    result: dict = {"auc_diff": None, "auc_diff_ci95": None, "gauc_diff": None, "gauc_diff_ci95": None}
    if auc_a is not None and auc_b is not None:
        result["auc_diff"] = auc_a - auc_b
        if resamples > 0:
            diffs = bootstrap_aucs(labels, scores, resamples, seed) - bootstrap_aucs(labels, reference, resamples, seed)
            result["auc_diff_ci95"] = _percentiles(diffs)
    if groups is not None:
        aucs_a, counts, _ = user_aucs(labels, scores, groups)
        aucs_b, _, _ = user_aucs(labels, reference, groups)
        if aucs_a.size:
            result["gauc_diff"] = float((aucs_a - aucs_b) @ counts / counts.sum())
            if resamples > 0 and aucs_a.size >= 2:
                result["gauc_diff_ci95"] = _percentiles(user_bootstrap_gaucs(aucs_a - aucs_b, counts, resamples, seed))
    return result


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


def bootstrap_samples(size: int, resamples: int, seed: int, chunk: int = 100):
    """Resampled record indices (with replacement, seeded), yielded in blocks of ``chunk`` rows to bound memory."""
    rng = np.random.default_rng(seed)
    for first in range(0, resamples, chunk):
        yield rng.integers(0, size, size=(min(chunk, resamples - first), size))


def bootstrap_aucs(labels: Sequence[int], scores: Sequence[float], resamples: int = BOOTSTRAP_RESAMPLES,
                   seed: int = 0) -> np.ndarray:
    """AUC of each bootstrap resample (NaN where a resample holds one class), vectorised.

    A resample is a count per record; with records sorted by score and grouped by tied score,
    AUC = sum over groups of positives x (negatives below + half the tied negatives) / (P x N),
    the Mann-Whitney statistic with ties counted as halves, exactly as roc_auc_score.
    """
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    size = labels.size
    order = np.argsort(scores, kind="stable")
    sorted_scores, positive = scores[order], labels[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    rank_of = np.empty(size, dtype=np.int64)
    rank_of[order] = np.arange(size)
    aucs = []
    for drawn in bootstrap_samples(size, resamples, seed):
        rows = drawn.shape[0]
        flat = (np.arange(rows)[:, None] * size + rank_of[drawn]).ravel()
        counts = np.bincount(flat, minlength=rows * size).reshape(rows, size).astype(np.float64)
        pos = np.add.reduceat(counts * positive, starts, axis=1)
        neg = np.add.reduceat(counts * ~positive, starts, axis=1)
        below = np.cumsum(neg, axis=1) - neg
        pairs = pos.sum(axis=1) * neg.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            aucs.append(np.where(pairs > 0, (pos * (below + 0.5 * neg)).sum(axis=1) / pairs, np.nan))
    return np.concatenate(aucs) if aucs else np.empty(0)


def auc_interval(labels: Sequence[int], scores: Sequence[float], resamples: int = BOOTSTRAP_RESAMPLES,
                 seed: int = 0, level: float = 0.95) -> tuple[float, float] | None:
    """Percentile bootstrap interval for AUC; None when AUC itself is undefined."""
    if resamples <= 0 or safe_auc(labels, scores) is None:
        return None
    low, high = _percentiles(bootstrap_aucs(labels, scores, resamples, seed), level)
    return low, high


def compute_metrics(labels: Sequence[int], scores: Sequence[float], users: Sequence | None = None,
                    resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0, bins: int = CALIBRATION_BINS) -> dict:
    """Every eval metric of P(yes) ``scores`` against 0/1 ``labels``.

    AUC (headline) with a bootstrap 95% interval, per-user GAUC when ``users`` is given, log-loss,
    accuracy at 0.5, Brier score and expected calibration error. Undefined values are None and
    ``notes`` says why.
    """
    from sklearn.metrics import accuracy_score, brier_score_loss

    labels = np.asarray(labels, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    if labels.size == 0:
        raise ValueError("no records to compute metrics on")
    notes = []
    auc = safe_auc(labels, scores)
    if auc is None:
        notes.append(f"AUC is undefined: every record has label {int(labels[0])} (one class)")
    interval = auc_interval(labels, scores, resamples, seed)
    metrics = {
        "records": int(labels.size),
        "positives": int(labels.sum()),
        "auc": auc,
        "auc_ci95": list(interval) if interval else None,
        "gauc": None, "gauc_ci95": None, "users": None, "gauc_users": None, "gauc_users_skipped": None,
        "log_loss": log_loss(labels, scores),
        "accuracy": float(accuracy_score(labels, scores >= 0.5)),
        "brier": float(brier_score_loss(labels, scores, labels=[0, 1])),
        "ece": expected_calibration_error(labels, scores, bins),
        "bootstrap": {"resamples": resamples, "seed": seed, "level": 0.95},
    }
    if users is not None:
        gauc, used, skipped = group_auc(labels, scores, users)
        metrics.update(gauc=gauc, gauc_ci95=gauc_interval(labels, scores, users, resamples, seed),
                       users=used + skipped, gauc_users=used, gauc_users_skipped=skipped)
        if gauc is None:
            notes.append(f"GAUC is undefined: none of the {skipped} users has both classes")
        elif used < MIN_GAUC_USERS:
            notes.append(f"GAUC rests on {used} users with both labels (of {used + skipped}): under "
                         f"{MIN_GAUC_USERS}, it mostly reflects a few users; use a many-user split (--preset many-users)")
    metrics["notes"] = notes
    return metrics


def ranking_metrics(groups: Sequence, scores: Sequence[float], labels: Sequence[int],
                    ks: Sequence[int] = (1, 3, 5, 10)) -> dict:
    """HR@K and NDCG@K (binary relevance) over groups (users) ranked by score.

    Groups without a positive cannot be hit and are skipped (counted). HR@K: share of groups with a
    positive in the top K. NDCG@K: DCG of the top K over the DCG of the ideal order.
    """
    groups = np.asarray([str(group) for group in groups])
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    hits = {k: [] for k in ks}
    ndcgs = {k: [] for k in ks}
    skipped = 0
    for group in dict.fromkeys(groups.tolist()):
        member = groups == group
        relevance = labels[member][np.argsort(-scores[member], kind="stable")]
        if relevance.sum() == 0:
            skipped += 1
            continue
        ideal = np.sort(relevance)[::-1]
        for k in ks:
            discount = 1.0 / np.log2(np.arange(2, min(k, relevance.size) + 2))
            hits[k].append(float(relevance[:k].any()))
            ndcgs[k].append(float((relevance[:k] * discount).sum() / (ideal[:k] * discount).sum()))
    used = len(next(iter(hits.values()), []))
    result = {"users": used, "users_skipped": skipped}
    for k in ks:
        result[f"hr@{k}"] = float(np.mean(hits[k])) if used else None
        result[f"ndcg@{k}"] = float(np.mean(ndcgs[k])) if used else None
    return result
