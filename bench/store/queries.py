"""Reading the store as pandas DataFrames: the only place that knows how tables join."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Integer, Select, case, func, select
from sqlalchemy.orm import Session

from bench.errors import StoreError
from bench.heap import frozen
from bench.metrics import Status
from bench.store.models import Build, Machine, Model, Result, ResultLog, Run, SampleSeries

# the Result columns every reader gets, in the order of the `bench results --format json` contract
_RESULT_FIELDS = (
    "run_id",
    "status",
    "reason",
    "load_s",
    "pp_ts",
    "pp_ts_std",
    "tg_ts",
    "tg_ts_std",
    "n_prompt",
    "n_gen",
    "repetitions",
    "layers_offloaded",
    "layers_total",
    "backend",
    "model_bytes",
    "model_buf_bytes",
    "kv_bytes",
    "compute_bytes",
    "rss_peak_bytes",
    "gpu_used_bytes",
    "device_budget_bytes",
    "started_at",
    "finished_at",
    "exit_code",
    "signal",
    "memory",
)
# what each result row carries from the tables it joins: column name → source column
_JOINED = {
    "result_id": Result.id,
    "build": Build.name,
    "build_sha": Build.identity_sha,
    "build_version": Build.llama_cpp_version,
    "build_lib_path": Build.lib_path,
    "build_lib_sha256": Build.lib_sha256,
    "build_system_info": Build.system_info,
    "model": Model.name,
    "machine": Machine.hostname,
    "machine_fingerprint": Machine.fingerprint,
    "gpu": Machine.gpu,
    "source": Run.source,
}
# of the joined names, those a read of some fields only (`results_frame(only=...)`) carries
_KEY_NAMES = ("result_id", "build", "build_sha", "model", "machine", "machine_fingerprint", "source")
_OWN = [f for f in _RESULT_FIELDS if f != "run_id"]
_CUT = _OWN.index("repetitions") + 1
RESULT_COLUMNS = [
    "run_id",
    "build",
    "model",
    *_OWN[:_CUT],
    "samples_pp_ns",
    "samples_tg_ns",
    "samples_load_ns",
    *_OWN[_CUT:],
    "machine",
    "machine_fingerprint",
    "gpu",
    "build_sha",
    "build_version",
    "build_lib_path",
    "build_lib_sha256",
    "build_system_info",
    "result_id",
    "source",
]
SAMPLE_TESTS = ("pp", "tg", "load")  # sample_series.test: prompt and generation repetitions, fresh-process loads
# integer columns (nullable): JSON writers may turn them into floats (33.0), readers turn them back
INT_COLUMNS = [f for f in _RESULT_FIELDS if isinstance(Result.__table__.c[f].type, Integer)] + ["result_id"]
# the measured figures among them (the rest are keys and suite settings)
INT_FIELDS = tuple(c for c in INT_COLUMNS if c not in ("run_id", "result_id", "n_prompt", "n_gen", "repetitions"))


@frozen()  # 100,000 rows of objects beside the imported libraries' (bench.heap)
def results_frame(
    session: Session,
    run_ids: list[int] | None = None,
    *,
    with_samples: bool = True,
    with_memory: bool = True,
    builds: list[str] | None = None,
    only: tuple[str, ...] | None = None,
) -> pd.DataFrame:
    """One row per stored result (of those runs, of those build names), in the `bench results --format json`
    contract's columns.

    Plain column selects (no ORM objects): the dashboard reads 100,000 results through here. Without samples
    the samples columns are empty lists; without memory the `memory` column is None (decoding 100,000 JSON
    documents nobody reads costs a second: `with_samples` reads them for the rows that are shown). `only`: of the
    results table's own fields, just these (and run_id), with the names of `_KEY_NAMES` (and the samples when
    `with_samples`): what a page's key reads of every result, a third of the time of the whole row, or what a
    comparison reads of two builds' 50,000 results."""
    if only is not None:
        frame = _some_fields(session, run_ids, builds, only)
        if with_samples and len(frame):
            attach_samples(session, frame, run_ids, builds)
        return frame
    fields = _RESULT_FIELDS if with_memory else tuple(f for f in _RESULT_FIELDS if f != "memory")
    found = _read_results(session, fields, run_ids, builds)
    if not with_memory:
        found["memory"] = [None] * len(found["run_id"])
    frame = pd.DataFrame(found if len(found["run_id"]) else [], columns=[*_RESULT_FIELDS, *_JOINED])
    empty: list[int] = []
    for test in SAMPLE_TESTS:
        frame[f"samples_{test}_ns"] = [empty] * len(frame)
    if with_samples and len(frame):
        attach_samples(session, frame, run_ids, builds)
    frame = frame[RESULT_COLUMNS]
    # nullable integers: a missing figure must not turn the others into floats (33.0 layers)
    return frame.astype({c: "Int64" for c in INT_COLUMNS})


