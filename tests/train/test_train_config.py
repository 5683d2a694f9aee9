"""Recipes, overrides, pre-flight checks, truncation, label tokens and dry run: no weights loaded."""

from __future__ import annotations

from pathlib import Path

import pytest

from tallrec_cli.core.config import parse_overrides
from tallrec_cli.core.errors import ConfigError, ModelError
from tallrec_cli.train.capacity import KNOWN_ARCHITECTURES, config_from_shape, count_parameters, dry_run
from tallrec_cli.train.config import eval_interval, load_train_config, preflight
from tallrec_cli.train.data import fit_record
from tests.train_helpers import MOVIE_TEMPLATE, record, tiny_config, write_dataset

RECIPES = sorted((Path(__file__).resolve().parents[2] / "recipes").glob("*.yaml"))


def test_recipes_folder_has_the_issue_recipes():
    names = {path.name for path in RECIPES}
    assert {"smollm2-135m-lora.yaml", "tallrec-llama-7b.yaml", "llama-2-7b-qlora.yaml", "llama-3-8b-qlora.yaml",
            "qwen2.5-7b-qlora.yaml"} <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: path.name)
def test_every_recipe_parses_and_documents_command_and_memory(recipe):
    config = load_train_config(recipe)
    head = recipe.read_text().splitlines()[:3]
    assert head[0].startswith(f"# tallrec train recipes/{recipe.name}")
    assert any("Memory:" in line for line in head)
    assert config.training.batch_size % config.training.micro_batch_size == 0


def test_tallrec_recipe_matches_the_paper_setup():
    config = load_train_config(RECIPES[0].parent / "tallrec-llama-7b.yaml")
    assert (config.model.quantization, config.lora.r, config.lora.alpha, config.lora.dropout) == ("8bit", 8, 16, 0.05)
    assert config.lora.target_modules == ["q_proj", "v_proj"]
    # TALLRec's micro-batch 32 x 512 is at the edge of a 24 GiB card; 16 gives the same effective batch of 128
    assert (config.training.lr, config.training.batch_size, config.training.micro_batch_size) == (1e-4, 128, 16)
    assert (config.training.epochs, config.training.patience, config.training.warmup_steps) == (200, 10, 20)
    assert (config.prompt.max_length, config.prompt.loss, config.prompt.template) == (512, "full", "tallrec-exact")
    assert config.training.eval_every == "auto" and config.training.group_by_length


def test_default_config_is_the_default_recipe():
    from tallrec_cli.core.config import to_dict

    assert to_dict(load_train_config()) == to_dict(load_train_config(RECIPES[0].parent / "smollm2-135m-lora.yaml"))


def test_overrides_apply_and_coerce():
    config = load_train_config(None, parse_overrides(["lora.r=16", "lora.target_modules=all-linear",
                                                      "training.eval_every=auto", "data.shots=null"]))
    assert config.lora.r == 16 and config.lora.peft_targets() == "all-linear"
    assert config.training.eval_every == "auto" and config.data.shots is None


def test_every_problem_reported_at_once_with_valid_keys():
    with pytest.raises(ConfigError) as error:
        load_train_config(None, parse_overrides(["lora.rank=4", "prompt.loss=tokens", "training.seed=abc"]))
    message = error.value.message
    assert "unknown key 'lora.rank'" in message and "valid keys here: r, alpha" in message
    assert "prompt.loss" in message and "training.seed" in message
    with pytest.raises(ConfigError) as error:  # value checks run once the types are right
        load_train_config(None, parse_overrides(["training.batch_size=6", "training.micro_batch_size=4",
                                                 "training.eval_every=sometimes", "lora.dropout=1.5"]))
    message = error.value.message
    assert "multiple of" in message and "eval_every" in message and "lora.dropout" in message


def test_preflight_lists_all_input_problems_before_loading(tmp_path):
    (tmp_path / "train.jsonl").write_text("")
    config = load_train_config(None, parse_overrides([
        f"data.train={tmp_path / 'train.jsonl'}", f"data.valid={tmp_path / 'missing.jsonl'}", f"model.name={tmp_path / 'no-model'}",
        f"lora.init_adapter={tmp_path}", f"output.dir={tmp_path / 'run'}"]))
    with pytest.raises(ConfigError) as error:
        preflight(config)
    message = error.value.message
    assert "data.valid" in message and "missing.jsonl does not exist" in message
    assert "model.name" in message and "lora.init_adapter" in message


def test_preflight_refuses_a_bitsandbytes_older_than_transformers_minimum(tmp_path, tiny_model_dir, old_bitsandbytes):
    from transformers.utils.import_utils import BITSANDBYTES_MIN_VERSION

    data = write_dataset(tmp_path / "data")
    with pytest.raises(ConfigError, match=f"model.quantization: 4bit: bitsandbytes 0.45.0 is older than "
                                          f"{BITSANDBYTES_MIN_VERSION}"):
        preflight(tiny_config(tiny_model_dir, data, tmp_path / "run", model__quantization="4bit",
                              model__dtype="bfloat16"))
    preflight(tiny_config(tiny_model_dir, data, tmp_path / "run"))  # unquantized runs do not need it


