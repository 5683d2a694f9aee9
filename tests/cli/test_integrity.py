"""Issue 26: integrity end to end. One test (or a few) per numbered item, then one per hint that named the
wrong thing; the option checks every command shares are walked in test_options.py. New names are imported
inside the tests, so each fails on its own on the code before the fix."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback
from typer.testing import CliRunner

from tallrec_cli.cli.app import app
from tallrec_cli.core.errors import ArtifactError, ConfigError, DataError, ModelError, TallrecError
from tallrec_cli.core.files import file_hashes
from tallrec_cli.core.manifests import read_manifest, write_manifest
from tallrec_cli.core.reporting import Reporter, use_reporter
from tallrec_cli.train.config import resume_config
from tallrec_cli.train.run import run_training
from tests.export_helpers import make_train_run, write_valid_data
from tests.train.test_train_run import InterruptAt
from tests.train_helpers import tiny_config, write_dataset

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def cli(*args, columns: int = 200):
    return CliRunner().invoke(app, [str(arg) for arg in args], env={"COLUMNS": str(columns)})


def error_of(result) -> TallrecError:
    assert isinstance(result.exception, TallrecError), (result.exception, result.output)
    return result.exception


class Recorded(Reporter):
    def __init__(self):
        self.notes: list[str] = []
        self.warnings: list[str] = []

    def note(self, message: str) -> None:
        self.notes.append(message)

    def warning(self, message: str) -> None:
        self.warnings.append(message)


@pytest.fixture()
def reports():
    recorded = Recorded()
    previous = use_reporter(recorded)
    yield recorded
    use_reporter(previous)


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, tiny_model_dir) -> Path:
    """A run Ctrl-C'd at step 2 of 4, started from its own folder with a relative data path; ``live`` is
    restored from ``snapshot`` for every test (same paths, so the run's recorded inputs still match)."""
    root = tmp_path_factory.mktemp("interrupted")
    live = root / "live"
    write_dataset(live / "data")
    cwd, threads = os.getcwd(), torch.get_num_threads()
    os.chdir(live)
    torch.set_num_threads(1)
    try:
        with pytest.raises(TallrecError, match="interrupted"):
            run_training(tiny_config(tiny_model_dir, Path("data"), live / "run"), callbacks=(InterruptAt(2),))
    finally:
        os.chdir(cwd)
        torch.set_num_threads(threads)
    shutil.copytree(live, root / "snapshot")
    return root


@pytest.fixture()
def run_at_step_2(interrupted) -> tuple[Path, Path]:
    live = interrupted / "live"
    shutil.rmtree(live)
    shutil.copytree(interrupted / "snapshot", live)
    return live / "run", live / "data"


# 1 ------------------------------------------------------------------------------------------------------

def test_item01_a_dataset_file_changed_after_it_was_written_is_refused(tmp_path):
    from data_builders import load_split

    dataset = tmp_path / "ds"
    assert cli("data", "build", "movielens-latest", "--max-records", "300", "-o", dataset).exit_code == 0
    assert "train.jsonl" in read_manifest(dataset)["file_hashes"]
    train = dataset / "train.jsonl"
    train.write_text("".join(train.read_text().splitlines(keepends=True)[:40]))  # cut, like 1,718 -> 400 lines
    with pytest.raises(DataError, match="train.jsonl is .* bytes") as error:
        load_split(dataset, "train")
    assert "changed after" in error.value.message
    assert "train.jsonl" in error_of(cli("data", "sample", dataset, "--shots", "4", "--seeds", "0",
                                         "-o", tmp_path / "s")).message

    samples = tmp_path / "samples"
    assert cli("data", "sample", tmp_path / "ds", "--split", "test", "--shots", "4", "--seeds", "0",
               "-o", samples).exit_code == 0
    subset = samples / "test-k4-seed0.jsonl"
    subset.write_text(subset.read_text().replace('"label": 1', '"label": 0').replace('"label": 0', '"label": 1', 1))
    with pytest.raises(DataError, match="test-k4-seed0.jsonl"):
        load_split(subset, "train")


def test_item01_resume_refuses_data_recipe_or_base_model_that_changed(run_at_step_2, monkeypatch):
    from tallrec_cli.train import run as train

    run, data = run_at_step_2
    train_file = data / "train.jsonl"
    original = train_file.read_text()
    train_file.write_text(original.replace('"Yes."', '"Maybe."').replace('"No."', '"Yes."')
                          .replace('"Maybe."', '"No."').replace('"label": 1', '"label": 2')
                          .replace('"label": 0', '"label": 1').replace('"label": 2', '"label": 0'))
    with pytest.raises(ArtifactError, match="training data") as error:
        run_training(resume_config(run), resume=True)
    assert str(run) in error.value.message and "--overwrite" in error.value.hint
    train_file.write_text(original)

    real_identity = train.model_identity
    with monkeypatch.context() as patch:
        patch.setattr(train, "model_identity", lambda source: {**real_identity(source), "config_sha256": "0" * 64})
        with pytest.raises(ArtifactError, match="base model config_sha256"):
            run_training(resume_config(run), resume=True)

    assert "lora.r: 8 -> 16" in error_of(cli("train", "-o", run, "--resume", "--set", "lora.r=16")).message
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("lr: 0.01", "lr: 0.02"))
    with pytest.raises(ArtifactError, match="training.lr: 0.01 -> 0.02"):
        run_training(resume_config(run), resume=True)
    assert not (run / "manifest.json").exists()


