"""`tallrec eval` and `tallrec predict` end to end on the tiny offline model (CliRunner)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from tallrec_cli.cli.app import app
from tallrec_cli.core.errors import TallrecError
from tallrec_cli.core.files import read_jsonl
from tallrec_cli.core.integrity import adapter_hashes
from tallrec_cli.core.manifests import (
    BestStep,
    RunMetrics,
    data_hashes,
    read_manifest,
    run_data,
    train_run_manifest,
)
from tallrec_cli.train.config import load_train_config
from tests.model.test_scoring_prompts import movie_records, sharpen


def invoke(*args: str):
    return CliRunner().invoke(app, [str(arg) for arg in args])


def error_of(result) -> TallrecError:
    assert isinstance(result.exception, TallrecError), result.output
    return result.exception


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with spread-out P(yes), saved as a local model folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tallrec_cli.model.prompts import load_template, resolve_label_tokens

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    labels = resolve_label_tokens(tokenizer, load_template("alpaca"))
    sharpen(model, (labels.positive_id, labels.negative_id))
    folder = tmp_path_factory.mktemp("sharp-llama")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def make_run(model_dir, folder, hidden_size=None, data=None):
    """A finished train-run folder with a real LoRA adapter (B initialised nonzero), trained on ``data`` (a
    dataset folder; default: a small one beside the run)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tallrec_cli.model.loading import base_model_config_summary
    from tallrec_cli.model.prompts import load_template, resolve_label_tokens

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(2)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    peft_model.save_pretrained(folder / "adapter")
    summary = base_model_config_summary(base)
    if hidden_size:
        summary["hidden_size"] = hidden_size
    labels = resolve_label_tokens(AutoTokenizer.from_pretrained(model_dir), load_template("alpaca"))
    if data is None:
        data = folder.parent / f"{folder.name}-data"
        data.mkdir(parents=True, exist_ok=True)
        for split in ("train", "valid"):
            write_jsonl(data / f"{split}.jsonl", movie_records(12))
    config = load_train_config(None, {"model": {"name": str(model_dir)}, "lora": {"r": 4, "alpha": 8},
                                      "data": {"train": str(data)}})
    train_run_manifest(config, base_model={"kind": "local", "name": str(model_dir)}, base_model_config=summary,
                       labels=labels.as_dict(), dtype="float32",
                       data=run_data(config, 16, 8, 0, data_hashes(config.data.train, None)),
                       best=BestStep(4, 0.6), metrics=RunMetrics(0.6), wall_seconds=1.0,
                       files=adapter_hashes(folder)).write(folder)
    return folder


def test_eval_writes_metrics_predictions_plots_and_manifest_per_test(model_dir, tmp_path):
    records = movie_records(12)
    movie = write_jsonl(tmp_path / "movie_test.jsonl", records)
    book = tmp_path / "tallrec-book" / "test.json"
    book.parent.mkdir()
    book.write_text(json.dumps([{key: r[key] for key in ("instruction", "input")} | {"output": "Yes." if r["label"] else "No."}
                                for r in records[:6]]))
    out = tmp_path / "results"
    result = invoke("eval", "--model", model_dir, "--test", movie, "--test", book, "--output", out,
                    "--dtype", "float32", "--plots", "--bootstrap", "200")
    assert result.exit_code == 0, result.output
    assert "movie_test" in result.output and "tallrec-book-test" in result.output and "pair" in result.output
    folder = out / "movie_test"
    metrics = json.loads((folder / "metrics.json").read_text())
    predictions = read_jsonl(folder / "predictions.jsonl")
    assert [row["id"] for row in predictions] == [r["id"] for r in records]
    assert [row["label"] for row in predictions] == [r["label"] for r in records]
    assert metrics["score_mode"] == "pair" and metrics["records"] == 12 and metrics["positives"] == 4
    from sklearn.metrics import roc_auc_score
    assert metrics["auc"] == pytest.approx(roc_auc_score([r["label"] for r in records], [r["p_yes"] for r in predictions]))
    assert metrics["gauc_users"] == 4 and metrics["scoring"]["prefix_tokens"] > 0
    manifest = read_manifest(folder, "eval")
    assert manifest["metrics"]["auc"] == metrics["auc"] and manifest["test"]["sha256"]
    assert {"roc.png", "reliability.png", "metrics.json", "predictions.jsonl"} <= set(manifest["files"])
    book_metrics = json.loads((out / "tallrec-book-test" / "metrics.json").read_text())
    assert book_metrics["gauc"] is None and any("user_id" in note for note in book_metrics["notes"])
    # TALLRec's mode is a different number, labelled as such
    result = invoke("eval", "--model", model_dir, "--test", movie, "--output", tmp_path / "tallrec", "--dtype",
                    "float32", "--score", "tallrec", "--bootstrap", "0")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "tallrec" / "movie_test" / "metrics.json").read_text())["score_mode"] == "tallrec"


