"""acceptance/gpu_check.py --smoke: the GPU acceptance check's code paths at tiny shapes on the CPU, its parts,
its resumption, and what it records (mocked where only a GPU has the answer)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from acceptance import gpu_check, wheels

REPO = Path(__file__).resolve().parents[2]


def _smoke(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "acceptance.gpu_check", "--smoke", *args], capture_output=True,
                          text=True, timeout=900, cwd=REPO, check=False, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})


def test_smoke_runs_every_part_resuming_what_an_earlier_part_did(tmp_path):
    output, workdir = tmp_path / "out", tmp_path / "work"
    first = _smoke("--part", "1", "--output", str(output), "--workdir", str(workdir))
    assert first.returncode == 0, (first.stdout + first.stderr)[-4000:]
    assert "gpu_check: found python" in first.stderr.splitlines()[0]  # the versions come first
    after_first = json.loads((output / "gpu_check.json").read_text())
    assert [row["case"] for row in after_first["train"]] == [
        "QLoRA tiny-llama", "fp16 8-bit LoRA tiny-llama (tallrec-llama-7b recipe)"]
    rest = _smoke("--output", str(output), "--workdir", str(workdir))  # every part: part 1 is already done
    assert rest.returncode == 0, (rest.stdout + rest.stderr)[-4000:]
    assert rest.stderr.count("already in") == 3 and "part 1: QLoRA tiny-llama: already in" in rest.stderr
    report = json.loads((output / "gpu_check.json").read_text())
    assert sorted(report["parts"]) == ["1", "2", "3"] and all(part["finished"] for part in report["parts"].values())
    assert report["versions"]["python"] and report["versions"]["trl"] == "1.16.0" and report["versions"]["gpu"] is None
    train = {row["case"]: row for row in report["train"]}
    assert list(train) == ["QLoRA tiny-llama", "fp16 8-bit LoRA tiny-llama (tallrec-llama-7b recipe)",
                           "8-bit LoRA tiny-llama", "bf16 LoRA tiny-llama"]
    for row in train.values():
        assert "error" not in row, row
        assert row["tokens_per_s"] > 0 and row["mfu"] > 0 and row["steps"] == 2 and row["loss_finite"]
        assert row["estimate_train_gib"] > 0 and row["estimate_validation_gib"] > 0
        assert row["peak_train_allocated_gib"] is None and row["estimate_train_error"] is None  # no CUDA: not made up
        assert row["lm_head"] == "tallrec compact head"  # no Triton here; on CUDA: "trl Triton kernel"
        assert row["trainable_dtypes"]
    recipe = train["fp16 8-bit LoRA tiny-llama (tallrec-llama-7b recipe)"]
    assert recipe["dtype"] == "float16" and recipe["quantization"] == "8bit" and recipe["recipe"] == "tallrec-llama-7b.yaml"
    assert recipe["precision"] == "fp32"  # fp16 autocast and its GradScaler are CUDA-only: recorded as what ran
    assert [(row["case"], row["prefix_cache"]) for row in report["eval"]] == [
        ("eval 4-bit tiny-llama", "off"), ("eval 4-bit tiny-llama", "on"), ("eval bf16 tiny-llama", "off"),
        ("eval bf16 tiny-llama", "on")]
    assert all(row["prompts_per_s"] > 0 and row["prompts"] == 16 and row["oom_retries"] == 0 for row in report["eval"])
    assert report["eval"][1]["computed_tokens"] < report["eval"][0]["computed_tokens"]  # the cache saved work
    (export,) = report["export"]
    assert export["dtype"] == "bfloat16" and export["seconds"] > 0 and not export["trained_for_export"]
    markdown = (output / "gpu_check.md").read_text()
    assert "QLoRA tiny-llama" in markdown and "--dry-run train GiB" in markdown and "no CUDA device" in markdown
    assert "## Issue 15" in markdown and "15. " in markdown  # the CUDA-path checklist travels with the run
    # --output holds the report alone; weights, runs and exports stay in --workdir
    assert sorted(path.name for path in output.iterdir()) == ["gpu_check.json", "gpu_check.md"]
    assert (workdir / "home" / "models").is_dir() and (workdir / "runs").is_dir()
    assert not (workdir / "merged").exists()  # measured, then removed


@pytest.fixture
def fake_run(monkeypatch):
    """main() without training: run_case returns one row per case, reads the report on disk when a case starts."""
    seen: list[tuple[str, list[str]]] = []

    def run_case(case, shapes, workdir, peak, smoke):
        path = Path(os.environ["GPU_CHECK_TEST_OUTPUT"]) / "gpu_check.json"
        on_disk = [row["case"] for section in ("train", "eval", "export")
                   for row in (json.loads(path.read_text())[section] if path.exists() else [])]
        seen.append((case.label, on_disk))
        if case.label == os.environ.get("GPU_CHECK_TEST_KILL"):
            raise SystemExit(137)  # the command's time limit: nothing after this point runs
        if case.label == os.environ.get("GPU_CHECK_TEST_FAIL"):
            raise RuntimeError("CUDA error: an illegal memory access")
        return [{"case": case.label, "value": 1}]

    monkeypatch.setattr(gpu_check, "run_case", run_case)
    monkeypatch.setattr(gpu_check, "markdown", lambda report: "rows of fake cases\n")
    monkeypatch.setattr(gpu_check.wheels, "import_failures", dict)
    for name in ("TALLREC_HOME", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):  # main sets them: restored afterwards
        monkeypatch.delenv(name, raising=False)
    return seen


def test_results_are_written_after_every_case_and_a_killed_part_resumes(tmp_path, monkeypatch, fake_run):
    output = tmp_path / "out"
    monkeypatch.setenv("GPU_CHECK_TEST_OUTPUT", str(output))
    monkeypatch.setenv("GPU_CHECK_TEST_KILL", "fp16 8-bit LoRA tiny-llama (tallrec-llama-7b recipe)")
    args = ["--smoke", "--part", "1", "--output", str(output), "--workdir", str(tmp_path / "work")]
    with pytest.raises(SystemExit):
        gpu_check.main(args)
    # each case saw the rows of the cases before it already on disk
    assert fake_run == [("QLoRA tiny-llama", []), ("eval 4-bit tiny-llama", ["QLoRA tiny-llama"]),
                        ("fp16 8-bit LoRA tiny-llama (tallrec-llama-7b recipe)",
                         ["QLoRA tiny-llama", "eval 4-bit tiny-llama"])]
    report = json.loads((output / "gpu_check.json").read_text())
    assert report["parts"]["1"]["finished"] is False
    monkeypatch.delenv("GPU_CHECK_TEST_KILL")
    fake_run.clear()
    assert gpu_check.main(args) == 0
    assert [label for label, _ in fake_run] == ["fp16 8-bit LoRA tiny-llama (tallrec-llama-7b recipe)"]
    assert json.loads((output / "gpu_check.json").read_text())["parts"]["1"]["finished"] is True
    fake_run.clear()
    assert gpu_check.main([*args, "--fresh"]) == 0 and len(fake_run) == 3  # --fresh starts over


def test_a_failed_case_is_recorded_the_rest_of_the_part_runs_and_a_rerun_retries_it(tmp_path, monkeypatch, fake_run):
    output = tmp_path / "out"
    monkeypatch.setenv("GPU_CHECK_TEST_OUTPUT", str(output))
    monkeypatch.setenv("GPU_CHECK_TEST_FAIL", "QLoRA tiny-llama")
    args = ["--smoke", "--part", "1", "--output", str(output), "--workdir", str(tmp_path / "work")]
    assert gpu_check.main(args) == 1
    report = json.loads((output / "gpu_check.json").read_text())
    assert report["train"][0] == {"case": "QLoRA tiny-llama", "error": "RuntimeError: CUDA error: an illegal memory access"}
    assert len(fake_run) == 3
    monkeypatch.delenv("GPU_CHECK_TEST_FAIL")
    fake_run.clear()
    assert gpu_check.main(args) == 0 and [label for label, _ in fake_run] == ["QLoRA tiny-llama"]
    report = json.loads((output / "gpu_check.json").read_text())
    assert [row for row in report["train"] if row["case"] == "QLoRA tiny-llama"] == [{"case": "QLoRA tiny-llama",
                                                                                      "value": 1}]


def test_parts_are_listed_and_each_names_cases_the_full_run_has(capsys):
    assert gpu_check.main(["--parts"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["1", "2", "3"]
    assert lines[0].split("\t")[1].split("; ") == [
        "QLoRA llama-2-7b", "eval 4-bit llama-2-7b", "fp16 8-bit LoRA llama-2-7b (tallrec-llama-7b recipe)"]
    labels = [case.label for cases in gpu_check.FULL.parts for case in cases]
    assert len(labels) == len(set(labels))  # a label is a case's key in the JSON
    assert gpu_check.main(["--part", "9"]) == 2


def test_the_workdir_may_not_sit_under_the_output(tmp_path, capsys):
    assert gpu_check.main(["--smoke", "--output", str(tmp_path), "--workdir", str(tmp_path / "work")]) == 2
    assert "would travel back" in capsys.readouterr().err


def test_missing_wheels_are_found_by_importing_and_named_with_the_install_command(monkeypatch, capsys, tmp_path):
    real = wheels.importlib.import_module

    def import_module(name, *args):
        if name in ("trl", "bitsandbytes"):
            raise ModuleNotFoundError(f"No module named '{name}'", name=name)
        return real(name, *args)

    monkeypatch.setattr(wheels.importlib, "import_module", import_module)
    assert gpu_check.main(["--smoke", "--output", str(tmp_path / "out"), "--workdir", str(tmp_path / "work")]) == 2
    message = capsys.readouterr().err
    assert message.index("gpu_check: found python") < message.index("cannot import")  # versions first
    assert "cannot import: trl (ModuleNotFoundError: No module named 'trl'); bitsandbytes" in message
    assert "make gpu-wheels" in message and "python -m acceptance.wheels install --wheels wheels/py312" in message
    assert "manylinux_2_28" not in message  # the old download command that finds no bitsandbytes 0.50.2


def test_without_cuda_the_full_check_refuses_clearly(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    monkeypatch.setattr(gpu_check.wheels, "import_failures", dict)
    assert gpu_check.main(["--output", str(tmp_path / "out"), "--workdir", str(tmp_path / "work")]) == 2
    assert "run with --smoke" in capsys.readouterr().err


def test_training_and_validation_peaks_are_held_against_their_own_estimates():
    parts = {"training": 10 * gpu_check.GIB, "validation": 12 * gpu_check.GIB, "total": 12 * gpu_check.GIB}
    row = gpu_check.memory_against_estimate(parts, (9.0 * gpu_check.GIB, 11.0 * gpu_check.GIB),
                                            (14.0 * gpu_check.GIB, 15.0 * gpu_check.GIB))
    assert row["estimate_train_error"] == round(1 / 9, 3)  # training part vs training max_memory_allocated
    assert row["estimate_validation_error"] == round(-2 / 14, 3)  # validation part vs validation allocated
    assert row["estimate_within_goal"] is True
    assert gpu_check.memory_against_estimate(parts, (5.0 * gpu_check.GIB, 6.0), (12.0 * gpu_check.GIB, 0.0))[
        "estimate_within_goal"] is False
    unmeasured = gpu_check.memory_against_estimate(parts, (None, None), (None, None))
    assert unmeasured["estimate_train_error"] is None and unmeasured["estimate_within_goal"] is None


def test_the_meter_separates_the_training_steps_from_the_validation_after_them(monkeypatch):
    """Peaks as torch.cuda would report them: each step's, then the validation pass at the last step's end."""
    readings = iter([(4.0, 5.0), (6.0, 7.0), (9.0, 9.5)])  # step 1, step 2, after step 2 (validation)
    monkeypatch.setattr(gpu_check, "_peak", lambda: next(readings))
    monkeypatch.setattr(gpu_check, "_reset_peak", lambda: None)
    monkeypatch.setattr(gpu_check, "_restart_peak", lambda: None)
    monkeypatch.setattr(gpu_check, "_sync", lambda: None)
    meter = gpu_check._step_meter()

    class Args:
        fp16, bf16 = True, False

    class Scaler:
        def is_enabled(self):
            return True

        def get_scale(self):
            return 32768.0

    class Optimizer:
        step_was_skipped = True
        scaler = Scaler()

    import torch

    model = torch.nn.Linear(2, 2)
    model.bias.requires_grad_(False)
    meter.on_train_begin(Args(), None, None, model=model)
    for _ in range(2):
        meter.on_step_begin(Args(), None, None)
        meter.on_step_end(Args(), None, None, optimizer=Optimizer())
    meter.on_log(Args(), None, None, logs={"loss": 1.5})
    meter.on_train_end(Args(), None, None)
    assert meter.train_peak == (6.0, 7.0) and meter.validation_peak == (9.0, 9.5)
    assert meter.precision == "fp16" and meter.trainable_dtypes == ["float32"]
    assert meter.skipped_steps == 2 and meter.scale == 32768.0 and meter.losses == [1.5]


def test_the_lm_head_counter_tells_trls_triton_kernel_from_the_fallbacks(monkeypatch):
    import trl.kernels.chunked_logprob as chunked

    from tallrec_cli.train import lm_head

    launched = []

    class Kernel:  # stands in for a triton JITFunction: kernel[grid](...)
        def __getitem__(self, grid):
            return lambda *args: launched.append(grid)

    monkeypatch.setattr(chunked, "_forward_kernel", Kernel())
    original = chunked._forward_kernel
    with gpu_check._LMHeadCounter() as counter:
        chunked._forward_kernel[(3,)](1, 2)
        chunked._forward_kernel[(5,)](1, 2)
    assert counter.calls["trl_triton"] == 2 and launched == [(3,), (5,)] and counter.head == "trl Triton kernel"
    assert chunked._forward_kernel is original and gpu_check._LMHeadCounter().head == "none (full logits)"
    with gpu_check._LMHeadCounter() as counter:
        lm_head.compact_log_probs  # noqa: B018 - patched while inside
        assert lm_head.compact_log_probs.__name__ == "wrapped"
    assert lm_head.compact_log_probs.__name__ == "compact_log_probs"
