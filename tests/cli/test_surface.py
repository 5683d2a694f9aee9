"""What a person sees: result tables keep every number whole at 80 columns, progress is plain lines off a
terminal, third-party noise stays out of a default run, `--help` examples and choices, one command style,
and the installed import names."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from tallrec_cli.cli.app import app
from tallrec_cli.cli.console import Column, PlainProgress, ResultTable, table
from tests.conftest import require_module

REPO = Path(__file__).resolve().parents[2]
NUMBER = re.compile(r"[+-]?\d*\.\d+(?:-[+-]?\d*\.\d+)?|\d+")


def render(renderable, width: int = 80) -> str:
    out = Console(file=io.StringIO(), width=width, color_system=None, legacy_windows=False)
    out.print(renderable)
    return out.file.getvalue()


def numbers_in(cells) -> set[str]:
    return {match for cell in cells for match in NUMBER.findall(re.sub(r"\[/?[a-z ]*\]", "", str(cell)))}


def assert_numbers_whole(result: ResultTable, width: int = 80) -> str:
    text = render(result, width)
    assert "…" not in text, text
    assert max(len(line) for line in text.splitlines()) <= width
    numeric = {index for index, column in enumerate(result.columns) if column.numeric}
    cells = [cell.plain for row in result.rows for index, cell in enumerate(row) if index in numeric]
    missing = {number for number in numbers_in(cells)
               if not re.search(rf"(?<![\d.]){re.escape(number)}(?![\d])", text)}
    assert not missing, f"cut or missing numbers {missing}:\n{text}"
    return text


def metrics(auc: float, users: int | None = 610) -> dict:
    return {"records": 3050, "users": users, "gauc_users": 402 if users else None, "auc": auc,
            "auc_ci95": [auc - 0.031, auc + 0.029], "gauc": 0.5123 if users else None,
            "gauc_ci95": [0.4711, 0.5532] if users else None, "log_loss": 0.6931, "ece": 0.0412}


def comparison() -> dict:
    rows = [{"label": "tuned SmolLM2-135M (runs/demo/run)", "metrics": metrics(0.7451), "difference": None}]
    for label, auc in (("zero-shot SmolLM2-135M", 0.5142), ("history share", 0.7821), ("GBDT (full data)", 0.8213)):
        rows.append({"label": label, "metrics": metrics(auc), "difference": {
            "auc_diff": 0.7451 - auc, "auc_diff_ci95": [0.7451 - auc - 0.04, 0.7451 - auc + 0.04],
            "gauc_diff": -0.0632, "gauc_diff_ci95": [-0.1543, 0.0291]}})
    return {"rows": rows}


def sweep_summary() -> list[dict]:
    from tallrec_cli.sweep import summarize

    observations = []
    for test in ("movielens-100k", "bookcrossing"):
        for shots in (0, 16, 64, 256):
            for seed in (0, 1, 2):
                for method, kind in (("smollm2-135m", "lora"), ("popularity", "baseline"), ("logreg", "baseline")):
                    value = 0.5 + 0.001 * (shots % 97) + 0.01 * seed + 0.003 * len(method)
                    observations.append({"method": method, "kind": kind, "test": test, "shots": shots,
                                         "seed": seed, "auc": value, "gauc": value - 0.05, "records": 3050,
                                         "users": 610, "gauc_users": 402})
    return summarize(observations)


def result_tables() -> dict[str, ResultTable]:
    from tallrec_cli.cli.commands.evaluate import metrics_table
    from tallrec_cli.cli.render import comparison_table, sweep_table

    long_name = "many-users-movielens-latest-small-test"
    stats_columns = ["split", "records", "users", "items", "positive rate", "history mean", "chars mean",
                     "chars p95", "chars max", "tokens mean", "tokens p95", "tokens max"]
    stats_rows = [[split, 24400, 610, 8123, 0.5312, 9.87, 1234.5, 1789.0, 2456, 312.4, 455.0, 601]
                  for split in ("train", "valid", "test")]
    return {
        "eval": metrics_table("eval (pair scores)", [(long_name, metrics(0.7451)), ("tallrec-book-test",
                                                                                   metrics(0.5, None))]),
        "compare": comparison_table(comparison(), f"{long_name}: model vs references (Δ = model - row, paired "
                                    "95% CI; sig: AUC/GAUC + win, - loss, = no difference)"),
        "baselines": metrics_table("baselines", [(f"{name}\n{long_name}", metrics(0.8213))
                                                 for name in ("history-share", "gbdt", "popularity")]),
        "sweep report": sweep_table(sweep_summary()),
        "data stats": table("data/movielens-latest", stats_columns, stats_rows),
        "calibrate": table("validation calibration (512 records)", ["scores", "log-loss", "Brier", "ECE"],
                           [["raw", 0.69314, 0.25012, 0.04123], ["temperature", 0.6512, 0.2301, 0.0112]]),
        "adapters list": table("adapters in /home/someone/.cache/tallrec/adapters",
                               ["name", "base model", "dataset", "shots", "seed", "AUC", "size", "date"],
                               [["movie-64-0", "HuggingFaceTB/SmolLM2-135M-Instruct", "movielens-100k", 64, 0,
                                 0.74512, "18.9 MB", "2026-12-06"]]),
        "train summary": table("evaluations", ["step", "epoch", "train_loss", "val_auc", "val_loss", "elapsed_s"],
                               [[step, step / 64, 0.6931 - step / 1e4, 0.7123, 0.6512, 123.4] for step in (0, 32, 64)]),
    }


@pytest.mark.parametrize("name", list(result_tables()))
def test_no_number_of_a_result_table_is_cut_at_80_columns(name):
    assert_numbers_whole(result_tables()[name])


def test_the_training_summary_keeps_its_numbers_at_80_columns():
    from tallrec_cli.cli.commands.train import _render_summary

    summary = {"run_dir": "runs/many-users-movielens-latest-small/smollm2-135m-lora-r16-seed0", "steps": 64,
               "max_steps": 64, "stopped_early": False, "best_step": 64, "best_val_auc": 0.7123,
               "auc_undefined": False, "best_val_loss": 0.6512, "start_val_auc": 0.5012, "selected_on": "val_auc",
               "train_records": 512, "valid_records": 200, "truncated_records": 3, "seed": 0, "sample_seed": 0,
               "processes": 1, "wall_seconds": 301.2,
               "evaluations": [{"step": step, "epoch": step / 64, "train_loss": 0.6931, "val_auc": 0.7123,
                                "val_loss": 0.6512, "elapsed_s": 123.4} for step in (0, 32, 64)]}
    out = Console(file=io.StringIO(), width=80, color_system=None)
    _render_summary(summary, out)
    text = out.file.getvalue()
    assert "…" not in text and "0.7123" in text and "0.5012" in text and "64 / 64" in text


def test_audit_tables_keep_their_numbers_at_80_columns():
    from tallrec_cli.cli.render import audit_tables
    from tallrec_cli.eval.audit import AuditSpec, run_audit
    from tests.eval.test_audit import clean_split, history_share

    train, test = clean_split()
    for result in audit_tables(run_audit(history_share(), test, train, AuditSpec(resamples=20))):
        assert_numbers_whole(result)


def test_a_table_too_wide_for_the_screen_turns_into_one_block_per_row():
    result = result_tables()["sweep report"]
    assert result.narrowest_width() > 80  # 8 columns of "0.5123 ± 0.0100 (3)": not side by side at 80
    text = assert_numbers_whole(result)
    assert "movielens-100k 16" in text and "method" in text
    wide = render(result, width=result.narrowest_width())
    assert wide.splitlines()[2].count("┃") == 1 + len(result.columns)  # side by side when there is room


def test_headers_wrap_at_spaces_and_text_folds_instead_of_an_ellipsis():
    result = ResultTable("t", [Column("name"), Column("a long header", numeric=True)],
                         [["x" * 90, "0.1234"]])
    text = assert_numbers_whole(result)
    assert "a long" in text and "header" in text


def test_the_doctor_table_is_readable_at_80_columns(monkeypatch):
    from tallrec_cli.cli.commands import doctor
    from tallrec_cli.train.doctor import Check

    checks = [Check("torch", "ok", "torch 2.13.0+cpu, CUDA none"),
              Check("free disk", "warn", "12.3 GiB free in /home/someone/.cache/tallrec",
                    "free space or move TALLREC_HOME")]
    monkeypatch.setattr(doctor, "run_checks", lambda *args, **kwargs: checks)
    result = CliRunner().invoke(app, ["doctor"], env={"COLUMNS": "80"})
    assert "…" not in result.output and "12.3" in result.output and "2.13.0+cpu" in result.output


def test_progress_off_a_terminal_is_plain_lines(capsys):
    from tallrec_cli.cli.console import progress

    bar = progress()
    assert isinstance(bar, PlainProgress)  # pytest's captured stderr is not a terminal
    with bar:
        task = bar.add_task("scoring test", total=40)
        for _ in range(40):
            bar.advance(task, 1)
        training = bar.add_task("training", total=8)
        bar.update(training, completed=8, description="loss 0.6931 | val AUC 0.7123")
    lines = capsys.readouterr().err.splitlines()
    assert not any("\r" in line or "\x1b" in line for line in lines)
    scoring = [line for line in lines if line.startswith("scoring test")]
    assert scoring[0].startswith("scoring test: 0/40") and scoring[-1].startswith("scoring test: 40/40")
    assert len(scoring) == 11  # the start and each tenth, not one line per record
    assert lines[-1].startswith("loss 0.6931 | val AUC 0.7123: 8/8")


def test_commands_print_plain_lines_when_stdout_and_stderr_are_not_terminals(tmp_path):
    result = CliRunner().invoke(app, ["data", "build", "movielens-latest", "--max-records", "300", "-o",
                                      str(tmp_path / "data")])
    assert result.exit_code == 0, result.output
    for stream in (result.stdout, result.stderr):
        assert "\r" not in stream and "\x1b" not in stream
    progress_lines = [line for line in result.stderr.splitlines() if line.startswith("records: ")]
    assert progress_lines[0].startswith("records: 0/300") and progress_lines[-1].startswith("records: 300/300")
    assert "train" in result.stdout and "0.6000" in result.stdout  # the split table, on stdout


def test_a_default_eval_run_prints_no_third_party_noise(tiny_model_dir, tmp_path):
    """A real process (fresh imports, real stderr) scoring an adapter run of the tiny offline model, the model
    alone beside it (`--compare base`): only tallrec's own progress lines on stderr."""
    from tests.export_helpers import make_train_run, write_valid_data

    test = write_valid_data(tmp_path / "data")
    run = make_train_run(tmp_path / "run", str(tiny_model_dir), valid=test)
    env = {key: value for key, value in os.environ.items() if key != "TALLREC_DEBUG"}
    env.update(COLUMNS="80", PYTHONWARNINGS="default")  # warnings on, as a user's shell may have them
    done = subprocess.run([sys.executable, "-m", "tallrec_cli", "eval", "--adapter", str(run), "--test", str(test),
                           "--compare", "base", "--bootstrap", "10", "--dtype", "float32"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() and all(line.startswith("scoring ") for line in done.stderr.splitlines()), done.stderr
    assert "AUC" in done.stdout
    debug = subprocess.run([sys.executable, "-m", "tallrec_cli", "eval", "--adapter", str(run), "--test", str(test),
                            "--compare", "base", "--bootstrap", "10", "--dtype", "float32", "--overwrite"],
                           capture_output=True, text=True, env={**env, "TALLREC_DEBUG": "1"}, timeout=600)
    # the switch hides real noise, and shows it again (which noise depends on the library versions)
    assert debug.returncode == 0 and any(not line.startswith("scoring ") for line in debug.stderr.splitlines())


def test_the_gguf_loaders_plain_tqdm_bar_is_silenced_and_debug_shows_it():
    """transformers' GGUF conversion (the embedded model's first load) draws a plain tqdm bar that
    transformers' own progress-bar switch does not reach."""
    script = ("from tallrec_cli.core.quiet import quiet_libraries; quiet_libraries()\n"
              "from transformers.modeling_gguf_pytorch_utils import tqdm\n"
              "for _ in tqdm(range(3), desc='GGUF tensors'): pass\n")
    env = {key: value for key, value in os.environ.items() if not key.startswith(("TALLREC_DEBUG", "TQDM_"))}
    quiet = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    loud = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**env, "TALLREC_DEBUG": "1"}, timeout=300)
    assert quiet.returncode == 0 and loud.returncode == 0, quiet.stderr + loud.stderr
    assert "GGUF tensors" not in quiet.stderr and "GGUF tensors" in loud.stderr


