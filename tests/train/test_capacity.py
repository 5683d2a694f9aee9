"""The `--dry-run` memory model against what it models: activations measured here (autograd's saved tensors of
small random LLaMA models on the CPU training path: bf16 weights under bf16 autocast, fp32 LoRA as peft makes
it), and the per-GPU parts under FSDP."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tallrec_cli.train import capacity
from tallrec_cli.train.config import load_train_config

REPO = Path(__file__).resolve().parents[2]
BATCH, SEQUENCE = 2, 97  # a prime length: weights (no factor 97) never pass for activations


def _llama(hidden: int, intermediate: int, layers: int):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=512, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                       num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64)


def _saved_bytes(model_config, lora) -> int:
    """Bytes autograd keeps for backward in one training forward: the tensors that scale with the tokens."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(model_config).to(torch.bfloat16)
    model = get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                             target_modules=lora.peft_targets())).train()
    kept = {}

    def keep(tensor):
        if tensor.numel() % (BATCH * SEQUENCE) == 0:
            kept[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    ids = torch.randint(0, model_config.vocab_size, (BATCH, SEQUENCE))
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        model(input_ids=ids, logits_to_keep=1)
    return sum(kept.values())


@pytest.mark.parametrize("hidden, intermediate, targets, dropout", [
    (256, 688, ["all-linear"], 0.0),
    (256, 1376, ["q_proj", "v_proj"], 0.0),
    (256, 688, ["all-linear"], 0.05),
])
def test_activation_estimate_matches_the_measured_saved_tensors_per_layer(hidden, intermediate, targets, dropout):
    config = load_train_config(None, {"model": {"dtype": "bfloat16"},
                                      "lora": {"r": 16, "alpha": 32, "dropout": dropout, "target_modules": targets},
                                      "training": {"micro_batch_size": BATCH, "batch_size": BATCH}})
    # per layer: the growth from 2 to 4 layers (embeddings and the head's position stay out)
    measured = (_saved_bytes(_llama(hidden, intermediate, 4), config.lora)
                - _saved_bytes(_llama(hidden, intermediate, 2), config.lora)) / 2
    model_config = _llama(hidden, intermediate, 4)
    counts = capacity.count_parameters(model_config, config.lora)
    estimate = capacity.estimate_memory(model_config, counts, config, SEQUENCE)["activations"] / 4
    if dropout:  # the CPU keeps dropout's mask in the (fp32) input's dtype, CUDA as bool: 3 bytes more per input
        estimate += 3 * counts["adapted_inputs"] / 4 * BATCH * SEQUENCE
    assert estimate == pytest.approx(measured, rel=0.03)


def test_kbit_lora_state_is_charged_in_bf16():
    counts = capacity.count_parameters(capacity.config_from_shape("llama-7b"), load_train_config(None).lora)
    shape = capacity.config_from_shape("llama-7b")
    state = {quantization: capacity.estimate_memory(shape, counts, load_train_config(
        None, {"model": {"quantization": quantization, "dtype": "bfloat16"}}), 512)["lora_and_optimizer"]
             for quantization in ("none", "4bit")}
    assert state == {"none": counts["lora"] * 16, "4bit": counts["lora"] * 8}  # trl keeps k-bit LoRA in bf16


def _seventy_b(**overrides):
    return load_train_config(REPO / "recipes" / "llama-3-70b-qlora-fsdp.yaml",
                             {"model": {"name": "random:llama-3-70b"}, **overrides})


def test_fsdp_shards_every_weight_and_counts_what_is_gathered_in_full():
    config = _seventy_b()
    model_config = capacity.model_config_for(config)
    counts = capacity.count_parameters(model_config, config.lora)
    block, outer = capacity.weight_bytes(counts, config)
    estimate = capacity.estimate_recipe(config, processes=2)
    parts = estimate.parts
    assert parts["weights"] == pytest.approx((block + outer) / 2)  # embeddings, norms and lm_head included
    head = model_config.vocab_size * model_config.hidden_size * 2
    assert parts["gathered_head"] == head and parts["gathered_outer"] == outer  # trl's full_tensor; root_gathered
    resident = parts["weights"] + parts["lora_and_optimizer"] + parts["gathered_layers"]
    assert parts["training"] == pytest.approx(resident + head + parts["activations"] + parts["logits"])
    assert parts["validation"] == pytest.approx(resident + outer + parts["validation_batch"])
    # every rank loads the whole 4-bit model before FSDP shards it: the peak, ~37 GiB
    assert parts["load"] == block + outer and 36 < estimate.total_gib < 38


def test_per_gpu_dry_run_states_what_loading_needs():
    fit = capacity.per_gpu_fit(_seventy_b(), 4, 512, 24.0)
    assert not fit["fits"] and "at load every GPU holds the whole model, 36.8 GiB" in fit["note"]
    assert "GPUs with at least 38 GiB" in fit["note"]
    assert capacity.per_gpu_fit(_seventy_b(), 2, 512, 48.0)["fits"]