def _some_fields(
    session: Session, run_ids: list[int] | None, builds: list[str] | None, only: tuple[str, ...]
) -> pd.DataFrame:
    fields = ("run_id", *(f for f in _RESULT_FIELDS if f in only and f != "run_id"))
    found = _read_results(session, fields, run_ids, builds, _KEY_NAMES)
    columns = [c for c in RESULT_COLUMNS if c in found]
    frame = pd.DataFrame(found if len(found["run_id"]) else [], columns=columns)
    return frame.astype({c: "Int64" for c in INT_COLUMNS if c in frame.columns})


def _read_results(
    session: Session,
    fields: tuple[str, ...],
    run_ids: list[int] | None,
    builds: list[str] | None,
    names: tuple[str, ...] = tuple(_JOINED),
) -> dict[str, list[Any]]:
    """Those fields of the results (of those runs and build names), ordered by run and result, with the names
    they join to. The results table alone is read; its builds, models, runs and machines once each and looked
    up by id: the same names repeated on 100,000 joined rows cost more to fetch than the figures."""
    stmt = select(*(getattr(Result, f) for f in fields), Result.id, Result.build_id, Result.model_id).order_by(
        Result.run_id, Result.id
    )
    if run_ids is not None:
        stmt = stmt.where(Result.run_id.in_(run_ids))
    if builds is not None:
        stmt = stmt.where(Result.build_id.in_(select(Build.id).where(Build.name.in_(builds))))
    return _joined(session, read_columns(session, stmt), names)


def _joined(
    session: Session, found: dict[str, list[Any]], names: tuple[str, ...] = tuple(_JOINED)
) -> dict[str, list[Any]]:
    """The columns of `_JOINED` (those `names`) for results read without joins (their id, build_id, model_id and
    run_id)."""
    tables: dict[Any, dict[Any, tuple[Any, ...]]] = {}
    for key, columns in (
        (Build.id, [c for c in _JOINED.values() if c.table is Build.__table__]),
        (Model.id, [Model.name]),
        (Machine.id, [Machine.hostname, Machine.fingerprint, Machine.gpu]),
        (Run.id, [Run.machine_id, Run.source]),
    ):
        tables[key] = {row[0]: tuple(row[1:]) for row in session.execute(select(key, *columns))}
    builds, models, machines, runs = tables.values()
    on = {r: (*machines[m], source) for r, (m, source) in runs.items()}
    out = {k: v for k, v in found.items() if k not in ("id", "build_id", "model_id")}
    out["result_id"] = found["id"]
    build_cols = [name for name, c in _JOINED.items() if c.table is Build.__table__]
    for n, name in enumerate(build_cols):
        if name in names:
            out[name] = [builds[b][n] for b in found["build_id"]]
    out["model"] = [models[m][0] for m in found["model_id"]]
    for n, name in enumerate(("machine", "machine_fingerprint", "gpu", "source")):
        if name in names:
            out[name] = [on[r][n] for r in found["run_id"]]
    return out


def with_samples(session: Session, frame: pd.DataFrame, run_ids: list[int] | None = None) -> pd.DataFrame:
    """A copy of a `results_frame(session, with_samples=False, with_memory=False)` read (of the whole store, or of
    `run_ids` only), its samples and memory filled in: what `results_frame(session, run_ids)` returns, without
    reading the results again."""
    out = frame[RESULT_COLUMNS].copy()
    if len(out):
        attach_samples(session, out, run_ids)
        stmt = select(Result.id, Result.memory)
        if run_ids is not None:
            stmt = stmt.where(Result.run_id.in_(run_ids))
        ids, documents = read_columns(session, stmt).values()
        memory = dict(zip(ids, documents, strict=True))
        out["memory"] = [memory[i] for i in out["result_id"].tolist()]
    return out


