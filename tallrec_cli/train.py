"""`tallrec train`: TALLRec-style LoRA / QLoRA tuning with trl's SFTTrainer.

One typed config (`TrainConfig`) loaded from a recipe plus overrides; every problem is reported in one
pass before any weights load. Training data is a prompt/completion dataset (prompt = template render,
completion = answer + EOS); histories are shortened (oldest titles first) so the answer is never cut.
Validation AUC uses `tallrec_cli.scoring.score_prompts`, the same function `tallrec eval` uses.
The run folder layout and manifest keys follow docs/CONTRACTS.md ("Train run folder").
"""

from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from data_builders.structure import find_template, has_structure, shortened
from data_builders.templates import Template
from tallrec_cli.config import load_config, option, to_dict
from tallrec_cli.errors import (ArtifactError, ConfigError, DataError, ModelError, ResourceError, TallrecError,
                                TrainingInterrupted, problem_count)
from tallrec_cli.models import DTYPES, QUANTIZATIONS

GIB = 1024 ** 3
ALL_LINEAR = "all-linear"
REPORT_TO = ("none", "tensorboard", "wandb", "mlflow")
OPTIMIZERS = ("adamw_torch", "adamw_8bit", "paged_adamw_8bit")
# FSDP2 through accelerate: each decoder layer is a shard unit (the model's _no_split_modules). Checkpoints
# (for --resume) stay sharded, each rank writing its part; the adapter is gathered and written once by
# tallrec (tallrec_cli.fsdp), a plain PEFT adapter.
FSDP_CONFIG = {"version": 2, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "reshard_after_forward": True,
               "state_dict_type": "SHARDED_STATE_DICT"}

# Shapes of the recipes' hub models, so `--dry-run` can estimate memory offline (no hub access).
KNOWN_ARCHITECTURES: dict[str, dict[str, Any]] = {
    "llama-7b": dict(model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                     num_attention_heads=32, num_key_value_heads=32, vocab_size=32000),
    "llama-3-8b": dict(model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, vocab_size=128256),
    "llama-3-70b": dict(model_type="llama", hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                        num_attention_heads=64, num_key_value_heads=8, vocab_size=128256),
    "qwen2.5-7b": dict(model_type="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                       num_attention_heads=28, num_key_value_heads=4, vocab_size=152064),
}
_HUB_ARCHITECTURES = {
    "baffo32/decapoda-research-llama-7b-hf": "llama-7b",
    "huggyllama/llama-7b": "llama-7b",
    "meta-llama/llama-2-7b-hf": "llama-7b",
    "meta-llama/meta-llama-3-8b": "llama-3-8b",
    "meta-llama/meta-llama-3-8b-instruct": "llama-3-8b",
    "meta-llama/meta-llama-3-70b": "llama-3-70b",
    "meta-llama/meta-llama-3-70b-instruct": "llama-3-70b",
    "qwen/qwen2.5-7b": "qwen2.5-7b",
    "qwen/qwen2.5-7b-instruct": "qwen2.5-7b",
}


# ----------------------------------------------------------------------------------------- config

@dataclass
class ModelSettings:
    name: str = option("smollm2-135m", help="Base model: local folder, .gguf file, hub id, or the embedded smollm2-135m.")
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
                                       help="Module names to adapt, or all-linear (every linear layer but lm_head).")
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
        from tallrec_cli.prompts import load_template

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
    eval_every: int | str = option(8, help="Validate (and checkpoint) every N steps; auto = TALLRec's rule: 10 for <= 128 records, else records / 128 * 5.")
    patience: int | None = option(None, help="Stop after this many evaluations without improvement (null = never).")
    eval_at_start: bool = option(True, help="Validate the untrained model first (step 0), so the run shows what tuning gained.")
    seed: int = option(42, help="Training randomness (LoRA init, order, dropout); data.sample_seed picks the shots.")
    group_by_length: bool = option(True, help="Batch records of similar length together (less padding).")
    gradient_checkpointing: bool = option(False, help="Recompute activations in backward: much less memory, ~30% slower.")
    optim: str = option("adamw_torch", choices=OPTIMIZERS,
                        help="Optimizer: adamw_torch, or bitsandbytes' adamw_8bit / paged_adamw_8bit (QLoRA's; CUDA).")
    report_to: str = option("none", choices=REPORT_TO,
                            help="Also log train loss, validation AUC/GAUC/log-loss and throughput to tensorboard "
                                 "(RUN/tensorboard), wandb or mlflow (pip install 'tallrec-cli[tracking]').")
    fsdp: bool = option(False, help="Shard weights and optimizer state across processes with FSDP2 "
                                    "(launch with accelerate launch --config_file recipes/accelerate/fsdp2*.yaml or torchrun).")
    score_mode: str = option("pair", choices=("pair", "tallrec"), help="P(yes) for validation AUC (see tallrec_cli.scoring).")
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
    from tallrec_cli.io import OutputOverlapError, check_writable, refuse_overlap

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
        finished = (run_dir / "manifest.json").exists()
        looks_like_run = finished or (run_dir / "config.yaml").exists()
        if not looks_like_run:
            problems.append(f"output.dir: {run_dir} is not empty and is not a tallrec run folder; choose another --output")
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
    import importlib.util

    from tallrec_cli.models import resolve_model_source
    from tallrec_cli.tracking import tracking_problems

    problems = []
    for key in ("train", "valid"):
        value = getattr(config.data, key)
        if value and not Path(value).exists():
            problems.append(f"data.{key}: {value} does not exist")
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
    if config.model.quantization != "none" and importlib.util.find_spec("bitsandbytes") is None:
        problems.append(f"model.quantization: {config.model.quantization} needs bitsandbytes (pip install bitsandbytes>=0.45)")
    problems.extend(_cuda_problems(config))
    if check_output and config.training.fsdp and int(os.environ.get("WORLD_SIZE", "1")) < 2:  # a real run
        problems.append("training.fsdp: FSDP shards across processes but this is a single process; launch with "
                        "accelerate launch --config_file recipes/accelerate/fsdp2-2gpu.yaml -m tallrec_cli.cli train ... "
                        "or torchrun --nproc_per_node N -m tallrec_cli.cli train ..., or set training.fsdp=false")
    if check_output:
        problems.extend(_output_problems(config, resume))
    if problems:
        raise ConfigError(hint="fix the paths or options above; nothing was loaded or written", problems=problems,
                          heading=f"{problem_count(problems)} before training")


