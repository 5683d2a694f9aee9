"""Sweep grid, validation, resume, --keep-going, reports and scheduling, with an injected fake cell runner."""

from __future__ import annotations

import errno
import json
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from data_builders.structure import HistoryItem, render_input, structure_fields
from tallrec_cli import sweep
from tallrec_cli.cli.render import sweep_table
from tallrec_cli.core.config import to_dict
from tallrec_cli.core.errors import (
    ArtifactError,
    ConfigError,
    DataError,
    ResourceError,
    TallrecError,
    TrainingInterrupted,
)
from tallrec_cli.core.manifests import (
    BestStep,
    PromptRecord,
    RunMetrics,
    ZeroShotCellManifest,
    data_hashes,
    run_data,
    train_run_manifest,
)
from tallrec_cli.sweep import report as sweep_report
from tallrec_cli.sweep import run as sweep_run
from tests.train_helpers import MOVIE_TEMPLATE

INSTRUCTION = ('Given the user\'s preference and unpreference, identify whether the user will like the target movie '
               'by answering "Yes." or "No.".')
TITLES = ["Toy Story (1995)", "Heat (1995)", "Fargo (1996)", "Casino (1995)", "Babe (1995)", "Se7en (1995)"]


def movie_record(index: int, metadata: bool = True) -> dict:
    """A TALLRec-style record with its structure; the label follows the target (items 0, 2, 4 liked) so
    baselines can learn it. ``metadata=False``: no user/item ids, like records imported from TALLRec JSON."""
    target = index % len(TITLES)
    history = [HistoryItem(TITLES[h], h % 2 == 0, str(h) if metadata else None)
               for h in ((index + k + 1) % len(TITLES) for k in range(3))]
    label = int(target % 2 == 0)
    record = {"instruction": INSTRUCTION, "input": render_input(MOVIE_TEMPLATE, 0, history, TITLES[target]),
              "output": "Yes." if label else "No.", "label": label, "id": f"r{index}",
              **structure_fields(history, TITLES[target], MOVIE_TEMPLATE.name, 0)}
    if metadata:
        record.update(user_id=f"u{index % 5}", item_id=str(target))
    return record


def repr_title(item: int) -> str:
    return f'"{TITLES[item]}"'


def write_dataset(folder: Path, train: int = 40, valid: int = 12, test: int = 24) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    offsets = {"train": 0, "valid": 1000, "test": 2000}
    for split, count in (("train", train), ("valid", valid), ("test", test)):
        rows = [movie_record(offsets[split] + i) for i in range(count)]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


def fake_cell_manifest(cell, config):
    """The manifest a cell's training leaves, through the constructors the real runner uses."""
    identity = {"kind": "local", "name": config.model.name}
    if cell.zero_shot:
        return ZeroShotCellManifest.new(base_model=identity, prompt=PromptRecord(config.prompt.template),
                                        labels={"positive_word": "Yes", "negative_word": "No"}, config=to_dict(config))
    return train_run_manifest(config, base_model=identity, base_model_config=None, labels={}, dtype="float32",
                              data=run_data(config, cell.shots, 12, 0, data_hashes(config.data.train, None)),
                              best=BestStep(2, 0.5), metrics=RunMetrics(0.5), wall_seconds=0.1, files={})


class FakeRunner:
    """Writes a train-run manifest and returns a made-up AUC that grows with shots."""

    def __init__(self, fail: dict[str, BaseException] | None = None):
        self.fail = fail or {}
        self.trained: list[str] = []
        self.evaluated: list[str] = []

    def train(self, cell, cell_dir, config):
        if cell.id in self.fail:
            cell_dir.mkdir(parents=True, exist_ok=True)
            (cell_dir / "config.yaml").write_text("half-written")
            raise self.fail[cell.id]
        cell_dir.mkdir(parents=True, exist_ok=True)
        fake_cell_manifest(cell, config).write(cell_dir)
        self.trained.append(cell.id)

    def evaluate(self, cell, cell_dir, config):
        self.evaluated.append(cell.id)
        return {label: {"auc": round(0.5 + cell.shots / 1000 + (cell.seed or 0) / 100, 6), "records": 24}
                for label in cell.tests}


