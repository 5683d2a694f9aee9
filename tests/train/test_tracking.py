"""--report-to: TensorBoard event files hold train loss, validation AUC/GAUC/log-loss and throughput."""

from __future__ import annotations

import importlib.util
import json

import pytest

from tallrec_cli.core.errors import ConfigError
from tallrec_cli.train.config import preflight
from tallrec_cli.train.run import run_training
from tests.conftest import require_module
from tests.train_helpers import tiny_config, write_dataset


def _with_users(folder, users: int = 3):
    """Give each validation record a user id, so validation also computes GAUC."""
    path = folder / "valid.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for number, row in enumerate(rows):
        row["user_id"] = number % users
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


def test_tensorboard_event_files_hold_validation_metrics_and_throughput(tmp_path, tiny_model_dir):
    require_module("tensorboard", "the test extra installs it; users get it with the tensorboard extra")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = _with_users(write_dataset(tmp_path / "data"))
    run = tmp_path / "run"
    run_training(tiny_config(tiny_model_dir, data, run, training__report_to="tensorboard"))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [0, 2, 4] and all("val_gauc" in row for row in rows)

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"eval/auc", "eval/gauc", "eval/log_loss", "train/loss", "train/throughput_samples_per_second"} <= tags
    logged = {event.step: event.value for event in events.Scalars("eval/auc")}
    assert logged == pytest.approx({row["step"]: row["val_auc"] for row in rows})
    losses = {event.step: event.value for event in events.Scalars("eval/log_loss")}
    assert losses == pytest.approx({row["step"]: row["val_loss"] for row in rows})
    assert [event.step for event in events.Scalars("train/loss")] == [1, 2, 3, 4]
    assert all(event.value > 0 for event in events.Scalars("train/throughput_samples_per_second"))


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="needs a machine without wandb")
def test_a_missing_tracking_package_is_found_before_loading(tmp_path, tiny_model_dir):
    data = write_dataset(tmp_path / "data")
    with pytest.raises(ConfigError, match="report_to: wandb needs the wandb package") as error:
        preflight(tiny_config(tiny_model_dir, data, tmp_path / "run", training__report_to="wandb"))
    assert "nothing was loaded" in error.value.hint


def test_report_to_rejects_an_unknown_backend(tmp_path, tiny_model_dir):
    with pytest.raises(ConfigError, match="report_to: 'comet' is not one of none, tensorboard, wandb, mlflow"):
        tiny_config(tiny_model_dir, tmp_path, tmp_path / "run", training__report_to="comet")