def test_eval_of_a_run_folder_uses_its_adapter_and_writes_into_the_run(model_dir, tmp_path):
    run = make_run(model_dir, tmp_path / "run")
    test = write_jsonl(tmp_path / "movie_test.jsonl", movie_records(8))
    result = invoke("eval", "--adapter", run, "--test", test, "--dtype", "float32", "--bootstrap", "0")
    assert result.exit_code == 0, result.output
    tuned = read_jsonl(run / "eval" / "movie_test" / "predictions.jsonl")
    manifest = read_manifest(run / "eval" / "movie_test", "eval")
    assert manifest["adapter"].endswith("adapter") and manifest["prompt"]["template"] == "alpaca"
    invoke("eval", "--model", model_dir, "--test", test, "--output", tmp_path / "base", "--dtype", "float32")
    base = read_jsonl(tmp_path / "base" / "movie_test" / "predictions.jsonl")
    assert not np.allclose([row["p_yes"] for row in tuned], [row["p_yes"] for row in base], atol=1e-3)
    again = invoke("eval", "--adapter", run, "--test", test, "--dtype", "float32")
    assert "already exists" in error_of(again).message


def test_one_class_test_reports_the_rest(model_dir, tmp_path):
    test = write_jsonl(tmp_path / "positives.jsonl", [r | {"label": 1} for r in movie_records(5)])
    result = invoke("eval", "--model", model_dir, "--test", test, "--output", tmp_path / "out", "--dtype", "float32")
    assert result.exit_code == 0, result.output
    assert "AUC is undefined" in result.output
    metrics = json.loads((tmp_path / "out" / "positives" / "metrics.json").read_text())
    assert metrics["auc"] is None and metrics["log_loss"] > 0 and metrics["accuracy"] is not None


@pytest.mark.parametrize("content, message", [
    ("", "no records"),
    (json.dumps({"instruction": "x", "output": "Yes."}) + "\n", "lacks text field(s) input"),
])
def test_bad_test_files_are_clear_errors(model_dir, tmp_path, content, message):
    test = tmp_path / "bad.jsonl"
    test.write_text(content)
    result = invoke("eval", "--model", model_dir, "--test", test, "--output", tmp_path / "out")
    assert message in error_of(result).message


def test_label_words_that_are_not_single_tokens_are_refused(model_dir, tmp_path):
    test = write_jsonl(tmp_path / "t.jsonl", movie_records(4))
    result = invoke("eval", "--model", model_dir, "--test", test, "--output", tmp_path / "out",
                    "--label-words", "Absolutely,No")
    assert "not a single token" in error_of(result).message


def test_adapter_trained_on_another_base_names_both(model_dir, tmp_path):
    run = make_run(model_dir, tmp_path / "run", hidden_size=4096)
    test = write_jsonl(tmp_path / "t.jsonl", movie_records(4))
    error = error_of(invoke("eval", "--adapter", run, "--model", model_dir, "--test", test))
    assert "hidden_size: 4096 vs 32" in error.message and str(model_dir) in error.message


def test_predict_csv_with_ranking(model_dir, tmp_path):
    source = tmp_path / "candidates.csv"
    with open(source, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["user", "liked", "disliked", "candidate", "label"])
        writer.writerow(["u1", "Toy Story (1995)|Star Wars (1977)", "Heat (1995)", "Fargo (1996)", 1])
        writer.writerow(["u1", '["Toy Story (1995)", "Star Wars (1977)"]', "", "Heat (1995)", 0])
        writer.writerow(["u1", "Toy Story (1995)|Star Wars (1977)", "Heat (1995)", "Star Wars (1977)", 0])
        writer.writerow(["u2", "Fargo (1996)", "", "Toy Story (1995)", 1])
        writer.writerow(["u2", "Fargo (1996)", "", "Heat (1995)", 0])
    output = tmp_path / "preds.csv"
    result = invoke("predict", "--model", model_dir, "--input", source, "--output", output, "--dtype", "float32",
                    "--rank", "--k", "1,2")
    assert result.exit_code == 0, result.output
    assert "HR@K" in result.output and "NDCG@K" in result.output
    with open(output) as handle:
        rows = list(csv.DictReader(handle))
    assert [row["candidate"] for row in rows][:2] == ["Fargo (1996)", "Heat (1995)"]
    for user in ("u1", "u2"):
        mine = sorted((row for row in rows if row["user"] == user), key=lambda row: int(row["rank"]))
        assert [float(row["p_yes"]) for row in mine] == sorted((float(row["p_yes"]) for row in mine), reverse=True)


