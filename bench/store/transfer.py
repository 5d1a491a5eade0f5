"""Copying runs between stores (`bench push`): a runner's local runs into the central database, each once.

A run is known everywhere by its uuid (set when it starts); its machine by fingerprint, its builds by
(name, identity), its models by name. Each run is copied whole in one transaction: a push that dies half
way leaves nothing half there, and the next push (or a second runner pushing the same file) finds the
uuid and adds nothing."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import Connection, Table, insert, select

from bench.heap import frozen
from bench.store.db import Store
from bench.store.models import Build, Machine, Model, Result, ResultLog, Run, SampleSeries
from bench.store.records import insert_if_absent


def _table(cls: Any) -> Table:
    return cast(Table, cls.__table__)


_T = {name: _table(cls) for name, cls in (("machine", Machine), ("build", Build), ("model", Model))}


@dataclass
class PushReport:
    copied: dict[int, int] = field(default_factory=dict)  # local run id → its id in the central database
    already: list[int] = field(default_factory=list)  # local run ids the central database holds
    unfinished: list[int] = field(default_factory=list)  # runs still running (or killed: resume them first)
    results: int = 0
    samples: int = 0


def _values(table: Any, row: Any, *, drop: tuple[str, ...] = ("id",)) -> dict[str, Any]:
    return {c.name: row._mapping[c.name] for c in table.columns if c.name not in drop}


def _id_of(conn: Connection, table: Table, key: dict[str, Any]) -> int:
    return int(conn.execute(select(table.c.id).where(*(table.c[k] == v for k, v in key.items()))).scalar_one())


def _ensure(conn: Connection, known: dict[tuple[str, int], int], kind: str, row: Any, key: tuple[str, ...]) -> int:
    """The central id of a local machine/build/model row, inserted when absent; `known` remembers it for the
    push's later runs (each run commits, so an id learnt once stays true)."""
    if (kind, row.id) not in known:
        table = _T[kind]
        values = _values(table, row)
        insert_if_absent(conn, table, list(key), values)
        known[kind, row.id] = _id_of(conn, table, {k: values[k] for k in key})
    return known[kind, row.id]


def _insert_rows(conn: Connection, cls: Any, rows: list[dict[str, Any]]) -> None:
    """Many rows into one table, inside the run's transaction. PostgreSQL: COPY (psycopg's executemany sends
    the rows one by one); SQLite: the driver's executemany."""
    if not rows:
        return
    table = _table(cls)
    if conn.dialect.name != "postgresql":
        conn.execute(insert(table), rows)
        return
    columns = list(rows[0])
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        with cursor.copy(f"COPY {table.name} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row([row[c] for c in columns])
    finally:
        cursor.close()


@frozen()  # every run of a runner's file, row by row (bench.heap)
def copy_runs(local: Store, central: Store) -> PushReport:
    report = PushReport()
    known: dict[tuple[str, int], int] = {}
    with local.engine.connect() as src:
        runs = src.execute(select(_table(Run)).order_by(Run.id)).all()
        for run in runs:
            if run.status == "running":
                report.unfinished.append(run.id)
                continue
            with central.engine.begin() as dst:
                if dst.execute(select(Run.id).where(Run.uuid == run.uuid)).first() is not None:
                    report.already.append(run.id)
                    continue
                new_id = _copy_run(src, dst, run, report, known)
                if new_id is None:  # another push of the same file got there first
                    report.already.append(run.id)
                else:
                    report.copied[run.id] = new_id
    return report


def _copy_run(
    src: Connection, dst: Connection, run: Any, report: PushReport, known: dict[tuple[str, int], int]
) -> int | None:
    """One run with its results, samples and logs: a few statements, however many results it holds."""
    machine = src.execute(select(_table(Machine)).where(Machine.id == run.machine_id)).one()
    run_table = _table(Run)
    new_run_id = insert_if_absent(
        dst,
        run_table,
        ["uuid"],
        {**_values(run_table, run), "machine_id": _ensure(dst, known, "machine", machine, ("fingerprint",))},
        returning=run_table.c.id,
    )
    if new_run_id is None:
        return None
    results = src.execute(select(_table(Result)).where(Result.run_id == run.id).order_by(Result.id)).all()
    if not results:
        return int(new_run_id)
    build_ids = {
        b.id: _ensure(dst, known, "build", b, ("name", "identity_sha"))
        for b in src.execute(select(_table(Build)).where(Build.id.in_({r.build_id for r in results})))
    }
    model_ids = {
        m.id: _ensure(dst, known, "model", m, ("name",))
        for m in src.execute(select(_table(Model)).where(Model.id.in_({r.model_id for r in results})))
    }
    result_table = _table(Result)
    rows = [
        {
            **_values(result_table, r),
            "run_id": new_run_id,
            "build_id": build_ids[r.build_id],
            "model_id": model_ids[r.model_id],
        }
        for r in results
    ]
    # one multi-row INSERT … RETURNING: the new ids come back in the order of the rows
    new_ids = (
        dst.execute(insert(result_table).returning(result_table.c.id, sort_by_parameter_order=True), rows)
        .scalars()
        .all()
    )
    id_map = dict(zip((r.id for r in results), new_ids, strict=True))
    in_run = select(Result.id).where(Result.run_id == run.id)
    series = src.execute(
        select(SampleSeries.result_id, SampleSeries.test, SampleSeries.ns).where(SampleSeries.result_id.in_(in_run))
    ).all()
    _insert_rows(dst, SampleSeries, [{"result_id": id_map[r], "test": t, "ns": ns} for r, t, ns in series])
    logs = src.execute(select(ResultLog.result_id, ResultLog.text).where(ResultLog.result_id.in_(in_run))).all()
    _insert_rows(dst, ResultLog, [{"result_id": id_map[r], "text": text} for r, text in logs])
    report.results += len(results)
    report.samples += sum(len(ns) // 8 for _, _, ns in series)
    return int(new_run_id)
