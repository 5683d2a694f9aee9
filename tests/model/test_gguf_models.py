"""Any .gguf given as --model is converted once to a safetensors copy, found again by content, and every command
loads that copy (transformers trains no GGUF-quantized model)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from tallrec_cli.core.files import staged_dir
from tallrec_cli.core.manifests import write_manifest
from tallrec_cli.model import loading
from tallrec_cli.model.loading import (
    EMBEDDED_MODELS,
    embedded_gguf,
    load_model,
    load_tokenizer,
    model_identity,
    resolve_model_source,
)
from tallrec_cli.train.run import run_training
from tests.train_helpers import tiny_config, write_dataset


@pytest.fixture()
def conversions(monkeypatch):
    """The GGUF converter replaced by one that writes the tiny random LLaMA (a real GGUF is the slow test's):
    the cache, its keys and every loader around it stay real. Returns the GGUF files converted, in order."""
    converted = []
    tiny = Path(resolve_model_source("random:tiny-llama").path)

    def convert(gguf, target, kind, origin, record):
        converted.append(gguf)
        with staged_dir(target, kind, overwrite=True) as staging:
            for file in tiny.iterdir():
                if file.name != "manifest.json":
                    shutil.copy(file, staging / file.name)
            write_manifest(staging, kind, {**record, "dtype": "float32"})

    monkeypatch.setattr(loading, "_convert_gguf", convert)
    return converted


def test_a_gguf_is_converted_once_and_found_again_by_its_content(tmp_path, conversions):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF one")
    first = resolve_model_source(str(gguf))
    assert first.converted and resolve_model_source(str(gguf)).converted == first.converted
    moved = tmp_path / "elsewhere" / "renamed.gguf"
    moved.parent.mkdir()
    shutil.copy(gguf, moved)
    assert resolve_model_source(str(moved)).converted == first.converted
    assert conversions == [gguf]
    assert model_identity(first)["gguf_sha256"] == hashlib.sha256(b"GGUF one").hexdigest()
    gguf.write_bytes(b"GGUF two")  # changed in place: converted anew, never the stale copy
    assert resolve_model_source(str(gguf)).converted != first.converted and conversions == [gguf, gguf]
    assert resolve_model_source(str(gguf), convert_embedded=False).converted is None  # preflight writes nothing


def test_training_on_a_gguf_loads_its_converted_copy(tmp_path, conversions, single_torch_thread):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    source = resolve_model_source(str(gguf))
    assert load_model(source, "float32").config.model_type == "llama" and load_tokenizer(source).pad_token
    run = tmp_path / "run"
    run_training(tiny_config(str(gguf), write_dataset(tmp_path / "data", train=8, valid=4), run,
                             training__max_steps=1, training__eval_every=1, training__eval_at_start=False))
    base = json.loads((run / "manifest.json").read_text())["base_model"]
    assert (base["kind"], base["gguf_file"]) == ("gguf", "model.gguf") and len(conversions) == 1
    assert base["gguf_sha256"] == hashlib.sha256(b"GGUF").hexdigest()


@pytest.mark.slow
def test_the_smollm2_gguf_given_as_a_file_trains(tmp_path):
    """The failure this fixes: `tallrec train --model x.gguf` stopped with transformers' "quantized with
    QuantizationMethod.GGUF ... do not support training"."""
    gguf = embedded_gguf("smollm2-135m")
    run = tmp_path / "run"
    summary = run_training(tiny_config(str(gguf), write_dataset(tmp_path / "data", train=8, valid=4), run,
                                       training__max_steps=1, training__eval_every=1, training__eval_at_start=False))
    source = resolve_model_source(str(gguf))
    assert summary["steps"] == 1 and source.converted
    assert json.loads((Path(source.converted) / "config.json").read_text())["tie_word_embeddings"] is True
    assert json.loads((run / "manifest.json").read_text())["base_model"]["gguf_file"] == EMBEDDED_MODELS[
        "smollm2-135m"].gguf_file
