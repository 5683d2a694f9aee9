"""Export a finished train run for serving without tallrec: a standalone PEFT adapter or a merged model.

Both exports are built in a staging folder (``core.files.staged_dir``) and only moved into place once complete.
Each carries a Hugging Face model card and a manifest with the sha256 of every file. The adapter is
checked statically against vLLM's LoRA loader rules; the merged model is reloaded from disk and its
logits and P(yes) AUC compared with base + adapter before the export is accepted.
"""

from __future__ import annotations

import gc
import json
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from data_builders import load_split
from tallrec_cli.core.errors import ArtifactError, ConfigError, ModelError, ResourceError, TallrecError
from tallrec_cli.core.files import (
    MANIFEST_NAME,
    check_output_folder,
    file_hashes,
    refuse_overlap,
    staged_dir,
    write_text_atomic,
)
from tallrec_cli.core.integrity import ADAPTER_CONFIG, ADAPTER_WEIGHTS, check_adapter_intact
from tallrec_cli.core.manifests import (
    AdapterExportManifest,
    MergedExportManifest,
    SourceRun,
    TrainedAdapter,
    TrainRunManifest,
)
from tallrec_cli.core.manifests import load as load_manifest
from tallrec_cli.core.metrics import safe_auc
from tallrec_cli.eval.calibration import card_section
from tallrec_cli.model.loading import (
    EMBEDDED_MODELS,
    ModelSource,
    check_adapter_matches_base,
    default_device,
    load_model,
    load_tokenizer,
    model_identity,
    resolve_model_source,
)
from tallrec_cli.model.prompts import LabelTokens, load_template
from tallrec_cli.model.scoring import score_prompts

MERGE_DTYPES = ("auto", "bfloat16", "float16", "float32")
# Largest |merged - (base + adapter)| logit difference accepted, relative to the largest reference logit:
# fp32 differs only by summation order; a 16-bit merge rounds W + BA once per weight.
LOGIT_TOLERANCE = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 5e-2}
AUC_TOLERANCE = {"float32": 1e-3, "float16": 0.02, "bfloat16": 0.02}
LOGIT_PROMPTS = 4

