"""A job's pipelines as a set (job_pipelines, one row per pipeline, converted
from the `+`-joined name); the dispatch session holding a lease
(jobs.lease_session); the dispatch index no longer involves the name.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# How the display name joined a set's pipelines before 0008 (and still does).
SEPARATOR = "+"
BATCH = 1000


def upgrade() -> None:
    op.create_table(
        "job_pipelines",
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("pipeline", sa.String(64), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.job_id"], name=op.f("fk_job_pipelines_job_id_jobs")
        ),
        sa.PrimaryKeyConstraint("job_id", "pipeline", name=op.f("pk_job_pipelines")),
    )
    op.create_index("ix_job_pipelines_pipeline_job_id", "job_pipelines", ["pipeline", "job_id"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("lease_session", sa.String(32), nullable=True))
        batch.alter_column("pipeline", type_=sa.Text(), existing_type=sa.String(64))
        batch.drop_index("ix_jobs_state_pipeline_dispatch_rank")
        batch.create_index("ix_jobs_state_dispatch_rank", ["state", "dispatch_rank", "position"])
    _convert_pipeline_names()


def _convert_pipeline_names() -> None:
    """One job_pipelines row per name in every existing job's `a+b` name."""
    connection = op.get_bind()
    jobs = sa.table("jobs", sa.column("position"), sa.column("job_id"), sa.column("pipeline"))
    pipelines = sa.table("job_pipelines", sa.column("job_id"), sa.column("pipeline"))
    after = -1
    while True:
        rows = connection.execute(
            sa.select(jobs.c.position, jobs.c.job_id, jobs.c.pipeline)
            .where(jobs.c.position > after)
            .order_by(jobs.c.position)
            .limit(BATCH)
        ).all()
        if not rows:
            return
        values = [
            {"job_id": job_id, "pipeline": name}
            for _, job_id, joined in rows
            for name in sorted(set(filter(None, (joined or "").split(SEPARATOR))))
        ]
        if values:
            connection.execute(pipelines.insert(), values)
        after = rows[-1][0]


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_state_dispatch_rank")
        batch.create_index(
            "ix_jobs_state_pipeline_dispatch_rank", ["state", "pipeline", "dispatch_rank"]
        )
        batch.alter_column("pipeline", type_=sa.String(64), existing_type=sa.Text())
        batch.drop_column("lease_session")
    op.drop_index("ix_job_pipelines_pipeline_job_id", table_name="job_pipelines")
    op.drop_table("job_pipelines")
