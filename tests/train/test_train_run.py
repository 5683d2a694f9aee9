"""Training on the tiny LLaMA fixture: LoRA, QLoRA on CPU, early stopping, resume, errors, 2-process DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from tallrec_cli.core.errors import ArtifactError, ResourceError, TallrecError
from tallrec_cli.train.run import check_adapter_trained, run_training
from tests.train_helpers import tiny_config, write_dataset

REPO = Path(__file__).resolve().parents[2]
MANIFEST_KEYS = {"base_model", "base_model_config", "adapter_dir", "prompt", "labels", "quantization", "dtype", "lora",
                 "data", "seed", "processes", "best", "metrics", "wall_seconds", "config"}
DATA_KEYS = {"train", "valid", "train_sha256", "valid_sha256", "dataset_manifest_sha256", "shots", "sample_seed",
             "train_records", "valid_records", "truncated_records"}


pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture()
def data_dir(tmp_path):
    return write_dataset(tmp_path / "data")


def _lora_b(adapter_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {k: v for k, v in load_file(adapter_dir / "adapter_model.safetensors").items() if "lora_" in k}


def test_lora_run_writes_the_contract_folder(tmp_path, tiny_model_dir, data_dir, capfd, monkeypatch):
    monkeypatch.delenv("TALLREC_DEBUG", raising=False)
    run = tmp_path / "run"
    summary = run_training(tiny_config(tiny_model_dir, data_dir, run, data__shots=12))
    assert "Tokenizing" not in capfd.readouterr().err  # trl's datasets.map bars are third-party noise
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["kind"] == "train-run" and MANIFEST_KEYS <= set(manifest)
    assert DATA_KEYS <= set(manifest["data"]) and manifest["data"]["train_records"] == 12
    assert manifest["data"]["train_sha256"] and manifest["best"]["step"] == summary["best_step"]
    assert manifest["labels"]["positive_word"] == "Yes" and manifest["prompt"] == {"template": "alpaca"}
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [0, 2, 4]  # step 0: the untrained adapter, a reference only
    assert all(set(row) == {"step", "epoch", "train_loss", "val_auc", "val_loss", "elapsed_s"} for row in rows)
    assert rows[0]["train_loss"] is None and rows[0]["val_auc"] == summary["start_val_auc"]
    assert manifest["metrics"]["start_val_auc"] == summary["start_val_auc"] and summary["best_step"] in (2, 4)
    assert rows[1]["train_loss"] is not None and rows[1]["val_auc"] is not None
    assert (run / "config.yaml").exists() and list((run / "checkpoints").glob("checkpoint-*"))
    assert (run / "adapter" / "adapter_config.json").exists() and (run / "adapter" / "tokenizer.json").exists()

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), run / "adapter")
    assert any("lora" in name for name, _ in model.named_parameters())


def test_qlora_4bit_trains_on_cpu(tmp_path, data_dir):
    from tests.conftest import build_tiny_llama

    model_dir = build_tiny_llama(tmp_path / "model", hidden=64)  # bnb's CPU 4-bit kernels work in blocks of 64
    run = tmp_path / "run"
    # Validation (eval mode) at steps 0 and 1 comes before updates: on CPUs with AVX512-BF16 bitsandbytes would
    # repack the 4-bit weights into a layout that passes no gradient, leaving every LoRA B at zero.
    summary = run_training(tiny_config(model_dir, data_dir, run, model__quantization="4bit",
                                       model__dtype="bfloat16", training__max_steps=2, training__eval_every=1))
    assert summary["steps"] == 2 and summary["best_step"] in (1, 2)
    assert json.loads((run / "manifest.json").read_text())["quantization"] == "4bit"
    assert all(t.abs().sum() > 0 for k, t in _lora_b(run / "adapter").items() if "lora_B" in k)


def test_eval_at_start_can_be_switched_off(tmp_path, tiny_model_dir, data_dir):
    run = tmp_path / "run"
    summary = run_training(tiny_config(tiny_model_dir, data_dir, run, training__eval_at_start=False))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [2, 4] and summary["start_val_auc"] is None


def test_early_stopping_on_validation(tmp_path, tiny_model_dir, data_dir):
    # A learning rate this small leaves P(yes) unchanged, so AUC never improves after the first evaluation;
    # the ties keep the later step (issue 26, item 7) but count towards patience.
    summary = run_training(tiny_config(tiny_model_dir, data_dir, tmp_path / "run", training__lr=1e-9,
                                       training__max_steps=12, training__eval_every=1, training__patience=2,
                                       training__batch_size=2))
    assert summary["stopped_early"] and summary["steps"] == 3 and summary["best_step"] == 3


def test_one_class_validation_selects_on_loss(tmp_path, tiny_model_dir):
    data = write_dataset(tmp_path / "data", valid_labels=[1] * 8)
    summary = run_training(tiny_config(tiny_model_dir, data, tmp_path / "run", training__max_steps=2))
    assert summary["auc_undefined"] and summary["selected_on"] == "val_loss" and summary["best_val_auc"] is None


def test_out_of_memory_names_the_settings_to_lower(tmp_path, tiny_model_dir, data_dir):
    class RunOutOfMemory(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            raise torch.OutOfMemoryError("CUDA out of memory")

    run = tmp_path / "run"
    with pytest.raises(ResourceError, match="micro_batch_size") as error:
        run_training(tiny_config(tiny_model_dir, data_dir, run), callbacks=(RunOutOfMemory(),))
    assert "max_length" in error.value.hint and not (run / "manifest.json").exists()


def test_untrained_adapter_is_an_error(tmp_path, tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=4, target_modules=["q_proj"]))
    model.save_pretrained(tmp_path / "adapter")
    with pytest.raises(ArtifactError, match="all zero"):
        check_adapter_trained(tmp_path / "adapter")


class InterruptAt(TrainerCallback):
    """Sends the process a real SIGINT (what Ctrl-C does) after ``step``."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