# vLLM's LoRA loader (vllm/lora/peft_helper.py and the LLaMA-class model definitions, vLLM 0.6-0.11):
# q/k/v and gate/up are packed into qkv_proj / gate_up_proj but loaded from the usual PEFT names;
# --max-lora-rank only accepts these values; DoRA, LoRA biases, modules_to_save and per-module
# rank/alpha patterns are rejected or silently mis-scaled; rsLoRA scaling (alpha / sqrt(r)) is honoured.
VLLM_MAX_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
VLLM_LORA_MODULES = frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"})
VLLM_EMBEDDING_MODULES = frozenset({"embed_tokens", "lm_head"})
VLLM_LLAMA_CLASS = frozenset({"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "granite"})

# Used to verify a merge when the run's validation data is gone (labels only make AUC computable).
SAMPLE_RECORDS = [
    {"instruction": "Given the user's preference and unpreference, identify whether the user will like the "
                    'target movie by answering "Yes." or "No.".',
     "input": f'User Preference: {liked}\nUser Unpreference: {disliked}\n'
              f'Whether the user will like the target movie "{target}"?',
     "label": label}
    for liked, disliked, target, label in [
        ('"Toy Story (1995)", "Star Wars (1977)"', '"Heat (1995)"', "Fargo (1996)", 1),
        ('"Heat (1995)"', '"Toy Story (1995)"', "Babe (1995)", 0),
        ('"Fargo (1996)", "Heat (1995)"', "", "Casino (1995)", 1),
        ('"Babe (1995)"', '"Star Wars (1977)", "Fargo (1996)"', "Twister (1996)", 0),
        ('"Star Wars (1977)"', '"Babe (1995)"', "Return of the Jedi (1983)", 1),
        ("", '"Casino (1995)", "Heat (1995)"', "Copycat (1995)", 0),
        ('"Toy Story (1995)"', '"Twister (1996)"', "Aladdin (1992)", 1),
        ('"Copycat (1995)"', '"Aladdin (1992)"', "Pocahontas (1995)", 0),
    ]
]


@dataclass(frozen=True)
class TrainRun:
    """A finished train run folder, with its adapter checked to be intact."""
    path: Path
    manifest: TrainRunManifest
    adapter_dir: Path
    adapter_config: dict[str, Any]
    tensor_names: tuple[str, ...]

    @property
    def has_tokenizer(self) -> bool:
        return (self.adapter_dir / "tokenizer_config.json").exists()


def load_train_run(run_dir: str | Path) -> TrainRun:
    """Open a run folder for export; refuse an unfinished run or a damaged adapter."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ArtifactError(f"run folder {run_dir} does not exist", "pass the folder `tallrec train` wrote")
    if not (run_dir / MANIFEST_NAME).exists():
        raise ArtifactError(
            f"{run_dir} has no {MANIFEST_NAME}: the training run never finished (the manifest is written last), "
            "so there is no final adapter to export",
            "let `tallrec train` finish, or resume it with --resume",
        )
    manifest = load_manifest(run_dir, TrainRunManifest)
    adapter_dir = run_dir / manifest.adapter_dir
    adapter_config, names = check_adapter_intact(run_dir, {}, adapter_dir)  # a run's manifest records no hashes
    return TrainRun(run_dir, manifest, adapter_dir, adapter_config, tuple(names))


def resolve_base(run: TrainRun, base_model: str | None = None) -> ModelSource:
    """The base model to export against: the run's own (checked unchanged since training) or ``base_model``
    (checked to have the architecture and size the adapter was trained on)."""
    from transformers import AutoConfig


    recorded = run.manifest.base_model
    name = base_model or recorded.get("name")
    if not name:
        raise ArtifactError(f"{run.path}/{MANIFEST_NAME} names no base model", "pass --base-model")
    try:
        source = resolve_model_source(name)
    except ModelError as exc:
        raise ModelError(f"the run's base model is not available here: {exc.message}",
                         "pass --base-model with a copy of the model the run was trained on") from None
    if base_model is None:
        current = model_identity(source)
        changed = sorted(key for key in recorded if key.endswith("_sha256") and key in current
                         and current[key] != recorded[key])
        if changed:
            raise ModelError(f"base model {name} changed since the run was trained ({', '.join(changed)} differ)",
                             "pass --base-model with the exact model the run was trained on")
    try:
        config = AutoConfig.from_pretrained(source.path, gguf_file=source.gguf_file)
    except OSError as exc:
        raise ModelError(f"cannot read the config of {name}: {str(exc).splitlines()[0]}", "check --base-model") from None
    check_adapter_matches_base(run.path, config)
    return source


def serving_name(source: ModelSource) -> str:
    """What other tools should load as the base: the hub id when there is one, else the local path."""
    if source.kind == "embedded":
        return EMBEDDED_MODELS[source.name][2]
    if source.kind == "hub":
        return source.name
    if source.kind == "gguf":
        return str(Path(source.path) / source.gguf_file)
    return source.path


@dataclass(frozen=True)
class VllmCheck:
    """Static check of a PEFT LoRA adapter against what vLLM's LoRA loader accepts."""
    compatible: bool
    max_lora_rank: int | None
    problems: tuple[str, ...]
    notes: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"compatible": self.compatible, "max_lora_rank": self.max_lora_rank,
                "problems": list(self.problems), "notes": list(self.notes)}


def _lora_module(tensor_name: str) -> str | None:
    """``...layers.0.self_attn.q_proj.lora_A.weight`` -> ``q_proj``; None for non-LoRA tensors."""
    match = re.search(r"\.([^.]+)\.lora_(?:embedding_)?[AB](?:\.|$)", tensor_name)
    return match.group(1) if match else None


def check_vllm_compatibility(adapter_config: dict[str, Any], tensor_names: Iterable[str],
                             model_type: str | None = None) -> VllmCheck:
    """Would ``vllm serve BASE --enable-lora --lora-modules NAME=PATH`` load this adapter?"""
    problems, notes = [], []
    if adapter_config.get("peft_type", "LORA") != "LORA":
        problems.append(f"peft_type {adapter_config.get('peft_type')}: vLLM serves LoRA adapters only")
    if adapter_config.get("use_dora"):
        problems.append("DoRA (use_dora) is not supported by vLLM")
    if adapter_config.get("bias", "none") != "none" or adapter_config.get("lora_bias"):
        problems.append("LoRA biases (bias != none / lora_bias) are not supported by vLLM")
    if adapter_config.get("modules_to_save"):
        problems.append(f"modules_to_save {adapter_config['modules_to_save']} (fully trained modules) "
                        "are not loaded by vLLM")
    for key in ("rank_pattern", "alpha_pattern"):
        if adapter_config.get(key):
            problems.append(f"{key} (per-module rank/alpha) is not applied by vLLM, which scales every "
                            "module with one lora_alpha / r")
    for key in ("target_parameters", "trainable_token_indices", "layer_replication"):
        if adapter_config.get(key):
            problems.append(f"{key} is not supported by vLLM")
    modules = {_lora_module(name) for name in tensor_names}
    if None in modules:
        problems.append("the adapter holds non-LoRA tensors (full module weights), which vLLM does not load")
    modules.discard(None)
    unsupported = sorted(modules - VLLM_LORA_MODULES - VLLM_EMBEDDING_MODULES)
    if unsupported:
        problems.append(f"target modules {', '.join(unsupported)} are outside vLLM's LoRA modules "
                        f"({', '.join(sorted(VLLM_LORA_MODULES))})")
    if modules & VLLM_EMBEDDING_MODULES:
        notes.append(f"LoRA on {', '.join(sorted(modules & VLLM_EMBEDDING_MODULES))} needs a vLLM version with "
                     "embedding/lm_head LoRA support (older ones also need --lora-extra-vocab-size)")
    rank = max([int(adapter_config.get("r", 8)), *map(int, (adapter_config.get("rank_pattern") or {}).values())])
    max_rank = next((choice for choice in VLLM_MAX_LORA_RANKS if choice >= rank), None)
    if max_rank is None:
        problems.append(f"LoRA rank {rank} exceeds vLLM's largest --max-lora-rank ({VLLM_MAX_LORA_RANKS[-1]})")
    if adapter_config.get("use_rslora"):
        notes.append("rsLoRA scaling (lora_alpha / sqrt(r)) is read from use_rslora by vLLM")
    if model_type and model_type not in VLLM_LLAMA_CLASS:
        notes.append(f"model type {model_type!r} was not checked: see vLLM's supported-models list for LoRA support")
    return VllmCheck(not problems, max_rank, tuple(problems), tuple(notes))


def _tokenizer_differs(run: TrainRun, source: ModelSource) -> bool:
    """True when the run's tokenizer is not the base's (added tokens, other vocabulary or chat template)."""
    from transformers import AutoTokenizer

    if not run.has_tokenizer:
        return False
    mine = AutoTokenizer.from_pretrained(run.adapter_dir)
    base = AutoTokenizer.from_pretrained(source.path, gguf_file=source.gguf_file)

    def signature(tokenizer):
        added = {index: str(token) for index, token in tokenizer.added_tokens_decoder.items()}
        return tokenizer.get_vocab(), added, getattr(tokenizer, "chat_template", None)

    return signature(mine) != signature(base)


def _is_hub_id(name: str) -> bool:
    return name.count("/") == 1 and not name.startswith((".", "/", "~")) and not Path(name).exists()


def _front_matter(meta: dict[str, Any]) -> str:
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=1000) + "---\n"