@pytest.fixture
def real_plot():
    """Requested by tests that need the real sweep.png."""


@pytest.fixture(autouse=True)
def quick_plot(request, monkeypatch):
    """Drawing sweep.png costs ~0.5 s per run; only tests requesting `real_plot` draw it."""
    if "real_plot" not in request.fixturenames:
        monkeypatch.setattr(sweep_report, "plot_results", lambda summary, path: Path(path).write_bytes(b"\x89PNG stub"))


@pytest.fixture
def dataset(tmp_path) -> Path:
    return write_dataset(tmp_path / "data")


@pytest.fixture
def recipe(tmp_path, tiny_model_dir, dataset) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(f"model: {{name: {tiny_model_dir}, dtype: float32}}\ndata: {{train: {dataset}}}\n"
                    "training: {max_steps: 2, batch_size: 2, micro_batch_size: 2}\n")
    return path


def make_spec(recipe: Path, dataset: Path, **values) -> sweep.SweepSpec:
    defaults = dict(shots=[0, 4, 8], seeds=[0, 1], tests=[f"movies={dataset / 'test.jsonl'}"])
    defaults.update(values)
    return sweep.load_sweep_spec(recipe, defaults["shots"], defaults["seeds"], defaults["tests"],
                                 defaults.get("axes", ()), defaults.get("overrides", ()), defaults.get("test_limit"))


def statuses(sweep_dir: Path) -> dict[str, str]:
    index = json.loads((sweep_dir / "index.json").read_text())
    return {entry["id"]: entry["status"] for entry in index["cells"]}


# ------------------------------------------------------------------------------------------ grid

def test_grid_expansion_shares_zero_shot_and_sets_shots_and_seeds(recipe, dataset):
    spec = sweep.resolve_spec(make_spec(recipe, dataset, axes=["lora.r=8,16"]))
    cells = sweep.expand_grid(spec)
    ids = [cell.id for cell in cells]
    assert len(ids) == len(set(ids)) == 1 + 2 * 2 * 2
    zero = cells[0]
    assert zero.zero_shot and zero.id == "zero-shot" and len(zero.methods) == 2  # lora.r cannot change zero-shot
    trained = [cell for cell in cells if not cell.zero_shot]
    assert [cell.shots for cell in trained] == sorted(cell.shots for cell in trained)
    cell = next(cell for cell in trained if cell.id == "lora.r=16_k8-s1")
    assert cell.overrides["data"] == {"shots": 8, "sample_seed": 1} and cell.overrides["training"]["seed"] == 1
    assert cell.overrides["lora"]["r"] == 16 and cell.methods == [f"LoRA {Path(str(recipe_model(recipe))).name} lora.r=16"]


def recipe_model(recipe: Path) -> str:
    import yaml

    return yaml.safe_load(recipe.read_text())["model"]["name"]


def test_model_axis_gets_one_zero_shot_cell_per_model(recipe, dataset, tiny_model_dir):
    spec = sweep.resolve_spec(make_spec(recipe, dataset, axes=[f"model={tiny_model_dir},smollm2-135m"]))
    cells = sweep.expand_grid(spec)
    assert sum(cell.zero_shot for cell in cells) == 2
    assert {cell.overrides["model"]["name"] for cell in cells} == {str(tiny_model_dir), "smollm2-135m"}


