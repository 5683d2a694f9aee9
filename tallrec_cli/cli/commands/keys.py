"""`tallrec keys [train|data|sweep]`: every key a recipe, a `--set` or a sweep spec accepts, with its help."""

from __future__ import annotations

from typing import Literal

import typer

from data_builders.config import BuildConfig
from tallrec_cli.cli.commands._common import command_app
from tallrec_cli.cli.console import ResultTable, console
from tallrec_cli.core.config import describe
from tallrec_cli.sweep import SweepSpec
from tallrec_cli.train.config import TrainConfig

app = command_app()

Schema = Literal["train", "data", "sweep"]


def _schemas() -> dict[str, tuple[str, type]]:

    return {"train": ("train recipe keys (`tallrec train RECIPE --set KEY=VALUE`, sweep axes and overrides)",
                      TrainConfig),
            "data": ("data build settings (`tallrec data build SOURCE --set KEY=VALUE`)", BuildConfig),
            "sweep": ("sweep spec keys (recipes/sweeps/*.yaml)", SweepSpec)}


@app.command("keys")
def keys_command(
    schema: Schema | None = typer.Argument(None, help="Which keys (default: all three).", show_default=False),
) -> None:
    """List every config key with its default and help: train recipes, data build settings, sweep specs.

    Example: `tallrec keys train`
    """
    from rich.markup import escape

    for name, (title, cls) in _schemas().items():
        if schema in (None, name):  # help texts are plain text, not rich markup
            console.print(ResultTable(title, ["key", "default", "help"],
                                      [[escape(text) for text in row] for row in describe(cls)]))
