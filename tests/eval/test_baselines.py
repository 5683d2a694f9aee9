"""Baselines: the history-share formula, popularity evidence, learned references on training data only,
cold fallbacks (the sweep's equal-data and full-data references: tests/sweep/test_references.py)."""

from __future__ import annotations

import numpy as np
import pytest

from data_builders.bias import user_key
from data_builders.structure import labels_of
from tallrec_cli.core.errors import DataError
from tallrec_cli.core.metrics import safe_auc
from tallrec_cli.eval import baselines
from tests.sweep.test_sweep_run import movie_record


def test_history_share_is_the_formula_on_hand_built_records():
    records = [movie_record(i) for i in range(6)]
    for record in records:
        record["input"] = "(prompt text is never read)"
    expected = [(sum(i["liked"] for i in r["history"]) + 1) / (len(r["history"]) + 2) for r in records]
    scores, info = baselines.fit_and_score("history-share", None, records)
    assert np.allclose(scores, expected) and info["train_records"] == 0
    assert baselines.history_share([]) == 0.5


def test_popularity_counts_targets_and_history_mentions():
    train = [movie_record(i) for i in range(6)]
    test = [movie_record(100 + i) for i in range(12)]
    scores, _ = baselines.fit_and_score("popularity", train, test)
    # the label follows the item and histories mention liked items as liked: popularity separates perfectly
    assert safe_auc([r["label"] for r in test], scores) == 1.0
    unseen = dict(movie_record(0), item_id="new", target_title="New (2020)")
    model = baselines.make_baseline("popularity").fit(train)
    assert 0 < model.score([unseen])[0] < 1 and model.info()["cold"]["records_with_cold_item"] == 1


def test_logreg_reads_structure_with_and_without_ids():
    train = [movie_record(i) for i in range(12)]
    test = [movie_record(200 + i) for i in range(12)]
    scores, _ = baselines.fit_and_score("logreg", train, test)
    assert safe_auc([r["label"] for r in test], scores) == 1.0
    bare = [movie_record(i, metadata=False) for i in range(12)]  # imported TALLRec JSON: titles only
    scores, _ = baselines.fit_and_score("logreg", bare, [movie_record(200 + i, metadata=False) for i in range(12)])
    assert safe_auc([r["label"] for r in test], scores) == 1.0


def test_single_class_sample_gives_constant_scores_and_says_so():
    train = [movie_record(i) for i in (0, 2, 4)]  # all liked
    scores, info = baselines.fit_and_score("logreg", train, [movie_record(1), movie_record(2)])
    assert np.all(scores == 1.0) and "single-class" in info["notes"][0]
    result = baselines.evaluate_baselines(train, [movie_record(1), movie_record(2)])
    assert result["LogReg"]["auc"] == 0.5 and result["LogReg"]["n"] == 2


def test_records_without_structure_are_refused_with_a_hint():
    bare = {key: movie_record(0)[key] for key in ("instruction", "input", "output", "label", "id")}
    with pytest.raises(DataError, match="no history structure"):
        baselines.fit_and_score("history-share", None, [bare])


def _many_users(count: int, seed: int) -> list[dict]:
    """Records of 20 users x 12 items whose labels follow a user and an item effect."""
    rng = np.random.default_rng(seed)
    records = []
    for index in range(count):
        user, item = int(rng.integers(20)), int(rng.integers(12))
        label = int(rng.random() < 0.15 + 0.35 * (user % 2) + 0.4 * (item % 3 == 0))
        record = movie_record(index)
        record.update(user_id=f"u{user}", item_id=f"i{item}", target_title=f"Item {item}", label=label,
                      timestamp=1000 + index)
        records.append(record)
    return records


@pytest.mark.parametrize("name", ["bias", "gbdt", "mf", "popularity", "logreg"])
def test_full_data_baselines_learn_and_read_no_test_label(name):
    train, test = _many_users(1200, 0), _many_users(300, 1)
    scores, info = baselines.fit_and_score(name, train, test)
    assert safe_auc([r["label"] for r in test], scores) > 0.7
    flipped = [dict(record, label=1 - record["label"]) for record in test]
    again, _ = baselines.fit_and_score(name, train, flipped)
    assert np.allclose(scores, again, rtol=0, atol=1e-6)  # torch sums in threads: last-bit noise only