def test_sweep_yaml_with_domains(tmp_path, recipe, dataset):
    books = write_dataset(tmp_path / "books")
    path = tmp_path / "sweep.yaml"
    path.write_text(f"recipe: {recipe}\nshots: [4]\nseeds: [0]\n"
                    f"domains:\n  movies: {{tests: [{dataset / 'test.jsonl'}]}}\n"
                    f"  books: {{overrides: {{data.train: {books}}}, tests: {{books: {books / 'test.jsonl'}}}}}\n")
    cells = sweep.expand_grid(sweep.resolve_spec(sweep.load_sweep_spec(path)))
    assert [cell.id for cell in cells] == ["movies_k4-s0", "books_k4-s0"]
    assert cells[1].overrides["data"]["train"] == str(books) and list(cells[1].tests) == ["books"]
    assert list(cells[0].tests) == ["data-test"]


def test_shipped_history_sweep_spec_is_valid_but_for_its_data_builds():
    """The shipped grid spec's only problems on a fresh checkout are the dataset builds its header lists,
    and its header states the grid it holds (domains x loss x shots x seeds)."""
    import yaml

    path = Path(__file__).parents[2] / "recipes" / "sweeps" / "smollm2-movielens-history.yaml"
    raw = yaml.safe_load(path.read_text())
    with pytest.raises(ConfigError) as info:
        sweep.load_sweep_spec(path)
    assert info.value.problems == [f"domains.{name}.tests.mls-{name}: data/mls-{name}/test.jsonl does not exist"
                                   for name in raw["domains"]]
    header = " ".join(path.read_text().replace("#", " ").split())
    for name in raw["domains"]:
        assert f"-o data/mls-{name}" in header  # each domain's data has its build command
    cells = len(raw["domains"]) * len(raw["axes"]["prompt.loss"]) * len(raw["shots"]) * len(raw["seeds"])
    assert f"The full grid is {cells} cells" in header


def test_bad_grid_values_are_all_reported(recipe, dataset, tmp_path):
    with pytest.raises(ConfigError) as caught:
        make_spec(recipe, dataset, shots=[4, 4, -1], seeds=[0, 0], tests=[str(tmp_path / "missing.jsonl")])
    message = caught.value.message
    assert "shots: 4 repeated" in message and "seeds: 0 repeated" in message
    assert "-1 is negative" in message and "missing.jsonl does not exist" in message


def test_every_cell_is_validated_before_any_runs(recipe, dataset, tmp_path):
    runner = FakeRunner()
    spec = make_spec(recipe, dataset, shots=[4, 64], overrides=["lora.r=0", "training.lr=-1"])
    with pytest.raises(ConfigError) as caught:
        sweep.run_sweep(spec, tmp_path / "sweep", runner=runner)
    message = caught.value.message
    assert "lora.r: must be >= 1" in message and "training.lr: must be > 0" in message
    assert not runner.trained and not (tmp_path / "sweep").exists()
    spec = make_spec(recipe, dataset, shots=[4, 64])
    with pytest.raises(ConfigError, match="shots 64: the training pool .* holds only 40 records") as caught:
        sweep.run_sweep(spec, tmp_path / "sweep", runner=runner)
    assert "k64-s0, k64-s1" in caught.value.message and not runner.trained


def test_cell_problems_are_read_from_the_error_not_its_wording(recipe, dataset, tmp_path, monkeypatch):
    """The sweep groups each cell's problems by cell from ConfigError.problems: how the message is worded
    (heading, bullets) changes nothing."""
    from tallrec_cli.sweep import grid

    def preflight(config, check_output=True):
        raise ConfigError("two problems, worded freely - with a dash", problems=[
            f"problem a of r={config.lora.r}", "problem b\n  - not a bullet"], heading="whatever:\n  - fake")

    monkeypatch.setattr(grid, "preflight", preflight)
    spec = make_spec(recipe, dataset, shots=[4], seeds=[0, 1], axes=["lora.r=8,16"])
    with pytest.raises(ConfigError) as caught:
        sweep.run_sweep(spec, tmp_path / "sweep", runner=FakeRunner())
    assert caught.value.problems == [
        "problem a of r=8  [lora.r=8_k4-s0, lora.r=8_k4-s1]", "problem b\n  - not a bullet  [all cells]",
        "problem a of r=16  [lora.r=16_k4-s0, lora.r=16_k4-s1]"]


