"""change points over nightly history: shifts of a metric and changes of load status per build line

Revision ID: 0004
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "change_points",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("machine_id", sa.Integer(), nullable=False),
        sa.Column("build_name", sa.String(length=255), nullable=False),
        sa.Column("model_name", sa.String(length=255), nullable=False),
        sa.Column("metric", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("reference", sa.String(length=255), server_default="", nullable=False),
        sa.Column("run_before_id", sa.Integer(), nullable=False),
        sa.Column("run_after_id", sa.Integer(), nullable=False),
        sa.Column("build_before_id", sa.Integer(), nullable=False),
        sa.Column("build_after_id", sa.Integer(), nullable=False),
        sa.Column("value_before", sa.Double(), nullable=True),
        sa.Column("value_after", sa.Double(), nullable=True),
        sa.Column("shift_pct", sa.Double(), nullable=True),
        sa.Column("status_before", sa.String(length=32), nullable=False),
        sa.Column("status_after", sa.String(length=32), nullable=False),
        sa.Column("detected_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("first_reported_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["machine_id"], ["machines.id"]),
        sa.ForeignKeyConstraint(["run_before_id"], ["runs.id"]),
        sa.ForeignKeyConstraint(["run_after_id"], ["runs.id"]),
        sa.ForeignKeyConstraint(["build_before_id"], ["builds.id"]),
        sa.ForeignKeyConstraint(["build_after_id"], ["builds.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("machine_id", "build_name", "model_name", "metric", "run_after_id", "reference"),
    )


def downgrade() -> None:
    op.drop_table("change_points")
