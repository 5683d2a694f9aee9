"""`tallrec doctor [RECIPE]`: environment checks (tallrec_cli.train.doctor), one verdict and fix per line."""

from __future__ import annotations

from pathlib import Path

import typer

from tallrec_cli.cli.commands._common import command_app, set_option
from tallrec_cli.cli.console import ResultTable, console
from tallrec_cli.core.config import parse_overrides
from tallrec_cli.train.doctor import run_checks, worst_verdict

app = command_app()

_STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red", "skip": "dim"}


@app.command("doctor")
def doctor_command(
    recipe: Path = typer.Argument(None, help="Also check whether this train recipe fits the free memory here.",
                                  show_default=False),
    overrides: list[str] = set_option("training.micro_batch_size=4"),
    as_json: bool = typer.Option(False, "--json", help="Print the checks as JSON instead of a table."),
) -> None:
    """Check torch/CUDA/driver, GPUs and free memory, bf16, a real bitsandbytes 4-bit and 8-bit matmul,
    SDPA/flash attention, free disk, the embedded model and, for a recipe, whether it fits.

    Exits 1 when a check fails. Examples:

    `tallrec doctor`

    `tallrec doctor recipes/llama-3-8b-qlora.yaml --set training.micro_batch_size=4`
    """
    import json

    checks = run_checks(recipe, parse_overrides(overrides), with_recipe=bool(overrides))
    if as_json:
        typer.echo(json.dumps([check.as_dict() for check in checks], indent=2))
    else:
        rows = [[check.name, f"[{_STYLE[check.verdict]}]{check.verdict}[/]",
                 check.detail + (f"\n[yellow]fix:[/] {check.fix}" if check.fix and check.verdict != "ok" else "")]
                for check in checks]
        console.print(ResultTable("tallrec doctor", ["check", "verdict", "detail / fix"], rows))
    if worst_verdict(checks) == "fail":
        raise typer.Exit(1)