def _with_context(records: list[dict], seed: int) -> list[dict]:
    """The records with a prompt context: a noisy cf_like that follows the label, and like counts."""
    rng = np.random.default_rng(seed)
    for record in records:
        like = 60 + 25 * (2 * record["label"] - 1) + rng.normal(0, 25)
        ratings = int(rng.integers(0, 40))
        record["context"] = {"cf_like": int(np.clip(round(like), 1, 99)), "item_ratings": ratings,
                             "item_likes": int(rng.integers(0, ratings + 1)), "user_ratings": 10, "user_likes": 5}
    return records


def test_prompt_numbers_reads_the_context_and_no_test_label():
    train, test = _with_context(_many_users(800, 0), 0), _with_context(_many_users(300, 1), 1)
    labels = [r["label"] for r in test]
    model = baselines.make_baseline("prompt-numbers").fit(train)
    scores = model.score(test)
    # the history is the fixture's (unrelated to these labels): only cf_like can carry them
    assert safe_auc(labels, scores) > 0.8 > safe_auc(labels, baselines.fit_and_score("history-share", None, test)[0]) + 0.2
    assert "cf_like" in model.info()["notes"][0] and "item_ratings" in model.info()["notes"][0]
    flipped = [dict(record, label=1 - record["label"]) for record in test]
    assert np.array_equal(scores, model.score(flipped))
    # a template that prints a lone count (no likes beside it) is read too
    lone = [dict(record, context={"cf_like": record["context"]["cf_like"], "item_ratings": 3}) for record in train]
    assert safe_auc(labels, baselines.fit_and_score("prompt-numbers", lone, [
        dict(record, context={"cf_like": record["context"]["cf_like"], "item_ratings": 3}) for record in test])[0]) > 0.8


def test_prompt_numbers_without_context_ranks_like_the_history_share():
    train, test = _many_users(200, 0), _many_users(60, 1)
    scores, _ = baselines.fit_and_score("prompt-numbers", train, test)
    share, _ = baselines.fit_and_score("history-share", None, test)
    order = np.argsort(share, kind="stable")
    steps = np.diff(scores[order])[np.diff(share[order]) > 0]
    # a function of the share, monotone: the same ranking (up or down, as the training data says)
    assert len(set(zip(share, scores))) == len(set(share)) and (np.all(steps > 0) or np.all(steps < 0))


def test_prompt_numbers_refuses_records_with_other_context_fields():
    train = _with_context(_many_users(100, 0), 0)
    model = baselines.make_baseline("prompt-numbers").fit(train)
    with pytest.raises(DataError, match="other context fields") as error:
        model.score(_many_users(5, 1))
    assert "same template" in error.value.hint


def test_gbdt_features_use_training_data_only_and_ordered_statistics():
    train, test = _many_users(400, 0), _many_users(50, 1)
    model = baselines.make_baseline("gbdt").fit(train)
    flipped = [dict(record, label=1 - record["label"]) for record in test]
    assert np.array_equal(model.features(test), model.features(flipped))
    # a training row's user/item rates come from rows before it: its own label never reaches them
    labels = labels_of(train).astype(float)
    order = np.arange(len(train))
    changed = labels.copy()
    changed[-1] = 1 - changed[-1]
    users = [user_key(r) for r in train]
    before = model.users.ordered(users, labels, order)[0]
    after = model.users.ordered(users, changed, order)[0]
    assert np.array_equal(before, after)


def test_cold_users_and_items_fall_back_and_are_counted():
    train = _many_users(400, 0)
    cold = [dict(record, user_id="stranger", item_id="unseen", target_title="Unseen") for record in _many_users(5, 1)]
    for name in ("gbdt", "mf", "bias"):
        model = baselines.make_baseline(name).fit(train)
        scores = model.score(cold)
        assert np.all((scores > 0) & (scores < 1))
        if name != "bias":
            assert model.info()["cold"]["records_with_cold_item"] == 5


def test_baselines_that_learn_need_training_records():
    assert baselines.check_baseline_names(["history-share"], has_train=False) == []
    problems = baselines.check_baseline_names(["gbdt", "nope"], has_train=False)
    assert any("unknown baseline 'nope'" in p for p in problems) and any("--train" in p for p in problems)
