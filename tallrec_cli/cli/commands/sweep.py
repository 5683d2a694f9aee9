"""`tallrec sweep`: few-shot grids (shots x seeds x axes), resumable, with TALLRec's Table 1 and a plot.

`tallrec sweep RECIPE ...` runs (or resumes) a sweep; `tallrec sweep report SWEEP_DIR` rebuilds the
table and plot from the folder. The logic lives in tallrec_cli.sweep.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Literal

import typer

from data_builders.sampling import parse_int_list
from tallrec_cli.cli.commands._common import (
    Group,
    command_app,
    flag,
    limit_option,
    output_option,
    overwrite_option,
    set_option,
)
from tallrec_cli.cli.console import console, err_console
from tallrec_cli.cli.render import sweep_findings_lines, sweep_report
from tallrec_cli.core.files import is_disk_full, refuse_overlap
from tallrec_cli.sweep import build_report, load_sweep_spec, missing_cells, run_single_cell, run_sweep
from tallrec_cli.sweep.slurm import emit_slurm


class DefaultRunGroup(Group):
    """A group whose arguments go to its ``run`` command unless they start with a subcommand name."""

    default_command = "run"

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        help_options = set(self.get_help_option_names(ctx))
        if args and args[0] not in self.commands and args[0] not in help_options:
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


app = command_app(
    "sweep", cls=DefaultRunGroup,
    help="Few-shot sweeps: `tallrec sweep RECIPE --shots 16,64,256 --seeds 0,1,2 --test FILE --output DIR`, "
         "or `tallrec sweep report DIR`.")


def _int_list(text: str | None, name: str) -> list[int] | None:

    return None if text is None else parse_int_list(text, name)


def _device_list(text: str | None) -> list[str] | None:
    devices = [part.strip() for part in (text or "").split(",") if part.strip()]
    return devices or None


@app.command("run")
def run_command(
    recipe: Path = typer.Argument(..., help="A sweep YAML (recipes/sweeps/*.yaml, has a `recipe` key) or a train recipe.",
                                  show_default=False),
    output: Path = output_option("Sweep folder (re-running the same command resumes it).", required=True),
    shots: str = typer.Option(None, "--shots", help="Training-set sizes, e.g. 16,64,256; 0 adds zero-shot.", show_default=False),
    seeds: str = typer.Option(None, "--seeds", help="Seeds, e.g. 0,1,2 (sample and training seed).", show_default=False),
    tests: list[str] = typer.Option([], "--test", help="Test file or dataset folder, optionally NAME=PATH (repeatable).",
                                    show_default=False),
    axes: list[str] = typer.Option([], "--axis", help="Extra grid axis KEY=V1,V2, e.g. lora.r=8,16 or model=a,b (repeatable).",
                                   show_default=False),
    overrides: list[str] = set_option("training.lr=3e-4"),
    test_limit: int = limit_option("records of each test", "--test-limit"),
    baselines: bool = typer.Option(None, "--baselines/--no-baselines", help="Equal-data references (popularity, "
                                   "logistic regression, bias, GBDT, MF fitted on each cell's records) and full-data "
                                   "references (default: on).", show_default=False),
    devices: str = typer.Option(None, "--devices", help="GPUs, e.g. 0,1: one cell per GPU in parallel processes.",
                                show_default=False),
    keep_going: bool = flag("--keep-going", "Record a failed cell in the index and go on."),
    overwrite: bool = overwrite_option("a sweep folder of another config (cells whose config is unchanged are "
                                       "kept)"),
    emit: Literal["slurm"] = typer.Option(None, "--emit", help="Write a cluster script instead of running: slurm "
                                          "(a job array, one cell per task; then `sbatch` it and `tallrec sweep "
                                          "report DIR`).", show_default=False),
    slurm_options: list[str] = typer.Option([], "--slurm-option", help="An sbatch option for --emit slurm, e.g. "
                                            "--slurm-option=--partition=gpu (repeatable; default --gres=gpu:1 "
                                            "--cpus-per-task=8).", show_default=False),
) -> None:
    """Run or resume a few-shot sweep; print AUC/GAUC by N beside equal-data and full-data references, the
    tuned model's paired differences from each, and what they say; write results.csv/json and sweep.png.

    Examples:

    `tallrec sweep recipes/smollm2-135m-lora.yaml --shots 0,16,64 --seeds 0,1 --test data/movielens-100k/test.jsonl -o sweeps/m`

    `tallrec sweep recipes/sweeps/smollm2-movielens-fewshot.yaml --output sweeps/m --keep-going`

    `tallrec sweep recipes/sweeps/smollm2-movielens-fewshot.yaml --output sweeps/m --emit slurm`
    """

    spec = load_sweep_spec(recipe, _int_list(shots, "shots"), _int_list(seeds, "seeds"), tests, axes, overrides,
                           test_limit, baselines)
    refuse_overlap(output, [path for tests_ in spec.tests_by_domain().values() for path in tests_.values()])
    if emit is not None:
        _emit_slurm(spec, output, overwrite, slurm_options)
        return
    result = run_sweep(spec, output, overwrite=overwrite, keep_going=keep_going, devices=_device_list(devices),
                       log=lambda message: err_console.print(message, highlight=False, soft_wrap=True))
    _print_report(result.report)
    err_console.print(f"{len(result.ran)} cell(s) run, {len(result.skipped)} kept from earlier runs, "
                      f"{len(result.failures)} failed; {result.wall_seconds:.0f} s. "
                      f"Results: {result.sweep_dir / 'results.csv'}, plot: {result.sweep_dir / 'sweep.png'}",
                      highlight=False, soft_wrap=True)
    if result.failures:
        for failure in result.failures:
            err_console.print(f"[red]failed:[/] {failure.cell.id}: {failure.error}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)


def _print_report(report: dict) -> None:
    """The tables, then the findings in words (stdout); notes on left-out comparisons (stderr)."""
    for renderable in sweep_report(report):
        console.print(renderable)
    for line in sweep_findings_lines(report["findings"]):
        console.print(line, markup=False, highlight=False)
    for note in report["notes"]:
        err_console.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)


def _emit_slurm(spec, output: Path, overwrite: bool, slurm_options: list[str]) -> None:

    emitted = emit_slurm(spec, output, overwrite=overwrite, options=slurm_options,
                         log=lambda message: err_console.print(message, highlight=False, soft_wrap=True))
    done = f" ({len(emitted.finished)} finished cell(s) left out)" if emitted.finished else ""
    console.print(f"wrote {emitted.script}: a job array of {len(emitted.cells)} cell(s){done}\n"
                  f"submit: sbatch {emitted.script}\nthen: tallrec sweep report {output}", highlight=False, soft_wrap=True)


@app.command("report")
def report_command(
    sweep_dir: Path = typer.Argument(..., help="A sweep folder.", show_default=False),
) -> None:
    """Rebuild the table, results.csv/json and sweep.png from the sweep folder's cells alone.

    Example: `tallrec sweep report sweeps/m`
    """

    report = build_report(sweep_dir)
    missing = missing_cells(sweep_dir)
    _print_report(report)
    if missing:
        err_console.print(f"[bold yellow]warning:[/] {len(missing)} cell(s) have no result, so the table (and its "
                          f"best marks) leaves them out: " + ", ".join(f"{cell['id']} ({cell['status']})"
                                                                         for cell in missing), highlight=False,
                          soft_wrap=True)
    err_console.print(f"wrote {sweep_dir / 'results.csv'}, {sweep_dir / 'results.json'}, {sweep_dir / 'sweep.png'}",
                      highlight=False)


@app.command("run-cell", hidden=True)
def run_cell_command(
    sweep_dir: Path = typer.Argument(...),
    cell_id: str = typer.Argument(...),
    record: bool = flag("--record", "Record the cell's status in index.json (array tasks)."),
) -> None:
    """Run one cell of a prepared sweep folder (a worker process of --devices, or a Slurm array task)."""

    try:
        run_single_cell(sweep_dir, cell_id, record=record)
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        err_console.print(f"error: disk full while running cell {cell_id}: {exc}", highlight=False)
        raise typer.Exit(errno.ENOSPC) from None  # the parent reads this exit code as "disk full"
