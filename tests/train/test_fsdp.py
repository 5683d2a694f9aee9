"""FSDP2 through accelerate on 2 CPU processes (gloo): the gathered adapter equals a single-process run's.

accelerate enables FSDP on accelerator devices only, so the sharded runs go through tests/fsdp_cpu.py,
which lets it shard CPU ranks too (torch's FSDP2 does, with gloo); the rest is tallrec's real path.
QLoRA is included: bitsandbytes' 4-bit layers run on CPU and shard when packed in bf16.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tallrec_cli.core.errors import ConfigError
from tallrec_cli.train.config import preflight
from tallrec_cli.train.run import run_training
from tests.train_helpers import tiny_config, write_dataset

REPO = Path(__file__).resolve().parents[2]
# Dropout off and records in sampler order: both runs then see the same samples in each step.
SAME_STEPS = dict(lora__dropout=0.0, training__group_by_length=False)


def _torchrun(port: int, module: str, args: list[str]) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
               "-m", module, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TALLREC_DEBUG": "1"}
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _train_args(model: Path, data: Path, output: Path, quantization: str) -> list[str]:
    dtype = "float32" if quantization == "none" else "bfloat16"
    settings = [f"model.dtype={dtype}", f"model.quantization={quantization}", "data.shots=null", "data.max_valid=null",
                "training.max_steps=4", "training.batch_size=4", "training.micro_batch_size=2", "training.eval_every=2",
                "training.lr=0.01", "training.warmup_steps=0", "training.eval_batch_size=8", "prompt.max_length=256",
                "lora.dropout=0.0", "training.group_by_length=false", "training.fsdp=true"]
    return ["train", "--model", str(model), "--train", str(data), "--output", str(output),
            *[part for setting in settings for part in ("--set", setting)]]


@pytest.mark.slow
@pytest.mark.parametrize("quantization, tolerance", [
    ("none", 1e-5),
    # bf16 adapter (trl keeps k-bit LoRA weights in bf16); the single process upcasts norms and embeddings to
    # fp32 (prepare_model_for_kbit_training), FSDP keeps one dtype per shard unit: a few bf16 steps apart.
    ("4bit", 2e-2),
])
def test_fsdp_adapter_equals_a_single_process_run_and_loads_with_plain_peft(tmp_path, tiny_model_dir, quantization,
                                                                           tolerance):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    data = write_dataset(tmp_path / "data")
    dtype = "float32" if quantization == "none" else "bfloat16"
    single = tmp_path / "single"
    run_training(tiny_config(tiny_model_dir, data, single, model__quantization=quantization, model__dtype=dtype,
                             training__warmup_steps=0, **SAME_STEPS))
    sharded = tmp_path / "fsdp"
    result = _torchrun(29541 if quantization == "none" else 29542, "tests.train.fsdp_cpu",
                       _train_args(tiny_model_dir, data, sharded, quantization))
    assert result.returncode == 0, result.stderr[-4000:]

    manifest = json.loads((sharded / "manifest.json").read_text())
    assert manifest["processes"] == 2 and manifest["config"]["training"]["fsdp"] is True
    assert len((sharded / "metrics.jsonl").read_text().splitlines()) == 3  # rank 0 alone writes: steps 0, 2, 4
    assert result.stdout.count("training summary") == 1
    assert list((sharded / "checkpoints" / "checkpoint-4").glob("pytorch_model_fsdp_*"))  # sharded checkpoint
    expected, actual = load_file(single / "adapter" / "adapter_model.safetensors"), \
        load_file(sharded / "adapter" / "adapter_model.safetensors")
    assert expected.keys() == actual.keys() and any("lora_B" in key for key in actual)
    for key in expected:
        assert actual[key].shape == expected[key].shape  # gathered, not one rank's shard
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=tolerance)

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = PeftModel.from_pretrained(base, str(sharded / "adapter"))
    assert model(input_ids=torch.tensor([[1, 2, 3]])).logits.shape[-1] == base.config.vocab_size


@pytest.mark.parametrize("quantization", ["none", "4bit"])
def test_fsdp_checkpoints_activations_with_fsdps_own_wrapper_not_the_trainers(tmp_path, quantization):
    """The Trainer's gradient checkpointing under FSDP re-gathers each layer in backward a second time."""
    from tallrec_cli.train.run import _sft_config

    config = tiny_config(tmp_path, tmp_path, tmp_path / "run", model__quantization=quantization,
                         model__dtype="bfloat16", training__fsdp=True, training__gradient_checkpointing=True)
    args = _sft_config(config, tmp_path / "run", 2, 1, "bf16")
    assert not args.gradient_checkpointing and args.fsdp_config["activation_checkpointing"] is True
    plain = tiny_config(tmp_path, tmp_path, tmp_path / "run", training__gradient_checkpointing=True)
    assert _sft_config(plain, tmp_path / "run", 2, 1, None).gradient_checkpointing  # without FSDP: the Trainer's


