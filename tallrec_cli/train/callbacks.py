"""Trainer callbacks for `tallrec train`: validation AUC + early stopping + best-adapter keeping,
a progress line (through the current reporter), Ctrl-C handling that saves a checkpoint before stopping, and checkpoints that are
written whole or not at all."""

from __future__ import annotations

import json
import math
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from transformers import TrainerCallback

from tallrec_cli.core.files import replace_dir
from tallrec_cli.core.metrics import group_auc, log_loss, safe_auc
from tallrec_cli.core.reporting import Progress, reporter
from tallrec_cli.model.scoring import ScoringSpec
from tallrec_cli.train.fsdp import root_gathered, trainable_state


@dataclass
class TrainingStatus:
    """What the callbacks share: the latest numbers and the selection state (restored on --resume)."""
    selection_metric: str  # "val_auc" (higher is better) or "val_loss" (lower is better)
    last_loss: float | None = None
    last_val_auc: float | None = None
    best_step: int | None = None
    best_value: float | None = None
    best_row: dict | None = None
    evals_since_best: int = 0
    elapsed_before: float = 0.0  # wall seconds spent by earlier sessions of a resumed run
    rows: list[dict] = field(default_factory=list)
    interrupted_at: int | None = None
    phase: str = ""  # what the progress display shows beside the numbers (e.g. validating)
    on_phase: Callable[[], None] | None = None  # told when ``phase`` changes (set_phase), to redraw

    def set_phase(self, phase: str) -> None:
        self.phase = phase
        if self.on_phase is not None:
            self.on_phase()

    def improves(self, row: dict) -> bool:
        """Better than the best so far, or as good: a tie keeps the later step, which has trained longer (the
        earlier one may be a step taken at learning rate 0 during warmup, an adapter that never moved)."""
        value = row[self.selection_metric]
        if value is None:
            return False
        if self.best_value is None:
            return True
        return value >= self.best_value if self.selection_metric == "val_auc" else value <= self.best_value

    @property
    def start_row(self) -> dict | None:
        """The step-0 evaluation of the untrained adapter (= the base model), when one was made."""
        return next((row for row in self.rows if row["step"] == 0), None)

    def record(self, row: dict) -> bool:
        """Add an evaluation row; True when it is the new best. The step-0 row is a reference, never a
        candidate: an untrained adapter is not a result."""
        self.rows.append(row)
        self.last_val_auc = row["val_auc"]
        if row["step"] == 0:
            return False
        if not self.improves(row):
            self.evals_since_best += 1
            return False
        # a tie takes the later adapter but is no progress: early stopping still counts it
        tie = row[self.selection_metric] == self.best_value
        self.best_step, self.best_value, self.best_row = row["step"], row[self.selection_metric], row
        self.evals_since_best = self.evals_since_best + 1 if tie else 0
        return True


def training_autocast(model, args):
    """The autocast the Trainer trains under (bf16 / fp16 flags), for validation passes that call the model
    outside its wrapped forward: without it whatever is fp32 (the trainable LoRA weights, fp32 master weights
    under fp16) runs in fp32, activations and the scoring key/value cache grow, SDPA loses its fast kernels,
    and the numbers differ from training's."""
    import contextlib

    import torch

    dtype = torch.bfloat16 if getattr(args, "bf16", False) else torch.float16 if getattr(args, "fp16", False) else None
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(next(model.parameters()).device.type, dtype=dtype)


@dataclass(frozen=True)
class ValidationSet:
    """The rendered validation prompts, their 0/1 labels and (for per-user AUC) their user ids."""
    prompts: list[str]
    labels: list[int]
    users: list | None = None


@dataclass(frozen=True)
class ValidationSchedule:
    every: int  # validate (and checkpoint) every this many steps, and at the last one
    patience: int | None = None  # stop after this many evaluations without improvement
    at_start: bool = False  # validate the untrained adapter at step 0


