"""The run every consumer test exports: `$TALLREC_INTEROP_RUN` (what `make interop` trains, or the demo's run),
else a two-step training on the embedded model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def interop_run(tmp_path_factory) -> Path:
    if os.environ.get("TALLREC_INTEROP_RUN"):
        return Path(os.environ["TALLREC_INTEROP_RUN"]).resolve()
    from tallrec_cli.train.config import load_train_config
    from tallrec_cli.train.run import run_training
    from tests.train_helpers import write_dataset

    root = tmp_path_factory.mktemp("interop-run")
    config = load_train_config(None, {
        "model": {"name": "smollm2-135m", "dtype": "float32"},
        "lora": {"target_modules": ["q_proj", "v_proj", "up_proj"]},
        "data": {"train": str(write_dataset(root / "data", train=8, valid=8)), "shots": None, "max_valid": None},
        "prompt": {"max_length": 192},
        "training": {"max_steps": 2, "lr": 0.01, "batch_size": 4, "micro_batch_size": 4, "warmup_steps": 0,
                     "eval_every": 2, "eval_batch_size": 8},
        "output": {"dir": str(root / "run")},
    })
    run_training(config)
    return root / "run"
