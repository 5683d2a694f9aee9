"""Training throughput: `tallrec train` (library path) vs a TALLRec-style baseline, same model and records.

    .venv/bin/python -m bench.train_throughput                 # CPU: embedded SmolLM2, 32 records, 2 steps, 3 rounds
    .venv/bin/python -m bench.train_throughput --gpu           # GPU: random LLaMA-7B-shaped QLoRA memory check
                                                               # on a 24 GiB card emulated on a larger GPU

Baseline = TALLRec's finetune_rec.py on this hardware: transformers Trainer, fp32, micro-batches of 4 (its
default) padded to the longest record (to a multiple of 8, its collator) in random order, loss on the whole
sequence, LoRA r=8 on q/v. tallrec = the default recipe's training loop: trl SFTTrainer, dtype auto (bf16 where
the CPU has AVX512-BF16 or AMX, else fp32), length-grouped micro-batches of 4, the compact LM head
(tallrec_cli/train/lm_head.py: on CPU only labelled positions are projected onto the vocabulary), the prompt
prefix shared by a micro-batch run once (tallrec_cli/train/shared_prefix.py), answer-only loss; then the same
with one lever changed (shared prefix off; full-sequence loss). Every case sees the same records exactly once
(records = steps * batch); only the training loop is timed (model loading and validation are not). Each round
runs every case once, in an order that rotates from round to round, so load from other jobs falls on all cases
alike; speed-ups are medians of per-round ratios to the baseline, in wall and in CPU seconds.
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from transformers import TrainerCallback

REPO = Path(__file__).resolve().parent.parent
# The card the recipes are sized for; a larger GPU is limited to it (torch.cuda.set_per_process_memory_fraction).
EMULATED_GPU_GIB = 24


class LoopTimer(TrainerCallback):
    """Wall and CPU (this process) seconds from the first step to the end of the last one (before tallrec's
    validation runs)."""

    def __init__(self):
        self.started = self.finished = self.cpu_started = self.cpu_finished = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.started, self.cpu_started = time.perf_counter(), time.process_time()

    def on_step_end(self, args, state, control, **kwargs):
        self.finished, self.cpu_finished = time.perf_counter(), time.process_time()

    @property
    def seconds(self) -> float:
        return self.finished - self.started

    @property
    def cpu_seconds(self) -> float:
        return self.cpu_finished - self.cpu_started


def build_records(folder: Path) -> Path:
    from data_builders.build import build_config, build_dataset

    build_dataset(build_config("movielens-latest", None, {"output": str(folder)}))
    return folder


def tallrec_run(dataset: Path, records: int, steps: int, batch: int, micro: int, work: Path,
                settings: dict) -> LoopTimer:
    """The default recipe's training loop on ``records`` with ``settings`` (recipe keys) changed."""
    from tallrec_cli.train.config import load_train_config
    from tallrec_cli.train.run import run_training

    timer = LoopTimer()
    config = load_train_config(REPO / "recipes" / "smollm2-135m-lora.yaml", {
        "data": {"train": str(dataset), "shots": records, "max_valid": 16},
        "prompt": dict(settings.get("prompt", {})),
        # No step-0 validation: it would run inside the timed loop, and the baseline validates nothing.
        "training": {"max_steps": steps, "batch_size": batch, "micro_batch_size": micro, "eval_every": steps,
                     "warmup_steps": 0, "eval_at_start": False, **settings.get("training", {})},
        "output": {"dir": str(work), "overwrite": True},
    })
    run_training(config, callbacks=(timer,))
    return timer