def test_fsdp_in_a_single_process_is_refused_before_loading(tmp_path, tiny_model_dir):
    data = write_dataset(tmp_path / "data")
    with pytest.raises(ConfigError, match="training.fsdp: FSDP shards across processes but this is a single process") as error:
        preflight(tiny_config(tiny_model_dir, data, tmp_path / "run", training__fsdp=True))
    assert "nothing was loaded" in error.value.hint
    assert "accelerate launch --config_file recipes/accelerate/" in str(error.value)


def test_preflight_warns_that_every_gpu_first_loads_the_whole_model(tmp_path, tiny_model_dir, monkeypatch):
    from tallrec_cli.core.reporting import Reporter, use_reporter

    class Warnings(Reporter):
        said: list[str] = []

        def warning(self, message: str) -> None:
            self.said.append(message)

    monkeypatch.setenv("WORLD_SIZE", "2")
    previous = use_reporter(Warnings())
    try:
        preflight(tiny_config(tiny_model_dir, write_dataset(tmp_path / "data"), tmp_path / "run", training__fsdp=True))
    finally:
        use_reporter(previous)
    assert any("loads the whole model onto its own GPU before FSDP shards it" in said for said in Warnings.said)


@pytest.mark.slow
def test_fsdp_that_accelerate_does_not_enable_is_an_error_not_silent_ddp(tmp_path, tiny_model_dir):
    data = write_dataset(tmp_path / "data")
    result = _torchrun(29543, "tallrec_cli", _train_args(tiny_model_dir, data, tmp_path / "run", "none"))
    assert result.returncode != 0
    assert "accelerate did not enable FSDP" in result.stderr


def test_dry_run_per_gpu_estimate_from_an_accelerate_config():
    from typer.testing import CliRunner

    from tallrec_cli.cli.app import app

    recipe = str(REPO / "recipes" / "llama-3-70b-qlora-fsdp.yaml")
    common = ["train", recipe, "--model", "random:llama-3-70b", "--train", str(REPO), "--dry-run"]
    two = CliRunner().invoke(app, [*common, "--accelerate-config", str(REPO / "recipes/accelerate/fsdp2-2gpu.yaml"),
                                   "--gpu-memory", "48"])
    assert two.exit_code == 0, two.output
    assert re.search(r"per GPU, 2 processes\s+sharded\s+with FSDP", two.output) and "fits in 48 GiB per GPU" in two.output
    assert re.search(r"at load every GPU holds the whole\s+model, 36.8 GiB", two.output)
    one = CliRunner().invoke(app, [*common, "--processes", "1"])
    assert "does not fit in 24 GiB per GPU" in one.output and "short by" in one.output

    from tallrec_cli.train.capacity import per_gpu_fit
    from tallrec_cli.train.config import load_train_config

    config = load_train_config(recipe, {"model": {"name": "random:llama-3-70b"}})
    fits = [per_gpu_fit(config, count, 512, 24.0) for count in (2, 4, 8)]
    sharded = [max(fit["parts_gib"]["training"], fit["parts_gib"]["validation"]) for fit in fits]
    assert sharded[0] > sharded[1] > sharded[2]  # more GPUs, smaller shards; loading stays whole on each
    assert {round(fit["total_gib"], 1) for fit in fits} == {36.8} and not any(fit["fits"] for fit in fits)


def test_a_wrong_accelerate_config_path_is_a_clear_error(tmp_path):
    from tallrec_cli.train.capacity import processes_from_accelerate_config

    with pytest.raises(ConfigError, match="accelerate config .*missing.yaml does not exist") as error:
        processes_from_accelerate_config(tmp_path / "missing.yaml")
    assert "recipes/accelerate/fsdp2-2gpu.yaml" in error.value.hint
    (tmp_path / "bad.yaml").write_text("distributed_type: FSDP\n")
    with pytest.raises(ConfigError, match="has no num_processes"):
        processes_from_accelerate_config(tmp_path / "bad.yaml")
    for name in ("fsdp2-2gpu", "fsdp2-4gpu", "fsdp2-2nodes"):
        assert processes_from_accelerate_config(REPO / "recipes" / "accelerate" / f"{name}.yaml") in (2, 4, 16)
