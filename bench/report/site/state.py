"""What the page mixins read of the builder: its attributes, declared once (set by pages.Builder)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pandas as pd
from jinja2 import Environment
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from bench.report.site.data import SiteData
from bench.report.site.output import SiteOutput

if TYPE_CHECKING:
    from bench.analysis.gate import Verdict


class BuilderState:
    session: Session
    data: SiteData
    out: SiteOutput
    env: Environment
    version: str
    verdict_version: str
    rkey: dict[int, str]
    rkey_col: pd.Series
    standing: pd.DataFrame
    gate_key: dict[str, Any]
    hosts: dict[str, str]
    settings_of: dict[int, dict[str, Any]]
    engine: dict[tuple[str, str], str]  # (build name, identity) → its engine
    samples: pd.DataFrame | None
    narrow: pd.DataFrame
    compare_s: float
    run_date: dict[int, str]
    run_bandwidth: dict[Any, Any]
    run_rows: dict[int, dict[str, Any]]
    verdicts: dict[str, Verdict]
    runs_by_id: pd.DataFrame
    machine_series: dict[str, Any]
    builds_of: dict[frozenset[str], list[dict[str, Any]]]
    history_rows: dict[tuple[str, str], pd.DataFrame]

    def reconnect(self) -> None:
        """In a forked worker: connections of its own. The parent's stay the parent's: a child that closed one
        would close it for the parent too (SQLAlchemy's advice for pools across fork)."""
        engine = self.session.get_bind()
        assert isinstance(engine, Engine)
        engine.dispose(close=False)
        self.session = Session(bind=engine)

    def render(self, rel: str, template: str, key: str, **ctx: Any) -> None:
        html = self.env.get_template(template).render(root="../" * rel.count("/"), **ctx)
        self.out.write(rel, html, key)

    def keys_of(self, ids: tuple[int, ...] | list[int]) -> list[str]:
        return [self.rkey[i] for i in ids]
