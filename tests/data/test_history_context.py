"""`data build --history relevant|mixed` and collaborative context fields: selection keeps time order and
picks the planted relevant items, nothing from validation/test reaches a training record, context counts
exclude the record itself, and tallrec-movie stays byte-identical (see test_data_build's TALLRec test)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data_builders.build import build_config, build_dataset
from data_builders.selection import RELEVANT_SUFFIX, ItemVectors, relevant_positions
from data_builders.structure import HistoryItem, render_input, shortened
from data_builders.templates import TEMPLATES_DIR, load_record_template
from tallrec_cli.core.errors import ConfigError
from tallrec_cli.core.files import read_jsonl


def _log(folder: Path, users: int = 40, items: int = 40, per_user: int = 24, flip_last: int = 0) -> dict:
    """Users of group u % 2 like the items of genre i % 2 (rating 5) and dislike the rest (rating 1).
    ``flip_last``: flip the ratings of each user's last interactions (the valid/test ones of last-n)."""
    rng = np.random.default_rng(0)
    rows = []
    for user in range(users):
        chosen = rng.choice(items, size=per_user, replace=False)
        for step, item in enumerate(chosen):
            rating = 5 if item % 2 == user % 2 else 1
            if step >= per_user - flip_last:
                rating = 6 - rating
            rows.append({"user_id": f"u{user}", "item_id": f"i{item}", "rating": rating,
                         "timestamp": 1000 * user + step})
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(folder / "log.csv", index=False)
    pd.DataFrame({"item_id": [f"i{i}" for i in range(items)],
                  "title": [f"Item {i} ({'odd' if i % 2 else 'even'})" for i in range(items)]}).to_csv(
        folder / "items.csv", index=False)
    return {"path": str(folder / "log.csv"), "items_path": str(folder / "items.csv")}


def build(tmp_path: Path, name: str, source: dict, **values) -> dict:
    settings = {"output": str(tmp_path / name), "split": "last-n", "split_last": 2, "max_records": None,
                "history_len": 3, **source, **values}
    return build_dataset(build_config("csv", None, settings))


def splits(folder: Path) -> dict[str, list[dict]]:
    return {split: read_jsonl(folder / f"{split}.jsonl") for split in ("train", "valid", "test")}


def test_relevant_positions_pick_the_most_similar_in_time_order():
    similarities = np.array([0.1, 0.9, -0.5, 0.8, 0.9, 0.0])
    assert relevant_positions(similarities, 3) == [1, 3, 4]
    assert relevant_positions(np.zeros(5), 2) == [3, 4]  # no signal: the most recent
    assert relevant_positions(similarities[:2], 3) == [0, 1]
    vectors = ItemVectors(np.eye(3)[[0, 1, 0, 2]], "planted")
    assert vectors.similarities([0, 1, 2, 3], 2).tolist() == [1.0, 0.0, 1.0, 0.0]


def test_relevant_histories_pick_the_planted_items_in_time_order(tmp_path):
    source = _log(tmp_path / "raw")
    manifest = build(tmp_path, "relevant", source, history="relevant", history_pool=12)
    assert manifest["history"]["strategy"] == "relevant" and manifest["history"]["n"] == 12
    assert manifest["history"]["similarity"].startswith("collaborative")
    build(tmp_path, "pool", source, history_len=12)  # the same records with all N items shown
    pool = {record["id"]: record for data in splits(tmp_path / "pool").values() for record in data}
    share = {}
    for name in ("relevant",):
        same_genre = []
        for record in splits(tmp_path / name)["test"]:
            ids = [item["item_id"] for item in record["history"]]
            full = [item["item_id"] for item in pool[record["id"]]["history"]]
            assert len(ids) == min(3, len(full))
            positions = [full.index(item) for item in ids]
            assert positions == sorted(positions)  # a subsequence of the last N, in time order
            target_genre = int(record["item_id"][1:]) % 2
            same_genre += [int(item[1:]) % 2 == target_genre for item in ids]
        share[name] = np.mean(same_genre)
    assert share["relevant"] > 0.9  # the planted structure: same-genre items are the relevant ones


def test_mixed_writes_both_views_for_training_only(tmp_path):
    source = _log(tmp_path / "raw")
    manifest = build(tmp_path, "mixed", source, history="mixed", history_pool=9)
    build(tmp_path, "recent", source)
    build(tmp_path, "relevant", source, history="relevant", history_pool=9)
    mixed, recent, relevant = (splits(tmp_path / name) for name in ("mixed", "recent", "relevant"))
    assert manifest["history"]["training_views"] == 2
    assert len(mixed["train"]) == 2 * len(recent["train"])
    assert mixed["train"][0::2] == recent["train"]
    assert [dict(r, id=r["id"].removesuffix(RELEVANT_SUFFIX)) for r in mixed["train"][1::2]] == relevant["train"]
    assert mixed["test"] == relevant["test"] and mixed["valid"] == relevant["valid"]