def _cuda_problems(config: TrainConfig) -> list[str]:
    """What would fail on this machine's GPUs after the weights load: bf16 on a pre-Ampere card, several GPUs
    in one process (trl refuses nn.DataParallel). A missing C compiler for Triton is a warning."""
    import torch

    from tallrec_cli.models import resolve_dtype

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
        from tallrec_cli.console import err_console

        err_console.print("[yellow]warning:[/] trl's Triton loss kernel compiles a small C launcher at the first step, "
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


# ------------------------------------------------------------------------------------------- data

@dataclass
class PreparedData:
    train_records: list[dict]
    valid_records: list[dict]
    train_prompts: list[str]
    train_completions: list[str]
    valid_prompts: list[str]
    valid_labels: list[int]
    truncated_records: int
    train_token_lengths: list[int]
    notes: list[str] = field(default_factory=list)


def _load_split(path: str, split: str) -> list[dict]:
    from data_builders import load_split

    records = load_split(path, split)
    if not records:
        raise DataError(f"{path}: the {split} split holds no records", "build the dataset again or pass another file")
    return records


def _sample(records: list[dict], count: int | None, seed: int, stratify: bool) -> list[dict]:
    from data_builders import sample_records

    if count is None or count >= len(records):
        return records
    return sample_records(records, count, seed, stratify=stratify)


def _smallest_fitting(low: int, high: int, fits) -> int | None:
    """Smallest k in [low, high] with fits(k) (fits is monotone), or None."""
    if not fits(high):
        return None
    while low < high:
        middle = (low + high) // 2
        if fits(middle):
            high = middle
        else:
            low = middle + 1
    return low


def fit_record(record: dict, tokenizer, template, completion: str, max_length: int,
               record_template: Template | None = None) -> tuple[dict, bool]:
    """Shorten ``record``'s input so prompt + completion fits ``max_length`` tokens; never cut the answer.

    A record with structure drops history items (the oldest of the longer liked/disliked list first)
    and is re-rendered through its own ``record_template``; without structure, or when even an empty
    history is too long, the input text is cut from the left (the target question sits at its end).
    """
    def length(candidate: dict) -> int:
        return len(tokenizer(template.render(candidate, tokenizer) + completion)["input_ids"])

    if length(record) <= max_length:
        return record, False
    text = record.get("input") or ""
    items = len(record["history"]) if record_template is not None and has_structure(record) else 0
    if items:
        dropped = _smallest_fitting(1, items, lambda k: length(shortened(record, k, record_template)) <= max_length)
        if dropped is not None:
            return shortened(record, dropped, record_template), True
        record = shortened(record, items, record_template)
        text = record["input"]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]

    def cut(k: int) -> dict:
        return {**record, "input": tokenizer.decode(ids[k:]).lstrip()}

    start = _smallest_fitting(0, len(ids), lambda k: length(cut(k)) <= max_length)
    if start is None:
        raise DataError(f"record {record.get('id', '?')}: the instruction and answer alone exceed prompt.max_length={max_length} tokens",
                        "raise prompt.max_length")
    return cut(start), True