# --------------------------------------------------------------------------------- run and resume

def test_run_then_resume_skips_finished_and_redoes_killed_cells(recipe, dataset, tmp_path):
    sweep_dir = tmp_path / "sweep"
    spec = make_spec(recipe, dataset)
    first = FakeRunner()
    result = sweep.run_sweep(spec, sweep_dir, runner=first)
    assert len(first.trained) == 5 and set(statuses(sweep_dir).values()) == {"done"}
    assert (sweep_dir / "sweep.yaml").is_file() and (sweep_dir / "sweep.png").is_file()
    assert {row["method"] for row in result.summary} >= {"equal-data Popularity", "equal-data LogReg"}

    killed = sweep_dir / "cells" / "k4-s1"
    (killed / "manifest.json").unlink()  # as if killed mid-training: no manifest
    (killed / "checkpoint-junk").write_text("x")
    unevaluated = sweep_dir / "cells" / "k8-s0"
    (unevaluated / "sweep-eval.json").unlink()  # trained, killed during evaluation
    second = FakeRunner()
    result = sweep.run_sweep(make_spec(recipe, dataset), sweep_dir, runner=second)
    assert second.trained == ["k4-s1"] and sorted(second.evaluated) == ["k4-s1", "k8-s0"]
    assert not (killed / "checkpoint-junk").exists()
    assert sorted(result.skipped) == ["k4-s0", "k8-s1", "zero-shot"]
    third = FakeRunner()
    sweep.run_sweep(make_spec(recipe, dataset), sweep_dir, runner=third)
    assert third.trained == [] and third.evaluated == []


def test_changed_test_slice_reevaluates_without_retraining_only_with_overwrite(recipe, dataset, tmp_path):
    sweep_dir = tmp_path / "sweep"
    sweep.run_sweep(make_spec(recipe, dataset, shots=[4], seeds=[0, 1]), sweep_dir, runner=FakeRunner())
    with pytest.raises(ArtifactError, match="different config"):
        sweep.run_sweep(make_spec(recipe, dataset, shots=[4], seeds=[0, 1], test_limit=10), sweep_dir, runner=FakeRunner())
    runner = FakeRunner()
    sweep.run_sweep(make_spec(recipe, dataset, shots=[4], seeds=[0], test_limit=10), sweep_dir, runner=runner,
                    overwrite=True)
    assert runner.trained == [] and runner.evaluated == ["k4-s0"]
    assert sorted(path.name for path in (sweep_dir / "cells").iterdir()) == ["k4-s0"]  # seed 1 left the grid


def test_training_change_retrains_but_keeps_the_zero_shot_cell(recipe, dataset, tmp_path):
    sweep_dir = tmp_path / "sweep"
    sweep.run_sweep(make_spec(recipe, dataset, shots=[0, 4], seeds=[0]), sweep_dir, runner=FakeRunner())
    runner = FakeRunner()
    sweep.run_sweep(make_spec(recipe, dataset, shots=[0, 4], seeds=[0], overrides=["training.lr=0.002"]), sweep_dir,
                    runner=runner, overwrite=True)
    assert runner.trained == ["k4-s0"] and runner.evaluated == ["k4-s0"]


def test_folder_that_is_not_a_sweep_is_refused(recipe, dataset, tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "file.txt").write_text("mine")
    with pytest.raises(ArtifactError, match="not a sweep folder"):
        sweep.run_sweep(make_spec(recipe, dataset), tmp_path / "other", runner=FakeRunner(), overwrite=True)


