"""End to end on the embedded SmolLM2 and real MovieLens-100K records (minutes: marked slow)."""

from __future__ import annotations

import json

import pytest

from tallrec_cli.train.config import load_train_config
from tallrec_cli.train.run import run_training


@pytest.mark.slow
def test_smollm2_short_run_on_movielens_100k(tmp_path, real_data):
    from peft import PeftModel
    from sklearn.metrics import log_loss, roc_auc_score

    from data_builders.build import build_config, build_dataset
    from tallrec_cli.model.loading import load_model, load_tokenizer, resolve_model_source
    from tallrec_cli.model.prompts import load_template
    from tallrec_cli.train.data import prepare_data
    from tests.reference_scores import plain_p_yes

    dataset = tmp_path / "ml-100k"
    build_dataset(build_config("movielens-100k", "tallrec", {"path": str(real_data / "ml-100k"), "output": str(dataset)}))
    run = tmp_path / "run"
    config = load_train_config(None, {
        "model": {"dtype": "float32"},  # as the plain-transformers reference below computes
        "data": {"train": str(dataset), "shots": 32, "max_valid": 48, "sample_seed": 0},
        "training": {"epochs": 1, "max_steps": 2, "batch_size": 8, "micro_batch_size": 8, "eval_every": 1,
                     "warmup_steps": 0},
        "output": {"dir": str(run)},
    })
    summary = run_training(config)
    assert summary["steps"] == 2 and summary["valid_records"] == 48 and summary["train_records"] == 32
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [0, 1, 2]
    assert all(row["val_loss"] > 0 for row in rows)
    assert rows[0]["train_loss"] is None and all(row["train_loss"] > 0 for row in rows[1:])
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["data"]["dataset_manifest_sha256"] and manifest["base_model"]["gguf_sha256"]
    assert manifest["metrics"]["val_auc"] == summary["best_val_auc"]
    assert manifest["metrics"]["start_val_auc"] == rows[0]["val_auc"] == summary["start_val_auc"]

    base = load_model(resolve_model_source("smollm2-135m"), dtype="float32")
    # Validation AUC against scikit-learn on P(yes) computed the plain way, before training (the base) and for
    # the adapter kept as best: a Yes/No swap would give 1 - AUC.
    tokenizer = load_tokenizer(resolve_model_source("smollm2-135m"))
    data = prepare_data(config, tokenizer, load_template(config.prompt.template))
    assert len(data.valid_prompts) == 48
    base_scores = plain_p_yes(base, tokenizer, data.valid_prompts)
    assert rows[0]["val_auc"] == pytest.approx(roc_auc_score(data.valid_labels, base_scores), abs=1e-4)
    assert rows[0]["val_loss"] == pytest.approx(log_loss(data.valid_labels, base_scores), abs=1e-4)
    model = PeftModel.from_pretrained(base, run / "adapter")
    assert sum("lora_B" in name for name, _ in model.named_parameters()) == 2 * base.config.num_hidden_layers
    tuned_scores = plain_p_yes(model, tokenizer, data.valid_prompts)
    assert summary["best_val_auc"] == pytest.approx(roc_auc_score(data.valid_labels, tuned_scores), abs=1e-4)
