"""Will a recipe fit? The `--dry-run` memory model of a training run (parameter counts from a meta-device
model, peak bytes by part, `dry_run`), its estimate as a typed result per GPU (with FSDP the sharded parts
divide by the number of processes), and advice for a recipe that does not fit.

Used by `tallrec train --dry-run`, `tallrec doctor RECIPE` and acceptance/gpu_check.py; no weights are loaded
(the model is built on the meta device from its config).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tallrec_cli.core.config import to_dict
from tallrec_cli.core.errors import ConfigError, ModelError
from tallrec_cli.core.files import tallrec_home
from tallrec_cli.core.quiet import quiet_libraries
from tallrec_cli.model.loading import hub_unreachable, resolve_model_source
from tallrec_cli.model.prompts import load_template
from tallrec_cli.model.random_models import model_config
from tallrec_cli.model.scoring import MIN_PREFIX_TOKENS, common_prefix_length, scoring_row_bytes
from tallrec_cli.train.config import ALL_LINEAR, LoraSettings, TrainConfig, check_schedule, eval_interval, preflight
from tallrec_cli.train.data import prepare_data

GIB = 1024 ** 3
SHIPPED_CONFIGS = ("use recipes/accelerate/fsdp2-2gpu.yaml, fsdp2-4gpu.yaml or fsdp2-2nodes.yaml from tallrec-cli, "
                   "or a file written by `accelerate config`")
# Under FSDP these parts are sharded across processes; activations and logits are per process.
SHARDED_PARTS = ("weights", "lora_and_optimizer")
TRAINING_PARTS = ("weights", "lora_and_optimizer", "activations", "logits")

# Shapes of the recipes' hub models, so `--dry-run` can estimate memory offline (no hub access).
KNOWN_ARCHITECTURES: dict[str, dict[str, Any]] = {
    "llama-7b": dict(model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                     num_attention_heads=32, num_key_value_heads=32, vocab_size=32000),
    "llama-3-8b": dict(model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, vocab_size=128256),
    "llama-3-70b": dict(model_type="llama", hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                        num_attention_heads=64, num_key_value_heads=8, vocab_size=128256),
    "qwen2.5-7b": dict(model_type="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                       num_attention_heads=28, num_key_value_heads=4, vocab_size=152064),
}
_HUB_ARCHITECTURES = {
    "baffo32/decapoda-research-llama-7b-hf": "llama-7b",
    "huggyllama/llama-7b": "llama-7b",
    "meta-llama/llama-2-7b-hf": "llama-7b",
    "meta-llama/meta-llama-3-8b": "llama-3-8b",
    "meta-llama/meta-llama-3-8b-instruct": "llama-3-8b",
    "meta-llama/meta-llama-3-70b": "llama-3-70b",
    "meta-llama/meta-llama-3-70b-instruct": "llama-3-70b",
    "qwen/qwen2.5-7b": "qwen2.5-7b",
    "qwen/qwen2.5-7b-instruct": "qwen2.5-7b",
}


def model_config_for(config: TrainConfig):
    """The base model's transformers config, without weights (for memory estimates)."""
    return _model_config(config)[0]


def _model_config(config: TrainConfig):
    """The base model's config without weights: from its folder/GGUF, else the known shapes table."""
    from transformers import AutoConfig

    source = resolve_model_source(config.model.name, convert_embedded=False)
    if source.kind == "random":  # the embedded config; its tokenizer's token counts are not the real ones

        return model_config(config.model.name), None
    path, gguf_file = source.path, source.gguf_file
    converted = tallrec_home() / "models" / config.model.name
    if source.kind == "embedded":
        # The GGUF header lacks tie_word_embeddings; the converted copy (when cached) has the true config.
        if (converted / "manifest.json").exists():
            path = str(converted)
        else:
            path, gguf_file = str(Path(path).parent), Path(path).name
    unreachable = hub_unreachable(source) if source.kind == "hub" else None  # not a minute of retries
    try:
        if unreachable:
            raise OSError(unreachable)
        return AutoConfig.from_pretrained(path, gguf_file=gguf_file, trust_remote_code=config.model.trust_remote_code), (path, gguf_file)
    except (OSError, ValueError) as exc:
        shape = _HUB_ARCHITECTURES.get(config.model.name.lower())
        if shape is None:
            raise ModelError(f"cannot read the config of {config.model.name}: {str(exc).splitlines()[0]}",
                             "download the model or pass a local folder") from None
        return config_from_shape(shape), None


