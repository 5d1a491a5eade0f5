"""Change points in the store: the series they are found in, and the change_points table itself."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pandas as pd
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, aliased

from bench.errors import StoreError
from bench.metrics import METRICS, Status
from bench.store.models import Build, ChangePoint, Machine, Model, Result, Run, utcnow
from bench.store.queries import attach_samples, read_columns

# what change_points_frame returns, one row per change point (the dashboard reads these columns)
CHANGE_COLUMNS = [
    "id",
    "machine_fingerprint",
    "machine",
    "model",
    "build",
    "metric",
    "kind",
    "reference",
    "build_before",
    "build_after",
    "commit_before",
    "commit_after",
    "run_before",
    "run_after",
    "run_after_at",
    "value_before",
    "value_after",
    "shift_pct",
    "status_before",
    "status_after",
    "regression",
    "detected_at",
    "first_reported_at",
]


def build_commit(details: dict[str, Any] | None) -> str | None:
    """The git commit a build was made from, where it came from git (`details.source.commit`)."""
    source = (details or {}).get("source")
    commit = source.get("commit") if isinstance(source, dict) else None
    return str(commit) if commit else None


def build_label(name: str, identity_sha: str, commit: str | None) -> str:
    """`master@1a2b3c4d5e6f` for a build from git, `master#9422ae5c` (its identity) otherwise."""
    return f"{name}@{commit[:12]}" if commit else f"{name}#{identity_sha[:8]}"


def machine_fingerprints(session: Session, machine: str | None) -> list[str] | None:
    """The fingerprints a `--machine` names (hostname or fingerprint prefix); None for every machine."""
    if machine is None:
        return None
    rows = session.execute(select(Machine.fingerprint, Machine.hostname)).all()
    found = [fp for fp, host in rows if host == machine or fp.startswith(machine)]
    if not found:
        raise StoreError(f"no machine {machine!r} in the store (hostname or fingerprint)")
    return found


def series_frame(session: Session, *, machine: str | None = None, model: str | None = None) -> pd.DataFrame:
    """One row per stored result, in `bench.analysis.changes.POINT_COLUMNS`: the points of every build line,
    each with what its point is made of (its samples and token counts, `bench.analysis.changes.run_points`).

    A point's time is when its run finished (when it started, for a run that never finished)."""
    run_at = func.coalesce(Run.finished_at, Run.started_at)
    stmt = (
        select(
            Machine.fingerprint.label("machine_fingerprint"),
            Machine.hostname.label("machine"),
            Build.name.label("build"),
            Model.name.label("model"),
            Result.run_id,
            run_at.label("run_at"),
            Result.build_id,
            Build.identity_sha.label("build_sha"),
            Result.status,
            *(getattr(Result, m) for m in METRICS),
            Result.id.label("result_id"),
            Result.n_prompt,
            Result.n_gen,
        )
        .join(Build, Result.build_id == Build.id)
        .join(Model, Result.model_id == Model.id)
        .join(Run, Result.run_id == Run.id)
        .join(Machine, Run.machine_id == Machine.id)
        .order_by(run_at, Result.run_id, Result.id)
    )
    fingerprints = machine_fingerprints(session, machine)
    if fingerprints is not None:
        stmt = stmt.where(Machine.fingerprint.in_(fingerprints))
    if model is not None:
        if session.scalar(select(Model.id).where(Model.name == model).limit(1)) is None:
            raise StoreError(f"no model {model!r} in the store")
        stmt = stmt.where(Model.name == model)
    frame = pd.DataFrame(read_columns(session, stmt))
    # a build's commit is read once per build, not once per result
    commits = {i: build_commit(d) for i, d in session.execute(select(Build.id, Build.details))}
    frame.insert(frame.columns.get_loc("status"), "commit", [commits[i] for i in frame["build_id"].tolist()])
    if len(frame):
        filtered = fingerprints is not None or model is not None
        attach_samples(session, frame, sorted(set(frame["run_id"].tolist())) if filtered else None)
    return frame


