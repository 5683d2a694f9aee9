"""The common shape every source reader produces: a rating log as integer-coded arrays plus item texts.

Ids become integer codes once, right after reading: sorting, windows and splits then work on numbers,
and only the rows that end up in records are turned back into id strings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from data_builders.readers import Report
from tallrec_cli.core.errors import DataError


@dataclass
class Interactions:
    """Ratings in file order. ``user_code`` follows first appearance in the log (TALLRec's user order);
    ``timestamp`` is None when the source has no times. Codes index ``user_ids``/``item_ids``/``item_text``."""

    user_code: np.ndarray
    item_code: np.ndarray
    rating: np.ndarray
    timestamp: np.ndarray | None
    user_ids: list[str]
    item_ids: list[str]
    item_text: list[str]
    files: list[Path]

    def __len__(self) -> int:
        return len(self.user_code)


def assemble(ratings: pd.DataFrame, item_text: pd.Series, files: list[Path], report: Report,
             items_file: str) -> Interactions:
    """``ratings`` has user_id, item_id, rating and timestamp (all missing for untimed sources) in file
    order; ``item_text`` maps item id -> text. Ratings of items without text are dropped (noted)."""
    user_code, user_ids = pd.factorize(ratings["user_id"])  # codes in order of first appearance
    item_code, item_ids = pd.factorize(ratings["item_id"])
    item_keys = [str(item) for item in item_ids]
    item_text = item_text.set_axis(item_text.index.astype(str))
    texts = item_text[~item_text.index.duplicated(keep="first")].reindex(item_keys)
    keep = texts.notna().to_numpy()[item_code]
    if not keep.all():
        report.note(f"{int((~keep).sum())} ratings dropped: their item has no title in {items_file}")
    timestamps = ratings["timestamp"]
    has_times = bool(timestamps.notna().any())
    if not keep.any():
        raise DataError(f"no usable ratings in {', '.join(str(f) for f in files)}",
                        "check that the files are the right ones and not filtered away (see the notes above)")
    return Interactions(
        user_code=user_code[keep].astype(np.int64), item_code=item_code[keep].astype(np.int64),
        rating=ratings["rating"].to_numpy(dtype=np.float64)[keep],
        timestamp=timestamps.to_numpy(dtype=np.int64)[keep] if has_times else None,
        user_ids=[str(user) for user in user_ids], item_ids=item_keys,
        item_text=texts.fillna("").astype(str).tolist(), files=files,
    )