# 2 ------------------------------------------------------------------------------------------------------

def test_item02_a_flipped_byte_in_a_runs_adapter_is_refused_by_eval_and_export(tmp_path, tiny_model_dir):
    from tallrec_cli.export.adapter import export_adapter
    from tallrec_cli.model.loading import load_for_inference

    run = make_train_run(tmp_path / "run", str(tiny_model_dir), valid=write_valid_data(tmp_path / "data"))
    assert "adapter/adapter_model.safetensors" in read_manifest(run)["files"]
    weights = run / "adapter" / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x01  # inside a tensor: the file still parses
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="does not match"):
        load_for_inference(adapter=str(run), dtype="float32")
    with pytest.raises(ArtifactError, match="does not match"):
        export_adapter(run, tmp_path / "export")
    assert not (tmp_path / "export").exists()


# 3 ------------------------------------------------------------------------------------------------------

def test_item03_resume_skips_a_checkpoint_with_truncated_weights_and_says_which(run_at_step_2, reports):
    run, _ = run_at_step_2
    broken = run / "checkpoints" / "checkpoint-3"
    shutil.copytree(run / "checkpoints" / "checkpoint-2", broken)
    weights = broken / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    summary = run_training(resume_config(run), resume=True)
    assert summary["steps"] == 4 and (run / "manifest.json").exists()
    assert any("checkpoint-3" in note and "truncated" in note for note in reports.notes), reports.notes


def test_item03_a_damaged_optimizer_state_makes_a_checkpoint_broken(run_at_step_2):
    from tallrec_cli.train.checkpoints import checkpoint_problem

    checkpoint = run_at_step_2[0] / "checkpoints" / "checkpoint-2"
    assert checkpoint_problem(checkpoint) is None
    optimizer = checkpoint / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[:-100])
    assert "optimizer.pt" in checkpoint_problem(checkpoint)


# 4 ------------------------------------------------------------------------------------------------------

def test_item04_overwrite_never_replaces_an_artifact_of_another_kind(tmp_path, tiny_model_dir):
    dataset = write_dataset(tmp_path / "ds")
    write_manifest(dataset, "dataset", {})
    kept = file_hashes(dataset)
    run = make_train_run(tmp_path / "run", str(tiny_model_dir), valid=write_valid_data(tmp_path / "data"))
    attempts = {
        "export": ["export", run, "-o", dataset, "--overwrite"],
        "audit": ["audit", "--baseline", "history-share", "--test", tmp_path / "ds" / "valid.jsonl", "-o", dataset,
                  "--overwrite"],
        "data sample": ["data", "sample", run.parent / "data" / "valid.jsonl", "--shots", "4", "--seeds", "0",
                        "-o", dataset, "--overwrite"],
        "train": ["train", "--model", tiny_model_dir, "--train", tmp_path / "data" / "valid.jsonl", "--valid",
                  tmp_path / "data" / "valid.jsonl", "-o", dataset, "--overwrite"],
    }
    for command, args in attempts.items():
        message = error_of(cli(*args)).message
        assert "dataset artifact" in message and str(dataset) in message, (command, message)
    assert file_hashes(dataset) == kept

    from tallrec_cli.core.files import staged_dir

    empty = tmp_path / "empty"
    empty.mkdir()
    for target in (empty, tmp_path / "samples"):
        for _ in range(2):  # an empty folder, a new one, then one of its own kind
            with staged_dir(target, "samples", overwrite=True) as staging:
                write_manifest(staging, "samples", {})
    assert read_manifest(tmp_path / "samples")["kind"] == "samples"


# 5 ------------------------------------------------------------------------------------------------------