def test_finished_run_is_refused_unless_overwrite(tmp_path, tiny_model_dir):
    data = write_dataset(tmp_path / "data")
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text("{}")
    with pytest.raises(ConfigError, match="already holds a finished run"):
        preflight(tiny_config(tiny_model_dir, data, run))
    preflight(tiny_config(tiny_model_dir, data, run, output__overwrite=True))
    with pytest.raises(ConfigError, match="finished run"):
        preflight(tiny_config(tiny_model_dir, data, run), resume=True)


def test_eval_interval_follows_tallrec_rule():
    assert eval_interval("auto", 64) == 10 and eval_interval("auto", 128) == 10
    assert eval_interval("auto", 1024) == 40 and eval_interval(3, 1024) == 3


def test_truncation_drops_oldest_history_and_keeps_answer(tiny_model_dir):
    from tallrec_cli.model.loading import load_tokenizer, resolve_model_source
    from tallrec_cli.model.prompts import load_template

    tokenizer = load_tokenizer(resolve_model_source(str(tiny_model_dir)))
    template = load_template("alpaca")
    long_record = record(0, 1, history=30)
    completion = "Yes." + tokenizer.eos_token
    full = len(tokenizer(template.render(long_record, tokenizer) + completion)["input_ids"])
    fitted, cut = fit_record(long_record, tokenizer, template, completion, full - 20, MOVIE_TEMPLATE)
    assert cut
    assert len(tokenizer(template.render(fitted, tokenizer) + completion)["input_ids"]) <= full - 20
    assert fitted["input"].endswith('target movie "Toy Story (1995)"?')
    kept = fitted["input"].split("\n")[0]
    assert long_record["input"].split("\n")[0].endswith(kept.split("User Preference: ")[1])  # oldest dropped
    same, cut = fit_record(long_record, tokenizer, template, completion, full, MOVIE_TEMPLATE)
    assert not cut and same is long_record


def test_label_tokens_resolve_and_split_words_fail(tiny_model_dir):
    from tallrec_cli.model.loading import load_tokenizer, resolve_model_source
    from tallrec_cli.model.prompts import load_template, resolve_label_tokens

    tokenizer = load_tokenizer(resolve_model_source(str(tiny_model_dir)))
    template = load_template("alpaca")
    labels = resolve_label_tokens(tokenizer, template, "Yes", "No", outputs=("Yes.", "No."))
    assert labels.positive_id != labels.negative_id
    with pytest.raises(ModelError, match="not a single token"):
        resolve_label_tokens(tokenizer, template, "Absolutely", "No")


def test_dry_run_estimates_without_loading_weights(tmp_path, tiny_model_dir, monkeypatch):
    import tallrec_cli.model.loading as models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("dry run loaded weights"))
    config = tiny_config(tiny_model_dir, write_dataset(tmp_path / "data"), tmp_path / "run")
    result = dry_run(config, gpu_memory_gib=0.001)
    assert result["parameters"]["lora"] > 0 and result["data"]["train_records"] == 16
    assert set(result["memory_gib"]) == {"weights", "lora_and_optimizer", "activations", "logits", "training",
                                         "validation_batch", "validation", "total"}
    assert not result["fits"] and "exceeds" in result["notes"][-1]
    assert not (tmp_path / "run").exists()


def test_seven_b_estimates_scale_with_quantization():
    from tallrec_cli.train.capacity import estimate_memory

    shape = config_from_shape("llama-7b")
    config = load_train_config(RECIPES[0].parent / "llama-2-7b-qlora.yaml")
    counts = count_parameters(shape, config.lora)
    assert 6.5e9 < counts["total"] < 7e9 and counts["adapted_modules"] == 7 * 32
    four = estimate_memory(shape, counts, config, 512)["weights"]
    eight = estimate_memory(shape, counts, load_train_config(None, {"model": {"quantization": "8bit"}}), 512)["weights"]
    assert four < eight < counts["total"] * 2
    assert set(KNOWN_ARCHITECTURES) >= {"llama-7b", "llama-3-8b", "qwen2.5-7b"}


def test_a_train_config_loads_without_the_trainer():
    """`tallrec doctor`, sweeps and --dry-run read configs: importing them loads no ML framework."""
    import subprocess
    import sys

    code = ("import sys; from tallrec_cli.train.config import load_train_config; load_train_config(None); "
            "print(sorted(m for m in ('trl', 'transformers', 'torch', 'peft', 'tallrec_cli.train.run') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
