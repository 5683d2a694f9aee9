"""The `tallrec` command line: a thin layer that parses options, loads configs, calls library
functions and renders results. Heavy imports (torch, transformers) happen inside commands."""

from __future__ import annotations

import sys

import typer

from tallrec_cli import __version__
from tallrec_cli.cli.commands import adapters, audit, calibrate, data, doctor, evaluate, export, keys, sweep, train
from tallrec_cli.cli.commands._common import Group
from tallrec_cli.cli.console import RichReporter, err_console
from tallrec_cli.core.errors import TallrecError
from tallrec_cli.core.files import user_os_error
from tallrec_cli.core.quiet import debug_enabled, quiet_libraries
from tallrec_cli.core.reporting import use_reporter

app = typer.Typer(
    name="tallrec",
    help="TALLRec-style LoRA/QLoRA tuning of LLMs as recommenders: data -> train -> eval -> export -> sweep.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    rich_markup_mode="markdown",
    add_completion=False,
    cls=Group,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"tallrec {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version and exit."),
) -> None:
    """TALLRec-style LoRA/QLoRA tuning of LLMs as recommenders.

    Set TALLREC_DEBUG=1 to see full tracebacks and third-party logs; TALLREC_HOME moves caches
    (default ~/.cache/tallrec).
    """
    quiet_libraries()  # before any command imports torch or transformers
    use_reporter(RichReporter())  # library notes, status lines and progress reach stderr


for module in (data, train, evaluate, calibrate, audit, export, adapters, sweep, doctor, keys):
    app.add_typer(module.app, name=module.app.info.name)  # unnamed: its commands join the root


INTERRUPTED = 130  # the shell's code for SIGINT; typer turns Ctrl-C into this exit code


def _fail(message: str, hint: str | None, code: int) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    if hint:
        err_console.print(f"[yellow]hint:[/] {hint}", highlight=False, soft_wrap=True)
    sys.exit(code)


def _interrupted(exit_: SystemExit) -> bool:
    """Typer turns Ctrl-C into ``sys.exit(130)`` (raised while handling its Exit, itself caused by the
    KeyboardInterrupt) before any handler of ours sees it."""
    return exit_.code == INTERRUPTED and isinstance(getattr(exit_.__context__, "__cause__", None), KeyboardInterrupt)


def main() -> None:
    """Console-script entry point: domain errors become one line plus a hint, never a traceback."""
    debug = debug_enabled()
    try:
        app()
    except TallrecError as exc:
        if debug:
            raise
        _fail(exc.message, exc.hint, exc.exit_code)
    except (KeyboardInterrupt, SystemExit) as exc:
        if isinstance(exc, SystemExit) and not _interrupted(exc):
            raise
        _fail("interrupted (Ctrl-C)", "run the command again: finished outputs are complete and unfinished ones "
              "were not kept (`tallrec train --output RUN --resume` continues a training run)", INTERRUPTED)
    except Exception as exc:  # a bug: say so plainly, keep the traceback for TALLREC_DEBUG=1
        if debug:
            raise
        problem = user_os_error(exc)
        if problem is not None:  # the disk or the file system, not the tool, is at fault
            _fail(problem.message, problem.hint, problem.exit_code)
        err_console.print(f"[bold red]internal error:[/] {type(exc).__name__}: {exc}", highlight=False, soft_wrap=True)
        err_console.print("[yellow]hint:[/] re-run with TALLREC_DEBUG=1 for the traceback and report it", highlight=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
