"""Opening the store: URL resolution, SQLite pragmas, schema checks and the one locked migration.

SQLite files perfgate made are upgraded when a command writes; PostgreSQL is upgraded only by
`bench db upgrade`, and every other command says so when its schema is behind. A database that is not
perfgate's is never changed; one at a schema this perfgate does not know is refused."""

from __future__ import annotations

import ast
import functools
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.engine import URL, ExceptionContext, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, NoSuchModuleError, ProgrammingError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from bench.errors import StoreError
from bench.package_data import data_dir

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

DEFAULT_DB = "sqlite:///db/perfgate.sqlite"
MIGRATIONS = data_dir("bench._migrations", "db")  # inside a wheel, or beside the package in a checkout
# the tables every perfgate schema has had: a database holding other tables and not these is someone else's
# (samples became sample_series in migration 0005)
CORE_TABLES = frozenset({"machines", "builds", "models", "runs", "results"})
MIGRATION_LOCK_KEY = 0x70657266  # "perf": PostgreSQL advisory lock taken while migrating
MIGRATION_BUSY_MS = 120_000  # a second process waits this long for another's migration to commit


def resolve_url(db: str | None) -> str:
    url = db or os.environ.get("PERFGATE_DB") or DEFAULT_DB
    if "://" not in url:  # a bare path means a SQLite file
        url = f"sqlite:///{url}"
    return url


