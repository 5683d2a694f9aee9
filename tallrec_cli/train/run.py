"""`tallrec train`: TALLRec-style LoRA / QLoRA tuning with trl's SFTTrainer, the run itself.

The config and pre-flight checks live in `tallrec_cli.train.config`, the records' fitting and rendering in
`tallrec_cli.train.data`, the ``--dry-run`` memory model in `tallrec_cli.train.capacity`. Validation AUC uses the
`tallrec_cli.model.scoring.ScoringSpec` `tallrec eval` uses. The run folder layout and manifest keys follow
docs/CONTRACTS.md ("Train run folder"); the manifest is `tallrec_cli.core.manifests.TrainRunManifest`.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from tallrec_cli.core.config import to_dict
from tallrec_cli.core.errors import ArtifactError, ConfigError, ResourceError, TrainingInterrupted
from tallrec_cli.core.files import (
    is_disk_full,
    read_jsonl,
    replace_dir,
    user_os_error,
    write_jsonl_atomic,
    write_text_atomic,
)
from tallrec_cli.core.integrity import adapter_hashes
from tallrec_cli.core.manifests import BestStep, RunMetrics, run_data, train_run_manifest
from tallrec_cli.core.quiet import quiet_libraries
from tallrec_cli.core.reporting import reporter
from tallrec_cli.model.loading import (
    base_model_config_summary,
    default_device,
    load_model,
    load_tokenizer,
    model_identity,
    release_memory,
    resolve_dtype,
    resolve_model_source,
)
from tallrec_cli.model.prompts import load_template, resolve_label_tokens
from tallrec_cli.model.scoring import ScoringSpec, is_out_of_memory
from tallrec_cli.train.checkpoints import last_whole_checkpoint
from tallrec_cli.train.config import TrainConfig, check_schedule, eval_interval, is_main_process, preflight, work_dir
from tallrec_cli.train.data import PreparedData, answer_outputs, prepare_data, valid_users
from tallrec_cli.train.inputs import RunInputs, absolute_data, check_resume

# FSDP2 through accelerate: each decoder layer is a shard unit (the model's _no_split_modules). Checkpoints
# (for --resume) stay sharded, each rank writing its part; the adapter is gathered and written once by
# tallrec (tallrec_cli.train.fsdp), a plain PEFT adapter.
FSDP_CONFIG = {"version": 2, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "reshard_after_forward": True,
               "state_dict_type": "SHARDED_STATE_DICT"}

# --------------------------------------------------------------------------------------- training

def build_model(config: TrainConfig, source):
    """Base model (quantized when asked) wrapped in a trainable LoRA adapter."""
    from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training

    fsdp = config.training.fsdp
    # On CUDA straight onto this rank's GPU (an out-of-memory there is reported as such); on CPU the Trainer places it.
    device = default_device() if default_device() != "cpu" else None
    model = load_model(source, config.model.dtype, config.model.quantization, config.model.trust_remote_code,
                       device=device, oom_hint=_OOM_HINT, shardable=fsdp)
    model.config.use_cache = False
    # Under FSDP every parameter of a shard unit must have one dtype: prepare_model_for_kbit_training's fp32
    # upcast of norms and embeddings is skipped (as in the public FSDP+QLoRA recipes), and with it its gradient
    # checkpointing: FSDP checkpoints each layer itself (see _sft_config).
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
        # k-bit runs checkpoint through prepare_model_for_kbit_training, FSDP runs through FSDP's own activation
        # checkpointing (the Trainer's would add a redundant all-gather of each layer in backward)
        gradient_checkpointing=training.gradient_checkpointing and config.model.quantization == "none"
        and not training.fsdp,
        fsdp=training.fsdp,
        fsdp_config={**FSDP_CONFIG, "activation_checkpointing": training.gradient_checkpointing} if training.fsdp else None,
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
        report_to=[],  # tallrec adds the reporting callbacks itself (tallrec_cli.train.tracking), to feed them validation
        disable_tqdm=True,
        dataloader_num_workers=0,
        optim=training.optim,
        weight_decay=0.0,
        save_only_model=False,
        dataset_num_proc=None,
    )


def _restore_status(status, run_dir: Path, checkpoint: str) -> None:
    """Rebuild selection state from metrics.jsonl rows up to the checkpoint's step; drop later rows."""

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


def _warn_if_untrained(adapter_dir: Path) -> None:
    """A finished run is kept, whatever its adapter: its compute is spent and its metrics say what it learned."""
    try:
        check_adapter_trained(adapter_dir)
    except ArtifactError as exc:
        reporter().warning(f"{exc.message}; the run is kept ({exc.hint})")


_OOM_HINT = ("lower --set training.micro_batch_size (batch_size stays: gradient accumulation makes up), "
             "prompt.max_length, or use model.quantization=4bit / training.gradient_checkpointing=true")


def _oom_error(config: TrainConfig) -> ResourceError:
    return ResourceError(
        f"out of memory with micro_batch_size={config.training.micro_batch_size}, "
        f"max_length={config.prompt.max_length}, quantization={config.model.quantization}", _OOM_HINT)