def test_keep_going_records_failures_and_continues(recipe, dataset, tmp_path):
    sweep_dir = tmp_path / "sweep"
    runner = FakeRunner(fail={"k4-s0": DataError("broken sample", "fix it")})
    result = sweep.run_sweep(make_spec(recipe, dataset), sweep_dir, runner=runner, keep_going=True)
    assert [failure.cell.id for failure in result.failures] == ["k4-s0"]
    index = {entry["id"]: entry for entry in json.loads((sweep_dir / "index.json").read_text())["cells"]}
    assert index["k4-s0"]["status"] == "failed" and index["k4-s0"]["error"] == "broken sample"
    assert sum(entry["status"] == "done" for entry in index.values()) == 4
    assert "k4-s0" not in {row["cell"] for row in json.loads((sweep_dir / "results.json").read_text())["observations"]}


def test_without_keep_going_first_failure_stops_and_keeps_finished_cells(recipe, dataset, tmp_path):
    sweep_dir = tmp_path / "sweep"
    runner = FakeRunner(fail={"k4-s1": DataError("broken sample")})
    with pytest.raises(TallrecError, match="cell k4-s1 failed: broken sample"):
        sweep.run_sweep(make_spec(recipe, dataset), sweep_dir, runner=runner)
    assert statuses(sweep_dir) == {"zero-shot": "done", "k4-s0": "done", "k4-s1": "failed", "k8-s0": "pending",
                                   "k8-s1": "pending"}
    assert (sweep_dir / "cells" / "k4-s0" / "sweep-eval.json").is_file()


def test_disk_full_stops_with_clear_error_and_keeps_finished_cells(recipe, dataset, tmp_path):
    sweep_dir = tmp_path / "sweep"
    runner = FakeRunner(fail={"k4-s1": OSError(errno.ENOSPC, "No space left on device")})
    with pytest.raises(ResourceError, match="disk filled up during cell k4-s1; 2 finished cell"):
        sweep.run_sweep(make_spec(recipe, dataset), sweep_dir, runner=runner, keep_going=True)
    assert not (sweep_dir / "cells" / "k4-s1").exists()  # partial cell removed to give the space back
    assert (sweep_dir / "cells" / "k4-s0" / "manifest.json").is_file() and "k8-s0" not in runner.trained


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt(), TrainingInterrupted(3, "stopped by the user")])
def test_ctrl_c_marks_the_cell_interrupted_and_keeps_finished_ones(recipe, dataset, tmp_path, interrupt):
    sweep_dir = tmp_path / "sweep"
    runner = FakeRunner(fail={"k4-s1": interrupt})
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(make_spec(recipe, dataset), sweep_dir, runner=runner, keep_going=True)
    assert statuses(sweep_dir)["k4-s1"] == "interrupted" and statuses(sweep_dir)["k4-s0"] == "done"
    resumed = FakeRunner()
    sweep.run_sweep(make_spec(recipe, dataset), sweep_dir, runner=resumed)
    assert resumed.trained == ["k4-s1", "k8-s0", "k8-s1"]


def test_an_interruption_is_known_by_its_type_not_its_message(recipe, dataset, tmp_path):
    """A failure whose text reads like an interruption is a failed cell; Ctrl-C in training, whatever its
    message says, stops the sweep as interrupted."""
    sweep_dir = tmp_path / "sweep"
    lookalike = TallrecError("interrupted at step 3; a checkpoint is saved")
    result = sweep.run_sweep(make_spec(recipe, dataset), sweep_dir, keep_going=True,
                             runner=FakeRunner(fail={"k4-s1": lookalike}))
    assert statuses(sweep_dir)["k4-s1"] == "failed" and [f.cell.id for f in result.failures] == ["k4-s1"]
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(make_spec(recipe, dataset), sweep_dir, keep_going=True,
                        runner=FakeRunner(fail={"k4-s1": TrainingInterrupted(7, "Strg-C: angehalten")}))
    assert statuses(sweep_dir)["k4-s1"] == "interrupted"


