"""Scoring, training and the memory model on four families at test size (random weights, offline): LLaMA, Gemma 3
(hybrid sliding-window cache, heads x head_dim != hidden, tied head, per-head q/k norms), Qwen2 (q/k/v biases,
tied head) and Mistral (a sliding window on every layer). The windows are shorter than the prompts, so a
LLaMA-only assumption fails here."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM
from trl.trainer.utils import add_fused_lm_head

from tallrec_cli.core.errors import ConfigError
from tallrec_cli.model import scoring
from tallrec_cli.model.loading import load_model, load_tokenizer, resolve_model_source
from tallrec_cli.model.prompts import load_template, resolve_label_tokens
from tallrec_cli.model.random_models import TINY_WINDOW
from tallrec_cli.model.scoring import score_prompts_detailed
from tallrec_cli.train import capacity, lm_head
from tallrec_cli.train.config import load_train_config
from tallrec_cli.train.lm_head import install_compact_lm_head
from tallrec_cli.train.run import run_training
from tests.model.test_scoring_prompts import movie_records, sharpen
from tests.train.test_capacity import BATCH, SEQUENCE, _saved_bytes
from tests.train.test_lm_head import _batch, _run
from tests.train_helpers import tiny_config, write_dataset

# shape -> (model class, model type, tokens its cache shares: the alpaca header + instruction, or what a window allows)
SHAPES = {"random:tiny-llama": ("LlamaForCausalLM", "llama", 69),
          "random:tiny-gemma3": ("Gemma3ForCausalLM", "gemma3_text", TINY_WINDOW - 1),
          "random:tiny-qwen2": ("Qwen2ForCausalLM", "qwen2", 69),
          "random:tiny-mistral": ("MistralForCausalLM", "mistral", TINY_WINDOW - 1)}
ALL_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(params=list(SHAPES))
def scorer(request):
    source = resolve_model_source(request.param)
    model, tokenizer = load_model(source, "float32"), load_tokenizer(source)
    template = load_template("alpaca")
    labels = resolve_label_tokens(tokenizer, template)
    sharpen(model, (labels.positive_id, labels.negative_id))
    model.eval()
    return request.param, model, tokenizer, labels, [template.render(record) for record in movie_records()]


def test_the_shared_prefix_cache_gives_the_plain_scores_on_every_family(scorer):
    """Both score modes read the same hidden state, so pair mode proves the cache for both."""
    name, model, tokenizer, labels, prompts = scorer
    assert type(model).__name__ == SHAPES[name][0]
    assert min(len(ids) for ids in tokenizer(prompts)["input_ids"]) > 3 * TINY_WINDOW  # the windows cut in
    plain = score_prompts_detailed(model, tokenizer, prompts, labels, batch_size=4, prefix_cache="off")
    for batch_size in (1, 3, 16):
        for setting in ("on", "auto"):
            cached = score_prompts_detailed(model, tokenizer, prompts, labels, batch_size=batch_size,
                                            prefix_cache=setting)
            assert cached.prefix_tokens == SHAPES[name][2] and plain.prefix_tokens == 0
            np.testing.assert_allclose(cached.scores, plain.scores, atol=1e-5)
    assert plain.scores.std() > 0.01  # the comparison is not between constants


def test_a_cache_that_cannot_be_shared_is_scored_without_one_under_auto(scorer, monkeypatch):
    _, model, tokenizer, labels, prompts = scorer
    plain = score_prompts_detailed(model, tokenizer, prompts, labels, prefix_cache="off").scores
    monkeypatch.setattr(scoring, "shareable_prefix_tokens", lambda config: None)
    auto = score_prompts_detailed(model, tokenizer, prompts, labels, prefix_cache="auto")
    assert auto.prefix_tokens == 0 and np.array_equal(auto.scores, plain)
    with pytest.raises(ConfigError, match="cannot be shared across a batch"):
        score_prompts_detailed(model, tokenizer, prompts, labels, prefix_cache="on")


@pytest.mark.parametrize("name", list(SHAPES))
def test_one_training_step_adapts_every_projection_of_every_family(tmp_path, name, monkeypatch):
    heads = []

    def spy(model, device):
        heads.append(install_compact_lm_head(model, device))
        return heads[-1]

    monkeypatch.setattr(lm_head, "install_compact_lm_head", spy)
    run = tmp_path / "run"
    summary = run_training(tiny_config(name, write_dataset(tmp_path / "data", train=8, valid=4), run,
                                       lora__target_modules=ALL_PROJECTIONS, training__max_steps=1,
                                       training__eval_every=1, training__eval_at_start=False))
    from safetensors.torch import load_file

    manifest = json.loads((run / "manifest.json").read_text())
    layers = manifest["base_model_config"]["num_hidden_layers"]
    lora_b = {key: value for key, value in load_file(run / "adapter" / "adapter_model.safetensors").items()
              if "lora_B" in key}
    assert summary["steps"] == 1 and heads == [True]  # the compact head, not trl's every-position fallback
    assert manifest["base_model_config"]["model_type"] == SHAPES[name][1]
    assert len(lora_b) == len(ALL_PROJECTIONS) * layers and all(value.abs().sum() > 0 for value in lora_b.values())


def _fused_peft(base):
    add_fused_lm_head(base, outputs=("log_probs", "entropy", "is_top1"))  # what SFTTrainer does
    return get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=ALL_PROJECTIONS,
                                           init_lora_weights=False))


def _gemma3_262k():
    """Gemma 3 270M's vocabulary and tied head on a two-layer body."""
    config = AutoConfig.for_model("gemma3_text", vocab_size=262144, hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1, head_dim=32,
                                  layer_types=["sliding_attention", "full_attention"], sliding_window=8)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config)


