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

from data_builders.interactions import Interactions
from data_builders.templates import Template
from tallrec_cli.core.errors import ConfigError

SPLIT_NAMES = ("train", "valid", "test")
CROSS_FIT_FOLDS = 5


@dataclass
class Examples:
    """Records before rendering. ``order`` lists log rows in record order (repeats removed), ``position``
    is each of those rows' index within its user's sequence; ``target`` indexes ``order``."""

    interactions: Interactions
    order: np.ndarray
    position: np.ndarray
    liked: np.ndarray
    target: np.ndarray
    history_len: np.ndarray
    split: np.ndarray
    repeats_dropped: int

    def labels(self) -> np.ndarray:
        return self.liked[self.target]

    def target_users(self) -> np.ndarray:
        return self.interactions.user_code[self.order[self.target]]

    def training_folds(self, seed: int) -> np.ndarray:
        """The cross-fitting fold of each training record, in split order. What a training record's
        prompt or history is computed from is fitted without its fold, so its own label never reaches it
        (the stacking rule); validation and test records use fits on the whole training split."""
        from sklearn.model_selection import KFold

        count = int((self.split == 0).sum())
        folds = np.zeros(count, dtype=np.int64)
        if count >= 2:
            splits = KFold(min(CROSS_FIT_FOLDS, count), shuffle=True, random_state=seed).split(np.arange(count))
            for fold, (_, held_out) in enumerate(splits):
                folds[held_out] = fold
        return folds


