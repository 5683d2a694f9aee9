"""`tallrec doctor`: real CPU verdicts here; CUDA mocked only for the GPU lines no CPU path can reach."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys

import pytest
import torch

from tallrec_cli.train import doctor
from tallrec_cli.train.doctor import GIB

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _by_name(checks):
    return {check.name: check for check in checks}


def test_doctor_on_a_cpu_machine_gives_cpu_verdicts_and_a_real_bitsandbytes_matmul():
    result = subprocess.run([sys.executable, "-m", "tallrec_cli", "doctor", "--json"], capture_output=True, text=True,
                            cwd=REPO, timeout=300, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 0, result.stderr
    checks = {row["name"]: row for row in json.loads(result.stdout)}
    assert checks["CUDA"]["verdict"] == "warn" and "no CUDA device" in checks["CUDA"]["detail"]
    assert checks["CUDA"]["fix"]
    assert checks["GPU"]["verdict"] == "skip" and checks["flash attention"]["verdict"] == "skip"
    for bits in (4, 8):
        line = checks[f"bitsandbytes {bits}-bit"]
        assert line["verdict"] == "ok" and "matmul on cpu" in line["detail"], line
    assert checks["SDPA attention"]["verdict"] == "ok"
    assert checks["disk"]["verdict"] in ("ok", "warn") and "GiB free" in checks["disk"]["detail"]
    assert "Traceback" not in result.stderr


def test_a_recipe_that_cannot_fit_says_by_how_much_and_what_to_lower():
    overrides = {"model": {"name": "random:llama-3-8b"}, "training": {"gradient_checkpointing": False}}
    check = doctor.check_recipe_fit("recipes/llama-3-8b-qlora.yaml", overrides, budget=lambda: (12 * GIB, "free on a test card"))
    assert check.verdict == "fail"
    assert "short by" in check.detail and "12.0 GiB free on a test card" in check.detail
    assert "training.gradient_checkpointing=true" in check.fix and "training.micro_batch_size" in check.fix
    fits = doctor.check_recipe_fit("recipes/llama-3-8b-qlora.yaml", {"model": {"name": "random:llama-3-8b"}},
                                   budget=lambda: (24 * GIB, "free on a test card"))
    assert fits.verdict == "ok" and "headroom" in fits.detail


def test_the_fit_check_keeps_the_cuda_context_free_as_dry_run_does():
    from tallrec_cli.train.capacity import CUDA_RESERVE_GIB, estimate_recipe
    from tallrec_cli.train.config import load_train_config

    recipe = os.path.join(REPO, "recipes", "llama-3-8b-qlora.yaml")
    overrides = {"model": {"name": "random:llama-3-8b"}}
    peak = estimate_recipe(load_train_config(recipe, overrides)).total_bytes
    short = doctor.check_recipe_fit(recipe, overrides, budget=lambda: (peak + CUDA_RESERVE_GIB * GIB / 2, "free"))
    assert short.verdict == "fail" and "CUDA context" in short.detail
    enough = doctor.check_recipe_fit(recipe, overrides, budget=lambda: (peak + CUDA_RESERVE_GIB * GIB, "free"))
    assert enough.verdict == "ok"


def test_a_broken_recipe_is_a_fail_line_not_a_crash(tmp_path):
    check = doctor.check_recipe_fit(tmp_path / "missing.yaml")
    assert check.verdict == "fail" and "does not exist" in check.detail


def test_a_broken_bitsandbytes_is_a_fail_line_with_a_fix(monkeypatch):
    def broken(device, bits):
        raise RuntimeError("CUDA Setup failed despite GPU being available.\nmore text")

    monkeypatch.setattr(doctor, "_bnb_matmul", broken)
    lines = doctor.check_bitsandbytes("cpu")
    assert [line.verdict for line in lines] == ["fail", "fail"]
    assert "CUDA Setup failed" in lines[0].detail and "python -m bitsandbytes" in lines[0].fix


def test_a_bitsandbytes_older_than_transformers_minimum_is_a_fail_line(old_bitsandbytes):
    from transformers.utils.import_utils import BITSANDBYTES_MIN_VERSION

    [line] = doctor.check_bitsandbytes("cpu")
    assert line.verdict == "fail" and f"0.45.0 is older than {BITSANDBYTES_MIN_VERSION}" in line.detail
    assert line.fix == f"pip install -U 'bitsandbytes>={BITSANDBYTES_MIN_VERSION}'"


def test_a_missing_package_is_a_fail_line(monkeypatch):
    real_version = importlib.metadata.version

    def version(name):
        if name == "trl":
            raise importlib.metadata.PackageNotFoundError(name)
        return real_version(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    checks = _by_name(doctor.check_packages())
    assert checks["trl"].verdict == "fail" and "pip install trl" in checks["trl"].fix
    assert checks["torch"].verdict == "ok"


def test_gpu_lines_with_cuda_mocked(monkeypatch):
    """No CUDA here: the device queries are mocked (a 3090 with an old driver-era card beside it)."""
    cards = [("NVIDIA GeForce RTX 3090", (8, 6), (23.5 * GIB, 24 * GIB)), ("Tesla P100", (6, 0), (16 * GIB, 16 * GIB))]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(cards))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: cards[index][0])
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=0: cards[index][1])
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda index=0: cards[index][2])
    lines = doctor.check_gpus()
    assert lines[0].verdict == "ok" and "RTX 3090" in lines[0].detail and "23.5 of 24.0 GiB free" in lines[0].detail
    assert lines[1].verdict == "fail" and "compute capability" in lines[1].fix
    assert doctor.memory_budget() == (23.5 * GIB, "free on NVIDIA GeForce RTX 3090")


def test_worst_verdict():
    ok, warn, fail = (doctor.Check("x", verdict, "") for verdict in ("ok", "warn", "fail"))
    assert doctor.worst_verdict([ok, warn]) == "warn" and doctor.worst_verdict([warn, fail, ok]) == "fail"
    assert doctor.worst_verdict([ok]) == "ok"


@pytest.mark.parametrize("free_gib, verdict", [(1.0, "fail"), (10.0, "warn"), (100.0, "ok")])
def test_disk_verdicts(monkeypatch, tmp_path, free_gib, verdict):
    monkeypatch.setattr(doctor.shutil, "disk_usage", lambda path: type("U", (), {"free": free_gib * GIB})())
    assert doctor.check_disk(tmp_path / "not-yet" / "home").verdict == verdict
