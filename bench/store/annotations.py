"""Notes added to stored rows after the fact: what an engine learned of a build by running it (llama-bench's
build_commit, backends, gpu_info), and what a run was for (a bisect step's commit and verdict)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from bench.store.models import Build, Result, Run


def merge_build_details(session: Session, build_id: int, info: dict[str, Any]) -> None:
    build = session.get(Build, build_id)
    if build is None:
        return
    merged = {**(build.details or {}), **info}
    if merged != build.details:
        build.details = merged  # a new dict: the JSON column sees the change
        session.flush()


def tag_run(session: Session, run_id: int, tags: dict[str, Any]) -> None:
    """Add keys to a run's settings (a bisect step's commit and verdict): the run says what it was for."""
    run = session.get(Run, run_id)
    if run is not None:
        run.settings = {**(run.settings or {}), **tags}
        session.flush()


def tagged_runs(session: Session, key: str) -> list[tuple[int, dict[str, Any]]]:
    """(run id, its `key` tag) of every run carrying that tag, oldest first."""
    rows = session.execute(select(Run.id, Run.settings).order_by(Run.id)).all()
    return [(rid, settings[key]) for rid, settings in rows if isinstance(settings, dict) and key in settings]


def engines_of(session: Session, result_ids: tuple[int, ...]) -> str:
    """The engine(s) that measured these results, from their builds' details ("llama-cpp-python" when a
    build names none: round-one builds and imports of perfgate's own results)."""
    rows = session.execute(
        select(Build.details).join(Result, Result.build_id == Build.id).where(Result.id.in_(result_ids))
    ).scalars()
    return engines_label(engine_of(d) for d in rows)


def engine_of(details: dict[str, Any] | None) -> str:
    """A build's engine, from its stored details."""
    return (details or {}).get("engine") or (details or {}).get("tool") or "llama-cpp-python"


def engines_label(engines: Iterable[str]) -> str:
    return "+".join(sorted(set(engines)))
