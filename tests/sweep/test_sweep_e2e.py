"""Real cells end to end on the tiny offline LLaMA: train library + eval library, then resume and report."""

from __future__ import annotations

import json

import pytest
from sklearn.metrics import roc_auc_score

from tallrec_cli import sweep
from tallrec_cli.core.files import read_jsonl
from tallrec_cli.core.manifests import read_manifest
from tests.sweep.test_sweep_run import make_spec, statuses, write_dataset


class MustNotRun:
    def train(self, cell, cell_dir, config):
        raise AssertionError(f"cell {cell.id} should have been skipped")

    evaluate = train


def tiny_sweep_recipe(folder, model_dir):
    """A dataset and a recipe whose cells train the tiny LLaMA for 2 steps: (recipe path, data folder)."""
    data = write_dataset(folder / "data", train=24, valid=8, test=16)
    recipe = folder / "recipe.yaml"
    recipe.write_text(
        f"model: {{name: {model_dir}, dtype: float32}}\n"
        f"data: {{train: {data}, max_valid: 8}}\n"
        "prompt: {max_length: 256}\n"
        "training: {max_steps: 2, lr: 0.01, batch_size: 2, micro_batch_size: 2, eval_every: 2, eval_batch_size: 8}\n")
    return recipe, data


def test_two_real_tiny_cells_plus_zero_shot_then_resume_and_report(tmp_path, tiny_model_dir):
    recipe, data = tiny_sweep_recipe(tmp_path, tiny_model_dir)
    sweep_dir = tmp_path / "sweep"
    spec = make_spec(recipe, data, shots=[0, 4], seeds=[0, 1], test_limit=12)
    live = sweep.run_sweep(spec, sweep_dir)
    assert sorted(live.ran) == ["k4-s0", "k4-s1", "zero-shot"] and not live.failures
    assert set(statuses(sweep_dir).values()) == {"done"}

    run = read_manifest(sweep_dir / "cells" / "k4-s1", "train-run")
    assert run["data"]["shots"] == 4 and run["data"]["sample_seed"] == 1 and run["seed"] == 1
    evaluation = json.loads((sweep_dir / "cells" / "k4-s1" / "sweep-eval.json").read_text())
    movies = evaluation["tests"]["movies"]
    predictions = read_jsonl(sweep_dir / "cells" / "k4-s1" / movies["folder"] / "predictions.jsonl")
    labels, scores = [row["label"] for row in predictions], [row["p_yes"] for row in predictions]
    assert movies["records"] == len(predictions) == 12 and 0 < sum(labels) < 12
    assert movies["auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)  # not 1 - AUC, not another cell's
    assert read_manifest(sweep_dir / "cells" / "k4-s1" / movies["folder"], "eval")["test"]["limit"] == 12
    assert read_manifest(sweep_dir / "cells" / "zero-shot", "zero-shot-cell")["prompt"]["template"] == "alpaca"

    again = sweep.run_sweep(make_spec(recipe, data, shots=[0, 4], seeds=[0, 1], test_limit=12), sweep_dir,
                            runner=MustNotRun())
    assert again.ran == [] and sorted(again.skipped) == ["k4-s0", "k4-s1", "zero-shot"]
    live_json = (sweep_dir / "results.json").read_text()
    (sweep_dir / "results.json").unlink()
    assert sweep.build_report(sweep_dir)["summary"] == live.summary
    assert (sweep_dir / "results.json").read_text() == live_json
    methods = {row["method"] for row in live.summary}
    references = {*(f"equal-data {name}" for name in ("Popularity", "LogReg", "Bias (user+item)", "GBDT", "MF")),
                  "History share", "Bias (user+item) (full data)", "GBDT (full data)", "MF (full data)"}
    assert methods == {f"LoRA {tiny_model_dir.name}", *references}
    assert all(row["gauc_mean"] is not None for row in live.summary)  # every row carries per-user AUC
    # the real cells' predictions against every reference at N=4, paired over both seeds
    comparisons = live.report["comparisons"]
    assert sorted(row["reference"] for row in comparisons) == sorted(references)
    assert all(row["shots"] == 4 and row["seeds"] == [0, 1] and row["auc_diff"] is not None for row in comparisons)
    (finding,) = live.report["findings"]
    assert finding["shots"] == [4] and len(finding["equal_data"]) == 5 and len(finding["full_data"]) == 4
