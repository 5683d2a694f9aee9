"""GPU acceptance check: what a 24 GB card (RTX 3090) owner needs to know, in one call.

    python -m acceptance.gpu_check                 # on a CUDA machine (make gpu-check); ~6 min on an H100/H200
    python -m acceptance.gpu_check --smoke         # tiny shapes on the CPU: the same code paths, run by the tests

Everything goes through tallrec's own code: `random:<architecture>` model sources (published configs,
random weights, no download), `tallrec_cli.train.run.run_training` for the training steps,
`tallrec_cli.model.scoring.score_prompts_detailed` for eval and `tallrec_cli.export.merged.export_merged` for the
merged export. On a bigger card the process is capped at --card-gib (default 24) with
`torch.cuda.set_per_process_memory_fraction`, so an out-of-memory here is one on a 3090.

Measured per training case (sequence --seq, micro-batch --micro-batch, gradient checkpointing):
peak allocated and reserved memory, tokens/s, model FLOPs utilisation against a bf16 matmul measured
in the same run, and the `--dry-run` estimate beside the peak (goal: within 15%). Eval: prompts/s and %
of the matmul peak with and without the prefix cache. Export: merged bf16 export's time and peak memory.
Writes gpu_check.json and gpu_check.md to --output.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

from acceptance.cuda_acceptance import ISSUE_15  # the CUDA-path checklist this run is the first to see

GIB = 1024 ** 3
# What `tallrec train` needs beyond a stock CUDA torch image, pinned to the versions tested here.
WHEELS = {"trl": "trl==1.16.0", "datasets": "datasets==5.2.0", "bitsandbytes": "bitsandbytes==0.50.2"}
ESTIMATE_GOAL = 0.15


@dataclass(frozen=True)
class Case:
    arch: str
    quantization: str  # 4bit (QLoRA), 8bit, none (bf16 LoRA)

    @property
    def label(self) -> str:
        return {"4bit": "QLoRA", "8bit": "8-bit LoRA", "none": "bf16 LoRA"}[self.quantization] + f" {self.arch}"


@dataclass(frozen=True)
class Shapes:
    cases: tuple[Case, ...]
    seq: int
    micro_batch: int
    steps: int
    eval_arch: str
    eval_prompts: int
    eval_tokens: int
    export_arch: str
    matmul: int


FULL = Shapes(cases=(Case("llama-2-7b", "4bit"), Case("llama-2-7b", "8bit"), Case("llama-2-7b", "none"),
                     Case("llama-3-8b", "4bit")),
              seq=512, micro_batch=8, steps=4, eval_arch="llama-2-7b", eval_prompts=1000, eval_tokens=256,
              export_arch="llama-2-7b", matmul=8192)
SMOKE = Shapes(cases=(Case("tiny-llama", "4bit"), Case("tiny-llama", "8bit"), Case("tiny-llama", "none")),
               seq=96, micro_batch=2, steps=2, eval_arch="tiny-llama", eval_prompts=16, eval_tokens=64,
               export_arch="tiny-llama", matmul=256)


def missing_wheels() -> list[str]:
    return [name for name in WHEELS if importlib.util.find_spec(name) is None]


def carry_instructions(missing: list[str]) -> str:
    pins = " ".join(WHEELS[name] for name in missing)
    return (f"missing packages: {', '.join(missing)}. The GPU machine has no network: download the wheels here\n"
            f"  pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 "
            f"-d wheels {pins}\n"
            "carry wheels/ with the working tree and install there with: pip install --no-deps wheels/*.whl\n"
            "(bitsandbytes unpacks to ~125 MB: carry its Python package plus libbitsandbytes_cuda<ver>.so and the CPU "
            ".so, ~4 MB; check that datasets accepts the machine's pyarrow)")


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
    import torch

    if not torch.cuda.is_available():
        return None, None
    return torch.cuda.max_memory_allocated() / GIB, torch.cuda.max_memory_reserved() / GIB


def _reset_peak() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


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
        """Step wall times and peak memory over the training steps (added first: it reads the peak
        before validation runs at the last step)."""

        def __init__(self):
            self.times: list[float] = []
            self.peak: tuple[float | None, float | None] = (None, None)
            self.started = 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            _reset_peak()

        def on_step_begin(self, args, state, control, **kwargs):
            _sync()
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            _sync()
            self.times.append(time.perf_counter() - self.started)
            self.peak = _peak()

    return StepMeter()


def train_config(case: Case, shapes: Shapes, data: Path, output: Path, smoke: bool):
    from tallrec_cli.train.config import load_train_config

    optim = "adamw_torch" if smoke or case.quantization == "none" else "paged_adamw_8bit"
    return load_train_config(None, {
        "model": {"name": f"random:{case.arch}", "dtype": "bfloat16",
                  "quantization": case.quantization},
        "lora": {"r": 16, "alpha": 32, "target_modules": ["all-linear"]},
        "data": {"train": str(data), "shots": None, "max_valid": 8},
        "prompt": {"max_length": shapes.seq},
        "training": {"max_steps": shapes.steps, "batch_size": shapes.micro_batch, "micro_batch_size": shapes.micro_batch,
                     "eval_every": shapes.steps, "eval_at_start": False, "gradient_checkpointing": True,
                     "group_by_length": False, "lr": 2e-4, "warmup_steps": 0, "optim": optim, "eval_batch_size": 8},
        "output": {"dir": str(output), "overwrite": True},
    })


def _significant(value: float) -> float:
    """Four significant digits: tiny smoke shapes reach fractions of a percent, which must not round to 0."""
    return float(f"{value:.4g}")


def _model_flops_per_token(model_config, seq: int) -> float:
    """Forward FLOPs per token: 2 x non-embedding parameters + causal attention (QK^T and AV)."""
    hidden, layers = model_config.hidden_size, model_config.num_hidden_layers
    kv = model_config.num_key_value_heads * hidden // model_config.num_attention_heads
    per_layer = 2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * model_config.intermediate_size
    return 2 * layers * per_layer + 2 * layers * seq * hidden


def run_train_case(case: Case, shapes: Shapes, workdir: Path, peak_flops: float, smoke: bool) -> dict:
    import numpy as np

    from tallrec_cli.model.loading import load_tokenizer, resolve_model_source
    from tallrec_cli.model.prompts import load_template
    from tallrec_cli.train.capacity import estimate_recipe, model_config_for
    from tallrec_cli.train.data import prepare_data
    from tallrec_cli.train.run import run_training

    data = write_records(workdir / "data", max(shapes.micro_batch * shapes.steps, 8))
    run_dir = workdir / "runs" / f"{case.arch}-{case.quantization}"
    config = train_config(case, shapes, data, run_dir, smoke)
    tokenizer = load_tokenizer(resolve_model_source(config.model.name))
    lengths = prepare_data(config, tokenizer, load_template(config.prompt.template)).train_token_lengths
    seq = int(max(lengths))
    estimate = estimate_recipe(config, seq_len=seq)
    meter = _step_meter()
    run_training(config, callbacks=(meter,))
    timed = meter.times[1:] or meter.times  # the first step pays for kernel selection and allocator growth
    step_seconds = float(np.mean(timed))
    tokens_per_s = shapes.micro_batch * float(np.mean(lengths)) / step_seconds
    # LoRA training: forward + backward through the frozen weights (input gradients) = 2 x forward;
    # recomputation under gradient checkpointing is not model FLOPs.
    flops = 2 * _model_flops_per_token(model_config_for(config), seq) * tokens_per_s
    allocated, reserved = meter.peak
    error = None if reserved is None else (estimate.total_gib - reserved) / reserved
    return {"case": case.label, "arch": case.arch, "quantization": case.quantization, "optim": config.training.optim,
            "sequence": seq, "micro_batch": shapes.micro_batch, "steps": len(meter.times),
            "step_seconds": round(step_seconds, 3), "tokens_per_s": round(tokens_per_s, 1),
            "mfu": _significant(flops / peak_flops), "peak_allocated_gib": allocated and round(allocated, 2),
            "peak_reserved_gib": reserved and round(reserved, 2), "estimate_gib": _significant(estimate.total_gib),
            "estimate_error": error and round(error, 3),
            "estimate_within_goal": None if error is None else abs(error) <= ESTIMATE_GOAL, "run_dir": str(run_dir)}


def run_eval(shapes: Shapes, workdir: Path, peak_flops: float) -> list[dict]:
    import torch

    from tallrec_cli.model.loading import load_for_inference
    from tallrec_cli.model.prompts import load_template, resolve_label_tokens
    from tallrec_cli.model.scoring import score_prompts_detailed
    from tallrec_cli.train.data import fit_record

    _reset_peak()
    inference = load_for_inference(model=f"random:{shapes.eval_arch}", dtype="bfloat16")
    template = load_template("alpaca")
    tokenizer = inference.tokenizer
    records = [json.loads(line) for line in (write_records(workdir / "eval-data", 8) / "valid.jsonl").read_text().splitlines()]
    fitted = [fit_record(record, tokenizer, template, "", shapes.eval_tokens)[0] for record in records]
    prompts = [template.render(fitted[index % len(fitted)], tokenizer) for index in range(shapes.eval_prompts)]
    labels = resolve_label_tokens(tokenizer, template, "Yes", "No")
    config = inference.model.config
    per_token = _model_flops_per_token(config, shapes.eval_tokens)
    rows = []
    for cache in ("off", "on"):
        result = score_prompts_detailed(inference.model, tokenizer, prompts, labels, batch_size=None, prefix_cache=cache)
        computed = result.prompt_tokens - result.prefix_tokens
        rows.append({"prefix_cache": cache, "prompts": len(prompts), "prompt_tokens": result.prompt_tokens,
                     "computed_tokens": computed, "batch_size": result.batch_size, "seconds": round(result.seconds, 2),
                     "prompts_per_s": round(len(prompts) / result.seconds, 1),
                     "peak_fraction": _significant(per_token * computed / result.seconds / peak_flops),
                     "peak_allocated_gib": _peak()[0] and round(_peak()[0], 2)})
    del inference
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return rows


def run_export(run_dir: Path, workdir: Path) -> dict:
    """Merged bf16 export of a training case's run. Random weights score every prompt almost alike, so the
    export's AUC comparison can flip on near-ties: a refused verification is reported, not a failure
    (time and peak memory cover the whole export either way)."""
    from tallrec_cli.core.errors import ArtifactError
    from tallrec_cli.export.merged import export_merged

    _reset_peak()
    started = time.perf_counter()
    note = None
    try:
        exported = export_merged(run_dir, workdir / "merged", dtype="bfloat16", overwrite=True, verify_samples=8)
        verified = exported.verification.ok
    except ArtifactError as exc:
        if "does not reproduce" not in exc.message:
            raise
        verified, note = False, exc.message
    allocated, reserved = _peak()
    return {"run": str(run_dir), "dtype": "bfloat16", "seconds": round(time.perf_counter() - started, 1),
            "peak_allocated_gib": allocated and round(allocated, 2), "peak_reserved_gib": reserved and round(reserved, 2),
            "verified": verified, "note": note}


def _failure(exc: BaseException) -> str:
    from tallrec_cli.core.errors import TallrecError

    return exc.message if isinstance(exc, TallrecError) else f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def markdown(report: dict) -> str:
    lines = [f"# GPU check ({report['mode']})", "", f"- device: {report['device']}",
             f"- bf16 matmul reference: {report['matmul_tflops']:.2f} TFLOP/s", f"- wall time: {report['wall_seconds']:.0f} s",
             "", "| training case | seq x batch | s/step | tokens/s | MFU | peak alloc GiB | peak reserved GiB | "
             "--dry-run GiB | estimate error |", "|---|---|---|---|---|---|---|---|---|"]
    for row in report["train"]:
        if "error" in row:
            lines.append(f"| {row['case']} | failed: {row['error']} | | | | | | | |")
            continue
        error = "-" if row["estimate_error"] is None else f"{100 * row['estimate_error']:+.0f}%"
        lines.append(f"| {row['case']} | {row['sequence']} x {row['micro_batch']} | {row['step_seconds']:.2f} | "
                     f"{row['tokens_per_s']:.0f} | {100 * row['mfu']:.3g}% | {row['peak_allocated_gib'] or '-'} | "
                     f"{row['peak_reserved_gib'] or '-'} | {row['estimate_gib']} | {error} |")
    lines += ["", "| eval (prefix cache) | prompts | prompts/s | % of matmul peak | batch |", "|---|---|---|---|---|"]
    for row in report["eval"]:
        if "error" in row:
            lines.append(f"| failed: {row['error']} | | | | |")
            continue
        lines.append(f"| {row['prefix_cache']} | {row['prompts']} | {row['prompts_per_s']} | "
                     f"{100 * row['peak_fraction']:.3g}% | {row['batch_size']} |")
    export = report["export"]
    lines += ["", "| merged export | seconds | peak alloc GiB | peak reserved GiB | verified |", "|---|---|---|---|---|"]
    if "error" in export:
        lines.append(f"| failed: {export['error']} | | | | |")
    else:
        lines.append(f"| {export['dtype']} | {export['seconds']} | {export['peak_allocated_gib'] or '-'} | "
                     f"{export['peak_reserved_gib'] or '-'} | {export['verified']} |")
        if export["note"]:
            lines.append(f"\nexport verification: {export['note']}")
    lines += ["", "## Issue 15: what this run must confirm (the measured rows above cover 2-4, 6, 11, 13)", ""]
    lines += [f"{item}. {text}" for item, text in ISSUE_15.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on whatever device is here (the test suite)")
    parser.add_argument("--output", type=Path, default=REPO / "runs" / "gpu-check", help="where the report goes")
    parser.add_argument("--card-gib", type=float, default=24.0, help="emulated card size on a bigger GPU")
    parser.add_argument("--steps", type=int, help="training steps per case (first one not timed)")
    parser.add_argument("--eval-prompts", type=int, help="prompts scored per eval pass")
    args = parser.parse_args(argv)

    missing = missing_wheels()
    if missing:
        print(f"gpu_check: {carry_instructions(missing)}", file=sys.stderr)
        return 2
    import torch

    from tallrec_cli.core.quiet import quiet_libraries

    quiet_libraries()
    if not args.smoke and not torch.cuda.is_available():
        print("gpu_check: no CUDA device; run with --smoke for the tiny CPU version", file=sys.stderr)
        return 2
    shapes = SMOKE if args.smoke else FULL
    overrides = {key: value for key, value in (("steps", args.steps), ("eval_prompts", args.eval_prompts)) if value}
    if overrides:
        from dataclasses import replace

        shapes = replace(shapes, **overrides)
    started = time.perf_counter()
    device = emulate_card(args.card_gib)
    print(f"gpu_check: {device}", file=sys.stderr)
    peak = matmul_flops(shapes.matmul)
    workdir = args.output / "work"
    report: dict = {"mode": "smoke" if args.smoke else "full", "device": device, "matmul_tflops": peak / 1e12,
                    "torch": torch.__version__, "train": [], "eval": [], "export": {}}
    for case in shapes.cases:
        print(f"gpu_check: training {case.label}", file=sys.stderr)
        try:
            report["train"].append(run_train_case(case, shapes, workdir, peak, args.smoke))
        except Exception as exc:  # one case failing (an OOM, a kernel) must not cost the rest of the GPU session
            report["train"].append({"case": case.label, "error": _failure(exc)})
        _reset_peak()
    print("gpu_check: eval", file=sys.stderr)
    try:
        report["eval"] = run_eval(shapes, workdir, peak)
    except Exception as exc:
        report["eval"] = [{"error": _failure(exc)}]
    export_from = next((row["run_dir"] for row in report["train"] if row.get("arch") == shapes.export_arch), None)
    print("gpu_check: merged export", file=sys.stderr)
    try:
        if export_from is None:
            raise RuntimeError(f"no {shapes.export_arch} training run to export")
        report["export"] = run_export(Path(export_from), workdir)
    except Exception as exc:
        report["export"] = {"error": _failure(exc)}
    report["wall_seconds"] = time.perf_counter() - started
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    (args.output / "gpu_check.md").write_text(text)
    print(text)
    failed = [row for row in report["train"] + report["eval"] + [report["export"]] if "error" in row]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
