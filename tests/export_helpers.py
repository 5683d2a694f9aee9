"""Build train-run folders per docs/CONTRACTS.md without training: base model + LoRA with non-zero B."""

from __future__ import annotations

import json
from pathlib import Path

from tallrec_cli.export.merged import SAMPLE_RECORDS

LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def write_valid_data(folder: Path, copies: int = 3) -> Path:
    """A small labelled validation split (JSON lines) for merge verification."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "valid.jsonl"
    records = [dict(record, output="Yes." if record["label"] else "No.", id=f"r{i}")
               for i, record in enumerate(SAMPLE_RECORDS * copies)]
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def make_train_run(run_dir: Path, base: str, quantization: str = "none", r: int = 8,
                   targets: tuple[str, ...] = LLAMA_TARGETS, valid: Path | None = None, seed: int = 0,
                   save_tokenizer: bool = True, dtype: str = "float32",
                   device: str = "cpu") -> Path:
    """A finished run folder: RUN/adapter (PEFT safetensors + tokenizer) and a train-run manifest."""
    import torch
    from peft import LoraConfig, get_peft_model

    from tallrec_cli.core.integrity import adapter_hashes
    from tallrec_cli.core.manifests import BestStep, RunData, RunMetrics, split_sha256, train_run_manifest
    from tallrec_cli.model.loading import (
        base_model_config_summary,
        load_model,
        load_tokenizer,
        model_identity,
        resolve_model_source,
    )
    from tallrec_cli.model.prompts import load_template, resolve_label_tokens
    from tallrec_cli.train.config import load_train_config

    source = resolve_model_source(base)
    tokenizer = load_tokenizer(source)
    model = load_model(source, dtype, quantization, device=device)
    lora = dict(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules=list(targets))
    peft_model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", bias="none", **lora))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:  # B starts at zero; a trained adapter has moved it
                parameter.copy_(torch.randn(parameter.shape, generator=generator).to(parameter) * 0.05)
    adapter_dir = run_dir / "adapter"
    peft_model.save_pretrained(adapter_dir, safe_serialization=True)
    if save_tokenizer:
        tokenizer.save_pretrained(adapter_dir)
    template = load_template("alpaca")
    labels = resolve_label_tokens(tokenizer, template, outputs=("Yes.", "No."))
    config = load_train_config(None, {  # the manifest's dtype field records the resolved one
        "model": {"name": base, "quantization": quantization},
        "lora": {"r": r, "alpha": 2 * r, "dropout": 0.0, "target_modules": list(targets)},
        "data": {"shots": 16, "sample_seed": seed, **({"train": str(valid), "valid": str(valid)} if valid else {})},
        "training": {"seed": seed}})
    path = str(valid) if valid else None
    data = RunData(train=path, valid=path, shots=16, sample_seed=seed, train_records=16, valid_records=24,
                   train_sha256=split_sha256(path, "valid"), valid_sha256=split_sha256(path, "valid"),
                   dataset_manifest_sha256="0" * 64, name="tiny-movies")
    train_run_manifest(config, base_model=model_identity(source), base_model_config=base_model_config_summary(model),
                       labels=labels.as_dict(), dtype=dtype, data=data, best=BestStep(4, 0.625),
                       metrics=RunMetrics(0.625, 0.69), wall_seconds=1.0, files=adapter_hashes(run_dir)).write(run_dir)
    return run_dir