def test_predict_builds_the_data_stage_wording_and_accepts_tallrec_records(model_dir, tmp_path):
    from tallrec_cli.eval.predict import candidate_prompt_parts

    built = candidate_prompt_parts({"liked": ["Toy Story (1995)", "Fargo (1996)"], "disliked": "Heat (1995)",
                                    "candidate": "Star Wars (1977)"}, "movie")
    assert built["input"] == ('User Preference: "Toy Story (1995)", "Fargo (1996)"\nUser Unpreference: "Heat (1995)"\n'
                              'Whether the user will like the target movie "Star Wars (1977)"?')
    record = movie_records(1)[0]
    assert candidate_prompt_parts({"instruction": record["instruction"], "input": record["input"]}) == \
        {"instruction": record["instruction"], "input": record["input"]}
    source = write_jsonl(tmp_path / "records.jsonl", movie_records(3) + [built])
    output = tmp_path / "preds.jsonl"
    result = invoke("predict", "--model", model_dir, "--input", source, "--output", output, "--dtype", "float32")
    assert result.exit_code == 0, result.output
    rows = read_jsonl(output)
    assert len(rows) == 4 and all(0 <= row["p_yes"] <= 1 for row in rows)
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"liked": "x"}])
    assert "neither a candidate" in error_of(invoke("predict", "--model", model_dir, "--input", bad,
                                                    "--output", output, "--overwrite")).message


def test_baselines_alone_write_eval_folders_and_need_training_data(tmp_path):
    from tests.sweep.test_sweep_run import write_dataset

    data = write_dataset(tmp_path / "data")
    out = tmp_path / "ref"
    result = invoke("eval", "--baseline", "history-share", "--baseline", "popularity", "--train", data,
                    "--test", data, "-o", out, "--bootstrap", "100")
    assert result.exit_code == 0, result.output
    records = read_jsonl(data / "test.jsonl")
    metrics = json.loads((out / "history-share" / "data-test" / "metrics.json").read_text())
    from sklearn.metrics import roc_auc_score
    shares = [(sum(i["liked"] for i in r["history"]) + 1) / (len(r["history"]) + 2) for r in records]
    assert metrics["auc"] == pytest.approx(roc_auc_score([r["label"] for r in records], shares))
    assert metrics["score_mode"] == "baseline:history-share" and metrics["users"] == 5
    manifest = read_manifest(out / "popularity" / "data-test", "eval")
    assert manifest["baseline"] == "popularity" and manifest["train"] == str(data)
    missing = invoke("eval", "--baseline", "gbdt", "--test", data, "-o", tmp_path / "x")
    assert "--train" in error_of(missing).message and not (tmp_path / "x").exists()
    both = invoke("eval", "--model", "smollm2-135m", "--baseline", "gbdt", "--test", data, "-o", tmp_path / "y")
    assert "--compare" in error_of(both).message


def test_compare_puts_model_base_and_baselines_on_the_same_records(model_dir, tmp_path):
    from tests.sweep.test_sweep_run import write_dataset

    data = write_dataset(tmp_path / "data")
    run = make_run(model_dir, tmp_path / "run")
    result = invoke("eval", "--adapter", run, "--test", data, "--train", data, "--dtype", "float32",
                    "--compare", "base,history-share", "--compare", "gbdt", "--bootstrap", "200")
    assert result.exit_code == 0, result.output
    assert "ΔAUC" in result.output and "ΔGAUC" in result.output
    folder = run / "eval" / "data-test"
    comparison = json.loads((folder / "comparison.json").read_text())
    assert [row["name"] for row in comparison["rows"]] == ["model", "base", "history-share", "gbdt"]
    model_metrics = json.loads((folder / "metrics.json").read_text())
    assert comparison["rows"][0]["metrics"]["auc"] == pytest.approx(model_metrics["auc"])
    rows = read_jsonl(folder / "comparison_predictions.jsonl")
    assert len(rows) == 24 and not np.allclose([r["model"] for r in rows], [r["base"] for r in rows], atol=1e-3)
    diff = comparison["rows"][1]["difference"]
    assert diff["auc_diff"] == pytest.approx(comparison["rows"][0]["metrics"]["auc"] - comparison["rows"][1]["metrics"]["auc"])
    assert diff["auc_diff_ci95"][0] <= diff["auc_diff"] <= diff["auc_diff_ci95"][1]
    assert {"comparison.json", "comparison_predictions.jsonl"} <= set(read_manifest(folder, "eval")["files"])
