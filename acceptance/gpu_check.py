"""GPU acceptance check: what a 24 GB card (RTX 3090) owner needs to know, in parts that each fit one command.

    python -m acceptance.gpu_check --parts                          # what each part runs
    python -m acceptance.gpu_check --part 1 --workdir /tmp/work --output OUT   # on a CUDA machine, one part
    python -m acceptance.gpu_check --smoke                          # tiny shapes on the CPU, every part (the tests)
    acceptance/device_run.sh 1                                      # on the lent GPU machine (installs the wheels)

It first prints the versions it found (python, torch, CUDA, GPU, transformers, trl, peft, bitsandbytes,
accelerate, datasets, pyarrow) and checks by importing that trl, datasets and bitsandbytes work (acceptance/wheels.py
installs the carried wheels of those that do not). Everything then goes through tallrec's own code:
`random:<architecture>` model sources (published configs, random weights, no download),
`tallrec_cli.train.run.run_training` for the training steps, `tallrec_cli.model.scoring.score_prompts_detailed` for
eval and `tallrec_cli.export.merged.export_merged` for the merged export. On a bigger card the process is capped at
--card-gib (default 24) with `torch.cuda.set_per_process_memory_fraction` (and TALLREC_GPU_MEMORY_CAP, which the
scorer's batch sizing reads), so an out-of-memory here is one on a 3090.

Measured per training case (sequence 512, micro-batch 8, the recipe case its own 16 x 512): peak allocated
memory of the training steps and, separately, of the validation pass, each beside its `--dry-run` estimate (goal:
within 15%), tokens/s, model FLOPs utilisation against a bf16 matmul measured in the same run, the precision
(fp16 brings the GradScaler: skipped steps and final scale are recorded), the trainable LoRA parameters' dtype,
and which LM head computed the loss (trl's Triton kernel, trl's torch tiles or tallrec's compact head). Eval
(4-bit and bf16): prompts/s and % of the matmul peak with and without the prefix cache, the batch size picked.
Export: merged export's time and peak memory.

Results (gpu_check.json, gpu_check.md in --output) are rewritten after every case; a case already in the JSON is
skipped, so a later part, or the same part after a timeout, resumes. Weights (TALLREC_HOME), training runs and
exports live in --workdir, never under --output (which travels back from the GPU machine and stays small).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path

import tallrec_cli
from acceptance import wheels
from acceptance.cuda_acceptance import ISSUE_15  # the CUDA-path checklist this run is the first to see
from tallrec_cli.core.errors import ArtifactError, TallrecError
from tallrec_cli.core.quiet import quiet_libraries
from tallrec_cli.export.merged import export_merged
from tallrec_cli.model.loading import load_for_inference, load_tokenizer, resolve_model_source
from tallrec_cli.model.prompts import load_template, resolve_label_tokens
from tallrec_cli.model.scoring import MEMORY_CAP_ENV, cuda_free_bytes, cuda_memory_cap, score_prompts_detailed
from tallrec_cli.train.capacity import estimate_recipe, model_config_for
from tallrec_cli.train.config import load_train_config
from tallrec_cli.train.data import fit_record, prepare_data
from tallrec_cli.train.run import run_training

REPO = Path(__file__).resolve().parent.parent
GIB = 1024 ** 3
ESTIMATE_GOAL = 0.15
FP16_RECIPE = REPO / "recipes" / "tallrec-llama-7b.yaml"  # TALLRec's setup: fp16 autocast, 8-bit base, GradScaler
VERSIONS = ("transformers", "trl", "peft", "bitsandbytes", "accelerate", "datasets", "pyarrow", "triton")


@dataclass(frozen=True)
class TrainCase:
    arch: str
    quantization: str  # 4bit (QLoRA), 8bit, none
    dtype: str = "bfloat16"
    recipe: Path | None = None  # a recipe's LoRA, dtype and loss settings instead of the check's own

    @property
    def label(self) -> str:
        kind = {"4bit": "QLoRA", "8bit": "8-bit LoRA", "none": "bf16 LoRA"}[self.quantization]
        if self.dtype != "bfloat16":
            kind = f"{'fp16' if self.dtype == 'float16' else self.dtype} {kind}"
        return f"{kind} {self.arch}" + (f" ({self.recipe.stem} recipe)" if self.recipe else "")

    @property
    def slug(self) -> str:
        return f"{self.arch}-{self.quantization}-{self.dtype}" + (f"-{self.recipe.stem}" if self.recipe else "")


@dataclass(frozen=True)
class EvalCase:
    arch: str
    quantization: str

    @property
    def label(self) -> str:
        return f"eval {'4-bit' if self.quantization == '4bit' else 'bf16'} {self.arch}"


@dataclass(frozen=True)
class ExportCase:
    run: TrainCase  # the training case whose run is merged (trained again here when its run is not in --workdir)

    @property
    def label(self) -> str:
        return f"merged export of {self.run.label}"


Case = TrainCase | EvalCase | ExportCase


@dataclass(frozen=True)
class Shapes:
    parts: tuple[tuple[Case, ...], ...]
    seq: int
    micro_batch: int
    steps: int
    eval_prompts: int
    eval_tokens: int
    matmul: int


def _parts(arch: str, second_arch: str | None) -> tuple[tuple[Case, ...], ...]:
    """The riskiest paths first: a session with a GPU may get one part in. Each part loads one random architecture
    (its weights are built once per --workdir) and should take well under 600 s on an H100."""
    qlora, eight_bit, bf16 = TrainCase(arch, "4bit"), TrainCase(arch, "8bit"), TrainCase(arch, "none")
    return (
        (qlora, EvalCase(arch, "4bit"), TrainCase(arch, "8bit", "float16", FP16_RECIPE)),
        (eight_bit, ExportCase(eight_bit), EvalCase(arch, "none")),
        (bf16, *([TrainCase(second_arch, "4bit")] if second_arch else [])),
    )


FULL = Shapes(parts=_parts("llama-2-7b", "llama-3-8b"), seq=512, micro_batch=8, steps=4, eval_prompts=1000,
              eval_tokens=256, matmul=8192)
SMOKE = Shapes(parts=_parts("tiny-llama", None), seq=96, micro_batch=2, steps=2, eval_prompts=16,
               eval_tokens=64, matmul=256)


def found_versions() -> dict:
    """What this machine has, printed before anything is installed or run (the image may differ from the one
    recorded in ../shared/FACTS.md)."""
    import torch

    found: dict = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
                   "gpu": None, "gpu_memory_gib": None}
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        found["gpu"] = properties.name
        found["gpu_memory_gib"] = round(properties.total_memory / GIB, 1)
    for name in VERSIONS:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    found["tallrec"] = tallrec_cli.__version__
    return found


def describe_versions(found: dict) -> str:
    gpu = f"{found['gpu']} ({found['gpu_memory_gib']} GiB)" if found["gpu"] else "no CUDA device"
    packages = ", ".join(f"{name} {found[name] or 'absent'}" for name in VERSIONS)
    return (f"python {found['python']}, torch {found['torch']} (CUDA {found['cuda'] or 'none'}), {gpu}, {packages}, "
            f"tallrec {found['tallrec']}")


def missing_message(failures: dict[str, str]) -> str:
    listed = "; ".join(f"{name} ({error})" for name, error in failures.items())
    return (f"cannot import: {listed}.\n"
            "The GPU machine has no network: the wheels travel with the working tree.\n"
            "  here (network):  make gpu-wheels   (fills wheels/py312 for the GPU image, ~43 MiB)\n"
            "  there (offline): python -m acceptance.wheels install --wheels wheels/py312 --target /tmp/site && "
            "export PYTHONPATH=/tmp/site:$PYTHONPATH\n"
            "  acceptance/device_run.sh PART does both and runs the part")


def emulate_card(card_gib: float) -> str:
    """Cap this process at ``card_gib`` of the GPU; returns what was done, for the report."""
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device: smoke shapes on the CPU, memory columns not measured"
    total = torch.cuda.get_device_properties(0).total_memory
    name = torch.cuda.get_device_name(0)
    if total <= card_gib * GIB:
        return f"{name} ({total / GIB:.0f} GiB): used as is"
    torch.cuda.set_per_process_memory_fraction(card_gib * GIB / total, 0)
    # the scorer's batch sizing reads the cap (mem_get_info reports the whole card); for a torch without
    # get_per_process_memory_fraction the variable is its only source
    os.environ[MEMORY_CAP_ENV] = str(int(card_gib * GIB))
    return f"{name} ({total / GIB:.0f} GiB) capped at {card_gib:g} GiB with set_per_process_memory_fraction"


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def matmul_flops(size: int) -> float:
    """bf16 matmul FLOP/s on this device (the MFU reference), best of a few timed repeats."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    a @ b
    _sync()
    best = math.inf
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(4):
            a @ b
        _sync()
        best = min(best, (time.perf_counter() - started) / 4)
    return 2 * size ** 3 / best