def _model_index(name: str, manifest: TrainedAdapter) -> list[dict[str, Any]]:
    """HF model-index entry with the validation AUC and the shots/seed it was measured at."""
    auc = manifest.val_auc
    if auc is None:
        return []
    shots, seed = manifest.data.shots, manifest.data.sample_seed
    dataset = manifest.data.dataset_name
    return [{"name": name, "results": [{
        "task": {"type": "text-classification", "name": "Recommendation (will the user like the item: Yes/No)"},
        "dataset": {"type": dataset, "name": dataset, "split": "valid"},
        "metrics": [{"type": "roc_auc", "value": round(float(auc), 4),
                     "name": f"Validation AUC ({shots if shots is not None else 'all'}-shot, seed {seed})",
                     "args": {"shots": shots, "seed": seed, "score": "P(yes) from the label-token logits"}}],
    }]}]


def _prompt_section(manifest: TrainedAdapter) -> str:

    template_name = manifest.prompt.template
    labels = manifest.labels
    try:
        template = load_template(template_name)
        example = (f"```text\n{template.with_input}{template.response_prefix}\n```\n\n"
                   if template.kind == "text" else "The body above is wrapped in the base model's chat template.\n\n")
    except ConfigError:
        example = ""
    return (
        f"## Prompt and scoring\n\nTemplate `{template_name}` (prompt up to the answer):\n\n{example}"
        f"P(yes) = softmax over the logits of the label tokens `{labels.get('positive_word')}` "
        f"(id {labels.get('positive_id')}) and `{labels.get('negative_word')}` (id {labels.get('negative_id')}) "
        "at the position right after the prompt; training answers are `Yes.` / `No.`.\n"
    )


