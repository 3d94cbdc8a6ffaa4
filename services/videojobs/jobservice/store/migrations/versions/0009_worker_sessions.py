"""The workers connected to job-service (worker_sessions: one row per open
dispatch stream, on whichever replica holds it), for ListWorkers.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

from videojobs.jobservice.store.models import UtcDateTime

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "worker_sessions",
        sa.Column("session_id", sa.String(32), nullable=False),
        sa.Column("worker_id", sa.String(128), nullable=False),
        sa.Column("status_address", sa.String(256), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("pipelines", sa.JSON(), nullable=False),
        sa.Column("slots", sa.Integer(), nullable=False),
        sa.Column("draining", sa.Boolean(), nullable=False),
        sa.Column("connected_at", UtcDateTime(), nullable=False),
        sa.Column("last_seen_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("session_id", name=op.f("pk_worker_sessions")),
    )
    op.create_index("ix_worker_sessions_worker_id", "worker_sessions", ["worker_id"])
    op.create_index("ix_worker_sessions_last_seen_at", "worker_sessions", ["last_seen_at"])


def downgrade() -> None:
    op.drop_index("ix_worker_sessions_last_seen_at", table_name="worker_sessions")
    op.drop_index("ix_worker_sessions_worker_id", table_name="worker_sessions")
    op.drop_table("worker_sessions")