def _peak() -> tuple[float | None, float | None]:
    """(max allocated, max reserved) in bytes since the last reset; None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None, None
    return float(torch.cuda.max_memory_allocated()), float(torch.cuda.max_memory_reserved())


def _reset_peak() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _restart_peak() -> None:
    """Peak statistics from here on, without collecting or emptying the cache (between training steps)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def _gib(value: float | None) -> float | None:
    return None if value is None else round(value / GIB, 2)


def write_records(folder: Path, count: int) -> Path:
    """TALLRec-style records with long histories: `fit_record` trims them to the sequence length."""
    titles = ['"Toy Story (1995)"', '"Star Wars (1977)"', '"Fargo (1996)"', '"Heat (1995)"']
    instruction = ("Given the user's preference and unpreference, identify whether the user will like the target "
                   'movie by answering "Yes." or "No.".')
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "valid"):
        rows = []
        for index in range(count):
            history = ", ".join(titles[(index + k) % 3] for k in range(120))
            text = (f"User Preference: {history}\nUser Unpreference: {titles[3]}\n"
                    f"Whether the user will like the target movie {titles[index % 4]}?")
            label = int(index % 4 != 3)
            rows.append({"instruction": instruction, "input": text, "output": "Yes." if label else "No.",
                         "label": label, "id": f"{split}{index}", "user_id": index % 4})
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


