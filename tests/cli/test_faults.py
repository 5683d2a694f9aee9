"""Issue 11: nothing lost, nothing crashes. One test (or a few) per numbered item of the issue, with faults
injected: monkeypatched writes raising ENOSPC / EROFS / EBUSY, and SIGKILL of a subprocess in the middle of
an overwrite and of a checkpoint write. New names are imported inside the tests, so each test fails on its
own on the code before the fix."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tallrec_cli.cli.app import app
from tallrec_cli.core.errors import ArtifactError, ConfigError, DataError, ModelError, ResourceError, TallrecError
from tallrec_cli.core.files import file_hashes
from tallrec_cli.core.manifests import read_manifest, write_manifest
from tests.export_helpers import make_train_run, write_valid_data
from tests.train_helpers import tiny_config, write_dataset

REPO = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("single_torch_thread")


def cli(*args):
    return CliRunner().invoke(app, [str(arg) for arg in args])


def error_of(result) -> TallrecError:
    assert isinstance(result.exception, TallrecError), (result.exception, result.output)
    return result.exception


def run_main(monkeypatch, capsys, *argv) -> tuple[int, str]:
    """The console-script entry point (its error handling is what users see), with its exit code."""
    from tallrec_cli.cli.app import main

    monkeypatch.setattr(sys, "argv", ["tallrec", *map(str, argv)])
    with pytest.raises(SystemExit) as stopped:
        main()
    return stopped.value.code, capsys.readouterr().err


def sample_dataset(folder: Path) -> Path:
    write_dataset(folder, train=16, valid=8)
    write_manifest(folder, "dataset", {})
    return folder


def wait_for(path: Path, process: subprocess.Popen, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"the subprocess ended first: {process.stderr.read()}")
        assert time.monotonic() < deadline, "the subprocess never reached the fault point"
        time.sleep(0.2)


def kill(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_model_dir) -> Path:
    root = tmp_path_factory.mktemp("fault-run")
    return make_train_run(root / "run", str(tiny_model_dir), valid=write_valid_data(root / "data"))


@pytest.fixture()
def data_dir(tmp_path):
    return write_dataset(tmp_path / "data")


# 1 ------------------------------------------------------------------------------------------------------

def test_item01_output_that_is_contains_or_lies_inside_an_input_is_refused(tmp_path, tiny_run):
    dataset = sample_dataset(tmp_path / "ds")
    before = file_hashes(dataset)
    assert "input" in error_of(cli("data", "sample", dataset, "--shots", "4", "--seeds", "0", "-o", dataset,
                                   "--overwrite")).message
    assert "input" in error_of(cli("data", "sample", dataset, "--shots", "4", "--seeds", "0", "-o", tmp_path,
                                   "--overwrite")).message  # contains the input
    raw = tmp_path / "ml"
    raw.mkdir()
    (raw / "u.data").write_text("1\t1\t5\t1\n")
    assert "input" in error_of(cli("data", "build", "movielens-100k", "--path", raw, "-o", raw / "out",
                                   "--overwrite")).message  # lies inside the input
    assert (raw / "u.data").exists() and file_hashes(dataset) == before
    run_files = file_hashes(tiny_run)
    assert "input" in error_of(cli("export", tiny_run, "-o", tiny_run, "--overwrite")).message
    assert file_hashes(tiny_run) == run_files


# 2 ------------------------------------------------------------------------------------------------------

def test_item02_overwrite_onto_a_mount_point_swaps_the_contents(tmp_path, monkeypatch):
    from tallrec_cli.core import files as io

    target = tmp_path / "volume"
    target.mkdir()
    (target / "old.txt").write_text("old")
    write_manifest(target, "samples", {})
    real_replace = os.replace

    def busy_replace(source, destination, *args, **kwargs):
        if target in (Path(source), Path(destination)):  # what renaming a mount point does
            raise OSError(errno.EBUSY, "Device or resource busy", str(target))
        return real_replace(source, destination, *args, **kwargs)

    def busy_exchange(first, second):
        raise OSError(errno.EBUSY, "Device or resource busy", str(second))

    monkeypatch.setattr(os, "replace", busy_replace)
    monkeypatch.setattr(io, "_exchange", busy_exchange, raising=False)
    with io.staged_dir(target, "samples", overwrite=True) as staging:
        (staging / "new.txt").write_text("new")
        write_manifest(staging, "samples", {})
    assert sorted(path.name for path in target.iterdir()) == ["manifest.json", "new.txt"]
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".")]


KILL_DURING_SWAP = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from tallrec_cli.core import files as io
    from tallrec_cli.core.manifests import write_manifest

    target, ready = Path(sys.argv[1]), Path(sys.argv[2])
    io._exchange = lambda first, second: False  # the two-rename path, where a kill can fall between the renames
    real_replace = os.replace

    def replace(source, destination):
        if Path(destination) == target:  # the new folder is about to be renamed in: be killed here
            ready.write_text("now")
            time.sleep(300)
        real_replace(source, destination)

    os.replace = replace
    with io.staged_dir(target, "samples", overwrite=True) as staging:
        (staging / "data.txt").write_text("new")
        write_manifest(staging, "samples", {"files": io.file_hashes(staging)})
""")


