"""Shared helpers for the train tests: a small learnable dataset and tiny-model configs."""

from __future__ import annotations

import json
from pathlib import Path

from tallrec_cli.train import TrainConfig, load_train_config

INSTRUCTION = ("Given the user's preference and unpreference, identify whether the user will like the target movie "
               'by answering "Yes." or "No.".')
LIKED = ["Toy Story (1995)", "Star Wars (1977)", "Fargo (1996)"]
DISLIKED = ["Heat (1995)"]


def record(index: int, label: int, history: int = 2) -> dict:
    """Label follows the target title, so a few LoRA steps can learn it."""
    target = LIKED[index % len(LIKED)] if label else DISLIKED[0]
    preference = ", ".join(f'"{LIKED[(index + k) % len(LIKED)]}"' for k in range(history))
    text = (f"User Preference: {preference}\nUser Unpreference: \"Heat (1995)\"\n"
            f'Whether the user will like the target movie "{target}"?')
    return {"instruction": INSTRUCTION, "input": text, "output": "Yes." if label else "No.", "label": label,
            "id": f"r{index}"}


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