@pytest.mark.parametrize("name", [*SHAPES, "gemma3 262K vocabulary"])
@pytest.mark.parametrize("rows_per_chunk", [None, 16])  # one chunk / several, recomputed in backward
def test_the_compact_head_gives_trls_loss_and_gradients_on_every_family(name, rows_per_chunk, monkeypatch):
    torch.manual_seed(0)
    base = (_gemma3_262k() if name.startswith("gemma3")
            else AutoModelForCausalLM.from_pretrained(resolve_model_source(name).path, dtype=torch.float32))
    if rows_per_chunk:
        monkeypatch.setattr(lm_head, "CHUNK_LOGITS", rows_per_chunk * base.config.vocab_size)
    model = _fused_peft(base)
    ids, mask, labels = _batch(model.config.vocab_size, answer_only=False)
    expected, expected_grads = _run(model, ids, mask, labels, num_items=torch.tensor(55))
    assert install_compact_lm_head(model.get_base_model(), torch.device("cpu"))
    actual, actual_grads = _run(model, ids, mask, labels, num_items=torch.tensor(55))
    torch.testing.assert_close(actual.loss, expected.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(actual.log_probs, expected.log_probs, rtol=1e-5, atol=1e-5)
    assert expected_grads.keys() == actual_grads.keys()
    for key in expected_grads:
        torch.testing.assert_close(actual_grads[key], expected_grads[key], rtol=1e-4, atol=1e-6)


def _family(model_type: str, layers: int, head_dim: int):
    """A family's layer at hidden 256 (4 heads of ``head_dim``: heads x head_dim is the hidden size at 64)."""
    windows = {"layer_types": ["sliding_attention", "full_attention"] * (layers // 2), "sliding_window": 4096}
    return AutoConfig.for_model(model_type, vocab_size=512, hidden_size=256, intermediate_size=688,
                                num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                                head_dim=head_dim, **(windows if model_type == "gemma3_text" else {}))


@pytest.mark.parametrize("model_type", ["llama", "gemma3_text", "qwen2", "mistral"])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_activation_estimate_matches_the_saved_tensors_of_every_family(model_type, head_dim):
    config = load_train_config(None, {"model": {"dtype": "bfloat16"},
                                      "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": ALL_PROJECTIONS},
                                      "training": {"micro_batch_size": BATCH, "batch_size": BATCH}})
    measured = (_saved_bytes(_family(model_type, 4, head_dim), config.lora)
                - _saved_bytes(_family(model_type, 2, head_dim), config.lora)) / 2
    model_config = _family(model_type, 4, head_dim)
    counts = capacity.count_parameters(model_config, config.lora)
    estimate = capacity.estimate_memory(model_config, counts, config, SEQUENCE)["activations"] / 4
    assert estimate == pytest.approx(measured, rel=0.03)


@pytest.mark.parametrize("name", list(SHAPES))
def test_parameter_counts_are_the_loaded_models(name):
    """A tied head (Gemma 3, Qwen2) is one parameter with the embedding, as in the model that loads."""
    source = resolve_model_source(name)
    config = load_train_config(None, {"model": {"name": name}})
    loaded = load_model(source, "float32")
    counts = capacity.count_parameters(capacity.model_config_for(config), config.lora)
    assert counts["total"] == sum(parameter.numel() for parameter in loaded.parameters())


def test_a_target_name_the_model_lacks_is_refused_with_the_names_it_has():
    config = load_train_config(None, {"model": {"name": "random:tiny-gemma3"},
                                      "lora": {"target_modules": ["q_proj", "c_attn"]}})
    with pytest.raises(ConfigError, match="c_attn name no linear layer of this gemma3_text model") as error:
        capacity.count_parameters(capacity.model_config_for(config), config.lora)
    assert error.value.hint == f"use some of {', '.join(sorted(ALL_PROJECTIONS))}, or all-linear"
