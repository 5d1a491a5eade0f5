"""run keys for push, one model per name, timestamps with time zone, indexes for newest-by-finish-time

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_TIMESTAMPS = (("runs", "started_at"), ("runs", "finished_at"), ("results", "started_at"), ("results", "finished_at"))


def _merge_models_by_name(conn: sa.Connection) -> None:
    """Before 0002 a model was (name, path): the same name imported from a moved path made a second row, and
    comparisons met two models of one name. Fold each name into its oldest row; a result that would then
    collide with one already there (same run and build) keeps its own model, renamed `NAME [path]`."""
    dups = conn.execute(sa.text("SELECT name FROM models GROUP BY name HAVING COUNT(*) > 1")).scalars().all()
    for name in dups:
        rows = conn.execute(sa.text("SELECT id, path FROM models WHERE name = :n ORDER BY id"), {"n": name}).all()
        keeper = rows[0][0]
        for model_id, path in rows[1:]:
            collide = conn.execute(
                sa.text(
                    "SELECT COUNT(*) FROM results r WHERE r.model_id = :m AND EXISTS (SELECT 1 FROM results k "
                    "WHERE k.model_id = :k AND k.run_id = r.run_id AND k.build_id = r.build_id)"
                ),
                {"m": model_id, "k": keeper},
            ).scalar_one()
            if collide:
                conn.execute(
                    sa.text("UPDATE models SET name = :new WHERE id = :m"), {"new": f"{name} [{path}]", "m": model_id}
                )
                continue
            conn.execute(sa.text("UPDATE results SET model_id = :k WHERE model_id = :m"), {"k": keeper, "m": model_id})
            conn.execute(sa.text("DELETE FROM models WHERE id = :m"), {"m": model_id})


def upgrade() -> None:
    conn = op.get_bind()
    postgres = conn.dialect.name == "postgresql"

    op.add_column("runs", sa.Column("uuid", sa.String(length=36), nullable=True))
    for (run_id,) in conn.execute(sa.text("SELECT id FROM runs")).all():
        conn.execute(sa.text("UPDATE runs SET uuid = :u WHERE id = :i"), {"u": str(uuid.uuid4()), "i": run_id})
    if postgres:  # SQLite would have to rebuild the table (and its foreign keys) for NOT NULL; the ORM sets it
        op.alter_column("runs", "uuid", existing_type=sa.String(length=36), nullable=False)
    op.create_index("uq_runs_uuid", "runs", ["uuid"], unique=True)

    _merge_models_by_name(conn)
    op.create_index("uq_models_name", "models", ["name"], unique=True)

    op.create_index("ix_runs_finished_at", "runs", ["finished_at"])
    op.create_index("ix_results_build_id", "results", ["build_id"])

    if postgres:  # SQLite has no column types to change: values stay UTC text
        for table, column in _TIMESTAMPS:
            op.alter_column(
                table,
                column,
                type_=sa.DateTime(timezone=True),
                existing_type=sa.DateTime(),
                postgresql_using=f"{column} AT TIME ZONE 'UTC'",
            )


def downgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name == "postgresql":
        for table, column in _TIMESTAMPS:
            op.alter_column(
                table,
                column,
                type_=sa.DateTime(),
                existing_type=sa.DateTime(timezone=True),
                postgresql_using=f"{column} AT TIME ZONE 'UTC'",
            )
    op.drop_index("ix_results_build_id", table_name="results")
    op.drop_index("ix_runs_finished_at", table_name="runs")
    op.drop_index("uq_models_name", table_name="models")
    op.drop_index("uq_runs_uuid", table_name="runs")
    with op.batch_alter_table("runs") as batch_op:
        batch_op.drop_column("uuid")
