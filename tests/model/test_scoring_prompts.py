"""Scoring on the tiny offline model: prefix cache = plain path, input order, OOM back-off, and
`--score tallrec` = TALLRec's generate-and-double-softmax procedure."""

from __future__ import annotations

import numpy as np
import pytest

from tallrec_cli.core.errors import ConfigError, ResourceError
from tallrec_cli.model.prompts import LabelTokens, load_template, resolve_label_tokens
from tallrec_cli.model.scoring import ScoringSpec, score_prompts, score_prompts_detailed, split_lm_head

INSTRUCTION = ("Given the user's preference and unpreference, identify whether the user will like the target movie "
               'by answering "Yes." or "No.".')
TITLES = ["Toy Story (1995)", "Star Wars (1977)", "Fargo (1996)", "Heat (1995)"]


def movie_records(count: int = 11) -> list[dict]:
    """Records of clearly different lengths (1..count history items) sharing the instruction."""
    return [{"instruction": INSTRUCTION, "id": f"r{i}", "user_id": f"u{i % 4}", "label": int(i % 3 == 0),
              "output": "Yes." if i % 3 == 0 else "No.",
             "input": "User Preference: " + ", ".join(f'"{TITLES[(i + k) % 4]}"' for k in range(1 + i % 6))
                      + f'\nUser Unpreference: "Heat (1995)"\nWhether the user will like the target movie "{TITLES[i % 4]}"?'}
            for i in range(count)]


def sharpen(model, label_ids) -> None:
    """Random weights large enough to give spread-out P(yes), with the label rows boosted so the
    full-vocabulary softmax of `tallrec` mode puts real mass on them."""
    import torch

    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim == 2:  # matrices only: norms keep their unit scale
                parameter.normal_(0, 0.2)
        model.get_output_embeddings().weight[list(label_ids)] *= 5


@pytest.fixture(scope="module")
def scorer(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    template = load_template("alpaca")
    labels = resolve_label_tokens(tokenizer, template)
    sharpen(model, (labels.positive_id, labels.negative_id))
    model.eval()
    prompts = [template.render(record) for record in movie_records()]
    return model, tokenizer, labels, prompts


@pytest.mark.parametrize("mode", ["pair", "tallrec"])
def test_prefix_cache_gives_the_plain_path_scores(scorer, mode):
    model, tokenizer, labels, prompts = scorer
    plain = score_prompts_detailed(model, tokenizer, prompts, labels, mode, batch_size=4, prefix_cache="off")
    for batch_size in (1, 3, 16):
        cached = score_prompts_detailed(model, tokenizer, prompts, labels, mode, batch_size, prefix_cache="on")
        assert cached.prefix_tokens > 50 and plain.prefix_tokens == 0
        np.testing.assert_allclose(cached.scores, plain.scores, atol=1e-5)
    assert plain.scores.std() > 0.01  # the comparison is not between constants


def test_auto_prefix_cache_only_when_the_shared_prefix_is_long(scorer):
    model, tokenizer, labels, prompts = scorer
    assert score_prompts_detailed(model, tokenizer, prompts, labels, prefix_cache="auto").prefix_tokens > 50
    unrelated = ["Yes or no?", "### Input:\nFargo", "Toy Story"]
    assert score_prompts_detailed(model, tokenizer, unrelated, labels, prefix_cache="auto").prefix_tokens == 0


def test_length_sorted_batches_return_scores_in_input_order(scorer):
    model, tokenizer, labels, prompts = scorer
    one_by_one = np.array([score_prompts(model, tokenizer, [prompt], labels, batch_size=1, prefix_cache="off")[0]
                           for prompt in prompts])
    batched = score_prompts(model, tokenizer, prompts, labels, batch_size=4, prefix_cache="off")
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
    permutation = np.random.default_rng(0).permutation(len(prompts))
    shuffled = score_prompts(model, tokenizer, [prompts[i] for i in permutation], labels, batch_size=4)
    np.testing.assert_allclose(shuffled, one_by_one[permutation], atol=1e-5)


def test_tallrec_mode_reproduces_tallrecs_generate_procedure(scorer):
    """TALLRec's evaluate.py: greedy generate one record at a time with output_scores, softmax of the
    first step's scores over the vocabulary, then softmax over the two label probabilities."""
    import torch
    from transformers import GenerationConfig

    model, tokenizer, labels, prompts = scorer
    config = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=4, pad_token_id=tokenizer.pad_token_id,
                              return_dict_in_generate=True, output_scores=True)
    reference = []
    for prompt in prompts:
        inputs = tokenizer(prompt, return_tensors="pt")
        with torch.no_grad():
            generated = model.generate(**inputs, generation_config=config)
        first = generated.scores[0].softmax(dim=-1)
        reference.append(torch.tensor([first[0][labels.positive_id], first[0][labels.negative_id]]).softmax(dim=-1)[0])
    ours = score_prompts(model, tokenizer, prompts, labels, mode="tallrec", batch_size=4)
    np.testing.assert_allclose(ours, np.array(reference), atol=1e-5)


