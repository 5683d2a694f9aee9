"""The tuned model against each reference at one training-set size N: paired differences of AUC and GAUC on
the same test records, averaged over the training seeds, with bootstrap intervals; and what a sweep's
differences say: the smallest N at which each equal-data reference ties or beats the tuned model, and
whether the tuned model ever reaches a full-data reference."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from tallrec_cli.core.metrics import BOOTSTRAP_RESAMPLES, bootstrap_aucs, safe_auc, user_aucs, user_bootstrap_gaucs
from tallrec_cli.eval.compare import verdict

LEVEL = 0.95


def _interval(values: np.ndarray) -> list[float]:
    tail = (1 - LEVEL) / 2 * 100
    return [float(value) for value in np.nanpercentile(values, [tail, 100 - tail])]


def seed_mean_difference(labels: Sequence[int], pairs: Sequence[tuple[np.ndarray, np.ndarray]],
                         users: Sequence | None = None, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0,
                         memo: dict | None = None) -> dict:
    """AUC and GAUC of the first scores of each pair minus those of the second, averaged over the pairs (one
    per training seed, every pair on the same records), with paired bootstrap 95% intervals: a draw of
    records (AUC) or of users (GAUC, a user's records stay together) is the same for every pair and both
    scorers. With one pair it is `tallrec_cli.core.metrics.paired_difference`. ``memo``: kept across calls on
    the same records, labels, users and draws, it reads each score array once however many pairs hold it."""
    memo = {} if memo is None else memo

    def read(kind: str, scores: np.ndarray):
        key = (kind, id(scores))
        if key not in memo:  # the array is kept with its value, so its id cannot be reused meanwhile
            value = (bootstrap_aucs(labels, scores, resamples, seed) if kind == "draws"
                     else user_aucs(labels, scores, users)[:2])
            memo[key] = (scores, value)
        return memo[key][1]

    result: dict = {"auc_diff": None, "auc_diff_ci95": None, "gauc_diff": None, "gauc_diff_ci95": None}
    if not pairs or safe_auc(labels, pairs[0][0]) is None:  # one class: no AUC for any scorer
        return result
    result["auc_diff"] = float(np.mean([safe_auc(labels, a) - safe_auc(labels, b) for a, b in pairs]))
    if resamples > 0:
        result["auc_diff_ci95"] = _interval(np.mean([read("draws", a) - read("draws", b) for a, b in pairs], axis=0))
    if users is not None:
        counts = read("users", pairs[0][0])[1]
        differences = np.mean([read("users", a)[0] - read("users", b)[0] for a, b in pairs], axis=0)
        if differences.size:
            result["gauc_diff"] = float(differences @ counts / counts.sum())
            if resamples > 0 and differences.size >= 2:
                result["gauc_diff_ci95"] = _interval(user_bootstrap_gaucs(differences, counts, resamples, seed))
    return result


def marks(comparison: dict) -> dict[str, str]:
    """The tuned model's verdict per metric: '+' wins (interval above 0), '-' loses, '=' ties, '?' unknown."""
    auc, gauc = verdict(comparison).split("/")
    return {"auc": auc, "gauc": gauc}


def _first(rows: list[dict], metric: str, wanted: str) -> int | None:
    return next((row["shots"] for row in rows if marks(row)[metric] in wanted), None)


def _closest(rows: list[dict], metric: str) -> dict | None:
    """The comparison where the tuned model came nearest (largest difference tuned - reference)."""
    known = [row for row in rows if row.get(f"{metric}_diff") is not None]
    if not known:
        return None
    row = max(known, key=lambda row: row[f"{metric}_diff"])
    return {"shots": row["shots"], "diff": row[f"{metric}_diff"], "ci95": row[f"{metric}_diff_ci95"]}


def findings(comparisons: list[dict]) -> list[dict]:
    """Per (test, tuned method): for each equal-data reference the smallest N at which it ties or beats the
    tuned model (per metric; None: at no N of the sweep), and for each full-data reference the smallest N at
    which the tuned model ties or beats it, with the nearest it came."""
    groups: dict[tuple, dict[tuple, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for row in comparisons:
        groups[(row["test"], row["method"])][(row["kind"], row["reference"])].append(row)
    result = []
    for (test, method), references in groups.items():
        equal, full = [], []
        for (kind, reference), rows in references.items():
            rows = sorted(rows, key=lambda row: row["shots"])
            if kind == "baseline":
                equal.append({"reference": reference, **{metric: _first(rows, metric, "=-")
                                                         for metric in ("auc", "gauc")}})
            else:
                full.append({"reference": reference, **{metric: _first(rows, metric, "=+") for metric in ("auc", "gauc")},
                             "closest": {metric: _closest(rows, metric) for metric in ("auc", "gauc")}})
        shots = sorted({row["shots"] for rows in references.values() for row in rows})
        seeds = max((len(row["seeds"]) for rows in references.values() for row in rows), default=0)
        result.append({"test": test, "method": method, "shots": shots, "seeds": seeds,
                       "equal_data": equal, "full_data": full})
    return result