class FakeWorker:
    """A finished worker process: its log says one thing, its failure file (if written) another."""

    def __init__(self, failure: dict | None, code: int, log: str):
        self.failure, self.code, self.log = failure, code, log

    def __call__(self, command, stdout, stderr, env):
        sweep_dir, cell_id = Path(command[-2]), command[-1]
        stdout.write(self.log)
        if self.failure is not None:
            sweep.failure_path(sweep_dir, cell_id).write_text(json.dumps(self.failure))
        return self

    def wait(self):
        return self.code


@pytest.mark.parametrize("failure, raised, text", [
    ({"type": "DataError", "message": "the test file went away", "hint": "rebuild it", "step": None},
     TallrecError, "the test file went away"),
    ({"type": "TrainingInterrupted", "message": "stopped", "hint": "resume it", "step": 5}, TrainingInterrupted, "stopped"),
    (None, TallrecError, "stopped without recording why"),
])
def test_subprocess_launcher_reads_the_failure_file_not_the_log(tmp_path, monkeypatch, failure, raised, text):
    misleading = "error: interrupted at step 1\ninternal error: something else\n"
    monkeypatch.setattr(sweep_run.subprocess, "Popen", FakeWorker(failure, 2, misleading))
    cell = sweep.Cell("c1", ["m"], None, 4, 0, {}, None, {}, {}, None)
    with pytest.raises(raised, match=text) as caught:
        sweep.SubprocessLauncher(tmp_path)(cell, "0")
    assert "exit code 2" in caught.value.message and "interrupted at step 1" not in caught.value.message
    if failure is not None:
        assert caught.value.hint == failure["hint"]
    if raised is TrainingInterrupted:
        assert caught.value.step == 5


def test_worker_records_its_failure(recipe, dataset, tmp_path):
    sweep_dir = tmp_path / "sweep"
    sweep.run_sweep(make_spec(recipe, dataset, shots=[4], seeds=[0]), sweep_dir, runner=FakeRunner())
    interrupted = FakeRunner(fail={"k4-s0": TrainingInterrupted(2, "halted")})
    (sweep_dir / "cells" / "k4-s0" / "manifest.json").unlink()
    with pytest.raises(TrainingInterrupted):
        sweep.run_single_cell(sweep_dir, "k4-s0", runner=interrupted)
    recorded = sweep.read_failure(sweep.failure_path(sweep_dir, "k4-s0"))
    assert recorded == sweep.CellFailure("TrainingInterrupted", "halted", None, 2) and recorded.interrupted


# ---------------------------------------------------------------------------------------- report

def test_sweep_yaml_is_typed_and_a_damaged_one_is_named(recipe, dataset, tmp_path):
    import yaml

    from tallrec_cli.sweep.spec import read_sweep_record, spec_hash

    sweep_dir = tmp_path / "sweep"
    sweep.run_sweep(make_spec(recipe, dataset, shots=[4], seeds=[0]), sweep_dir, runner=FakeRunner())
    record = read_sweep_record(sweep_dir)
    assert record.config_hash == spec_hash(record.sweep_spec()) and record.spec["shots"] == [4]
    stored = yaml.safe_load((sweep_dir / "sweep.yaml").read_text())
    del stored["config_hash"]
    (sweep_dir / "sweep.yaml").write_text(yaml.safe_dump(stored))
    with pytest.raises(ArtifactError, match="sweep.yaml is damaged: config_hash: required"):
        sweep.build_report(sweep_dir)


