"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def random_model(config, device: str, dtype=None):
    """A causal LM with random weights, initialised directly in ``dtype`` (bf16 by default) on ``device``: a
    7B model never exists as a 25.6 GiB fp32 copy first (the model class's constructor ignores ``config.dtype``)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device(device):
        return AutoModelForCausalLM.from_config(config, dtype=dtype or torch.bfloat16).eval()


def build_movie_dataset(data: str | None) -> Path:
    """MovieLens-100K in TALLRec's split (16 test users, from ../shared/data) unless a dataset folder is given."""
    if data is not None:
        return Path(data)
    from data_builders.build import build_config, build_dataset

    folder = Path(tempfile.mkdtemp(prefix="ml-100k-")) / "ml-100k"
    build_dataset(build_config("movielens-100k", "tallrec", {"path": str(REPO.parent / "shared/data/ml-100k"),
                                                             "output": str(folder)}))
    return folder


def train_adapter(dataset: Path, steps: int, template: str = "alpaca") -> Path:
    """A SmolLM2 LoRA run trained to answer "Yes."/"No." + EOS (answer-only loss), like TALLRec's adapters, so
    that TALLRec's ``generate`` stops after a few tokens."""
    from tallrec_cli.train.config import load_train_config
    from tallrec_cli.train.run import run_training

    run = Path(tempfile.mkdtemp(prefix="bench-eval-run-")) / "run"
    run_training(load_train_config(None, {
        "data": {"train": str(dataset), "shots": steps * 8, "max_valid": 16},
        "prompt": {"template": template},
        "training": {"max_steps": steps, "batch_size": 8, "micro_batch_size": 8, "eval_every": steps,
                     "warmup_steps": 0, "eval_at_start": False},
        "output": {"dir": str(run)},
    }))
    return run
