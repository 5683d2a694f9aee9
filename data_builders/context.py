"""Collaborative context for prompts, from the training split only.

CoLLM / BinLLM put collaborative information into the prompt. Here it is numbers a template can print
through its ``context`` line:

- ``item_likes`` of ``item_ratings``: how many of the target item's ratings were likes, and the same for
  the user (``user_likes`` of ``user_ratings``). A training record counts only training records before it
  in time (ordered statistics, ties in record order), so its own label, and later ones, never reach its
  prompt; validation and test records count the whole training split. Items and users with no counted
  rating (cold) get 0 of 0 and are counted in the manifest.
- ``cf_like``: the bias-only collaborative model's P(like) in percent (1-99), the same model as the
  ``bias`` reference (``tallrec_cli.eval.baselines``) fitted on the training split, so a test record's number
  is that reference's score. Training records get cross-fitted numbers (a record's
  number comes from the model fitted on the other folds, ``Examples.training_folds``), so no record's own label reaches its prompt,
  the stacking rule. Computed only for templates whose context line prints it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

from data_builders.bias import C_BIAS, OneHotModel, bias_features, item_key, user_key
from data_builders.records import Examples
from data_builders.templates import COUNT_FIELDS


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
            return dict(zip(COUNT_FIELDS, self.before[index]))
        return dict(zip(COUNT_FIELDS, (int(self.item_likes[item]), int(self.item_ratings[item]),
                                       int(self.user_likes[user]), int(self.user_ratings[user]))))


def cf_percent(probabilities: np.ndarray) -> np.ndarray:
    """P(like) as a whole percent kept to two digits (1-99), one token per digit for the model to read."""
    return np.clip(np.rint(100 * probabilities), 1, 99).astype(np.int64)


def cf_likes(examples: Examples, seed: int) -> np.ndarray:
    """``cf_like`` for every record (indexed like ``examples.target``): the bias model fitted on the
    training split scores validation and test records; training records are cross-fitted."""
    interactions = examples.interactions
    rows = examples.order[examples.target]
    features = [bias_features(user_key({"user_id": interactions.user_ids[user]}),
                              item_key({"item_id": interactions.item_ids[item]}))
                for user, item in zip(interactions.user_code[rows], interactions.item_code[rows])]
    labels = examples.liked[examples.target].astype(np.int64)
    train = np.flatnonzero(examples.split == 0)
    scores = np.full(len(rows), np.nan)
    later = np.flatnonzero(examples.split != 0)
    model = OneHotModel.fit([features[i] for i in train], labels[train], C_BIAS, seed)
    scores[later] = model.score([features[i] for i in later])
    folds = examples.training_folds(seed)
    for fold in np.unique(folds):
        fit_part, held_out = train[folds != fold], train[folds == fold]
        fitted = OneHotModel.fit([features[i] for i in fit_part], labels[fit_part], C_BIAS, seed)
        scores[held_out] = fitted.score([features[i] for i in held_out])
    return cf_percent(scores)


class ContextAdder:
    """Adds ``context`` (the ``fields`` a template prints) to each record of a split and counts cold items
    and users per split."""

    def __init__(self, examples: Examples, fields: tuple[str, ...], seed: int):
        self.examples = examples
        self.fields = fields
        self.counts = TrainingCounts.from_examples(examples)
        self.cf_like = cf_likes(examples, seed) if "cf_like" in fields else None
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
            if self.cf_like is not None:
                context["cf_like"] = int(self.cf_like[index])
            yield {**record, "context": {field: context[field] for field in self.fields}}
