"""Calibrations fitted on a deployment's verdicts (``smilekit.calibration``): one row per fit, per model version.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "calibration",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model_version", sa.String(128), nullable=False),
        sa.Column("slope", sa.Float, nullable=False),
        sa.Column("offset", sa.Float, nullable=False),
        sa.Column("verdicts", sa.Integer, nullable=False),
        sa.Column("accuracy_before", sa.Float, nullable=False),
        sa.Column("accuracy_after", sa.Float, nullable=False),
    )
    op.create_index("ix_calibration_model", "calibration", ["model_version", "id"])


def downgrade() -> None:
    op.drop_index("ix_calibration_model", "calibration")
    op.drop_table("calibration")
