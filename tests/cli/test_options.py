"""Issue 26, items 8-10: every option checked once, for every command. The tests walk the whole command tree
(typer's click commands), so a command added later is held to the same rules without anyone listing it:
numeric options have a lower bound that refuses -1 and 0 (unless the help says what 0 means), options of one
name behave alike everywhere, flags are flags in `--help`, and every output option refuses an existing target
without `--overwrite` and anything but its own kind of artifact with it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import typer.main
from typer.core import TyperOption
from typer.testing import CliRunner

from tallrec_cli.cli.app import app
from tallrec_cli.core.errors import TallrecError
from tallrec_cli.core.files import file_hashes
from tallrec_cli.core.manifests import write_manifest
from tallrec_cli.eval.records import result_name
from tests.train_helpers import write_dataset


def commands() -> dict[tuple[str, ...], object]:
    """Every command and group of the CLI by its path (the root is ``()``)."""
    found, stack = {}, [((), typer.main.get_command(app))]
    while stack:
        path, command = stack.pop()
        found[path] = command
        stack += [((*path, name), sub) for name, sub in getattr(command, "commands", {}).items()]
    return found


LEAVES = {path: command for path, command in commands().items() if not hasattr(command, "commands")}
OPTIONS = [(path, param) for path, command in LEAVES.items() for param in command.params
           if isinstance(param, TyperOption)]


def value_type(param) -> object:
    """The option's value type: typer >= 0.29 keeps it on the option, older typer only in its click param type
    (IntRange and FloatRange included, hence the class names)."""
    if hasattr(param, "type_descriptor"):
        return param.type_descriptor.annotation
    kinds = {cls.__name__ for cls in type(param.type).__mro__}
    return int if "IntParamType" in kinds else float if "FloatParamType" in kinds else param.type.name


def bounds(param) -> tuple:
    """(min, max): typer >= 0.29 keeps them on the option, older typer on click's range type."""
    holder = param if hasattr(param, "min") else param.type
    return getattr(holder, "min", None), getattr(holder, "max", None)


NUMERIC = [(path, param) for path, param in OPTIONS if value_type(param) in (int, float)]


def invoke(*args) -> object:
    return CliRunner().invoke(app, [str(arg) for arg in args], env={"COLUMNS": "200"})


def test_the_walk_finds_every_command_and_their_numbers():
    assert {("eval",), ("predict",), ("calibrate",), ("audit",), ("train",), ("export",), ("data", "build"),
            ("sweep", "run")} <= set(LEAVES)
    assert len(NUMERIC) >= 15


@pytest.mark.parametrize("path, param", NUMERIC, ids=[f"{' '.join(p)} {o.opts[-1]}" for p, o in NUMERIC])
def test_every_numeric_option_refuses_minus_one_and_zero_at_parse_time(path, param):
    option = max(param.opts, key=len)
    low = bounds(param)[0]
    assert low is not None, f"{option} of {' '.join(path)} has no lower bound"
    for value in ("-1", "0"):
        if value == "0" and low <= 0:
            assert re.search(r"\b0\b", param.help or ""), f"{option} accepts 0: its help must say what 0 does"
            continue
        result = invoke(*path, f"{option}={value}")
        assert result.exit_code == 2 and "Invalid value" in result.output and option in result.output, result.output


def test_options_of_one_name_have_one_definition():
    """Bounds and flag-ness of an option name (of one value type: `train --shots 64` is a count, `sweep --shots
    16,64` a list) are the same in every command that takes it."""
    seen: dict[tuple, set] = {}
    for _, param in OPTIONS:
        name = (max(param.opts, key=len), value_type(param))
        seen.setdefault(name, set()).add((param.is_flag, *bounds(param)))
    assert {name: shapes for name, shapes in seen.items() if len(shapes) > 1} == {}


@pytest.mark.parametrize("path", sorted(commands()), ids=lambda path: " ".join(path) or "tallrec")
def test_help_shows_flags_as_flags_and_no_eaten_placeholders(path):
    result = invoke(*path, "--help")
    assert result.exit_code == 0, result.output
    assert "<bool>" not in result.output and "///" not in result.output


# ------------------------------------------------------------------------------------------ output options

def dataset(folder: Path) -> Path:
    write_dataset(folder, train=8, valid=4)
    write_manifest(folder, "dataset", {})
    return folder


def samples(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "train-k4-seed0.jsonl").write_text("{}\n")
    write_manifest(folder, "samples", {})
    return folder


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_model_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inputs")
    data = dataset(root / "data")
    tallrec_json = root / "valid.json"
    tallrec_json.write_text(json.dumps([{"instruction": "i", "input": "x", "output": "Yes."}]))
    recipe = root / "recipe.yaml"
    recipe.write_text(f"model: {{name: {tiny_model_dir}, dtype: float32}}\ndata: {{train: {data}}}\n"
                      "training: {max_steps: 2, batch_size: 2, micro_batch_size: 2}\n")
    return {"data": data, "test": data / "valid.jsonl", "json": tallrec_json, "recipe": recipe,
            "model": tiny_model_dir}


# command -> (arguments that reach its output check, whose artifact kind a dataset is, where it writes for -o X)
OUTPUTS = {
    ("data", "build"): (lambda i: ["data", "build", "movielens-latest", "--max-records", "300"], "samples", None),
    ("data", "import"): (lambda i: ["data", "import", i["json"]], "samples", None),
    ("data", "sample"): (lambda i: ["data", "sample", i["data"], "--shots", "4", "--seeds", "0"], "dataset", None),
    ("train",): (lambda i: ["train", "--model", i["model"], "--train", i["data"], "--set", "data.shots=null"],
                 "dataset", None),
    ("eval",): (lambda i: ["eval", "--model", i["model"], "--test", i["test"]], "dataset",
                lambda out, i: out / result_name(i["test"])),
    ("predict",): (lambda i: ["predict", "--model", i["model"], "--input", i["test"]], "dataset", None),
    ("audit",): (lambda i: ["audit", "--baseline", "history-share", "--test", i["test"]], "dataset", None),
    ("export",): (lambda i: ["export", i["data"].parent / "no-run"], "dataset", None),
    ("sweep", "run"): (lambda i: ["sweep", "run", i["recipe"], "--shots", "4", "--seeds", "0", "--test", i["test"],
                                  "--no-baselines"], "dataset", None),
}


def test_every_command_with_an_output_has_overwrite_and_a_case_here():
    with_output = {path for path, command in LEAVES.items()
                   if any("--output" in param.opts for param in command.params)}
    assert with_output == set(OUTPUTS), "a command with --output needs a case in OUTPUTS"
    for path in with_output:
        overwrite = [param for param in LEAVES[path].params if "--overwrite" in param.opts]
        assert overwrite and overwrite[0].is_flag, path


@pytest.mark.parametrize("path", sorted(OUTPUTS), ids=" ".join)
@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
def test_every_output_option_refuses_an_existing_target_of_another_kind(path, overwrite, inputs, tmp_path):
    arguments, kind, written = OUTPUTS[path]
    output = tmp_path / ("out.csv" if path == ("predict",) else "out")
    target = written(output, inputs) if written else output
    (samples if kind == "samples" else dataset)(target)
    before = file_hashes(target)
    result = invoke(*arguments(inputs), "-o", output, *(["--overwrite"] if overwrite else []))
    assert isinstance(result.exception, TallrecError), result.output
    assert str(target) in result.exception.message and file_hashes(target) == before
