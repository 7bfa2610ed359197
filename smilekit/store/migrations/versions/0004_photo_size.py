"""Each verdict keeps the size of its photo: ``box_*`` are then in that photo's own pixels (after EXIF rotation).

Rows from before (``photo_width`` / ``photo_height`` NULL) hold boxes in the pixels of the app's reduced working
copy (at most 2,048 px on the long side), whose size was not stored.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    present = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("feedback")}
    for name in ("photo_width", "photo_height"):
        if name not in present:
            op.add_column("feedback", sa.Column(name, sa.Integer, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("feedback") as batch:  # SQLite rebuilds the table to drop a column
        batch.drop_column("photo_height")
        batch.drop_column("photo_width")
