"""The Typer app, its console and the options every command shares.

Start-up stays small: `bench --help` and `bench classify-log` must not pay for pandas, SQLAlchemy, pydantic or
the site code, so the area modules import those inside the commands that use them
(tests/test_cli.py holds them to it)."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from bench import __version__
from bench.errors import ConfigError

if TYPE_CHECKING:
    from rich.console import Console

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # click's plain help and usage errors: rich's help panels cost ~0.1 s of every `--help` (typer imports
    # rich only for markup); commands still print tables through rich
    rich_markup_mode=None,
    help="perfgate: do llama.cpp builds still load every model fully offloaded, at the same speed?",
)


@functools.cache
def console() -> Console:
    """The one console commands print through (rich costs ~50 ms to import: made on first use). It parses no
    markup: names are printed as they are ("[/x]" is a model name, not a closing tag)."""
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 160, markup=False)


def _print_version(value: bool) -> None:
    if value:
        sys.stdout.write(f"perfgate {__version__}\n")
        raise typer.Exit(0)


@app.callback()
def _options(
    version: Annotated[
        bool, typer.Option("--version", help="print the version and exit", callback=_print_version, is_eager=True)
    ] = False,
) -> None:
    pass


DbOption = Annotated[
    str | None, typer.Option("--db", help="SQLAlchemy URL or SQLite path (default: $PERFGATE_DB or db/perfgate.sqlite)")
]
ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="models.yaml")]
FormatOption = Annotated[str, typer.Option("--format", "-f", help="table|json|csv")]


def check_format(fmt: str, allowed: tuple[str, ...]) -> None:
    if fmt not in allowed:
        raise ConfigError(f"--format: expected one of {', '.join(allowed)}, got {fmt!r}")
