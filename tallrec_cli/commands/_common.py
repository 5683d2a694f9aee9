"""Options shared by several commands."""

from __future__ import annotations

import typer

SET_HELP = "Override a config key, e.g. `--set lora.r=16` (repeatable; values parsed as YAML)."


def set_option() -> list[str]:
    return typer.Option([], "--set", "-s", help=SET_HELP, show_default=False)
