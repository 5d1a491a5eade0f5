"""The Typer app, its console and the options every command shares."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from bench.errors import ConfigError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="perfgate: do llama.cpp builds still load every model fully offloaded, at the same speed?",
)
console = Console(width=None if sys.stdout.isatty() else 160)

DbOption = Annotated[
    str | None, typer.Option("--db", help="SQLAlchemy URL or SQLite path (default: $PERFGATE_DB or db/perfgate.sqlite)")
]
ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="models.yaml")]
FormatOption = Annotated[str, typer.Option("--format", "-f", help="table|json|csv")]


def check_format(fmt: str, allowed: tuple[str, ...]) -> None:
    if fmt not in allowed:
        raise ConfigError(f"--format: expected one of {', '.join(allowed)}, got {fmt!r}")
