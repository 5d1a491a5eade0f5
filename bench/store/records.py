"""Writing to the store: every function commits one complete unit, so a kill loses nothing finished."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Connection, Table, select
from sqlalchemy.orm import Session

from bench.builds import BuildIdentity
from bench.machine import MachineInfo
from bench.metrics import Status, mean_std, tokens_per_s
from bench.store.models import (
    Build,
    Machine,
    Model,
    Result,
    ResultLog,
    Run,
    SampleSeries,
    pack_ns,
    unpack_ns,
    utcnow,
)


def insert_if_absent(
    db: Session | Connection, table: Table, key: list[str], values: dict[str, Any], *, returning: Any = None
) -> Any:
    """INSERT … ON CONFLICT DO NOTHING: runners writing into one database at once never trip over a row
    another one inserted between their look-up and their insert. With `returning`: that column of the new
    row, or None when the row was there already."""
    from sqlalchemy.dialects import postgresql, sqlite  # here, not at import: reading commands never insert

    dialect = (db.get_bind() if isinstance(db, Session) else db).dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(table).values(**values).on_conflict_do_nothing(index_elements=key)
    if returning is None:
        db.execute(stmt)
        return None
    return db.execute(stmt.returning(returning)).scalar()


def upsert_machine(session: Session, info: MachineInfo) -> Machine:
    insert_if_absent(
        session,
        Machine.__table__,  # type: ignore[arg-type]
        ["fingerprint"],
        {
            "fingerprint": info.fingerprint,
            "hostname": info.hostname,
            "os": info.os,
            "arch": info.arch,
            "cpu": info.cpu,
            "gpu": info.gpu,
            "host_mem_bytes": info.host_mem_bytes,
            "device_budget_bytes": info.device_budget_bytes,
            "details": info.as_dict(),
        },
    )
    return session.scalars(select(Machine).where(Machine.fingerprint == info.fingerprint)).one()


def upsert_build(session: Session, ident: BuildIdentity, source: str = "perfgate") -> Build:
    identity_sha = ident.identity_sha
    insert_if_absent(
        session,
        Build.__table__,  # type: ignore[arg-type]
        ["name", "identity_sha"],
        {
            "name": ident.name,
            "identity_sha": identity_sha,
            "llama_cpp_version": ident.llama_cpp_version,
            "system_info": ident.system_info,
            "lib_path": ident.lib_path,
            "lib_sha256": ident.lib_sha256,
            "ggml_sha256": ident.ggml_sha256,
            "python": ident.python,
            "supports_gpu_offload": ident.supports_gpu_offload,
            "details": {**ident.details, "recorded_by": source, "usable": ident.ok},
        },
    )
    return session.scalars(select(Build).where(Build.name == ident.name, Build.identity_sha == identity_sha)).one()


def upsert_model(
    session: Session, name: str, path: str, file_bytes: int | None, n_layer: int | None, details: dict[str, Any]
) -> Model:
    """A model is its name (one row per name): the same name from a moved path, or from another runner's
    models folder, is the same model; `path` is where it was first seen. The row is only written when it
    learns something, so runners sharing a database do not queue on it."""
    insert_if_absent(
        session,
        Model.__table__,  # type: ignore[arg-type]
        ["name"],
        {"name": name, "path": path, "file_bytes": file_bytes, "n_layer": n_layer, "details": details},
    )
    model = session.scalars(select(Model).where(Model.name == name)).one()
    if model.file_bytes is None and file_bytes is not None:
        model.file_bytes = file_bytes
    if model.n_layer is None and n_layer is not None:
        model.n_layer = n_layer
    merged = {**model.details, **details}
    if merged != model.details:
        model.details = merged
    session.flush()
    return model


T = TypeVar("T")


@dataclass
class Figures:
    """What a measurement says beside its samples, one typed field per result column (None: not said). Engines
    that report only a mean and stddev (old llama-bench) give pp_ts/tg_ts here; samples, when there are any,
    decide them instead."""

    load_s: float | None = None
    pp_ts: float | None = None
    pp_ts_std: float | None = None
    tg_ts: float | None = None
    tg_ts_std: float | None = None
    layers_offloaded: int | None = None
    layers_total: int | None = None
    backend: str | None = None
    model_bytes: int | None = None
    model_buf_bytes: int | None = None
    kv_bytes: int | None = None
    compute_bytes: int | None = None
    gpu_used_bytes: int | None = None
    device_budget_bytes: int | None = None
    exit_code: int | None = None
    signal: str | None = None
    rss_peak_bytes: int | None = None


@dataclass
class Measurement:
    """One worker's outcome, ready to be stored."""

    status: str
    reason: str
    n_prompt: int
    n_gen: int
    samples_pp_ns: list[int] = field(default_factory=list)
    samples_tg_ns: list[int] = field(default_factory=list)
    log: str = ""
    figures: Figures = field(default_factory=Figures)
    memory: dict[str, Any] = field(default_factory=dict)
    samples_load_ns: list[int] = field(default_factory=list)  # one per fresh-process load, where measured
    engine_info: dict[str, Any] = field(default_factory=dict)  # what the engine said of the build (llama-bench)


def _said(stored: T | None, new: T | None) -> T | None:
    """A later round's figure replaces the stored one; a round that does not say keeps it."""
    return stored if new is None else new