def _step_meter():
    from transformers import TrainerCallback

    class StepMeter(TrainerCallback):
        """Step wall times and peak allocated memory of the training steps, and of what follows the last step
        (the validation pass) separately; precision, trainable dtypes, losses and the GradScaler's skipped steps.
        Added first, so its on_step_end reads the training peak before validation runs at that step."""

        def __init__(self):
            self.times: list[float] = []
            self.train_peak: tuple[float | None, float | None] = (None, None)
            self.validation_peak: tuple[float | None, float | None] = (None, None)
            self.started = 0.0
            self.precision = None
            self.trainable_dtypes: list[str] = []
            self.losses: list[float] = []
            self.skipped_steps = 0
            self.scale: float | None = None

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.precision = "fp16" if args.fp16 else "bf16" if args.bf16 else "fp32"
            if model is not None:  # after SFTTrainer's init and tallrec's fp16 upcast: what the optimizer steps
                self.trainable_dtypes = sorted({str(p.dtype).replace("torch.", "") for p in model.parameters()
                                                if p.requires_grad})
            _reset_peak()

        def on_step_begin(self, args, state, control, **kwargs):
            _sync()
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, optimizer=None, **kwargs):
            _sync()
            self.times.append(time.perf_counter() - self.started)
            allocated, reserved = _peak()
            if allocated is not None:
                self.train_peak = (max(self.train_peak[0] or 0.0, allocated), max(self.train_peak[1] or 0.0, reserved))
            if getattr(optimizer, "step_was_skipped", False):  # accelerate: the GradScaler found inf/nan
                self.skipped_steps += 1
            scaler = getattr(optimizer, "scaler", None)
            if scaler is not None and scaler.is_enabled():
                self.scale = float(scaler.get_scale())
            _restart_peak()  # what follows (validation at the last step) is measured on its own

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

        def on_train_end(self, args, state, control, **kwargs):
            self.validation_peak = _peak()

    return StepMeter()


