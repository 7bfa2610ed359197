"""The feedback schema as of 2026-11-24: the feedback table, its summary and the triggers that keep the summary.

A database written before migrations existed has some or all of this already and no version: each part is
created only where it is missing, so such a database upgrades in place and keeps its rows. The summary is
filled from the rows already there.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_BUCKET = "model_version, true_smiling, predicted_smiling"
_CHANGED = ("OLD.model_version IS DISTINCT FROM NEW.model_version OR OLD.true_smiling IS DISTINCT FROM NEW.true_smiling "
            "OR OLD.predicted_smiling IS DISTINCT FROM NEW.predicted_smiling")


def _bucket_sql(row: str, step: int) -> str:
    """Add ``step`` to the summary bucket of ``row`` (``NEW`` or ``OLD``), creating it when missing."""
    values = f"{row}.model_version, {row}.true_smiling, {row}.predicted_smiling"
    return (f"INSERT INTO feedback_summary ({_BUCKET}, verdicts) VALUES ({values}, {step}) "
            f"ON CONFLICT ({_BUCKET}) DO UPDATE SET verdicts = feedback_summary.verdicts + {step};")


#: the triggers that keep feedback_summary, per dialect (SQLite says IS NOT where PostgreSQL says IS DISTINCT FROM)
TRIGGERS = {
    "sqlite": [
        f"CREATE TRIGGER feedback_summary_insert AFTER INSERT ON feedback BEGIN {_bucket_sql('NEW', 1)} END",
        f"CREATE TRIGGER feedback_summary_delete AFTER DELETE ON feedback BEGIN {_bucket_sql('OLD', -1)} END",
        f"CREATE TRIGGER feedback_summary_update AFTER UPDATE ON feedback WHEN {_CHANGED.replace('IS DISTINCT FROM', 'IS NOT')} "
        f"BEGIN {_bucket_sql('OLD', -1)} {_bucket_sql('NEW', 1)} END",
    ],
    "postgresql": [
        # a changed verdict moves between two buckets: always in the same order, so that two transactions
        # moving in opposite directions wait for each other instead of deadlocking
        "CREATE OR REPLACE FUNCTION feedback_summary_apply() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "IF TG_OP = 'INSERT' THEN " + _bucket_sql('NEW', 1) + " "
        "ELSIF TG_OP = 'DELETE' THEN " + _bucket_sql('OLD', -1) + " "
        "ELSIF (NEW.model_version, NEW.true_smiling, NEW.predicted_smiling) < (OLD.model_version, OLD.true_smiling, "
        "OLD.predicted_smiling) THEN " + _bucket_sql('NEW', 1) + " " + _bucket_sql('OLD', -1) + " "
        "ELSE " + _bucket_sql('OLD', -1) + " " + _bucket_sql('NEW', 1) + " END IF; "
        "RETURN NULL; END $$",
        "CREATE TRIGGER feedback_summary_insert_delete AFTER INSERT OR DELETE ON feedback "
        "FOR EACH ROW EXECUTE FUNCTION feedback_summary_apply()",
        f"CREATE TRIGGER feedback_summary_update AFTER UPDATE ON feedback FOR EACH ROW WHEN ({_CHANGED}) "
        "EXECUTE FUNCTION feedback_summary_apply()",
        "CREATE OR REPLACE FUNCTION feedback_summary_clear() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "DELETE FROM feedback_summary; RETURN NULL; END $$",
        "CREATE TRIGGER feedback_summary_truncate AFTER TRUNCATE ON feedback "
        "FOR EACH STATEMENT EXECUTE FUNCTION feedback_summary_clear()",
    ],
}
_DROP = {
    "sqlite": ["DROP TRIGGER IF EXISTS feedback_summary_insert", "DROP TRIGGER IF EXISTS feedback_summary_delete",
               "DROP TRIGGER IF EXISTS feedback_summary_update"],
    "postgresql": ["DROP TRIGGER IF EXISTS feedback_summary_insert_delete ON feedback",
                   "DROP TRIGGER IF EXISTS feedback_summary_update ON feedback",
                   "DROP TRIGGER IF EXISTS feedback_summary_truncate ON feedback",
                   "DROP FUNCTION IF EXISTS feedback_summary_apply()", "DROP FUNCTION IF EXISTS feedback_summary_clear()"],
}


def _create_feedback() -> None:
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("photo_sha256", sa.String(64), nullable=False),
        sa.Column("face_index", sa.Integer, nullable=False),
        sa.Column("box_x", sa.Integer, nullable=False),
        sa.Column("box_y", sa.Integer, nullable=False),
        sa.Column("box_w", sa.Integer, nullable=False),
        sa.Column("box_h", sa.Integer, nullable=False),
        sa.Column("predicted_smiling", sa.Boolean, nullable=False),
        sa.Column("probability", sa.Float, nullable=False),
        sa.Column("model_version", sa.String(128), nullable=False),
        sa.Column("verdict", sa.String(16), nullable=False),
        sa.Column("true_smiling", sa.Boolean, nullable=False),
        sa.Column("crop_png", sa.LargeBinary, nullable=True),
        sa.UniqueConstraint("session_id", "photo_sha256", "face_index", "model_version", name="uq_feedback_face"),
    )


def upgrade() -> None:
    bind = op.get_bind()
    dialect = bind.dialect.name
    inspector = sa.inspect(bind)
    tables = set(inspector.get_table_names())
    if "feedback" not in tables:
        _create_feedback()
    if "ix_feedback_recent" not in {i["name"] for i in (inspector.get_indexes("feedback") if "feedback" in tables else [])}:
        op.create_index("ix_feedback_recent", "feedback", ["updated_at", "id"])  # the most recent verdicts, without a scan
    if "feedback_summary" in tables or dialect not in TRIGGERS:
        return
    if dialect == "postgresql":
        op.execute("LOCK TABLE feedback IN SHARE ROW EXCLUSIVE MODE")  # no verdict written while the summary is filled
    op.create_table(
        "feedback_summary",
        sa.Column("model_version", sa.String(128), primary_key=True),
        sa.Column("true_smiling", sa.Boolean, primary_key=True),
        sa.Column("predicted_smiling", sa.Boolean, primary_key=True),
        sa.Column("verdicts", sa.BigInteger, nullable=False),
    )
    for statement in TRIGGERS[dialect]:
        op.execute(statement)
    op.execute(f"INSERT INTO feedback_summary ({_BUCKET}, verdicts) SELECT {_BUCKET}, count(*) FROM feedback GROUP BY {_BUCKET}")


def downgrade() -> None:
    for statement in _DROP.get(op.get_bind().dialect.name, []):
        op.execute(statement)
    op.drop_table("feedback_summary")
    op.drop_index("ix_feedback_recent", "feedback")
    op.drop_table("feedback")