def _results_section(manifest: TrainedAdapter) -> str:
    data = manifest.data
    rows = [
        ("validation AUC", manifest.val_auc), ("best step", manifest.best.step),
        ("dataset", data.dataset_name), ("shots", data.shots),
        ("sample seed", data.sample_seed), ("train records", data.train_records),
        ("validation records", data.valid_records),
        ("dataset manifest sha256", data.dataset_manifest_sha256),
        ("LoRA", ", ".join(f"{key}={value}" for key, value in manifest.lora.items()) or None),
        ("training quantization", manifest.quantization), ("training dtype", manifest.dtype),
    ]
    table = "\n".join(f"| {key} | {value} |" for key, value in rows if value is not None)
    return f"## Training and results\n\n| | |\n|---|---|\n{table}\n"


def _vllm_section(check: VllmCheck, base: str, name: str, path: str) -> str:
    if check.compatible:
        verdict = ("passes a static check against vLLM's LoRA loader rules (vLLM 0.6-0.11: LoRA on "
                   "q/k/v/o/gate/up/down projections, rank within --max-lora-rank choices, no DoRA, no bias, "
                   "no modules_to_save); vLLM itself was not run")
    else:
        verdict = "is **not** loadable by vLLM's LoRA support:\n\n" + "\n".join(f"- {p}" for p in check.problems)
    notes = "".join(f"\n- {note}" for note in check.notes)
    command = (f"\n```bash\nvllm serve {base} --enable-lora --lora-modules {name}={path} "
               f"--max-lora-rank {check.max_lora_rank}\n```\n" if check.compatible else "")
    return f"## Serve with vLLM\n\nThis adapter {verdict}.{notes}\n{command}"


