"""Artifact integrity (tallrec_cli.core.integrity) on small real files: each check against hashlib, a hand-built
safetensors header, or a file changed in exactly one way."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from tallrec_cli.core import integrity
from tallrec_cli.core.errors import ArtifactError, DataError
from tallrec_cli.core.integrity import (
    FileCheck,
    adapter_hashes,
    check_adapter_intact,
    check_files,
    check_recorded_file,
    check_safetensors,
    record_files,
    safetensors_problem,
    sha256_cached,
)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def dataset(folder: Path, kind: str = "dataset", recorded: bool = True) -> Path:
    """train.jsonl and valid.jsonl with a manifest recording their sizes and hashes, as `tallrec data` writes it."""
    folder.mkdir()
    (folder / "train.jsonl").write_text('{"a": 1}\n')
    (folder / "valid.jsonl").write_text('{"b": 2}\n')
    manifest = {"kind": kind}
    if recorded:
        manifest["file_hashes"] = record_files(folder, ["train.jsonl", "valid.jsonl"])
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def rewrite(path: Path, text: str) -> None:
    """New content with a new modification time (the hash cache is keyed by size and mtime)."""
    stat = path.stat()
    path.write_text(text)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))


def test_sha256_is_hashed_once_per_size_and_modification_time(tmp_path, monkeypatch):
    path = tmp_path / "f"
    path.write_text("one")
    assert sha256_cached(path) == sha256(path)
    monkeypatch.setattr(integrity, "sha256_file", lambda path: pytest.fail("hashed twice"))
    assert sha256_cached(tmp_path / "." / "f") == sha256(path)  # the same file by another spelling
    monkeypatch.undo()
    rewrite(path, "two")
    assert sha256_cached(path) == sha256(path) == hashlib.sha256(b"two").hexdigest()


def test_record_files_gives_size_and_sha256(tmp_path):
    folder = dataset(tmp_path / "d")
    assert record_files(folder, ["train.jsonl"]) == {
        "train.jsonl": {"bytes": 9, "sha256": hashlib.sha256(b'{"a": 1}\n').hexdigest()}}


def test_an_unchanged_record_file_passes_and_a_changed_one_is_refused_by_name(tmp_path):
    folder = dataset(tmp_path / "d")
    assert check_recorded_file(folder / "train.jsonl") is None
    rewrite(folder / "train.jsonl", '{"a": 12}\n')
    with pytest.raises(DataError) as error:
        check_recorded_file(folder / "train.jsonl")
    assert error.value.message == (
        f"{folder / 'train.jsonl'} is 10 bytes, 9 when it was written: it changed after `tallrec data build` (or "
        f"`data import`) wrote it ({folder / 'manifest.json'} records its size and sha256)")
    assert error.value.hint == "restore the file, or rebuild the folder with the command that wrote it (--overwrite)"
    rewrite(folder / "valid.jsonl", '{"b": 3}\n')  # same size
    with pytest.raises(DataError, match=r"valid.jsonl has the size it was written with but another sha256 \(its "
                                        r"content was edited\): it changed after `tallrec data build`"):
        check_recorded_file(folder / "valid.jsonl")


def test_a_changed_sample_file_names_the_command_that_wrote_it(tmp_path):
    folder = dataset(tmp_path / "s", kind="samples")
    rewrite(folder / "train.jsonl", "")
    with pytest.raises(DataError, match=r"is 0 bytes, 9 when it was written: it changed after `tallrec data "
                                        r"sample` wrote it"):
        check_recorded_file(folder / "train.jsonl")


def test_record_files_without_recorded_hashes_pass(tmp_path):
    loose = tmp_path / "loose"
    loose.mkdir()
    (loose / "train.jsonl").write_text("x")
    assert check_recorded_file(loose / "train.jsonl") is None  # no manifest
    old = dataset(tmp_path / "old", recorded=False)  # written before sizes and hashes were recorded
    rewrite(old / "train.jsonl", "changed")
    assert check_recorded_file(old / "train.jsonl") is None
    other = dataset(tmp_path / "run", kind="train-run")  # a kind `tallrec data` does not write
    rewrite(other / "train.jsonl", "changed")
    assert check_recorded_file(other / "train.jsonl") is None
    unlisted = dataset(tmp_path / "unlisted")
    (unlisted / "extra.jsonl").write_text("x")
    assert check_recorded_file(unlisted / "extra.jsonl") is None


# ------------------------------------------------------------------------------------------------ safetensors

def safetensors(path: Path, **arrays) -> Path:
    save_file(arrays, str(path))
    return path


def with_header(path: Path, header, data: bytes = b"") -> Path:
    """A file with a hand-written header: 8-byte little-endian length, the JSON, then ``data``."""
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


def test_safetensors_problem_reads_header_and_size_only(tmp_path):
    whole = safetensors(tmp_path / "w.safetensors", a=np.ones((2, 3), np.float32), b=np.zeros(4, np.float32))
    assert safetensors_problem(whole) is None
    size = whole.stat().st_size
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(whole.read_bytes()[:-4])
    assert safetensors_problem(cut) == f"cut.safetensors is truncated or padded ({size - 4:,} bytes, its header " \
                                       f"says {size:,})"
    padded = tmp_path / "pad.safetensors"
    padded.write_bytes(whole.read_bytes() + b"\0")
    assert safetensors_problem(padded) == f"pad.safetensors is truncated or padded ({size + 1:,} bytes, its header " \
                                          f"says {size:,})"
    header_only = tmp_path / "head.safetensors"
    header_only.write_bytes(whole.read_bytes()[:10])
    assert safetensors_problem(header_only) == "head.safetensors is truncated (10 bytes, shorter than its header says)"
    assert safetensors_problem(tmp_path / "missing.safetensors") == "missing.safetensors is missing or its header " \
                                                                    "is damaged"
    short = tmp_path / "short.safetensors"
    short.write_bytes(b"\1\2\3")
    assert safetensors_problem(short) == "short.safetensors is missing or its header is damaged"
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(struct.pack("<Q", 4) + b"{{{{")
    assert safetensors_problem(garbage) == "garbage.safetensors is missing or its header is damaged"


def test_safetensors_headers_by_hand(tmp_path):
    entry = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    assert safetensors_problem(with_header(tmp_path / "ok", {"__metadata__": {"format": "pt"}, "a": entry},
                                           bytes(8))) is None
    assert safetensors_problem(with_header(tmp_path / "empty", {})) is None
    later = {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}
    assert safetensors_problem(with_header(tmp_path / "two", {"b": later, "a": entry}, bytes(12))) is None
    assert safetensors_problem(with_header(tmp_path / "list", [1, 2])) == "list is truncated (14 bytes, shorter " \
                                                                          "than its header says)"
    assert safetensors_problem(with_header(tmp_path / "nooffsets", {"a": {"dtype": "F32"}})) == \
        "nooffsets has a damaged header"
    assert safetensors_problem(with_header(tmp_path / "badentry", {"a": 3})) == "badentry has a damaged header"
    assert safetensors_problem(with_header(tmp_path / "oneoffset", {"a": {"data_offsets": [0]}})) == \
        "oneoffset has a damaged header"


def test_check_safetensors_parses_every_tensor(tmp_path):
    whole = safetensors(tmp_path / "w.safetensors", a=np.ones(2, np.float32), b=np.zeros(3, np.float32))
    assert sorted(check_safetensors(whole)) == ["a", "b"]
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(whole.read_bytes()[:-3])
    with pytest.raises(ArtifactError, match=rf"{cut} is damaged or truncated: cannot be read as safetensors") as error:
        check_safetensors(cut)
    assert error.value.hint == "re-create it (re-run training or the export)"
    nan = np.array([1.0, np.nan], np.float32)
    bad = safetensors(tmp_path / "bad.safetensors", a=nan, b=np.array([np.inf], np.float32), c=nan, d=nan,
                      e=np.ones(1, np.float32))
    with pytest.raises(ArtifactError) as error:
        check_safetensors(bad)
    assert error.value.message == f"{bad} holds non-finite values in a, b, c"
    assert error.value.hint == "the training run diverged; export another checkpoint or retrain"


# -------------------------------------------------------------------------------------------- folders, adapters

def test_check_files_names_changed_missing_and_extra_files(tmp_path):
    for name in ("a", "b", "c", "sub/d"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(name)
    expected = {name: sha256(tmp_path / name) for name in ("a", "b", "sub/d")}
    assert check_files(tmp_path, expected, allow_extra=True) == FileCheck()
    assert check_files(tmp_path, expected) == FileCheck(extra=("c",))
    (tmp_path / "b").write_text("B")
    (tmp_path / "sub" / "d").unlink()
    expected["z"] = expected["a"]
    check = check_files(tmp_path, expected)
    assert check == FileCheck(changed=("b",), missing=("sub/d", "z"), extra=("c",)) and not check.ok
    assert check.describe() == "changed: b; missing: sub/d, z; extra: c"
    assert FileCheck().ok and FileCheck().describe() == "all files match"
    assert not FileCheck(extra=("x",)).ok and not FileCheck(missing=("x",)).ok


def adapter_run(folder: Path) -> Path:
    adapter = folder / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text('{"r": 8}')
    safetensors(adapter / "adapter_model.safetensors", lora_B=np.ones(2, np.float32))
    (folder / "manifest.json").write_text("{}")
    return folder


def test_adapter_hashes_are_keyed_by_their_path_in_the_run(tmp_path):
    run = adapter_run(tmp_path / "run")
    assert adapter_hashes(run) == {f"adapter/{name}": sha256(run / "adapter" / name)
                                   for name in ("adapter_config.json", "adapter_model.safetensors")}
    assert set(adapter_hashes(tmp_path, "run/adapter")) == {"run/adapter/adapter_config.json",
                                                            "run/adapter/adapter_model.safetensors"}


def test_an_intact_adapter_gives_its_config_and_tensor_names(tmp_path):
    run = adapter_run(tmp_path / "run")
    (run / "notes.txt").write_text("a file the manifest does not list")
    assert check_adapter_intact(run, adapter_hashes(run), run / "adapter") == ({"r": 8}, ["lora_B"])
    assert check_adapter_intact(run, {}, run / "adapter") == ({"r": 8}, ["lora_B"])  # a run from before hashes


@pytest.mark.parametrize("name", ["adapter_config.json", "adapter_model.safetensors"])
def test_a_missing_adapter_file_is_named(tmp_path, name):
    run = adapter_run(tmp_path / "run")
    (run / "adapter" / name).unlink()
    with pytest.raises(ArtifactError) as error:
        check_adapter_intact(run, {}, run / "adapter")
    assert error.value.message == f"{run / 'adapter' / name} is missing"
    assert error.value.hint == "the folder is incomplete; retrain or export again"


def test_an_adapter_changed_since_its_manifest_is_refused_before_parsing(tmp_path):
    run = adapter_run(tmp_path / "run")
    recorded = adapter_hashes(run)
    (run / "adapter" / "adapter_config.json").write_text("not json")  # would fail parsing with another message
    with pytest.raises(ArtifactError) as error:
        check_adapter_intact(run, recorded, run / "adapter")
    assert error.value.message == f"{run} does not match the hashes in its manifest (changed: " \
                                  "adapter/adapter_config.json)"
    assert error.value.hint == "it was modified after it was written; restore the files, retrain or export again"


def test_an_adapter_config_that_is_no_json_object_is_refused(tmp_path):
    run = adapter_run(tmp_path / "run")
    config = run / "adapter" / "adapter_config.json"
    config.write_text("{")
    with pytest.raises(ArtifactError, match=rf"{config} is not valid JSON \(Expecting") as error:
        check_adapter_intact(run, {}, run / "adapter")
    assert error.value.hint == "restore it, retrain or export again"
    config.write_bytes(b"\xff")
    with pytest.raises(ArtifactError, match="is not valid JSON"):
        check_adapter_intact(run, {}, run / "adapter")
    config.write_text("[1]")
    with pytest.raises(ArtifactError) as error:
        check_adapter_intact(run, {}, run / "adapter")
    assert error.value.message == f"{config} does not hold a JSON object"
    assert error.value.hint == "restore it, retrain or export again"
    config.write_text("{}")
    (run / "adapter" / "adapter_model.safetensors").write_bytes(b"\0" * 16)
    with pytest.raises(ArtifactError, match="is damaged or truncated"):
        check_adapter_intact(run, {}, run / "adapter")
