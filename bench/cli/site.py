"""The static dashboard."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bench.cli.app import ConfigOption, DbOption, app, console
from bench.config import DEFAULT_CONFIG, load_gate
from bench.store.db import open_store


@app.command()
def dashboard(
    db: DbOption = None,
    out: Annotated[Path, typer.Option(help="output folder")] = Path("dashboard/site"),
    config: ConfigOption = DEFAULT_CONFIG,
) -> None:
    """Build the static HTML dashboard from the store."""
    from bench.dashboard import build_site

    gate = load_gate(config)
    with open_store(db, write=False) as store:
        report = build_site(store, out, gate)
    console.print(
        f"dashboard: {report.out / 'index.html'} ({report.pages} pages, {report.bytes_total / 1e6:.1f} MB, "
        f"{report.seconds:.1f} s)"
    )