def adapter_card(name: str, base: str, manifest: TrainedAdapter, check: VllmCheck, embedded: bool,
                 path: str, tokenizer_included: bool) -> str:
    """README.md for an adapter export: HF front matter, prompt/scoring, results, PEFT and vLLM usage."""
    meta = {"base_model": base, "library_name": "peft", "pipeline_tag": "text-generation",
            "tags": ["tallrec", "lora", "peft", "recommendation"]
            + ([f"base_model:adapter:{base}"] if _is_hub_id(base) else []),
            "datasets": [manifest.data.dataset_name], "metrics": ["roc_auc"]}
    index = _model_index(name, manifest)
    if index:
        meta["model-index"] = index
    embedded_note = ("\n> The adapter was trained on the embedded SmolLM2 (its Q4_1 GGUF dequantised to float), "
                     "not the hub's original weights; on those, scores shift slightly.\n" if embedded else "")
    return (
        _front_matter(meta) + f"\n# {name}\n\nA LoRA adapter for `{base}` that answers whether a user will like an "
        f"item (TALLRec-style), exported by tallrec.\n{embedded_note}\n" + _prompt_section(manifest) + "\n"
        + _results_section(manifest) + card_section(manifest.as_dict()) + "\n## Use with PEFT\n\n```python\n"
        "from peft import AutoPeftModelForCausalLM\nfrom transformers import AutoTokenizer\n\n"
        f'model = AutoPeftModelForCausalLM.from_pretrained("{path}")  # loads {base}, then the adapter\n'
        f'tokenizer = AutoTokenizer.from_pretrained("{path if tokenizer_included else base}")\n```\n\n'
        + _vllm_section(check, base, name, path) + "\n## Integrity\n\n`manifest.json` records the sha256 of every "
        "file; `tallrec adapters verify` re-checks them.\n"
    )


@dataclass(frozen=True)
class AdapterExport:
    path: Path
    base: str
    vllm: VllmCheck
    tokenizer_included: bool
    manifest: AdapterExportManifest


def _check_output(output: Path, run_dir: str | Path, base_model: str | None, overwrite: bool) -> None:
    """Before any work: the output must not be (or hold, or sit in) the run or the base model, and must be free."""
    refuse_overlap(output, [run_dir, base_model if base_model and Path(base_model).exists() else None])
    if output.exists() and (not output.is_dir() or any(output.iterdir())) and not overwrite:
        raise ArtifactError(f"{output} already exists", "pass --overwrite to replace it, or choose another --output")
    check_output_folder(output, overwrite)


def _run_payload(run: TrainRun) -> dict[str, Any]:
    """What an export carries over from its run manifest (recognising the base, prompting, provenance)."""
    return {**run.manifest.carried(), "source_run": SourceRun(str(run.path.resolve()), run.manifest.created)}


def export_adapter(run_dir: str | Path, output: str | Path, name: str | None = None, overwrite: bool = False,
                   base_model: str | None = None) -> AdapterExport:
    """Write the run's adapter as a standalone PEFT folder: adapter files, tokenizer when it differs from
    the base, README.md card and an ``adapter-export`` manifest hashing every file."""
    output = Path(output)
    _check_output(output, run_dir, base_model, overwrite)
    run = load_train_run(run_dir)
    source = resolve_base(run, base_model)
    base = serving_name(source)
    name = name or output.name
    model_type = (run.manifest.base_model_config or {}).get("model_type")
    vllm = check_vllm_compatibility(run.adapter_config, run.tensor_names, model_type)
    include_tokenizer = _tokenizer_differs(run, source)
    with staged_dir(output, overwrite=overwrite) as staging:
        config = dict(run.adapter_config, base_model_name_or_path=base)
        write_text_atomic(staging / ADAPTER_CONFIG, json.dumps(config, indent=2) + "\n")
        shutil.copyfile(run.adapter_dir / ADAPTER_WEIGHTS, staging / ADAPTER_WEIGHTS)
        if include_tokenizer:
            from transformers import AutoTokenizer

            AutoTokenizer.from_pretrained(run.adapter_dir).save_pretrained(staging)
        card = adapter_card(name, base, run.manifest, vllm, source.kind == "embedded", str(output.resolve()),
                            include_tokenizer)
        write_text_atomic(staging / "README.md", card)
        manifest = AdapterExportManifest.new(
            **_run_payload(run), name=name, base_model_name_or_path=base, tokenizer_included=include_tokenizer,
            vllm=vllm.as_dict(), files=file_hashes(staging)).write(staging)
    return AdapterExport(output, base, vllm, include_tokenizer, manifest)