class _LMHeadCounter:
    """Counts which LM head computed the training loss: trl's Triton kernel (`_forward_kernel[grid]`), trl's torch
    tiles (`_forward_tile`, where trl has no Triton) or tallrec's compact head (`compact_log_probs`)."""

    def __init__(self):
        self.calls = {"trl_triton": 0, "trl_torch_tiles": 0, "tallrec_compact": 0}
        self.restore: list[tuple[object, str, object]] = []
        self.untraced: list[str] = []

    def _wrap(self, owner, name: str, key: str) -> None:
        original = getattr(owner, name, None)
        if original is None:  # another trl release: the row says the head was not traced
            self.untraced.append(f"{getattr(owner, '__name__', owner)}.{name}")
            return
        calls = self.calls

        if key == "trl_triton":
            class Launcher:  # a triton JITFunction: `kernel[grid](...)`
                def __getitem__(self, grid):
                    calls[key] += 1
                    return original[grid]

                def __getattr__(self, attribute):
                    return getattr(original, attribute)

            wrapped: object = Launcher()
        else:
            def wrapped(*args, **kwargs):
                calls[key] += 1
                return original(*args, **kwargs)

        setattr(owner, name, wrapped)
        self.restore.append((owner, name, original))

    def __enter__(self):
        from tallrec_cli.train import lm_head

        try:
            import trl.kernels.chunked_logprob as chunked
        except ImportError:
            self.untraced.append("trl.kernels.chunked_logprob")
        else:
            self._wrap(chunked, "_forward_kernel", "trl_triton")
            self._wrap(chunked, "_forward_tile", "trl_torch_tiles")
        self._wrap(lm_head, "compact_log_probs", "tallrec_compact")
        return self

    def __exit__(self, *exc):
        for owner, name, original in reversed(self.restore):
            setattr(owner, name, original)

    @property
    def head(self) -> str:
        names = {"trl_triton": "trl Triton kernel", "trl_torch_tiles": "trl torch tiles",
                 "tallrec_compact": "tallrec compact head"}
        used = [names[key] for key, count in self.calls.items() if count]
        if not used and self.untraced:
            return f"not traced ({', '.join(self.untraced)} not found)"
        return " + ".join(used) or "none (full logits)"


def train_config(case: TrainCase, shapes: Shapes, data: Path, output: Path, smoke: bool):
    training = {"max_steps": shapes.steps, "batch_size": shapes.micro_batch, "micro_batch_size": shapes.micro_batch,
                "eval_every": shapes.steps, "eval_at_start": False, "patience": None, "warmup_steps": 0,
                "eval_batch_size": 8}
    common = {"data": {"train": str(data), "shots": None, "max_valid": 8},
              "prompt": {"max_length": shapes.seq}, "output": {"dir": str(output), "overwrite": True}}
    if case.recipe is not None:
        # the recipe as shipped on a random model of its shape: its LoRA, loss, precision and micro-batch (TALLRec's
        # 16 x 512 at full size), one micro-batch per optimizer step (no accumulation), validation at the last step
        micro = shapes.micro_batch if smoke else load_train_config(case.recipe).training.micro_batch_size
        return load_train_config(case.recipe, {
            **common, "model": {"name": f"random:{case.arch}", "dtype": case.dtype, "quantization": case.quantization},
            "training": {**training, "batch_size": micro, "micro_batch_size": micro}})
    optim = "adamw_torch" if smoke or case.quantization == "none" else "paged_adamw_8bit"
    return load_train_config(None, {
        **common, "model": {"name": f"random:{case.arch}", "dtype": case.dtype, "quantization": case.quantization},
        "lora": {"r": 16, "alpha": 32, "target_modules": ["all-linear"]},
        "training": {**training, "gradient_checkpointing": True, "group_by_length": False, "lr": 2e-4,
                     "optim": optim}})


def _significant(value: float) -> float:
    """Four significant digits: tiny smoke shapes reach fractions of a percent, which must not round to 0."""
    return float(f"{value:.4g}")


def _model_flops_per_token(model_config, seq: int) -> float:
    """Forward FLOPs per token: 2 x non-embedding parameters + causal attention (QK^T and AV)."""
    hidden, layers = model_config.hidden_size, model_config.num_hidden_layers
    kv = model_config.num_key_value_heads * hidden // model_config.num_attention_heads
    per_layer = 2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * model_config.intermediate_size
    return 2 * layers * per_layer + 2 * layers * seq * hidden


def _estimate_error(estimate: float, measured: float | None) -> float | None:
    return None if not measured else round((estimate - measured) / measured, 3)