def test_item05_predict_refuses_an_existing_output_file_unless_overwrite(tmp_path, monkeypatch):
    from tallrec_cli.cli.commands import evaluate

    candidates = tmp_path / "c.jsonl"
    candidates.write_text(json.dumps({"liked": "A", "disliked": "B", "candidate": "C"}) + "\n")
    scores = tmp_path / "scores.csv"
    scores.write_text("keep me")

    def loaded(*args, **kwargs):
        raise RuntimeError("the model was loaded")

    monkeypatch.setattr(evaluate, "load_scoring_model", loaded)
    error = error_of(cli("predict", "--model", tmp_path / "m", "--input", candidates, "-o", scores))
    assert "already exists" in error.message and "--overwrite" in error.hint and scores.read_text() == "keep me"
    result = cli("predict", "--model", tmp_path / "m", "--input", candidates, "-o", scores, "--overwrite")
    assert "the model was loaded" in str(result.exception)  # past every check


# 6 ------------------------------------------------------------------------------------------------------

def test_item06_a_run_finds_its_data_from_any_folder_and_names_itself_when_it_cannot(run_at_step_2, tmp_path,
                                                                                     monkeypatch):
    from tallrec_cli.core.manifests import TrainRunManifest, load
    from tallrec_cli.eval.run import training_records

    run, data = run_at_step_2
    monkeypatch.chdir(tmp_path)  # not the folder the run was started from, with its relative data path
    run_training(resume_config(run), resume=True)
    manifest = load(run, TrainRunManifest)
    assert Path(manifest.data.train).is_absolute() and Path(manifest.config["data"]["train"]).is_absolute()
    assert "adapter/adapter_model.safetensors" in manifest.files
    records, source = training_records(None, manifest, str(run))
    assert len(records) == 16 and source == str(data)

    with open(data / "train.jsonl", "a", encoding="utf-8") as handle:
        handle.write((data / "valid.jsonl").read_text().splitlines()[0] + "\n")
    with pytest.raises(DataError, match="changed since the run was trained") as error:
        training_records(None, manifest, str(run))
    assert str(run) in error.value.message and "--train" in error.value.hint
    shutil.move(data, tmp_path / "elsewhere")
    with pytest.raises(DataError, match="does not exist here") as error:
        training_records(None, manifest, str(run))
    assert str(run) in error.value.message and "--train" in error.value.hint


# 7 ------------------------------------------------------------------------------------------------------

def test_item07_a_tie_on_validation_auc_keeps_the_later_step_and_still_counts_for_patience():
    from tallrec_cli.train.callbacks import TrainingStatus

    status = TrainingStatus(selection_metric="val_auc")
    for step, auc in ((1, 0.6), (2, 0.6), (3, 0.6), (4, 0.7)):
        status.record({"step": step, "val_auc": auc, "val_loss": 0.69})
        if step == 3:
            assert status.best_step == 3 and status.evals_since_best == 2
    assert status.best_step == 4 and status.evals_since_best == 0


class ZeroLoraB(TrainerCallback):
    """Resets every LoRA B matrix after each step: the adapter the run keeps never moved."""

    def on_step_end(self, args, state, control, model=None, **kwargs):
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "lora_B" in name:
                    parameter.zero_()


def test_item07_a_finished_run_is_kept_even_when_its_adapter_never_moved(tmp_path, tiny_model_dir, reports):
    data = write_dataset(tmp_path / "data")
    run = tmp_path / "run"
    summary = run_training(tiny_config(tiny_model_dir, data, run, training__max_steps=2, training__eval_every=2),
                           callbacks=(ZeroLoraB(),))
    assert summary["steps"] == 2 and read_manifest(run)["kind"] == "train-run"
    assert any("all zero" in warning for warning in reports.warnings), reports.warnings


# 8 ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [
    ["calibrate", "run", "--limit", "-1"], ["calibrate", "run", "--limit", "0"],
    ["calibrate", "run", "--batch-size", "-3"], ["audit", "-t", "t", "-o", "o", "--batch-size", "0"],
    ["audit", "-t", "t", "-o", "o", "--bootstrap", "-3"], ["audit", "-t", "t", "-o", "o", "--limit", "-1"]])
def test_item08_calibrate_and_audit_refuse_bad_numbers_at_parse_time(args):
    result = cli(*args)
    assert result.exit_code == 2 and "Invalid value" in result.output


def test_item08_the_library_refuses_a_limit_below_one(tmp_path):
    from tallrec_cli.eval.records import load_test_records

    test = write_valid_data(tmp_path)
    for limit in (0, -1):
        with pytest.raises(ConfigError, match="limit must be at least 1"):
            load_test_records(test, "test", limit)


