"""Retention: when a FAILED or CANCELLED job's input was removed, and an
index for finding jobs that ended (or were imported) long ago.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("input_removed_at", sa.DateTime(), nullable=True))
        batch.create_index("ix_jobs_state_updated_at", ["state", "updated_at"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_state_updated_at")
        batch.drop_column("input_removed_at")
