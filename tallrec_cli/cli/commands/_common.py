"""What every command module shares: its typer app, the `--set` option, and the fixed choices typer checks
at parse time (listed in `--help`, a bad value exits 2 before anything loads).

Every command module defines ``app = command_app(...)`` and its commands as module-level functions decorated
with ``@app.command(...)``, so tests can import and call them; cli.py adds each module's app to the root."""

from __future__ import annotations

from typing import Any, Literal

import typer

MODEL_HELP = "Base model: smollm2-135m, a local folder, a .gguf file, a hub id, or a merged export folder."
ADAPTER_HELP = "A train run folder, an adapter export folder (their manifests name base model, template, labels)."

# The library's own tuples name the same values (tests/test_cli.py checks that they agree).
ScoreMode = Literal["pair", "tallrec"]  # tallrec_cli.model.scoring.SCORE_MODES
PrefixCache = Literal["auto", "on", "off"]  # tallrec_cli.model.scoring.PREFIX_CACHE_MODES
Dtype = Literal["auto", "bfloat16", "float16", "float32"]  # tallrec_cli.model.loading.DTYPES
Quantization = Literal["none", "8bit", "4bit"]  # tallrec_cli.model.loading.QUANTIZATIONS
Domain = Literal["movie", "book"]  # tallrec_cli.eval.predict.DOMAINS
CalibrationMethod = Literal["temperature", "platt"]  # tallrec_cli.eval.calibration.METHODS
ReportTo = Literal["none", "tensorboard", "wandb", "mlflow"]  # tallrec_cli.train.config.REPORT_TO
Source = Literal["movielens-100k", "movielens-1m", "movielens-latest", "bookcrossing", "amazon",
                 "csv"]  # data_builders.config.SOURCES
Split = Literal["tallrec", "leave-last-out", "last-n", "temporal", "user"]  # data_builders.config.SPLITS
DataFormat = Literal["jsonl", "tallrec-json"]  # data_builders.config.FORMATS
HistoryStrategy = Literal["recent", "relevant", "mixed"]  # data_builders.config.HISTORY_STRATEGIES


def command_app(name: str | None = None, **settings: Any) -> typer.Typer:
    """A command module's app: unnamed, its commands join the root; named, it is a group (`tallrec data ...`)."""
    return typer.Typer(name=name, rich_markup_mode="markdown", no_args_is_help=name is not None, **settings)


def set_option(example: str) -> list[str]:
    """`--set KEY=VALUE` overrides, with an ``example`` that is valid for the command at hand."""
    return typer.Option([], "--set", "-s", show_default=False,
                        help=f"Override a config key, e.g. `--set {example}` (repeatable; values parsed as YAML).")
