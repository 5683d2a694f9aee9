"""`tallrec export`: a run's adapter as a standalone PEFT folder, merged into its base model, or as GGUF for
llama.cpp and Ollama (a GGUF LoRA, or merged)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer

from tallrec_cli.cli.commands._common import command_app, dtype_option, flag, output_option, overwrite_option
from tallrec_cli.cli.console import console, err_console
from tallrec_cli.core.errors import ConfigError
from tallrec_cli.export.adapter import export_adapter
from tallrec_cli.export.gguf import GGUF_FORMATS, describe, export_gguf
from tallrec_cli.export.merged import export_merged
from tallrec_cli.export.registry import add_adapter, check_free, check_name, resolve_store

app = command_app()

# adapter, merged + gguf.GGUF_FORMATS; merged.MERGE_DTYPES + gguf.GGUF_DTYPES (tests/export/test_gguf.py checks)
ExportFormat = Literal["adapter", "merged", "gguf-lora", "gguf"]
ExportDtype = Literal["auto", "bfloat16", "float16", "float32", "q8_0"]


@app.command("export")
def export_command(
    run_dir: Path = typer.Argument(..., help="A finished train run folder (it has manifest.json)."),
    output: Path | None = output_option("Folder to create (required unless --to-registry)."),
    export_format: ExportFormat = typer.Option("adapter", "--format", help="adapter: PEFT folder; merged: "
                                               "safetensors model; gguf-lora / gguf: for llama.cpp and Ollama."),
    merged: bool = flag("--merged", "Same as --format merged."),
    dtype: ExportDtype = dtype_option("Weights: merged: auto is the base's own; gguf-lora: auto is float16 (no "
                                      "q8_0); gguf: auto is float16, q8_0 quantizes."),
    base_gguf: Path | None = typer.Option(None, "--base-gguf", help="The base's GGUF for gguf formats (default: "
                                          "the run's base when it is one, as the embedded model is)."),
    max_shard_size: str = typer.Option("2GB", "--max-shard-size", help="Largest safetensors shard of a merged model."),
    to_registry: bool = flag("--to-registry", "Also add the adapter to the local registry."),
    name: str | None = typer.Option(None, "--name", help="Name in the card and the registry (default: folder name)."),
    store: Path | None = typer.Option(None, "--store", envvar="TALLREC_ADAPTERS",
                                      help="Registry folder (default: $TALLREC_HOME/adapters)."),
    base_model: str | None = typer.Option(None, "--base-model", help="Use this base instead of the run's (must match)."),
    device: str | None = typer.Option(None, "--device", help="Where to merge: cuda, cuda:1, cpu (default: the GPU "
                                      "when there is one; cpu needs RAM for the whole model)."),
    verify_samples: int = typer.Option(32, "--verify-samples", min=2,
                                       help="Prompts scored to check the merged model's P(yes) AUC."),
    overwrite: bool = overwrite_option("an existing export (and a registry entry of the same name)"),
) -> None:
    """Export a run for serving without tallrec (PEFT, transformers, vLLM, TGI, llama.cpp, Ollama).

    Adapter (default): PEFT files, model card with a vLLM check, manifest hashing every file.
    `--format merged` (`--merged`): sharded safetensors model in 16/32-bit, verified against base + adapter.
    `--format gguf-lora`: the adapter as a GGUF LoRA for the base's GGUF; `--format gguf`: merged into that GGUF.
    Both with an Ollama Modelfile; what llama.cpp cannot load (DoRA, trained embeddings, ...) is refused.

    Examples:

    `tallrec export runs/m64 -o exports/m64 --to-registry`

    `tallrec export runs/m64 --merged --dtype bfloat16 --max-shard-size 2GB -o exports/m64-merged`

    `tallrec export runs/m64 --format gguf-lora -o exports/m64-gguf`

    `tallrec export runs/m64 --format gguf --dtype q8_0 -o exports/m64-q8`
    """

    if merged:
        if export_format not in ("adapter", "merged"):
            raise ConfigError(f"--merged contradicts --format {export_format}", "drop --merged")
        export_format = "merged"
    if export_format != "adapter" and to_registry:
        raise ConfigError(f"--to-registry stores adapters, not --format {export_format} exports",
                          "drop --to-registry, or export --format adapter")
    if output is None and not to_registry:
        raise ConfigError("no --output folder given", "pass --output DIR (or --to-registry for an adapter)")
    if export_format in GGUF_FORMATS:
        with err_console.status(f"writing {export_format}"):
            result = export_gguf(run_dir, output, export_format, dtype=dtype, base_gguf=base_gguf, overwrite=overwrite,
                                 base_model=base_model, name=name)
        console.print(describe(result))
        return
    if export_format == "merged":
        with err_console.status("merging and verifying"):
            result = export_merged(run_dir, output, dtype=dtype, max_shard_size=max_shard_size, overwrite=overwrite,
                                   base_model=base_model, verify_samples=verify_samples, device=device, name=name)
        check = result.verification
        if result.quantized_training:
            console.print(f"[yellow]note:[/] the adapter was trained on a {result.quantized_training} base; it was "
                          f"merged into the base reloaded in {result.dtype}, not into quantized weights")
        console.print(f"merged model ({result.dtype}, {result.shards} shard(s), {result.size_bytes / 1e6:.1f} MB) "
                      f"-> {result.path}")
        console.print(f"verified: max |logit diff| {check.max_abs_logit_diff:.3g} (bound {check.logit_bound:.3g}) on "
                      f"{check.logit_prompts} prompts; AUC {check.auc_adapter} -> {check.auc_merged} on "
                      f"{check.auc_samples} ({check.prompts_source})")
        return

    if output is None:
        output = resolve_store(store) / check_name(name or run_dir.resolve().name)
    registering = to_registry and output.parent.resolve() != resolve_store(store).resolve()
    if registering:  # a taken name ends it before the export is written, not after
        check_free(name or output.name, store, overwrite)
    result = export_adapter(run_dir, output, name=name, overwrite=overwrite, base_model=base_model)
    console.print(f"adapter for {result.base} -> {result.path}"
                  + (" (with its own tokenizer)" if result.tokenizer_included else ""))
    if result.vllm.compatible:
        console.print(f"vLLM: loadable (static check); serve with --max-lora-rank {result.vllm.max_lora_rank}")
    else:
        console.print("[yellow]vLLM: not loadable:[/] " + "; ".join(result.vllm.problems))
    if registering:
        console.print(f"registered -> {add_adapter(output, name=name, store=store, overwrite=overwrite)}")
