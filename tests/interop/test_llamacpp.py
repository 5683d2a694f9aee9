"""llama.cpp (through xllamacpp) loads tallrec's GGUF exports and scores TALLRec prompts as `tallrec eval` does.

On 256 records of TALLRec's movie test: P(yes) = softmax over the first token's log-probabilities of the two
label tokens, against tallrec's fp32 scores of the same prompts. The base GGUF is the embedded model's own
Q4_1 file; llama.cpp runs Q4_1 matmuls with 8-bit activations, so the base alone already differs from tallrec:
that floor is measured here too. The export itself is checked where no Q4_1 step blurs it: the same GGUF LoRA
on an f16 copy of the base (dequantized Q4_1, so the weights tallrec scores with), and merged f16 / bf16
models, each held to AUC within 0.005. On the Q4_1 base the adapter may add no P(yes) gap beyond the base's
own (max |dP| within 0.01 of the floor's, Spearman at least the floor's); its AUC gap is printed, not bounded:
noise that leaves a chance-level base at chance costs a model that ranks well AUC (0.037 on the demo's run,
2026-12-07, where the f16 base gives 0.0004: docs/results.md).

The run is tests/interop/conftest.py's `interop_run`. Numbers are printed (`pytest -s`)."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import require_module

RECORDS = 256
LORA_SPEARMAN, Q4_1_EXTRA_DP = 0.97, 0.01  # the adapter on the Q4_1 base, beside the base alone there
UNQUANTIZED_AUC, F16_SPEARMAN = 0.005, 0.99  # the adapter on the f16 base, merged f16 / bf16 models
TOP_LOGPROBS = 20

pytestmark = [pytest.mark.slow, pytest.mark.interop]


@pytest.fixture(scope="module")
def xlc():
    return require_module("xllamacpp", "llama.cpp's bindings: pip install -e '.[test]'")


@pytest.fixture(scope="module")
def movie_test(real_data, tmp_path_factory) -> list[dict]:
    from data_builders import load_split, sample_records
    from data_builders.build import build_config, build_dataset

    folder = tmp_path_factory.mktemp("ml-100k") / "movie"
    build_dataset(build_config("movielens-100k", "tallrec", {"path": str(real_data / "ml-100k"),
                                                             "output": str(folder)}))
    return sample_records(load_split(folder, "test"), RECORDS, seed=0)


def llama_cpp_p_yes(xlc, model: Path, prompts: list[str], labels, lora: Path | None = None) -> np.ndarray:
    """P(yes) from llama.cpp: the first token's top log-probabilities, softmax over the two label tokens."""
    params = xlc.CommonParams()
    params.model.path = str(model)
    params.n_ctx = 1024
    params.n_parallel = 1
    params.cpuparams.n_threads = min(2, os.cpu_count() or 1)
    params.warmup = False
    if lora is not None:
        params.lora_adapters = [xlc.CommonAdapterLoraInfo(str(lora), 1.0)]
    server = xlc.Server(params)
    scores = []
    for prompt in prompts:
        answer = server.handle_completions({"prompt": prompt, "max_tokens": 1, "temperature": 0,
                                            "n_probs": TOP_LOGPROBS, "cache_prompt": False})
        top = {each["id"]: each["logprob"] for each in answer["choices"][0]["logprobs"]["content"][0]["top_logprobs"]}
        assert labels.positive_id in top and labels.negative_id in top, f"label tokens outside the top {TOP_LOGPROBS}"
        scores.append(1.0 / (1.0 + math.exp(top[labels.negative_id] - top[labels.positive_id])))
    del server
    return np.array(scores)


def card_python(folder: Path) -> str:
    """The llama.cpp program of the export's card."""
    card = (folder / "README.md").read_text()
    section = card[card.index("## Use with llama.cpp / Ollama"):]
    return section[section.index("```python\n") + len("```python\n"):section.index("\n```\n")]


def card_prompt(folder: Path) -> str:
    import ast

    program = card_python(folder)
    return ast.literal_eval(program[program.index("prompt = ") + len("prompt = "):program.index("\nYES, NO")])


def card_program_p_yes(folder: Path, base_gguf: Path) -> float:
    """Run the card's program as its reader would: beside the export folder, the base GGUF put in it."""
    import subprocess
    import sys

    (folder / base_gguf.name).symlink_to(base_gguf)
    done = subprocess.run([sys.executable, "-c", card_python(folder)], cwd=folder.parent, capture_output=True,
                          text=True, timeout=300, check=True)
    return float(done.stdout.strip().rsplit("P(yes) = ", 1)[1])