def estimate_merged_bytes(source: ModelSource, dtype: str) -> int:
    """Size of the merged weights: parameter count (from the config, on the meta device) x bytes per value."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(source.path, gguf_file=source.gguf_file)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    params = sum(parameter.numel() for parameter in model.parameters())
    return params * getattr(torch, dtype).itemsize


def ensure_disk_space(output: Path, needed: int) -> None:
    """Refuse before writing when the output's file system has less free space than ``needed`` + 5 %."""
    probe = output.resolve()
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    required = int(needed * 1.05) + (64 << 20)  # tokenizer, card and file-system slack
    if free < required:
        raise ResourceError(f"not enough disk space for the merged model at {output}: needs about "
                            f"{required / 1e9:.2f} GB, {free / 1e9:.2f} GB free",
                            "free space, choose another --output, or merge at --dtype bfloat16")


def merge_dtype(requested: str, source: ModelSource) -> str:
    """``auto`` keeps the base checkpoint's own 16/32-bit dtype (bf16 when it records none)."""
    from transformers import AutoConfig

    if requested not in MERGE_DTYPES:
        raise ConfigError(f"--dtype {requested!r} is not one of {', '.join(MERGE_DTYPES)}")
    if requested != "auto":
        return requested
    config = AutoConfig.from_pretrained(source.path, gguf_file=source.gguf_file)
    stored = str(getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "").replace("torch.", "")
    return stored if stored in LOGIT_TOLERANCE else "bfloat16"


def verification_records(run: TrainRun, limit: int) -> tuple[list[dict], str]:
    """A seeded sample of the run's validation records, or built-in sample prompts when those are gone."""
    import numpy as np


    valid = run.manifest.data.valid
    if valid and Path(valid).exists():
        try:
            records = [record for record in load_split(valid, "valid") if record.get("label") in (0, 1)]
        except TallrecError:  # moved or rewritten since training: the built-in prompts still test the merge
            records = []
        if records:
            order = np.random.default_rng(0).permutation(len(records))[:limit]
            return [records[i] for i in order], str(valid)
    return SAMPLE_RECORDS[:max(limit, 2)], "built-in sample prompts"


@dataclass(frozen=True)
class MergeVerification:
    """Merged model (reloaded from disk) vs base + adapter on the same prompts."""
    prompts_source: str
    logit_prompts: int
    max_abs_logit_diff: float
    logit_bound: float
    auc_samples: int
    auc_adapter: float | None
    auc_merged: float | None
    auc_tolerance: float
    max_abs_p_yes_diff: float

    @property
    def ok(self) -> bool:
        auc_same = (self.auc_adapter is None) == (self.auc_merged is None) and (
            self.auc_adapter is None or abs(self.auc_adapter - self.auc_merged) <= self.auc_tolerance)
        return self.max_abs_logit_diff <= self.logit_bound and auc_same

    def as_dict(self) -> dict[str, Any]:
        return {"prompts_source": self.prompts_source, "logit_prompts": self.logit_prompts,
                "max_abs_logit_diff": self.max_abs_logit_diff, "logit_bound": self.logit_bound,
                "auc_samples": self.auc_samples, "auc_adapter": self.auc_adapter, "auc_merged": self.auc_merged,
                "auc_tolerance": self.auc_tolerance, "max_abs_p_yes_diff": self.max_abs_p_yes_diff, "ok": self.ok}


def _full_logits(model, tokenizer, prompts: list[str]) -> list:
    """Logits at every position, one unpadded prompt at a time (padding would blur the comparison)."""
    import torch

    device = next(model.parameters()).device
    with torch.inference_mode():
        return [model(**tokenizer(prompt, return_tensors="pt").to(device)).logits[0].float().cpu()
                for prompt in prompts]


