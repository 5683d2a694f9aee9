"""Model source random:<architecture>: real shapes and test shapes of four families, random weights, no download."""

from __future__ import annotations

import pytest

from tallrec_cli.core.errors import ModelError
from tallrec_cli.core.files import tallrec_home
from tallrec_cli.core.manifests import read_manifest
from tallrec_cli.model.loading import load_model, load_tokenizer, resolve_model_source
from tallrec_cli.model.prompts import load_template, resolve_label_tokens
from tallrec_cli.model.random_models import is_test_shape, model_config
from tallrec_cli.train.capacity import count_parameters, model_config_for
from tallrec_cli.train.config import load_train_config


@pytest.mark.parametrize("name, billions, vocab, kv_heads", [("random:llama-2-7b", 6.74, 32000, 32),
                                                            ("random:llama-3-8b", 8.03, 128256, 8),
                                                            ("random:gemma3-270m", 0.268, 262144, 1)])
def test_random_sources_have_the_published_shapes_without_writing_weights(tmp_path, name, billions, vocab, kv_heads):
    config = load_train_config(None, {"model": {"name": name}, "data": {"train": str(tmp_path)}})
    model_config = model_config_for(config)
    assert model_config.vocab_size == vocab and model_config.num_key_value_heads == kv_heads
    assert count_parameters(model_config, config.lora)["total"] / 1e9 == pytest.approx(billions, abs=0.01)
    assert resolve_model_source(name, convert_embedded=False).kind == "random"
    assert not (tallrec_home() / "models" / f"random-{name.removeprefix('random:')}").exists()


def test_random_gemma3_270m_is_the_model_transformers_loads_from_its_gguf():
    """268,098,176 parameters (the embedding tied to the head counted once), counted on Gemma3ForCausalLM as
    transformers loads it from gemma-3-270m-q4_k_m.gguf; hybrid attention with a 512-token window."""
    config = model_config("random:gemma3-270m")
    assert count_parameters(config, load_train_config(None).lora)["total"] == 268_098_176
    assert (config.model_type, config.hidden_size, config.head_dim, config.num_attention_heads) == ("gemma3_text", 640,
                                                                                                   256, 4)
    assert config.tie_word_embeddings and config.final_logit_softcapping is None and config.sliding_window == 512
    assert config.layer_types == (["sliding_attention"] * 5 + ["full_attention"]) * 3
    assert {kind: rope["rope_theta"] for kind, rope in config.rope_parameters.items()} == {
        "full_attention": 1_000_000.0, "sliding_attention": 10_000.0}


@pytest.mark.parametrize("name, model_class, tied", [("random:tiny-llama", "LlamaForCausalLM", False),
                                                     ("random:tiny-gemma3", "Gemma3ForCausalLM", True),
                                                     ("random:tiny-qwen2", "Qwen2ForCausalLM", True),
                                                     ("random:tiny-mistral", "MistralForCausalLM", False)])
def test_the_test_shapes_of_four_families_load_in_float32_through_the_normal_path(name, model_class, tied):
    import torch

    model = load_model(resolve_model_source(name), "float32")
    assert type(model).__name__ == model_class and is_test_shape(name)
    assert {parameter.dtype for parameter in model.parameters()} == {torch.float32}
    assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) == tied
    assert read_manifest(resolve_model_source(name).path, "random-model")["architecture_of"] is None


def test_random_tiny_llama_loads_through_the_normal_path_and_scores_labels():
    source = resolve_model_source("random:tiny-llama")
    model = load_model(source, "float32")
    tokenizer = load_tokenizer(source)
    labels = resolve_label_tokens(tokenizer, load_template("alpaca"), "Yes", "No")
    assert max(labels.positive_id, labels.negative_id) < model.config.vocab_size
    assert resolve_model_source("random:tiny-llama").path == source.path  # written once, then reused


def test_an_unknown_random_architecture_names_the_known_ones():
    with pytest.raises(ModelError, match="unknown random architecture") as error:
        resolve_model_source("random:llama-9-1t")
    assert "random:llama-3-8b" in error.value.hint
