"""The size and SHA-256 of a staged upload that one stream wrote whole
(staged_uploads.size_bytes, .sha256), hashed while it was written, so
SubmitVideo takes them instead of reading the whole upload again.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("staged_uploads") as batch:
        batch.add_column(sa.Column("size_bytes", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("sha256", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("staged_uploads") as batch:
        batch.drop_column("sha256")
        batch.drop_column("size_bytes")