def config_from_shape(shape_name: str):
    """A transformers config with the known dimensions of ``shape_name`` (see KNOWN_ARCHITECTURES)."""
    from transformers import AutoConfig

    shape = dict(KNOWN_ARCHITECTURES[shape_name])
    return AutoConfig.for_model(shape.pop("model_type"), max_position_embeddings=4096, **shape)


def count_parameters(model_config, lora: LoraSettings) -> dict[str, int]:
    """Total, quantizable (linear layers in the blocks) and LoRA parameters, from a meta-device model."""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(model_config)
    total = sum(p.numel() for p in model.parameters())
    head = model.get_output_embeddings()
    targets = lora.peft_targets()
    linear = adapted = lora_params = adapted_inputs = 0
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or module is head:
            continue
        linear += module.weight.numel()
        if targets == ALL_LINEAR or name.rsplit(".", 1)[-1] in targets:
            adapted += 1
            adapted_inputs += module.in_features
            lora_params += lora.r * (module.in_features + module.out_features)
            if lora.use_dora:
                lora_params += module.out_features  # magnitude vector
    return {"total": total, "quantizable": linear, "lora": lora_params, "adapted_modules": adapted,
            "adapted_inputs": adapted_inputs}


# What `--dry-run` cannot see: the CUDA context (~0.5-1 GiB, outside torch's allocator) and fragmentation.
CUDA_RESERVE_GIB = 1.0
# Shared prompt prefix assumed for the validation cache when the tokenizer is not available offline
# (the alpaca header and TALLRec's instruction are ~70 tokens for LLaMA tokenizers).
ASSUMED_SHARED_PREFIX = 64


def estimate_memory(model_config, counts: dict[str, int], config: TrainConfig, seq_len: int,
                    valid_tokens: tuple[int, int] | None = None) -> dict[str, float]:
    """Peak GPU memory (bytes) of LoRA/QLoRA training and of its validation pass, by part, as
    ``torch.cuda.max_memory_allocated`` counts it: the CUDA context and fragmentation are extra
    (CUDA_RESERVE_GIB). ``total`` is the larger of ``training`` and ``validation``.

    - weights: block linears at 1 byte (8bit) / ~0.516 byte (NF4 4 bits + double-quantized absmax) or the dtype's
      width; other weights (embeddings, norms, lm_head) at the compute dtype's width (k-bit runs keep them there,
      see `_frozen_weights_to`).
    - LoRA: 16 bytes per parameter (fp32 weight + gradient + Adam m and v).
    - activations per layer and token (Korthikanti et al. 2022, 16-bit): 34 * hidden bytes; SDPA keeps no
      seq^2 attention scores. Each adapted module with dropout also keeps its dropped-out input and mask:
      3 bytes per input feature, plus its rank-r intermediate. Gradient checkpointing keeps each layer's input
      (2 * hidden bytes per token) plus one layer in full.
    - logits: trl's fused head never holds [tokens, vocab]: it projects the labelled positions in tiles of at
      most 4096 tokens x 32768 vocabulary entries (a 16-bit tile and its gradient tile).
    - validation (still holding weights, LoRA and optimizer state): a scoring batch of ``eval_batch_size`` rows
      of ``valid_tokens`` = (longest suffix, shared prefix) tokens, with the key/value cache of every layer
      (tallrec_cli.model.scoring.scoring_row_bytes).
    """

    hidden, layers = model_config.hidden_size, model_config.num_hidden_layers
    vocab = model_config.vocab_size
    batch = config.training.micro_batch_size
    quantization = config.model.quantization
    width = 4 if config.model.dtype == "float32" else 2
    other = counts["total"] - counts["quantizable"]
    if quantization == "none":
        weights = counts["total"] * width
    else:
        weights = counts["quantizable"] * (1.0 if quantization == "8bit" else 0.516) + other * width
    tokens = batch * seq_len
    lora_inputs = counts.get("adapted_inputs", 0) / layers
    lora_per_token = ((3 * lora_inputs if config.lora.dropout > 0 else 0)
                      + 2 * config.lora.r * counts["adapted_modules"] / layers)
    per_layer = tokens * (34 * hidden + lora_per_token)
    if config.training.gradient_checkpointing:
        activations = layers * 2 * tokens * hidden + per_layer
    else:
        activations = layers * per_layer
    labelled = tokens if config.prompt.loss == "full" else batch * 4  # answer tokens: "Yes." + EOS
    lora_state = counts["lora"] * 16
    suffix, prefix = valid_tokens or (seq_len - ASSUMED_SHARED_PREFIX, ASSUMED_SHARED_PREFIX)
    scoring = config.training.eval_batch_size * scoring_row_bytes(model_config, width, suffix, prefix)
    parts = {
        "weights": weights,
        "lora_and_optimizer": lora_state,
        "activations": activations,
        "logits": 2 * min(labelled, 4096) * min(vocab, 32768) * width,
    }
    parts["training"] = sum(parts.values())
    parts["validation_batch"] = scoring
    parts["validation"] = weights + lora_state + scoring
    parts["total"] = max(parts["training"], parts["validation"])
    return parts


