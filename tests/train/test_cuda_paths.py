"""The CUDA path, tested on CPU (issue 15): what CPU cannot reach (device counts, free GPU memory, the fp16
GradScaler, Triton) is mocked; everything else runs for real on the tiny LLaMA fixture.

acceptance/cuda_acceptance.py lists, per item, what the first real GPU run must confirm.
"""

from __future__ import annotations

import gc
import importlib.metadata
import inspect
import json
import types
import weakref
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import torch
from transformers import TrainerCallback

from tallrec_cli.core.errors import ConfigError, ResourceError
from tallrec_cli.model import loading as models
from tallrec_cli.model import scoring
from tallrec_cli.model.prompts import LabelTokens, load_template
from tallrec_cli.model.scoring import ScoringSpec
from tallrec_cli.train import capacity
from tallrec_cli.train import config as train_config
from tallrec_cli.train import run as train
from tests.conftest import build_tiny_llama
from tests.train_helpers import tiny_config, write_dataset

REPO = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture()
def data_dir(tmp_path):
    return write_dataset(tmp_path / "data")


@pytest.fixture(scope="module")
def tiny_64(tmp_path_factory):
    """bitsandbytes' CPU 4-bit kernels work in blocks of 64."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny64") / "model", hidden=64)


def _fake_cuda(monkeypatch, count: int = 1, capability=(8, 0)):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: capability)


# ---------------------------------------------------------------- 1. fp16 + k-bit: the GradScaler's dtype

class CudaGradScalerStep(TrainerCallback):
    """What accelerate's GradScaler does before every fp16 optimizer step on CUDA (CPU training has no scaler)."""

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        scaler = torch.amp.GradScaler("cpu")
        scaler.scale(torch.ones(()))  # initialises the scale
        scaler.unscale_(optimizer)


def test_fp16_with_kbit_trains_past_the_first_optimizer_step(tmp_path, tiny_64, data_dir, monkeypatch):
    real_unscale = torch._amp_foreach_non_finite_check_and_unscale_

    def cuda_unscale(grads, found_inf, inv_scale):  # CUDA's kernel has no BFloat16 variant
        if any(grad.dtype == torch.bfloat16 for grad in grads):
            raise RuntimeError('"_amp_foreach_non_finite_check_and_unscale_cuda" not implemented for \'BFloat16\'')
        return real_unscale(grads, found_inf, inv_scale)

    monkeypatch.setattr(torch, "_amp_foreach_non_finite_check_and_unscale_", cuda_unscale)
    monkeypatch.setattr(train, "mixed_precision", lambda dtype: "fp16")  # what float16 gets on a GPU
    summary = train.run_training(
        tiny_config(tiny_64, data_dir, tmp_path / "run", model__quantization="4bit", model__dtype="float16",
                    training__max_steps=1, training__eval_every=1),
        callbacks=(CudaGradScalerStep(),))
    assert summary["steps"] == 1


# ------------------------------------------- 3. k-bit: frozen weights and activations in the compute dtype

def test_kbit_model_keeps_frozen_weights_and_activations_in_compute_dtype(tiny_64):
    config = tiny_config(tiny_64, REPO, REPO, model__quantization="4bit", model__dtype="bfloat16")
    model = train.build_model(config, models.resolve_model_source(str(tiny_64)))
    frozen = {name: p.dtype for name, p in model.named_parameters() if not p.requires_grad and p.is_floating_point()}
    assert frozen and set(frozen.values()) == {torch.bfloat16}, frozen
    with torch.no_grad():
        out = model(input_ids=torch.tensor([[5, 6, 7, 8]]), output_hidden_states=True)
    assert {h.dtype for h in out.hidden_states} == {torch.bfloat16}  # the residual stream


# ------------------------------------------------------------------------------- 4. the --dry-run estimate

def _estimate(recipe: str, shape: str, seq_len: int = 512, valid_tokens=None, **overrides):
    config = train_config.load_train_config(REPO / "recipes" / recipe, overrides)
    model_config = capacity.config_from_shape(shape)
    counts = capacity.count_parameters(model_config, config.lora)
    return {k: v / capacity.GIB for k, v in capacity.estimate_memory(model_config, counts, config, seq_len,
                                                                valid_tokens).items()}


