"""Typed manifests: one constructor, validated on read (a missing field is named), the JSON format unchanged."""

from __future__ import annotations

import json

import pytest

from tallrec_cli.core import manifests
from tallrec_cli.core.errors import ArtifactError
from tallrec_cli.core.files import write_json_atomic
from tallrec_cli.core.manifests import (
    BestStep,
    RunData,
    RunMetrics,
    TrainRunManifest,
    read_manifest,
    train_run_manifest,
    write_manifest,
)
from tallrec_cli.train.config import load_train_config

# A train-run manifest as `run_training` wrote it before manifests had a type (keys and nesting).
WRITTEN_BEFORE = {
    "kind": "train-run", "created": "2026-12-01T10:00:00+00:00", "versions": {"torch": "2.13.0"},
    "command": ["tallrec", "train"], "base_model": {"kind": "embedded", "name": "smollm2-135m"},
    "base_model_config": {"model_type": "llama", "hidden_size": 576}, "adapter_dir": "adapter",
    "prompt": {"template": "alpaca"},
    "labels": {"positive_word": "Yes", "negative_word": "No", "positive_id": 5, "negative_id": 6},
    "quantization": "none", "dtype": "float32",
    "lora": {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"], "use_dora": False,
             "use_rslora": False, "init_adapter": None},
    "data": {"train": "data/m", "valid": "data/m", "train_sha256": "a" * 64, "valid_sha256": "b" * 64,
             "dataset_manifest_sha256": None, "shots": 64, "sample_seed": 0, "train_records": 64,
             "valid_records": 32, "truncated_records": 1},
    "seed": 42, "processes": 1,
    "best": {"step": 8, "val_auc": 0.71, "val_loss": 0.66, "selected_on": "val_auc"},
    "metrics": {"val_auc": 0.71, "train_loss": 0.5, "start_val_auc": 0.52},
    "wall_seconds": 12.5, "config": {"model": {"name": "smollm2-135m"}},
}


def test_a_manifest_written_before_types_reads_back_and_writes_the_same_json(tmp_path):
    write_json_atomic(tmp_path / "manifest.json", WRITTEN_BEFORE)
    manifest = manifests.load(tmp_path, TrainRunManifest)
    assert manifest.data.train_records == 64 and manifest.best.step == 8 and manifest.prompt.template == "alpaca"
    manifest.write(tmp_path / "again")
    added = {"calibration": None, "files": None,  # optional fields, now explicit
             "data": {**WRITTEN_BEFORE["data"], "name": None}}
    assert json.loads((tmp_path / "again" / "manifest.json").read_text()) == {**WRITTEN_BEFORE, **added}


@pytest.mark.parametrize("path, field", [
    (("seed",), "seed"), (("data", "train_records"), "data.train_records"), (("best",), "best"),
])
def test_a_manifest_missing_a_field_fails_on_read_naming_it(tmp_path, path, field):
    broken = json.loads(json.dumps(WRITTEN_BEFORE))
    node = broken
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    write_json_atomic(tmp_path / "manifest.json", broken)
    for read in (lambda: read_manifest(tmp_path), lambda: read_manifest(tmp_path, "train-run"),
                 lambda: manifests.load(tmp_path, TrainRunManifest)):
        with pytest.raises(ArtifactError, match=rf"not a valid train-run manifest: {field}: required"):
            read()


def test_a_mistyped_field_is_named(tmp_path):
    write_json_atomic(tmp_path / "manifest.json", {**WRITTEN_BEFORE, "wall_seconds": "soon"})
    with pytest.raises(ArtifactError, match="wall_seconds: expected a number, got 'soon'"):
        manifests.load(tmp_path, TrainRunManifest)


def test_typed_kinds_are_written_only_through_their_constructor(tmp_path):
    with pytest.raises(TypeError, match="TrainRunManifest.new"):
        write_manifest(tmp_path, "train-run", {"config": {}})
    with pytest.raises(ArtifactError, match="seed: required"):
        TrainRunManifest.new(**{key: value for key, value in WRITTEN_BEFORE.items()
                                if key not in ("kind", "created", "versions", "command", "seed")})


def test_train_run_manifest_takes_what_the_config_says(tmp_path):
    config = load_train_config(None, {"lora": {"r": 4}, "training": {"seed": 7}, "prompt": {"template": "chat"}})
    data = RunData(train="d", valid="d", shots=4, sample_seed=1, train_records=4, valid_records=2)
    manifest = train_run_manifest(config, base_model={"name": "m"}, base_model_config=None, labels={},
                                  dtype="bfloat16", data=data, best=BestStep(2, 0.6), metrics=RunMetrics(None),
                                  wall_seconds=1.234, files={})
    assert (manifest.kind, manifest.seed, manifest.lora["r"], manifest.prompt.template) == ("train-run", 7, 4, "chat")
    assert manifest.wall_seconds == 1.23 and manifest.config["training"]["seed"] == 7


def test_val_auc_falls_back_to_the_best_step():
    run = manifests.parse(WRITTEN_BEFORE, "here")
    assert run.val_auc == 0.71
    older = manifests.parse({**WRITTEN_BEFORE, "metrics": {"val_auc": None}}, "here")
    assert older.val_auc == 0.71 and older.metrics.train_loss is None


def test_dataset_name_from_its_own_name_or_its_path():
    data = RunData(train="/x/ml-100k/train.jsonl", valid=None, shots=None, sample_seed=0, train_records=1,
                   valid_records=1)
    assert data.dataset_name == "ml-100k"
    assert RunData(**{**data.__dict__, "train": "/x/movies"}).dataset_name == "movies"
    assert RunData(**{**data.__dict__, "name": "tiny"}).dataset_name == "tiny"