def dry_run(config: TrainConfig, gpu_memory_gib: float = 24.0) -> dict[str, Any]:
    """Resolved config, parameter counts, dataset sizes and token lengths, and a peak-memory estimate;
    no weights are loaded (the model is built on the meta device from its config)."""
    import numpy as np

    preflight(config, check_output=False)
    quiet_libraries()
    model_config, tokenizer_location = _model_config(config)
    counts = count_parameters(model_config, config.lora)
    result: dict[str, Any] = {"config": to_dict(config), "parameters": counts, "data": None, "notes": []}
    seq_len = config.prompt.max_length
    if tokenizer_location is not None:
        from transformers import AutoTokenizer

        path, gguf_file = tokenizer_location
        tokenizer = AutoTokenizer.from_pretrained(path, gguf_file=gguf_file, trust_remote_code=config.model.trust_remote_code)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
        data = prepare_data(config, tokenizer, load_template(config.prompt.template))
        lengths = np.asarray(data.train_token_lengths)
        valid_tokens = _validation_tokens(tokenizer, data.valid_prompts)
        result["data"] = {"train_records": len(data.train_records), "valid_records": len(data.valid_records),
                          "truncated_records": data.truncated_records, "tokens_min": int(lengths.min()),
                          "tokens_mean": float(lengths.mean()), "tokens_max": int(lengths.max())}
        seq_len = int(lengths.max())
        result["eval_every"] = eval_interval(config.training.eval_every, len(data.train_records))
        result["notes"].extend(data.notes)
        try:
            check_schedule(config, len(data.train_records))
        except ConfigError as exc:
            result["notes"].append(exc.message)
    else:
        valid_tokens = None
        result["notes"].append(f"{config.model.name} is not available offline: its tokenizer was not loaded, so token "
                               f"lengths are not measured and the estimate assumes max_length={seq_len}")
    memory = estimate_memory(model_config, counts, config, seq_len, valid_tokens)
    result["memory_gib"] = {key: value / GIB for key, value in memory.items()}
    result["sequence_length"] = seq_len
    result["gpu_memory_gib"] = gpu_memory_gib
    result["fits"] = memory["total"] + CUDA_RESERVE_GIB * GIB <= gpu_memory_gib * GIB
    peak = "validation" if memory["validation"] > memory["training"] else "training"
    result["notes"].append(f"the peak is {peak}; the CUDA context and fragmentation (~{CUDA_RESERVE_GIB:g} GiB) come "
                           "on top and are kept free in the fits verdict")
    if not result["fits"]:
        result["notes"].append(f"estimated peak {memory['total'] / GIB:.1f} GiB + {CUDA_RESERVE_GIB:g} GiB exceeds the "
                               f"{gpu_memory_gib:g} GiB budget: lower training.micro_batch_size, "
                               "training.eval_batch_size or prompt.max_length, "
                               "set training.gradient_checkpointing=true, "
                               "or use model.quantization=4bit")
    return result


def _validation_tokens(tokenizer, prompts: list[str]) -> tuple[int, int]:
    """(longest suffix, shared prefix) in tokens of the validation prompts, as the scorer splits them."""

    encoded = tokenizer(prompts)["input_ids"]
    shared = min(common_prefix_length(encoded), min(len(ids) for ids in encoded) - 1)
    if shared < MIN_PREFIX_TOKENS:
        shared = 0
    return max(len(ids) for ids in encoded) - shared, shared



@dataclass(frozen=True)
class MemoryEstimate:
    """Peak GPU bytes per process, by part (see `estimate_memory`)."""
    parts: dict[str, float]
    processes: int
    sequence_length: int
    settings: dict[str, object] = field(default_factory=dict)

    @property
    def total_bytes(self) -> float:
        """The peak: the larger of the training step and the validation pass."""
        return max(self.parts["training"], self.parts["validation"])

    @property
    def total_gib(self) -> float:
        return self.total_bytes / GIB

    def as_dict(self) -> dict[str, object]:
        return {"parts_gib": {key: value / GIB for key, value in self.parts.items()}, "total_gib": self.total_gib,
                "processes": self.processes, "sequence_length": self.sequence_length}


