"""Eval metrics against hand-computed and scikit-learn values."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

from tallrec_cli.core.metrics import (
    auc_interval,
    bootstrap_aucs,
    bootstrap_samples,
    compute_metrics,
    expected_calibration_error,
    group_auc,
    ranking_metrics,
    safe_auc,
)

LABELS = [1, 0, 1, 1, 0, 0, 1, 0]
SCORES = [0.9, 0.3, 0.6, 0.4, 0.4, 0.1, 0.8, 0.7]
USERS = ["a", "a", "a", "b", "b", "b", "c", "c"]


def record_bootstrap(labels, scores, resamples: int, seed: int) -> list[float]:
    """AUC of each resample of the records by scikit-learn, one resample at a time (one-class draws left out)."""
    labels, scores = np.asarray(labels), np.asarray(scores)
    return [roc_auc_score(labels[rows], scores[rows]) for block in bootstrap_samples(labels.size, resamples, seed)
            for rows in block if np.unique(labels[rows]).size == 2]


def user_bootstrap(labels, scores, users, resamples: int, seed: int) -> list[float]:
    """GAUC of each resample of the users, by loops: each drawn user's scikit-learn AUC weighted by their records."""
    labels, scores, users = np.asarray(labels), np.asarray(scores), np.asarray([str(user) for user in users])
    kept = [user for user in dict.fromkeys(users.tolist()) if np.unique(labels[users == user]).size == 2]
    auc = {user: roc_auc_score(labels[users == user], scores[users == user]) for user in kept}
    records = {user: int((users == user).sum()) for user in kept}
    gaucs = []
    for block in bootstrap_samples(len(kept), resamples, seed):
        for drawn in block:
            chosen = [kept[index] for index in drawn]
            gaucs.append(sum(auc[user] * records[user] for user in chosen) / sum(records[user] for user in chosen))
    return gaucs


def percentile_interval(values) -> list[float]:
    return list(np.percentile(values, [2.5, 97.5]))


def test_auc_with_ties_and_one_class():
    # pairs (pos, neg): 16; pos 0.4 vs neg 0.4 is a tie (half); 0.6 and 0.4 lose to neg 0.7
    assert safe_auc(LABELS, SCORES) == pytest.approx((16 - 2 - 0.5) / 16)
    assert safe_auc([1, 1], [0.2, 0.3]) is None


def test_gauc_weights_users_by_records_and_skips_single_class_users():
    gauc, used, skipped = group_auc(LABELS + [1], SCORES + [0.5], USERS + ["d"])
    # a: 2 pos vs 1 neg, both above -> 1.0 (3 records); b: 0.4 vs {0.4, 0.1} -> 0.75 (3); c: 0.8 vs 0.7 -> 1.0 (2)
    assert gauc == pytest.approx((1.0 * 3 + 0.75 * 3 + 1.0 * 2) / 8)
    assert (used, skipped) == (3, 1)


def test_expected_calibration_error_by_hand():
    labels, scores = [1, 0, 1, 0], [0.95, 0.91, 0.15, 0.05]
    # bin 9: mean score 0.93, positive rate 0.5 (2 records); bin 1: 0.15 vs 1; bin 0: 0.05 vs 0
    expected = (2 * abs(0.93 - 0.5) + abs(0.15 - 1) + abs(0.05 - 0)) / 4
    assert expected_calibration_error(labels, scores) == pytest.approx(expected)
    assert expected_calibration_error([1], [1.0]) == pytest.approx(0.0)  # 1.0 falls in the top bin


def test_compute_metrics_matches_sklearn_and_hand_values():
    metrics = compute_metrics(LABELS, SCORES, USERS, resamples=200, seed=3)
    assert metrics["records"] == 8 and metrics["positives"] == 4
    assert metrics["auc"] == pytest.approx(roc_auc_score(LABELS, SCORES))
    assert metrics["log_loss"] == pytest.approx(log_loss(LABELS, SCORES))
    assert metrics["brier"] == pytest.approx(np.mean((np.array(SCORES) - LABELS) ** 2))
    assert metrics["brier"] == pytest.approx(brier_score_loss(LABELS, SCORES))
    assert metrics["accuracy"] == pytest.approx(6 / 8)  # >= 0.5 means yes: positive 0.4 and negative 0.7 wrong
    assert metrics["gauc_users"] == 3 and metrics["notes"] == [
        "GAUC rests on 3 users with both labels (of 3): under 30, it mostly reflects a few users; use a many-user "
        "split (--preset many-users)"]
    assert metrics["auc_ci95"] == pytest.approx(percentile_interval(record_bootstrap(LABELS, SCORES, 200, 3)))
    assert metrics["gauc_ci95"] == pytest.approx(percentile_interval(user_bootstrap(LABELS, SCORES, USERS, 200, 3)))


def test_one_class_reports_everything_but_auc():
    metrics = compute_metrics([1, 1, 1], [0.2, 0.6, 0.9], ["u", "u", "v"])
    assert metrics["auc"] is None and metrics["auc_ci95"] is None and metrics["gauc"] is None
    assert any("one class" in note for note in metrics["notes"])
    assert metrics["accuracy"] == pytest.approx(2 / 3)
    assert metrics["log_loss"] == pytest.approx(-np.mean(np.log([0.2, 0.6, 0.9])))


