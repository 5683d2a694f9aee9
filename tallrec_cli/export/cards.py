"""Model cards (README.md with Hugging Face front matter) for exports: prompt and scoring, training results,
calibration, and how to load the export in each consumer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tallrec_cli.core.errors import ConfigError
from tallrec_cli.core.manifests import (
    TrainedAdapter,
)
from tallrec_cli.eval.calibration import card_section
from tallrec_cli.export.vllm import VllmCheck
from tallrec_cli.model.prompts import load_template


def is_hub_id(name: str) -> bool:
    return name.count("/") == 1 and not name.startswith((".", "/", "~")) and not Path(name).exists()


def front_matter(meta: dict[str, Any]) -> str:
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=1000) + "---\n"


def model_index(name: str, manifest: TrainedAdapter) -> list[dict[str, Any]]:
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


def prompt_section(manifest: TrainedAdapter) -> str:

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


def results_section(manifest: TrainedAdapter) -> str:
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
            + ([f"base_model:adapter:{base}"] if is_hub_id(base) else []),
            "datasets": [manifest.data.dataset_name], "metrics": ["roc_auc"]}
    index = model_index(name, manifest)
    if index:
        meta["model-index"] = index
    embedded_note = ("\n> The adapter was trained on the embedded SmolLM2 (its Q4_1 GGUF dequantised to float), "
                     "not the hub's original weights; on those, scores shift slightly.\n" if embedded else "")
    return (
        front_matter(meta) + f"\n# {name}\n\nA LoRA adapter for `{base}` that answers whether a user will like an "
        f"item (TALLRec-style), exported by tallrec.\n{embedded_note}\n" + prompt_section(manifest) + "\n"
        + results_section(manifest) + card_section(manifest.as_dict()) + "\n## Use with PEFT\n\n```python\n"
        "from peft import AutoPeftModelForCausalLM\nfrom transformers import AutoTokenizer\n\n"
        f'model = AutoPeftModelForCausalLM.from_pretrained("{path}")  # loads {base}, then the adapter\n'
        f'tokenizer = AutoTokenizer.from_pretrained("{path if tokenizer_included else base}")\n```\n\n'
        + _vllm_section(check, base, name, path) + "\n## Integrity\n\n`manifest.json` records the sha256 of every "
        "file; `tallrec adapters verify` re-checks them.\n"
    )
