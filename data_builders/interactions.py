"""The common shape every source reader produces: a rating log in file order plus item texts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from data_builders.readers import Report
from tallrec_cli.errors import DataError

COLUMNS = ["user_id", "item_id", "rating", "timestamp"]


@dataclass
class Interactions:
    """``ratings``: user_id, item_id (text), rating (float), timestamp (Int64, all missing when the
    source has no times) in file order; ``item_text``: item_id -> the text prompts show."""

    ratings: pd.DataFrame
    item_text: pd.Series
    files: list[Path]

    @property
    def has_timestamps(self) -> bool:
        return bool(self.ratings["timestamp"].notna().any())


def assemble(ratings: pd.DataFrame, item_text: pd.Series, files: list[Path], report: Report,
             items_file: str) -> Interactions:
    """Drop ratings of items without text and exact repeats, then check something is left."""
    ratings = ratings[COLUMNS].reset_index(drop=True)
    ratings["user_id"] = ratings["user_id"].astype(str)
    ratings["item_id"] = ratings["item_id"].astype(str)
    ratings["timestamp"] = ratings["timestamp"].astype("Int64")
    item_text = item_text[~item_text.index.duplicated(keep="first")]
    known = ratings["item_id"].isin(item_text.index)
    if not known.all():
        report.note(f"{int((~known).sum())} ratings dropped: their item has no title in {items_file}")
        ratings = ratings[known]
    # a repeated (user, item, time) would be the same target twice, possibly in two splits
    repeated = ratings.duplicated(subset=["user_id", "item_id", "timestamp"], keep="last")
    if repeated.any():
        report.note(f"{int(repeated.sum())} repeated (user, item, time) ratings dropped (the last one is kept)")
        ratings = ratings[~repeated]
    if ratings.empty:
        raise DataError(f"no usable ratings in {', '.join(str(f) for f in files)}",
                        "check that the files are the right ones and not filtered away (see the notes above)")
    return Interactions(ratings.reset_index(drop=True), item_text, files)