def test_item02_sigkill_in_the_middle_of_an_overwrite_loses_nothing(tmp_path):
    from tallrec_cli.core import files as io

    target = tmp_path / "out"
    target.mkdir()
    (target / "data.txt").write_text("old")
    write_manifest(target, "samples", {"files": file_hashes(target)})
    ready = tmp_path / "ready"
    process = subprocess.Popen([sys.executable, "-c", KILL_DURING_SWAP, str(target), str(ready)], cwd=REPO,
                               stderr=subprocess.PIPE, text=True)
    wait_for(ready, process)
    kill(process)
    with pytest.raises(RuntimeError), io.staged_dir(target, "samples", overwrite=True):
        raise RuntimeError("the next command touching the folder fails too")
    assert (target / "data.txt").read_text() == "old"  # the old version is back in place, whole
    assert read_manifest(target)["files"] == file_hashes(target)


# 3 ------------------------------------------------------------------------------------------------------

def test_item03_resume_continues_the_folder_given_not_the_recorded_one(tmp_path, tiny_model_dir, data_dir):
    from tallrec_cli.train.config import resume_config
    from tallrec_cli.train.run import run_training
    from tests.train.test_train_run import InterruptAt

    original = tmp_path / "runs" / "original"
    with pytest.raises(TallrecError, match="interrupted"):
        run_training(tiny_config(tiny_model_dir, data_dir, original), callbacks=(InterruptAt(2),))
    moved = tmp_path / "other-disk" / "moved"
    shutil.copytree(original, moved)
    config = resume_config(moved)
    assert Path(config.output.dir) == moved
    run_training(config, resume=True)
    assert (moved / "manifest.json").exists() and not (original / "manifest.json").exists()


# 4 ------------------------------------------------------------------------------------------------------

def test_item04_overwrite_keeps_the_finished_run_until_the_new_one_is_complete(tmp_path, tiny_model_dir, data_dir,
                                                                              monkeypatch):
    from tallrec_cli.train import run as train

    run = tmp_path / "run"
    train.run_training(tiny_config(tiny_model_dir, data_dir, run))
    finished = file_hashes(run)

    def fail(*args, **kwargs):
        raise RuntimeError("killed while loading the model")

    with monkeypatch.context() as patch:
        patch.setattr(train, "build_model", fail)
        with pytest.raises(RuntimeError):
            train.run_training(tiny_config(tiny_model_dir, data_dir, run, output__overwrite=True, training__lr=0.02))
    assert file_hashes(run) == finished  # the old run is untouched
    train.run_training(tiny_config(tiny_model_dir, data_dir, run, output__overwrite=True, training__lr=0.02))
    assert read_manifest(run)["config"]["training"]["lr"] == 0.02
    assert sorted(path.name for path in tmp_path.iterdir()) == ["data", "run"]  # nothing pending is left


