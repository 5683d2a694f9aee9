"""Will a recipe fit? The `--dry-run` memory estimate of `tallrec_cli.train` as a typed result, per GPU
(with FSDP the sharded parts divide by the number of processes), and advice for a recipe that does not fit.

Used by `tallrec doctor RECIPE`, `tallrec train --dry-run --processes N` and bench/gpu_check.py; no weights
are loaded (the model is built on the meta device from its config).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

GIB = 1024 ** 3
SHIPPED_CONFIGS = ("use recipes/accelerate/fsdp2-2gpu.yaml, fsdp2-4gpu.yaml or fsdp2-2nodes.yaml from tallrec-cli, "
                   "or a file written by `accelerate config`")
# Under FSDP these parts are sharded across processes; activations and logits are per process.
SHARDED_PARTS = ("weights", "lora_and_optimizer")
TRAINING_PARTS = ("weights", "lora_and_optimizer", "activations", "logits")


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak GPU bytes per process, by part (see `tallrec_cli.train.estimate_memory`)."""
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
    from tallrec_cli.train import count_parameters, estimate_memory, model_config_for

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

    from tallrec_cli.errors import ConfigError

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
