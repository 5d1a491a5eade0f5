"""The static dashboard."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from bench.cli.app import ConfigOption, DbOption, app, console
from bench.defaults import DEFAULT_CONFIG

if TYPE_CHECKING:
    from bench.config import DashboardConfig


def _dashboard_settings(config: Path) -> DashboardConfig:
    """The `dashboard` section; the defaults when the default config file is absent (load_gate refused a
    missing file that was named)."""
    from bench.config import DashboardConfig, load_config

    return load_config(config, check_files=False).dashboard if config.exists() else DashboardConfig()


@app.command()
def dashboard(
    db: DbOption = None,
    out: Annotated[Path, typer.Option(help="output folder (replaced only if perfgate made it)")] = Path(
        "dashboard/site"
    ),
    config: ConfigOption = DEFAULT_CONFIG,
) -> None:
    """Build the static HTML dashboard from the store (only the pages a new run touches are rewritten)."""
    from bench.config import load_gate
    from bench.report.dashboard import build_site
    from bench.report.site.output import check_out
    from bench.store.db import open_store

    check_out(out)  # before the store: a refused folder is the first thing to hear about
    gate = load_gate(config)
    settings = _dashboard_settings(config)
    with open_store(db, write=False) as store:
        report = build_site(store, out, gate, settings)
    console().print(
        f"dashboard: {report.out / 'index.html'} ({report.pages} pages, {report.written} files written, "
        f"{report.bytes_total / 1e6:.1f} MB, {report.seconds:.1f} s)"
    )
