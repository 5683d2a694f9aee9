"""The `tallrec data` commands end to end through the CLI, plus `data import` and the library readers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from data_builders import load_split, read_records, write_tallrec_json
from tallrec_cli.cli.app import app
from tallrec_cli.core.errors import DataError
from tallrec_cli.core.files import read_jsonl
from tallrec_cli.core.manifests import read_manifest

FIXTURES = Path(__file__).parents[1] / "fixtures" / "data"
REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, ["data", *args])


@pytest.mark.parametrize("command", ["build", "import", "sample", "stats"])
def test_every_command_has_help_with_an_example(command):
    result = invoke(command, "--help")
    assert result.exit_code == 0 and "tallrec data " + command in result.stdout


def test_build_stats_sample_through_the_cli(tmp_path):
    out = tmp_path / "m1"
    result = invoke("build", "movielens-1m", "--path", str(FIXTURES / "ml-1m"), "-o", str(out), "--history-len", "3",
                    "--max-records", "0", "--split", "leave-last-out", "--set", "like_threshold=2")
    assert result.exit_code == 0, result.output
    assert "records" in result.stdout and "train" in result.stdout
    manifest = read_manifest(out, "dataset")
    assert manifest["config"]["like_threshold"] == 2.0 and manifest["config"]["max_records"] is None
    stats = invoke("stats", str(out))
    assert stats.exit_code == 0 and "valid" in stats.stdout
    sample = invoke("sample", str(out), "--shots", "2,4", "--seeds", "0,1", "--stratify", "-o", str(tmp_path / "s"))
    assert sample.exit_code == 0, sample.output
    samples = read_manifest(tmp_path / "s", "samples")
    assert sorted(samples["files"]) == ["train-k2-seed0.jsonl", "train-k2-seed1.jsonl", "train-k4-seed0.jsonl",
                                        "train-k4-seed1.jsonl"]
    assert len(read_jsonl(tmp_path / "s" / "train-k4-seed1.jsonl")) == 4
    too_many = invoke("sample", str(out), "--shots", "999", "-o", str(tmp_path / "s2"))
    assert isinstance(too_many.exception, DataError) and "cannot draw 999" in too_many.exception.message
    assert not (tmp_path / "s2").exists()


def test_stats_counts_tokens_with_a_local_tokenizer(tmp_path, tiny_model_dir):
    from data_builders.stats import dataset_stats
    from tallrec_cli.model.loading import load_tokenizer, resolve_model_source

    out = tmp_path / "m1"
    invoke("build", "movielens-1m", "--path", str(FIXTURES / "ml-1m"), "-o", str(out), "--history-len", "3")
    rows = dataset_stats(out, load_tokenizer(resolve_model_source(str(tiny_model_dir))))
    train = rows[0]
    assert train["split"] == "train" and train["history_mean"] == 3.0
    assert 0 < train["tokens_mean"] <= train["tokens_max"] and train["chars_max"] >= train["chars_mean"]
    result = invoke("stats", str(out), "--tokenizer", str(tiny_model_dir))
    assert result.exit_code == 0 and "tokens" in result.stdout


def test_import_tallrec_book_round_trips_byte_for_byte(real_data, tmp_path):
    originals = [real_data / "tallrec-book" / "valid.json", real_data / "tallrec-book" / "test.json"]
    result = invoke("import", *map(str, originals), "-o", str(tmp_path / "book"))
    assert result.exit_code == 0, result.output
    manifest = read_manifest(tmp_path / "book", "dataset")
    assert manifest["splits"]["valid"] == {"records": 2427, "positives": 1011, "structured": 2427, "negatives": 1416,
                                           "positive_rate": round(1011 / 2427, 6)}
    for original in originals:
        records = load_split(tmp_path / "book", original.stem)
        assert records[0]["id"] == f"{original.stem}-0" and records[0]["label"] in (0, 1)
        write_tallrec_json(tmp_path / original.name, records)
        assert (tmp_path / original.name).read_bytes() == original.read_bytes()
    again = invoke("import", *map(str, originals), "-o", str(tmp_path / "json"), "--format", "tallrec-json")
    assert again.exit_code == 0
    assert (tmp_path / "json" / "test.json").read_bytes() == originals[1].read_bytes()


def test_import_names_the_file_and_index_of_a_bad_record(tmp_path):
    good = {"instruction": "i", "input": "x", "output": "Yes."}
    path = tmp_path / "valid.json"
    path.write_text(json.dumps([good, good, {"instruction": "i", "input": "x", "output": "Maybe."}]))
    result = invoke("import", str(path), "-o", str(tmp_path / "out"))
    assert isinstance(result.exception, DataError)
    assert f"{path}: record 3: output 'Maybe.'" in result.exception.message
    path.write_text(json.dumps([good, {"instruction": "i", "output": "No."}]))
    with pytest.raises(DataError, match="record 2 lacks text field"):
        read_records(path)
    assert not (tmp_path / "out").exists()


def test_load_split_reads_folders_and_single_files(tmp_path):
    (tmp_path / "d").mkdir()
    rows = [{"instruction": "i", "input": "x", "output": "No."}]
    (tmp_path / "d" / "test.json").write_text(json.dumps(rows))
    (tmp_path / "d" / "train.jsonl").write_text(json.dumps({**rows[0], "output": "Yes.", "id": "a"}) + "\n")
    assert load_split(tmp_path / "d", "test") == [{**rows[0], "label": 0, "id": "test-0"}]
    assert load_split(tmp_path / "d" / "train.jsonl", "ignored")[0]["label"] == 1
    with pytest.raises(DataError, match="has no valid.jsonl or valid.json"):
        load_split(tmp_path / "d", "valid")


def test_cli_error_is_one_line_and_a_hint(tmp_path):
    tallrec = Path(sys.executable).with_name("tallrec")
    result = subprocess.run([str(tallrec), "data", "build", "movielens-100k", "--path", str(tmp_path / "none"),
                             "-o", str(tmp_path / "out")], capture_output=True, text=True, timeout=120,
                            env={"PATH": "/usr/bin:/bin", "COLUMNS": "200", "TALLREC_HOME": str(tmp_path)})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("error: ") and "u.data, u.item" in lines[0]
    assert lines[1].startswith("hint: ") and len(lines) == 2
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()
