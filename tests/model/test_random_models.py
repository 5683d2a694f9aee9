"""Model source random:<architecture>: real shapes, random weights, no download."""

from __future__ import annotations

import pytest

from tallrec_cli.core.errors import ModelError
from tallrec_cli.model.loading import load_model, load_tokenizer, resolve_model_source
from tallrec_cli.model.prompts import load_template, resolve_label_tokens
from tallrec_cli.train.capacity import count_parameters, model_config_for
from tallrec_cli.train.config import load_train_config


@pytest.mark.parametrize("name, billions, vocab, kv_heads", [("random:llama-2-7b", 6.74, 32000, 32),
                                                            ("random:llama-3-8b", 8.03, 128256, 8)])
def test_random_sources_have_the_published_shapes_without_writing_weights(tmp_path, name, billions, vocab, kv_heads):
    config = load_train_config(None, {"model": {"name": name}, "data": {"train": str(tmp_path)}})
    model_config = model_config_for(config)
    assert model_config.vocab_size == vocab and model_config.num_key_value_heads == kv_heads
    assert count_parameters(model_config, config.lora)["total"] / 1e9 == pytest.approx(billions, abs=0.01)
    assert resolve_model_source(name, convert_embedded=False).kind == "random"


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