def test_no_validation_or_test_interaction_reaches_a_training_record(tmp_path):
    template = "tallrec-movie-context"
    build(tmp_path, "a", _log(tmp_path / "raw-a"), history="relevant", history_pool=9, template=template)
    build(tmp_path, "b", _log(tmp_path / "raw-b", flip_last=4), history="relevant", history_pool=9,
          template=template)
    a, b = splits(tmp_path / "a"), splits(tmp_path / "b")
    assert a["train"] == b["train"]  # vectors and context counts see the training split only
    assert a["test"] != b["test"]


def test_context_counts_exclude_the_record_and_later_ones(tmp_path):
    manifest = build(tmp_path, "ctx", _log(tmp_path / "raw"), template="tallrec-movie-context")
    data = splits(tmp_path / "ctx")
    train = data["train"]
    for index, record in enumerate(train):
        earlier = [r for r in train[:index] + train[index + 1:]
                   if (r["timestamp"], train.index(r)) < (record["timestamp"], index)]
        item = [r["label"] for r in earlier if r["item_id"] == record["item_id"]]
        user = [r["label"] for r in earlier if r["user_id"] == record["user_id"]]
        assert record["context"] == {"item_likes": sum(item), "item_ratings": len(item),
                                     "user_likes": sum(user), "user_ratings": len(user)}
    for record in data["test"]:
        item = [r["label"] for r in train if r["item_id"] == record["item_id"]]
        assert (record["context"]["item_likes"], record["context"]["item_ratings"]) == (sum(item), len(item))
        assert f"{sum(item)} of {len(item)} ratings of the target movie" in record["input"]
    assert manifest["context"]["cold"]["train"]["users"] == 40  # each user's first training record
    # training-time shortening re-renders the context line
    short = shortened(data["test"][0], 1, load_record_template("tallrec-movie-context"))
    assert "ratings of the target movie were likes" in short["input"]


def test_plain_template_ignores_context_and_is_unchanged():
    template = load_record_template("tallrec-movie")
    items = [HistoryItem("A (1995)", True), HistoryItem("B (1996)", False)]
    plain = render_input(template, 0, items, "C (1997)")
    assert render_input(template, 0, items, "C (1997)", {"item_likes": 1, "item_ratings": 2, "user_likes": 3,
                                                        "user_ratings": 4}) == plain
    assert plain == 'User Preference: "A (1995)"\nUser Unpreference: "B (1996)"\n' \
                    'Whether the user will like the target movie "C (1997)"?'


@pytest.mark.parametrize("values, message", [
    ({"history": "relevant", "history_pool": 2}, "smaller than history_len"),
    ({"history": "relevant", "similarity": "text"}, "needs a model"),
])
def test_bad_selection_settings_are_clear_errors(tmp_path, values, message):
    with pytest.raises(ConfigError, match=message):
        build(tmp_path, "bad", _log(tmp_path / "raw"), **values)
    assert not (tmp_path / "bad").exists()


def test_text_similarity_embeds_titles_once_and_caches(tmp_path, tiny_model_dir):
    from data_builders.selection import text_vectors

    titles = ["Toy Story (1995)", "Star Wars (1977)", "Heat (1995)"]
    first = text_vectors(titles, str(tiny_model_dir))
    second = text_vectors(titles, str(tiny_model_dir))
    assert "cached" in second.source and "cached" not in first.source
    np.testing.assert_allclose(first.vectors, second.vectors, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(first.vectors, axis=1), 1.0, atol=1e-5)
    manifest = build(tmp_path, "text", _log(tmp_path / "raw", items=12, per_user=10), history="relevant",
                     history_pool=6, similarity="text", embed_model=str(tiny_model_dir))
    assert manifest["history"]["similarity"].startswith(f"text: {tiny_model_dir}")
    assert json.loads((tmp_path / "text" / "test.jsonl").read_text().splitlines()[0])["history"]


def test_imported_text_with_a_context_line_parses_back_to_its_numbers():
    from data_builders.structure import parse_input

    template = load_record_template("tallrec-movie-context")
    items = [HistoryItem("A (1995)", True), HistoryItem("B (1996)", False)]
    context = {"item_likes": 3, "item_ratings": 7, "user_likes": 11, "user_ratings": 20}
    record = {"instruction": template.variants[0]["instruction"],
              "input": render_input(template, 0, items, "C (1997)", context)}
    parsed = parse_input(record, [template])
    assert parsed["context"] == context and parsed["target_title"] == "C (1997)"