# 9 ------------------------------------------------------------------------------------------------------

def test_item09_ensemble_baseline_without_ensemble_is_an_error(tmp_path):
    candidates = tmp_path / "c.jsonl"
    candidates.write_text(json.dumps({"liked": "A", "disliked": "B", "candidate": "C"}) + "\n")
    error = error_of(cli("predict", "--model", tmp_path / "m", "--input", candidates, "-o", tmp_path / "p.jsonl",
                         "--ensemble-baseline", "gbdt"))
    assert "--ensemble" in error.message


def test_item09_valid_pointing_at_the_training_file_is_refused(tmp_path, tiny_model_dir):
    data = write_dataset(tmp_path / "data")
    error = error_of(cli("train", "--model", tiny_model_dir, "--train", data, "--valid", data / "train.jsonl",
                         "-o", tmp_path / "run"))
    assert "data.valid" in error.message and not (tmp_path / "run").exists()
    run = make_train_run(tmp_path / "made", str(tiny_model_dir), valid=write_valid_data(tmp_path / "v"))
    trained_on = read_manifest(run)["data"]["train"]
    assert "training data" in error_of(cli("calibrate", run, "--valid", trained_on)).message


# 10 -----------------------------------------------------------------------------------------------------

def test_item10_ctrl_c_during_training_exits_130(monkeypatch, capsys):
    from tallrec_cli.cli.app import main
    from tallrec_cli.core.errors import TrainingInterrupted
    from tallrec_cli.train import run as training

    def interrupted(config, resume=False):
        raise TrainingInterrupted(3, "interrupted at step 3; a checkpoint is saved", "continue with --resume")

    monkeypatch.setattr(training, "run_training", interrupted)
    monkeypatch.setattr(sys, "argv", ["tallrec", "train"])
    with pytest.raises(SystemExit) as stopped:
        main()
    assert stopped.value.code == 130 and "interrupted at step 3" in capsys.readouterr().err


def test_item10_training_never_goes_past_its_last_step(tmp_path, tiny_model_dir):
    data = write_dataset(tmp_path / "data")  # 16 records, 4 per step: step 2 of 2 ends mid-epoch
    run = tmp_path / "run"
    config = tiny_config(tiny_model_dir, data, run, training__max_steps=2)
    summary = run_training(config, callbacks=(InterruptAt(2),))  # Ctrl-C at the last step: the run ends anyway
    assert summary["steps"] == summary["max_steps"] == 2 and (run / "manifest.json").exists()
    (run / "manifest.json").unlink()  # killed after its last checkpoint: --resume finishes it, no step more
    summary = run_training(resume_config(run), resume=True)
    assert summary["steps"] == summary["max_steps"] == 2


def test_item10_a_killed_sweep_cell_is_not_labelled_running(tmp_path):
    import socket

    from tallrec_cli.sweep.report import missing_cells
    from tallrec_cli.sweep.run import SweepIndex
    from tallrec_cli.sweep.spec import INDEX_NAME

    class Cell:
        id = "k4-s0"

        def describe(self):
            return {"id": self.id}

    index = SweepIndex(tmp_path, "hash", [Cell()])
    index.update("k4-s0", status="running")
    entry = json.loads((tmp_path / INDEX_NAME).read_text())["cells"][0]
    assert (entry["pid"], entry["host"]) == (os.getpid(), socket.gethostname())
    assert missing_cells(tmp_path)[0]["status"] == "running"  # this process is alive
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = {"config_hash": "hash", "cells": [{**entry, "pid": int(gone.stdout)}]}
    (tmp_path / INDEX_NAME).write_text(json.dumps(stale))
    assert missing_cells(tmp_path)[0]["status"] == "killed"


# hints that named the wrong thing -----------------------------------------------------------------------

def test_hint_export_base_mismatch_names_base_model_and_the_base_by_name(tmp_path, tiny_model_dir):
    from tallrec_cli.export.adapter import export_adapter
    from tests.conftest import build_tiny_llama

    run = make_train_run(tmp_path / "run", str(tiny_model_dir), valid=write_valid_data(tmp_path / "data"))
    other = build_tiny_llama(tmp_path / "other", hidden=64)
    with pytest.raises(ModelError) as error:
        export_adapter(run, tmp_path / "export", base_model=str(other))
    assert error.value.hint == f"pass --base-model {tiny_model_dir}"