def test_estimate_charges_no_full_logits_for_trls_fused_head():
    for recipe, shape in (("llama-3-8b-qlora.yaml", "llama-3-8b"), ("qwen2.5-7b-qlora.yaml", "qwen2.5-7b")):
        assert _estimate(recipe, shape, prompt={"loss": "full"})["logits"] < 0.6  # was 4.9 / 5.8 GiB


def test_estimate_has_no_eager_attention_square_term():
    short = _estimate("llama-2-7b-qlora.yaml", "llama-7b", 512, training={"gradient_checkpointing": False})
    long = _estimate("llama-2-7b-qlora.yaml", "llama-7b", 1024, training={"gradient_checkpointing": False})
    assert long["activations"] / short["activations"] == pytest.approx(2.0)


def test_qlora_micro_batch_8_without_checkpointing_does_not_fit_24_gib():
    # LoRA on all linear layers keeps each module's dropped-out input: ~26-34 GiB, not the 19.8 once printed
    estimate = _estimate("llama-2-7b-qlora.yaml", "llama-7b", training={"gradient_checkpointing": False})
    assert 26 < estimate["total"] < 36


def test_estimate_reports_the_larger_of_training_and_validation():
    estimate = _estimate("llama-2-7b-qlora.yaml", "llama-7b", valid_tokens=(300, 80))
    assert estimate["validation"] > estimate["training"]  # the recipe's real peak is its validation pass
    assert estimate["total"] == estimate["validation"]
    more_rows = _estimate("llama-2-7b-qlora.yaml", "llama-7b", valid_tokens=(300, 80), training={"eval_batch_size": 32})
    assert more_rows["validation"] > estimate["validation"] and more_rows["training"] == estimate["training"]


def test_tallrec_recipe_fits_24_gib_with_margin():
    estimate = _estimate("tallrec-llama-7b.yaml", "llama-7b")
    assert estimate["total"] + capacity.CUDA_RESERVE_GIB < 0.8 * 24


def test_dry_run_says_the_cuda_context_is_extra(tmp_path, tiny_model_dir):
    result = capacity.dry_run(tiny_config(tiny_model_dir, write_dataset(tmp_path / "data"), tmp_path / "run"))
    assert any("CUDA context" in note for note in result["notes"])
    assert result["memory_gib"]["total"] == max(result["memory_gib"]["training"], result["memory_gib"]["validation"])


# ------------------------------------------------------------------ 5. validation under training's autocast

def _labels():
    return LabelTokens(positive_word="Yes", negative_word="No", positive_id=5, negative_id=6)


def _spec():
    return ScoringSpec(load_template("alpaca"), _labels(), batch_size=2)


def test_validation_runs_under_the_trainers_autocast(tmp_path, tiny_model_dir, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tallrec_cli.train.callbacks import TrainingStatus, ValidationCallback, ValidationSchedule, ValidationSet

    seen = []

    def spy(spec, model, tokenizer, prompts):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return types.SimpleNamespace(scores=np.linspace(0.1, 0.9, len(prompts)))

    monkeypatch.setattr(ScoringSpec, "score", spy)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    callback = ValidationCallback(TrainingStatus("val_auc"), tmp_path, AutoTokenizer.from_pretrained(tiny_model_dir),
                                  ValidationSet(["a", "b"], [0, 1]), _spec(), ValidationSchedule(1), False)
    state = types.SimpleNamespace(global_step=1, max_steps=1, epoch=1.0)
    callback.on_step_end(types.SimpleNamespace(bf16=True, fp16=False), state, types.SimpleNamespace(), model=model)
    assert seen == [(True, torch.bfloat16)]


def test_answer_probability_stays_fp32_under_autocast(tiny_model_dir):
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(4, 32, generator=generator) * 3
    weight = torch.randn(600, 32, generator=generator)
    for mode in scoring.SCORE_MODES:
        plain = scoring.label_probability(hidden, weight, _labels(), mode)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = scoring.label_probability(hidden, weight, _labels(), mode)
        np.testing.assert_allclose(autocast, plain, rtol=1e-6)


# --------------------------------------------------------------------- 6. scorer batch sizing and OOM

def _fake_gpu_model(model_config, width: int = 2):
    parameter = types.SimpleNamespace(device=torch.device("cuda", 0))
    embeddings = types.SimpleNamespace(weight=torch.empty(0, dtype=torch.bfloat16 if width == 2 else torch.float32))
    return types.SimpleNamespace(config=model_config, parameters=lambda: iter([parameter]),
                                 get_input_embeddings=lambda: embeddings)


def test_auto_batch_size_counts_the_prefix_cache(monkeypatch):
    free = 6 * 2 ** 30  # a 7B 4-bit model on a 12 GiB card
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, 12 * 2 ** 30))
    model = _fake_gpu_model(capacity.config_from_shape("llama-7b"))
    rows = scoring.auto_batch_size(model, longest_tokens=240, prefix_tokens=80)
    kv_per_row = 32 * (80 + 240) * 2 * 4096 * 2  # layers x tokens x (keys + values) x width
    assert rows * kv_per_row <= free and rows < scoring.auto_batch_size(model, 240)