def memory_against_estimate(parts: dict[str, float], train_peak: tuple[float | None, float | None],
                            validation_peak: tuple[float | None, float | None]) -> dict:
    """`--dry-run`'s training part against the training steps' max_memory_allocated, and its validation part
    against the validation pass's, each on its own (not the estimate's total, the larger of the two, against a
    reserved peak: reserved adds the allocator's cache, which the estimate does not model)."""
    train_error = _estimate_error(parts["training"], train_peak[0])
    valid_error = _estimate_error(parts["validation"], validation_peak[0])
    return {"peak_train_allocated_gib": _gib(train_peak[0]), "peak_train_reserved_gib": _gib(train_peak[1]),
            "estimate_train_gib": _significant(parts["training"] / GIB), "estimate_train_error": train_error,
            "peak_validation_allocated_gib": _gib(validation_peak[0]),
            "peak_validation_reserved_gib": _gib(validation_peak[1]),
            "estimate_validation_gib": _significant(parts["validation"] / GIB),
            "estimate_validation_error": valid_error,
            "estimate_within_goal": None if train_error is None or valid_error is None
            else abs(train_error) <= ESTIMATE_GOAL and abs(valid_error) <= ESTIMATE_GOAL}


def run_dir_of(case: TrainCase, workdir: Path) -> Path:
    return workdir / "runs" / case.slug


def run_train_case(case: TrainCase, shapes: Shapes, workdir: Path, peak_flops: float, smoke: bool) -> dict:
    import numpy as np

    data = write_records(workdir / "data", max(shapes.micro_batch, 16) * shapes.steps)  # a recipe's micro-batch 16
    run_dir = run_dir_of(case, workdir)
    config = train_config(case, shapes, data, run_dir, smoke)
    tokenizer = load_tokenizer(resolve_model_source(config.model.name))
    lengths = prepare_data(config, tokenizer, load_template(config.prompt.template)).train_token_lengths
    seq = int(max(lengths))
    estimate = estimate_recipe(config, seq_len=seq)
    meter = _step_meter()
    with _LMHeadCounter() as heads:
        run_training(config, callbacks=(meter,))
    timed = meter.times[1:] or meter.times  # the first step pays for kernel selection and allocator growth
    step_seconds = float(np.mean(timed))
    tokens_per_s = config.training.micro_batch_size * float(np.mean(lengths)) / step_seconds
    # LoRA training: forward + backward through the frozen weights (input gradients) = 2 x forward;
    # recomputation under gradient checkpointing is not model FLOPs.
    flops = 2 * _model_flops_per_token(model_config_for(config), seq) * tokens_per_s
    return {"case": case.label, "arch": case.arch, "quantization": case.quantization, "dtype": case.dtype,
            "recipe": case.recipe and case.recipe.name, "optim": config.training.optim,
            "precision": meter.precision, "trainable_dtypes": meter.trainable_dtypes, "lm_head": heads.head,
            "lm_head_calls": dict(heads.calls), "losses": [_significant(loss) for loss in meter.losses],
            "loss_finite": bool(meter.losses) and all(math.isfinite(loss) for loss in meter.losses),
            "scaler_skipped_steps": meter.skipped_steps if meter.precision == "fp16" else None,
            "scaler_scale": meter.scale,
            "sequence": seq, "micro_batch": config.training.micro_batch_size, "steps": len(meter.times),
            "step_seconds": round(step_seconds, 3), "tokens_per_s": round(tokens_per_s, 1),
            "mfu": _significant(flops / peak_flops),
            **memory_against_estimate(estimate.parts, meter.train_peak, meter.validation_peak),
            "run_dir": str(run_dir)}


