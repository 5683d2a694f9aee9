"""Will vLLM serve this adapter? The rules of vLLM's LoRA loader, checked statically on the adapter's
config and tensor names."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

# vLLM's LoRA loader (vllm/lora/peft_helper.py and the LLaMA-class model definitions, vLLM 0.6-0.11):
# q/k/v and gate/up are packed into qkv_proj / gate_up_proj but loaded from the usual PEFT names;
# --max-lora-rank only accepts these values; DoRA, LoRA biases, modules_to_save and per-module
# rank/alpha patterns are rejected or silently mis-scaled; rsLoRA scaling (alpha / sqrt(r)) is honoured.
VLLM_MAX_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
VLLM_LORA_MODULES = frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"})
VLLM_EMBEDDING_MODULES = frozenset({"embed_tokens", "lm_head"})
VLLM_LLAMA_CLASS = frozenset({"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "granite"})


@dataclass(frozen=True)
class VllmCheck:
    """Static check of a PEFT LoRA adapter against what vLLM's LoRA loader accepts."""
    compatible: bool
    max_lora_rank: int | None
    problems: tuple[str, ...]
    notes: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"compatible": self.compatible, "max_lora_rank": self.max_lora_rank,
                "problems": list(self.problems), "notes": list(self.notes)}


def _lora_module(tensor_name: str) -> str | None:
    """``...layers.0.self_attn.q_proj.lora_A.weight`` -> ``q_proj``; None for non-LoRA tensors."""
    match = re.search(r"\.([^.]+)\.lora_(?:embedding_)?[AB](?:\.|$)", tensor_name)
    return match.group(1) if match else None


def check_vllm_compatibility(adapter_config: dict[str, Any], tensor_names: Iterable[str],
                             model_type: str | None = None) -> VllmCheck:
    """Would ``vllm serve BASE --enable-lora --lora-modules NAME=PATH`` load this adapter?"""
    problems, notes = [], []
    if adapter_config.get("peft_type", "LORA") != "LORA":
        problems.append(f"peft_type {adapter_config.get('peft_type')}: vLLM serves LoRA adapters only")
    if adapter_config.get("use_dora"):
        problems.append("DoRA (use_dora) is not supported by vLLM")
    if adapter_config.get("bias", "none") != "none" or adapter_config.get("lora_bias"):
        problems.append("LoRA biases (bias != none / lora_bias) are not supported by vLLM")
    if adapter_config.get("modules_to_save"):
        problems.append(f"modules_to_save {adapter_config['modules_to_save']} (fully trained modules) "
                        "are not loaded by vLLM")
    for key in ("rank_pattern", "alpha_pattern"):
        if adapter_config.get(key):
            problems.append(f"{key} (per-module rank/alpha) is not applied by vLLM, which scales every "
                            "module with one lora_alpha / r")
    for key in ("target_parameters", "trainable_token_indices", "layer_replication"):
        if adapter_config.get(key):
            problems.append(f"{key} is not supported by vLLM")
    modules = {_lora_module(name) for name in tensor_names}
    if None in modules:
        problems.append("the adapter holds non-LoRA tensors (full module weights), which vLLM does not load")
    modules.discard(None)
    unsupported = sorted(modules - VLLM_LORA_MODULES - VLLM_EMBEDDING_MODULES)
    if unsupported:
        problems.append(f"target modules {', '.join(unsupported)} are outside vLLM's LoRA modules "
                        f"({', '.join(sorted(VLLM_LORA_MODULES))})")
    if modules & VLLM_EMBEDDING_MODULES:
        notes.append(f"LoRA on {', '.join(sorted(modules & VLLM_EMBEDDING_MODULES))} needs a vLLM version with "
                     "embedding/lm_head LoRA support (older ones also need --lora-extra-vocab-size)")
    rank = max([int(adapter_config.get("r", 8)), *map(int, (adapter_config.get("rank_pattern") or {}).values())])
    max_rank = next((choice for choice in VLLM_MAX_LORA_RANKS if choice >= rank), None)
    if max_rank is None:
        problems.append(f"LoRA rank {rank} exceeds vLLM's largest --max-lora-rank ({VLLM_MAX_LORA_RANKS[-1]})")
    if adapter_config.get("use_rslora"):
        notes.append("rsLoRA scaling (lora_alpha / sqrt(r)) is read from use_rslora by vLLM")
    if model_type and model_type not in VLLM_LLAMA_CLASS:
        notes.append(f"model type {model_type!r} was not checked: see vLLM's supported-models list for LoRA support")
    return VllmCheck(not problems, max_rank, tuple(problems), tuple(notes))
