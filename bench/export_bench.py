"""Export benchmark: wall time and peak memory of `tallrec export` (adapter and merged).

Each measured step runs in its own child process, so its peak resident memory is the child's
``ru_maxrss`` (from ``os.wait4``) and is not inflated by the parent or by earlier steps; no tracemalloc
(it misses torch's native allocations and slows the run down).

    python -m bench.export_bench                     # embedded SmolLM2-135M on CPU
    python -m bench.export_bench --gpu --workdir /big/disk   # LLaMA-7B-shaped random model on CUDA (~30 GB disk)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Prompts for the merge's AUC check: 32 positives x 32 negatives, so one reordered pair moves AUC by 0.001,
# well inside the 16-bit tolerance (with 8 prompts one pair moved it by 0.0625 and failed spuriously).
VERIFY_SAMPLES = 64
LLAMA_7B = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
            "num_key_value_heads": 32, "vocab_size": 32000, "max_position_embeddings": 4096}


def run_child(step: str, *args: str) -> dict:
    """Run ``step`` in a fresh interpreter; its JSON result plus wall seconds and peak RSS (MiB)."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, __file__, "--child", step, *args], stdout=subprocess.PIPE,
                               cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"step {step} failed")
    result = json.loads(output.decode().strip().splitlines()[-1])
    return {"step": step, "process_seconds": round(time.perf_counter() - started, 2),
            "peak_rss_mib": round(usage.ru_maxrss / 1024, 1), **result}  # ru_maxrss is KiB on Linux


def child(step: str, args: list[str]) -> None:
    """One measured step; prints a JSON line (the in-process time excludes interpreter start-up)."""
    import torch

    started = time.perf_counter()
    result: dict = {}
    if step == "make-run":  # args: base run_dir dtype device
        from data_builders.build import build_config, build_dataset
        from tests.export_helpers import make_train_run

        # Distinct labelled validation records (the bundled MovieLens sample) for the merge's AUC check.
        dataset = Path(args[1]).parent / "movielens"
        build_dataset(build_config("movielens-latest", None, {"output": str(dataset)}))
        make_train_run(Path(args[1]), args[0], r=16, dtype=args[2], device=args[3], valid=dataset / "valid.jsonl")
    elif step == "make-7b":  # args: folder; random weights, real shapes: what a merge costs does not depend on values
        from transformers import LlamaConfig

        from bench.common import random_model
        from tests.conftest import build_tiny_llama

        build_tiny_llama(Path(args[0]))  # tokenizer (ids < 600 fit any vocabulary); its tiny weights are replaced
        config = LlamaConfig(**LLAMA_7B, bos_token_id=1, eos_token_id=2, pad_token_id=3, tie_word_embeddings=False)
        model = random_model(config, "cuda")
        for stale in Path(args[0]).glob("model*.safetensors*"):
            stale.unlink()
        model.save_pretrained(args[0], safe_serialization=True, max_shard_size="5GB")
    elif step == "adapter":  # args: run output
        from tallrec_cli.export.adapter import export_adapter

        export_adapter(args[0], args[1])
    elif step == "merged":  # args: run output dtype device
        from tallrec_cli.export.merged import export_merged

        if args[3] == "cuda":
            torch.cuda.reset_peak_memory_stats()
        exported = export_merged(args[0], args[1], dtype=args[2], device=args[3], verify_samples=VERIFY_SAMPLES)
        result = {"merged_gb": round(exported.size_bytes / 1e9, 3), "shards": exported.shards,
                  "max_abs_logit_diff": exported.verification.max_abs_logit_diff,
                  "auc_samples": exported.verification.auc_samples}
        if args[3] == "cuda":
            result["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    result["seconds"] = round(time.perf_counter() - started, 2)
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="LLaMA-7B-shaped merge on CUDA instead of SmolLM2 on CPU")
    parser.add_argument("--workdir", type=Path, help="Where runs and exports go (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="Also write the results here")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        child(options.child[0], options.child[1:])
        return
    with tempfile.TemporaryDirectory(dir=options.workdir) as work:
        work = Path(work)
        if options.gpu:
            base, dtype, device = str(work / "llama-7b-shaped"), "bfloat16", "cuda"
            setup = [run_child("make-7b", base)]
        else:
            base, dtype, device, setup = "smollm2-135m", "float32", "cpu", []
        setup.append(run_child("make-run", base, str(work / "run"), dtype, device))
        results = [run_child("adapter", str(work / "run"), str(work / "adapter")),
                   run_child("merged", str(work / "run"), str(work / "merged"), dtype, device)]
    report = {"model": "llama-7b-shaped (random)" if options.gpu else base, "merge_dtype": dtype, "device": device,
              "setup": setup, "results": results}
    text = json.dumps(report, indent=2)
    print(text)
    if options.json:
        options.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
