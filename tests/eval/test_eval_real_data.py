"""Zero-shot AUC of the embedded SmolLM2 on real TALLRec book and MovieLens-100K test records."""

from __future__ import annotations

import json

import pytest

SLICE = 200


@pytest.mark.slow
def test_zero_shot_auc_of_smollm2_on_real_test_records(real_data, tmp_path):
    from data_builders import load_split, sample_records
    from data_builders.build import build_config, build_dataset
    from tallrec_cli.eval.score import evaluate_records
    from tallrec_cli.model.loading import load_for_inference
    from tallrec_cli.model.scoring import resolve_scoring

    build_dataset(build_config("movielens-100k", "tallrec", {"path": str(real_data / "ml-100k"),
                                                             "output": str(tmp_path / "ml-100k")}))
    tests = {"tallrec-book": load_split(real_data / "tallrec-book" / "test.json", "test"),
             "movielens-100k": load_split(tmp_path / "ml-100k", "test")}
    inference = load_for_inference("smollm2-135m")
    results = {}
    for name, records in tests.items():
        chosen = sample_records(records, SLICE, seed=0)
        _, metrics = evaluate_records(inference, chosen, resolve_scoring(inference), resamples=1000)
        results[name] = {key: metrics[key] for key in ("records", "positives", "auc", "auc_ci95", "gauc", "log_loss",
                                                        "accuracy", "ece")}
        results[name]["prompts_per_s"] = metrics["scoring"]["prompts_per_s"]
        assert metrics["records"] == SLICE and 0.3 < metrics["auc"] < 0.8  # zero-shot: near chance, not broken
    print("\nzero-shot smollm2-135m (pair mode, alpaca template):\n" + json.dumps(results, indent=2))