# 5 ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("limit", ["-1", "0"])
def test_item05_eval_limit_must_be_positive(tmp_path, limit):
    result = cli("eval", "--model", tmp_path, "--test", tmp_path / "t.jsonl", "--limit", limit, "-o", tmp_path / "e")
    assert result.exit_code == 2 and "--limit" in result.output


# 6 ------------------------------------------------------------------------------------------------------

def test_item06_sweep_report_names_the_missing_cells(tmp_path, tiny_model_dir, monkeypatch):
    from tallrec_cli import sweep
    from tallrec_cli.sweep import report as sweep_report
    from tests.sweep.test_sweep_run import FakeRunner, make_spec
    from tests.sweep.test_sweep_run import write_dataset as write_sweep_dataset

    monkeypatch.setattr(sweep_report, "plot_results", lambda summary, path: Path(path).write_bytes(b"\x89PNG stub"))
    dataset = write_sweep_dataset(tmp_path / "data")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"model: {{name: {tiny_model_dir}, dtype: float32}}\ndata: {{train: {dataset}}}\n"
                      "training: {max_steps: 2, batch_size: 2, micro_batch_size: 2}\n")
    sweep_dir = tmp_path / "sweep"
    sweep.run_sweep(make_spec(recipe, dataset, shots=[4], seeds=[0]), sweep_dir, keep_going=True,
                    runner=FakeRunner(fail={"k4-s0": RuntimeError("killed")}))
    result = cli("sweep", "report", sweep_dir)
    assert result.exit_code == 0, result.output
    said = result.output + result.stderr
    assert "k4-s0" in said and "no result" in said
    assert [cell["id"] for cell in json.loads((sweep_dir / "results.json").read_text())["missing_cells"]] == ["k4-s0"]


# 7 ------------------------------------------------------------------------------------------------------

def test_item07_eval_of_an_export_checks_its_recorded_hashes(tmp_path, tiny_run, tiny_model_dir):
    from tallrec_cli.export.adapter import export_adapter
    from tallrec_cli.model.loading import load_for_inference

    export = export_adapter(tiny_run, tmp_path / "export").path
    weights = export / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x01  # a flipped bit inside a tensor: the file still parses
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="does not match"):
        load_for_inference(str(tiny_model_dir), str(export), dtype="float32")


# 8 ------------------------------------------------------------------------------------------------------

def test_item08_disk_full_during_a_checkpoint_is_an_error_and_resume_skips_it(tmp_path, tiny_model_dir, data_dir,
                                                                            monkeypatch):
    import transformers

    from tallrec_cli.train.config import resume_config
    from tallrec_cli.train.run import run_training

    real_save = transformers.Trainer._save_rng_state

    def disk_full_at_step_4(self, output_dir):
        if self.state.global_step == 4:
            raise OSError(errno.ENOSPC, "No space left on device", str(output_dir))
        return real_save(self, output_dir)

    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(transformers.Trainer, "_save_rng_state", disk_full_at_step_4)
        with pytest.raises(ResourceError, match="no space left") as error:
            run_training(tiny_config(tiny_model_dir, data_dir, run))
    assert "--resume" in error.value.hint
    assert sorted(path.name for path in (run / "checkpoints").glob("checkpoint-*")) == ["checkpoint-2"]
    run_training(resume_config(run), resume=True)
    assert (run / "manifest.json").exists()


def test_item08_resume_names_and_skips_a_broken_checkpoint(tmp_path, tiny_model_dir, data_dir, capsys):
    from tallrec_cli.train.config import resume_config
    from tallrec_cli.train.run import run_training
    from tests.train.test_train_run import InterruptAt

    run = tmp_path / "run"
    with pytest.raises(TallrecError, match="interrupted"):
        run_training(tiny_config(tiny_model_dir, data_dir, run), callbacks=(InterruptAt(2),))
    broken = run / "checkpoints" / "checkpoint-3"  # what a save killed half-way left before staging
    shutil.copytree(run / "checkpoints" / "checkpoint-2", broken)
    (broken / "trainer_state.json").unlink()
    run_training(resume_config(run), resume=True)
    assert (run / "manifest.json").exists()
    assert "checkpoint-3" in capsys.readouterr().err


