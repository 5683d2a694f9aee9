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
from tallrec_cli.export.cards import adapter_card
from tallrec_cli.export.runs import (
    EXPORT_KINDS,
    check_output,
    load_train_run,
    resolve_base,
    run_payload,
    serving_name,
    tokenizer_differs,
)
from tallrec_cli.export.vllm import VllmCheck, check_vllm_compatibility


@dataclass(frozen=True)
class AdapterExport:
    path: Path
    base: str
    vllm: VllmCheck
    tokenizer_included: bool
    manifest: AdapterExportManifest


def export_adapter(run_dir: str | Path, output: str | Path, name: str | None = None, overwrite: bool = False,
                   base_model: str | None = None) -> AdapterExport:
    """Write the run's adapter as a standalone PEFT folder: adapter files, tokenizer when it differs from
    the base, README.md card and an ``adapter-export`` manifest hashing every file."""
    output = Path(output)
    check_output(output, run_dir, base_model, overwrite)
    run = load_train_run(run_dir)
    source = resolve_base(run, base_model)
    base = serving_name(source)
    name = name or output.name
    model_type = (run.manifest.base_model_config or {}).get("model_type")
    vllm = check_vllm_compatibility(run.adapter_config, run.tensor_names, model_type)
    include_tokenizer = tokenizer_differs(run, source)
    with staged_dir(output, EXPORT_KINDS, overwrite=overwrite) as staging:
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
            **run_payload(run), name=name, base_model_name_or_path=base, tokenizer_included=include_tokenizer,
            vllm=vllm.as_dict(), files=file_hashes(staging)).write(staging)
    return AdapterExport(output, base, vllm, include_tokenizer, manifest)
