"""`tallrec export RUN --format adapter`: the run's adapter as a standalone PEFT folder."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from tallrec_cli.core.files import (
    file_hashes,
    staged_dir,
    write_text_atomic,
)
from tallrec_cli.core.integrity import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from tallrec_cli.core.manifests import (
    AdapterExportManifest,
)
from tallrec_cli.export.cards import adapter_card, run_evaluations
from tallrec_cli.export.runs import (
    EXPORT_KINDS,
    base_ref,
    card_example,
    check_output,
    load_train_run,
    resolve_base,
    run_payload,
    tokenizer_differs,
)
from tallrec_cli.export.vllm import VllmCheck, check_vllm


@dataclass(frozen=True)
class AdapterExport:
    path: Path
    base: str
    vllm: VllmCheck
    tokenizer_included: bool
    manifest: AdapterExportManifest


def export_adapter(run_dir: str | Path, output: str | Path, name: str | None = None, overwrite: bool = False,
                   base_model: str | None = None, llama_cpp: str | None = None) -> AdapterExport:
    """Write the run's adapter as a standalone PEFT folder: adapter files, tokenizer when it differs from
    the base, README.md card and an ``adapter-export`` manifest hashing every file. The adapter config names
    the base portably (hub id and revision, else the base folder's own name). ``llama_cpp``: the card's
    llama.cpp / Ollama section, when a GGUF of the adapter was made."""
    output = Path(output)
    check_output(output, run_dir, base_model, overwrite)
    run = load_train_run(run_dir)
    source = resolve_base(run, base_model)
    payload = run_payload(run, source)
    base = base_ref(source, payload["base_model"])
    name = name or output.name
    model_type = (run.manifest.base_model_config or {}).get("model_type")
    vllm = check_vllm(run.adapter_dir, run.adapter_config, run.tensor_names, model_type, source.path)
    include_tokenizer = tokenizer_differs(run, source)
    example = card_example(run, source)
    with staged_dir(output, EXPORT_KINDS, overwrite=overwrite) as staging:
        config = dict(run.adapter_config, base_model_name_or_path=base.name, revision=base.revision)
        write_text_atomic(staging / ADAPTER_CONFIG, json.dumps(config, indent=2) + "\n")
        shutil.copyfile(run.adapter_dir / ADAPTER_WEIGHTS, staging / ADAPTER_WEIGHTS)
        if include_tokenizer:
            from transformers import AutoTokenizer

            AutoTokenizer.from_pretrained(run.adapter_dir).save_pretrained(staging)
        card = adapter_card(name, output.name, base, run.manifest, vllm, example, include_tokenizer,
                            run_evaluations(run.path), llama_cpp)
        write_text_atomic(staging / "README.md", card)
        manifest = AdapterExportManifest.new(
            **payload, name=name, base_model_name_or_path=base.name,
            tokenizer_included=include_tokenizer, vllm=vllm.as_dict(), files=file_hashes(staging)).write(staging)
    return AdapterExport(output, base.name, vllm, include_tokenizer, manifest)