def run_eval(case: EvalCase, shapes: Shapes, workdir: Path, peak_flops: float) -> list[dict]:
    import torch

    _reset_peak()
    inference = load_for_inference(model=f"random:{case.arch}", dtype="bfloat16", quantization=case.quantization)
    loaded_allocated, _ = _peak()
    template = load_template("alpaca")
    tokenizer = inference.tokenizer
    records = [json.loads(line) for line in
               (write_records(workdir / "eval-data", 8) / "valid.jsonl").read_text().splitlines()]
    fitted = [fit_record(record, tokenizer, template, "", shapes.eval_tokens)[0] for record in records]
    prompts = [template.render(fitted[index % len(fitted)], tokenizer) for index in range(shapes.eval_prompts)]
    labels = resolve_label_tokens(tokenizer, template, "Yes", "No")
    per_token = _model_flops_per_token(inference.model.config, shapes.eval_tokens)
    device = next(inference.model.parameters()).device
    cap = cuda_memory_cap(device) if device.type == "cuda" else None
    rows = []
    for cache in ("off", "on"):
        _reset_peak()
        free = cuda_free_bytes(device) if device.type == "cuda" else None
        result = score_prompts_detailed(inference.model, tokenizer, prompts, labels, batch_size=None, prefix_cache=cache)
        computed = result.prompt_tokens - result.prefix_tokens
        allocated, reserved = _peak()
        rows.append({"case": case.label, "arch": case.arch, "quantization": case.quantization, "prefix_cache": cache,
                     "prompts": len(prompts), "prompt_tokens": result.prompt_tokens, "computed_tokens": computed,
                     "batch_size": result.batch_size, "oom_retries": result.oom_retries,
                     "free_for_batch_gib": _gib(free), "memory_cap_gib": _gib(cap),
                     "seconds": round(result.seconds, 2), "prompts_per_s": round(len(prompts) / result.seconds, 1),
                     "peak_fraction": _significant(per_token * computed / result.seconds / peak_flops),
                     "weights_allocated_gib": _gib(loaded_allocated), "peak_allocated_gib": _gib(allocated),
                     "peak_reserved_gib": _gib(reserved)})
    del inference
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return rows


def run_export(case: ExportCase, shapes: Shapes, workdir: Path, peak_flops: float, smoke: bool) -> dict:
    """Merged bf16 export of a training case's run (trained here first when --workdir lacks it: a fresh machine).
    Random weights score every prompt almost alike, so the export's AUC comparison can flip on near-ties: a refused
    verification is reported, not a failure (time and peak memory cover the whole export either way). The merged
    folder is measured and removed (a 7B is 13.5 GB)."""
    run_dir = run_dir_of(case.run, workdir)
    trained_here = not (run_dir / "manifest.json").exists()
    if trained_here:
        run_train_case(case.run, shapes, workdir, peak_flops, smoke)
    _reset_peak()
    started = time.perf_counter()
    note = None
    output = workdir / "merged"
    try:
        exported = export_merged(run_dir, output, dtype="bfloat16", overwrite=True, verify_samples=8)
        verified = exported.verification.ok
    except ArtifactError as exc:
        if "does not reproduce" not in exc.message:
            raise
        verified, note = False, exc.message
    seconds = time.perf_counter() - started
    allocated, reserved = _peak()
    size = wheels.folder_bytes(output) if output.exists() else None
    shutil.rmtree(output, ignore_errors=True)
    return {"case": case.label, "run": str(run_dir), "trained_for_export": trained_here, "dtype": "bfloat16",
            "seconds": round(seconds, 1), "peak_allocated_gib": _gib(allocated), "peak_reserved_gib": _gib(reserved),
            "merged_gib": None if size is None else _significant(size / GIB), "verified": verified, "note": note}


def _failure(exc: BaseException) -> str:
    if isinstance(exc, TallrecError):
        return exc.message
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def _section(case: Case) -> str:
    return {TrainCase: "train", EvalCase: "eval", ExportCase: "export"}[type(case)]


def done(report: dict, case: Case) -> bool:
    """The case has rows in the report and none of them failed."""
    rows = [row for row in report[_section(case)] if row.get("case") == case.label]
    return bool(rows) and not any("error" in row for row in rows)


def record(report: dict, case: Case, rows: list[dict]) -> None:
    """Replace the case's rows (a failure from an earlier part is overwritten by a rerun)."""
    section = report[_section(case)]
    section[:] = [row for row in section if row.get("case") != case.label] + rows


def _fmt(value, suffix: str = "") -> str:
    return "-" if value is None else f"{value}{suffix}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:+.0f}%"


