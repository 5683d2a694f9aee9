"""Merged export: equals base + adapter, QLoRA adapters merged into a 16/32-bit reload, refusals."""

from __future__ import annotations

import json
import shutil
from collections import namedtuple
from pathlib import Path

import pytest

from tallrec_cli.core.errors import ArtifactError, ResourceError
from tallrec_cli.core.files import file_hashes
from tallrec_cli.core.manifests import read_manifest
from tallrec_cli.export import merged as export_module
from tallrec_cli.export.merged import export_merged
from tests.export_helpers import make_train_run, write_valid_data

IDS = [1, 20, 31, 45, 60, 77, 90]


@pytest.fixture(scope="module")
def valid_data(tmp_path_factory) -> Path:
    return write_valid_data(tmp_path_factory.mktemp("merge-data"))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_model_dir, valid_data) -> Path:
    return make_train_run(tmp_path_factory.mktemp("merge-run") / "run", str(tiny_model_dir), valid=valid_data)


def _logits(model, ids=IDS):
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


def test_merged_fp32_equals_base_plus_adapter(tiny_run, tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result = export_merged(tiny_run, tmp_path / "merged", dtype="float32", max_shard_size="100KB")
    folder = result.path
    assert result.shards > 1 and (folder / "model.safetensors.index.json").exists()
    for name in ("config.json", "generation_config.json", "tokenizer.json", "README.md"):
        assert (folder / name).exists(), name
    assert result.verification.ok and result.verification.max_abs_logit_diff < 1e-5
    assert result.verification.prompts_source.endswith("valid.jsonl") and result.verification.auc_samples == 24

    merged = AutoModelForCausalLM.from_pretrained(folder)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tiny_run / "adapter")
    base_only = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert (_logits(reference) - _logits(base_only)).abs().max() > 1e-3
    assert (_logits(merged) - _logits(reference)).abs().max() < 1e-5

    manifest = read_manifest(folder, "merged-export")
    assert manifest["prompt"]["template"] == "alpaca" and manifest["labels"]["negative_word"] == "No"
    assert manifest["merge"]["dtype"] == "float32" and manifest["files"] == file_hashes(folder)
    assert manifest["source_run"]["path"] == str(tiny_run.resolve())


def test_merged_folder_serves_tallrec_eval(tiny_run, tmp_path):
    from tallrec_cli.model.loading import load_for_inference

    folder = export_merged(tiny_run, tmp_path / "merged", dtype="bfloat16").path
    loaded = load_for_inference(model=str(folder), dtype="bfloat16", device="cpu")
    assert loaded.template == "alpaca" and loaded.labels["positive_word"] == "Yes"
    assert json.loads((folder / "config.json").read_text())["dtype"] == "bfloat16"
    weights = next(folder.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x01  # a flipped bit inside a tensor: the file still parses, only its hash tells
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=f"does not match the hashes.*changed: {weights.name}"):
        load_for_inference(model=str(folder), dtype="bfloat16", device="cpu")


def test_qlora_adapter_merges_into_unquantized_reload(tiny_model_dir, valid_data, tmp_path):
    run = make_train_run(tmp_path / "qrun", str(tiny_model_dir), quantization="4bit", valid=valid_data)
    result = export_merged(run, tmp_path / "merged", dtype="float32")
    assert result.quantized_training == "4bit" and result.verification.ok
    assert result.verification.max_abs_logit_diff < 1e-5
    config = json.loads((result.path / "config.json").read_text())
    assert "quantization_config" not in config
    assert read_manifest(result.path)["merge"]["training_quantization"] == "4bit"
    assert "trained on a 4bit (bitsandbytes) base" in (result.path / "README.md").read_text()


def test_refuses_when_disk_is_too_small_before_writing(tiny_run, tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 ** 9, 10 ** 9 - 1000, 1000))
    with pytest.raises(ResourceError, match="not enough disk space"):
        export_merged(tiny_run, tmp_path / "merged", dtype="float32")
    assert list(tmp_path.iterdir()) == []


def test_failed_verification_leaves_nothing_behind(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setitem(export_module.LOGIT_TOLERANCE, "float32", -1.0)
    with pytest.raises(ArtifactError, match="does not reproduce base"):
        export_merged(tiny_run, tmp_path / "merged", dtype="float32")
    assert list(tmp_path.iterdir()) == []


def test_built_in_prompts_when_validation_data_is_gone(tiny_model_dir, tmp_path):
    run = make_train_run(tmp_path / "run", str(tiny_model_dir), valid=write_valid_data(tmp_path / "data"))
    shutil.rmtree(tmp_path / "data")
    result = export_merged(run, tmp_path / "merged", dtype="float32", verify_samples=8)
    assert result.verification.prompts_source == "built-in sample prompts" and result.verification.ok


def test_cli_merged_rejects_bad_shard_size_and_registry(tiny_run, tmp_path):
    from typer.testing import CliRunner

    from tallrec_cli.cli.app import app
    from tallrec_cli.core.errors import ConfigError

    runner = CliRunner()
    bad = runner.invoke(app, ["export", str(tiny_run), "--merged", "-o", str(tmp_path / "m"), "--max-shard-size", "lots"])
    assert isinstance(bad.exception, ConfigError)
    both = runner.invoke(app, ["export", str(tiny_run), "--merged", "--to-registry"])
    assert isinstance(both.exception, ConfigError)
    ok = runner.invoke(app, ["export", str(tiny_run), "--merged", "-o", str(tmp_path / "m"), "--dtype", "float32"])
    assert ok.exit_code == 0, ok.output
    assert "verified: max |logit diff|" in ok.output