def baseline_run(dataset: Path, records: int, steps: int, batch: int, micro: int) -> tuple[LoopTimer, list[int]]:
    """TALLRec's recipe: fp32 weights, full-sequence labels, DataCollatorForSeq2Seq padding, random order."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from data_builders import load_split, sample_records
    from tallrec_cli.model.loading import load_model, load_tokenizer, resolve_model_source
    from tallrec_cli.model.prompts import load_template

    source = resolve_model_source("smollm2-135m")
    tokenizer = load_tokenizer(source, padding_side="left")
    template = load_template("alpaca")
    chosen = sample_records(load_split(dataset, "train"), records, seed=0)
    rows = []
    for record in chosen:
        ids = tokenizer(template.render(record, tokenizer) + record["output"] + tokenizer.eos_token,
                        truncation=True, max_length=512)["input_ids"]
        rows.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": list(ids)})
    model = load_model(source, dtype="float32")
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["q_proj", "v_proj"],
                                             task_type="CAUSAL_LM"))
    timer = LoopTimer()
    with tempfile.TemporaryDirectory() as output:
        args = TrainingArguments(output_dir=output, per_device_train_batch_size=micro,
                                 gradient_accumulation_steps=batch // micro, max_steps=steps,
                                 learning_rate=3e-4, use_cpu=not torch.cuda.is_available(), report_to=[],
                                 save_strategy="no", logging_steps=1, disable_tqdm=True, seed=42)
        trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                          data_collator=DataCollatorForSeq2Seq(tokenizer, pad_to_multiple_of=8, padding=True,
                                                               return_tensors="pt"),
                          callbacks=[timer])
        trainer.train()
    return timer, [len(row["input_ids"]) for row in rows]


# (name, recipe settings changed from the default recipe); the first is the default recipe itself
TALLREC_CASES = [
    ("tallrec train: default recipe (answer loss, shared prefix)", {}),
    ("- shared prefix off", {"training": {"shared_prefix": False}}),
    ("- full-sequence loss", {"prompt": {"loss": "full"}}),
]
BASELINE = "TALLRec-style baseline (Trainer, fp32, random order, full loss)"


def cpu_benchmark(args) -> None:
    import statistics

    import torch

    from tallrec_cli.model.loading import resolve_dtype

    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="tallrec-bench-"))
    dataset = Path(args.data) if args.data else build_records(work / "ml-latest-small")
    records = args.steps * args.batch
    names = [BASELINE, *(name for name, _ in TALLREC_CASES)]
    timers: dict[str, list[LoopTimer]] = {name: [] for name in names}
    loads, lengths = [], []
    for round_index in range(args.rounds):
        loads.append(os.getloadavg()[0])
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            if name == BASELINE:
                timer, lengths = baseline_run(dataset, records, args.steps, args.batch, args.micro)
            else:
                timer = tallrec_run(dataset, records, args.steps, args.batch, args.micro, work / "run",
                                    dict(TALLREC_CASES)[name])
            timers[name].append(timer)
    loads.append(os.getloadavg()[0])
    tokens = sum(lengths)
    print(f"\nSmolLM2-135M, LoRA r=8 q/v, {records} MovieLens latest-small records ({tokens} tokens, mean "
          f"{tokens / records:.0f}), {args.steps} steps of {args.batch} in micro-batches of {args.micro}, "
          f"{torch.get_num_threads()} threads, tallrec dtype auto = {str(resolve_dtype('auto')).replace('torch.', '')}; "
          f"{args.rounds} rounds, load average (1 min) {min(loads):.1f}-{max(loads):.1f}\n")
    print("| path | seconds (median) | CPU s | samples/s | tokens/s | speed-up | speed-up, CPU s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in names:
        wall = statistics.median(timer.seconds for timer in timers[name])
        cpu = statistics.median(timer.cpu_seconds for timer in timers[name])
        ratio = statistics.median(base.seconds / timer.seconds for base, timer in zip(timers[BASELINE], timers[name]))
        cpu_ratio = statistics.median(base.cpu_seconds / timer.cpu_seconds
                                      for base, timer in zip(timers[BASELINE], timers[name]))
        print(f"| {name} | {wall:.1f} | {cpu:.1f} | {records / wall:.2f} | {tokens / wall:.0f} | {ratio:.2f}x | "
              f"{cpu_ratio:.2f}x |")


def gpu_overrides(model_dir: str, dataset: str, steps: int, output: str) -> dict:
    """The QLoRA recipe on the random model; no step-0 validation, so the timed loop holds training only
    (the final validation runs after the last step and is measured by the peak, not the time)."""
    return {"model": {"name": model_dir}, "data": {"train": dataset, "shots": 64, "max_valid": 64},
            "training": {"max_steps": steps, "eval_every": steps, "eval_at_start": False},
            "output": {"dir": output, "overwrite": True}}


def gpu_benchmark(args) -> None:
    """Peak GPU memory of a LLaMA-7B-shaped QLoRA run vs the --dry-run estimate (random weights, no download),
    on a 24 GiB budget whatever the card."""
    import torch

    from bench.common import random_model
    from tallrec_cli.model.loading import load_tokenizer, resolve_model_source
    from tallrec_cli.train.capacity import config_from_shape, dry_run
    from tallrec_cli.train.config import load_train_config
    from tallrec_cli.train.run import run_training

    if not torch.cuda.is_available():
        raise SystemExit("--gpu needs a CUDA GPU")
    total_gib = torch.cuda.get_device_properties(0).total_memory / 2 ** 30
    torch.cuda.set_per_process_memory_fraction(min(1.0, EMULATED_GPU_GIB / total_gib))
    work = Path(args.gpu_model_dir)
    tokenizer = load_tokenizer(resolve_model_source("smollm2-135m"))
    if not (work / "config.json").exists():
        shape = config_from_shape("llama-7b")
        shape.vocab_size = len(tokenizer)
        shape.pad_token_id, shape.eos_token_id, shape.bos_token_id = (
            tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id)
        model = random_model(shape, "cuda")
        model.save_pretrained(work, safe_serialization=True)
        tokenizer.save_pretrained(work)
        del model
        torch.cuda.empty_cache()
    dataset = Path(args.data) if args.data else build_records(Path(tempfile.mkdtemp()) / "ml-latest-small")
    recipe = REPO / "recipes" / "llama-2-7b-qlora.yaml"
    config = load_train_config(recipe, gpu_overrides(str(work), str(dataset), args.steps,
                                                     str(work.parent / "bench-qlora-run")))
    estimate = dry_run(config, gpu_memory_gib=EMULATED_GPU_GIB)
    torch.cuda.reset_peak_memory_stats()
    timer = LoopTimer()
    run_training(config, callbacks=(timer,))
    peak = torch.cuda.max_memory_allocated() / 2 ** 30
    samples = args.steps * config.training.batch_size
    print(f"budget {EMULATED_GPU_GIB} GiB of {total_gib:.0f}")
    print("| model | quantization | estimated peak GiB (training / validation) | measured peak GiB | samples/s |")
    print("|---|---|---:|---:|---:|")
    memory = estimate["memory_gib"]
    print(f"| LLaMA-7B shape (random) | 4bit NF4 | {memory['total']:.1f} ({memory['training']:.1f} / "
          f"{memory['validation']:.1f}) | {peak:.1f} | {samples / timer.seconds:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="dataset folder (default: build the bundled MovieLens latest-small)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16, help="records per optimizer step (the default recipe's)")
    parser.add_argument("--micro", type=int, default=4, help="records per forward pass (the default recipe's)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="default: torch's (the machine's cores)")
    parser.add_argument("--gpu", action="store_true", help="GPU QLoRA memory check on a random LLaMA-7B-shaped model")
    parser.add_argument("--gpu-model-dir", default=str(Path(tempfile.gettempdir()) / "tallrec-llama7b-random"))
    args = parser.parse_args()
    if args.gpu:
        gpu_benchmark(args)
    else:
        cpu_benchmark(args)


if __name__ == "__main__":
    main()
