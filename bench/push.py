"""`bench push --to URL`: a runner that measured into its own SQLite file catches the central database up.

Idempotent: every run carries a uuid from its start, and the central database takes each uuid once."""

from __future__ import annotations

from bench.errors import ConfigError
from bench.store.db import open_store, resolve_url
from bench.store.transfer import PushReport, copy_runs


def push(local_db: str | None, central_db: str) -> PushReport:
    if resolve_url(local_db) == resolve_url(central_db):
        raise ConfigError(f"--to {central_db}: that is the local database itself")
    with open_store(local_db, write=False) as local, open_store(central_db) as central:
        return copy_runs(local, central)