def store_changes(
    session: Session, lines: Iterable[tuple[str, str, str]], found: Iterable[Any], reference: str | None = None
) -> int:
    """Make the stored change points of `lines` (machine fingerprint, build, model), found against
    `reference`, exactly `found` (bench.analysis.changes.DetectedChange records); keep when each was first detected
    and reported. Returns how many were new. Idempotent: a second call with the same series changes nothing."""
    machine_ids = dict(session.execute(select(Machine.fingerprint, Machine.id)).all())
    ref = reference or ""
    wanted = {(machine_ids[c.machine_fingerprint], c.build, c.model, c.metric, c.run_after): c for c in found}
    new = 0
    for fingerprint, build, model in lines:
        stored = session.scalars(
            select(ChangePoint).where(
                ChangePoint.machine_id == machine_ids[fingerprint],
                ChangePoint.build_name == build,
                ChangePoint.model_name == model,
                ChangePoint.reference == ref,
            )
        ).all()
        have = {(p.machine_id, p.build_name, p.model_name, p.metric, p.run_after_id): p for p in stored}
        for key, stale in have.items():
            if key not in wanted:  # more runs moved or dissolved it
                session.delete(stale)
        for key, change in wanted.items():
            if key[:3] != (machine_ids[fingerprint], build, model):
                continue
            point = have.get(key)
            if point is None:
                point = ChangePoint(
                    machine_id=key[0],
                    build_name=build,
                    model_name=model,
                    metric=change.metric,
                    run_after_id=key[4],
                    reference=ref,
                )
                session.add(point)
                new += 1
            point.kind, point.run_before_id = change.kind, change.run_before
            point.build_before_id, point.build_after_id = change.build_id_before, change.build_id_after
            point.value_before, point.value_after, point.shift_pct = (
                change.value_before,
                change.value_after,
                change.shift_pct,
            )
            point.status_before, point.status_after = change.status_before, change.status_after
    session.commit()
    return new


def change_points_frame(
    session: Session,
    *,
    machine: str | None = None,
    model: str | None = None,
    metric: str | None = None,
    reference: str | None = None,
    new_only: bool = False,
) -> pd.DataFrame:
    """The stored change points, newest run first, in CHANGE_COLUMNS.

    `metric` keeps that metric's shifts and every status change (a load failure changes every metric);
    `reference` picks those found in figures relative to that build (None: in each line's own figures;
    their values are then ratios); `new_only` keeps those `bench changes --new` has not listed yet."""
    before, after = aliased(Build), aliased(Build)
    run_after = aliased(Run)
    stmt = (
        select(
            ChangePoint.id,
            Machine.fingerprint,
            Machine.hostname,
            ChangePoint.model_name,
            ChangePoint.build_name,
            ChangePoint.metric,
            ChangePoint.kind,
            before.name,
            before.identity_sha,
            before.details,
            after.name,
            after.identity_sha,
            after.details,
            ChangePoint.run_before_id,
            ChangePoint.run_after_id,
            func.coalesce(run_after.finished_at, run_after.started_at),
            ChangePoint.value_before,
            ChangePoint.value_after,
            ChangePoint.shift_pct,
            ChangePoint.status_before,
            ChangePoint.status_after,
            ChangePoint.detected_at,
            ChangePoint.first_reported_at,
        )
        .join(Machine, ChangePoint.machine_id == Machine.id)
        .join(before, ChangePoint.build_before_id == before.id)
        .join(after, ChangePoint.build_after_id == after.id)
        .join(run_after, ChangePoint.run_after_id == run_after.id)
        .where(ChangePoint.reference == (reference or ""))
        .order_by(ChangePoint.run_after_id.desc(), ChangePoint.model_name, ChangePoint.build_name, ChangePoint.metric)
    )
    fingerprints = machine_fingerprints(session, machine)
    if fingerprints is not None:
        stmt = stmt.where(Machine.fingerprint.in_(fingerprints))
    if model is not None:
        stmt = stmt.where(ChangePoint.model_name == model)
    if metric is not None:
        stmt = stmt.where((ChangePoint.metric == metric) | (ChangePoint.kind == "status"))
    if new_only:
        stmt = stmt.where(ChangePoint.first_reported_at.is_(None))
    rows = []
    for r in session.execute(stmt):
        (pid, fp, host, model_name, build, metric_name, kind, b_name, b_sha, b_det, a_name, a_sha, a_det) = r[:13]
        run_b, run_a, run_at, v_b, v_a, shift, st_b, st_a, detected, reported = r[13:]
        commit_b, commit_a = build_commit(b_det), build_commit(a_det)
        regression = st_a != Status.OK if kind == "status" else METRICS[metric_name].worse(shift, 0.0)
        rows.append(
            (
                *(pid, fp, host, model_name, build, metric_name, kind, reference),
                *(build_label(b_name, b_sha, commit_b), build_label(a_name, a_sha, commit_a), commit_b, commit_a),
                *(run_b, run_a, run_at, v_b, v_a, shift, st_b, st_a, regression, detected, reported),
            )
        )
    return pd.DataFrame(rows, columns=CHANGE_COLUMNS)


def mark_reported(session: Session, ids: Iterable[int]) -> None:
    """Mark change points as listed by `bench changes --new`: they are no longer new."""
    ids = [int(i) for i in ids]
    if ids:
        session.execute(update(ChangePoint).where(ChangePoint.id.in_(ids)).values(first_reported_at=utcnow()))
        session.commit()
