"""The store → a static site (asv-style: a pure function of stored results, rebuildable any time).

bench.report.site.data reads the store and decides what to compare, bench.report.site.pages writes the pages and the
JSON the charts read, bench.report.site.output keeps the site's folder safe. This module is the one entry point.
"""

from __future__ import annotations

from pathlib import Path

from bench.config import DashboardConfig, GateConfig
from bench.report.site.pages import SiteReport, build
from bench.store.db import Store

__all__ = ["SiteReport", "build_site"]


def build_site(
    store: Store,
    out: Path,
    gate: GateConfig | None = None,
    settings: DashboardConfig | None = None,
) -> SiteReport:
    """Write (or bring up to date) the site in `out`."""
    with store.session() as session:
        return build(session, out, gate or GateConfig(), settings or DashboardConfig())
