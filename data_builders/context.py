"""Collaborative context for prompts: like-rates of the target item and of the user, from the training
split only.

CoLLM / BinLLM put collaborative information into the prompt. Here it is four numbers a template can
print through its ``context`` line: how many of the target item's ratings were likes (``item_likes`` of
``item_ratings``) and the same for the user (``user_likes`` of ``user_ratings``). They are counted over
the training split's records only. A training record sees only training records before it in time
(ordered statistics, ties in record order), so its own label, and later ones, never reach its prompt;
validation and test records see the whole training split. Items and users with no counted rating
(cold) get 0 of 0 and are counted in the manifest.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

from data_builders.records import Examples

FIELDS = ("item_likes", "item_ratings", "user_likes", "user_ratings")


@dataclass
class TrainingCounts:
    """Counts from the training split: totals per item / user code, and for each training record the
    counts of training records strictly before it."""

    item_likes: np.ndarray
    item_ratings: np.ndarray
    user_likes: np.ndarray
    user_ratings: np.ndarray
    before: dict[int, tuple[int, int, int, int]]  # training record index (in examples.target) -> counts before it

    @classmethod
    def from_examples(cls, examples: Examples) -> TrainingCounts:
        interactions = examples.interactions
        train = np.flatnonzero(examples.split == 0)
        rows = examples.order[examples.target[train]]
        liked = examples.liked[examples.target[train]].astype(np.int64)
        items, users = interactions.item_code[rows], interactions.user_code[rows]
        items_total, users_total = len(interactions.item_ids), len(interactions.user_ids)
        times = interactions.timestamp[rows] if interactions.timestamp is not None else np.zeros(len(rows), np.int64)
        frame = pd.DataFrame({"item": items, "user": users, "liked": liked, "time": times,
                              "record": train}).sort_values(["time", "record"], kind="stable")
        before = {}
        columns = []
        for key in ("item", "user"):
            grouped = frame.groupby(key, sort=False)["liked"]
            columns += [(grouped.cumsum() - frame["liked"]).to_numpy(), grouped.cumcount().to_numpy()]
        for record, *counts in zip(frame["record"].to_numpy(), *columns):
            before[int(record)] = tuple(int(count) for count in counts)
        return cls(np.bincount(items, liked, items_total).astype(np.int64), np.bincount(items, None, items_total),
                   np.bincount(users, liked, users_total).astype(np.int64), np.bincount(users, None, users_total),
                   before)

    def fields(self, index: int, item: int, user: int) -> dict[str, int]:
        """Context numbers for the record ``examples.target[index]`` about ``item`` by ``user``."""
        if index in self.before:
            return dict(zip(FIELDS, self.before[index]))
        return dict(zip(FIELDS, (int(self.item_likes[item]), int(self.item_ratings[item]),
                                 int(self.user_likes[user]), int(self.user_ratings[user]))))


class ContextAdder:
    """Adds ``context`` to each record of a split and counts cold items and users per split."""

    def __init__(self, examples: Examples):
        self.examples = examples
        self.counts = TrainingCounts.from_examples(examples)
        self.item_code = {item: code for code, item in enumerate(examples.interactions.item_ids)}
        self.user_code = {user: code for code, user in enumerate(examples.interactions.user_ids)}
        self.cold: dict[str, dict[str, int]] = {}

    def records(self, split_code: int, split: str, records: Iterator[dict]) -> Iterator[dict]:
        chosen = np.flatnonzero(self.examples.split == split_code)
        cold = self.cold.setdefault(split, {"items": 0, "users": 0})
        for index, record in zip(chosen.tolist(), records):
            context = self.counts.fields(index, self.item_code[record["item_id"]], self.user_code[record["user_id"]])
            cold["items"] += context["item_ratings"] == 0
            cold["users"] += context["user_ratings"] == 0
            yield {**record, "context": context}