def _prepare_run_dir(config: TrainConfig, folder: Path, resume: bool, checkpoint: str | None,
                     inputs: RunInputs) -> None:
    """Create the folder training writes into; a fresh start (also a resume with no checkpoint yet) gets
    config.yaml, inputs.json (what it starts from, for --resume to compare) and an empty metrics.jsonl. An
    older run at ``output.dir`` is left alone: under ``--overwrite`` ``folder`` is its pending replacement."""
    import yaml

    if not is_main_process():
        return
    if not resume and folder != Path(config.output.dir) and folder.exists():
        shutil.rmtree(folder)  # an earlier --overwrite that never finished: start it again
    folder.mkdir(parents=True, exist_ok=True)
    if checkpoint is None:
        write_text_atomic(folder / "config.yaml", yaml.safe_dump(to_dict(config), sort_keys=False))
        inputs.write(folder)
        (folder / "metrics.jsonl").unlink(missing_ok=True)


def _run_inputs(config: TrainConfig, source, folder: Path, checkpoint: str | None) -> RunInputs:
    """What the run starts from; continuing from a checkpoint, what it started from, refused when changed."""
    now = RunInputs.of(config, model_identity(source))
    return check_resume(folder, config.output.dir, now) if checkpoint else now


def _resume_checkpoint(folder: Path, resume: bool) -> str | None:
    """The newest whole checkpoint to continue from; broken ones (a save killed mid-way) are named, skipped."""

    if not resume:
        return None
    checkpoint, broken = last_whole_checkpoint(folder / "checkpoints")
    if is_main_process():
        for name, problem in broken.items():
            reporter().note(f"skipping the damaged or incomplete {name} ({problem})")
        if checkpoint is None:
            reporter().note(f"{folder} has no complete checkpoint yet: training starts again from "
                            "step 0 with the saved config")
    return str(checkpoint) if checkpoint else None


def run_training(config: TrainConfig, resume: bool = False, callbacks: tuple = ()) -> dict[str, Any]:
    """Train per ``config`` into ``config.output.dir``; returns the summary (also in the manifest).

    ``callbacks`` (extra TrainerCallbacks) run before tallrec's own. With ``resume`` the latest
    checkpoint under RUN/checkpoints is continued.
    """
    started = time.monotonic()
    config = absolute_data(config)  # config.yaml and the manifest find the data from any folder
    preflight(config, resume)
    quiet_libraries()
    # heavy: trl, transformers and datasets, and our modules that subclass their classes (seconds of imports
    # that `tallrec --help` and every check before this point do without)
    from datasets import Dataset
    from transformers import PrinterCallback, set_seed
    from trl import SFTTrainer

    from tallrec_cli.train.callbacks import (
        AtomicCheckpoints, InterruptCallback, ProgressCallback, TrainingStatus, ValidationCallback, ValidationSchedule,
        ValidationSet,
    )
    from tallrec_cli.train.lm_head import install_compact_lm_head
    from tallrec_cli.train.pair_loss import PairLossTrainer, class_weights
    from tallrec_cli.train.shared_prefix import install_shared_prefix
    from tallrec_cli.train.tracking import TrackingCallback, reporting_callbacks

    source = resolve_model_source(config.model.name)
    tokenizer = load_tokenizer(source, config.model.trust_remote_code, padding_side="left")
    template = load_template(config.prompt.template)
    data = prepare_data(config, tokenizer, template)
    label_tokens = resolve_label_tokens(tokenizer, template, config.labels.positive, config.labels.negative,
                                        outputs=answer_outputs(data.train_records + data.valid_records, config))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    check_schedule(config, len(data.train_records), world_size)
    is_main = is_main_process()
    one_class = len(set(data.valid_labels)) < 2
    if is_main:
        for note in data.notes:
            reporter().note(note)
    if one_class and is_main:
        reporter().warning("the validation records hold one class only, so AUC is undefined; "
                           "checkpoints are selected on validation loss instead")
    run_dir = work_dir(config, resume)
    checkpoint = _resume_checkpoint(run_dir, resume)
    inputs = _run_inputs(config, source, run_dir, checkpoint)
    _prepare_run_dir(config, run_dir, resume, checkpoint, inputs)

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
            ValidationSet(data.valid_prompts, data.valid_labels, valid_users(data.valid_records)),
            ScoringSpec(template, label_tokens, config.training.score_mode, config.training.eval_batch_size),
            ValidationSchedule(eval_every, config.training.patience, config.training.eval_at_start), is_main)
        train_dataset = Dataset.from_dict({"prompt": data.train_prompts, "completion": data.train_completions})
        loss_trainer, loss_kwargs = SFTTrainer, {}
        if config.prompt.loss == "pair":
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
        if not config.training.fsdp:  # they read weights and run the body directly, which FSDP keeps sharded
            install_compact_lm_head(trainer.model.get_base_model(), args.device)
            if config.training.shared_prefix:
                install_shared_prefix(trainer.model)
        if is_main:
            trainer.add_callback(ProgressCallback(status, config.training.batch_size))
            reporters = reporting_callbacks(config.training.report_to, run_dir)
            for tracker in reporters:
                trainer.add_callback(tracker)
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
        _warn_if_untrained(run_dir / "adapter")
        best = status.best_row or {}
        train_run_manifest(
            config, base_model=inputs.base_model, base_model_config=base_config, labels=label_tokens.as_dict(),
            dtype=str(compute_dtype).replace("torch.", ""), processes=world_size, wall_seconds=wall_seconds,
            data=run_data(config, len(data.train_records), len(data.valid_records), data.truncated_records,
                          inputs.data),
            best=BestStep(status.best_step, best.get("val_auc"), best.get("val_loss"), status.selection_metric),
            metrics=RunMetrics(best.get("val_auc"), summary["train_loss"], summary["start_val_auc"]),
            files=adapter_hashes(run_dir),
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


def format_count(value: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= size:
            return f"{value / size:.2f}{unit}"
    return str(value)