def agreement(truth: list[int], reference: np.ndarray, scores: np.ndarray) -> dict:
    from scipy.stats import spearmanr

    from tallrec_cli.core.metrics import safe_auc

    return {"auc": safe_auc(truth, scores), "auc_tallrec": safe_auc(truth, reference),
            "auc_gap": abs(safe_auc(truth, scores) - safe_auc(truth, reference)),
            "spearman": float(spearmanr(reference, scores).statistic),
            "max_abs_dp": float(np.abs(scores - reference).max())}


def test_llama_cpp_scores_gguf_exports_like_tallrec_eval(xlc, interop_run, movie_test, tmp_path):
    from tallrec_cli.eval.score import evaluate_records
    from tallrec_cli.export.gguf import export_gguf, write_merged_gguf
    from tallrec_cli.model.loading import load_for_inference
    from tallrec_cli.model.scoring import resolve_scoring

    walls = {}
    started = time.perf_counter()
    tuned = load_for_inference(adapter=str(interop_run), dtype="float32", device="cpu")
    spec = resolve_scoring(tuned)
    reference, _ = evaluate_records(tuned, movie_test, spec, resamples=0)
    base = load_for_inference("smollm2-135m", dtype="float32", device="cpu")
    base_reference = spec.score(base.model, base.tokenizer, spec.render(movie_test, base.tokenizer)).scores
    prompts = spec.render(movie_test, tuned.tokenizer)
    del tuned, base
    walls["tallrec eval x2"] = time.perf_counter() - started
    truth = [int(record["label"]) for record in movie_test]

    lora = export_gguf(interop_run, tmp_path / "lora", "gguf-lora")
    assert card_program_p_yes(lora.path, lora.base_gguf) == pytest.approx(llama_cpp_p_yes(
        xlc, lora.base_gguf, [card_prompt(lora.path)], spec.labels, lora.path / lora.files["adapter"])[0], abs=1e-6)
    results = {}
    started = time.perf_counter()
    results["floor: base Q4_1 alone"] = agreement(truth, base_reference,
                                                  llama_cpp_p_yes(xlc, lora.base_gguf, prompts, spec.labels))
    results["LoRA f16 on base Q4_1"] = agreement(truth, reference, llama_cpp_p_yes(
        xlc, lora.base_gguf, prompts, spec.labels, lora.path / lora.files["adapter"]))
    walls["llama.cpp base + LoRA"] = time.perf_counter() - started
    started = time.perf_counter()
    base_f16 = tmp_path / "base-f16.gguf"
    write_merged_gguf(base_f16, lora.base_gguf, [], 1.0, "float16")  # no modules: the base, dequantized
    results["LoRA f16 on base f16"] = agreement(truth, reference, llama_cpp_p_yes(
        xlc, base_f16, prompts, spec.labels, lora.path / lora.files["adapter"]))
    walls["llama.cpp f16 base + LoRA"] = time.perf_counter() - started
    for dtype in ("float16", "bfloat16"):
        merged = export_gguf(interop_run, tmp_path / dtype, "gguf", dtype=dtype)
        started = time.perf_counter()
        results[f"merged {dtype}"] = agreement(truth, reference, llama_cpp_p_yes(
            xlc, merged.path / merged.files["model"], prompts, spec.labels))
        walls[f"llama.cpp merged {dtype}"] = time.perf_counter() - started
    print(f"\nllama.cpp vs tallrec eval (fp32) on {len(prompts)} TALLRec movie test records, run {interop_run}:\n"
          + json.dumps({"results": results, "wall_s": walls}, indent=2))

    floor, tuned_gap = results["floor: base Q4_1 alone"], results["LoRA f16 on base Q4_1"]
    assert np.abs(reference - base_reference).max() > 1e-3  # a trained adapter: there is something to check
    assert tuned_gap["max_abs_dp"] <= floor["max_abs_dp"] + Q4_1_EXTRA_DP, results
    assert tuned_gap["spearman"] >= min(LORA_SPEARMAN, floor["spearman"]), results
    assert results["LoRA f16 on base f16"]["spearman"] >= F16_SPEARMAN, results
    for name in ("LoRA f16 on base f16", "merged float16", "merged bfloat16"):
        assert results[name]["auc_gap"] <= UNQUANTIZED_AUC, results