def record_result(
    session: Session,
    run_id: int,
    build_id: int,
    model_id: int,
    m: Measurement,
    *,
    rounds_total: int = 1,
    started_at: datetime | None = None,
    finished_at: datetime | None = None,
    commit: bool = True,
) -> Result:
    """Store (or extend, for interleaved rounds) one result and commit it (or leave the commit to an
    importer that writes a whole file in one transaction)."""
    result_key = {"run_id": run_id, "build_id": build_id, "model_id": model_id}
    insert_if_absent(
        session,
        Result.__table__,  # type: ignore[arg-type]
        list(result_key),
        {
            **result_key,
            "status": m.status,
            "reason": m.reason,
            "n_prompt": m.n_prompt,
            "n_gen": m.n_gen,
            "repetitions": 0,
            "rounds_done": 0,
            "started_at": started_at or utcnow(),
            "memory": {},
        },
    )
    result = session.scalars(select(Result).where(*(getattr(Result, k) == v for k, v in result_key.items()))).one()
    if result.rounds_done and result.status != Status.OK and m.status == Status.OK:
        m = Measurement(result.status, result.reason or "", m.n_prompt, m.n_gen, log=m.log)  # a failed round sticks
    result.status, result.reason = m.status, m.reason
    f = m.figures
    result.load_s = _said(result.load_s, f.load_s)
    result.pp_ts = _said(result.pp_ts, f.pp_ts)
    result.pp_ts_std = _said(result.pp_ts_std, f.pp_ts_std)
    result.tg_ts = _said(result.tg_ts, f.tg_ts)
    result.tg_ts_std = _said(result.tg_ts_std, f.tg_ts_std)
    result.layers_offloaded = _said(result.layers_offloaded, f.layers_offloaded)
    result.layers_total = _said(result.layers_total, f.layers_total)
    result.backend = _said(result.backend, f.backend)
    result.model_bytes = _said(result.model_bytes, f.model_bytes)
    result.model_buf_bytes = _said(result.model_buf_bytes, f.model_buf_bytes)
    result.kv_bytes = _said(result.kv_bytes, f.kv_bytes)
    result.compute_bytes = _said(result.compute_bytes, f.compute_bytes)
    result.gpu_used_bytes = _said(result.gpu_used_bytes, f.gpu_used_bytes)
    result.device_budget_bytes = _said(result.device_budget_bytes, f.device_budget_bytes)
    result.exit_code = _said(result.exit_code, f.exit_code)
    result.signal = _said(result.signal, f.signal)
    result.rss_peak_bytes = max(filter(None, (result.rss_peak_bytes, f.rss_peak_bytes)), default=None)  # a peak
    result.memory = {**(result.memory or {}), **m.memory}
    # a round's samples follow the earlier rounds' in each test's series
    series = {s.test: s for s in result.series}
    samples = {test: unpack_ns(s.ns) for test, s in series.items()}
    for test, values in (("pp", m.samples_pp_ns), ("tg", m.samples_tg_ns), ("load", m.samples_load_ns)):
        if not values:
            continue
        samples[test] = [*samples.get(test, []), *(int(ns) for ns in values)]
        if test in series:
            series[test].ns = pack_ns(samples[test])
        else:
            result.series.append(SampleSeries(test=test, ns=pack_ns(samples[test])))
    pp, tg = samples.get("pp", []), samples.get("tg", [])
    if pp:
        result.pp_ts, result.pp_ts_std = mean_std(tokens_per_s(pp, result.n_prompt))
    if tg:
        result.tg_ts, result.tg_ts_std = mean_std(tokens_per_s(tg, result.n_gen))
    loads = samples.get("load", [])
    if loads:  # load time from fresh-process loads: the mean of them all
        result.load_s = sum(loads) / len(loads) / 1e9
    result.repetitions = max(len(pp), len(tg))
    result.rounds_done += 1
    if m.log:
        if result.log is None:
            result.log = ResultLog(text=m.log)
        elif m.status != Status.OK:
            result.log.text += f"\n--- round {result.rounds_done} ---\n{m.log}"
    if result.rounds_done >= rounds_total or m.status != Status.OK:
        # an import keeps the time the file says it was measured: "newest" means newest measured
        result.finished_at = finished_at or utcnow()
    if commit:
        session.commit()
    else:
        session.flush()
    return result


def finished_items(session: Session, run_id: int, rounds_total: int) -> dict[tuple[str, str], int]:
    """(build name, model name) → rounds already stored for a run."""
    rows = session.execute(
        select(Build.name, Model.name, Result.rounds_done, Result.status)
        .join(Result, Result.build_id == Build.id)
        .join(Model, Result.model_id == Model.id)
        .where(Result.run_id == run_id)
    ).all()
    return {(b, mo): (rounds_total if status != Status.OK else rounds) for b, mo, rounds, status in rows}


def start_run(
    session: Session,
    machine: Machine,
    settings: dict[str, Any],
    source: str = "perfgate",
    started_at: datetime | None = None,
) -> Run:
    run = Run(
        machine_id=machine.id, settings=settings, source=source, status="running", started_at=started_at or utcnow()
    )
    session.add(run)
    session.commit()
    return run


def finish_run(session: Session, run: Run, status: str = "complete") -> None:
    run.status, run.finished_at = status, utcnow()
    session.commit()