def test_vectorised_bootstrap_equals_sklearn_on_each_resample():
    rng = np.random.default_rng(0)
    labels, scores = rng.integers(0, 2, 120), np.round(rng.random(120), 1)  # rounding makes ties
    aucs = bootstrap_aucs(labels, scores, resamples=150, seed=7)
    reference = [roc_auc_score(labels[rows], scores[rows]) for block in bootstrap_samples(120, 150, 7) for rows in block]
    np.testing.assert_allclose(aucs, reference, atol=1e-12)
    assert auc_interval(labels, scores, 300, seed=1) == auc_interval(labels, scores, 300, seed=1)


def test_bootstrap_resamples_with_one_class_are_ignored():
    aucs = bootstrap_aucs([1, 0, 0, 0, 0], [0.9, 0.1, 0.2, 0.3, 0.4], resamples=200, seed=0)
    assert np.isnan(aucs).any() and np.nanmin(aucs) == 1.0
    assert auc_interval([1, 0, 0, 0, 0], [0.9, 0.1, 0.2, 0.3, 0.4], 200) == (1.0, 1.0)


def test_hit_rate_and_ndcg_by_hand():
    groups = ["a", "a", "a", "b", "b", "c"]
    scores = [0.9, 0.5, 0.7, 0.1, 0.2, 0.3]
    labels = [0, 1, 0, 1, 0, 0]
    result = ranking_metrics(groups, scores, labels, ks=(1, 2, 3))
    # a ranks [0, 0, 1]; b ranks [0, 1]; c has no positive and is skipped
    assert (result["users"], result["users_skipped"]) == (2, 1)
    assert result["hr@1"] == 0.0 and result["hr@2"] == 0.5 and result["hr@3"] == 1.0
    assert result["ndcg@2"] == pytest.approx((0 + 1 / np.log2(3)) / 2)
    assert result["ndcg@3"] == pytest.approx((1 / np.log2(4) + 1 / np.log2(3)) / 2)


def test_paired_bootstrap_recovers_a_known_difference():
    from tallrec_cli.core.metrics import paired_difference

    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(200), 10)
    labels = rng.integers(0, 2, users.size)
    strong = labels + rng.normal(0, 1.0, users.size)
    weak = labels + rng.normal(0, 2.0, users.size)
    result = paired_difference(labels, strong, weak, users, resamples=500)
    low, high = result["auc_diff_ci95"]
    assert low < result["auc_diff"] < high and low > 0  # strong is better, and the interval says so
    assert result["gauc_diff_ci95"][0] > 0
    same = paired_difference(labels, strong, strong, users, resamples=200)
    assert same["auc_diff"] == 0 and same["auc_diff_ci95"] == [0.0, 0.0] and same["gauc_diff_ci95"] == [0.0, 0.0]
    swapped = paired_difference(labels, weak, strong, users, resamples=500)
    assert swapped["auc_diff_ci95"][1] < 0


def test_gauc_interval_and_user_counts_in_metrics():
    rng = np.random.default_rng(1)
    users = np.repeat(np.arange(40), 6)
    labels = rng.integers(0, 2, users.size)
    scores = labels * 0.5 + rng.random(users.size) * 0.5
    metrics = compute_metrics(labels, scores, users)
    assert metrics["gauc_ci95"] == pytest.approx(percentile_interval(user_bootstrap(labels, scores, users, 1000, 0)))
    assert metrics["users"] == 40
    few = compute_metrics(labels[:60], rng.random(60), users[:60])
    assert any("under 30" in note for note in few["notes"])


def test_comparison_verdict_per_metric():
    from tallrec_cli.eval.compare import verdict

    assert verdict({"auc_diff_ci95": [0.01, 0.05], "gauc_diff_ci95": [-0.2, -0.01]}) == "+/-"
    assert verdict({"auc_diff_ci95": [-0.01, 0.05], "gauc_diff_ci95": None}) == "=/?"


def test_gauc_intervals_weight_each_drawn_user_by_their_records():
    """Users of 2 to 21 records whose AUC grows with their record count: an unweighted resample mean is lower."""
    from tallrec_cli.core.metrics import gauc_interval, paired_difference

    rng = np.random.default_rng(4)
    users = np.repeat(np.arange(20), np.arange(2, 22))
    labels = np.tile([0, 1], users.size // 2 + 1)[:users.size]
    noise = 3.0 / np.bincount(users)[users]  # few records: noisy scores
    scores = labels + rng.normal(0, noise)
    expected = percentile_interval(user_bootstrap(labels, scores, users, 300, 5))
    assert gauc_interval(labels, scores, users, resamples=300, seed=5) == pytest.approx(expected)
    reference = labels + rng.normal(0, 1.0, users.size)
    difference = paired_difference(labels, scores, reference, users, resamples=300, seed=5)
    aucs = {user: (roc_auc_score(labels[users == user], scores[users == user])
                   - roc_auc_score(labels[users == user], reference[users == user]), int((users == user).sum()))
            for user in range(20)}
    draws = [sum(aucs[user][0] * aucs[user][1] for user in drawn) / sum(aucs[user][1] for user in drawn)
             for block in bootstrap_samples(20, 300, 5) for drawn in block]
    assert difference["gauc_diff_ci95"] == pytest.approx(percentile_interval(draws))
    assert difference["gauc_diff"] == pytest.approx(sum(d * n for d, n in aucs.values()) / users.size)


def test_accuracy_counts_a_score_of_exactly_one_half_as_yes():
    from sklearn.metrics import accuracy_score

    labels, scores = [1, 0, 1, 1], [0.5, 0.49, 0.51, 0.5]
    assert compute_metrics(labels, scores, resamples=0)["accuracy"] == accuracy_score(labels, [1, 0, 1, 1]) == 1.0