def test_resume_after_ctrl_c_equals_an_uninterrupted_run(tmp_path, tiny_model_dir, data_dir):
    full = tmp_path / "full"
    run_training(tiny_config(tiny_model_dir, data_dir, full))

    broken = tmp_path / "broken"
    config = tiny_config(tiny_model_dir, data_dir, broken)
    with pytest.raises(TallrecError, match="interrupted at step 2") as error:
        run_training(config, callbacks=(InterruptAt(2),))
    assert "--resume" in error.value.hint
    assert not (broken / "manifest.json").exists()  # visibly unfinished
    assert [p.name for p in (broken / "checkpoints").glob("checkpoint-*")] == ["checkpoint-2"]

    summary = run_training(config, resume=True)
    assert summary["steps"] == 4 and (broken / "manifest.json").exists()
    for folder in ("checkpoints/checkpoint-4", "adapter"):
        expected, actual = _lora_b(full / folder), _lora_b(broken / folder)
        assert expected.keys() == actual.keys()
        for key in expected:
            torch.testing.assert_close(actual[key], expected[key], rtol=1e-4, atol=1e-6)
    rows = lambda run: [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert [r["step"] for r in rows(broken)] == [r["step"] for r in rows(full)] == [0, 2, 4]
    assert rows(broken)[-1]["val_auc"] == pytest.approx(rows(full)[-1]["val_auc"])


LAUNCHERS = {
    "torchrun": [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531"],
    # --multi_gpu picks accelerate's torchrun-style launcher; on a machine without GPUs the ranks run on CPU (gloo).
    "accelerate": [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                   "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                   "--main_process_port", "29532"],
}


# tiny_config's settings, with dropout off and records in sampler order: a 2-process run then sees the same
# records in each step as a single process accumulating 2 micro-batches (as tests/train/test_fsdp.py compares).
SAME_STEPS = {"model.dtype": "float32", "data.shots": "null", "data.max_valid": "null", "training.max_steps": "4",
              "training.batch_size": "4", "training.micro_batch_size": "2", "training.eval_every": "2",
              "training.lr": "0.01", "training.warmup_steps": "0", "training.eval_batch_size": "8",
              "prompt.max_length": "256", "lora.dropout": "0.0", "training.group_by_length": "false"}


def _metrics_rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_two_process_ddp_equals_a_single_process_run(tmp_path, tiny_model_dir, data_dir, launcher):
    single = tmp_path / "single"
    run_training(tiny_config(tiny_model_dir, data_dir, single, lora__dropout=0.0, training__group_by_length=False))
    run = tmp_path / "run"
    settings = [part for key, value in SAME_STEPS.items() for part in ("--set", f"{key}={value}")]
    command = [*LAUNCHERS[launcher], "-m", "tallrec_cli", "train", "--model", str(tiny_model_dir),
               "--train", str(data_dir), "--output", str(run), *settings]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TALLREC_DEBUG": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["processes"] == 2
    assert manifest["best"]["step"] == json.loads((single / "manifest.json").read_text())["best"]["step"]
    rows, single_rows = (_metrics_rows(folder) for folder in (run, single))
    assert [row["step"] for row in rows] == [0, 2, 4]  # rank 0 alone writes
    for name in ("val_auc", "val_loss", "train_loss"):
        assert [row[name] for row in rows] == pytest.approx([row[name] for row in single_rows], abs=1e-4), name
    assert result.stdout.count("training summary") == 1  # and alone reports
    expected, actual = _lora_b(single / "adapter"), _lora_b(run / "adapter")
    assert expected.keys() == actual.keys() and any(t.abs().sum() > 0 for k, t in actual.items() if "lora_B" in k)
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=1e-5)


def test_init_adapter_continues_from_an_existing_adapter(tmp_path, tiny_model_dir, data_dir):
    first = tmp_path / "stage1"
    run_training(tiny_config(tiny_model_dir, data_dir, first, training__max_steps=2))
    second = tmp_path / "stage2"
    run_training(tiny_config(tiny_model_dir, data_dir, second, training__max_steps=2,
                             lora__init_adapter=str(first / "adapter")))
    start, end = _lora_b(first / "adapter"), _lora_b(second / "adapter")
    assert start.keys() == end.keys() and any(not torch.equal(start[k], end[k]) for k in start)
