"""Property tests: no split strategy leaks a test target into training, and counts add up."""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data_builders.interactions import assemble
from data_builders.readers import Report
from data_builders.records import make_examples

logs = st.lists(
    st.tuples(st.integers(0, 12), st.integers(0, 30), st.integers(1, 5), st.integers(0, 50)),
    min_size=1, max_size=250,
).map(lambda rows: pd.DataFrame(
    [(f"u{u}", f"i{i}", float(r), t) for u, i, r, t in rows], columns=["user_id", "item_id", "rating", "timestamp"],
))

options = st.fixed_dictionaries({
    "history_len": st.integers(1, 6),
    "max_records": st.one_of(st.none(), st.integers(1, 200)),
    "ratios": st.sampled_from([[0.8, 0.1, 0.1], [0.5, 0.25, 0.25], [1.0, 0.0, 0.0], [0.34, 0.33, 0.33]]),
    "seed": st.integers(0, 2**32 - 1),
})


def interactions_of(log: pd.DataFrame):
    titles = pd.Series("title", index=log["item_id"].unique())
    return assemble(log, titles, [], Report(), "titles")


def _targets(examples, split_code: int) -> pd.DataFrame:
    data = examples.interactions
    rows = examples.order[examples.target[examples.split == split_code]]
    return pd.DataFrame({"user_id": data.user_code[rows], "item_id": data.item_code[rows],
                         "timestamp": data.timestamp[rows]})


def _build(log: pd.DataFrame, strategy: str, opts: dict):
    return make_examples(interactions_of(log), 3.0, opts["history_len"], opts["history_len"] // 2,
                         opts["max_records"], strategy, opts["ratios"], opts["seed"], split_last=2)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(log=logs, strategy=st.sampled_from(["tallrec", "leave-last-out", "last-n", "temporal", "user"]), opts=options)
def test_splits_never_leak_and_counts_add_up(log, strategy, opts):
    examples = _build(log, strategy, opts)
    eligible = int((examples.position >= opts["history_len"] // 2).sum())
    expected = eligible if opts["max_records"] is None else min(eligible, opts["max_records"])
    sizes = [int((examples.split == code).sum()) for code in range(3)]
    assert sum(sizes) == len(examples.target) == expected
    train, valid, test = (_targets(examples, code) for code in range(3))
    train_keys = set(map(tuple, train.astype(str).to_numpy()))
    assert not train_keys & set(map(tuple, test.astype(str).to_numpy()))
    assert not train_keys & set(map(tuple, valid.astype(str).to_numpy()))
    # every history is the ratings just before its target, of the same user
    data = examples.interactions
    for index, row in enumerate(examples.target[:50]):
        window = examples.order[row - examples.history_len[index]: row + 1]
        assert len(set(data.user_code[window])) == 1
        assert (np.diff(data.timestamp[window]) >= 0).all()
    if strategy == "user":
        users = [set(part["user_id"]) for part in (train, valid, test)]
        assert not (users[0] & users[1] or users[0] & users[2] or users[1] & users[2])
    if strategy == "temporal" and len(train) and len(test):
        assert train["timestamp"].max() <= test["timestamp"].min()
        if len(valid):
            assert train["timestamp"].max() <= valid["timestamp"].min() <= valid["timestamp"].max() \
                <= test["timestamp"].min()
    if strategy == "leave-last-out":
        # each user's last record is in test and their second last in valid
        for user, group in pd.DataFrame({"user": examples.target_users(),
                                         "split": examples.split}).groupby("user", sort=False):
            codes = group["split"].tolist()
            assert codes[-1] == 2 and (len(codes) < 2 or codes[-2] == 1) and set(codes[:-2]) <= {0}
    if strategy == "last-n":
        # each user's last 2 records are in test, the 2 before them in valid (split_last=2 in _build)
        for user, group in pd.DataFrame({"user": examples.target_users(),
                                         "split": examples.split}).groupby("user", sort=False):
            codes = group["split"].tolist()
            assert codes[-2:] == [2] * min(2, len(codes)) and codes[-4:-2] == [1] * min(2, max(len(codes) - 2, 0))
            assert set(codes[:-4]) <= {0}
    if strategy == "tallrec":
        assert list(examples.split) == sorted(examples.split)


def test_many_users_preset_gives_every_user_test_records(real_data, tmp_path):
    from data_builders.build import build_config, build_dataset

    manifest = build_dataset(build_config("movielens-100k", "many-users",
                                          {"path": str(real_data / "ml-100k"), "output": str(tmp_path / "d")}))
    assert manifest["config"]["split"] == "last-n" and manifest["config"]["max_records"] is None
    assert manifest["splits"]["test"]["users"] == manifest["splits"]["valid"]["users"] == 943
    assert manifest["splits"]["test"]["records"] == 943 * 5


def test_tallrec_split_sizes_follow_ratios():
    log = pd.DataFrame({"user_id": ["u"] * 101, "item_id": [f"i{i}" for i in range(101)],
                        "rating": np.tile([1.0, 5.0], 51)[:101], "timestamp": pd.array(range(101), dtype="Int64")})
    examples = make_examples(interactions_of(log), 3.0, 1, 1, None, "tallrec", [0.8, 0.1, 0.1], 0)
    assert [int((examples.split == code).sum()) for code in range(3)] == [80, 10, 10]


def test_user_split_is_seeded():
    log = pd.DataFrame({"user_id": [f"u{k % 40}" for k in range(400)], "item_id": [f"i{k}" for k in range(400)],
                        "rating": [float(k % 5 + 1) for k in range(400)],
                        "timestamp": pd.array(range(400), dtype="Int64")})
    first, again, other = (make_examples(interactions_of(log), 3.0, 3, 3, None, "user", [0.8, 0.1, 0.1], seed).split
                           for seed in (7, 7, 8))
    assert (first == again).all() and not (first == other).all()