@pytest.mark.parametrize("command, example", [
    (["data", "build"], "--set like_threshold=4"), (["train"], "--set lora.r=16"),
    (["sweep", "run"], "--set training.lr=3e-4"), (["doctor"], "--set training.micro_batch_size=4")])
def test_help_examples_of_set_are_keys_of_that_command(command, example):
    from data_builders.config import BuildConfig
    from tallrec_cli.core.config import describe
    from tallrec_cli.train.config import TrainConfig

    text = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "200"}).output
    assert example in text
    key = example.split()[1].split("=")[0]
    assert key in {name for name, _, _ in describe(BuildConfig if command[0] == "data" else TrainConfig)}


def _leaf_commands():
    """(path, click command) of every command, through groups."""
    import typer.main

    stack = [((), typer.main.get_command(app))]
    while stack:
        path, command = stack.pop()
        if hasattr(command, "commands"):  # a group
            stack += [((*path, name), sub) for name, sub in command.commands.items()]
        else:
            yield path, command


def test_every_help_example_uses_options_and_keys_of_the_command_it_names():
    import shlex

    from data_builders.config import BuildConfig
    from tallrec_cli.core.config import describe
    from tallrec_cli.train.config import TrainConfig

    commands = dict(_leaf_commands())
    keys = {"data": {name for name, _, _ in describe(BuildConfig)}, "other": {name for name, _, _ in describe(TrainConfig)}}
    checked = 0
    for path, command in commands.items():
        texts = [command.callback.__doc__ or ""] + [getattr(param, "help", None) or "" for param in command.params]
        for text in texts:
            for example in re.findall(r"`(tallrec [^`]+)`", text):
                words = shlex.split(example)[1:]
                named = next((candidate for candidate in (tuple(words[:2]), tuple(words[:1]), (words[0], "run"))
                              if candidate in commands), None)
                assert named, f"{' '.join(path)}: {example} names no command"
                options = {name for param in commands[named].params for name in (*param.opts, *param.secondary_opts)}
                for index, word in enumerate(words):
                    if word.startswith("-") and word not in ("--help", "--slurm-option=--partition=gpu"):
                        assert word.split("=")[0] in options, f"{' '.join(path)}: {word} in {example}"
                    if word == "--set":
                        assert words[index + 1].split("=")[0] in keys.get(named[0], keys["other"]), example
                checked += 1
            for key in re.findall(r"`--set ([^`=]+)=", text):
                assert key == "KEY" or key in keys.get(path[0], keys["other"]), f"{' '.join(path)}: --set {key}"
    assert checked > 20


