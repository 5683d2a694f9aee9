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
from tallrec_cli.model.loading import EMBEDDED_MODELS, gguf_model_dir, hub_unreachable, resolve_model_source
from tallrec_cli.model.prompts import load_template
from tallrec_cli.model.random_models import model_config, published_config
from tallrec_cli.model.scoring import (
    MIN_PREFIX_TOKENS,
    common_prefix_length,
    scoring_row_bytes,
    shareable_prefix_tokens,
)
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
    """(config, tokenizer location or None, why no tokenizer) of the base model without weights: from its
    folder, converted copy or GGUF, else the published or known shapes."""
    from transformers import AutoConfig

    name = config.model.name
    source = resolve_model_source(name, convert_embedded=False)
    if source.kind == "random":  # the published config; its tokenizer's token counts are not the real ones
        return model_config(name), None, f"{name} stands in for the real model"
    path, gguf_file = source.path, source.gguf_file
    if source.kind == "embedded":
        # The GGUF header lacks tie_word_embeddings; the converted copy (when cached) has the true config.
        converted = tallrec_home() / "models" / name
        if (converted / "manifest.json").exists():
            path = str(converted)
        elif EMBEDDED_MODELS[name].chunked:  # not assembled yet: the published config, no tokenizer until then
            return (published_config(EMBEDDED_MODELS[name].origin), None,
                    f"{name} is not converted yet (the first command that loads it does, once)")
        else:
            path, gguf_file = str(Path(path).parent), Path(path).name
    elif source.kind == "gguf":
        converted = gguf_model_dir(Path(path) / gguf_file, convert=False)
        path, gguf_file = (str(converted), None) if converted else (path, gguf_file)
    unreachable = hub_unreachable(source) if source.kind == "hub" else None  # not a minute of retries
    try:
        if unreachable:
            raise OSError(unreachable)
        return (AutoConfig.from_pretrained(path, gguf_file=gguf_file, trust_remote_code=config.model.trust_remote_code),
                (path, gguf_file), None)
    except (OSError, ValueError) as exc:
        shape = _HUB_ARCHITECTURES.get(name.lower())
        published = published_config(name)  # a hub id whose config.json random_models holds
        if shape is None and published is None:
            raise ModelError(f"cannot read the config of {name}: {str(exc).splitlines()[0]}",
                             "download the model or pass a local folder") from None
        config_shape = published if published is not None else config_from_shape(shape)
        return config_shape, None, f"{name} is not available offline"


def config_from_shape(shape_name: str):
    """A transformers config with the known dimensions of ``shape_name`` (see KNOWN_ARCHITECTURES)."""
    from transformers import AutoConfig

    shape = dict(KNOWN_ARCHITECTURES[shape_name])
    return AutoConfig.for_model(shape.pop("model_type"), max_position_embeddings=4096, **shape)


def count_parameters(model_config, lora: LoraSettings) -> dict[str, int]:
    """Total, quantizable (linear layers in the blocks) and LoRA parameters, from a meta-device model."""
    import torch
    from transformers import AutoModelForCausalLM

    # the meta device, not accelerate's init_empty_weights: under that transformers 5 leaves a tied LM head
    # untied, and counts Gemma 3 270M's 168M embedding parameters twice
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config)
    total = sum(p.numel() for p in model.parameters())  # a tied head shares the embedding's parameter
    head = model.get_output_embeddings()
    targets = lora.peft_targets()
    linear = adapted = lora_params = adapted_inputs = 0
    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
             if isinstance(module, torch.nn.Linear) and module is not head}
    unmatched = lora.unmatched(names)
    if unmatched:
        raise ConfigError(f"lora.target_modules: {', '.join(unmatched)} name no linear layer of this "
                          f"{model_config.model_type} model", f"use some of {', '.join(sorted(names))}, or all-linear")
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
            "adapted_inputs": adapted_inputs, "norm_features": _norm_features(model, model_config)}


