"""`tallrec adapters list | show | verify | rm`: the local store of exported adapters."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from tallrec_cli.cli.commands._common import command_app
from tallrec_cli.cli.console import console, table
from tallrec_cli.core.errors import ArtifactError, ConfigError
from tallrec_cli.core.formatting import format_bytes
from tallrec_cli.export.registry import (
    adapter_path,
    list_adapters,
    read_card,
    remove_adapter,
    resolve_store,
    verify_adapter,
)

app = command_app("adapters", help="Exported adapters in the local registry.")

STORE_HELP = "Registry folder (default: $TALLREC_ADAPTERS, else $TALLREC_HOME/adapters)."


def _store_option() -> Path | None:
    return typer.Option(None, "--store", envvar="TALLREC_ADAPTERS", help=STORE_HELP, show_default=False)


@app.command("list")
def list_command(store: Path | None = _store_option()) -> None:
    """Table of adapters: name, base model, dataset, shots, seed, AUC, size, date.

    Example: `tallrec adapters list --store ~/adapters`
    """

    entries = list_adapters(store)
    if not entries:
        console.print(f"no adapters in {resolve_store(store)}", highlight=False)
        return
    rows = [(e.name, _base_label(e.base_model) if e.base_model else f"[red]{e.problem}[/]", e.dataset, e.shots,
             e.seed, e.auc, format_bytes(e.size_bytes), (e.created or "")[:10] or None) for e in entries]
    console.print(table("adapters", ("name", "base model", "dataset", "shots", "seed", "AUC", "size", "date"), rows))
    console.print(f"store: {resolve_store(store)}", highlight=False, soft_wrap=True)


def _base_label(base: str) -> str:
    """A base model in a table cell: a local model by its folder name (a full cache path wraps over lines)."""
    return Path(base).name if Path(base).is_absolute() else base

@app.command("show")
def show_command(name: str = typer.Argument(..., help="Adapter name."), store: Path | None = _store_option()) -> None:
    """Print the adapter's model card.

    Example: `tallrec adapters show movie-64-0`
    """
    from rich.markdown import Markdown

    card = read_card(name, store)
    _, _, body = card.partition("\n---\n") if card.startswith("---\n") else ("", "", card)
    console.print(Markdown(body))

@app.command("verify")
def verify_command(name: str | None = typer.Argument(None, help="Adapter name (default: every adapter)."),
           store: Path | None = _store_option()) -> None:
    """Re-hash every file against the manifest; name what changed, went missing or appeared.

    Example: `tallrec adapters verify` (all) or `tallrec adapters verify movie-64-0`
    """

    if name:
        adapter_path(name, store)  # an unknown name is a typo to fix, not an export to redo
    names = [name] if name else [entry.name for entry in list_adapters(store)]
    if not names:
        console.print(f"no adapters in {resolve_store(store)}")
    failed = []
    for each in names:
        try:
            check = verify_adapter(each, store)
        except ArtifactError as exc:
            console.print(f"[red]FAIL[/] {each}: {exc.message}", highlight=False)
            failed.append(each)
            continue
        console.print(f"[green]ok[/] {each}" if check.ok else f"[red]FAIL[/] {each}: {check.describe()}",
                      highlight=False)
        if not check.ok:
            failed.append(each)
    if failed:
        raise ArtifactError(f"{len(failed)} adapter(s) failed verification: {', '.join(failed)}",
                            "re-export them (`tallrec export RUN --to-registry --overwrite`)")

@app.command("rm")
def rm_command(name: str = typer.Argument(..., help="Adapter name."), store: Path | None = _store_option(),
       yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation.")) -> None:
    """Delete an adapter from the registry.

    Example: `tallrec adapters rm movie-64-0 --yes`
    """

    path = adapter_path(name, store)
    if not yes and not sys.stdin.isatty():
        raise ConfigError(f"`adapters rm` asks before deleting {path}, and there is no terminal to ask on",
                          "pass --yes to delete it")
    if not yes:
        typer.confirm(f"delete {path}?", abort=True)
    remove_adapter(name, store)
    console.print(f"removed {path}")
