"""End to end on the embedded SmolLM2: train briefly, export both ways, reload, same P(yes) everywhere."""

from __future__ import annotations

import json

import numpy as np
import pytest


@pytest.mark.slow
def test_train_export_reload_same_p_yes(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tallrec_cli.export.adapter import export_adapter
    from tallrec_cli.export.merged import export_merged
    from tallrec_cli.model.loading import load_for_inference, load_tokenizer, resolve_model_source
    from tallrec_cli.model.prompts import LabelTokens, load_template
    from tallrec_cli.model.scoring import score_prompts
    from tallrec_cli.train.config import load_train_config
    from tallrec_cli.train.run import run_training
    from tests.train_helpers import write_dataset

    data = write_dataset(tmp_path / "data", train=8, valid=8)
    config = load_train_config(None, {
        "model": {"name": "smollm2-135m", "dtype": "float32"},
        "lora": {"target_modules": ["q_proj", "v_proj", "up_proj"]},
        "data": {"train": str(data), "shots": None, "max_valid": None},
        "prompt": {"max_length": 192},
        "training": {"max_steps": 2, "lr": 0.01, "batch_size": 4, "micro_batch_size": 4, "warmup_steps": 0,
                     "eval_every": 2, "eval_batch_size": 8},
        "output": {"dir": str(tmp_path / "run")},
    })
    run_training(config)
    run = tmp_path / "run"

    adapter = export_adapter(run, tmp_path / "adapter")
    assert adapter.base == "HuggingFaceTB/SmolLM2-135M-Instruct" and adapter.vllm.compatible
    assert "vllm serve HuggingFaceTB/SmolLM2-135M-Instruct --enable-lora" in (adapter.path / "README.md").read_text()
    merged = export_merged(run, tmp_path / "merged", dtype="float32")
    assert merged.verification.ok and merged.verification.prompts_source.endswith("data")

    records = [json.loads(line) for line in (data / "valid.jsonl").read_text().splitlines()]
    manifest = json.loads((run / "manifest.json").read_text())
    labels = LabelTokens(**manifest["labels"])
    source = resolve_model_source("smollm2-135m")
    tokenizer = load_tokenizer(source)
    prompts = [load_template("alpaca").render(record, tokenizer) for record in records]

    def p_yes(model):
        return score_prompts(model, tokenizer, prompts, labels)

    with_adapter = load_for_inference(adapter=str(run), dtype="float32", device="cpu")
    from_merged = load_for_inference(model=str(merged.path), dtype="float32", device="cpu")
    assert from_merged.template == "alpaca"
    plain_peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(source.path), str(adapter.path))
    reference = p_yes(with_adapter.model)
    base_only = p_yes(AutoModelForCausalLM.from_pretrained(source.path))
    assert np.abs(reference - base_only).max() > 1e-4  # training moved the scores
    np.testing.assert_allclose(p_yes(from_merged.model), reference, atol=1e-4)
    np.testing.assert_allclose(p_yes(plain_peft), reference, atol=1e-5)
