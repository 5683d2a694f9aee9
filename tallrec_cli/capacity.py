"""Will a recipe fit? The `--dry-run` memory estimate of `tallrec_cli.train` as a typed result, per GPU
(with FSDP the sharded parts divide by the number of processes), and advice for a recipe that does not fit.

Used by `tallrec doctor RECIPE`, `tallrec train --dry-run --processes N` and bench/gpu_check.py; no weights
are loaded (the model is built on the meta device from its config).
"""

from __future__ import annotations

from dataclasses import dataclass, field

GIB = 1024 ** 3
# Under FSDP these parts are sharded across processes; activations and logits are per process.
SHARDED_PARTS = ("weights", "lora_and_optimizer")


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak GPU bytes per process, by part (see `tallrec_cli.train.estimate_memory`)."""
    parts: dict[str, float]
    processes: int
    sequence_length: int
    settings: dict[str, object] = field(default_factory=dict)

    @property
    def total_bytes(self) -> float:
        return sum(self.parts.values())

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
    from tallrec_cli.train import count_parameters, estimate_memory, model_config_for

    model_config = model_config_for(config)
    counts = count_parameters(model_config, config.lora)
    length = seq_len or config.prompt.max_length
    parts = {key: value for key, value in estimate_memory(model_config, counts, config, length).items() if key != "total"}
    count = processes or 1
    if getattr(config.training, "fsdp", False):
        parts = shard(parts, count, model_config.num_hidden_layers)
    settings = {"micro_batch_size": config.training.micro_batch_size, "max_length": length,
                "quantization": config.model.quantization,
                "gradient_checkpointing": config.training.gradient_checkpointing,
                "fsdp": getattr(config.training, "fsdp", False)}
    return MemoryEstimate(parts, count, length, settings)


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
