"""Where `tallrec eval`'s time goes: phase seconds in metrics.json and `--timings`, and the phases themselves."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tallrec_cli.eval.timing import PhaseTimes, process_age
from tests.eval.test_eval_cli import invoke, make_run, model_dir, write_jsonl  # noqa: F401  (model_dir: fixture)
from tests.model.test_scoring_prompts import movie_records

PHASES = ["process start", "inputs", "imports", "model load", "adapter fold", "tokenise", "score", "metrics", "write"]


def test_eval_records_its_phases_and_prints_them(model_dir, tmp_path):  # noqa: F811
    run = make_run(model_dir, tmp_path / "run")
    test = write_jsonl(tmp_path / "movie_test.jsonl", movie_records(12))
    result = invoke("eval", "--adapter", run, "--test", test, "--dtype", "float32", "--bootstrap", "50",
                    "--timings")
    assert result.exit_code == 0, result.output
    metrics = json.loads((run / "eval" / "movie_test" / "metrics.json").read_text())
    timing = metrics["timing"]
    assert list(timing) == PHASES
    assert all(seconds >= 0 for seconds in timing.values())
    # the model's work is what the scorer measured, less its tokenizer call (each rounded to 1 ms)
    scoring = metrics["scoring"]
    assert timing["score"] == pytest.approx(scoring["seconds"] - scoring["tokenize_seconds"], abs=2e-3)
    assert timing["tokenise"] >= scoring["tokenize_seconds"] - 1e-3
    assert "where the time went" in result.output and "adapter fold" in result.output


def test_compare_base_keeps_the_adapter_apart_and_times_the_references(model_dir, tmp_path):  # noqa: F811
    run = make_run(model_dir, tmp_path / "run")
    test = write_jsonl(tmp_path / "movie_test.jsonl", movie_records(12))
    result = invoke("eval", "--adapter", run, "--test", test, "--dtype", "float32", "--bootstrap", "0",
                    "--compare", "base")
    assert result.exit_code == 0, result.output
    timing = json.loads((run / "eval" / "movie_test" / "metrics.json").read_text())["timing"]
    assert "adapter fold" not in timing and timing["references"] > 0
    assert "where the time went" not in result.output  # only with --timings


def test_phases_add_up_in_first_entered_order():
    before = PhaseTimes()
    before.add("model load", 1.5)
    phases = PhaseTimes(before)
    with phases.phase("score"):
        time.sleep(0.05)
    phases.add("model load", 0.25)
    phases.add("score", 1.0)
    assert list(phases.as_dict()) == ["model load", "score"]
    assert phases.as_dict()["model load"] == 1.75
    assert 1.05 <= phases.as_dict()["score"] < 1.5
    assert before.as_dict() == {"model load": 1.5}  # the earlier phases are copied, not shared


def test_process_age_counts_from_the_process_start():
    code = "import time; time.sleep(0.5); from tallrec_cli.eval.timing import process_age; print(process_age())"
    age = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert 0.5 <= age < 30
    assert process_age() > 0
