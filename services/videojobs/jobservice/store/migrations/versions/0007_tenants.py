"""Tenants: every job belongs to one (existing jobs to `default`, their keys
unchanged); idempotency keys are unique per tenant; staged uploads record
their owner.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(
            sa.Column("tenant", sa.String(64), nullable=False, server_default="default")
        )
        batch.drop_constraint("uq_jobs_request_id", type_="unique")
        batch.create_unique_constraint("uq_jobs_tenant_request_id", ["tenant", "request_id"])
        batch.create_index("ix_jobs_tenant_state", ["tenant", "state"])
        batch.create_index("ix_jobs_tenant_position", ["tenant", "position"])
    op.create_table(
        "staged_uploads",
        sa.Column("key", sa.String(128), nullable=False),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_staged_uploads")),
    )


def downgrade() -> None:
    op.drop_table("staged_uploads")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_tenant_position")
        batch.drop_index("ix_jobs_tenant_state")
        batch.drop_constraint("uq_jobs_tenant_request_id", type_="unique")
        batch.create_unique_constraint("uq_jobs_request_id", ["request_id"])
        batch.drop_column("tenant")
