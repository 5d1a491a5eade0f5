"""The schema, as typed SQLAlchemy 2.0 ORM classes. Alembic migrations under db/ create it."""

from __future__ import annotations

import struct
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def new_run_key() -> str:
    return str(uuid.uuid4())


class UTCDateTime(TypeDecorator[datetime]):
    """`timestamp with time zone` in the database; naive UTC in Python on every backend.

    PostgreSQL hands back aware values and SQLite naive ones: one convention keeps pandas from mixing them."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value if dialect.name == "sqlite" else value.replace(tzinfo=UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return value.astimezone(UTC).replace(tzinfo=None) if value is not None and value.tzinfo else value


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dict[str, Any]: JSON,
        int: BigInteger,
        datetime: UTCDateTime,
    }


class Machine(Base):
    __tablename__ = "machines"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    hostname: Mapped[str] = mapped_column(String(255))
    os: Mapped[str] = mapped_column(String(255))
    arch: Mapped[str] = mapped_column(String(64))
    cpu: Mapped[str] = mapped_column(String(255))
    gpu: Mapped[str | None] = mapped_column(String(255))
    host_mem_bytes: Mapped[int | None]
    device_budget_bytes: Mapped[int | None]
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Build(Base):
    __tablename__ = "builds"
    __table_args__ = (UniqueConstraint("name", "identity_sha"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), index=True)
    identity_sha: Mapped[str] = mapped_column(String(64))
    llama_cpp_version: Mapped[str | None] = mapped_column(String(64))
    system_info: Mapped[str | None] = mapped_column(Text)
    lib_path: Mapped[str | None] = mapped_column(Text)
    lib_sha256: Mapped[str | None] = mapped_column(String(64))
    ggml_sha256: Mapped[str | None] = mapped_column(String(64))
    python: Mapped[str | None] = mapped_column(Text)
    supports_gpu_offload: Mapped[bool | None]
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Model(Base):
    __tablename__ = "models"
    # a model is its name: the same name imported from a moved path is the same model (migration 0002)
    __table_args__ = (UniqueConstraint("name", "path"), Index("uq_models_name", "name", unique=True))
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), index=True)
    path: Mapped[str] = mapped_column(Text)
    file_bytes: Mapped[int | None]
    n_layer: Mapped[int | None]
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (Index("uq_runs_uuid", "uuid", unique=True),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # the run's identity across databases: `bench push` copies a run once, whatever its id is there
    uuid: Mapped[str] = mapped_column(String(36), default=new_run_key)
    machine_id: Mapped[int] = mapped_column(ForeignKey("machines.id"))
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(index=True)
    status: Mapped[str] = mapped_column(String(32), default="running")
    source: Mapped[str] = mapped_column(String(32), default="perfgate")
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    machine: Mapped[Machine] = relationship()
    results: Mapped[list[Result]] = relationship(back_populates="run", cascade="all, delete-orphan")


class Result(Base):
    __tablename__ = "results"
    __table_args__ = (UniqueConstraint("run_id", "build_id", "model_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True)
    build_id: Mapped[int] = mapped_column(ForeignKey("builds.id"), index=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    status: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str | None] = mapped_column(Text)
    rounds_done: Mapped[int] = mapped_column(default=0)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    n_prompt: Mapped[int]
    n_gen: Mapped[int]
    repetitions: Mapped[int]
    load_s: Mapped[float | None]
    pp_ts: Mapped[float | None]
    pp_ts_std: Mapped[float | None]
    tg_ts: Mapped[float | None]
    tg_ts_std: Mapped[float | None]
    layers_offloaded: Mapped[int | None]
    layers_total: Mapped[int | None]
    backend: Mapped[str | None] = mapped_column(String(64))
    model_bytes: Mapped[int | None]
    model_buf_bytes: Mapped[int | None]
    kv_bytes: Mapped[int | None]
    compute_bytes: Mapped[int | None]
    rss_peak_bytes: Mapped[int | None]
    gpu_used_bytes: Mapped[int | None]
    device_budget_bytes: Mapped[int | None]
    exit_code: Mapped[int | None]
    signal: Mapped[str | None] = mapped_column(String(32))
    memory: Mapped[dict[str, Any]] = mapped_column(default=dict)
    run: Mapped[Run] = relationship(back_populates="results")
    build: Mapped[Build] = relationship()
    model: Mapped[Model] = relationship()
    series: Mapped[list[SampleSeries]] = relationship(cascade="all, delete-orphan")
    log: Mapped[ResultLog | None] = relationship(cascade="all, delete-orphan")


class SampleSeries(Base):
    """A result's samples of one test, in the order they were measured: one row per result and test, its
    nanoseconds packed (`pack_ns`). A read of a million samples is a read of 200,000 rows, not of a million."""

    __tablename__ = "sample_series"
    result_id: Mapped[int] = mapped_column(ForeignKey("results.id"), primary_key=True)
    test: Mapped[str] = mapped_column(String(8), primary_key=True)  # "pp", "tg" or "load"
    ns: Mapped[bytes] = mapped_column(LargeBinary)


# samples are 64-bit nanosecond counts, little-endian whatever machine wrote or reads them
_NS = "<{}q"


def pack_ns(values: Sequence[int]) -> bytes:
    return struct.pack(_NS.format(len(values)), *values)


def unpack_ns(packed: bytes) -> list[int]:
    return list(struct.unpack(_NS.format(len(packed) // 8), packed))


class ResultLog(Base):
    __tablename__ = "result_logs"
    result_id: Mapped[int] = mapped_column(ForeignKey("results.id"), primary_key=True)
    text: Mapped[str] = mapped_column(Text)


class ChangePoint(Base):
    """Where one build line (machine × build name × model) changed between two successive runs: a shift of
    a metric (kind "shift") or of load status (kind "status", metric "status"). Written by bench.analysis.changes."""

    __tablename__ = "change_points"
    __table_args__ = (
        UniqueConstraint("machine_id", "build_name", "model_name", "metric", "run_after_id", "reference"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    machine_id: Mapped[int] = mapped_column(Integer, ForeignKey("machines.id"))
    build_name: Mapped[str] = mapped_column(String(255))
    model_name: Mapped[str] = mapped_column(String(255))
    metric: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(16))
    # "" for a line's own figures, else the build its figures were divided by (run by run)
    reference: Mapped[str] = mapped_column(String(255), default="", server_default="")
    run_before_id: Mapped[int] = mapped_column(Integer, ForeignKey("runs.id"))
    run_after_id: Mapped[int] = mapped_column(Integer, ForeignKey("runs.id"))
    build_before_id: Mapped[int] = mapped_column(Integer, ForeignKey("builds.id"))
    build_after_id: Mapped[int] = mapped_column(Integer, ForeignKey("builds.id"))
    value_before: Mapped[float | None]
    value_after: Mapped[float | None]
    shift_pct: Mapped[float | None]
    status_before: Mapped[str] = mapped_column(String(32))
    status_after: Mapped[str] = mapped_column(String(32))
    detected_at: Mapped[datetime] = mapped_column(default=utcnow)
    first_reported_at: Mapped[datetime | None]  # when `bench changes --new` first listed it; None: new


class Reclassification(Base):
    """A stored result whose status changed when `bench reclassify` read its log with newer rules:
    the history of what the rules said, so a changed status is explained, not silent."""

    __tablename__ = "reclassifications"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    result_id: Mapped[int] = mapped_column(Integer, ForeignKey("results.id", ondelete="CASCADE"), index=True)
    run_id: Mapped[int] = mapped_column(Integer, ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    old_status: Mapped[str] = mapped_column(String(32))
    new_status: Mapped[str] = mapped_column(String(32))
    old_reason: Mapped[str | None] = mapped_column(Text)
    new_reason: Mapped[str] = mapped_column(Text)
    phase: Mapped[str] = mapped_column(String(32))  # the phase the log reached, as the new rules read it
    line_no: Mapped[int | None]  # the deciding line in the stored log
    reclassified_at: Mapped[datetime] = mapped_column(default=utcnow)
