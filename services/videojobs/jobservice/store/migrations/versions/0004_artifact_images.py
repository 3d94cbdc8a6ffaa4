"""Image metadata of artifacts (thumbnails): size, time, position.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_COLUMNS = ("width", "height", "time_seconds", "series_index", "frame_index")


def upgrade() -> None:
    with op.batch_alter_table("job_artifacts") as batch:
        batch.add_column(sa.Column("width", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("height", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("time_seconds", sa.Float(), nullable=False, server_default="0"))
        batch.add_column(
            sa.Column("series_index", sa.Integer(), nullable=False, server_default="0")
        )
        batch.add_column(
            sa.Column("frame_index", sa.BigInteger(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("job_artifacts") as batch:
        for column in _COLUMNS:
            batch.drop_column(column)