def _norm_features(model, model_config) -> int:
    """Features per token that the norms of one decoder layer normalise: LLaMA's two over the hidden size, Gemma 3's
    four plus per-head norms of the queries (over all heads) and keys (over the key/value heads)."""
    text = model_config.get_text_config()
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    layer = next(module for name, module in model.named_modules() if name.endswith("layers.0"))
    features = 0
    for name, module in layer.named_modules():
        weight = getattr(module, "weight", None)
        if "norm" not in type(module).__name__.lower() or weight is None:
            continue
        if weight.numel() == head_dim:  # applied to each head
            features += head_dim * (kv_heads if name.endswith("k_norm") else heads)
        else:
            features += weight.numel()
    return features


# What `--dry-run` cannot see: the CUDA context (~0.5-1 GiB, outside torch's allocator) and fragmentation.
CUDA_RESERVE_GIB = 1.0
# Shared prompt prefix assumed for the validation cache when the tokenizer is not available offline
# (the alpaca header and TALLRec's instruction are ~70 tokens for LLaMA tokenizers).
ASSUMED_SHARED_PREFIX = 64
# Activations a decoder layer keeps for backward, in bytes per token, 16-bit, SDPA (no seq^2 scores). Measured on
# CPU with autograd's saved-tensor hooks (tests/train/test_capacity.py and, for Gemma 3, Qwen2 and Mistral shapes,
# tests/train/test_shapes.py measure them again): per feature a norm normalises 4 (its fp32 input), per attention
# feature (heads x head_dim, which is not the hidden size in Gemma 3) 8 (queries, and keys and values at full width,
# as SDPA gets them repeated under a padding mask; a GQA model without one keeps less), per MLP intermediate feature
# 6 (gate, up and their product). LLaMA: 2 norms over the hidden size, so 16 per hidden feature (at hidden 512, MLP
# 1376, bf16: 32.2 measured without LoRA, the 34 used before came from Korthikanti et al.); with LoRA r16 on all
# linear layers in bf16 (as trl keeps it for k-bit models) 42.0 without dropout, 67.4 with dropout 0.05 (CPU: mask
# in bf16).
ACTIVATION_BYTES_PER_NORM_FEATURE = 4
ACTIVATION_BYTES_PER_ATTENTION = 8
ACTIVATION_BYTES_PER_INTERMEDIATE = 6
# Per input feature of each adapted module: lora_A keeps its 16-bit input, and with dropout the mask (bool on CUDA;
# the CPU keeps it in the input's dtype, 4 bytes in all with bf16). Without dropout modules that share an input
# keep one copy of it in bf16 LoRA (k-bit runs), one each in fp32 LoRA under autocast: 2 per module is the bound.
LORA_DROPOUT_INPUT_BYTES = 3
LORA_INPUT_BYTES = 2


def dtype_width(config: TrainConfig) -> int:
    """Bytes per value of the compute dtype."""
    return 4 if config.model.dtype == "float32" else 2


def weight_bytes(counts: dict[str, int], config: TrainConfig) -> tuple[float, float]:
    """(decoder-block linears, everything else: embeddings, norms, lm_head) in bytes on the GPU. Block linears
    take 1 byte (8bit) or ~0.516 byte (NF4 4 bits + double-quantized absmax) per weight, or the dtype's width;
    the rest stays in the compute dtype's width (k-bit runs keep it there, see `train.run._frozen_weights_to`;
    FSDP packs NF4 in it)."""
    width = dtype_width(config)
    per_weight = {"none": width, "8bit": 1.0, "4bit": 0.516}[config.model.quantization]
    return counts["quantizable"] * per_weight, (counts["total"] - counts["quantizable"]) * width


def lora_state_bytes(config: TrainConfig) -> int:
    """Bytes per LoRA parameter for its weight, gradient and Adam's two moments: trl keeps a k-bit model's LoRA
    in bf16 (8); fp32 elsewhere (16), fp16 runs included (fp32 master weights for the GradScaler,
    `train.run.trainable_to_fp32`)."""
    return 8 if config.model.quantization != "none" and config.model.dtype != "float16" else 16


