"""Few-shot training subsets, drawn the way TALLRec does it.

TALLRec takes ``Dataset.shuffle(seed=s).select(range(k))``; ``datasets`` shuffles with
``np.random.default_rng(seed).permutation(n)``, so the first k of that permutation is the same subset,
and the subsets for growing k under one seed are nested.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from data_builders.dataset import load_split
from tallrec_cli.core.errors import DataError
from tallrec_cli.core.files import refuse_overlap, staged_dir, write_jsonl_atomic
from tallrec_cli.core.integrity import RECORDED_FILES, record_files
from tallrec_cli.core.manifests import read_manifest, write_manifest


def _label(record: dict) -> int:
    return int(record["label"])


def sample_records(records: list[dict], shots: int, seed: int, stratify: bool = False) -> list[dict]:
    """``shots`` records for ``seed``; with ``stratify`` the pool's label balance is kept (rounded).

    Stratified subsets are nested too: both classes are taken in the order of the same permutation and
    each class's quota never shrinks as ``shots`` grows.
    """
    if shots < 1:
        raise DataError(f"shots must be at least 1, got {shots}", "pass e.g. --shots 16,64,256")
    if shots > len(records):
        raise DataError(f"cannot draw {shots} records from a pool of {len(records)}",
                        f"use at most {len(records)} shots, or build a larger dataset")
    order = np.random.default_rng(seed).permutation(len(records))
    if not stratify:
        return [records[i] for i in order[:shots]]
    labels = np.array([_label(records[i]) for i in order])
    positives = int(labels.sum())
    take_positive = min(positives, int(np.floor(shots * positives / len(records) + 0.5)))
    take_negative = min(len(records) - positives, shots - take_positive)
    take_positive = shots - take_negative
    rank = np.where(labels == 1, np.cumsum(labels == 1), np.cumsum(labels == 0))
    keep = np.where(labels == 1, rank <= take_positive, rank <= take_negative)
    return [records[i] for i in order[keep]]


def parse_int_list(text: str, name: str, minimum: int = 0) -> list[int]:
    """``"16,64"`` -> ``[16, 64]``; every value at least ``minimum`` (seeds >= 0, shots >= 1 or 0 for zero-shot)."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise DataError(f"{name} must be comma-separated integers, got {text!r}", _example(name)) from None
    if not values:
        raise DataError(f"{name} is empty", _example(name))
    small = [value for value in values if value < minimum]
    if small:
        raise DataError(f"{name} must be at least {minimum}, got {small[0]}", _example(name))
    return values


def _example(name: str) -> str:
    """An example value of the option ``name``: shot sizes for --shots, seeds for --seeds."""
    return f"e.g. --{name} " + {"shots": "16,64,256", "seeds": "0,1,2"}.get(name, "1,2,3")


def write_samples(dataset: str | os.PathLike, output: str | os.PathLike, shots: list[int], seeds: list[int],
                  stratify: bool = False, split: str = "train", overwrite: bool = False) -> dict[str, Any]:
    """Write ``train-k{k}-seed{s}.jsonl`` for every shots/seed pair plus a ``samples`` manifest."""
    refuse_overlap(output, [dataset])
    pool = load_split(dataset, split)
    too_big = [k for k in shots if k > len(pool)]
    if too_big:
        raise DataError(f"cannot draw {max(too_big)} records from the {len(pool)} {split} records of {dataset}",
                        f"use at most {len(pool)} shots")
    dataset_path = Path(dataset)
    source_manifest = read_manifest(dataset_path) if (dataset_path / "manifest.json").is_file() else None
    files = {}
    with staged_dir(output, "samples", overwrite=overwrite) as staging:
        for seed in seeds:
            for k in shots:
                subset = sample_records(pool, k, seed, stratify)
                name = f"{split}-k{k}-seed{seed}.jsonl"
                write_jsonl_atomic(staging / name, subset)
                positives = sum(_label(r) for r in subset)
                files[name] = {"shots": k, "seed": seed, "records": len(subset), "positives": positives}
        payload = {
            "dataset": str(dataset_path.resolve()),
            "dataset_created": source_manifest and source_manifest.get("created"),
            "split": split, "pool_records": len(pool), "pool_positives": sum(_label(r) for r in pool),
            "shots": shots, "seeds": seeds, "stratify": stratify,
            "method": "stratified by label, nested" if stratify else "datasets Dataset.shuffle(seed).select(range(k))",
            "files": files,
            RECORDED_FILES: record_files(staging, list(files)),
        }
        write_manifest(staging, "samples", payload)
    return payload
