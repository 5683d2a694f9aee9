"""Helpers shared by the benchmark scripts."""

from __future__ import annotations


def random_model(config, device: str, dtype=None):
    """A causal LM with random weights, initialised directly in ``dtype`` (bf16 by default) on ``device``: a
    7B model never exists as a 25.6 GiB fp32 copy first (the model class's constructor ignores ``config.dtype``)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device(device):
        return AutoModelForCausalLM.from_config(config, dtype=dtype or torch.bfloat16).eval()