def attach_samples(
    session: Session, frame: pd.DataFrame, run_ids: list[int] | None, builds: list[str] | None = None
) -> None:
    """Fill the samples_*_ns columns of `frame` (the results of `run_ids` and `builds`, or of the whole store)
    in place."""
    empty: list[int] = []
    series = _sample_series(session, run_ids, builds)
    ids = frame["result_id"].tolist()
    for test in SAMPLE_TESTS:
        lists = series[test]
        frame[f"samples_{test}_ns"] = [lists.get(i, empty) for i in ids]


def read_columns(session: Session, stmt: Select[*tuple[Any, ...]]) -> dict[str, list[Any]]:
    """The statement's rows as one list per column, each converted by the result processor SQLAlchemy itself
    applies (dates, JSON), a column at a time: one Row object per result costs seconds at 100,000 results."""
    connection = session.connection()
    result = connection.execute(stmt)
    try:
        rows = result.cursor.fetchall()  # the driver's plain tuples; the conversions follow, column by column
        described = result.cursor.description
    finally:
        result.close()
    out: dict[str, list[Any]] = {}
    # rows to columns in one pass in C (a list comprehension per column costs 0.15 s at 100,000 results)
    by_column = list(zip(*rows, strict=True)) if rows else [() for _ in described]
    for n, (name, column) in enumerate(zip(result.keys(), stmt.selected_columns, strict=True)):
        values = list(by_column[n])
        impl = column.type.dialect_impl(connection.dialect)
        process = impl.result_processor(connection.dialect, described[n][1])
        out[name] = [None if v is None else process(v) for v in values] if process is not None else values
    return out


