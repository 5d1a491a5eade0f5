"""Opening the store: URL resolution, SQLite pragmas, Alembic upgrade to head."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

DEFAULT_DB = "sqlite:///db/perfgate.sqlite"
MIGRATIONS = Path(__file__).resolve().parents[2] / "db"


def resolve_url(db: str | None) -> str:
    url = db or os.environ.get("PERFGATE_DB") or DEFAULT_DB
    if "://" not in url:  # a bare path means a SQLite file
        url = f"sqlite:///{url}"
    return url


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL: the dashboard can read while a runner writes; each commit is durable on its own
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


def _alembic_config(url: str) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest migration (no-op when it is already there)."""
    cfg = _alembic_config(str(engine.url.render_as_string(hide_password=False)))
    # migrations of independent features may branch from one revision: every head is applied
    heads = set(ScriptDirectory.from_config(cfg).get_heads())
    with engine.begin() as conn:
        if set(MigrationContext.configure(conn).get_current_heads()) == heads:
            return
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "heads")


class Store:
    """A migrated database and a session factory over it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        upgrade(self.engine)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    def session(self) -> Session:
        return self.sessions()

    def close(self) -> None:
        self.engine.dispose()


@contextmanager
def open_store(db: str | None = None) -> Iterator[Store]:
    store = Store(resolve_url(db))
    try:
        yield store
    finally:
        store.close()