def test_report_rebuilt_from_folders_equals_live_one(recipe, dataset, tmp_path, real_plot):
    sweep_dir = tmp_path / "sweep"
    live = sweep.run_sweep(make_spec(recipe, dataset, test_limit=20), sweep_dir, runner=FakeRunner())
    live_json = (sweep_dir / "results.json").read_text()
    live_csv = (sweep_dir / "results.csv").read_text()
    for name in ("results.json", "results.csv", "sweep.png", "index.json"):
        (sweep_dir / name).unlink()
    rebuilt = sweep.build_report(sweep_dir)["summary"]
    assert rebuilt == live.summary
    assert (sweep_dir / "results.json").read_text() == live_json and (sweep_dir / "results.csv").read_text() == live_csv
    assert (sweep_dir / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    lora = next(row for row in rebuilt if row["method"].startswith("LoRA") and row["shots"] == 8)
    assert lora["n"] == 2 and lora["aucs"] == [0.508, 0.518] and lora["auc_std"] == pytest.approx(0.00707, abs=1e-5)
    assert lora["best"] is (lora["auc_mean"] >= max(r["auc_mean"] for r in rebuilt if r["shots"] == 8))
    zero = next(row for row in rebuilt if row["shots"] == 0)
    assert zero["n"] == 1 and zero["auc_std"] is None and zero["best"]


def test_results_table_marks_best_per_column_and_shows_gauc_references_and_users():
    from rich.console import Console

    summary = sweep.summarize([
        {"method": "LoRA m", "kind": "lora", "test": "t", "shots": 16, "seed": s, "auc": a, "gauc": g, "records": 9,
         "users": 3, "gauc_users": 2, "cell": "c"}
        for s, a, g in ((0, 0.7, 0.6), (1, 0.8, 0.62))] + [
        {"method": "LoRA m", "kind": "zero-shot", "test": "t", "shots": 0, "seed": None, "auc": 0.52, "gauc": 0.5,
         "records": 9, "cell": "z"},
        {"method": "equal-data Popularity", "kind": "baseline", "test": "t", "shots": 16, "seed": 0, "auc": 0.55,
         "records": 9, "cell": None}] + sweep.reference_observations(
        {"domain": None, "tests": {"t": {"GBDT": {"auc": 0.9, "gauc": 0.58, "n": 9}}}}, [16]))
    console = Console(record=True, width=200)
    console.print(sweep_table(summary, "t"))
    text = console.export_text()
    cells = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in text.splitlines()
             if line.count("│") == 3 and line.split("│")[1].strip()}
    assert cells == {"LoRA m": "0.750±.071", "LoRA m zero-shot": "0.520", "equal-data Popularity": "0.550 (1)",
                     "GBDT (full data)": "0.900 *"}  # * best AUC; (1): fewer seeds than the tuned model's 2
    assert "g 0.610±.014" in text and "g 0.500" in text and "g 0.580" in text
    assert "mean ± std over 2 seed(s)" in " ".join(text.split())
    assert "t: 9 records, 3 users (2 with both labels) - under 30" in " ".join(text.split())  # caption wraps


# ------------------------------------------------------------------------------------ scheduling

def test_schedule_runs_one_cell_per_device_at_a_time(recipe, dataset):
    cells = sweep.expand_grid(sweep.resolve_spec(make_spec(recipe, dataset, seeds=[0, 1, 2])))
    busy: dict[str, int] = {}
    seen: list[tuple[str, str]] = []
    lock = threading.Lock()

    def work(cell, device):
        with lock:
            busy[device] = busy.get(device, 0) + 1
            assert busy[device] == 1, f"device {device} runs two cells at once"
            seen.append((cell.id, device))
        time.sleep(0.02)
        with lock:
            busy[device] -= 1

    failures = sweep.schedule(cells, work, workers=["0", "1"], poll_seconds=0.01)
    assert not failures and sorted(cell_id for cell_id, _ in seen) == sorted(cell.id for cell in cells)
    assert {device for _, device in seen} == {"0", "1"}


def test_schedule_stops_on_failure_unless_keep_going(recipe, dataset):
    cells = sweep.expand_grid(sweep.resolve_spec(make_spec(recipe, dataset, shots=[4], seeds=[0, 1, 2, 3])))

    def work(cell, device):
        if cell.id == "k4-s0":
            raise DataError("bad")

    ran = []
    failures = sweep.schedule(cells, work, notify=lambda cell, status, error, worker: ran.append((cell.id, status)))
    assert [f.cell.id for f in failures] == ["k4-s0"] and ran == [("k4-s0", "running"), ("k4-s0", "failed")]
    failures = sweep.schedule(cells, work, keep_going=True)
    assert len(failures) == 1


