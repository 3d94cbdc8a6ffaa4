"""Attempt history, priority, retry backoff and timeouts.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op

from videojobs.jobservice.store.models import UtcDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# Defaults for rows written by 0001: probe's execution timeout, and a dispatch
# rank that keeps their acceptance order (position) ahead of anything new.
_PIPELINE_DEFAULT_TIMEOUT = 600.0


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("priority", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("dispatch_rank", sa.Float(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("available_at", UtcDateTime(), nullable=True))
        batch.add_column(
            sa.Column(
                "execution_timeout_seconds",
                sa.Float(),
                nullable=False,
                server_default=str(_PIPELINE_DEFAULT_TIMEOUT),
            )
        )
        batch.add_column(sa.Column("execution_deadline_at", UtcDateTime(), nullable=True))
        batch.add_column(sa.Column("queue_timeout_seconds", sa.Float(), nullable=True))
        batch.add_column(sa.Column("queue_deadline_at", UtcDateTime(), nullable=True))
        batch.add_column(
            sa.Column("failed_attempts", sa.Integer(), nullable=False, server_default="0")
        )
        batch.add_column(
            sa.Column("lease_losses", sa.Integer(), nullable=False, server_default="0")
        )
        batch.drop_index("ix_jobs_state_pipeline_position")
        batch.create_index(
            "ix_jobs_state_pipeline_dispatch_rank", ["state", "pipeline", "dispatch_rank"]
        )
        batch.create_index(
            "ix_jobs_state_execution_deadline_at", ["state", "execution_deadline_at"]
        )
        batch.create_index("ix_jobs_state_queue_deadline_at", ["state", "queue_deadline_at"])
    # Older jobs keep their order: rank them by position, before any new job
    # (whose rank is an epoch time in seconds). The server defaults stay, so a
    # replica still running the previous version can go on inserting rows
    # during a rolling upgrade.
    op.execute("UPDATE jobs SET dispatch_rank = position")
    op.create_table(
        "job_attempts",
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("worker_id", sa.String(128), nullable=False),
        sa.Column("started_at", UtcDateTime(), nullable=False),
        sa.Column("ended_at", UtcDateTime(), nullable=True),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("error_code", sa.String(32), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("error_reason", sa.String(64), nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.job_id"], name=op.f("fk_job_attempts_job_id_jobs")
        ),
        sa.PrimaryKeyConstraint("job_id", "number", name=op.f("pk_job_attempts")),
    )


def downgrade() -> None:
    op.drop_table("job_attempts")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_state_queue_deadline_at")
        batch.drop_index("ix_jobs_state_execution_deadline_at")
        batch.drop_index("ix_jobs_state_pipeline_dispatch_rank")
        batch.create_index("ix_jobs_state_pipeline_position", ["state", "pipeline", "position"])
        for column in (
            "lease_losses",
            "failed_attempts",
            "queue_deadline_at",
            "queue_timeout_seconds",
            "execution_deadline_at",
            "execution_timeout_seconds",
            "available_at",
            "dispatch_rank",
            "priority",
        ):
            batch.drop_column(column)
