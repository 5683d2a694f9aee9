"""`tallrec keys [train|data|sweep]`: every key a recipe, a `--set` or a sweep spec accepts, with its help."""

from __future__ import annotations

from typing import Literal

import typer

from tallrec_cli.commands._common import command_app

app = command_app()

Schema = Literal["train", "data", "sweep"]


def _schemas() -> dict[str, tuple[str, type]]:
    from data_builders.config import BuildConfig
    from tallrec_cli.sweep import SweepSpec
    from tallrec_cli.train_config import TrainConfig

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

    from tallrec_cli.config import describe
    from tallrec_cli.console import ResultTable, console

    for name, (title, cls) in _schemas().items():
        if schema in (None, name):  # help texts are plain text, not rich markup
            console.print(ResultTable(title, ["key", "default", "help"],
                                      [[escape(text) for text in row] for row in describe(cls)]))
