"""From a rating log to split, rendered records: vectorised ordering, windows and splits, then one
string-building pass per record.

Order (TALLRec's): users by first appearance in the log, each user's ratings by time (stable, so ties
and untimed logs keep file order). Every rating with at least ``min_history`` earlier ratings of the
same user becomes a record whose history is the (up to ``history_len``) ratings just before it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

from data_builders.templates import Template
from tallrec_cli.errors import ConfigError

SPLIT_NAMES = ("train", "valid", "test")


@dataclass
class Examples:
    """Records before rendering: ``target`` indexes the time-ordered ``ratings``; ``split`` is 0/1/2."""

    ratings: pd.DataFrame
    liked: np.ndarray
    position: np.ndarray
    target: np.ndarray
    history_len: np.ndarray
    split: np.ndarray

    def labels(self) -> np.ndarray:
        return self.liked[self.target]


def order_ratings(ratings: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Ratings in record order, each row's user code and its position within the user's sequence."""
    user_code = pd.factorize(ratings["user_id"])[0]  # codes follow first appearance
    times = ratings["timestamp"].fillna(0).to_numpy(dtype=np.int64)
    order = np.lexsort((np.arange(len(ratings)), times, user_code))
    user_code = user_code[order]
    starts = np.flatnonzero(np.r_[True, user_code[1:] != user_code[:-1]])
    position = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    return ratings.iloc[order].reset_index(drop=True), user_code, position


def assign_splits(users: np.ndarray, timestamps: np.ndarray | None, strategy: str, ratios: list[float],
                  seed: int) -> np.ndarray:
    """0/1/2 (train/valid/test) per record; records come grouped by user, in time order within a user."""
    count = len(users)
    codes = np.zeros(count, dtype=np.int8)
    cuts = np.cumsum(ratios)[:2]
    if strategy == "tallrec":
        first, second = (int(count * cut) for cut in cuts)
        codes[first:second], codes[second:] = 1, 2
    elif strategy == "leave-last-out":
        last = np.r_[users[1:] != users[:-1], True]
        group_end = np.flatnonzero(last)
        ends = np.repeat(group_end, np.diff(np.r_[-1, group_end]))
        from_end = ends - np.arange(count)
        codes[from_end == 1], codes[from_end == 0] = 1, 2
    elif strategy == "temporal":
        if timestamps is None:
            raise ConfigError("the temporal split needs timestamps and this source has none",
                              "use --split leave-last-out, user or tallrec")
        if count:
            first, second = np.quantile(timestamps, cuts, method="lower")
            codes[timestamps > first] = 1
            codes[timestamps > second] = 2
    elif strategy == "user":
        unique = np.unique(users)
        shuffled = np.random.default_rng(seed).permutation(unique)
        first, second = (int(len(unique) * cut) for cut in cuts)
        split_of_user = dict(zip(shuffled.tolist(), [0] * first + [1] * (second - first)
                                 + [2] * (len(unique) - second)))
        codes[:] = [split_of_user[user] for user in users.tolist()]
    else:
        raise ConfigError(f"unknown split '{strategy}'", "use tallrec, leave-last-out, temporal or user")
    return codes


def make_examples(ratings: pd.DataFrame, like_threshold: float, history_len: int, min_history: int,
                  max_records: int | None, split: str, ratios: list[float], seed: int) -> Examples:
    ordered, user_code, position = order_ratings(ratings)
    target = np.flatnonzero(position >= min_history)
    if max_records is not None:
        target = target[-max_records:]
    has_times = bool(ordered["timestamp"].notna().any())
    times = ordered["timestamp"].to_numpy(dtype=np.int64, na_value=0)[target] if has_times else None
    return Examples(
        ratings=ordered, liked=(ordered["rating"].to_numpy() > like_threshold), position=position, target=target,
        history_len=np.minimum(position[target], history_len),
        split=assign_splits(user_code[target], times, split, ratios, seed),
    )


class Renderer:
    """Turns examples into records: per-item texts are formatted once, then one pass per record."""

    def __init__(self, examples: Examples, item_text: pd.Series, template: Template, domain: str, seed: int):
        # only the rows records reach are turned into Python lists (a capped build of a huge log stays cheap)
        target = examples.target
        self.base = int(target[0] - examples.history_len[0]) if len(target) else 0
        window = examples.ratings.iloc[self.base: int(target[-1]) + 1 if len(target) else 0]
        codes, item_ids = pd.factorize(window["item_id"])
        texts = item_text.reindex(item_ids).tolist()
        self.history_text = [template.history_item.format(item=text) for text in texts]
        self.target_text = [template.target_item.format(item=text) for text in texts]
        self.variant_of = np.random.default_rng(seed).integers(len(template.variants), size=len(target))
        self.examples, self.template, self.domain = examples, template, domain
        self.item_codes = codes.tolist()
        self.liked = examples.liked[self.base: self.base + len(window)].tolist()
        self.users, self.items = window["user_id"].tolist(), window["item_id"].tolist()
        times = window["timestamp"]
        self.timestamps = times.to_numpy(dtype=np.int64, na_value=0).tolist() if times.notna().any() else None
        self.positions = examples.position[self.base: self.base + len(window)].tolist()

    def records(self, split_code: int, on_progress: Callable[[int], None] | None = None,
                chunk: int = 10000) -> Iterator[dict]:
        """The records of one split in record order: TALLRec's three parts, then metadata."""
        examples, template, liked, codes = self.examples, self.template, self.liked, self.item_codes
        join, history_text = template.separator.join, self.history_text
        chosen = np.flatnonzero(examples.split == split_code)
        for count, index in enumerate(chosen.tolist(), start=1):
            row = int(examples.target[index]) - self.base
            start = row - int(examples.history_len[index])
            history = range(start, row)
            variant = template.variants[self.variant_of[index]]
            label = int(liked[row])
            yield {
                "instruction": variant["instruction"],
                "input": variant["input"].format(
                    liked=join([history_text[codes[h]] for h in history if liked[h]]),
                    disliked=join([history_text[codes[h]] for h in history if not liked[h]]),
                    target=self.target_text[codes[row]]),
                "output": template.output(label),
                "id": f"{self.users[row]}:{self.positions[row]}",
                "user_id": self.users[row],
                "item_id": self.items[row],
                "label": label,
                "timestamp": None if self.timestamps is None else self.timestamps[row],
                "history_item_ids": self.items[start:row],
                "domain": self.domain,
            }
            if on_progress and count % chunk == 0:
                on_progress(chunk)
        if on_progress:
            on_progress(len(chosen) % chunk)