def _record_order(user: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Rows sorted by (user, time), ties in file order."""
    span = int(times.max() - times.min()) + 1 if len(times) else 1
    if (int(user.max()) + 1 if len(user) else 1) < (1 << 62) // span:
        # one int64 key and a stable sort: several times faster than a three-key lexsort
        return np.argsort(user * span + (times - times.min()), kind="stable")
    return np.lexsort((np.arange(len(user)), times, user))


def order_interactions(interactions: Interactions) -> tuple[np.ndarray, np.ndarray, int]:
    """Record order, position within the user, and how many exact (user, item, time) repeats were dropped."""
    times = interactions.timestamp if interactions.timestamp is not None else np.zeros(len(interactions), np.int64)
    order = _record_order(interactions.user_code, times)
    user, time = interactions.user_code[order], times[order]
    # a repeated (user, item, time) would be the same target twice, maybe in two splits; repeats can only
    # sit inside a run of equal (user, time), so only those rows are checked (the last one is kept)
    tie = np.r_[False, (user[1:] == user[:-1]) & (time[1:] == time[:-1])]
    in_run = tie | np.r_[tie[1:], False]
    repeats = 0
    if in_run.any():
        rows = np.flatnonzero(in_run)
        run_id = np.cumsum(~tie)[rows]
        repeated = pd.DataFrame({"run": run_id, "item": interactions.item_code[order[rows]]}).duplicated(keep="last")
        if repeated.any():
            repeats = int(repeated.sum())
            order = np.delete(order, rows[repeated.to_numpy()])
            user = interactions.user_code[order]
    starts = np.flatnonzero(np.r_[True, user[1:] != user[:-1]])
    position = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    return order, position, repeats


def assign_splits(users: np.ndarray, timestamps: np.ndarray | None, strategy: str, ratios: list[float],
                  seed: int, last: int = 5) -> np.ndarray:
    """0/1/2 (train/valid/test) per record; records come grouped by user, in time order within a user.
    ``last``: records per user in test, and in valid before them, for the ``last-n`` strategy."""
    count = len(users)
    codes = np.zeros(count, dtype=np.int8)
    cuts = np.cumsum(ratios)[:2]
    if strategy == "tallrec":
        first, second = (int(count * cut) for cut in cuts)
        codes[first:second], codes[second:] = 1, 2
    elif strategy in ("leave-last-out", "last-n"):
        group_end = np.flatnonzero(np.r_[users[1:] != users[:-1], True])
        ends = np.repeat(group_end, np.diff(np.r_[-1, group_end]))
        from_end = ends - np.arange(count)
        held = 1 if strategy == "leave-last-out" else last
        codes[(from_end >= held) & (from_end < 2 * held)], codes[from_end < held] = 1, 2
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
        split_of_user = np.zeros(int(unique.max()) + 1 if len(unique) else 0, dtype=np.int8)
        split_of_user[shuffled[first:second]], split_of_user[shuffled[second:]] = 1, 2
        codes = split_of_user[users]
    else:
        raise ConfigError(f"unknown split '{strategy}'", "use tallrec, leave-last-out, last-n, temporal or user")
    return codes


def make_examples(interactions: Interactions, like_threshold: float, history_len: int, min_history: int,
                  max_records: int | None, split: str, ratios: list[float], seed: int, split_last: int = 5) -> Examples:
    order, position, repeats = order_interactions(interactions)
    target = np.flatnonzero(position >= min_history)
    if max_records is not None:
        target = target[-max_records:]
    rows = order[target]
    times = interactions.timestamp[rows] if interactions.timestamp is not None else None
    return Examples(
        interactions=interactions, order=order, position=position,
        liked=interactions.rating[order] > like_threshold, target=target,
        history_len=np.minimum(position[target], history_len),
        split=assign_splits(interactions.user_code[rows], times, split, ratios, seed, split_last), repeats_dropped=repeats,
    )


class Renderer:
    """Turns examples into records: per-item texts are formatted once, then one pass per record."""

    def __init__(self, examples: Examples, template: Template, domain: str, seed: int):
        interactions = examples.interactions
        self.history_text = [template.history_item.format(item=text) for text in interactions.item_text]
        self.target_text = [template.target_item.format(item=text) for text in interactions.item_text]
        self.variant_of = np.random.default_rng(seed).integers(len(template.variants), size=len(examples.target))
        self.examples, self.template, self.domain = examples, template, domain
        # only the rows records reach become Python lists (a capped build of a huge log stays cheap)
        target = examples.target
        self.base = int(target[0] - examples.history_len[0]) if len(target) else 0
        rows = examples.order[self.base: int(target[-1]) + 1 if len(target) else 0]
        self.users = interactions.user_code[rows].tolist()
        self.items = interactions.item_code[rows].tolist()
        self.liked = examples.liked[self.base: self.base + len(rows)].tolist()
        self.positions = examples.position[self.base: self.base + len(rows)].tolist()
        self.timestamps = interactions.timestamp[rows].tolist() if interactions.timestamp is not None else None

    def records(self, split_code: int, on_progress: Callable[[int], None] | None = None,
                chunk: int = 10000) -> Iterator[dict]:
        """The records of one split in record order: TALLRec's three parts, then metadata."""
        examples, template, liked, items = self.examples, self.template, self.liked, self.items
        user_ids, item_ids = examples.interactions.user_ids, examples.interactions.item_ids
        titles, history_text = examples.interactions.item_text, self.history_text
        chosen = np.flatnonzero(examples.split == split_code)
        for count, index in enumerate(chosen.tolist(), start=1):
            row = int(examples.target[index]) - self.base
            start = row - int(examples.history_len[index])
            history = range(start, row)
            variant = int(self.variant_of[index])
            label = int(liked[row])
            yield {
                "instruction": template.variants[variant]["instruction"],
                "input": template.fill_input(
                    variant, [history_text[items[h]] for h in history if liked[h]],
                    [history_text[items[h]] for h in history if not liked[h]], self.target_text[items[row]]),
                "output": template.output(label),
                "id": f"{user_ids[self.users[row]]}:{self.positions[row]}",
                "user_id": user_ids[self.users[row]],
                "item_id": item_ids[items[row]],
                "label": label,
                "timestamp": None if self.timestamps is None else self.timestamps[row],
                "history": [{"item_id": item_ids[items[h]], "title": titles[items[h]], "liked": bool(liked[h])}
                            for h in history],
                "target_title": titles[items[row]],
                "template": template.name,
                "variant": variant,
                "domain": self.domain,
            }
            if on_progress and count % chunk == 0:
                on_progress(chunk)
        if on_progress:
            on_progress(len(chosen) % chunk)