def shard(parts: dict[str, float], processes: int, layers: int) -> dict[str, float]:
    """Per-process parts under FSDP: sharded weights and optimizer state, plus one layer's weights
    gathered in full while it runs (and the next one prefetched)."""
    if processes <= 1:
        return dict(parts)
    sharded = {key: (value / processes if key in SHARDED_PARTS else value) for key, value in parts.items()}
    sharded["gathered_layers"] = 2 * parts["weights"] / max(layers, 1)
    return sharded


def estimate_recipe(config, processes: int | None = None, seq_len: int | None = None) -> MemoryEstimate:
    """Estimate for ``config`` (a TrainConfig) at ``prompt.max_length`` tokens (or ``seq_len``);
    ``processes`` > 1 with training.fsdp gives the per-GPU share."""
    model_config = model_config_for(config)
    counts = count_parameters(model_config, config.lora)
    length = seq_len or config.prompt.max_length
    estimate = estimate_memory(model_config, counts, config, length)
    parts = {key: estimate[key] for key in TRAINING_PARTS + ("validation_batch",)}
    count = processes or 1
    if config.training.fsdp:
        if config.model.quantization != "none":  # no fp32 upcast under FSDP: one dtype per shard unit
            parts["weights"] -= (counts["total"] - counts["quantizable"]) * 2
        parts = shard(parts, count, model_config.num_hidden_layers)
    # both peaks from the (sharded) parts: the training step, and the validation pass with its KV cache
    resident = parts["weights"] + parts["lora_and_optimizer"] + parts.get("gathered_layers", 0.0)
    parts["training"] = resident + parts["activations"] + parts["logits"]
    parts["validation"] = resident + parts["validation_batch"]
    settings = {"micro_batch_size": config.training.micro_batch_size, "max_length": length,
                "quantization": config.model.quantization,
                "gradient_checkpointing": config.training.gradient_checkpointing,
                "fsdp": config.training.fsdp}
    return MemoryEstimate(parts, count, length, settings)


def processes_from_accelerate_config(path: str | Path) -> int:
    """Total processes (GPUs) an accelerate config file launches: num_processes (all machines together)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"accelerate config {path} does not exist", SHIPPED_CONFIGS)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"accelerate config {path} is not valid YAML: {str(exc).splitlines()[0]}",
                          SHIPPED_CONFIGS) from None
    processes = data.get("num_processes") if isinstance(data, dict) else None
    if not isinstance(processes, int) or processes < 1:
        raise ConfigError(f"accelerate config {path} has no num_processes", SHIPPED_CONFIGS)
    return processes


def per_gpu_fit(config, processes: int, seq_len: int, gpu_memory_gib: float) -> dict[str, object]:
    """`--dry-run --processes N`: the per-GPU estimate, whether it fits, and what to lower when not."""
    estimate = estimate_recipe(config, processes, seq_len)
    fits = estimate.total_bytes <= gpu_memory_gib * GIB
    note = None if fits else (f"short by {estimate.total_gib - gpu_memory_gib:.1f} GiB per GPU: "
                              + shortfall_advice(estimate))
    return {**estimate.as_dict(), "fits": fits, "gpu_memory_gib": gpu_memory_gib, "note": note,
            "sharded": config.training.fsdp}


def shortfall_advice(estimate: MemoryEstimate) -> str:
    """Which settings to lower, biggest part first: the hint of a recipe that does not fit."""
    settings = estimate.settings
    parts = estimate.parts
    advice = []
    per_sample = parts.get("activations", 0) + parts.get("logits", 0)
    weights = parts.get("weights", 0)
    if per_sample >= weights:
        if not settings.get("gradient_checkpointing"):
            advice.append("set training.gradient_checkpointing=true (activations "
                          f"{parts.get('activations', 0) / GIB:.1f} GiB)")
        if settings.get("micro_batch_size", 1) > 1:
            advice.append(f"lower training.micro_batch_size from {settings['micro_batch_size']} "
                          "(batch_size stays: gradient accumulation makes up)")
        advice.append(f"lower prompt.max_length from {settings['max_length']}")
    if settings.get("quantization") != "4bit":
        advice.append(f"use model.quantization=4bit (weights {weights / GIB:.1f} GiB now)")
    if estimate.processes > 1 and not settings.get("fsdp"):
        advice.append("shard with training.fsdp=true across the processes")
    elif weights > per_sample:
        advice.append("shard across more GPUs with FSDP (recipes/llama-3-70b-qlora-fsdp.yaml shows how)")
    return "; ".join(advice)
