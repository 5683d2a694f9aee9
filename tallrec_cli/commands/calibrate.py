"""`tallrec calibrate`: temperature / Platt scaling of a run's P(yes), fitted on its validation split."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add `calibrate` to ``app``."""

    @app.command("calibrate")
    def calibrate(
        run_dir: Path = typer.Argument(..., help="A finished train run folder (it has manifest.json)."),
        method: str = typer.Option("temperature", "--method", help="Map to store: temperature (one parameter, "
                                   "keeps the score shape) or platt (slope and intercept). Both are reported."),
        valid: str = typer.Option(None, "--valid", help="Validation data (default: the run's validation split)."),
        score: str = typer.Option("pair", "--score", help="pair or tallrec scores (see `tallrec eval --help`)."),
        limit: int = typer.Option(None, help="Use only the first N validation records."),
        batch_size: int = typer.Option(None, help="Prompts per forward pass (default: the largest expected to fit)."),
        dtype: str = typer.Option("auto", help="auto, bfloat16, float16, float32."),
    ) -> None:
        """Fit temperature and Platt scaling on validation P(yes) and store one in the run's manifest;
        eval, predict and export then apply it. AUC is unchanged (the maps are monotone).

        Example:

        `tallrec calibrate runs/m64 --method temperature`
        """
        from tallrec_cli.calibration import METHODS, calibrate_run
        from tallrec_cli.console import console, progress, table
        from tallrec_cli.errors import ConfigError
        from tallrec_cli.scoring import SCORE_MODES

        if method not in METHODS:
            raise ConfigError(f"--method {method!r} is not one of {', '.join(METHODS)}")
        if score not in SCORE_MODES:
            raise ConfigError(f"--score {score!r} is not one of {', '.join(SCORE_MODES)}")
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