def test_the_literal_choices_are_the_librarys_own():
    from data_builders import config as data_config
    from tallrec_cli.cli.commands import _common
    from tallrec_cli.eval import calibration, predict
    from tallrec_cli.model import loading as models
    from tallrec_cli.model import scoring
    from tallrec_cli.train import config as train_config

    pairs = [(_common.ScoreMode, scoring.SCORE_MODES), (_common.PrefixCache, scoring.PREFIX_CACHE_MODES),
             (_common.Dtype, models.DTYPES), (_common.Quantization, models.QUANTIZATIONS),
             (_common.Domain, predict.DOMAINS), (_common.CalibrationMethod, calibration.METHODS),
             (_common.ReportTo, train_config.REPORT_TO), (_common.Source, data_config.SOURCES),
             (_common.Split, data_config.SPLITS), (_common.DataFormat, data_config.FORMATS),
             (_common.HistoryStrategy, data_config.HISTORY_STRATEGIES)]
    for literal, values in pairs:
        assert set(typing.get_args(literal)) == set(values), literal


@pytest.mark.parametrize("args", [
    ["eval", "--model", "m", "--test", "t", "--score", "bogus"],
    ["eval", "--model", "m", "--test", "t", "--prefix-cache", "sometimes"],
    ["predict", "-i", "a.csv", "-o", "b.csv", "--dtype", "float8"],
    ["eval", "--model", "m", "--test", "t", "--quantization", "3bit"],
    ["calibrate", "run", "--method", "isotonic"],
    ["export", "run", "-o", "x", "--dtype", "int8"],
    ["data", "build", "movielens-99k"]])
