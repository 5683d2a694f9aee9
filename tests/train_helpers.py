"""Shared helpers for the train tests: a small learnable dataset and tiny-model configs."""

from __future__ import annotations

import json
from pathlib import Path

from data_builders.structure import HistoryItem, render_input, structure_fields
from data_builders.templates import load_record_template
from tallrec_cli.train.config import TrainConfig, load_train_config

MOVIE_TEMPLATE = load_record_template("tallrec-movie")
INSTRUCTION = ("Given the user's preference and unpreference, identify whether the user will like the target movie "
               'by answering "Yes." or "No.".')
LIKED = ["Toy Story (1995)", "Star Wars (1977)", "Fargo (1996)"]
DISLIKED = ["Heat (1995)"]


def record(index: int, label: int, history: int = 2) -> dict:
    """Label follows the target title, so a few LoRA steps can learn it. Built like `data build` builds
    records: structure first, the input rendered from it through the tallrec-movie template."""
    target = LIKED[index % len(LIKED)] if label else DISLIKED[0]
    items = [HistoryItem(LIKED[(index + k) % len(LIKED)], True) for k in range(history)]
    items.append(HistoryItem("Heat (1995)", False))
    return {"instruction": INSTRUCTION, "input": render_input(MOVIE_TEMPLATE, 0, items, target),
            "output": "Yes." if label else "No.", "label": label, "id": f"r{index}",
            **structure_fields(items, target, MOVIE_TEMPLATE.name, 0)}


def write_dataset(folder: Path, train: int = 16, valid: int = 8, history: int = 2, valid_labels=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    splits = {"train": [record(i, i % 2, history) for i in range(train)],
              "valid": [record(100 + i, valid_labels[i] if valid_labels else i % 2, history) for i in range(valid)]}
    for name, rows in splits.items():
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def tiny_config(model_dir: Path, data_dir: Path, output: Path, **overrides) -> TrainConfig:
    values = {
        "model": {"name": str(model_dir), "dtype": "float32"},
        "data": {"train": str(data_dir), "shots": None, "max_valid": None},
        "prompt": {"max_length": 256},
        "training": {"epochs": 1, "max_steps": 4, "lr": 0.01, "batch_size": 4, "micro_batch_size": 2,
                     "warmup_steps": 0, "eval_every": 2, "eval_batch_size": 8},
        "output": {"dir": str(output)},
    }
    for key, value in overrides.items():
        section, name = key.split("__")
        values.setdefault(section, {})[name] = value
    return load_train_config(None, values)
