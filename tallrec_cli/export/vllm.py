"""Will vLLM serve this adapter? vLLM's own LoRA loader answers where vLLM is installed (a venv named by
TALLREC_VLLM_VENV, else ./.venv-vllm: vLLM pins its own torch and transformers, so it lives apart); elsewhere a
static reading of the same rules. Each rule an adapter breaks is named with the flag that fixes it."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tallrec_cli.core.errors import ConfigError

# vLLM 0.32's LoRA rules (vllm/lora/peft_helper.py, vllm/config/lora.py, vllm/lora/lora_model.py): --max-lora-rank
# takes only these values (default 16) and must cover r and every rank_pattern rank; rank_pattern, alpha_pattern
# and rsLoRA are applied as PEFT applies them.
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
VLLM_DEFAULT_MAX_LORA_RANK = 16
# PEFT module names vLLM's model classes accept LoRA on (their linear layers, q/k/v and gate/up loaded into the
# packed qkv_proj / gate_up_proj, and the embedding modules), by model_type.
_LLAMA_CLASS = frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                          "embed_tokens", "lm_head"})
VLLM_LORA_MODULES = {
    **{model_type: _LLAMA_CLASS for model_type in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2",
                                                   "granite")},
    "phi3": frozenset({"qkv_proj", "o_proj", "gate_up_proj", "down_proj", "embed_tokens", "lm_head"}),
}
# init_lora_weights values that only set the adapter's starting weights (the rest change the base's weights)
PLAIN_INITS = ("gaussian", "eva", "orthogonal", "mica", "lora_ga")
VENV_VARIABLE = "TALLREC_VLLM_VENV"
DEFAULT_VENV = ".venv-vllm"
PROBE = Path(__file__).with_name("vllm_probe.py")
PROBE_TIMEOUT_S = 900  # seconds a minute usually; a crowded machine takes far longer


@dataclass(frozen=True)
class VllmCheck:
    """Whether vLLM's LoRA support loads an adapter: ``checked_by`` is ``static`` or the vLLM that loaded it."""
    compatible: bool
    max_lora_rank: int | None  # the --max-lora-rank to serve with (None: no allowed value covers the rank)
    problems: tuple[str, ...]
    notes: tuple[str, ...]
    checked_by: str = "static"

    def as_dict(self) -> dict[str, Any]:
        return {"compatible": self.compatible, "max_lora_rank": self.max_lora_rank, "problems": list(self.problems),
                "notes": list(self.notes), "checked_by": self.checked_by}


def _lora_module(tensor_name: str) -> str | None:
    """``...layers.0.self_attn.q_proj.lora_A.weight`` -> ``q_proj``; None for a tensor that is no LoRA weight
    (vLLM's parse_fine_tuned_lora_name refuses those)."""
    match = re.search(r"\.([^.]+)\.(?:lora_[AB]\.weight|lora_embedding_[AB])$", tensor_name)
    return match.group(1) if match else None


def _feature_problems(config: dict[str, Any]) -> list[str]:
    """PEFT features vLLM refuses, each with what fixes it."""
    problems = []
    if config.get("peft_type", "LORA") != "LORA":
        problems.append(f"peft_type {config.get('peft_type')}: vLLM serves LoRA adapters only (train with tallrec's "
                        "LoRA)")
    if config.get("use_dora"):
        problems.append("DoRA (use_dora): vLLM has no DoRA; retrain with --set lora.use_dora=false")
    unsupported_saved = [name for name in config.get("modules_to_save") or () if name not in ("classifier", "score")]
    if unsupported_saved:
        problems.append(f"modules_to_save {unsupported_saved} (fully trained modules): vLLM loads them only for "
                        "classifier/score heads; retrain without them (e.g. an adapter from --set lora.init_adapter "
                        "that saves them)")
    if config.get("lora_bias") or config.get("bias", "none") != "none":
        problems.append("LoRA biases (lora_bias / bias != none): vLLM has none; retrain without them")
    init = config.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower() not in PLAIN_INITS:
        problems.append(f"init_lora_weights={init!r} changes the base's weights: convert the adapter with PEFT's "
                        "path_initial_model_for_weight_conversion (or serve the base with those weights and set "
                        "init_lora_weights to true)")
    for key, what in (("alora_invocation_tokens", "Activated LoRA (aLoRA)"), ("layer_replication", "layer_replication"),
                      ("use_bdlora", "block-diagonal LoRA (use_bdlora)"), ("use_qalora", "QALoRA (use_qalora)")):
        if config.get(key):
            problems.append(f"{what}: vLLM does not support it; retrain without it")
    return problems


