"""Adapter export: PEFT round trip without tallrec, card, manifest, vLLM check, and refusals."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from tallrec_cli.core.errors import ArtifactError, ModelError
from tallrec_cli.core.files import file_hashes
from tallrec_cli.core.integrity import adapter_hashes
from tallrec_cli.core.manifests import read_manifest
from tallrec_cli.export.adapter import export_adapter
from tallrec_cli.export.vllm import check_vllm_compatibility
from tests.conftest import build_tiny_llama
from tests.export_helpers import make_train_run, write_valid_data

PLAIN_PEFT_SCRIPT = textwrap.dedent("""
    import json, sys
    import torch
    from peft import AutoPeftModelForCausalLM, PeftModel
    from transformers import AutoModelForCausalLM

    export, base, ids = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    inputs = torch.tensor([ids])
    with torch.no_grad():
        via_peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), export)(inputs).logits
        via_auto = AutoPeftModelForCausalLM.from_pretrained(export)(inputs).logits
    assert not [name for name in sys.modules if name.startswith(("tallrec_cli", "adapters"))]
    print(json.dumps({"peft": via_peft[0, -1].tolist(), "auto": via_auto[0, -1].tolist()}))
""")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_model_dir) -> Path:
    root = tmp_path_factory.mktemp("adapter-run")
    return make_train_run(root / "run", str(tiny_model_dir), valid=write_valid_data(root / "data"))


def _card_meta(folder: Path) -> dict:
    text = (folder / "README.md").read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_adapter_export_layout_card_and_manifest(tiny_run, tiny_model_dir, tmp_path):
    result = export_adapter(tiny_run, tmp_path / "export", name="tiny-movies-lora")
    folder = result.path
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "manifest.json"} <= {
        p.name for p in folder.iterdir()}
    assert not result.tokenizer_included and not (folder / "tokenizer.json").exists()
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == tiny_model_dir.name  # a local base: its folder's name, no path

    manifest = read_manifest(folder, "adapter-export")
    assert manifest["adapter_dir"] == "."
    assert manifest["files"] == file_hashes(folder)
    assert manifest["prompt"] == {"template": "alpaca"} and manifest["labels"]["positive_word"] == "Yes"
    assert manifest["data"]["dataset_manifest_sha256"] == "0" * 64

    meta = _card_meta(folder)
    assert "base_model" not in meta and meta["library_name"] == "peft"  # the Hub takes hub ids only
    metric = meta["model-index"][0]["results"][0]["metrics"][0]
    assert metric["type"] == "roc_auc" and metric["value"] == 0.625
    assert metric["args"]["shots"] == 16 and metric["args"]["seed"] == 0
    card = (folder / "README.md").read_text()
    assert "--lora-modules tiny-movies-lora=export --max-lora-rank 8" in card
    assert result.vllm.compatible


def test_adapter_loads_with_plain_peft_in_subprocess(tiny_run, tiny_model_dir, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    folder = export_adapter(tiny_run, tmp_path / "export").path
    ids = [1, 20, 31, 45, 60, 77]
    script = tmp_path / "load.py"
    script.write_text(PLAIN_PEFT_SCRIPT)
    (tmp_path / tiny_model_dir.name).symlink_to(tiny_model_dir)  # the base where the adapter config names it
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    completed = subprocess.run([sys.executable, str(script), str(folder), str(tiny_model_dir), json.dumps(ids)],
                               capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert completed.returncode == 0, completed.stderr[-2000:]
    loaded = json.loads(completed.stdout.strip().splitlines()[-1])

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        plain = base(torch.tensor([ids])).logits[0, -1]
        reference = PeftModel.from_pretrained(base, tiny_run / "adapter")(torch.tensor([ids])).logits[0, -1]
    assert (reference - plain).abs().max() > 1e-3  # the adapter changes the output, so the check means something
    for key in ("peft", "auto"):
        assert torch.allclose(torch.tensor(loaded[key]), reference, atol=1e-5)


def test_tokenizer_included_when_it_differs_from_base(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    run = make_train_run(tmp_path / "run", str(tiny_model_dir))
    tokenizer = AutoTokenizer.from_pretrained(run / "adapter")
    tokenizer.add_tokens(["<item>"])
    tokenizer.save_pretrained(run / "adapter")
    manifest = read_manifest(run)  # as if training had written this tokenizer: the run records its files' hashes
    (run / "manifest.json").write_text(json.dumps({**manifest, "files": adapter_hashes(run)}))
    result = export_adapter(run, tmp_path / "export")
    assert result.tokenizer_included
    assert "<item>" in AutoTokenizer.from_pretrained(result.path).get_vocab()


def test_refuses_unfinished_run(tiny_run, tmp_path):
    unfinished = tmp_path / "run"
    shutil.copytree(tiny_run, unfinished)
    (unfinished / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match="never finished"):
        export_adapter(unfinished, tmp_path / "export")
    assert not (tmp_path / "export").exists()


@pytest.mark.parametrize("damage", ["truncate", "garbage_header"])
def test_refuses_damaged_adapter_weights(tiny_run, tmp_path, damage):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    weights = run / "adapter" / "adapter_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\xff" * 16 + data[16:])
    with pytest.raises(ArtifactError, match="adapter_model.safetensors"):
        export_adapter(run, tmp_path / "export")
    assert list(tmp_path.iterdir()) == [run]  # no export, no staging folder


def test_refuses_existing_output_unless_overwrite(tiny_run, tmp_path):
    target = export_adapter(tiny_run, tmp_path / "export").path  # --overwrite replaces an export, nothing else
    (target / "keep.txt").write_text("mine")
    with pytest.raises(ArtifactError, match="already exists"):
        export_adapter(tiny_run, target)
    assert (target / "keep.txt").read_text() == "mine"
    export_adapter(tiny_run, target, overwrite=True)
    assert not (target / "keep.txt").exists() and (target / "adapter_model.safetensors").exists()


def test_refuses_base_model_of_another_shape(tiny_run, tmp_path):
    other = build_tiny_llama(tmp_path / "wider", hidden=64)
    with pytest.raises(ModelError, match="hidden_size: 32 vs 64"):
        export_adapter(tiny_run, tmp_path / "export", base_model=str(other))


def test_refuses_base_model_changed_since_training(tiny_model_dir, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(tiny_model_dir, base)
    run = make_train_run(tmp_path / "run", str(base))
    config = json.loads((base / "config.json").read_text())
    config["rope_theta"] = 1234.0
    (base / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="changed since the run was trained"):
        export_adapter(run, tmp_path / "export")


LLAMA_NAMES = [f"base_model.model.model.layers.0.self_attn.{m}.lora_{ab}.weight" for m in ("q_proj", "v_proj")
               for ab in "AB"]


@pytest.mark.parametrize(("config", "names", "problem"), [
    ({"r": 8, "use_dora": True}, LLAMA_NAMES, "DoRA"),
    ({"r": 8, "bias": "lora_only"}, LLAMA_NAMES, "bias"),
    ({"r": 8, "modules_to_save": ["lm_head"]}, LLAMA_NAMES + ["base_model.model.lm_head.modules_to_save.weight"],
     "modules_to_save"),
    ({"r": 600}, LLAMA_NAMES, "exceeds"),
    ({"r": 8, "rank_pattern": {"q_proj": 600}}, LLAMA_NAMES, "exceeds"),
    ({"r": 8}, ["base_model.model.transformer.h.0.mlp.c_fc.lora_A.weight"], "c_fc"),
])
def test_vllm_check_flags_what_vllm_rejects(config, names, problem):
    check = check_vllm_compatibility(config, names, "llama")
    assert not check.compatible and any(problem in p for p in check.problems)


@pytest.mark.parametrize(("config", "names", "fix"), [
    ({"r": 8, "use_dora": True}, LLAMA_NAMES, "--set lora.use_dora=false"),
    ({"r": 8, "init_lora_weights": "pissa"}, LLAMA_NAMES, "path_initial_model_for_weight_conversion"),
    ({"r": 8, "alora_invocation_tokens": [5, 6]}, LLAMA_NAMES, "Activated LoRA (aLoRA): vLLM does not support it"),
    ({"r": 8, "layer_replication": [[0, 2]]}, LLAMA_NAMES, "layer_replication: vLLM does not support it"),
    ({"r": 1024}, LLAMA_NAMES, "--set lora.r=512"),
    ({"r": 8}, LLAMA_NAMES + ["base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta"],
     "no LoRA weights"),
    ({"r": 8}, [name.replace("q_proj", "c_attn") for name in LLAMA_NAMES], "--set lora.target_modules=[v_proj]"),
])
def test_vllm_check_names_the_fix_of_each_rule_broken(config, names, fix):
    check = check_vllm_compatibility(config, names, "llama")
    assert not check.compatible and len(check.problems) == 1 and fix in check.problems[0]


def test_vllm_check_takes_what_vllm_applies():
    """rank/alpha patterns, rsLoRA, plain inits and LoRA on lm_head load in vLLM 0.32; a rank above 16 only
    needs --max-lora-rank."""
    config = {"r": 8, "rank_pattern": {"q_proj": 32}, "alpha_pattern": {"v_proj": 4}, "use_rslora": True,
              "init_lora_weights": "gaussian"}
    check = check_vllm_compatibility(config, LLAMA_NAMES + ["base_model.model.lm_head.lora_A.weight"], "llama")
    assert check.compatible and check.max_lora_rank == 32
    assert "LoRA rank 32 is above vLLM's default max_lora_rank (16): serve with --max-lora-rank 32" in check.notes


def test_vllm_check_picks_smallest_allowed_max_lora_rank():
    check = check_vllm_compatibility({"r": 12, "use_rslora": True}, LLAMA_NAMES, "llama")
    assert check.compatible and check.max_lora_rank == 16 and any("rsLoRA" in n for n in check.notes)


def test_cli_export_adapter(tiny_run, tmp_path):
    from typer.testing import CliRunner

    from tallrec_cli.cli.app import app

    result = CliRunner().invoke(app, ["export", str(tiny_run), "--output", str(tmp_path / "export")])
    assert result.exit_code == 0, result.output
    assert "vLLM: loadable" in result.output and (tmp_path / "export" / "manifest.json").exists()
    again = CliRunner().invoke(app, ["export", str(tiny_run), "--output", str(tmp_path / "export")])
    assert isinstance(again.exception, ArtifactError)