KILL_DURING_CHECKPOINT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import torch, transformers
    from tallrec_cli.train.run import run_training
    from tests.train_helpers import tiny_config

    model, data, run, ready = sys.argv[1:5]
    torch.set_num_threads(1)
    real_save = transformers.Trainer._save_optimizer_and_scheduler

    def save(self, output_dir):
        real_save(self, output_dir)
        if self.state.global_step == 4:  # optimizer written, trainer state not yet: be killed here
            Path(ready).write_text("now")
            time.sleep(300)

    transformers.Trainer._save_optimizer_and_scheduler = save
    run_training(tiny_config(Path(model), Path(data), Path(run)))
""")


def test_item08_sigkill_during_a_checkpoint_write_then_resume(tmp_path, tiny_model_dir, data_dir):
    from tallrec_cli.train.config import resume_config
    from tallrec_cli.train.run import run_training

    run, ready = tmp_path / "run", tmp_path / "ready"
    process = subprocess.Popen([sys.executable, "-c", KILL_DURING_CHECKPOINT, str(tiny_model_dir), str(data_dir),
                                str(run), str(ready)], cwd=REPO, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(REPO)})
    wait_for(ready, process)
    kill(process)
    run_training(resume_config(run), resume=True)
    assert (run / "manifest.json").exists()


# 9 ------------------------------------------------------------------------------------------------------

def test_item09_output_that_is_a_file_or_a_symlink(tmp_path):
    dataset = sample_dataset(tmp_path / "ds")
    a_file = tmp_path / "taken.txt"
    a_file.write_text("keep me")
    assert "is a file" in error_of(cli("data", "sample", dataset, "--shots", "4", "--seeds", "0", "-o", a_file,
                                       "--overwrite")).message
    assert a_file.read_text() == "keep me"
    real = tmp_path / "real"
    assert cli("data", "sample", dataset, "--shots", "4", "--seeds", "0", "-o", real).exit_code == 0
    link = tmp_path / "latest"
    link.symlink_to(real)
    result = cli("data", "sample", dataset, "--shots", "8", "--seeds", "1", "-o", link, "--overwrite")
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and sorted(read_manifest(link)["files"]) == ["train-k8-seed1.jsonl"]


def test_item09_read_only_and_full_disks_fail_before_work_with_a_clear_error(tmp_path, monkeypatch, capsys):
    import tempfile

    from tallrec_cli.cli.commands import data as data_command
    from tallrec_cli.cli.commands import evaluate

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path))

    candidates = tmp_path / "c.jsonl"
    candidates.write_text(json.dumps({"liked": "A", "disliked": "B", "candidate": "C"}) + "\n")
    with monkeypatch.context() as patch:
        patch.setattr(tempfile, "TemporaryFile", read_only)
        patch.setattr(evaluate, "load_scoring_model", lambda *args: pytest.fail("the model was loaded"))
        error = error_of(cli("predict", "--model", tmp_path / "model", "--input", candidates,
                                 "-o", tmp_path / "p.jsonl"))
    assert isinstance(error, ResourceError) and "read-only" in error.message

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x"))

    monkeypatch.setattr(data_command, "dataset_stats", disk_full)
    code, err = run_main(monkeypatch, capsys, "data", "stats", tmp_path)
    assert code == 2 and "no space left" in err and "internal error" not in err


# 10 -----------------------------------------------------------------------------------------------------

def _damage(adapter: Path, how: str) -> None:
    weights = adapter / "adapter_model.safetensors"
    if how == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif how == "empty":
        weights.write_bytes(b"")
    elif how == "header":
        weights.write_bytes(b"\xff" * 16 + weights.read_bytes()[16:])
    elif how == "config":
        (adapter / "adapter_config.json").write_text("{not json")
    elif how == "nan":
        from safetensors.torch import load_file, save_file

        tensors = load_file(weights)
        name = next(iter(tensors))
        tensors[name] = torch.full_like(tensors[name], float("nan"))
        save_file(tensors, weights)


@pytest.mark.parametrize("how", ["truncated", "empty", "header", "config", "nan"])
def test_item10_corrupt_adapters_are_named_not_crashes(tmp_path, tiny_run, how):
    from tallrec_cli.model.loading import load_for_inference

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    _damage(run / "adapter", how)
    with pytest.raises(ArtifactError, match="adapter"):
        load_for_inference(adapter=str(run), dtype="float32")


# 11 -----------------------------------------------------------------------------------------------------

def test_item11_negative_seeds_batch_sizes_and_a_folder_as_recipe(tmp_path):
    dataset = sample_dataset(tmp_path / "ds")
    assert "seeds" in error_of(cli("data", "sample", dataset, "--shots", "4", "--seeds=-1", "-o", tmp_path / "o")).message
    result = cli("eval", "--model", tmp_path, "--test", dataset, "--batch-size", "-3", "-o", tmp_path / "e")
    assert result.exit_code == 2 and "--batch-size" in result.output
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "a.yaml").write_text("{}\n")
    assert "is a folder" in error_of(cli("train", recipes)).message


# 12 -----------------------------------------------------------------------------------------------------

def test_item12_text_fields_keep_the_text_typed(tmp_path):
    from tallrec_cli.core.config import parse_overrides
    from tallrec_cli.train.config import TrainConfig, load_train_config

    config = load_train_config(None, parse_overrides(["labels.positive=Yes", "labels.negative=no"], TrainConfig))
    assert (config.labels.positive, config.labels.negative) == ("Yes", "no")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("labels: {positive: Yes, negative: No}\ntraining: {eval_at_start: true}\n")
    config = load_train_config(recipe)
    assert (config.labels.positive, config.labels.negative) == ("Yes", "No") and config.training.eval_at_start is True


# 13 -----------------------------------------------------------------------------------------------------

def test_item13_a_schedule_that_never_leaves_lr_0_is_refused_before_loading(tmp_path, tiny_model_dir, data_dir,
                                                                           monkeypatch):
    from tallrec_cli.train import run as train

    monkeypatch.setattr(train, "build_model", lambda *args: pytest.fail("the model was loaded"))
    config = tiny_config(tiny_model_dir, data_dir, tmp_path / "run", training__max_steps=1, training__warmup_steps=2)
    with pytest.raises(ConfigError, match="warmup_steps"):
        train.run_training(config)


# 14 -----------------------------------------------------------------------------------------------------

def test_item14_a_run_killed_before_its_first_checkpoint_resumes_from_step_0(tmp_path, tiny_model_dir, data_dir,
                                                                            monkeypatch):
    from tallrec_cli.train import config as train_config
    from tallrec_cli.train import run as train

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(train, "build_model", interrupted)
        with pytest.raises(KeyboardInterrupt):
            train.run_training(tiny_config(tiny_model_dir, data_dir, run))
    assert not (run / "checkpoints").exists()
    summary = train.run_training(train_config.resume_config(run), resume=True)
    assert summary["steps"] == 4 and (run / "manifest.json").exists()


# 15 -----------------------------------------------------------------------------------------------------

def test_item15_existing_results_and_taken_names_are_found_before_the_work(tmp_path, tiny_run, tiny_model_dir,
                                                                         monkeypatch):
    from tallrec_cli.cli.commands import evaluate
    from tallrec_cli.model import loading as models

    with monkeypatch.context() as patch:  # label words are checked with the tokenizer, before any weights load
        patch.setattr(models, "load_model", lambda *args, **kwargs: pytest.fail("the weights were loaded"))
        error = error_of(cli("eval", "--model", tiny_model_dir, "--test", write_valid_data(tmp_path / "w"),
                             "--label-words", "Yes,Nope nope", "-o", tmp_path / "labels"))
    assert "Nope nope" in error.message

    from tallrec_cli.eval.records import result_name

    test = write_valid_data(tmp_path / "v")
    existing = tmp_path / "evals" / result_name(test)
    existing.mkdir(parents=True)
    (existing / "metrics.json").write_text("{}")
    monkeypatch.setattr(evaluate, "load_scoring_model", lambda *args: pytest.fail("the model was loaded"))
    assert "already exists" in error_of(cli("eval", "--adapter", tiny_run, "--test", test,
                                            "-o", tmp_path / "evals")).message

    store = tmp_path / "store"
    (store / "taken").mkdir(parents=True)
    (store / "taken" / "manifest.json").write_text("{}")
    error = error_of(cli("export", tiny_run, "-o", tmp_path / "export", "--to-registry", "--name", "taken",
                         "--store", store))
    assert "taken" in error.message and not (tmp_path / "export").exists()


# 16 -----------------------------------------------------------------------------------------------------

def test_item16_values_that_were_accepted_silently(tmp_path, tiny_model_dir, data_dir):
    from data_builders.build import build_config
    from tallrec_cli.core.config import parse_overrides

    for option, value in (("--batch-size", "0"), ("--bootstrap", "-5")):
        result = cli("eval", "--model", tmp_path, "--test", data_dir, option, value, "-o", tmp_path / "e")
        assert result.exit_code == 2 and option in result.output
    with pytest.raises(ConfigError, match="history_len: expected an integer, got 2.5"):
        build_config("movielens-latest", None, parse_overrides(["history_len=2.5"]))
    empty = tmp_path / "valid.json"
    empty.write_text("[]")
    assert isinstance(error_of(cli("data", "import", empty, "-o", tmp_path / "imported")), DataError)

    from tallrec_cli.model.loading import load_tokenizer, resolve_model_source
    from tallrec_cli.model.prompts import load_template
    from tallrec_cli.train.data import prepare_data

    config = tiny_config(tiny_model_dir, data_dir, tmp_path / "run", data__shots=100000)
    data = prepare_data(config, load_tokenizer(resolve_model_source(str(tiny_model_dir))), load_template("alpaca"))
    assert any("100000" in note and "all" in note for note in data.notes)


# 17 -----------------------------------------------------------------------------------------------------

def test_item17_ctrl_c_outside_the_training_loop_says_so_and_exits_130(tmp_path, monkeypatch, capsys):
    from tallrec_cli.cli.commands import data as data_command

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(data_command, "dataset_stats", ctrl_c)
    code, err = run_main(monkeypatch, capsys, "data", "stats", tmp_path)
    assert code == 130 and "interrupted" in err


# 18 -----------------------------------------------------------------------------------------------------

def test_item18_every_problem_in_one_pass_with_plain_type_names():
    from tallrec_cli.train.config import load_train_config

    with pytest.raises(ConfigError) as error:
        load_train_config(None, {"training": {"seed": "abc", "batch_size": 6, "micro_batch_size": 4},
                                 "data": {"shots": "many"}})
    message = error.value.message
    assert "training.seed: expected an integer" in message and "multiple of" in message
    assert "data.shots: expected an integer or null" in message and "NoneType" not in message


def test_item18_missing_folders_names_and_record_numbers(tmp_path):
    assert "does not exist" in error_of(cli("data", "stats", tmp_path / "nowhere")).message
    store = tmp_path / "store"
    store.mkdir()
    error = error_of(cli("adapters", "verify", "nope", "--store", store))
    assert "no adapter named 'nope'" in error.message and "adapters list" in error.hint
    bad = tmp_path / "valid.json"
    bad.write_text(json.dumps([{"instruction": "i", "input": "x", "output": "Maybe."}]))
    assert f"{bad}: record 1:" in error_of(cli("data", "import", bad, "-o", tmp_path / "o")).message


def test_item18_an_unreachable_hub_fails_at_once(monkeypatch):
    import socket

    from huggingface_hub import constants

    from tallrec_cli.model.loading import load_tokenizer, resolve_model_source

    def unreachable(*args, **kwargs):
        raise OSError(errno.ENETUNREACH, "Network is unreachable")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(socket, "create_connection", unreachable)
    with pytest.raises(ModelError, match="cannot be reached"):
        load_tokenizer(resolve_model_source("nobody-here/no-such-model"))
