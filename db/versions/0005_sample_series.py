"""samples as one row per result and test (packed little-endian int64 nanoseconds), not one row per repetition

Revision ID: 0005
Revises: 0001

A store of 100,000 results held a million sample rows; every comparison and dashboard read them row by row. The
rows are packed in order of their seq, result by result, in batches (the migration runs in the caller's one
transaction: bench.store.db.upgrade).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0001"
branch_labels = None
depends_on = None

BATCH = 10_000  # results a step: their rows are read, packed and written, then the next results'
_SERIES = sa.table(
    "sample_series", sa.column("result_id", sa.Integer), sa.column("test", sa.String), sa.column("ns", sa.LargeBinary)
)
_ROWS = sa.table(
    "samples",
    sa.column("result_id", sa.Integer),
    sa.column("test", sa.String),
    sa.column("seq", sa.BigInteger),
    sa.column("ns", sa.BigInteger),
)


# the format of bench.store.models.pack_ns, written out here: a migration keeps converting to the format of its
# revision whatever later code does
def _pack(values: list[int]) -> bytes:
    return struct.pack(f"<{len(values)}q", *values)


def _series(rows: Iterator[tuple[int, str, int]]) -> Iterator[dict[str, object]]:
    """Rows ordered by result, test and seq → one packed series per result and test."""
    key, values = None, []
    for result_id, test, ns in rows:
        if (result_id, test) != key:
            if key is not None:
                yield {"result_id": key[0], "test": key[1], "ns": _pack(values)}
            key, values = (result_id, test), []
        values.append(int(ns))
    if key is not None:
        yield {"result_id": key[0], "test": key[1], "ns": _pack(values)}


def _by_results(conn: sa.Connection, table: sa.TableClause, order: list[sa.ColumnElement[object]]) -> Iterator[list]:
    """The table's rows, `BATCH` result ids at a time, in `order` (never a cursor left open while writing)."""
    low, high = conn.execute(sa.select(sa.func.min(table.c.result_id), sa.func.max(table.c.result_id))).one()
    if low is None:
        return
    for start in range(int(low), int(high) + 1, BATCH):
        yield list(
            conn.execute(table.select().where(table.c.result_id.between(start, start + BATCH - 1)).order_by(*order))
        )


def upgrade() -> None:
    op.create_table(
        "sample_series",
        sa.Column("result_id", sa.Integer(), nullable=False),
        sa.Column("test", sa.String(length=8), nullable=False),
        sa.Column("ns", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["result_id"], ["results.id"]),
        sa.PrimaryKeyConstraint("result_id", "test"),
    )
    conn = op.get_bind()
    for rows in _by_results(conn, _ROWS, [_ROWS.c.result_id, _ROWS.c.test, _ROWS.c.seq]):
        packed = list(_series((r.result_id, r.test, r.ns) for r in rows))
        if packed:
            conn.execute(_SERIES.insert(), packed)
    with op.batch_alter_table("samples", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_samples_result_id"))
    op.drop_table("samples")


def downgrade() -> None:
    op.create_table(
        "samples",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("result_id", sa.Integer(), nullable=False),
        sa.Column("test", sa.String(length=8), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("ns", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["result_id"], ["results.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("samples", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_samples_result_id"), ["result_id"], unique=False)
    conn = op.get_bind()
    for series in _by_results(conn, _SERIES, [_SERIES.c.result_id, _SERIES.c.test]):
        rows = [
            {"result_id": s.result_id, "test": s.test, "seq": seq, "ns": ns}
            for s in series
            for seq, ns in enumerate(struct.unpack(f"<{len(s.ns) // 8}q", s.ns))
        ]
        if rows:
            conn.execute(_ROWS.insert(), rows)
    op.drop_table("sample_series")