def compare_merge(reference_logits: list, merged_logits: list, reference_scores, merged_scores,
                  labels: list[int], dtype: str, prompts_source: str) -> MergeVerification:
    """Merged vs base + adapter: logit difference bounded relative to the logit scale, AUC within tolerance."""

    scale = max(1.0, max(float(logits.abs().max()) for logits in reference_logits))
    return MergeVerification(
        prompts_source=prompts_source, logit_prompts=len(reference_logits),
        max_abs_logit_diff=max(float((a - b).abs().max()) for a, b in zip(reference_logits, merged_logits)),
        logit_bound=LOGIT_TOLERANCE[dtype] * scale, auc_samples=len(labels),
        auc_adapter=safe_auc(labels, reference_scores), auc_merged=safe_auc(labels, merged_scores),
        auc_tolerance=max(AUC_TOLERANCE[dtype], _one_pair(labels)),
        max_abs_p_yes_diff=float(abs(reference_scores - merged_scores).max()),
    )


def _one_pair(labels: list[int]) -> float:
    """What one reordered positive/negative pair moves AUC by: a 16-bit merge may swap a near-tie, and on
    the 8 built-in prompts (16 pairs) that alone is 0.0625; the logit bound is the strict check there."""
    positives = sum(1 for label in labels if label == 1)
    return 1.0 / max(1, positives * (len(labels) - positives))


@dataclass(frozen=True)
class MergedExport:
    path: Path
    dtype: str
    quantized_training: str | None
    shards: int
    size_bytes: int
    verification: MergeVerification
    manifest: MergedExportManifest


def merged_card(name: str, base: str, manifest: TrainedAdapter, dtype: str, quantized: str | None,
                verification: MergeVerification) -> str:
    """README.md for a merged export: loads with plain transformers, no adapter needed."""
    meta = {"base_model": base, "library_name": "transformers", "pipeline_tag": "text-generation",
            "tags": ["tallrec", "lora", "merged", "recommendation"],
            "datasets": [manifest.data.dataset_name], "metrics": ["roc_auc"]}
    index = _model_index(name, manifest)
    if index:
        meta["model-index"] = index
    quant_note = (f"\n> The adapter was trained on a {quantized} (bitsandbytes) base. It was merged into the base "
                  f"reloaded in {dtype}, never into quantized weights, so this model's scores differ slightly "
                  "from the quantized base + adapter used in training.\n" if quantized else "")
    check = verification
    return (
        _front_matter(meta) + f"\n# {name}\n\n`{base}` with a tallrec LoRA adapter merged in ({dtype}). "
        f"Load it with `AutoModelForCausalLM.from_pretrained` or serve it with `vllm serve PATH`.\n{quant_note}\n"
        + _prompt_section(manifest) + "\n" + _results_section(manifest) + card_section(manifest.as_dict())
        + "\n## Merge verification\n\n"
        f"Reloaded from disk and compared with base + adapter on {check.logit_prompts} prompts "
        f"({check.prompts_source}): max |logit difference| {check.max_abs_logit_diff:.3g} "
        f"(bound {check.logit_bound:.3g}); P(yes) AUC on {check.auc_samples} samples "
        f"{check.auc_adapter} (base + adapter) vs {check.auc_merged} (merged), "
        f"max |P(yes) difference| {check.max_abs_p_yes_diff:.3g}.\n"
    )


def _parse_shard_size(max_shard_size: str) -> int:
    from transformers.utils.hub import convert_file_size_to_int

    try:
        return convert_file_size_to_int(max_shard_size)
    except (ValueError, TypeError):
        raise ConfigError(f"--max-shard-size {max_shard_size!r} is not a size", "write it like 2GB or 500MB") from None


