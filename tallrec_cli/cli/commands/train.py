"""`tallrec train`: parse options, load the recipe, call tallrec_cli.train.run, render the result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from tallrec_cli.cli.commands._common import (
    ReportTo,
    command_app,
    flag,
    output_option,
    overwrite_option,
    seed_option,
    set_option,
)
from tallrec_cli.cli.console import console, err_console, table
from tallrec_cli.core.config import deep_merge, parse_overrides, to_dict
from tallrec_cli.core.errors import ConfigError
from tallrec_cli.core.formatting import format_value
from tallrec_cli.train import config as train_config
from tallrec_cli.train import run as training
from tallrec_cli.train.capacity import dry_run as estimate
from tallrec_cli.train.capacity import per_gpu_fit, processes_from_accelerate_config
from tallrec_cli.train.inputs import absolute_data, config_changes
from tallrec_cli.train.run import format_count

app = command_app()


def _flag_overrides(model: str | None, train: str | None, valid: str | None, shots: int | None, seed: int | None,
                    output: str | None, overwrite: bool, report_to: str | None = None) -> dict[str, Any]:
    pairs = {("model", "name"): model, ("data", "train"): train, ("data", "valid"): valid,
             ("data", "shots"): shots, ("training", "seed"): seed, ("output", "dir"): output,
             ("output", "overwrite"): True if overwrite else None, ("training", "report_to"): report_to}
    nested: dict[str, Any] = {}
    for (section, key), value in pairs.items():
        if value is not None:
            nested.setdefault(section, {})[key] = value
    return nested


@app.command("train")
def train_command(
    recipe: Path = typer.Argument(None, help="Recipe YAML (default: the settings of recipes/smollm2-135m-lora.yaml).",
                                  show_default=False),
    overrides: list[str] = set_option("lora.r=16"),
    model: str = typer.Option(None, "--model", help="Base model (sets model.name).", show_default=False),
    train: str = typer.Option(None, "--train", help="Training records: dataset folder or file (data.train).", show_default=False),
    valid: str = typer.Option(None, "--valid", help="Validation records, not the training file (data.valid).",
                              show_default=False),
    shots: int = typer.Option(None, "--shots", min=1, help="Few-shot training records (data.shots).",
                              show_default=False),
    seed: int = seed_option("Training seed (training.seed)", default=None),
    output: str = output_option("Run folder (output.dir)."),
    overwrite: bool = overwrite_option("a run folder that already holds a run"),
    report_to: ReportTo = typer.Option(None, "--report-to", help="Log to tensorboard (RUN/tensorboard), wandb or "
                                       "mlflow (training.report_to).", show_default=False),
    resume: bool = flag("--resume", "Continue the interrupted run in the output folder with its saved config "
                                    "(options that would change it are refused)."),
    dry_run: bool = flag("--dry-run", "Show config, sizes and a memory estimate; load no weights."),
    gpu_memory: float = typer.Option(24.0, "--gpu-memory", min=1.0,
                                     help="GPU memory budget in GiB for the --dry-run estimate."),
    processes: int = typer.Option(None, "--processes", help="--dry-run: also estimate per GPU for N processes "
                                  "(sharded with training.fsdp).", show_default=False, min=1),
    accelerate_config: Path = typer.Option(None, "--accelerate-config", help="--dry-run: take N from this "
                                           "accelerate config file (num_processes).", show_default=False),
) -> None:
    """Tune a LoRA / QLoRA adapter TALLRec-style; validation AUC picks the best checkpoint.

    Writes RUN/config.yaml, metrics.jsonl, adapter/, checkpoints/ and, last, manifest.json.
    Ctrl-C saves a checkpoint; `--resume` continues from it.

    Examples:

    `tallrec train recipes/smollm2-135m-lora.yaml --train data/movielens-100k --shots 64 --seed 0 -o runs/m64`

    `tallrec train recipes/llama-3-8b-qlora.yaml --model /models/llama-3-8b --dry-run --set lora.r=16`

    `tallrec train recipes/llama-3-70b-qlora-fsdp.yaml --dry-run --accelerate-config recipes/accelerate/fsdp2-2gpu.yaml`
    """

    flags = _flag_overrides(model, train, valid, shots, seed, output, overwrite, report_to)
    if resume and overwrite:
        raise ConfigError("--resume continues a run and --overwrite replaces it; pass one of them")
    if resume:
        run_dir = output or train_config.load_train_config(recipe).output.dir
        config = train_config.resume_config(run_dir)
        _refuse_changes(config, recipe, deep_merge({key: value for key, value in flags.items() if key != "output"},
                                                   parse_overrides(overrides, train_config.TrainConfig)))
        err_console.print(f"resuming {run_dir} with its saved config.yaml")
    else:
        config = train_config.load_train_config(recipe, deep_merge(flags, parse_overrides(overrides,
                                                                             train_config.TrainConfig)))
    if dry_run:
        if accelerate_config is not None:
            processes = processes_from_accelerate_config(accelerate_config)
        result = estimate(config, gpu_memory)
        _render_dry_run(result, console)
        if processes:
            _render_per_gpu(per_gpu_fit(config, processes, result["sequence_length"], gpu_memory), console)
        return
    summary = training.run_training(config, resume=resume)
    if train_config.is_main_process():  # under torchrun / accelerate launch, rank 0 alone reports
        _render_summary(summary, console)


def _refuse_changes(saved, recipe: Path | None, given: dict[str, Any]) -> None:
    """--resume continues a run as it started: a recipe or options that would change its config are refused,
    not ignored."""
    if recipe is None and not given:
        return
    asked = train_config.load_train_config(recipe, given) if recipe else \
        train_config.load_train_config(None, deep_merge(to_dict(saved), given))
    changes = config_changes(to_dict(absolute_data(saved)), to_dict(absolute_data(asked)))
    if changes:
        raise ConfigError(f"--resume continues {saved.output.dir} with the config it started with (its "
                          f"config.yaml), and the recipe or options given change it: {'; '.join(changes)}",
                          "drop them to resume, or train a new run (another --output, or --overwrite to replace it)")


def _render_dry_run(result: dict[str, Any], console) -> None:
    import yaml

    console.print(yaml.safe_dump(result["config"], sort_keys=False).rstrip(), highlight=False)
    counts = result["parameters"]
    rows = [("total parameters", format_count(counts["total"])),
            ("trainable (LoRA) parameters", f"{format_count(counts['lora'])} ({100 * counts['lora'] / counts['total']:.3f}%)"),
            ("adapted modules", str(counts["adapted_modules"]))]
    if result["data"]:
        data = result["data"]
        rows += [("train / valid records", f"{data['train_records']} / {data['valid_records']}"),
                 ("tokens per record min / mean / max", f"{data['tokens_min']} / {data['tokens_mean']:.0f} / {data['tokens_max']}"),
                 ("records with shortened history", str(data["truncated_records"])),
                 ("evaluate every", f"{result['eval_every']} steps")]
    console.print(table("model and data", ["", "value"], rows))
    memory = result["memory_gib"]
    console.print(table(f"estimated peak GPU memory (sequence length {result['sequence_length']})", ["part", "GiB"],
                        [(key, round(value, 2)) for key, value in memory.items()]))
    verdict = "[green]fits[/]" if result["fits"] else "[bold red]does not fit[/]"
    console.print(f"{verdict} in {result['gpu_memory_gib']:g} GiB")
    for note in result["notes"]:
        console.print(f"[yellow]note:[/] {note}", highlight=False)


def _render_per_gpu(fit: dict[str, Any], console) -> None:

    how = "sharded with FSDP" if fit["sharded"] else "each holding a full copy (training.fsdp=false)"
    console.print(table(f"per GPU, {fit['processes']} processes {how}", ["part", "GiB"],
                        [(key, round(value, 2)) for key, value in fit["parts_gib"].items()]
                        + [("total", round(fit["total_gib"], 2))]))
    verdict = "[green]fits[/]" if fit["fits"] else "[bold red]does not fit[/]"
    console.print(f"{verdict} in {fit['gpu_memory_gib']:g} GiB per GPU")
    if fit["note"]:
        console.print(f"[yellow]note:[/] {fit['note']}", highlight=False)


def _render_summary(summary: dict[str, Any], console) -> None:

    console.print(table("evaluations", ["step", "epoch", "train_loss", "val_auc", "val_loss", "elapsed_s"],
                        [[row[key] for key in ("step", "epoch", "train_loss", "val_auc", "val_loss", "elapsed_s")]
                         for row in summary["evaluations"]]))
    stopped = " (early stop)" if summary["stopped_early"] else ""
    rows = [("run folder", summary["run_dir"]),
            ("steps", f"{summary['steps']} / {summary['max_steps']}{stopped}"),
            ("best step", str(summary["best_step"])),
            ("best val AUC", _auc_text(summary["best_val_auc"], summary["auc_undefined"])),
            ("best val loss", f"{summary['best_val_loss']:.4f}"),
            ("val AUC before training", _auc_text(summary["start_val_auc"], summary["auc_undefined"])),
            ("selected on", summary["selected_on"]),
            ("train / valid records", f"{summary['train_records']} / {summary['valid_records']}"),
            ("records with shortened history", str(summary["truncated_records"])),
            ("seed / sample seed", f"{summary['seed']} / {summary['sample_seed']}"),
            ("processes", str(summary["processes"])),
            ("wall time", f"{summary['wall_seconds']:.0f} s")]
    console.print(table("training summary", ["", "value"], rows))


def _auc_text(value: float | None, undefined: bool) -> str:

    return "undefined (one class)" if undefined else format_value(value)
