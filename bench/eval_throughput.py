"""Eval throughput: our scoring vs TALLRec's evaluate loop, same model + adapter + records.

Baseline (TALLRec's evaluate.py, batched as in the issue): batches of 32 in file order, fp32, left
padding, ``generate(max_new_tokens=128, greedy, output_scores=True)``, P(yes) = softmax over the two
label probabilities of the first step's vocabulary softmax. Ours: ``score_prompts`` in ``tallrec`` mode
(the same number), dtype auto (bf16 here), length-sorted batches, one forward pass, shared-prefix cache.
The baseline is slow, so it runs on the first ``--baseline-limit`` records and its prompts/s is
extrapolated per prompt; AUCs are compared on that shared subset.

    .venv/bin/python bench/eval_throughput.py --limit 400 --baseline-limit 64
    .venv/bin/python bench/eval_throughput.py --gpu    # LLaMA-7B-shaped random model on CUDA
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


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


def load_records(data: str | None, limit: int) -> list[dict]:
    from data_builders import load_split

    if data is None:
        from data_builders.build import build_config, build_dataset

        folder = Path(tempfile.mkdtemp(prefix="ml-100k-")) / "ml-100k"
        build_dataset(build_config("movielens-100k", "tallrec", {"path": str(REPO.parent / "shared/data/ml-100k"),
                                                                 "output": str(folder)}))
        data = str(folder)
    return load_split(data, "test")[:limit]


def random_adapter(model, seed: int = 0):
    """A LoRA adapter (r=8, q/v) with nonzero B, so it changes the outputs like a trained one."""
    import torch
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)
    return peft_model.eval()


def load_pair(args):
    """(fp32 model, fast-dtype model, template, labels) with the same adapter on both."""
    from tallrec_cli.evaluate import scoring_setup
    from tallrec_cli.models import InferenceModel, load_for_inference, load_model, load_tokenizer, resolve_model_source

    if args.adapter:
        fp32 = load_for_inference(args.model, args.adapter, dtype="float32")
        fast = load_for_inference(args.model, args.adapter, dtype=args.dtype)
    else:
        from peft import PeftModel

        source = resolve_model_source(args.model)
        tokenizer = load_tokenizer(source)
        adapted = random_adapter(load_model(source, "float32"))
        folder = tempfile.mkdtemp(prefix="bench-adapter-")
        adapted.save_pretrained(folder)
        fp32 = InferenceModel(adapted, tokenizer, source, folder, None, None)
        fast_model = PeftModel.from_pretrained(load_model(source, args.dtype), folder, is_trainable=False).eval()
        fast = InferenceModel(fast_model, tokenizer, source, folder, None, None)
    template, labels = scoring_setup(fast)
    return fp32, fast, template, labels


def tallrec_baseline(model, tokenizer, prompts, labels, batch_size: int = 32, max_new_tokens: int = 128):
    """TALLRec's evaluate loop batched: file order, left padding, greedy generate, first-step double softmax."""
    import numpy as np
    import torch
    from transformers import GenerationConfig

    config = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=max_new_tokens,
                              pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                              return_dict_in_generate=True, output_scores=True)
    scores, generated_tokens, prompt_tokens = [], 0, 0
    started = time.perf_counter()
    for start in range(0, len(prompts), batch_size):
        inputs = tokenizer(prompts[start:start + batch_size], return_tensors="pt", padding=True)
        with torch.no_grad():
            output = model.generate(**inputs, generation_config=config)
        first = output.scores[0].softmax(dim=-1)
        pair = torch.stack([first[:, labels.positive_id], first[:, labels.negative_id]], dim=-1).softmax(dim=-1)
        scores.extend(pair[:, 0].tolist())
        prompt_tokens += int(inputs["attention_mask"].sum())
        generated_tokens += (output.sequences.shape[1] - inputs["input_ids"].shape[1]) * len(pair)
    return np.array(scores), time.perf_counter() - started, prompt_tokens, generated_tokens