def test_bad_choices_fail_at_parse_time_and_help_lists_them(args):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "Invalid value" in result.output
    assert "pair|tallrec" in CliRunner().invoke(app, ["eval", "--help"], env={"COLUMNS": "200"}).output


def test_every_command_is_a_module_function_on_its_modules_app():
    import importlib
    import pkgutil

    from tallrec_cli.cli import commands

    for info in pkgutil.iter_modules(commands.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"tallrec_cli.cli.commands.{info.name}")
        assert not hasattr(module, "register")
        for command in module.app.registered_commands:
            assert getattr(module, command.callback.__name__) is command.callback, command.callback


def test_tallrec_keys_lists_every_train_key_with_its_help():
    from tallrec_cli.core.config import describe
    from tallrec_cli.train.config import TrainConfig

    result = CliRunner().invoke(app, ["keys", "train"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for name, _, help_text in describe(TrainConfig):
        assert name in result.output and help_text.split()[0] in result.output


def test_the_config_error_hint_points_at_tallrec_keys():
    from tallrec_cli.core.errors import ConfigError
    from tallrec_cli.train.config import load_train_config

    with pytest.raises(ConfigError) as error:
        load_train_config(None, {"lora": {"rank": 8}})
    assert "`tallrec keys`" in error.value.hint


def test_the_installed_package_claims_only_its_own_import_names(tmp_path):
    """Build the wheel (no dependencies, no network) and read its top-level names: no generic `adapters`."""
    require_module("setuptools", "the build backend pyproject.toml names, needed here without build isolation")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                           str(tmp_path), str(REPO)], capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    import zipfile

    (wheel,) = tmp_path.glob("tallrec_cli-*.whl")
    names = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()
             if not name.split("/")[0].endswith((".dist-info", ".data"))}
    assert names == {"tallrec_cli", "data_builders"}
