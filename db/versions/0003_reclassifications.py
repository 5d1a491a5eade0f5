"""reclassifications: statuses changed when stored load logs were read again by newer rules

Revision ID: 0003
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reclassifications",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("result_id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("old_status", sa.String(length=32), nullable=False),
        sa.Column("new_status", sa.String(length=32), nullable=False),
        sa.Column("old_reason", sa.Text(), nullable=True),
        sa.Column("new_reason", sa.Text(), nullable=False),
        sa.Column("phase", sa.String(length=32), nullable=False),
        sa.Column("line_no", sa.BigInteger(), nullable=True),
        sa.Column("reclassified_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["result_id"], ["results.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("reclassifications", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_reclassifications_result_id"), ["result_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_reclassifications_run_id"), ["run_id"], unique=False)


def downgrade() -> None:
    op.drop_table("reclassifications")