def cpu_bench(args) -> None:
    import numpy as np
    import torch

    from tallrec_cli.metrics import safe_auc
    from tallrec_cli.scoring import score_prompts_detailed

    records = load_records(args.data, args.limit)
    fp32, fast, template, labels = load_pair(args)
    tokenizer = fast.tokenizer
    prompts = [template.render(record, tokenizer) for record in records]
    truth = np.array([record["label"] for record in records])
    shared = min(args.baseline_limit, len(prompts))
    peak = {"bf16": matmul_peak(torch.bfloat16), "fp32": matmul_peak(torch.float32)}
    params = matmul_params(fast.model)

    ours = score_prompts_detailed(fast.model, tokenizer, prompts, labels, "tallrec", args.batch_size)
    plain = score_prompts_detailed(fast.model, tokenizer, prompts[:args.plain_limit], labels, "tallrec",
                                   args.batch_size, prefix_cache="off")
    ours_fp32 = score_prompts_detailed(fp32.model, tokenizer, prompts[:shared], labels, "tallrec", args.batch_size)
    base_scores, base_seconds, base_prompt_tokens, base_generated = tallrec_baseline(
        fp32.model, tokenizer, prompts[:shared], labels, args.baseline_batch, args.max_new_tokens)

    ours_computed = ours.prompt_tokens - ours.prefix_tokens * (len(prompts) - 1)
    rows = [
        ("TALLRec loop (fp32, batch 32, generate 128)", shared, shared / base_seconds,
         2 * params * (base_prompt_tokens + base_generated) / base_seconds, peak["fp32"],
         safe_auc(truth[:shared], base_scores)),
        ("ours fp32 (sorted, prefix cache)", shared, shared / ours_fp32.seconds,
         2 * params * (ours_fp32.prompt_tokens - ours_fp32.prefix_tokens * (shared - 1)) / ours_fp32.seconds,
         peak["fp32"], safe_auc(truth[:shared], ours_fp32.scores)),
        (f"ours {args.dtype} (sorted, no prefix cache)", len(plain.scores), len(plain.scores) / plain.seconds,
         2 * params * plain.prompt_tokens / plain.seconds, peak["bf16"], safe_auc(truth[:len(plain.scores)], plain.scores)),
        (f"ours {args.dtype} (sorted, prefix cache {ours.prefix_tokens} tok)", len(prompts), len(prompts) / ours.seconds,
         2 * params * ours_computed / ours.seconds, peak["bf16"], safe_auc(truth, ours.scores)),
    ]
    print(f"\nmodel {args.model}{' + ' + args.adapter if args.adapter else ' + random LoRA r=8 q/v'}, "
          f"{len(prompts)} MovieLens-100K test records, {ours.prompt_tokens / len(prompts):.0f} prompt tokens on "
          f"average, {params / 1e6:.1f}M matmul parameters; peak (2048^3 matmul): bf16 {peak['bf16'] / 1e9:.0f}, "
          f"fp32 {peak['fp32'] / 1e9:.0f} GFLOP/s; baseline generated {base_generated / shared:.0f} tokens per prompt\n")
    print("| method | records | prompts/s | speed-up | GFLOP/s | % of peak | AUC (own records) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    baseline_rate = rows[0][2]
    for name, count, rate, flops, peak_flops, auc in rows:
        print(f"| {name} | {count} | {rate:.2f} | {rate / baseline_rate:.1f}x | {flops / 1e9:.1f} | "
              f"{100 * flops / peak_flops:.0f}% | {auc:.4f} |")
    ours_shared = ours.scores[:shared]
    print(f"\nshared first {shared} records, AUC: baseline {safe_auc(truth[:shared], base_scores):.4f}, "
          f"ours fp32 {safe_auc(truth[:shared], ours_fp32.scores):.4f}, ours {args.dtype} "
          f"{safe_auc(truth[:shared], ours_shared):.4f}; max |P(yes)| difference vs baseline: fp32 "
          f"{np.abs(ours_fp32.scores - base_scores).max():.2e}, {args.dtype} {np.abs(ours_shared - base_scores).max():.2e}")
    plain_rate = len(plain.scores) / plain.seconds
    print(f"prefix cache speed-up ({args.dtype}): {(len(prompts) / ours.seconds) / plain_rate:.2f}x "
          f"({ours.prefix_tokens} of {ours.prompt_tokens / len(prompts):.0f} tokens per prompt shared)")


def gpu_bench(args) -> None:
    """Prompts/s of our scoring on a random LLaMA-7B-shaped model vs the compute bound."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tallrec_cli.models import load_tokenizer, resolve_model_source
    from tallrec_cli.prompts import load_template, resolve_label_tokens
    from tallrec_cli.scoring import score_prompts_detailed

    if not torch.cuda.is_available():
        raise SystemExit("--gpu needs a CUDA device")
    tokenizer = load_tokenizer(resolve_model_source(args.model))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    template = load_template("alpaca")
    labels = resolve_label_tokens(tokenizer, template)
    prompts = [template.render(record) for record in load_records(args.data, args.limit)]
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
              f"{100 * len(prompts) / result.seconds / bound:.0f}% of bound |")
    print(f"peak bf16 matmul (8192^3): {peak / 1e12:.0f} TFLOP/s, {params / 1e9:.2f}B matmul parameters")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--adapter", help="a train run or adapter export folder (default: a random LoRA adapter)")
    parser.add_argument("--data", help="dataset folder or test file (default: build MovieLens-100K from ../shared/data)")
    parser.add_argument("--limit", type=int, default=1000, help="records scored by our method")
    parser.add_argument("--plain-limit", type=int, default=None, help="records scored without the prefix cache")
    parser.add_argument("--baseline-limit", type=int, default=64, help="records run through TALLRec's loop")
    parser.add_argument("--baseline-batch", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=None, help="ours (default: auto)")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--gpu", action="store_true", help="LLaMA-7B-shaped random model on CUDA")
    args = parser.parse_args()
    args.plain_limit = args.plain_limit or args.limit
    from tallrec_cli.models import resolve_dtype

    args.dtype = str(resolve_dtype(args.dtype)).replace("torch.", "")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    (gpu_bench if args.gpu else cpu_bench)(args)


if __name__ == "__main__":
    main()
