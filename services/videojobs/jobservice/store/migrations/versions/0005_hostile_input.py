"""Hostile input: the container format recorded at upload, partial-result
bytes per job (a cap), and server secrets (the page-token signing key).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("input_format", sa.String(16), nullable=True))
        batch.add_column(
            sa.Column("partial_result_bytes", sa.BigInteger(), nullable=False, server_default="0")
        )
    op.create_table(
        "server_secrets",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("value", sa.String(128), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_server_secrets")),
    )


def downgrade() -> None:
    op.drop_table("server_secrets")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("partial_result_bytes")
        batch.drop_column("input_format")