def markdown(report: dict) -> str:
    lines = [f"# GPU check ({report['mode']})", "", f"- found: {describe_versions(report['versions'])}",
             f"- device: {report['device']}"]
    for part, info in sorted(report["parts"].items()):
        state = "finished" if info.get("finished") else "unfinished"
        lines.append(f"- part {part} ({state}): {info['wall_seconds']:.0f} s, bf16 matmul reference "
                     f"{info['matmul_tflops']:.3g} TFLOP/s")
    lines += ["", ("| training case | precision | LoRA dtype | LM head | seq x batch | s/step | tokens/s | MFU | "
                   "train peak alloc GiB | --dry-run train GiB | error | validation peak alloc GiB | --dry-run "
                   "validation GiB | error | losses | scaler skipped |"), "|" + "---|" * 16]
    for row in report["train"]:
        if "error" in row:
            lines.append(f"| {row['case']} | failed: {row['error']} |" + " |" * 14)
            continue
        lines.append(
            f"| {row['case']} | {row['precision']} | {', '.join(row['trainable_dtypes'])} | {row['lm_head']} | "
            f"{row['sequence']} x {row['micro_batch']} | {row['step_seconds']:.2f} | {row['tokens_per_s']:.0f} | "
            f"{100 * row['mfu']:.3g}% | {_fmt(row['peak_train_allocated_gib'])} | {row['estimate_train_gib']} | "
            f"{_percent(row['estimate_train_error'])} | {_fmt(row['peak_validation_allocated_gib'])} | "
            f"{row['estimate_validation_gib']} | {_percent(row['estimate_validation_error'])} | "
            f"{' '.join(f'{loss:.3g}' for loss in row['losses'])} | {_fmt(row['scaler_skipped_steps'])} |")
    lines += ["", ("| eval | prefix cache | prompts | prompts/s | % of matmul peak | batch | OOM retries | "
                   "free for batch GiB | peak alloc GiB |"), "|" + "---|" * 9]
    for row in report["eval"]:
        if "error" in row:
            lines.append(f"| {row['case']} | failed: {row['error']} |" + " |" * 7)
            continue
        lines.append(f"| {row['case']} | {row['prefix_cache']} | {row['prompts']} | {row['prompts_per_s']} | "
                     f"{100 * row['peak_fraction']:.3g}% | {row['batch_size']} | {row['oom_retries']} | "
                     f"{_fmt(row['free_for_batch_gib'])} | {_fmt(row['peak_allocated_gib'])} |")
    lines += ["", "| merged export | seconds | peak alloc GiB | peak reserved GiB | size GiB | verified |",
              "|---|---|---|---|---|---|"]
    notes = []
    for row in report["export"]:
        if "error" in row:
            lines.append(f"| {row['case']} | failed: {row['error']} | | | | |")
            continue
        lines.append(f"| {row['case']} | {row['seconds']} | {_fmt(row['peak_allocated_gib'])} | "
                     f"{_fmt(row['peak_reserved_gib'])} | {_fmt(row['merged_gib'])} | {row['verified']} |")
        if row["note"]:
            notes.append(f"export verification ({row['case']}): {row['note']}")
    lines += [""] + notes if notes else []
    lines += ["", "## Issue 15: what this run must confirm (the measured rows above cover 1-6, 11-13)", ""]
    lines += [f"{item}. {text}" for item, text in ISSUE_15.items()]
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str) -> None:
    staging = path.with_name(path.name + ".tmp")
    staging.write_text(text)
    staging.replace(path)  # a run killed at the command's time limit leaves the previous file whole


def write_report(output: Path, report: dict) -> None:
    output.mkdir(parents=True, exist_ok=True)
    _write(output / "gpu_check.json", json.dumps(report, indent=2) + "\n")
    _write(output / "gpu_check.md", markdown(report))


def load_report(output: Path, mode: str, fresh: bool) -> dict:
    """The report a previous part left in ``output`` (same mode), or an empty one."""
    path = output / "gpu_check.json"
    if not fresh and path.exists():
        report = json.loads(path.read_text())
        if report.get("mode") == mode:
            return report
        print(f"gpu_check: {path} is a {report.get('mode')} run; starting a {mode} report", file=sys.stderr)
    return {"mode": mode, "versions": {}, "device": None, "card_gib": None, "parts": {}, "train": [], "eval": [],
            "export": []}


def list_parts(shapes: Shapes) -> str:
    return "\n".join(f"{number}\t" + "; ".join(case.label for case in cases)
                     for number, cases in enumerate(shapes.parts, start=1))