def test_devices_run_cells_through_the_launcher(recipe, dataset, tmp_path):
    sweep_dir = tmp_path / "sweep"
    spec = make_spec(recipe, dataset)
    used = []

    def launcher(cell, device):  # stands in for the `sweep run-cell` subprocess on one GPU
        used.append(device)
        sweep.run_single_cell(sweep_dir, cell.id, runner=FakeRunner())

    result = sweep.run_sweep(spec, sweep_dir, devices=["0", "1"], launcher=launcher)
    assert len(result.ran) == 5 and set(used) <= {"0", "1"} and set(statuses(sweep_dir).values()) == {"done"}


# --------------------------------------------------------------------------------------------- CLI

def test_cli_default_run_command_and_report(recipe, dataset, tmp_path, monkeypatch):
    from tallrec_cli.cli.app import app

    monkeypatch.setattr(sweep_run, "LocalCellRunner", FakeRunner)
    runner = CliRunner()
    sweep_dir = tmp_path / "sweep"
    args = [str(recipe), "--shots", "0,4", "--seeds", "0,1", "--test", str(dataset / "test.jsonl"),
            "--axis", "lora.r=4,8", "--test-limit", "12", "--output", str(sweep_dir)]
    result = runner.invoke(app, ["sweep", *args])
    assert result.exit_code == 0, result.output
    assert "data-test" in result.output and "zero-shot" in result.output and "Popularity" in result.output
    assert len(statuses(sweep_dir)) == 1 + 2 * 2
    explicit = runner.invoke(app, ["sweep", "run", *args])
    assert explicit.exit_code == 0 and "0 cell(s) run, 5 kept" in explicit.output
    (sweep_dir / "results.json").unlink()
    report = runner.invoke(app, ["sweep", "report", str(sweep_dir)])
    assert report.exit_code == 0, report.output
    assert "LoRA" in report.output and (sweep_dir / "results.json").is_file()
    assert runner.invoke(app, ["sweep", "--help"]).exit_code == 0


def test_cli_repeated_seeds_are_a_domain_error(recipe, dataset, tmp_path):
    from tallrec_cli.cli.app import app

    result = CliRunner().invoke(app, ["sweep", str(recipe), "--seeds", "1,1", "--test", str(dataset / "test.jsonl"),
                                      "--output", str(tmp_path / "s")])
    assert result.exit_code != 0 and isinstance(result.exception, ConfigError)
    assert "seeds: 1 repeated" in result.exception.message


def test_run_cell_command_and_subprocess_launcher(recipe, dataset, tmp_path, monkeypatch):
    from tallrec_cli.cli.app import app

    sweep_dir = tmp_path / "sweep"
    sweep.run_sweep(make_spec(recipe, dataset, shots=[4], seeds=[0]), sweep_dir, runner=FakeRunner())
    monkeypatch.setattr(sweep_run, "LocalCellRunner", FakeRunner)
    (sweep_dir / "cells" / "k4-s0" / "sweep-eval.json").unlink()
    result = CliRunner().invoke(app, ["sweep", "run-cell", str(sweep_dir), "k4-s0"])
    assert result.exit_code == 0, result.output
    assert (sweep_dir / "cells" / "k4-s0" / "sweep-eval.json").is_file()
    ghost = sweep.Cell("no-such-cell", ["m"], None, 4, 0, {}, None, {}, {}, None)
    with pytest.raises(TallrecError, match=r"has no cell 'no-such-cell'.*exit code 2"):
        sweep.SubprocessLauncher(sweep_dir)(ghost, "0")  # a real `python -m tallrec_cli sweep run-cell` child
    assert "has no cell" in (sweep_dir / "logs" / "no-such-cell.log").read_text()