def _flip_rating(source: dict, user: str, item: str) -> dict:
    frame = pd.read_csv(source["path"])
    row = (frame["user_id"] == user) & (frame["item_id"] == item)
    assert row.sum() == 1
    frame.loc[row, "rating"] = 6 - frame.loc[row, "rating"]
    frame.to_csv(source["path"], index=False)
    return source


def test_cf_like_is_the_bias_reference_for_test_and_cross_fitted_for_training(tmp_path):
    from tallrec_cli.eval.baselines import make_baseline

    rng = np.random.default_rng(1)
    source = _log(tmp_path / "raw")
    frame = pd.read_csv(source["path"])  # noise, so the bias model is not a perfect separator
    frame["rating"] = np.where(rng.random(len(frame)) < 0.2, 6 - frame["rating"], frame["rating"])
    frame.to_csv(source["path"], index=False)
    manifest = build(tmp_path, "cf", source, template="tallrec-movie-cf")
    assert manifest["context"]["fields"] == ["cf_like"]
    data = splits(tmp_path / "cf")
    reference = make_baseline("bias").fit(data["train"]).score(data["test"])
    assert [r["context"]["cf_like"] for r in data["test"]] == np.clip(np.rint(100 * reference), 1, 99).tolist()
    assert f"gives {data['test'][0]['context']['cf_like']}% that" in data["test"][0]["input"]

    # a training record's own label never reaches its number: flip it and the number stays
    record = data["train"][7]
    _flip_rating(source, record["user_id"], record["item_id"])
    build(tmp_path, "flipped", source, template="tallrec-movie-cf")
    flipped = {r["id"]: r for r in splits(tmp_path / "flipped")["train"]}[record["id"]]
    assert flipped["label"] != record["label"]
    assert flipped["context"] == record["context"]
    # while the test numbers, from the model fitted on all of training, move with it
    assert [r["context"] for r in splits(tmp_path / "flipped")["test"]] != [r["context"] for r in data["test"]]


def test_cf_line_parses_back_and_unknown_context_fields_are_errors(tmp_path):
    from data_builders.structure import parse_input

    template = load_record_template("tallrec-movie-cf")
    assert template.context_fields == ("cf_like",)
    items = [HistoryItem("A (1995)", True)]
    record = {"instruction": template.variants[0]["instruction"],
              "input": render_input(template, 0, items, "C (1997)", {"cf_like": 73})}
    assert parse_input(record, [template])["context"] == {"cf_like": 73}
    text = (TEMPLATES_DIR / "tallrec-movie-cf.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("{cf_like}", "{mf_score}"))
    with pytest.raises(ConfigError, match="unknown placeholder 'mf_score'") as info:
        load_record_template(str(bad))
    assert "{cf_like}" in info.value.hint


def _random_log(folder: Path, users: int = 80, items: int = 30, per_user: int = 24) -> dict:
    """Ratings that carry no signal at all: any history that predicts a label learnt it from the label."""
    rng = np.random.default_rng(3)
    rows = [{"user_id": f"u{user}", "item_id": f"i{item}", "rating": int(rng.choice([1, 5])), "timestamp": 1000 * user + step}
            for user in range(users) for step, item in enumerate(rng.choice(items, size=per_user, replace=False))]
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(folder / "log.csv", index=False)
    pd.DataFrame({"item_id": [f"i{i}" for i in range(items)], "title": [f"Item {i}" for i in range(items)]}).to_csv(
        folder / "items.csv", index=False)
    return {"path": str(folder / "log.csv"), "items_path": str(folder / "items.csv")}


def test_relevant_history_of_a_training_record_does_not_leak_its_own_label(tmp_path):
    """The training split's item vectors hold each training record's own rating; picking the history items
    most similar to the target through them would pick the items the user rated the same way, and the
    history's like-share would predict the label even where ratings are pure noise. Cross-fitted vectors
    leave the rule on relevant histories where it is on recent ones (a little below 0.5 there: a liked
    record leaves one like fewer among its user's other ratings)."""
    from tallrec_cli.core.metrics import safe_auc
    from tallrec_cli.eval.baselines import history_share

    source = _random_log(tmp_path / "raw")
    aucs = {}
    for history in ("recent", "relevant"):
        build(tmp_path, history, source, history=history, history_pool=12, history_len=4)
        train = splits(tmp_path / history)["train"]
        aucs[history] = safe_auc(np.array([r["label"] for r in train]),
                                 np.array([history_share(r["history"]) for r in train]))
    assert aucs["recent"] < 0.5 and abs(aucs["relevant"] - aucs["recent"]) < 0.03, aucs
