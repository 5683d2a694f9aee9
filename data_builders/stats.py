"""Per-split statistics of a dataset folder: sizes, balance, history and prompt lengths."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from data_builders.dataset import load_split
from data_builders.records import SPLIT_NAMES
from tallrec_cli.core.errors import DataError


def prompt_text(record: dict) -> str:
    return record["instruction"] + "\n" + record["input"]


def dataset_stats(dataset_dir: str | os.PathLike, tokenizer=None) -> list[dict[str, Any]]:
    """One row per split present: records, users, items, positive rate, history and prompt lengths."""
    folder = Path(dataset_dir)
    if not folder.exists():
        raise DataError(f"{folder} does not exist", "check the path (a folder made by `tallrec data build`)")
    splits = [s for s in SPLIT_NAMES if (folder / f"{s}.jsonl").is_file() or (folder / f"{s}.json").is_file()]
    if not splits:
        raise DataError(f"{folder} holds no train/valid/test .jsonl or .json file",
                        "pass a folder made by `tallrec data build` or `tallrec data import`")
    rows = []
    for split in splits:
        records = load_split(folder, split)
        chars = np.array([len(prompt_text(r)) for r in records])
        histories = [len(r["history"]) for r in records if r.get("history") is not None]
        row = {
            "split": split,
            "records": len(records),
            "users": len({r["user_id"] for r in records}) if all("user_id" in r for r in records) else None,
            "items": len({r["item_id"] for r in records}) if all("item_id" in r for r in records) else None,
            "positive_rate": float(np.mean([r["label"] for r in records])) if records else None,
            "history_mean": float(np.mean(histories)) if histories else None,
            **_lengths("chars", chars),
        }
        if tokenizer is not None:
            ids = tokenizer([prompt_text(r) for r in records], add_special_tokens=False)["input_ids"]
            row.update(_lengths("tokens", np.array([len(x) for x in ids])))
        rows.append(row)
    return rows


def _lengths(unit: str, values: np.ndarray) -> dict[str, float | int | None]:
    if not len(values):
        return {f"{unit}_mean": None, f"{unit}_p95": None, f"{unit}_max": None}
    return {f"{unit}_mean": float(values.mean()), f"{unit}_p95": float(np.percentile(values, 95)),
            f"{unit}_max": int(values.max())}