def prepare_data(config: TrainConfig, tokenizer, template) -> PreparedData:
    """Load, sample and render the records; histories shortened to fit the cutoff."""
    data = config.data
    train = _load_split(data.train, "train")
    valid = _load_split(data.valid or data.train, "valid")
    notes = []
    if data.shots is not None and data.shots > len(train):
        notes.append(f"data.shots={data.shots} is more than the {len(train)} training records: all of them are used")
    train = _sample(train, data.shots, data.sample_seed, data.stratify)
    valid = _sample(valid, data.max_valid, data.sample_seed, stratify=True)
    eos = tokenizer.eos_token or ""
    truncated = 0
    templates: dict[tuple, Template | None] = {}

    def fitted(record: dict, completion: str, near: str) -> dict:
        nonlocal truncated
        key = (record.get("template"), near)
        if key not in templates:
            templates[key] = find_template(record.get("template"), near)
        record, was_cut = fit_record(record, tokenizer, template, completion, config.prompt.max_length,
                                     templates[key])
        truncated += was_cut
        return record

    train_prompts, completions, lengths = [], [], []
    for record in train:
        completion = record["output"] + eos
        prompt = template.render(fitted(record, completion, data.train), tokenizer)
        train_prompts.append(prompt)
        completions.append(completion)
        lengths.append(len(tokenizer(prompt + completion)["input_ids"]))
    valid_prompts = [template.render(fitted(record, record["output"] + eos, data.valid or data.train), tokenizer)
                     for record in valid]
    return PreparedData(train, valid, train_prompts, completions, valid_prompts,
                        [int(record["label"]) for record in valid], truncated, lengths, notes)


def _valid_users(records: list[dict]) -> list | None:
    """Validation records' user ids (for GAUC), when every record carries one."""
    users = [record.get("user_id") for record in records]
    return None if any(user is None for user in users) else users


def _answer_outputs(records: list[dict], config: TrainConfig) -> tuple[str, str]:
    """The dataset's answers for a like and a dislike, checked against the label tokens."""
    outputs = {}
    for record in records:
        outputs.setdefault(int(record["label"]), record["output"])
    return (outputs.get(1, f"{config.labels.positive}."), outputs.get(0, f"{config.labels.negative}."))


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


# --------------------------------------------------------------------------------------- training

def _quiet_libraries() -> None:
    import logging
    import warnings

    for name in ("trl", "bitsandbytes", "peft"):  # before their import: bitsandbytes talks while loading
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", module="bitsandbytes")
    warnings.filterwarnings("ignore", message=".*(gradient checkpointing|use_cache|torch.utils.checkpoint).*")

    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()


def build_model(config: TrainConfig, source):
    """Base model (quantized when asked) wrapped in a trainable LoRA adapter."""
    from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training

    from tallrec_cli.models import default_device, load_model, resolve_dtype

    fsdp = config.training.fsdp
    # On CUDA straight onto this rank's GPU (an out-of-memory there is reported as such); on CPU the Trainer places it.
    device = default_device() if default_device() != "cpu" else None
    model = load_model(source, config.model.dtype, config.model.quantization, config.model.trust_remote_code,
                       device=device, oom_hint=_OOM_HINT, shardable=fsdp)
    model.config.use_cache = False
    # Under FSDP every parameter of a shard unit must have one dtype: prepare_model_for_kbit_training's fp32
    # upcast of norms and embeddings is skipped (as in the public FSDP+QLoRA recipes); the trainer enables
    # gradient checkpointing instead.
    if config.model.quantization != "none":
        _keep_4bit_layers_trainable(model)
    if config.model.quantization != "none" and not fsdp:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=config.training.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False})
        _frozen_weights_to(model, resolve_dtype(config.model.dtype))
    if config.lora.init_adapter:
        return PeftModel.from_pretrained(model, config.lora.init_adapter, is_trainable=True)
    lora = LoraConfig(r=config.lora.r, lora_alpha=config.lora.alpha, lora_dropout=config.lora.dropout,
                      target_modules=config.lora.peft_targets(), use_dora=config.lora.use_dora,
                      use_rslora=config.lora.use_rslora, bias="none", task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, lora)
    except ValueError as exc:
        raise ConfigError(f"lora.target_modules: {str(exc).splitlines()[0]}",
                          "name modules the model has (e.g. q_proj, v_proj) or use all-linear") from None


def _frozen_weights_to(model, dtype) -> None:
    """Undo prepare_model_for_kbit_training's fp32 upcast of the frozen embeddings, norms and lm_head.

    In fp32 they turn the whole residual stream fp32 (an fp32 embedding output plus 16-bit layer outputs is fp32;
    bitsandbytes layers return their input's dtype), doubling activations and the validation KV cache; frozen
    weights gain nothing from fp32 (RMSNorm computes its variance in fp32 either way)."""
    import torch

    for parameter in model.parameters():
        if parameter.dtype == torch.float32 and not parameter.requires_grad:
            parameter.data = parameter.data.to(dtype)


def _keep_4bit_layers_trainable(model) -> None:
    """bitsandbytes repacks a CPU Linear4bit into an AVX512-BF16 inference layout the first time it runs in
    eval mode, and from then on its matmul passes no gradient: after the first validation pass, QLoRA on CPU
    would silently stop learning. A model being trained keeps the trainable layout."""
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False