def _sample_series(
    session: Session, run_ids: list[int] | None, builds: list[str] | None = None
) -> dict[str, dict[int, list[int]]]:
    """Each test's samples of each result, in the order they were measured.

    A series a row (bench.store.models.SampleSeries), every test's in one read through the DBAPI cursor, and
    unpacked all at once: the store's million samples are 200,000 rows, each a few bytes to slice, not an object
    per sample (a read per test walked the results once per test, the empty ones too)."""
    sel = select(SampleSeries.result_id, SampleSeries.test, SampleSeries.ns)
    if run_ids is not None or builds is not None:
        sel = sel.join(Result, SampleSeries.result_id == Result.id)
    if run_ids is not None:
        sel = sel.where(Result.run_id.in_(run_ids))
    if builds is not None:
        sel = sel.where(Result.build_id.in_(select(Build.id).where(Build.name.in_(builds))))
    connection = session.connection()
    compiled = sel.compile(dialect=connection.dialect, compile_kwargs={"literal_binds": True})
    cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(str(compiled))
        rows = cursor.fetchall()
    finally:
        cursor.close()
    out: dict[str, dict[int, list[int]]] = {test: {} for test in SAMPLE_TESTS}
    if not rows:
        return out
    ids, tests, packed = zip(*rows, strict=True)
    # PostgreSQL's driver hands back memoryviews
    blobs = packed if isinstance(packed[0], bytes) else [bytes(b) for b in packed]
    ends = np.cumsum(np.fromiter(map(len, blobs), dtype=np.int64, count=len(blobs)) // 8)
    starts = np.r_[0, ends[:-1]]
    flat = np.frombuffer(b"".join(blobs), dtype="<i8").tolist()  # one conversion, then list slices (in C)
    lists = map(flat.__getitem__, map(slice, starts.tolist(), ends.tolist()))
    for test, result_id, values in zip(tests, ids, lists, strict=True):
        out[test][result_id] = values
    return out


def sample_count(session: Session, tests: tuple[str, ...] = SAMPLE_TESTS) -> int:
    """How many samples (of those tests) the store holds: 8 bytes each in their packed series."""
    stmt = select(func.coalesce(func.sum(func.length(SampleSeries.ns)), 0)).where(SampleSeries.test.in_(tests))
    return int(session.scalar(stmt) or 0) // 8


def run_settings(session: Session) -> dict[int, dict[str, Any]]:
    """Each run's settings document (its suite, interleaving, builds), by run id."""
    ids, documents = read_columns(session, select(Run.id, Run.settings)).values()
    return dict(zip(ids, documents, strict=True))


def runs_frame(session: Session) -> pd.DataFrame:
    stmt = (
        select(
            Run.id,
            Run.started_at,
            Run.finished_at,
            Run.status,
            Run.source,
            Machine.hostname,
            Machine.fingerprint,
            Machine.gpu,
            Run.settings,
            Run.machine_id,
        )
        .join(Machine, Run.machine_id == Machine.id)
        .order_by(Run.id)
    )
    frame = pd.DataFrame(
        session.execute(stmt).all(),
        columns=[
            "run_id",
            "started_at",
            "finished_at",
            "status",
            "source",
            "machine",
            "machine_fingerprint",
            "gpu",
            "settings",
            "machine_id",
        ],
    )
    # counted by the database: a store of 100,000 results has 1,000 runs to report, not 100,000 rows to ship
    ok = func.sum(case((Result.status == Status.OK.value, 1), else_=0))
    counts = {r: (n, k) for r, n, k in session.execute(select(Result.run_id, func.count(), ok).group_by(Result.run_id))}
    frame["results"] = [counts.get(r, (0, 0))[0] for r in frame["run_id"]]
    frame["ok"] = [int(counts.get(r, (0, 0))[1] or 0) for r in frame["run_id"]]
    frame["builds"] = [", ".join(s.get("builds", [])) if isinstance(s, dict) else "" for s in frame["settings"]]
    return frame


def attach_logs(session: Session, frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` (whole runs' results) with each result's load log, read by run (the same query for `bench results
    --logs` and the site's run pages; a run's few ids bind, not one parameter per result)."""
    logs = run_logs(session, sorted({int(r) for r in frame["run_id"]}))
    return frame.assign(log=[logs.get(int(i), "") for i in frame["result_id"]])


def run_logs(session: Session, run_ids: list[int]) -> dict[int, str]:
    """The load log of every result of those runs, by result id (joined by run: no list of result ids)."""
    stmt = (
        select(ResultLog.result_id, ResultLog.text)
        .join(Result, ResultLog.result_id == Result.id)
        .where(Result.run_id.in_(run_ids))
    )
    return dict(zip(*read_columns(session, stmt).values(), strict=True))


def run_or_latest(session: Session, run_id: int | None) -> int:
    if run_id is None:
        # newest by finish time, not by id: runs pushed from other runners arrive out of order
        newest = (Run.finished_at.is_(None), Run.finished_at.desc(), Run.started_at.desc(), Run.id.desc())
        latest = session.scalar(select(Run.id).order_by(*newest).limit(1))
        if latest is None:
            raise StoreError("the store holds no runs yet: `bench run` first")
        return latest
    if session.get(Run, run_id) is None:
        raise StoreError(f"no run {run_id} in the store")
    return run_id


def result_log(session: Session, result_id: int) -> str:
    log = session.get(ResultLog, result_id)
    return log.text if log else ""


def builds_frame(session: Session) -> pd.DataFrame:
    rows = session.execute(select(Build)).scalars().all()
    return pd.DataFrame(
        [
            {
                c: getattr(b, c)
                for c in (
                    "id",
                    "name",
                    "identity_sha",
                    "llama_cpp_version",
                    "system_info",
                    "lib_path",
                    "lib_sha256",
                    "ggml_sha256",
                    "python",
                    "supports_gpu_offload",
                    "details",
                )
            }
            for b in rows
        ]
    )


def machines_frame(session: Session) -> pd.DataFrame:
    """Every machine with what the site shows of it (host, CPU, GPU, memory)."""
    cols = ("id", "fingerprint", "hostname", "os", "arch", "cpu", "gpu", "host_mem_bytes", "device_budget_bytes")
    rows = session.execute(select(*(getattr(Machine, c) for c in cols))).all()
    return pd.DataFrame([tuple(r) for r in rows], columns=list(cols))