def test_out_of_memory_in_the_head_projection_is_backed_off(tiny_model_dir, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    real = scoring.label_probability
    calls = []

    def first_call_oom(hidden, *args):
        calls.append(len(hidden))
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.2 GiB")
        return real(hidden, *args)

    monkeypatch.setattr(scoring, "label_probability", first_call_oom)
    result = scoring.score_prompts_detailed(model, tokenizer, ["User Preference: a", "User Preference: b"] * 2,
                                            _labels(), "tallrec", batch_size=4, prefix_cache="off")
    assert result.oom_retries == 1 and result.batch_size == 2 and calls == [4, 2, 2]


def test_tallrec_mode_in_vocabulary_chunks_equals_the_full_softmax(monkeypatch):
    generator = torch.Generator().manual_seed(1)
    hidden, weight = torch.randn(3, 16, generator=generator), torch.randn(100, 16, generator=generator)
    expected = torch.softmax((hidden @ weight.T).softmax(-1)[:, [5, 6]], -1)[:, 0].numpy()
    monkeypatch.setattr(scoring, "HEAD_CHUNK_ROWS", 7)
    np.testing.assert_allclose(scoring.label_probability(hidden, weight, _labels(), "tallrec"), expected, rtol=1e-5)


def test_cublas_allocation_failure_is_out_of_memory():
    message = "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"
    assert scoring.is_out_of_memory(RuntimeError(message))
    assert not scoring.is_out_of_memory(RuntimeError("CUDA error: CUBLAS_STATUS_EXECUTION_FAILED"))


# ------------------------------------------------- 7, 11. loading: each rank on its own GPU, straight onto it

def _capture_from_pretrained(monkeypatch, error: Exception | None = None) -> dict:
    from transformers import AutoModelForCausalLM

    captured: dict = {}

    def fake(path, **kwargs):
        captured.update(kwargs)
        if error is not None:
            raise error
        return types.SimpleNamespace(to=lambda *a: pytest.fail("weights were moved after loading"))

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", fake)
    monkeypatch.setattr(models, "quantization_config",
                        lambda quantization, *dtypes: None if quantization == "none" else object())
    return captured


def test_each_rank_loads_quantized_weights_onto_its_own_gpu(tiny_model_dir, monkeypatch):
    _fake_cuda(monkeypatch, count=4)
    monkeypatch.setenv("LOCAL_RANK", "2")
    captured = _capture_from_pretrained(monkeypatch)
    models.load_model(models.resolve_model_source(str(tiny_model_dir)), "bfloat16", "4bit")
    assert captured["device_map"] == {"": "cuda:2"}


def test_unquantized_weights_load_straight_onto_the_device(tiny_model_dir, monkeypatch):
    captured = _capture_from_pretrained(monkeypatch)
    models.load_model(models.resolve_model_source(str(tiny_model_dir)), "float32", device="cuda:0")
    assert captured["device_map"] == {"": "cuda:0"}


def test_out_of_memory_while_loading_gives_the_callers_advice(tiny_model_dir, monkeypatch):
    _capture_from_pretrained(monkeypatch, torch.OutOfMemoryError("CUDA out of memory"))
    with pytest.raises(ResourceError, match="out of memory loading") as error:
        models.load_model(models.resolve_model_source(str(tiny_model_dir)), "float32", device="cuda:0",
                          oom_hint="merge in host RAM instead: --device cpu")
    assert "--device cpu" in error.value.hint


def test_export_merged_advises_cpu_not_float32_when_the_gpu_is_too_small(tmp_path, tiny_model_dir, monkeypatch):
    from tallrec_cli.export import merged as export
    from tests.export_helpers import make_train_run

    run = make_train_run(tmp_path / "run", str(tiny_model_dir))
    _capture_from_pretrained(monkeypatch, torch.OutOfMemoryError("CUDA out of memory"))
    with pytest.raises(ResourceError) as error:
        export.export_merged(run, tmp_path / "merged", dtype="bfloat16", device="cuda:0")
    assert "--device cpu" in error.value.hint and "float32" not in error.value.hint
    assert not (tmp_path / "merged").exists()


def test_export_command_merges_on_the_device_it_is_given(tmp_path, tiny_model_dir, monkeypatch):
    """Where the merge's default device is a GPU (which this CPU-only torch cannot load onto), --device cpu merges in
    host RAM: the real export runs on the CPU and writes a merged model; without --device it fails on cuda:0."""
    from typer.testing import CliRunner

    from tallrec_cli.cli.app import app
    from tallrec_cli.export import merged
    from tests.export_helpers import make_train_run

    run = make_train_run(tmp_path / "run", str(tiny_model_dir))
    monkeypatch.setattr(merged, "default_device", lambda: "cuda:0")  # what a GPU machine's default is
    export = ["export", str(run), "--merged", "--dtype", "float32", "-o"]
    result = CliRunner().invoke(app, [*export, str(tmp_path / "out"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["kind"] == "merged-export"
    assert (tmp_path / "out" / "model.safetensors").exists()
    assert CliRunner().invoke(app, [*export, str(tmp_path / "gpu")]).exit_code != 0
    assert not (tmp_path / "gpu").exists()


# --------------------------------------------------------------------------- 8, 13, 14. preflight on GPUs

def test_preflight_refuses_several_gpus_in_one_process(tmp_path, tiny_model_dir, monkeypatch):
    _fake_cuda(monkeypatch, count=2)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(train_config, "triton_needs_missing_compiler", lambda: False)
    config = tiny_config(tiny_model_dir, write_dataset(tmp_path / "data"), tmp_path / "run")
    with pytest.raises(ConfigError, match="2 GPUs are visible") as error:
        train_config.preflight(config)
    assert "CUDA_VISIBLE_DEVICES=0" in error.value.message and "accelerate launch" in error.value.message
    monkeypatch.setenv("WORLD_SIZE", "2")  # under torchrun / accelerate launch each rank has its own GPU
    train_config.preflight(config)


def test_preflight_warns_when_triton_will_lack_a_c_compiler(tmp_path, tiny_model_dir, monkeypatch, capsys):
    import shutil

    import transformers.utils

    _fake_cuda(monkeypatch)
    monkeypatch.setattr(transformers.utils, "is_triton_available", lambda: True)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.delenv("CC", raising=False)
    train_config.preflight(tiny_config(tiny_model_dir, write_dataset(tmp_path / "data"), tmp_path / "run"))
    assert "C compiler" in capsys.readouterr().err


def test_bfloat16_on_a_pre_ampere_gpu_is_a_config_error(tmp_path, tiny_model_dir, monkeypatch):
    _fake_cuda(monkeypatch, capability=(7, 5))
    monkeypatch.setattr(train_config, "triton_needs_missing_compiler", lambda: False)
    with pytest.raises(ConfigError, match="compute capability 8.0"):
        models.resolve_dtype("bfloat16")
    config = tiny_config(tiny_model_dir, write_dataset(tmp_path / "data"), tmp_path / "run", model__dtype="bfloat16")
    with pytest.raises(ConfigError, match="model.dtype"):
        train_config.preflight(config)
    assert models.resolve_dtype("auto") == torch.float16


def _literal_choices_checked() -> bool:
    import typer
    from typer.testing import CliRunner

    app = typer.Typer()

    @app.command()
    def pick(mode: Literal["a", "b"] = "a") -> None:
        pass

    return CliRunner().invoke(app, ["--mode", "c"]).exit_code == 2


def _bitsandbytes_floor_loads(floors: dict[str, str]) -> bool:
    from packaging.version import Version
    from transformers.utils.import_utils import BITSANDBYTES_MIN_VERSION

    return Version(floors["bitsandbytes"]) >= Version(BITSANDBYTES_MIN_VERSION)


def _has(module: str, name: str) -> bool:
    import importlib

    return hasattr(importlib.import_module(module), name)


def _imports_click() -> bool:
    import subprocess
    import sys

    code = "import sys, typer; print('click' in sys.modules)"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "True"


def _has_parameter(module: str, function: str, name: str) -> bool:
    import importlib
    import inspect

    return name in inspect.signature(getattr(importlib.import_module(module), function)).parameters


# The API each floor in pyproject.toml is there for, and a check of it on the installed version: `make test-floors`
# installs every dependency at its floor, so there each check is one of the floor itself. Floors that another
# dependency's floor sets are checked by test_no_floor_is_below_what_a_dependency_at_its_floor_requires.
FLOOR_APIS = {
    "torch": ("torch.OutOfMemoryError", lambda floors: hasattr(torch, "OutOfMemoryError")),
    "transformers": ("a resume from the last step's checkpoint takes no step more: Trainer._run_epoch",
                     lambda floors: hasattr(importlib.import_module("transformers").Trainer, "_run_epoch")),
    "trl": ("the fused LM head's Triton switch, trl.kernels.chunked_logprob._use_triton",
            lambda floors: _has("trl.kernels.chunked_logprob", "_use_triton")),
    "peft": ("get_peft_model importing under transformers 5", lambda floors: _has("peft", "get_peft_model")),
    "accelerate": ("FSDP2 of 4-bit models, accelerate.utils.fsdp_utils.fsdp2_prepare_model",
                   lambda floors: _has("accelerate.utils.fsdp_utils", "fsdp2_prepare_model")),
    "bitsandbytes": ("8-bit LoRA under fp16 without NaN on the CPU; transformers' BITSANDBYTES_MIN_VERSION, 0.46.1, "
                     "does not", _bitsandbytes_floor_loads),
    "scikit-learn": ("brier_score_loss(labels=...)", lambda floors: _has_parameter("sklearn.metrics", "brier_score_loss",
                                                                                 "labels")),
    "gguf": ("GGUFWriter.add_key_value's sub_type: a merged GGUF copies its base's typed metadata arrays",
             lambda floors: "sub_type" in inspect.signature(importlib.import_module("gguf").GGUFWriter.add_key_value)
             .parameters),
    "typer": ("its own click: no Click deprecation warnings at import; typing.Literal choices checked at parse time",
              lambda floors: _literal_choices_checked() and not _imports_click()),
}


def _floor_comment() -> str:
    """pyproject.toml's comment on the floors, as one line."""
    from tests.floors import PYPROJECT

    head = PYPROJECT.read_text(encoding="utf-8").split("dependencies = [")[0]
    return " ".join(line.lstrip("# ").strip() for line in head.splitlines() if line.startswith("#"))


# Floors pyproject.toml's comment says another dependency's floor sets: name -> that dependency.
SET_BY = {"datasets": "trl", "pyarrow": "trl", "pandas": "trl", "pyyaml": "trl", "safetensors": "transformers",
          "rich": "typer"}


def test_dependency_floors_name_the_api_they_are_for():
    import re

    from tests.floors import declared_floors

    floors, comment = declared_floors(), _floor_comment()
    for name, (api, holds) in FLOOR_APIS.items():
        assert f"{name} {floors[name]} ({api})" in comment, f"pyproject.toml does not say {name} {floors[name]} is for {api}"
        assert holds(floors), f"{name} {importlib.metadata.version(name)} lacks {api}"
    named = {}
    for name in floors:  # every "name version" the comment states, e.g. "trl 1.16's" or "pyarrow 21,"
        for version in re.findall(rf"\b{re.escape(name)} (\d+(?:\.\d+)*)(?=[ ,']|$)", comment):
            named.setdefault(name, set()).add(version)
    assert named == {name: {floors[name]} for name in named}, "the comment states another floor than pyproject.toml"
    assert set(named) == set(FLOOR_APIS) | set(SET_BY) | set(SET_BY.values())


def test_a_floor_set_by_a_dependency_is_that_dependencys_own_requirement():
    """Read from the package metadata of each setting dependency installed at its floor (trl in .venv, all of them
    under `make test-floors`): its requirement on the other package starts exactly at the floor declared."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import Version

    from tests.floors import declared_floors

    floors = declared_floors()
    checked = []
    for name, setter in SET_BY.items():
        if Version(importlib.metadata.version(setter)) != Version(floors[setter]):
            continue
        requirements = {canonicalize_name(req.name): req for req in map(Requirement, importlib.metadata.requires(setter))
                        if req.marker is None}
        lower = [Version(spec.version) for spec in requirements[canonicalize_name(name)].specifier
                 if spec.operator == ">="]
        assert lower == [Version(floors[name])], f"{setter} {floors[setter]} requires {requirements[name]}, " \
                                                 f"pyproject.toml's floor of {name} is {floors[name]}"
        checked.append(name)
    assert checked  # trl is installed at its floor in .venv too


def test_no_floor_is_below_what_a_dependency_at_its_floor_requires():
    """A floor pip cannot install beside another one (trl 1.16 needs datasets >= 4.7 and pyarrow >= 21): checked
    for each dependency installed at its floor (all of them under `make test-floors`)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import Version

    from tests.floors import declared_floors

    floors = {canonicalize_name(name): Version(floor) for name, floor in declared_floors().items()}
    at_floor = [name for name, floor in floors.items() if Version(importlib.metadata.version(name)) == floor]
    assert at_floor  # trl is installed at its floor in .venv too
    for name in at_floor:
        for requirement in map(Requirement, importlib.metadata.requires(name) or []):
            needed = canonicalize_name(requirement.name)
            if needed in floors and (requirement.marker is None or requirement.marker.evaluate({"extra": ""})):
                assert requirement.specifier.contains(floors[needed], prereleases=True), \
                    f"{name} {floors[name]} requires {requirement}, pyproject.toml's floor is {floors[needed]}"


# ------------------------------------------------------------------------ 9. models freed between runs

def test_training_frees_its_model_when_it_returns(tmp_path, tiny_model_dir, data_dir):
    refs = []

    class Keep(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            refs.append(weakref.ref(model.get_base_model()))  # the model whose forward trl and tallrec patch

    gc.collect()
    gc.disable()  # only an explicit collection inside run_training may free the cycles
    try:
        train.run_training(tiny_config(tiny_model_dir, data_dir, tmp_path / "run", training__max_steps=2),
                           callbacks=(Keep(),))
        alive = refs[0]() is not None
    finally:
        gc.enable()
    assert not alive


# -------------------------------------------------------------- 10. one early-stopping decision under DDP

def test_ranks_validate_a_share_each_and_decide_on_the_gathered_scores(tmp_path, tiny_model_dir, monkeypatch):
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tallrec_cli.train.callbacks import TrainingStatus, ValidationCallback, ValidationSchedule, ValidationSet

    prompts, labels = [f"p{i}" for i in range(6)], [0, 1, 0, 1, 0, 1]
    rank0_scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], dtype=np.float32)
    scored = []

    def rank1_scores(spec, model, tokenizer, shard):
        scored.append(list(shard))
        return types.SimpleNamespace(scores=np.full(len(shard), 0.5, dtype=np.float32))  # rank 1's own numbers

    def all_gather_object(parts, mine):  # rank 0 contributes its share, rank 1 its own
        parts[0], parts[1] = rank0_scores[0::2], mine

    monkeypatch.setattr(ScoringSpec, "score", rank1_scores)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda *a: 2)
    monkeypatch.setattr(dist, "get_rank", lambda *a: 1)
    monkeypatch.setattr(dist, "all_gather_object", all_gather_object)
    callback = ValidationCallback(TrainingStatus("val_auc"), tmp_path, AutoTokenizer.from_pretrained(tiny_model_dir),
                                  ValidationSet(prompts, labels), _spec(), ValidationSchedule(1), False)
    state = types.SimpleNamespace(global_step=1, max_steps=2, epoch=1.0)
    callback.on_step_end(types.SimpleNamespace(bf16=False, fp16=False), state, types.SimpleNamespace(),
                         model=AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    assert scored == [prompts[1::2]]
    gathered = np.array([0.1, 0.5, 0.3, 0.5, 0.5, 0.5])
    from tallrec_cli.core.metrics import safe_auc

    assert callback.status.rows[-1]["val_auc"] == pytest.approx(safe_auc(np.array(labels), gathered))


# ---------------------------------------------------------- 12. eval scores the base the adapter learned on

def test_eval_defaults_to_the_runs_quantization_and_records_it(tmp_path, tiny_64):
    """A QLoRA run is scored on the 4-bit base it learned on: a real bitsandbytes 4-bit load on the CPU."""
    from bitsandbytes.nn import Linear4bit

    from tallrec_cli.eval.score import model_description
    from tests.export_helpers import make_train_run

    run = make_train_run(tmp_path / "run", str(tiny_64), quantization="4bit", dtype="bfloat16")
    assert json.loads((run / "manifest.json").read_text())["quantization"] == "4bit"
    inference = models.load_for_inference(adapter=str(run), dtype="bfloat16", device="cpu")
    four_bit = [name for name, module in inference.model.named_modules() if isinstance(module, Linear4bit)]
    assert inference.quantization == "4bit" and len(four_bit) == 7 * 2  # q k v o gate up down, 2 layers
    assert any("lora" in name for name, _ in inference.model.named_parameters())  # not merged into 4-bit weights
    assert model_description(inference) | {"base_model": None} == {
        "base_model": None, "adapter": inference.adapter, "dtype": "bfloat16", "quantization": "4bit"}
    plain = models.load_for_inference(adapter=str(run), dtype="bfloat16", quantization="none", device="cpu")
    assert plain.quantization == "none"
    assert not any(isinstance(module, Linear4bit) for module in plain.model.modules())


# --------------------------------------------------------------------------------- 2, 15. GPU benchmarks

def _bench(name: str):
    import importlib

    return importlib.import_module(f"bench.{name}")


def test_bench_random_models_are_built_in_bf16_on_the_target_device(monkeypatch):
    from transformers import LlamaConfig

    from bench.common import random_model

    created = []
    real_empty = torch.empty

    def spy_empty(*args, **kwargs):
        tensor = real_empty(*args, **kwargs)
        created.append(tensor.dtype)
        return tensor

    monkeypatch.setattr(torch, "empty", spy_empty)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=4)
    model = random_model(config, "cpu")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert torch.float32 not in created  # never a full fp32 copy first (25.6 GiB for 7B)


def test_train_bench_gpu_run_times_training_only_on_a_24_gib_budget():
    bench = _bench("train_throughput")
    overrides = bench.gpu_overrides("/models/x", "/data/x", steps=3, output="/tmp/run")
    assert overrides["training"]["eval_at_start"] is False
    assert bench.EMULATED_GPU_GIB == 24


def test_export_bench_verifies_on_enough_prompts_for_its_auc_tolerance():
    from tallrec_cli.export.merged import AUC_TOLERANCE

    bench = _bench("export_bench")
    positives = negatives = bench.VERIFY_SAMPLES // 2
    assert 1 / (positives * negatives) < AUC_TOLERANCE["bfloat16"]  # one reordered pair stays inside it


# ---------------------------------------------------------------------------------- GPU acceptance list

def test_gpu_acceptance_list_covers_every_item():
    from acceptance.cuda_acceptance import ISSUE_15

    assert sorted(ISSUE_15) == list(range(1, 16)) and all(ISSUE_15.values())


def test_merge_check_allows_one_reordered_pair_on_few_prompts():
    from tallrec_cli.export.merged import compare_merge

    logits = [torch.zeros(3, 5)]
    labels = [1, 1, 1, 1, 0, 0, 0, 0]
    reference = np.array([0.9, 0.8, 0.7, 0.51, 0.5, 0.3, 0.2, 0.1])
    swapped = np.array([0.9, 0.8, 0.7, 0.5, 0.51, 0.3, 0.2, 0.1])  # a bf16 rounding swaps one near-tie
    assert compare_merge(logits, logits, reference, swapped, labels, "bfloat16", "built-in").ok
    worse = np.array([0.1, 0.2, 0.3, 0.5, 0.51, 0.7, 0.8, 0.9])
    assert not compare_merge(logits, logits, reference, worse, labels, "bfloat16", "built-in").ok


def test_merge_check_allows_near_ties_the_measured_logit_error_can_reorder():
    """Scores closer than the logit error the merge showed may swap (an untrained model's are all near 0.5);
    without that error the same reordering fails."""
    from tallrec_cli.export.merged import compare_merge

    labels = [1, 0] * 8
    reference = 0.5 + np.linspace(0, 1e-3, 16)
    reordered = reference[::-1].copy()
    exact, off = [torch.zeros(3, 5)], [torch.full((3, 5), 4e-3)]
    assert compare_merge(exact, off, reference, reordered, labels, "bfloat16", "run").ok
    assert not compare_merge(exact, exact, reference, reordered, labels, "bfloat16", "run").ok