def mixed_precision(compute_dtype) -> str | None:
    """The Trainer's autocast: bf16, fp16 (CUDA only: it brings a GradScaler) or none (fp32)."""
    import torch

    if compute_dtype == torch.bfloat16:
        return "bf16"
    if compute_dtype == torch.float16 and torch.cuda.is_available():
        return "fp16"
    return None


def trainable_to_fp32(model) -> int:
    """fp16 training scales the loss with a GradScaler, whose unscale has no bfloat16 kernel on CUDA; trl casts the
    LoRA weights of a k-bit model to bfloat16 whatever fp16 says. fp32 master weights (the usual fp16 AMP setup:
    autocast still runs the matmuls in fp16) keep the scaler working. Returns how many were cast."""
    import torch

    cast = 0
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()
            cast += 1
    return cast


def _sft_config(config: TrainConfig, run_dir: Path, eval_every: int, world_size: int, precision: str | None):
    import torch
    from trl import SFTConfig

    training = config.training
    accumulation = max(1, training.batch_size // (training.micro_batch_size * world_size))
    return SFTConfig(
        output_dir=str(run_dir / "checkpoints"),
        per_device_train_batch_size=training.micro_batch_size,
        gradient_accumulation_steps=accumulation,
        num_train_epochs=training.epochs,
        max_steps=training.max_steps or -1,
        learning_rate=training.lr,
        lr_scheduler_type="linear",
        warmup_steps=training.warmup_steps,
        seed=training.seed,
        data_seed=training.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not torch.cuda.is_available(),
        ddp_backend=None if torch.cuda.is_available() else ("gloo" if world_size > 1 else None),
        ddp_find_unused_parameters=False,
        train_sampling_strategy="group_by_length" if training.group_by_length else "random",
        gradient_checkpointing=training.gradient_checkpointing and (config.model.quantization == "none" or training.fsdp),
        fsdp=training.fsdp,
        fsdp_config=FSDP_CONFIG if training.fsdp else None,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        completion_only_loss=config.prompt.loss in ("answer", "pair"),
        max_length=None,  # records are already fitted to prompt.max_length without cutting answers
        packing=False,
        save_strategy="steps",
        save_steps=eval_every,
        save_total_limit=2,
        logging_steps=1,
        logging_strategy="steps",
        eval_strategy="no",
        report_to=[],  # tallrec adds the reporting callbacks itself (tallrec_cli.tracking), to feed them validation
        disable_tqdm=True,
        dataloader_num_workers=0,
        optim=training.optim,
        weight_decay=0.0,
        save_only_model=False,
        dataset_num_proc=None,
    )


def _restore_status(status, run_dir: Path, checkpoint: str) -> None:
    """Rebuild selection state from metrics.jsonl rows up to the checkpoint's step; drop later rows."""
    from tallrec_cli.io import read_jsonl, write_jsonl_atomic

    step = int(Path(checkpoint).name.split("-")[-1])
    path = run_dir / "metrics.jsonl"
    rows = [row for row in read_jsonl(path) if row["step"] <= step] if path.exists() else []
    if is_main_process():
        write_jsonl_atomic(path, rows)
    for row in rows:
        status.record(row)
    status.elapsed_before = rows[-1]["elapsed_s"] if rows else 0.0


def check_adapter_trained(adapter_dir: Path) -> None:
    """An adapter whose LoRA B matrices are all zero never moved from its initialisation: an error."""
    from safetensors import safe_open

    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.exists():
        raise ArtifactError(f"{adapter_dir} holds no adapter_model.safetensors", "the run did not save an adapter")
    with safe_open(str(weights), framework="pt") as handle:
        b_names = [name for name in handle.keys() if "lora_B" in name]
        if not b_names:
            raise ArtifactError(f"{weights} holds no LoRA B tensors", "check lora.target_modules")
        if all(not handle.get_tensor(name).any() for name in b_names):
            raise ArtifactError(f"the adapter in {adapter_dir} is all zero: training never changed it",
                                "train for more steps or raise training.lr")


_OOM_HINT = ("lower --set training.micro_batch_size (batch_size stays: gradient accumulation makes up), "
             "prompt.max_length, or use model.quantization=4bit / training.gradient_checkpointing=true")


def _oom_error(config: TrainConfig) -> ResourceError:
    return ResourceError(
        f"out of memory with micro_batch_size={config.training.micro_batch_size}, "
        f"max_length={config.prompt.max_length}, quantization={config.model.quantization}", _OOM_HINT)


def _prepare_run_dir(config: TrainConfig, folder: Path, resume: bool, checkpoint: str | None) -> None:
    """Create the folder training writes into; a fresh start (also a resume with no checkpoint yet) gets
    config.yaml and an empty metrics.jsonl. An older run at ``output.dir`` is left alone: under
    ``--overwrite`` ``folder`` is its pending replacement."""
    import yaml

    from tallrec_cli.io import write_text_atomic

    if not is_main_process():
        return
    if not resume and folder != Path(config.output.dir) and folder.exists():
        shutil.rmtree(folder)  # an earlier --overwrite that never finished: start it again
    folder.mkdir(parents=True, exist_ok=True)
    if checkpoint is None:
        write_text_atomic(folder / "config.yaml", yaml.safe_dump(to_dict(config), sort_keys=False))
        (folder / "metrics.jsonl").unlink(missing_ok=True)


def _resume_checkpoint(folder: Path, resume: bool) -> str | None:
    """The newest whole checkpoint to continue from; broken ones (a save killed mid-way) are named, skipped."""
    from tallrec_cli.console import err_console
    from tallrec_cli.train_callbacks import last_whole_checkpoint

    if not resume:
        return None
    checkpoint, broken = last_whole_checkpoint(folder / "checkpoints")
    if is_main_process():
        for name, problem in broken.items():
            err_console.print(f"[yellow]note:[/] skipping the incomplete {name} ({problem})", highlight=False)
        if checkpoint is None:
            err_console.print(f"[yellow]note:[/] {folder} has no complete checkpoint yet: training starts again from "
                              "step 0 with the saved config", highlight=False)
    return str(checkpoint) if checkpoint else None


def run_training(config: TrainConfig, resume: bool = False, callbacks: tuple = ()) -> dict[str, Any]:
    """Train per ``config`` into ``config.output.dir``; returns the summary (also in the manifest).

    ``callbacks`` (extra TrainerCallbacks) run before tallrec's own. With ``resume`` the latest
    checkpoint under RUN/checkpoints is continued.
    """
    from tallrec_cli.console import err_console
    from tallrec_cli.lm_head import install_compact_lm_head
    from tallrec_cli.manifests import BestStep, RunMetrics, run_data, train_run_manifest
    from tallrec_cli.models import (base_model_config_summary, load_tokenizer, model_identity, release_memory,
                                    resolve_dtype, resolve_model_source)
    from tallrec_cli.prompts import load_template, resolve_label_tokens
    from tallrec_cli.scoring import ScoringSpec, is_out_of_memory

    started = time.monotonic()
    preflight(config, resume)
    _quiet_libraries()
    from datasets import Dataset
    from transformers import PrinterCallback, set_seed
    from trl import SFTTrainer

    from tallrec_cli.io import is_disk_full, replace_dir, user_os_error
    from tallrec_cli.tracking import TrackingCallback, reporting_callbacks
    from tallrec_cli.train_callbacks import (AtomicCheckpoints, InterruptCallback, RichProgressCallback, TrainingStatus,
                                             ValidationCallback, ValidationSchedule, ValidationSet)

    source = resolve_model_source(config.model.name)
    tokenizer = load_tokenizer(source, config.model.trust_remote_code, padding_side="left")
    template = load_template(config.prompt.template)
    data = prepare_data(config, tokenizer, template)
    label_tokens = resolve_label_tokens(tokenizer, template, config.labels.positive, config.labels.negative,
                                        outputs=_answer_outputs(data.train_records + data.valid_records, config))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    check_schedule(config, len(data.train_records), world_size)
    is_main = is_main_process()
    one_class = len(set(data.valid_labels)) < 2
    if is_main:
        for note in data.notes:
            err_console.print(f"[yellow]note:[/] {note}", highlight=False)
    if one_class and is_main:
        err_console.print("[yellow]warning:[/] the validation records hold one class only, so AUC is undefined; "
                          "checkpoints are selected on validation loss instead")
    run_dir = work_dir(config, resume)
    checkpoint = _resume_checkpoint(run_dir, resume)
    _prepare_run_dir(config, run_dir, resume, checkpoint)

    set_seed(config.training.seed)
    compute_dtype = resolve_dtype(config.model.dtype)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    eval_every = eval_interval(config.training.eval_every, len(data.train_records))
    precision = mixed_precision(compute_dtype)
    args = _sft_config(config, run_dir, eval_every, world_size, precision)
    status = TrainingStatus(selection_metric="val_loss" if one_class else "val_auc")
    if checkpoint:
        _restore_status(status, run_dir, checkpoint)
    release_memory()  # a previous in-process run (a sweep cell, its evaluation) may still hold a model
    try:
        model = build_model(config, source)
        validation = ValidationCallback(
            status, run_dir, tokenizer,
            ValidationSet(data.valid_prompts, data.valid_labels, _valid_users(data.valid_records)),
            ScoringSpec(template, label_tokens, config.training.score_mode, config.training.eval_batch_size),
            ValidationSchedule(eval_every, config.training.patience, config.training.eval_at_start), is_main)
        train_dataset = Dataset.from_dict({"prompt": data.train_prompts, "completion": data.train_completions})
        loss_trainer, loss_kwargs = SFTTrainer, {}
        if config.prompt.loss == "pair":
            from tallrec_cli.pair_loss import PairLossTrainer, class_weights

            weights = class_weights([record["label"] for record in data.train_records], config.prompt.class_weight)
            loss_trainer, loss_kwargs = PairLossTrainer, {"label_tokens": label_tokens, "weights": weights}
        trainer_class = type("Trainer", (AtomicCheckpoints, loss_trainer), {})  # checkpoints whole or not at all
        trainer = trainer_class(model=model, args=args, train_dataset=train_dataset, processing_class=tokenizer,
                                callbacks=[*callbacks, validation, InterruptCallback(status)], **loss_kwargs)
        trainer.remove_callback(PrinterCallback)
        if config.training.fsdp and not trainer.is_fsdp_enabled:
            raise ConfigError("training.fsdp: accelerate did not enable FSDP for these processes (it shards across "
                              "GPUs; CPU processes would silently run as plain DDP)",
                              "run on CUDA GPUs, or set training.fsdp=false for data parallelism")
        if precision == "fp16":
            trainable_to_fp32(trainer.model)
        if not config.training.fsdp:  # it reads the LM head's weight directly, which FSDP keeps sharded
            install_compact_lm_head(trainer.model.get_base_model(), args.device)
        if is_main:
            trainer.add_callback(RichProgressCallback(status, config.training.batch_size))
            reporters = reporting_callbacks(config.training.report_to, run_dir)
            for reporter in reporters:
                trainer.add_callback(reporter)
            if reporters:
                trainer.add_callback(TrackingCallback(status, reporters, config.training.batch_size))
        try:
            trainer.train(resume_from_checkpoint=checkpoint)
        except Exception as exc:
            if is_out_of_memory(exc):
                raise _oom_error(config) from None
            problem = user_os_error(exc, f"writing {run_dir}") if isinstance(exc, OSError) or is_disk_full(exc) else None
            if problem is not None:
                raise type(problem)(f"{problem.message}; checkpoints are written whole or not at all",
                                    f"{problem.hint}, then continue with: tallrec train --output {config.output.dir} "
                                    "--resume") from None
            raise
        base_config = base_model_config_summary(model.get_base_model())
        steps, max_steps = trainer.state.global_step, trainer.state.max_steps
    finally:
        # Patched forwards, the trainer and its callbacks hold the model in reference cycles: collect them now,
        # or the next in-process run (a sweep's next 7B cell) loads beside this one.
        model = trainer = validation = None
        release_memory()
    if status.interrupted_at is not None:
        raise TrainingInterrupted(
            status.interrupted_at,
            f"interrupted at step {status.interrupted_at}; a checkpoint is saved in {run_dir / 'checkpoints'}",
            f"continue with: tallrec train --output {config.output.dir} --resume")
    wall_seconds = status.elapsed_before + time.monotonic() - started
    summary = _summary(config, data, status, eval_every, steps, max_steps, wall_seconds, one_class, world_size)
    if is_main:
        check_adapter_trained(run_dir / "adapter")
        best = status.best_row or {}
        train_run_manifest(
            config, base_model=model_identity(source), base_model_config=base_config, labels=label_tokens.as_dict(),
            dtype=str(compute_dtype).replace("torch.", ""), processes=world_size, wall_seconds=wall_seconds,
            data=run_data(config, len(data.train_records), len(data.valid_records), data.truncated_records),
            best=BestStep(status.best_step, best.get("val_auc"), best.get("val_loss"), status.selection_metric),
            metrics=RunMetrics(best.get("val_auc"), summary["train_loss"], summary["start_val_auc"]),
        ).write(run_dir)
        if run_dir != Path(config.output.dir):
            replace_dir(run_dir, Path(config.output.dir))  # the old run stayed until this one was complete
    return summary


def _summary(config: TrainConfig, data: PreparedData, status, eval_every: int, steps: int, max_steps: int,
             wall_seconds: float, one_class: bool, world_size: int) -> dict[str, Any]:
    best = status.best_row or {}
    losses = [row["train_loss"] for row in status.rows if row.get("train_loss") is not None]
    return {
        "run_dir": str(config.output.dir),
        "steps": steps,
        "max_steps": max_steps,
        "stopped_early": steps < max_steps,
        "eval_every": eval_every,
        "best_step": status.best_step,
        "best_val_auc": best.get("val_auc"),
        "best_val_loss": best.get("val_loss"),
        "start_val_auc": (status.start_row or {}).get("val_auc"),
        "selected_on": status.selection_metric,
        "auc_undefined": one_class,
        "train_loss": losses[-1] if losses else None,
        "train_records": len(data.train_records),
        "valid_records": len(data.valid_records),
        "truncated_records": data.truncated_records,
        "seed": config.training.seed,
        "sample_seed": config.data.sample_seed,
        "processes": world_size,
        "wall_seconds": round(wall_seconds, 2),
        "evaluations": status.rows,
    }


# ----------------------------------------------------------------------------------- dry run

def model_config_for(config: TrainConfig):
    """The base model's transformers config, without weights (for memory estimates)."""
    return _model_config(config)[0]


def _model_config(config: TrainConfig):
    """The base model's config without weights: from its folder/GGUF, else the known shapes table."""
    from transformers import AutoConfig

    from tallrec_cli.io import tallrec_home
    from tallrec_cli.models import hub_unreachable, resolve_model_source

    source = resolve_model_source(config.model.name, convert_embedded=False)
    if source.kind == "random":  # the embedded config; its tokenizer's token counts are not the real ones
        from tallrec_cli.random_models import model_config

        return model_config(config.model.name), None
    path, gguf_file = source.path, source.gguf_file
    converted = tallrec_home() / "models" / config.model.name
    if source.kind == "embedded":
        # The GGUF header lacks tie_word_embeddings; the converted copy (when cached) has the true config.
        if (converted / "manifest.json").exists():
            path = str(converted)
        else:
            path, gguf_file = str(Path(path).parent), Path(path).name
    unreachable = hub_unreachable(source) if source.kind == "hub" else None  # not a minute of retries
    try:
        if unreachable:
            raise OSError(unreachable)
        return AutoConfig.from_pretrained(path, gguf_file=gguf_file, trust_remote_code=config.model.trust_remote_code), (path, gguf_file)
    except (OSError, ValueError) as exc:
        shape = _HUB_ARCHITECTURES.get(config.model.name.lower())
        if shape is None:
            raise ModelError(f"cannot read the config of {config.model.name}: {str(exc).splitlines()[0]}",
                             "download the model or pass a local folder") from None
        return config_from_shape(shape), None


def config_from_shape(shape_name: str):
    """A transformers config with the known dimensions of ``shape_name`` (see KNOWN_ARCHITECTURES)."""
    from transformers import AutoConfig

    shape = dict(KNOWN_ARCHITECTURES[shape_name])
    return AutoConfig.for_model(shape.pop("model_type"), max_position_embeddings=4096, **shape)


def count_parameters(model_config, lora: LoraSettings) -> dict[str, int]:
    """Total, quantizable (linear layers in the blocks) and LoRA parameters, from a meta-device model."""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(model_config)
    total = sum(p.numel() for p in model.parameters())
    head = model.get_output_embeddings()
    targets = lora.peft_targets()
    linear = adapted = lora_params = adapted_inputs = 0
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or module is head:
            continue
        linear += module.weight.numel()
        if targets == ALL_LINEAR or name.rsplit(".", 1)[-1] in targets:
            adapted += 1
            adapted_inputs += module.in_features
            lora_params += lora.r * (module.in_features + module.out_features)
            if lora.use_dora:
                lora_params += module.out_features  # magnitude vector
    return {"total": total, "quantizable": linear, "lora": lora_params, "adapted_modules": adapted,
            "adapted_inputs": adapted_inputs}


# What `--dry-run` cannot see: the CUDA context (~0.5-1 GiB, outside torch's allocator) and fragmentation.
CUDA_RESERVE_GIB = 1.0
# Shared prompt prefix assumed for the validation cache when the tokenizer is not available offline
# (the alpaca header and TALLRec's instruction are ~70 tokens for LLaMA tokenizers).
ASSUMED_SHARED_PREFIX = 64


def estimate_memory(model_config, counts: dict[str, int], config: TrainConfig, seq_len: int,
                    valid_tokens: tuple[int, int] | None = None) -> dict[str, float]:
    """Peak GPU memory (bytes) of LoRA/QLoRA training and of its validation pass, by part, as
    ``torch.cuda.max_memory_allocated`` counts it: the CUDA context and fragmentation are extra
    (CUDA_RESERVE_GIB). ``total`` is the larger of ``training`` and ``validation``.

    - weights: block linears at 1 byte (8bit) / ~0.516 byte (NF4 4 bits + double-quantized absmax) or the dtype's
      width; other weights (embeddings, norms, lm_head) at the compute dtype's width (k-bit runs keep them there,
      see `_frozen_weights_to`).
    - LoRA: 16 bytes per parameter (fp32 weight + gradient + Adam m and v).
    - activations per layer and token (Korthikanti et al. 2022, 16-bit): 34 * hidden bytes; SDPA keeps no
      seq^2 attention scores. Each adapted module with dropout also keeps its dropped-out input and mask:
      3 bytes per input feature, plus its rank-r intermediate. Gradient checkpointing keeps each layer's input
      (2 * hidden bytes per token) plus one layer in full.
    - logits: trl's fused head never holds [tokens, vocab]: it projects the labelled positions in tiles of at
      most 4096 tokens x 32768 vocabulary entries (a 16-bit tile and its gradient tile).
    - validation (still holding weights, LoRA and optimizer state): a scoring batch of ``eval_batch_size`` rows
      of ``valid_tokens`` = (longest suffix, shared prefix) tokens, with the key/value cache of every layer
      (tallrec_cli.scoring.scoring_row_bytes).
    """
    from tallrec_cli.scoring import scoring_row_bytes

    hidden, layers = model_config.hidden_size, model_config.num_hidden_layers
    vocab = model_config.vocab_size
    batch = config.training.micro_batch_size
    quantization = config.model.quantization
    width = 4 if config.model.dtype == "float32" else 2
    other = counts["total"] - counts["quantizable"]
    if quantization == "none":
        weights = counts["total"] * width
    else:
        weights = counts["quantizable"] * (1.0 if quantization == "8bit" else 0.516) + other * width
    tokens = batch * seq_len
    lora_inputs = counts.get("adapted_inputs", 0) / layers
    lora_per_token = ((3 * lora_inputs if config.lora.dropout > 0 else 0)
                      + 2 * config.lora.r * counts["adapted_modules"] / layers)
    per_layer = tokens * (34 * hidden + lora_per_token)
    if config.training.gradient_checkpointing:
        activations = layers * 2 * tokens * hidden + per_layer
    else:
        activations = layers * per_layer
    labelled = tokens if config.prompt.loss == "full" else batch * 4  # answer tokens: "Yes." + EOS
    lora_state = counts["lora"] * 16
    suffix, prefix = valid_tokens or (seq_len - ASSUMED_SHARED_PREFIX, ASSUMED_SHARED_PREFIX)
    scoring = config.training.eval_batch_size * scoring_row_bytes(model_config, width, suffix, prefix)
    parts = {
        "weights": weights,
        "lora_and_optimizer": lora_state,
        "activations": activations,
        "logits": 2 * min(labelled, 4096) * min(vocab, 32768) * width,
    }
    parts["training"] = sum(parts.values())
    parts["validation_batch"] = scoring
    parts["validation"] = weights + lora_state + scoring
    parts["total"] = max(parts["training"], parts["validation"])
    return parts


def dry_run(config: TrainConfig, gpu_memory_gib: float = 24.0) -> dict[str, Any]:
    """Resolved config, parameter counts, dataset sizes and token lengths, and a peak-memory estimate;
    no weights are loaded (the model is built on the meta device from its config)."""
    import numpy as np

    from tallrec_cli.models import load_tokenizer, resolve_model_source
    from tallrec_cli.prompts import load_template

    preflight(config, check_output=False)
    _quiet_libraries()
    model_config, tokenizer_location = _model_config(config)
    counts = count_parameters(model_config, config.lora)
    result: dict[str, Any] = {"config": to_dict(config), "parameters": counts, "data": None, "notes": []}
    seq_len = config.prompt.max_length
    if tokenizer_location is not None:
        from transformers import AutoTokenizer

        path, gguf_file = tokenizer_location
        tokenizer = AutoTokenizer.from_pretrained(path, gguf_file=gguf_file, trust_remote_code=config.model.trust_remote_code)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
        data = prepare_data(config, tokenizer, load_template(config.prompt.template))
        lengths = np.asarray(data.train_token_lengths)
        valid_tokens = _validation_tokens(tokenizer, data.valid_prompts)
        result["data"] = {"train_records": len(data.train_records), "valid_records": len(data.valid_records),
                          "truncated_records": data.truncated_records, "tokens_min": int(lengths.min()),
                          "tokens_mean": float(lengths.mean()), "tokens_max": int(lengths.max())}
        seq_len = int(lengths.max())
        result["eval_every"] = eval_interval(config.training.eval_every, len(data.train_records))
        result["notes"].extend(data.notes)
        try:
            check_schedule(config, len(data.train_records))
        except ConfigError as exc:
            result["notes"].append(exc.message)
    else:
        valid_tokens = None
        result["notes"].append(f"{config.model.name} is not available offline: its tokenizer was not loaded, so token "
                               f"lengths are not measured and the estimate assumes max_length={seq_len}")
    memory = estimate_memory(model_config, counts, config, seq_len, valid_tokens)
    result["memory_gib"] = {key: value / GIB for key, value in memory.items()}
    result["sequence_length"] = seq_len
    result["gpu_memory_gib"] = gpu_memory_gib
    result["fits"] = memory["total"] + CUDA_RESERVE_GIB * GIB <= gpu_memory_gib * GIB
    peak = "validation" if memory["validation"] > memory["training"] else "training"
    result["notes"].append(f"the peak is {peak}; the CUDA context and fragmentation (~{CUDA_RESERVE_GIB:g} GiB) come "
                           "on top and are kept free in the fits verdict")
    if not result["fits"]:
        result["notes"].append(f"estimated peak {memory['total'] / GIB:.1f} GiB + {CUDA_RESERVE_GIB:g} GiB exceeds the "
                               f"{gpu_memory_gib:g} GiB budget: lower training.micro_batch_size, "
                               "training.eval_batch_size or prompt.max_length, "
                               "set training.gradient_checkpointing=true, "
                               "or use model.quantization=4bit")
    return result


def _validation_tokens(tokenizer, prompts: list[str]) -> tuple[int, int]:
    """(longest suffix, shared prefix) in tokens of the validation prompts, as the scorer splits them."""
    from tallrec_cli.scoring import MIN_PREFIX_TOKENS, common_prefix_length

    encoded = tokenizer(prompts)["input_ids"]
    shared = min(common_prefix_length(encoded), min(len(ids) for ids in encoded) - 1)
    if shared < MIN_PREFIX_TOKENS:
        shared = 0
    return max(len(ids) for ids in encoded) - shared, shared


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


def format_count(value: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= size:
            return f"{value / size:.2f}{unit}"
    return str(value)


