"""What an engine learns of a build only by running it (llama-bench's build_commit, backends, gpu_info)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from bench.store.models import Build


def merge_build_details(session: Session, build_id: int, info: dict[str, Any]) -> None:
    build = session.get(Build, build_id)
    if build is None:
        return
    merged = {**(build.details or {}), **info}
    if merged != build.details:
        build.details = merged  # a new dict: the JSON column sees the change
        session.flush()