def estimate_memory(model_config, counts: dict[str, int], config: TrainConfig, seq_len: int,
                    valid_tokens: tuple[int, int] | None = None) -> dict[str, float]:
    """Peak GPU memory (bytes) of LoRA/QLoRA training and of its validation pass, by part, as
    ``torch.cuda.max_memory_allocated`` counts it: the CUDA context and fragmentation are extra
    (CUDA_RESERVE_GIB). ``total`` is the larger of ``training`` and ``validation``.

    - weights: see `weight_bytes`; LoRA and its optimizer state: `lora_state_bytes`.
    - activations per layer and token: ACTIVATION_BYTES_* and, per adapted module, LORA_*_INPUT_BYTES per input
      feature plus its 16-bit rank-r intermediate. Gradient checkpointing keeps each layer's input
      (2 * hidden bytes per token) plus one layer in full.
    - logits: trl's fused head never holds [tokens, vocab]: it projects the labelled positions in tiles of at
      most 4096 tokens x 32768 vocabulary entries (a 16-bit tile and its gradient tile).
    - validation (still holding weights, LoRA and optimizer state): a scoring batch of ``eval_batch_size`` rows
      of ``valid_tokens`` = (longest suffix, shared prefix) tokens, with the key/value cache of every layer
      (tallrec_cli.model.scoring.scoring_row_bytes).
    """

    hidden, layers = model_config.hidden_size, model_config.num_hidden_layers
    intermediate = getattr(model_config, "intermediate_size", None) or 4 * hidden  # GPT-style MLPs: 4 x hidden
    vocab = model_config.vocab_size
    batch = config.training.micro_batch_size
    width = dtype_width(config)
    weights = sum(weight_bytes(counts, config))
    tokens = batch * seq_len
    input_bytes = LORA_DROPOUT_INPUT_BYTES if config.lora.dropout > 0 else LORA_INPUT_BYTES
    lora_per_token = (input_bytes * counts["adapted_inputs"]
                      + 2 * config.lora.r * counts["adapted_modules"]) / layers
    text = model_config.get_text_config()
    attention = text.num_attention_heads * (getattr(text, "head_dim", None) or hidden // text.num_attention_heads)
    per_layer = tokens * (ACTIVATION_BYTES_PER_NORM_FEATURE * counts["norm_features"]
                          + ACTIVATION_BYTES_PER_ATTENTION * attention
                          + ACTIVATION_BYTES_PER_INTERMEDIATE * intermediate + lora_per_token)
    if config.training.gradient_checkpointing:
        activations = layers * 2 * tokens * hidden + per_layer
    else:
        activations = layers * per_layer
    labelled = tokens if config.prompt.loss == "full" else batch * 4  # answer tokens: "Yes." + EOS
    lora_state = counts["lora"] * lora_state_bytes(config)
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
    model_config, tokenizer_location, no_tokenizer = _model_config(config)
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
        valid_tokens = _validation_tokens(tokenizer, data.valid_prompts, model_config)
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
        result["notes"].append(f"{no_tokenizer}: its tokenizer was not loaded, so token lengths are not measured and "
                               f"the estimate assumes max_length={seq_len}")
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


def _validation_tokens(tokenizer, prompts: list[str], model_config) -> tuple[int, int]:
    """(longest suffix, shared prefix) in tokens of the validation prompts, as the scorer splits them (the shared
    part within what the model's cache can share)."""
    encoded = tokenizer(prompts)["input_ids"]
    shared = min(common_prefix_length(encoded), min(len(ids) for ids in encoded) - 1,
                 shareable_prefix_tokens(model_config) or 0)
    if shared < MIN_PREFIX_TOKENS:
        shared = 0
    return max(len(ids) for ids in encoded) - shared, shared


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak GPU bytes per process, by part (see `estimate_memory`; under FSDP also `shard`)."""
    parts: dict[str, float]
    processes: int
    sequence_length: int
    settings: dict[str, object] = field(default_factory=dict)

    @property
    def total_bytes(self) -> float:
        """The peak: the largest of the training step, the validation pass and (FSDP) loading."""
        return max(self.parts["training"], self.parts["validation"], self.parts.get("load", 0.0))

    @property
    def total_gib(self) -> float:
        return self.total_bytes / GIB

    @property
    def needed_bytes(self) -> float:
        """What a GPU must have free: the peak plus the CUDA context and fragmentation (CUDA_RESERVE_GIB), which
        torch's allocator does not count."""
        return self.total_bytes + CUDA_RESERVE_GIB * GIB

    def as_dict(self) -> dict[str, object]:
        return {"parts_gib": {key: value / GIB for key, value in self.parts.items()}, "total_gib": self.total_gib,
                "processes": self.processes, "sequence_length": self.sequence_length}


def shard(parts: dict[str, float], processes: int, layers: int, block_weights: float, outer_weights: float,
          head_weights: float) -> dict[str, float]:
    """Per-process parts under FSDP: weights and optimizer state sharded, and what is gathered in full on top
    of the shards: one decoder layer while it runs and the next one prefetched; in training the LM head (trl's
    fused head calls ``full_tensor()`` on it, the pair loss runs the head's FSDP unit, which stays gathered until
    backward); in validation the embeddings, final norm and LM head (`train.fsdp.root_gathered`). ``load``: every
    process first loads the whole model onto its GPU (transformers loads bitsandbytes models on every rank, its
    rank-0 loading leaves them out) and FSDP shards it only then."""
    sharded = {key: (value / processes if key in SHARDED_PARTS else value) for key, value in parts.items()}
    sharded["gathered_layers"] = 2 * block_weights / max(layers, 1)
    sharded["gathered_head"] = head_weights
    sharded["gathered_outer"] = outer_weights
    sharded["load"] = parts["weights"]
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
    if config.training.fsdp and count > 1:
        block, outer = weight_bytes(counts, config)
        head = model_config.vocab_size * model_config.hidden_size * dtype_width(config)
        parts = shard(parts, count, model_config.num_hidden_layers, block, outer, head)
    # both peaks from the (sharded) parts: the training step, and the validation pass with its KV cache
    resident = parts["weights"] + parts["lora_and_optimizer"] + parts.get("gathered_layers", 0.0)
    parts["training"] = resident + parts.get("gathered_head", 0.0) + parts["activations"] + parts["logits"]
    parts["validation"] = resident + parts.get("gathered_outer", 0.0) + parts["validation_batch"]
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
    """`--dry-run --processes N`: the per-GPU estimate, whether it fits (with the CUDA reserve), and what to lower
    when not; under FSDP it says what loading needs, before any sharding."""
    estimate = estimate_recipe(config, processes, seq_len)
    ok = estimate.needed_bytes <= gpu_memory_gib * GIB
    notes = [] if ok else [f"short by {estimate.needed_bytes / GIB - gpu_memory_gib:.1f} GiB per GPU (with "
                           f"{CUDA_RESERVE_GIB:g} GiB for the CUDA context): " + shortfall_advice(estimate)]
    if "load" in estimate.parts:
        notes.insert(0, load_note(estimate.parts))
    return {**estimate.as_dict(), "fits": ok, "gpu_memory_gib": gpu_memory_gib, "note": "; ".join(notes) or None,
            "sharded": config.training.fsdp}


def load_note(parts: dict[str, float]) -> str:
    """What FSDP needs per GPU while the model loads, beside what it needs once sharded."""
    sharded = max(parts["training"], parts["validation"])
    return (f"at load every GPU holds the whole model, {parts['load'] / GIB:.1f} GiB (+ {CUDA_RESERVE_GIB:g} GiB "
            "CUDA context): each process loads it onto its own GPU and FSDP shards it only then (transformers "
            f"loads bitsandbytes models on every rank); sharded, the run needs {sharded / GIB:.1f} GiB")


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
    elif parts.get("load", 0) >= max(parts["training"], parts["validation"]):
        advice.append(f"use GPUs with at least {(parts['load'] / GIB + CUDA_RESERVE_GIB):.0f} GiB each: more GPUs do "
                      "not lower what loading needs")
    elif weights > per_sample:
        advice.append("shard across more GPUs with FSDP (recipes/llama-3-70b-qlora-fsdp.yaml shows how)")
    return "; ".join(advice)
