"""Experiment tracking (``training.report_to``): transformers' own reporting callbacks (TensorBoard,
Weights & Biases, MLflow), fed with what tallrec measures beside the trainer's loss.

The trainer logs train loss, learning rate and gradient norm to them by itself. Validation happens in
tallrec's `ValidationCallback`, outside the trainer's logging, so `TrackingCallback` forwards each
validation row (AUC, GAUC when records carry user ids, log-loss) at its own step, and the training
throughput at every loss log. TensorBoard event files go to RUN/tensorboard/.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

from transformers import TrainerCallback

TENSORBOARD_DIR = "tensorboard"




def reporting_callbacks(report_to: str, run_dir: Path) -> list:
    """transformers' integration callback for ``report_to`` (none: no callbacks)."""
    if report_to == "none":
        return []
    from transformers.integrations import TensorBoardCallback, get_reporting_integration_callbacks

    callbacks = [cls() for cls in get_reporting_integration_callbacks([report_to])]
    for callback in callbacks:
        if isinstance(callback, TensorBoardCallback):
            callback.logging_dir = str(run_dir / TENSORBOARD_DIR)
    return callbacks


def _finite(logs: dict) -> dict[str, float]:
    return {key: float(value) for key, value in logs.items()
            if isinstance(value, (int, float)) and not math.isnan(float(value))}


class TrackingCallback(TrainerCallback):
    """Sends validation rows and throughput to ``reporters``. Added after `ValidationCallback`, so at
    each step end the rows it recorded (the step-0 row included) are there to send."""

    def __init__(self, status, reporters: list, samples_per_step: int):
        self.status = status
        self.reporters = reporters
        self.samples_per_step = samples_per_step
        self.sent = 0
        self.last_log: tuple[int, float] | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.sent = len(self.status.rows)  # rows of an earlier session (--resume) were sent then
        self.last_log = (state.global_step, time.monotonic())

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs or self.last_log is None:
            return
        step, started = self.last_log
        now = time.monotonic()
        if state.global_step > step and now > started:
            rate = (state.global_step - step) * self.samples_per_step / (now - started)
            self._send({"throughput_samples_per_second": rate}, args, state, control)
        self.last_log = (state.global_step, now)

    def on_step_end(self, args, state, control, **kwargs):
        for row in self.status.rows[self.sent:]:
            logs = {"eval_auc": row.get("val_auc"), "eval_gauc": row.get("val_gauc"), "eval_log_loss": row.get("val_loss")}
            self._send(logs, args, dataclasses.replace(state, global_step=row["step"]), control)
        self.sent = len(self.status.rows)

    def _send(self, logs: dict, args, state, control) -> None:
        logs = _finite({key: value for key, value in logs.items() if value is not None})
        for reporter in self.reporters:
            reporter.on_log(args, state, control, logs=logs)