def parse_url(url: str) -> URL:
    """A URL perfgate can use: SQLite or PostgreSQL (psycopg 3 when no driver is named)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StoreError(f"--db {url!r}: not a database URL (sqlite:///PATH, a file path, or postgresql://…)") from None
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise StoreError(
            f"--db {parsed.render_as_string()}: unknown scheme {parsed.drivername!r}; "
            "use sqlite:///PATH, a file path, or postgresql+psycopg://USER@HOST/DB"
        )
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def shown(url: URL) -> str:
    """How a database is named in messages: its file for SQLite, the URL without password otherwise."""
    if url.get_backend_name() == "sqlite":
        return url.database or ":memory:"
    return url.render_as_string()


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL: the dashboard can read while a runner writes; each commit is durable on its own
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


def _as_store_error(where: str) -> Any:
    """Database failures a user can cause (corrupt file, full disk, server gone) become one `error:` line."""

    def handle(ctx: ExceptionContext) -> None:
        orig = ctx.original_exception
        # a broken constraint or a malformed statement is perfgate's own bug: it keeps its traceback
        if isinstance(ctx.sqlalchemy_exception, IntegrityError | ProgrammingError) or isinstance(orig, StoreError):
            return
        reason = (str(orig).strip().splitlines() or [type(orig).__name__])[0]
        raise StoreError(f"{where}: {reason}") from orig

    return handle


def make_engine(url: str, *, create: bool = True, poolclass: Any = None) -> Engine:
    parsed = parse_url(url)
    where = shown(parsed)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        path = Path(parsed.database)  # type: ignore[arg-type]
        if path.is_dir():
            raise StoreError(f"{path}: is a directory, not a SQLite database")
        if not path.exists():
            if not create:
                raise StoreError(f"{path}: no database there yet (`bench run` or `bench import` makes one)")
            path.parent.mkdir(parents=True, exist_ok=True)
    kwargs = {"poolclass": poolclass} if poolclass else {}
    try:
        engine = create_engine(parsed, **kwargs)
    except NoSuchModuleError as exc:
        raise StoreError(f"--db {where}: no driver for {parsed.drivername!r} ({exc})") from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    event.listen(engine, "handle_error", _as_store_error(where))
    return engine


def _alembic_config(url: str) -> AlembicConfig:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


@functools.cache
def _revision_graph() -> dict[str, frozenset[str]]:
    """revision → the revisions it follows, read from the migration files without running them.

    Every command checks the schema before it starts: Alembic's ScriptDirectory imports each migration
    (most of a second); only a migration itself needs Alembic. tests/test_store.py holds the two equal."""
    graph: dict[str, frozenset[str]] = {}
    for path in sorted((MIGRATIONS / "versions").glob("*.py")):
        found: dict[str, Any] = {}
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None
            if isinstance(target, ast.Name) and target.id in ("revision", "down_revision"):
                found[target.id] = ast.literal_eval(node.value)  # type: ignore[attr-defined]
        if isinstance(found.get("revision"), str):
            down = found.get("down_revision")
            graph[found["revision"]] = frozenset([down] if isinstance(down, str) else down or ())
    return graph


def head_revisions() -> frozenset[str]:
    # migrations of independent features may branch from one revision: every head is applied
    graph = _revision_graph()
    return frozenset(graph) - frozenset().union(*graph.values())


def known_revisions() -> frozenset[str]:
    return frozenset(_revision_graph())


@dataclass(frozen=True)
class SchemaState:
    """What a database holds: its tables and the migrations recorded in it."""

    where: str
    tables: frozenset[str]
    revisions: frozenset[str]

    @property
    def empty(self) -> bool:
        return not (self.tables - {"alembic_version"})

    @property
    def current(self) -> bool:
        return self.revisions == head_revisions()

    def check_ours(self) -> None:
        """Refuse a database perfgate did not make, or one a newer perfgate migrated."""
        if self.empty:
            return
        if not self.tables >= CORE_TABLES:
            others = ", ".join(sorted(self.tables - {"alembic_version"})[:5])
            raise StoreError(
                f"{self.where}: not a perfgate database (it holds {others}); perfgate changes nothing in it"
            )
        unknown = self.revisions - known_revisions()
        if unknown:
            raise StoreError(
                f"{self.where}: schema revision {', '.join(sorted(unknown))} is newer than this perfgate knows "
                f"(newest here: {', '.join(sorted(head_revisions()))}); upgrade perfgate"
            )


def _state_of(conn: Connection, where: str) -> SchemaState:
    tables = frozenset(inspect(conn).get_table_names())
    revisions: frozenset[str] = frozenset()
    if "alembic_version" in tables:
        revisions = frozenset(conn.execute(text("SELECT version_num FROM alembic_version")).scalars())
    return SchemaState(where, tables, revisions)


def _sqlite_state(path: Path) -> SchemaState:
    """Look into a SQLite file read-only, before any pragma (WAL would change someone else's file)."""
    revisions: frozenset[str] = frozenset()
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: cannot open it ({exc})") from None
    try:
        tables = frozenset(r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"))
        if "alembic_version" in tables:
            revisions = frozenset(r[0] for r in conn.execute("SELECT version_num FROM alembic_version"))
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: cannot read it as a SQLite database: {exc}") from None
    finally:
        conn.close()
    return SchemaState(str(path), tables, revisions)


def schema_state(engine: Engine) -> SchemaState:
    url = engine.url
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        path = Path(url.database)  # type: ignore[arg-type]
        if path.exists():
            return _sqlite_state(path)
        return SchemaState(str(path), frozenset(), frozenset())
    with engine.connect() as conn:
        return _state_of(conn, shown(url))


def upgrade(engine: Engine) -> bool:
    """Bring the schema to the newest migration, all of it in one transaction under a lock, so two
    processes on a new database, or a kill mid-way, never leave half a schema. True when it migrated."""
    state = schema_state(engine)
    state.check_ours()
    if state.current:
        return False
    url = engine.url.render_as_string(hide_password=False)
    sqlite = engine.dialect.name == "sqlite"
    # its own engine: SQLite's driver must leave transactions to us (it would commit before each DDL)
    migrator = make_engine(url, poolclass=NullPool)
    if sqlite:
        event.listen(migrator, "connect", lambda dbapi_conn, _r: setattr(dbapi_conn, "isolation_level", None))
    try:
        with migrator.connect() as conn:
            if sqlite:
                conn.exec_driver_sql(f"PRAGMA busy_timeout={MIGRATION_BUSY_MS}")
                conn.exec_driver_sql("BEGIN IMMEDIATE")  # the write lock: a second migrator waits here
            else:
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
            state = _state_of(conn, state.where)  # what the process before us may have done meanwhile
            state.check_ours()
            if state.current:
                conn.rollback()
                return False
            from alembic import command

            cfg = _alembic_config(url)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "heads")
            conn.commit()  # the driver's commit ends the BEGIN IMMEDIATE transaction too
    finally:
        migrator.dispose()
    return True


def ensure_schema(engine: Engine, *, write: bool) -> None:
    """Check the schema before a command uses the store; migrate perfgate's own SQLite files."""
    state = schema_state(engine)
    state.check_ours()
    if state.current:
        return
    if engine.dialect.name == "sqlite":
        if write or not state.empty:
            upgrade(engine)
            return
        raise StoreError(f"{state.where}: holds no perfgate data yet (`bench run` or `bench import` makes some)")
    have = ", ".join(sorted(state.revisions)) or "no perfgate schema"
    raise StoreError(
        f"{state.where}: {have}, perfgate needs {', '.join(sorted(head_revisions()))}: "
        f"run `bench db upgrade --db {engine.url.render_as_string()}`"
    )


class Store:
    """A database at the newest schema and a session factory over it.

    `write=False` (results, compare, gate, dashboard …) never creates a database."""

    def __init__(self, url: str, *, write: bool = True) -> None:
        self.url = url
        self.engine = make_engine(url, create=write)
        try:
            ensure_schema(self.engine, write=write)
        except BaseException:
            self.engine.dispose()
            raise
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def session(self) -> Session:
        return self.sessions()

    def close(self) -> None:
        self.engine.dispose()


@contextmanager
def open_store(db: str | None = None, *, write: bool = True) -> Iterator[Store]:
    store = Store(resolve_url(db), write=write)
    try:
        yield store
    finally:
        store.close()


def upgrade_store(db: str | None) -> tuple[str, bool]:
    """`bench db upgrade`: (where, migrated?)."""
    engine = make_engine(resolve_url(db))
    try:
        return shown(engine.url), upgrade(engine)
    finally:
        engine.dispose()
