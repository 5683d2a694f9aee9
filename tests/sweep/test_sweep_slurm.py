"""`tallrec sweep --emit slurm`: the emitted job-array body run locally for each array index, at once."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tallrec_cli import sweep
from tallrec_cli.core.errors import ConfigError
from tallrec_cli.sweep.slurm import emit_slurm
from tests.sweep.test_sweep_e2e import tiny_sweep_recipe
from tests.sweep.test_sweep_run import FakeRunner, make_spec, statuses


@pytest.fixture
def tiny_recipe(tmp_path, tiny_model_dir):
    return tiny_sweep_recipe(tmp_path, tiny_model_dir)


def test_emitted_array_run_locally_per_index_fills_the_sweep_and_report_merges(tmp_path, tiny_recipe):
    from tallrec_cli.cli.app import app

    recipe, data = tiny_recipe
    sweep_dir = tmp_path / "sweep"
    result = CliRunner().invoke(app, ["sweep", str(recipe), "--shots", "0,4", "--seeds", "0,1",
                                      "--test", f"movies={data / 'test.jsonl'}", "--test-limit", "12",
                                      "--output", str(sweep_dir), "--emit", "slurm", "--slurm-option=--partition=gpu"])
    assert result.exit_code == 0, result.output
    script = sweep_dir / "slurm" / "sweep-array.sh"
    text = script.read_text()
    assert "#SBATCH --array=0-2" in text and "#SBATCH --partition=gpu" in text
    assert f"tallrec sweep report {sweep_dir}" in text and "run-cell" in text
    assert set(statuses(sweep_dir).values()) == {"pending"} and not (sweep_dir / "cells").exists()

    # What sbatch would do: one process per array index, all running at the same time.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SLURM_JOB_ID": "4242"}
    tasks = [subprocess.Popen(["bash", str(script)], env={**env, "SLURM_ARRAY_TASK_ID": str(index)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for index in range(3)]
    for task in tasks:
        output, _ = task.communicate(timeout=600)
        assert task.returncode == 0, output[-3000:]
    index = json.loads((sweep_dir / "index.json").read_text())
    assert {entry["id"]: (entry["status"], entry["job"]) for entry in index["cells"]} == {
        "zero-shot": ("done", "4242"), "k4-s0": ("done", "4242"), "k4-s1": ("done", "4242")}

    report = sweep.build_report(sweep_dir)
    summary = report["summary"]
    trained = [row for row in summary if row["method"].startswith("LoRA") and row["shots"] == 4]
    assert len(trained) == 1 and trained[0]["n"] == 2 and trained[0]["seeds"] == [0, 1]
    assert any(row["method"].startswith("LoRA") and row["shots"] == 0 for row in summary)
    assert {row["method"] for row in summary} >= {"equal-data Popularity", "equal-data GBDT", "GBDT (full data)"}
    # the array tasks' predictions meet the references the emit step stored: paired over both seeds
    assert {(row["reference"], tuple(row["seeds"])) for row in report["comparisons"]} >= {
        ("equal-data GBDT", (0, 1)), ("GBDT (full data)", (0, 1))}

    with pytest.raises(ConfigError, match="every cell .* is finished"):
        emit_slurm(make_spec(recipe, data, shots=[0, 4], seeds=[0, 1], test_limit=12), sweep_dir)


def _update_many(sweep_dir: str, cell_ids: list[str], own: str, times: int) -> None:
    cells = [sweep.Cell(cell_id, ["m"], None, 4, 0, {}, None, {}, {}, None) for cell_id in cell_ids]
    index = sweep.SweepIndex(Path(sweep_dir), "hash", cells)
    for number in range(times):
        index.update(own, status="running", count=number)
    index.update(own, status="done", count=times)


def test_index_keeps_every_concurrent_writers_update(tmp_path):
    cell_ids = [f"cell-{number}" for number in range(4)]
    sweep.SweepIndex(tmp_path, "hash", [sweep.Cell(cell_id, ["m"], None, 4, 0, {}, None, {}, {}, None)
                                        for cell_id in cell_ids]).save()
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_update_many, args=(str(tmp_path), cell_ids, own, 30)) for own in cell_ids]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    entries = json.loads((tmp_path / "index.json").read_text())["cells"]
    assert {entry["id"]: (entry["status"], entry["count"]) for entry in entries} == {
        cell_id: ("done", 30) for cell_id in cell_ids}


def test_bad_emit_requests_are_clear(tmp_path, tiny_recipe):
    from tallrec_cli.cli.app import app

    recipe, data = tiny_recipe
    common = ["sweep", str(recipe), "--shots", "4", "--seeds", "0", "--test", str(data / "test.jsonl"), "--output",
              str(tmp_path / "sweep")]
    result = CliRunner().invoke(app, [*common, "--emit", "pbs"])
    assert result.exit_code == 2 and "'pbs' is not one of 'slurm'" in result.output  # typer refuses it at parse time
    with pytest.raises(ConfigError, match="--slurm-option 'partition=gpu'"):
        emit_slurm(make_spec(recipe, data, shots=[4], seeds=[0]), tmp_path / "sweep", options=["partition=gpu"])


def test_a_recorded_cell_failure_lands_in_the_index(tmp_path, tiny_recipe):
    recipe, data = tiny_recipe
    sweep_dir = tmp_path / "sweep"
    emit_slurm(make_spec(recipe, data, shots=[4], seeds=[0]), sweep_dir)
    with pytest.raises(RuntimeError, match="boom"):
        sweep.run_single_cell(sweep_dir, "k4-s0", runner=FakeRunner(fail={"k4-s0": RuntimeError("boom")}), record=True)
    entry = next(e for e in json.loads((sweep_dir / "index.json").read_text())["cells"] if e["id"] == "k4-s0")
    assert entry["status"] == "failed" and re.search("RuntimeError: boom", entry["error"])
