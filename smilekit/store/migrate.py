"""Schema migrations of the feedback database (Alembic), run by ``FeedbackStore`` when it opens a database.

The revisions live in ``smilekit/store/migrations/versions/`` and ship with the package; the first one is the
schema as it was before migrations, and upgrades a database written then in place. A change to the
schema is a new revision there (``down_revision`` = the previous one), never an edit of an old one, and
``HEAD`` below names it (a test checks). Upgrades take a lock first (SQLite ``BEGIN IMMEDIATE``, a
PostgreSQL advisory lock), so app kernels opening the same database at once upgrade it once. A database
already at ``HEAD`` is only read, with plain SQL: Alembic is imported only when there is work for it.
"""
from __future__ import annotations

from pathlib import Path

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine

MIGRATIONS = Path(__file__).parent / "migrations"
#: the newest revision in MIGRATIONS/versions
HEAD = "0004"
#: any fixed number: the PostgreSQL advisory lock that one upgrade at a time holds
_PG_LOCK = 0x5311E


def _config(connection: Connection | None = None):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head() -> str:
    """The newest revision, as Alembic reads it from the revision files."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_config()).get_current_head()


def current(connection: Connection) -> str | None:
    """The database's revision (None: never migrated, whether empty or written before migrations)."""
    if "alembic_version" not in inspect(connection).get_table_names():
        return None
    return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the database to ``revision`` (default the newest), in one locked transaction."""
    if revision == "head":
        with engine.connect() as conn:
            if current(conn) == HEAD:
                return
    from alembic import command

    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")  # one writer at a time from here on
        elif engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK})
        command.upgrade(_config(conn), revision)