def test_hint_a_missing_items_file_names_items(tmp_path):
    ratings = tmp_path / "ratings.csv"
    ratings.write_text("user_id,item_id,rating,timestamp\n" + "".join(f"{u},{i},5,{i}\n" for u in range(3)
                                                                     for i in range(12)))
    error = error_of(cli("data", "build", "csv", "--path", ratings, "--items", tmp_path / "titles.csv",
                         "-o", tmp_path / "out"))
    assert "titles.csv" in error.message and "--items" in error.hint and "--path" not in error.hint


def test_hint_a_read_only_tallrec_home_says_so_and_doctor_fails_it(tmp_path, monkeypatch):
    import tempfile

    from tallrec_cli.core.files import tallrec_home, user_os_error
    from tallrec_cli.train.doctor import check_disk

    inside = user_os_error(OSError(errno.EROFS, "Read-only file system", str(tallrec_home() / "models" / "x")))
    assert "TALLREC_HOME" in inside.hint and "output" not in inside.hint
    elsewhere = user_os_error(OSError(errno.EROFS, "Read-only file system", str(tmp_path / "out")))
    assert "output folder" in elsewhere.hint

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(tallrec_home()))

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    check = check_disk(tallrec_home())
    assert check.verdict == "fail" and "read-only" in check.detail and "TALLREC_HOME" in check.fix


def test_hint_doctor_keeps_the_recipes_actual_problem(tmp_path):
    from tallrec_cli.train.doctor import check_recipe_fit

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("lora: {rank: 8}\n")
    check = check_recipe_fit(recipe)
    assert check.verdict == "fail" and "lora.rank" in check.detail


def test_hint_adapters_rm_without_yes_and_no_terminal(tmp_path):
    (tmp_path / "store" / "movies").mkdir(parents=True)
    result = cli("adapters", "rm", "movies", "--store", tmp_path / "store")
    assert isinstance(error_of(result), ConfigError) and "--yes" in result.exception.hint
    assert (tmp_path / "store" / "movies").is_dir()


def test_hint_a_store_that_is_a_file(tmp_path):
    store = tmp_path / "store"
    store.write_text("not a folder")
    assert "is a file" in error_of(cli("adapters", "list", "--store", store)).message


def test_hint_the_seeds_example_is_seeds():
    from data_builders.sampling import parse_int_list

    with pytest.raises(DataError) as error:
        parse_int_list("-1", "seeds")
    assert "--seeds 0,1,2" in error.value.hint


def _audit(auc: float, auc_ci: list[float], diff: float, diff_ci: list[float], lift: float) -> dict:
    return {"overall": {"auc": auc, "auc_ci95": auc_ci}, "leaks_found": [], "notes": [],
            "history_ablation": {"auc_diff": diff, "auc_diff_ci95": diff_ci, "auc_lift_share_from_history": lift}}


def test_hint_audit_puts_no_share_on_a_chance_level_auc():
    from tallrec_cli.cli.render import audit_summary_lines

    chance = " ".join(audit_summary_lines(_audit(0.507, [0.45, 0.56], -0.0264, [-0.08, 0.03], 3.71)))
    assert "371%" not in chance and "not significant" in chance
    moved = " ".join(audit_summary_lines(_audit(0.507, [0.45, 0.56], 0.02, [0.01, 0.03], 2.0)))
    assert "above 0.5 goes" not in moved and "not significantly above chance" in moved
    real = " ".join(audit_summary_lines(_audit(0.75, [0.70, 0.80], -0.10, [-0.15, -0.05], 0.4)))
    assert "40% of the AUC above 0.5" in real


def test_hint_a_full_disk_names_the_path(tmp_path):
    from tallrec_cli.core.files import atomic_path, staged_dir, user_os_error

    for where, context in ((tmp_path / "out", lambda: staged_dir(tmp_path / "out", "samples")),
                           (tmp_path / "file.json", lambda: atomic_path(tmp_path / "file.json"))):
        with pytest.raises(OSError) as raised, context():
            raise OSError(errno.ENOSPC, "No space left on device")  # a write that names no file
        problem = user_os_error(raised.value)
        assert str(where) in problem.message and "a file" not in problem.message


def test_hint_the_registry_table_shows_sizes_and_base_names_that_fit(tmp_path, tiny_model_dir):
    run = make_train_run(tmp_path / "run", str(tiny_model_dir), valid=write_valid_data(tmp_path / "data"), r=2,
                         targets=("q_proj",))
    store = tmp_path / "store"
    assert cli("export", run, "--to-registry", "--name", "movies", "--store", store).exit_code == 0
    output = cli("adapters", "list", "--store", store, columns=80).output
    assert " KB" in output and "0.0 MB" not in output
    assert Path(tiny_model_dir).name in output and str(tiny_model_dir) not in output.replace("\n", "")
