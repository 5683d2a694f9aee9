"""Eval throughput: `tallrec eval`'s scoring vs TALLRec's evaluate loop, same model, adapter and records.

Baseline (TALLRec's evaluate.py, batched): batches of 32 in file order, fp32, left padding,
``generate(max_new_tokens=128, greedy, output_scores=True)``, which stops once every row of the batch has
emitted EOS; P(yes) = softmax over the two label probabilities of the first step's vocabulary softmax.
The adapter is trained here first (briefly, on this CPU) to answer "Yes."/"No." + EOS as TALLRec's adapters
do, so generation stops after a few tokens (pass --adapter RUN to reuse one).

Then the work the baseline does is taken away one step at a time, each step measured on the same records
in the same process (ratios only: the machine is shared):
  1. TALLRec loop
  2. one forward pass instead of generate (no decoding steps)
  3. + length-sorted batches, hidden state of the answer position only (tallrec's scorer, fp32, no prefix cache)
  4. + bf16 weights
  5. + the shared-prompt-prefix key/value cache
  6. + the LoRA adapter folded into the weights (= `tallrec eval` defaults)
End to end = rendering + tokenising + scoring; scoring-only = the model's work. FLOP/s count the useful work
(2 x matmul parameters x tokens that must be computed, + attention), and are given as a fraction of the bf16
matmul peak measured in the same run. What else could be skipped (padding, tokens shared beyond the common
prefix, repeated tokenisation) is measured and printed.

    .venv/bin/python -m bench.eval_throughput --limit 128
    .venv/bin/python -m bench.eval_throughput --gpu    # LLaMA-7B-shaped random model on CUDA, bf16
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

from bench.common import build_movie_dataset, train_adapter


def matmul_peak(dtype, size: int = 2048, device: str = "cpu", repeats: int = 3) -> float:
    """FLOP/s of a square matrix multiply: the machine's practical peak for that dtype."""
    import torch

    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return 2 * size ** 3 / best


