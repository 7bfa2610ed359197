"""Each verdict says where its photo came from: ``source`` is 'upload' or 'camera' (NULL: an upload, as before).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if "source" not in {c["name"] for c in sa.inspect(op.get_bind()).get_columns("feedback")}:
        op.add_column("feedback", sa.Column("source", sa.String(16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("feedback") as batch:  # SQLite rebuilds the table to drop a column
        batch.drop_column("source")