class ValidationCallback(TrainerCallback):
    """Every ``schedule.every`` steps (and at the last step): P(yes) on the validation prompts with the
    scoring spec eval uses, AUC and log loss, a metrics.jsonl row, the adapter saved when the selection
    metric improves, early stopping after ``schedule.patience`` evaluations without improvement.

    With ``schedule.at_start`` a fresh run is first validated at step 0, before any update: the untrained
    adapter leaves the base model unchanged, so that row says what tuning gained.

    A checkpoint is requested at every evaluation so that --resume can rebuild the selection state
    from metrics.jsonl rows up to the checkpoint's step.
    """

    def __init__(self, status: TrainingStatus, run_dir: Path, tokenizer, valid: ValidationSet, spec: ScoringSpec,
                 schedule: ValidationSchedule, is_main: bool):
        self.status = status
        self.run_dir = run_dir
        self.tokenizer = tokenizer
        self.prompts = valid.prompts
        self.labels = np.asarray(valid.labels)
        self.users = valid.users  # with user ids, rows also carry per-user AUC (val_gauc)
        self.spec = spec
        self.schedule = schedule
        self.is_main = is_main
        self.started = time.monotonic()
        self.losses_since_eval: list[float] = []
        self.pending: dict | None = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.status.last_loss = float(logs["loss"])
            self.losses_since_eval.append(self.status.last_loss)
        if self.pending is not None and state.global_step >= self.pending["step"]:
            self._write_pending()

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        # Here rather than on_train_begin: the progress display is up by now.
        if self.schedule.at_start and state.global_step == 0 and self.status.start_row is None:
            self.pending = self._evaluate(model, state, args)
            self.status.record(self.pending)
            self._write_pending()

    def on_step_end(self, args, state, control, model=None, **kwargs):
        step = state.global_step
        if step % self.schedule.every and step < state.max_steps:
            return
        row = self._evaluate(model, state, args)
        if self.status.record(row):  # every rank: under FSDP, gathering the adapter takes all of them
            self._save_adapter(model)
        if self.schedule.patience is not None and self.status.evals_since_best >= self.schedule.patience:
            control.should_training_stop = True
        control.should_save = True
        self.pending = row

    def on_train_end(self, args, state, control, **kwargs):
        if self.pending is not None:
            self._write_pending()

    def _evaluate(self, model, state, args) -> dict:
        self.status.set_phase(f"validating on {len(self.prompts)} records")
        try:
            with training_autocast(model, args), root_gathered(model):
                scores = self._shared_scores(model)
        finally:
            self.status.set_phase("")
        row = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4), "train_loss": None,
               "val_auc": safe_auc(self.labels, scores), "val_loss": log_loss(self.labels, scores),
               "elapsed_s": round(self.status.elapsed_before + time.monotonic() - self.started, 2)}
        if self.users is not None:
            row["val_gauc"] = group_auc(self.labels, scores, self.users)[0]
        return row

    def _shared_scores(self, model) -> np.ndarray:
        """P(yes) for every validation prompt, the same on every rank: under DDP each rank scores every
        world_size-th prompt and the parts are gathered, so all ranks compute one AUC and take one early-stopping
        decision (separately computed scores can differ in the last bits and split the decision)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self.spec.score(model, self.tokenizer, self.prompts).scores
        rank, world = dist.get_rank(), dist.get_world_size()
        mine = self.spec.score(model, self.tokenizer, self.prompts[rank::world]).scores
        parts: list = [None] * world
        dist.all_gather_object(parts, mine)
        scores = np.empty(len(self.prompts), dtype=np.float32)
        for part_rank, part in enumerate(parts):
            scores[part_rank::world] = part
        return scores

    def _write_pending(self) -> None:
        row, self.pending = self.pending, None
        if self.losses_since_eval:
            row["train_loss"] = float(np.mean(self.losses_since_eval))
        self.losses_since_eval = []
        if self.is_main:
            with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")

    def _save_adapter(self, model) -> None:
        state = trainable_state(model)
        if not self.is_main:
            return
        staging = self.run_dir / ".adapter.partial"
        if staging.exists():
            shutil.rmtree(staging)
        model.save_pretrained(staging, safe_serialization=True, **({} if state is None else {"state_dict": state}))
        self.tokenizer.save_pretrained(staging)
        replace_dir(staging, self.run_dir / "adapter")


class InterruptCallback(TrainerCallback):
    """First Ctrl-C: finish the current step, save a checkpoint, stop. A second Ctrl-C aborts at once."""

    def __init__(self, status: TrainingStatus):
        self.status = status
        self.requested = False
        self.previous_handler = None

    def on_train_begin(self, args, state, control, **kwargs):
        if threading.current_thread() is threading.main_thread():
            self.previous_handler = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame):
        self.requested = True
        signal.signal(signal.SIGINT, self.previous_handler or signal.default_int_handler)

    def on_step_end(self, args, state, control, **kwargs):
        # at the last step the run ends anyway: it finishes (a resume would train past the limit)
        if self.requested and self.status.interrupted_at is None and state.global_step < state.max_steps:
            self.status.interrupted_at = state.global_step
            control.should_save = True
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        if self.previous_handler is not None:
            signal.signal(signal.SIGINT, self.previous_handler)
            self.previous_handler = None


class ProgressCallback(TrainerCallback):
    """step/total, loss, last validation AUC, samples/s and the phase (validating) as one progress line
    (rank 0 only)."""

    def __init__(self, status: TrainingStatus, samples_per_step: int):
        self.status = status
        self.samples_per_step = samples_per_step
        self.progress: Progress | None = None
        self.task = 0
        self.first_step = 0
        self.started = 0.0
        self.numbers = "training"

    def on_train_begin(self, args, state, control, **kwargs):
        self.progress = reporter().progress()
        self.progress.start()
        self.task = self.progress.add_task("training", total=state.max_steps, completed=state.global_step)
        self.first_step = state.global_step
        self.started = time.monotonic()
        self.status.on_phase = self._redraw

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is None:
            return
        done = state.global_step - self.first_step
        rate = done * self.samples_per_step / max(time.monotonic() - self.started, 1e-9)
        loss = "-" if self.status.last_loss is None else f"{self.status.last_loss:.4f}"
        auc = self.status.last_val_auc
        auc_text = "-" if auc is None or (isinstance(auc, float) and math.isnan(auc)) else f"{auc:.4f}"
        self.numbers = f"loss {loss} | val AUC {auc_text} | {rate:.2f} samples/s"
        self.progress.update(self.task, completed=state.global_step, description=self._description())

    def _description(self) -> str:
        return f"{self.numbers} | {self.status.phase}" if self.status.phase else self.numbers

    def _redraw(self) -> None:
        if self.progress is not None:
            self.progress.update(self.task, description=self._description())

    def on_train_end(self, args, state, control, **kwargs):
        self.status.on_phase = None
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
STAGING_NAME = ".partial"  # checkpoints are written here, then renamed into place


class AtomicCheckpoints:
    """Trainer mixin: each checkpoint is written into ``checkpoints/.partial/checkpoint-N`` and renamed to
    ``checkpoints/checkpoint-N`` only once complete, so a kill or a full disk mid-save never leaves a
    ``checkpoint-N`` that `--resume` would take for a whole one; and a resume from the last step's checkpoint
    trains nothing more."""

    _writing_into: str | None = None

    def _run_epoch(self, *args, **kwargs):
        # The Trainer checks the step limit only after a step: resumed at the limit mid-epoch, it would take one more.
        if self.state.global_step >= self.state.max_steps:
            self.control.should_training_stop = True
            return None
        return super()._run_epoch(*args, **kwargs)

    def _get_output_dir(self, trial):
        return self._writing_into or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial):
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

        final_root = Path(super()._get_output_dir(trial))
        staging_root = final_root / STAGING_NAME
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if self.args.should_save and (staging_root / name).exists():
            shutil.rmtree(staging_root / name)  # left by a save that was killed
        self._writing_into = str(staging_root)
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._writing_into = None
        self.accelerator.wait_for_everyone()  # every process has written its part (RNG states)
        if self.args.should_save:
            replace_dir(staging_root / name, final_root / name)
            rotate_checkpoints(output_dir=str(final_root), save_total_limit=self.args.save_total_limit,
                               best_model_checkpoint=self.state.best_model_checkpoint)
        self.accelerator.wait_for_everyone()