def run_case(case: Case, shapes: Shapes, workdir: Path, peak: float, smoke: bool) -> list[dict]:
    if isinstance(case, TrainCase):
        return [run_train_case(case, shapes, workdir, peak, smoke)]
    if isinstance(case, EvalCase):
        return run_eval(case, shapes, workdir, peak)
    return [run_export(case, shapes, workdir, peak, smoke)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on whatever device is here (the test suite)")
    parser.add_argument("--part", type=int, action="append",
                        help="run this part (repeatable; default: every part); --parts lists them")
    parser.add_argument("--parts", action="store_true", help="list the parts (number, tab, cases) and exit")
    parser.add_argument("--versions", action="store_true",
                        help="print the versions found (a line, then JSON) and exit; installs and imports nothing")
    parser.add_argument("--output", type=Path, default=REPO / "runs" / "gpu-check",
                        help="where gpu_check.json and gpu_check.md go (small: this comes back from the GPU machine)")
    parser.add_argument("--workdir", type=Path, default=REPO / "runs" / "gpu-check-work",
                        help="random model weights (TALLREC_HOME), training runs, exports; never under --output")
    parser.add_argument("--fresh", action="store_true", help="ignore the cases an earlier run left in --output")
    parser.add_argument("--card-gib", type=float, default=24.0, help="emulated card size on a bigger GPU")
    parser.add_argument("--steps", type=int, help="training steps per case (first one not timed)")
    parser.add_argument("--eval-prompts", type=int, help="prompts scored per eval pass")
    args = parser.parse_args(argv)

    shapes = SMOKE if args.smoke else FULL
    overrides = {key: value for key, value in (("steps", args.steps), ("eval_prompts", args.eval_prompts)) if value}
    shapes = replace(shapes, **overrides)
    if args.parts:
        print(list_parts(shapes))
        return 0
    if args.versions:
        found = found_versions()
        print(f"found {describe_versions(found)}\n{json.dumps(found)}")
        return 0
    numbers = args.part or list(range(1, len(shapes.parts) + 1))
    if any(not 1 <= number <= len(shapes.parts) for number in numbers):
        print(f"gpu_check: --part must be 1..{len(shapes.parts)}\n{list_parts(shapes)}", file=sys.stderr)
        return 2
    output, workdir = args.output.resolve(), args.workdir.resolve()
    if workdir == output or workdir.is_relative_to(output):
        print(f"gpu_check: --workdir {workdir} is under --output {output}: weights would travel back with the "
              "results; pass a --workdir outside it", file=sys.stderr)
        return 2

    quiet_libraries()
    versions = found_versions()
    print(f"gpu_check: found {describe_versions(versions)}", file=sys.stderr, flush=True)
    failures = wheels.import_failures()
    if failures:
        print(f"gpu_check: {missing_message(failures)}", file=sys.stderr)
        return 2
    import torch

    if not args.smoke and not torch.cuda.is_available():
        print("gpu_check: no CUDA device; run with --smoke for the tiny CPU version", file=sys.stderr)
        return 2
    # weights of the random models and everything else written go to the workdir
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ["TALLREC_HOME"] = str(workdir / "home")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the GPU machine has no network; nothing here downloads
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    report = load_report(output, "smoke" if args.smoke else "full", args.fresh)
    device = emulate_card(args.card_gib)
    report.update(versions=versions, device=device, card_gib=args.card_gib)
    print(f"gpu_check: {device}", file=sys.stderr)
    failed = []
    for number in numbers:
        started = time.perf_counter()
        peak = matmul_flops(shapes.matmul)
        info = report["parts"][str(number)] = {"wall_seconds": 0.0, "matmul_tflops": peak / 1e12, "finished": False,
                                               "cases": {}}
        for case in shapes.parts[number - 1]:
            if done(report, case):
                print(f"gpu_check: part {number}: {case.label}: already in {output / 'gpu_check.json'}",
                      file=sys.stderr)
                info["cases"][case.label] = "earlier run"
                continue
            print(f"gpu_check: part {number}: {case.label}", file=sys.stderr, flush=True)
            case_started = time.perf_counter()
            try:
                rows = run_case(case, shapes, workdir, peak, args.smoke)
            except Exception as exc:  # noqa: BLE001 - one case failing (an OOM, a kernel) must not cost the rest
                rows = [{"case": case.label, "error": _failure(exc)}]
                failed.append(case.label)
            _reset_peak()
            info["cases"][case.label] = round(time.perf_counter() - case_started, 1)
            info["wall_seconds"] = time.perf_counter() - started
            record(report, case, rows)
            write_report(output, report)  # after every case: a part cut off at the time limit keeps what it did
        info["wall_seconds"] = time.perf_counter() - started
        info["finished"] = True
        write_report(output, report)
        print(f"gpu_check: part {number} done in {info['wall_seconds']:.0f} s", file=sys.stderr, flush=True)
    print(markdown(report))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