def matmul_params(model) -> int:
    """Parameters used as matmul weights per token (everything but the input embedding and lm_head)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    skipped = {id(base.get_input_embeddings().weight), id(base.get_output_embeddings().weight)}
    return sum(p.numel() for p in base.parameters() if id(p) not in skipped)


def tallrec_baseline(model, tokenizer, prompts, labels, batch_size: int = 32, max_new_tokens: int = 128):
    """TALLRec's evaluate loop batched: file order, left padding, greedy generate, first-step double softmax.
    Returns (scores, seconds in generate, padded prompt tokens, generated tokens per prompt)."""
    import numpy as np
    import torch
    from transformers import GenerationConfig

    config = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=max_new_tokens,
                              pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                              return_dict_in_generate=True, output_scores=True)
    scores, generated, padded, model_seconds = [], 0, 0, 0.0
    for start in range(0, len(prompts), batch_size):
        inputs = tokenizer(prompts[start:start + batch_size], return_tensors="pt", padding=True)
        started = time.perf_counter()
        with torch.no_grad():
            output = model.generate(**inputs, generation_config=config)
        model_seconds += time.perf_counter() - started
        first = output.scores[0].softmax(dim=-1)
        pair = torch.stack([first[:, labels.positive_id], first[:, labels.negative_id]], dim=-1).softmax(dim=-1)
        scores.extend(pair[:, 0].tolist())
        padded += inputs["input_ids"].numel()
        generated += (output.sequences.shape[1] - inputs["input_ids"].shape[1]) * len(pair)
    return np.array(scores), model_seconds, padded, generated / len(prompts)


@dataclass
class Step:
    name: str
    end_to_end: float  # seconds: render + tokenise + model
    scoring: float  # seconds: model work only
    computed_tokens: int  # tokens run through the model (padding included)
    scores: object
    dtype: str


def render(template, records, tokenizer) -> tuple[list[str], float]:
    started = time.perf_counter()
    prompts = [template.render(record, tokenizer) for record in records]
    return prompts, time.perf_counter() - started


def baseline_step(name, model, tokenizer, template, records, labels, max_new_tokens) -> tuple[Step, float]:
    started = time.perf_counter()
    prompts, _ = render(template, records, tokenizer)
    scores, model_seconds, padded, generated = tallrec_baseline(model, tokenizer, prompts, labels,
                                                                max_new_tokens=max_new_tokens)
    return Step(name, time.perf_counter() - started, model_seconds, padded, scores, "float32"), generated


def ours_step(name, model, tokenizer, template, records, labels, batch_size, prefix_cache, dtype) -> Step:
    from tallrec_cli.model.scoring import score_prompts_detailed

    started = time.perf_counter()
    prompts, _ = render(template, records, tokenizer)
    tokenise_started = time.perf_counter()
    tokenizer(prompts)  # what score_prompts_detailed does first, timed apart so scoring-only excludes it
    tokenise_seconds = time.perf_counter() - tokenise_started
    before_scoring = time.perf_counter() - started
    result = score_prompts_detailed(model, tokenizer, prompts, labels, "tallrec", batch_size,
                                    prefix_cache=prefix_cache)
    computed = result.prompt_tokens - result.prefix_tokens * (len(prompts) - 1)
    return Step(name, before_scoring - tokenise_seconds + result.seconds, result.seconds - tokenise_seconds,
                computed, result.scores, dtype)


def useful_flops(model, tokenizer, prompts: list[str]) -> float:
    """FLOPs that any exact method must spend: every token after the prompts' common prefix through the
    transformer (linear layers + attention over its context), plus the common prefix once."""
    from tallrec_cli.model.scoring import common_prefix_length

    encoded = tokenizer(prompts)["input_ids"]
    shared = common_prefix_length(encoded)
    params = matmul_params(model)
    config = model.config
    attention_per_context = 4 * config.num_hidden_layers * config.hidden_size  # QK^T and AV, multiply-add
    flops = 2 * params * shared + attention_per_context * shared * (shared + 1) / 2
    for ids in encoded:
        suffix = len(ids) - shared
        flops += 2 * params * suffix + attention_per_context * sum(range(shared + 1, len(ids) + 1))
    return flops


def skippable_work(tokenizer, prompts: list[str], batch_size: int) -> dict[str, float]:
    """Tokens beyond what the scorer already skips: padding left in length-sorted batches, and what a full
    prefix tree (sharing every common prefix between records, not just the one all records share) would save."""
    from tallrec_cli.model.scoring import common_prefix_length, length_sorted_batches

    encoded = tokenizer(prompts)["input_ids"]
    shared = common_prefix_length(encoded)
    suffixes = [len(ids) - shared for ids in encoded]
    padded = sum(len(batch) * max(suffixes[i] for i in batch) for batch in length_sorted_batches(suffixes, batch_size))
    tree = {tuple(ids[:end]) for ids in encoded for end in range(shared + 1, len(ids) + 1)}
    computed = sum(suffixes)
    return {"computed": computed, "padding": (padded - computed) / padded, "prefix_tree": 1 - len(tree) / computed}


def cpu_bench(args) -> None:
    import numpy as np
    import torch

    from data_builders import load_split
    from tallrec_cli.core.metrics import safe_auc
    from tallrec_cli.model.loading import load_for_inference
    from tallrec_cli.model.scoring import resolve_scoring

    dataset = build_movie_dataset(args.data)
    trained = time.perf_counter()
    adapter = args.adapter or str(train_adapter(dataset, args.train_steps))
    trained = time.perf_counter() - trained
    records = load_split(dataset, "test")[:args.limit]
    truth = np.array([record["label"] for record in records])
    # TALLRec scores base + adapter unmerged; tallrec eval folds the adapter in (step 6).
    fp32 = load_for_inference(args.model, adapter, dtype="float32", merge_adapter=False)
    fast = load_for_inference(args.model, adapter, dtype=args.dtype, merge_adapter=False)
    merged = load_for_inference(args.model, adapter, dtype=args.dtype)
    spec = resolve_scoring(fast)
    template, labels = spec.template, spec.labels
    tokenizer = fast.tokenizer
    for inference in (fp32, fast, merged):  # warm-up: first calls allocate and pick kernels
        ours_step("warm-up", inference.model, tokenizer, template, records[:8], labels, 8, "auto", "")

    names = ["1. TALLRec loop (fp32, file order, batch 32, generate <= 128)", "2. one forward pass instead of generate",
             "3. + length-sorted batches, answer position only", f"4. + {args.dtype} weights",
             "5. + shared-prefix cache", "6. + adapter folded into the weights (tallrec eval defaults)"]
    # Round-robin over chunks of records: each chunk runs every step back to back (and a fresh matmul peak), so
    # the load other jobs put on this shared machine falls on all steps alike.
    rounds, peaks, generated = [], [], []
    for start in range(0, len(records), args.chunk):
        chunk = records[start:start + args.chunk]
        peaks.append(matmul_peak(torch.bfloat16))
        first, tokens = baseline_step(names[0], fp32.model, tokenizer, template, chunk, labels, args.max_new_tokens)
        generated.append(tokens)
        rounds.append([
            first,
            baseline_step(names[1], fp32.model, tokenizer, template, chunk, labels, 1)[0],
            ours_step(names[2], fp32.model, tokenizer, template, chunk, labels, args.batch_size, "off", "float32"),
            ours_step(names[3], fast.model, tokenizer, template, chunk, labels, args.batch_size, "off", args.dtype),
            ours_step(names[4], fast.model, tokenizer, template, chunk, labels, args.batch_size, "auto", args.dtype),
            ours_step(names[5], merged.model, tokenizer, template, chunk, labels, args.batch_size, "auto", args.dtype),
        ])
    steps = [Step(name, sum(r[i].end_to_end for r in rounds), sum(r[i].scoring for r in rounds),
                  sum(r[i].computed_tokens for r in rounds), np.concatenate([r[i].scores for r in rounds]),
                  rounds[0][i].dtype) for i, name in enumerate(names)]
    base, generated = steps[0], float(np.mean(generated))
    peak = {"bfloat16": float(np.median(peaks)), "float32": matmul_peak(torch.float32)}
    prompts, render_seconds = render(template, records, tokenizer)
    work = sum(useful_flops(fast.model, tokenizer, prompts[start:start + args.chunk])
               for start in range(0, len(prompts), args.chunk))
    tokenise_started = time.perf_counter()
    tokenizer(prompts)
    tokenise_seconds = time.perf_counter() - tokenise_started
    skip = skippable_work(tokenizer, prompts, args.batch_size or 16)

    print(f"\n{args.model} + LoRA adapter trained for {args.train_steps} steps ({trained:.0f} s; "
          f"{'given' if args.adapter else 'trained here'}), {len(records)} MovieLens-100K test records (TALLRec "
          f"preset), {np.mean([len(ids) for ids in tokenizer(prompts)['input_ids']]):.0f} prompt tokens on average; "
          f"baseline generated {generated:.1f} tokens per prompt before every row of its batch hit EOS; "
          f"{torch.get_num_threads()} threads; peak (2048^3 matmul, median of the rounds): bf16 "
          f"{peak['bfloat16'] / 1e9:.0f}, fp32 {peak['float32'] / 1e9:.0f} GFLOP/s\n")
    print("| step | end to end s | speed-up | scoring s | speed-up | tokens computed | useful GFLOP/s | "
          "% of bf16 peak | AUC |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for step in steps:
        rate = work / step.scoring
        print(f"| {step.name} | {step.end_to_end:.1f} | {base.end_to_end / step.end_to_end:.2f}x | "
              f"{step.scoring:.1f} | {base.scoring / step.scoring:.2f}x | {step.computed_tokens} | {rate / 1e9:.0f} | "
              f"{100 * rate / peak['bfloat16']:.0f}% | {safe_auc(truth, step.scores):.4f} |")
    ours = steps[-1]
    print(f"\nmax |P(yes) - baseline|: fp32 scorer {np.abs(steps[2].scores - base.scores).max():.1e}, "
          f"{args.dtype} scorer {np.abs(steps[4].scores - base.scores).max():.1e}, {args.dtype} merged "
          f"{np.abs(ours.scores - base.scores).max():.1e}")
    print(f"left to skip: rendering {render_seconds:.2f} s and tokenising {tokenise_seconds:.2f} s "
          f"({100 * (render_seconds + tokenise_seconds) / ours.end_to_end:.1f}% of our end to end); padding "
          f"{100 * skip['padding']:.1f}% of the tokens in length-sorted batches; a prefix tree over all records "
          f"would skip {100 * skip['prefix_tree']:.1f}% of the tokens computed after the common prefix")


def gpu_bench(args) -> None:
    """Prompts/s of our scoring on a random LLaMA-7B-shaped model vs the compute bound."""
    import torch
    from transformers import LlamaConfig

    from bench.common import random_model
    from data_builders import load_split
    from tallrec_cli.model.loading import load_tokenizer, resolve_model_source
    from tallrec_cli.model.prompts import load_template, resolve_label_tokens
    from tallrec_cli.model.scoring import score_prompts_detailed

    if not torch.cuda.is_available():
        raise SystemExit("--gpu needs a CUDA device")
    tokenizer = load_tokenizer(resolve_model_source(args.model))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096)
    model = random_model(config, "cuda")  # bf16 from the start: 13.5 GB, never a 25.6 GiB fp32 copy
    template = load_template("alpaca")
    labels = resolve_label_tokens(tokenizer, template)
    prompts = [template.render(record) for record in load_split(build_movie_dataset(args.data), "test")[:args.limit]]
    peak = matmul_peak(torch.bfloat16, 8192, "cuda")
    params = matmul_params(model)
    score_prompts_detailed(model, tokenizer, prompts[:32], labels, "pair", args.batch_size)  # warm-up
    for prefix_cache in ("off", "auto"):
        torch.cuda.synchronize()
        result = score_prompts_detailed(model, tokenizer, prompts, labels, "pair", args.batch_size,
                                        prefix_cache=prefix_cache)
        torch.cuda.synchronize()
        computed = result.prompt_tokens - result.prefix_tokens * (len(prompts) - 1)
        bound = peak / (2 * params * computed / len(prompts))
        print(f"| prefix cache {prefix_cache} | {len(prompts)} | batch {result.batch_size} | "
              f"{len(prompts) / result.seconds:.1f} prompts/s | bound {bound:.1f} prompts/s | "
              f"{100 * len(prompts) / result.seconds / bound:.0f}% of bound | oom retries {result.oom_retries} |")
    print(f"peak bf16 matmul (8192^3): {peak / 1e12:.0f} TFLOP/s, {params / 1e9:.2f}B matmul parameters, "
          f"peak allocated {torch.cuda.max_memory_allocated() / 2 ** 30:.1f} GiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--adapter", help="a train run or adapter export folder (default: train one here)")
    parser.add_argument("--train-steps", type=int, default=8, help="steps of 8 records for the adapter trained here")
    parser.add_argument("--data", help="dataset folder (default: build MovieLens-100K from ../shared/data)")
    parser.add_argument("--limit", type=int, default=128, help="test records, scored by every step")
    parser.add_argument("--chunk", type=int, default=32, help="records per round (every step runs on each)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=None, help="ours (default: auto)")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--gpu", action="store_true", help="LLaMA-7B-shaped random model on CUDA")
    args = parser.parse_args()
    from tallrec_cli.model.loading import resolve_dtype

    args.dtype = str(resolve_dtype(args.dtype)).replace("torch.", "")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    (gpu_bench if args.gpu else cpu_bench)(args)


if __name__ == "__main__":
    main()