def _failing_forward(monkeypatch, model, max_rows: int, error):
    """Make the model body fail like an allocator would for batches above ``max_rows``."""
    body, _ = split_lm_head(model)
    original = body.forward
    seen = []

    def forward(*args, **kwargs):
        rows = kwargs["input_ids"].shape[0]
        seen.append(rows)
        if rows > max_rows:
            raise error
        return original(*args, **kwargs)

    monkeypatch.setattr(body, "forward", forward)
    return seen


@pytest.mark.parametrize("error", [
    "torch.OutOfMemoryError", RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"),
])
def test_out_of_memory_halves_the_batch_and_retries(scorer, monkeypatch, error):
    import torch

    model, tokenizer, labels, prompts = scorer
    expected = score_prompts(model, tokenizer, prompts, labels, batch_size=16, prefix_cache="off")
    error = torch.OutOfMemoryError("out of memory") if error == "torch.OutOfMemoryError" else error
    seen = _failing_forward(monkeypatch, model, 3, error)
    result = score_prompts_detailed(model, tokenizer, prompts, labels, batch_size=16, prefix_cache="off")
    np.testing.assert_allclose(result.scores, expected, atol=1e-6)
    assert result.batch_size == 2 and result.oom_retries == 2
    assert seen[:3] == [11, 5, 2] and max(seen[3:]) == 2


def test_out_of_memory_at_batch_one_is_a_resource_error(scorer, monkeypatch):
    import torch

    model, tokenizer, labels, prompts = scorer
    _failing_forward(monkeypatch, model, 0, torch.OutOfMemoryError("out of memory"))
    with pytest.raises(ResourceError, match="single prompt"):
        score_prompts(model, tokenizer, prompts, labels, batch_size=4, prefix_cache="off")


def test_other_runtime_errors_are_not_retried(scorer, monkeypatch):
    model, tokenizer, labels, prompts = scorer
    seen = _failing_forward(monkeypatch, model, 0, RuntimeError("shape mismatch"))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        score_prompts(model, tokenizer, prompts, labels, batch_size=4, prefix_cache="off")
    assert seen == [4]


def test_a_scoring_spec_refuses_unknown_modes_when_built_not_when_scoring():
    labels = LabelTokens(positive_word="Yes", negative_word="No", positive_id=5, negative_id=6)
    with pytest.raises(ConfigError, match="score mode 'sharp' is not one of pair, tallrec"):
        ScoringSpec(load_template("alpaca"), labels, mode="sharp")
    with pytest.raises(ConfigError, match="prefix cache 'always'"):
        ScoringSpec(load_template("alpaca"), labels, prefix_cache="always")
    spec = ScoringSpec(load_template("alpaca"), labels, "tallrec")
    assert spec.describe() == {"score_mode": "tallrec", "template": "alpaca", "labels": labels.as_dict()}