def _rank(config: dict[str, Any]) -> tuple[int | None, list[str], list[str]]:
    """(--max-lora-rank to serve with, problems, notes): the smallest allowed value covering every rank."""
    rank = max([int(config.get("r", 8)), *map(int, (config.get("rank_pattern") or {}).values())])
    max_rank = next((choice for choice in VLLM_MAX_LORA_RANKS if choice >= rank), None)
    if max_rank is None:
        return None, [(f"LoRA rank {rank} exceeds vLLM's largest --max-lora-rank ({VLLM_MAX_LORA_RANKS[-1]}): "
                       f"retrain with --set lora.r={VLLM_MAX_LORA_RANKS[-1]} or lower")], []
    notes = []
    if rank > VLLM_DEFAULT_MAX_LORA_RANK:
        notes.append(f"LoRA rank {rank} is above vLLM's default max_lora_rank ({VLLM_DEFAULT_MAX_LORA_RANK}): serve "
                     f"with --max-lora-rank {max_rank}")
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        notes.append("per-module rank_pattern / alpha_pattern: vLLM applies them as PEFT does")
    if config.get("use_rslora"):
        notes.append("rsLoRA scaling (lora_alpha / sqrt(r)): vLLM reads use_rslora")
    return max_rank, [], notes


def check_vllm_compatibility(adapter_config: dict[str, Any], tensor_names: Iterable[str],
                             model_type: str | None = None) -> VllmCheck:
    """Would vLLM (``--enable-lora``) load this adapter on a base of ``model_type``? The static rules."""
    problems = _feature_problems(adapter_config)
    max_rank, rank_problems, notes = _rank(adapter_config)
    problems += rank_problems
    modules = {_lora_module(name) for name in tensor_names
               if not name.endswith((".base_layer.weight", ".score.weight", ".classifier.weight"))}
    if None in modules:
        problems.append("the adapter holds tensors that are no LoRA weights (e.g. trainable_token_indices "
                        "deltas); vLLM refuses them: retrain without them")
    modules.discard(None)
    supported = VLLM_LORA_MODULES.get(model_type or "")
    if supported is None:
        notes.append(f"model type {model_type!r}: which modules vLLM takes LoRA on was not checked statically")
    elif modules - supported:
        keep = sorted(modules & supported) or ["q_proj", "v_proj"]
        problems.append(f"target modules {', '.join(sorted(modules - supported))} have no LoRA support in vLLM's "
                        f"{model_type} model: retrain with --set lora.target_modules=[{','.join(keep)}]")
    return VllmCheck(not problems, max_rank, tuple(problems), tuple(notes))


def vllm_python(cwd: str | Path | None = None) -> Path | None:
    """The python of the venv vLLM is installed in: TALLREC_VLLM_VENV (empty: none, static checks only), else
    ./.venv-vllm when it exists."""
    named = os.environ.get(VENV_VARIABLE)
    if named == "":
        return None
    venv = Path(named) if named else Path(cwd or ".") / DEFAULT_VENV
    python = venv / "bin" / "python"
    if python.is_file():
        return python
    if named:
        raise ConfigError(f"{VENV_VARIABLE}={named} holds no bin/python",
                          f"point {VENV_VARIABLE} at a venv with vLLM (make interop builds .venv-vllm), or set it "
                          "empty for the static check only")
    return None


def probe_vllm(python: Path, adapter_dir: str | Path, base_dir: str | Path, max_lora_rank: int) -> dict[str, Any]:
    """vLLM's own loader on the adapter, in vLLM's venv (`vllm_probe`): {"vllm": version, "problems": [...]}."""
    # -I: isolated, so neither PYTHONPATH nor the probe's own folder (which holds this vllm.py) shadows vllm
    command = [str(python), "-I", str(PROBE), str(adapter_dir), str(base_dir), str(max_lora_rank)]
    try:
        completed = subprocess.run(command, check=False, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"vllm": None, "problems": [f"vLLM's load check did not finish in {PROBE_TIMEOUT_S} s"]}
    # vLLM logs to stdout as well: the answer is the probe's one JSON line
    answers = [line for line in completed.stdout.splitlines() if line.startswith('{"vllm"')]
    if completed.returncode != 0 or not answers:
        return {"vllm": None, "problems": ["vLLM's load check failed to run: "
                                           + (completed.stderr.strip().splitlines() or ["no output"])[-1]]}
    return json.loads(answers[-1])


def check_vllm(adapter_dir: str | Path, adapter_config: dict[str, Any], tensor_names: Iterable[str],
               model_type: str | None, base_dir: str | Path) -> VllmCheck:
    """The static check, then, where vLLM is installed, vLLM's own loader, which has the last word; a refusal
    keeps the static rules' fixes beside vLLM's own message."""
    static = check_vllm_compatibility(adapter_config, tensor_names, model_type)
    python = vllm_python()
    if python is None or static.max_lora_rank is None:
        return static
    found = probe_vllm(python, adapter_dir, base_dir, static.max_lora_rank)
    if found["vllm"] is None:  # the probe itself broke: say so beside the static verdict
        return VllmCheck(static.compatible, static.max_lora_rank, static.problems,
                         static.notes + tuple(found["problems"]))
    checked_by = f"vLLM {found['vllm']}"
    if found["problems"]:
        return VllmCheck(False, static.max_lora_rank,
                         static.problems + tuple(f"{checked_by} refused it: {problem}" for problem in found["problems"]),
                         static.notes, checked_by)
    return VllmCheck(True, static.max_lora_rank, (), static.notes + tuple(
        f"the static rules flagged ({problem}), but {checked_by} loaded it" for problem in static.problems),
        checked_by)
