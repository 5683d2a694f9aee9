"""`tallrec calibrate`: temperature / Platt scaling of a run's P(yes), fitted on its validation split."""

from __future__ import annotations

from pathlib import Path

import typer

from tallrec_cli.cli.commands._common import (
    CalibrationMethod,
    Dtype,
    ScoreMode,
    batch_size_option,
    command_app,
    dtype_option,
    limit_option,
    score_option,
)
from tallrec_cli.cli.console import console, progress, table
from tallrec_cli.eval.calibrate import calibrate_run

app = command_app()


@app.command("calibrate")
def calibrate_command(
    run_dir: Path = typer.Argument(..., help="A finished train run folder (it has manifest.json)."),
    method: CalibrationMethod = typer.Option("temperature", "--method", help="Map to store: temperature (one "
                                             "parameter, keeps the score shape) or platt (slope and intercept). "
                                             "Both are reported."),
    valid: str = typer.Option(None, "--valid", help="Validation data, not the run's training file (default: the "
                              "run's validation split)."),
    score: ScoreMode = score_option(),
    limit: int = limit_option("validation records"),
    batch_size: int = batch_size_option(),
    dtype: Dtype = dtype_option(),
) -> None:
    """Fit temperature and Platt scaling on validation P(yes) and store one in the run's manifest;
    eval, predict and export then apply it. AUC is unchanged (the maps are monotone).

    Example:

    `tallrec calibrate runs/m64 --method temperature`
    """

    with progress() as bar:
        def on_start(name: str, records: int):
            task = bar.add_task(f"scoring {name}", total=records)
            return lambda done: bar.advance(task, done)

        report = calibrate_run(run_dir, method, valid, score, limit, batch_size, dtype, on_start)
    rows = [[name, values["log_loss"], values["brier"], values["ece"]]
            for name, values in report["validation"].items()]
    console.print(table(f"validation calibration ({report['selected']['fitted_on']['records']} records)",
                        ["scores", "log-loss", "Brier", "ECE"], rows))
    console.print(f"stored {report['selected']['formula']} in {run_dir / 'manifest.json'}; "
                  f"reliability plot: {run_dir / 'calibration' / 'reliability.png'}", highlight=False)