def export_merged(run_dir: str | Path, output: str | Path, dtype: str = "auto", max_shard_size: str = "2GB",
                  overwrite: bool = False, base_model: str | None = None, verify_samples: int = 32,
                  device: str | None = None, name: str | None = None) -> MergedExport:
    """Merge the run's adapter into its base (16/32-bit, never quantized weights) and write a sharded
    safetensors model + tokenizer + card + ``merged-export`` manifest, verified against base + adapter."""
    from peft import PeftModel


    output = Path(output)
    _parse_shard_size(max_shard_size)
    _check_output(output, run_dir, base_model, overwrite)
    run = load_train_run(run_dir)
    source = resolve_base(run, base_model)
    dtype = merge_dtype(dtype, source)
    merged_bytes = estimate_merged_bytes(source, dtype)
    ensure_disk_space(output, merged_bytes)
    device = device or default_device()
    # Weights load straight onto the device, so a GPU too small fails inside load_model with this advice.
    oom_hint = (f"merge in host RAM instead: --device cpu (about {merged_bytes / 1e9:.1f} GB of RAM at {dtype})"
                if device != "cpu" else "free host RAM or merge on a machine with more memory")
    quantization = run.manifest.quantization
    quantized = None if quantization == "none" else quantization

    tokenizer_source = ModelSource("local", str(run.adapter_dir), str(run.adapter_dir)) if run.has_tokenizer else source
    tokenizer = load_tokenizer(tokenizer_source)
    template = load_template(run.manifest.prompt.template)
    labels = LabelTokens(**run.manifest.labels)
    records, prompts_source = verification_records(run, max(verify_samples, LOGIT_PROMPTS))
    prompts = [template.render(record, tokenizer) for record in records]
    truth = [int(record["label"]) for record in records]

    with staged_dir(output, overwrite=overwrite) as staging:
        # Base reloaded unquantized at the merge dtype: merging into 4/8-bit weights would re-quantize the update.
        model = PeftModel.from_pretrained(load_model(source, dtype, "none", device=device, oom_hint=oom_hint),
                                          str(run.adapter_dir))
        model.eval()
        reference_logits = _full_logits(model, tokenizer, prompts[:LOGIT_PROMPTS])
        reference_scores = score_prompts(model, tokenizer, prompts, labels)
        # No safe_merge: adapter tensors were checked finite on load, and a NaN anywhere fails the logit check.
        merged = model.merge_and_unload()
        merged.save_pretrained(staging, safe_serialization=True, max_shard_size=max_shard_size)
        if not (staging / "generation_config.json").exists():
            merged.generation_config.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        del model, merged
        gc.collect()

        reloaded = load_model(ModelSource("local", str(staging), str(staging)), dtype, "none", device=device,
                              oom_hint=oom_hint)
        merged_logits = _full_logits(reloaded, tokenizer, prompts[:LOGIT_PROMPTS])
        merged_scores = score_prompts(reloaded, tokenizer, prompts, labels)
        del reloaded
        gc.collect()
        verification = compare_merge(reference_logits, merged_logits, reference_scores, merged_scores, truth, dtype,
                                     prompts_source)
        if not verification.ok:
            raise ArtifactError(
                f"the merged model does not reproduce base + adapter: max |logit diff| "
                f"{verification.max_abs_logit_diff:.3g} (bound {verification.logit_bound:.3g}), AUC "
                f"{verification.auc_adapter} vs {verification.auc_merged}; nothing was written",
                "try --dtype float32 (with --device cpu where the GPU cannot hold fp32 weights); if it persists, "
                "report it with TALLREC_DEBUG=1",
            )
        base = serving_name(source)
        name = name or output.name
        write_text_atomic(staging / "README.md", merged_card(name, base, run.manifest, dtype, quantized, verification))
        weights = sorted(staging.glob("*.safetensors"))
        manifest = MergedExportManifest.new(
            **_run_payload(run), name=name, base_model_name_or_path=base,
            merge={"dtype": dtype, "training_quantization": quantized or "none",
                   "merged_into": f"unquantized base reloaded in {dtype}", "max_shard_size": max_shard_size},
            verification=verification.as_dict(), files=file_hashes(staging)).write(staging)
        size = sum(path.stat().st_size for path in weights)
    return MergedExport(output, dtype, quantized, len(weights), size, verification, manifest)
