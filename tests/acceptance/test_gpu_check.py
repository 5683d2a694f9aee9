"""acceptance/gpu_check.py --smoke: the GPU acceptance check's code paths at tiny shapes on the CPU."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _load_script():
    return importlib.import_module("acceptance.gpu_check")


def test_smoke_runs_every_case_and_writes_markdown_and_json(tmp_path):
    result = subprocess.run([sys.executable, "-m", "acceptance.gpu_check", "--smoke", "--output", str(tmp_path)], capture_output=True,
                            text=True, timeout=900, cwd=REPO, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [row["case"] for row in report["train"]] == ["QLoRA tiny-llama", "8-bit LoRA tiny-llama", "bf16 LoRA tiny-llama"]
    for row in report["train"]:
        assert "error" not in row, row
        assert row["tokens_per_s"] > 0 and row["mfu"] > 0 and row["estimate_gib"] > 0 and row["steps"] == 2
        assert row["peak_reserved_gib"] is None  # no CUDA: not measured, never made up
    assert [row["prefix_cache"] for row in report["eval"]] == ["off", "on"]
    assert all(row["prompts_per_s"] > 0 and row["prompts"] == 16 for row in report["eval"])
    assert report["eval"][1]["computed_tokens"] < report["eval"][0]["computed_tokens"]  # the cache saved work
    assert report["export"]["dtype"] == "bfloat16" and report["export"]["seconds"] > 0
    markdown = (tmp_path / "gpu_check.md").read_text()
    assert "QLoRA tiny-llama" in markdown and "--dry-run GiB" in markdown and "no CUDA device" in markdown
    assert "## Issue 15" in markdown and "15. " in markdown  # the CUDA-path checklist travels with the run


def test_missing_wheels_are_named_with_the_download_command(monkeypatch, capsys):
    module = _load_script()
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("trl", "bitsandbytes") else real(name, *a))
    assert module.main(["--smoke"]) == 2
    message = capsys.readouterr().err
    assert "missing packages: trl, bitsandbytes" in message
    assert "pip download --no-deps --only-binary=:all:" in message and "trl==1.16.0 bitsandbytes==0.50.2" in message


def test_without_cuda_the_full_check_refuses_clearly(monkeypatch, capsys):
    module = _load_script()
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert module.main([]) == 2
    assert "run with --smoke" in capsys.readouterr().err
