"""Feedback database migrations: a database written before migrations upgrades in place, on SQLite and PostgreSQL."""
from __future__ import annotations

import importlib
import io
import subprocess
import sys
import threading

import pytest
from PIL import Image
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from conftest import ROOT, new_pg_database
from smilekit.store import migrate
from smilekit.store.feedback import Base, FeedbackStore

#: main just before migrations came in: its FeedbackStore writes a database "as today's code does"
LEGACY_COMMIT = "09dd077e961067dce851f081b9daae0e14f0e4f0"


@pytest.fixture(scope="session")
def legacy(tmp_path_factory):
    """``smilekit/feedback.py`` (with its settings) as of LEGACY_COMMIT, importable as ``legacy_smilekit.feedback``."""
    folder = tmp_path_factory.mktemp("legacy") / "legacy_smilekit"
    folder.mkdir()
    (folder / "__init__.py").write_text("")
    for name in ("feedback.py", "settings.py"):
        shown = subprocess.run(["git", "-C", str(ROOT), "show", f"{LEGACY_COMMIT}:smilekit/{name}"], capture_output=True)
        if shown.returncode:
            pytest.skip(f"git history with {LEGACY_COMMIT[:8]} not available: {shown.stderr.decode()[:200]}")
        (folder / name).write_bytes(shown.stdout)
    sys.path.insert(0, str(folder.parent))
    try:
        yield importlib.import_module("legacy_smilekit.feedback")
    finally:
        sys.path.remove(str(folder.parent))


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'feedback.db'}"
    return new_pg_database(request.getfixturevalue("postgres_server"))


def _png(shade: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (64, 64), 40 * shade).save(buf, format="PNG")
    return buf.getvalue()


def _fill(store) -> None:
    """Verdicts as the app writes them: two sessions, two model versions, crops for some, a changed mind."""
    for i in range(6):
        store.record(session_id=f"s{i % 2}", photo_sha256=f"{i:064x}", face_index=i % 3, box=(i, 2, 30, 30),
                     probability=0.2 + 0.12 * i, model_version=f"v{i % 2}", correct=i % 3 != 0,
                     crop_png=_png(i) if i % 2 else None)
    store.record(session_id="s0", photo_sha256=f"{0:064x}", face_index=0, box=(0, 2, 30, 30), probability=0.2,
                 model_version="v0", correct=True)  # clicked again: the verdict changes


def _version_rows(url) -> list:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(text("SELECT version_num FROM alembic_version")).scalars())
    finally:
        engine.dispose()


def _triggers(engine) -> list[str]:
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            return sorted(conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'trigger'")).scalars())
        return sorted(conn.execute(text("SELECT tgname FROM pg_trigger WHERE tgrelid = 'feedback'::regclass "
                                        "AND NOT tgisinternal")).scalars())


def _schema(engine) -> dict:
    """Tables, columns, keys, indexes and triggers as the database reports them (migration bookkeeping left out)."""
    found = inspect(engine)
    tables = sorted(t for t in found.get_table_names() if t != "alembic_version")
    return {
        "tables": tables,
        "columns": {t: [(c["name"], str(c["type"]), c["nullable"]) for c in found.get_columns(t)] for t in tables},
        "primary_keys": {t: found.get_pk_constraint(t)["constrained_columns"] for t in tables},
        "unique": {t: sorted((u["name"], tuple(u["column_names"])) for u in found.get_unique_constraints(t)) for t in tables},
        "indexes": {t: sorted((i["name"], tuple(i["column_names"]), bool(i["unique"])) for i in found.get_indexes(t)) for t in tables},
        "triggers": _triggers(engine),
    }


def test_head_names_the_newest_revision_file():
    assert migrate.HEAD == migrate.head()


def test_database_written_before_migrations_upgrades_in_place_keeping_every_row(legacy, db_url):
    old = legacy.FeedbackStore(db_url)
    _fill(old)
    rows, stats = old.rows(), old.stats()
    old.close()
    assert len(rows) == 6 and "alembic_version" not in inspect(create_engine(db_url)).get_table_names()

    store = FeedbackStore(db_url)
    with store.engine.connect() as conn:
        assert migrate.current(conn) == migrate.head()
    # every row, crop and count as before; rows from before verdicts had a source are uploads, and from before
    # 0004 have no photo size (their boxes are in the reduced working copy's pixels)
    assert store.rows() == [dict(row, source="upload", photo_size=None) for row in rows] and store.stats() == stats
    assert len(store.consented_crops()) == 3
    # the summary's triggers still count new and changed verdicts
    store.record(session_id="s9", photo_sha256="f" * 64, face_index=0, box=(1, 2, 3, 4), probability=0.9,
                 model_version="v2", correct=False, photo_size=(4000, 3000))
    assert [r["photo_size"] for r in store.rows() if r["session_id"] == "s9"] == [(4000, 3000)]
    store.record(session_id="s1", photo_sha256=f"{1:064x}", face_index=1, box=(1, 2, 30, 30), probability=0.32,
                 model_version="v1", correct=True)
    after = store.stats()
    assert after["count"] == 7 and after["per_version"]["v2"] == {"count": 1, "agreement": 0.0}
    with store.engine.connect() as conn:  # the summary agrees with a count of the rows
        summary = sorted(map(tuple, conn.execute(text("SELECT model_version, true_smiling, predicted_smiling, verdicts "
                                                     "FROM feedback_summary WHERE verdicts > 0"))))
        counted = sorted(map(tuple, conn.execute(text("SELECT model_version, true_smiling, predicted_smiling, count(*) "
                                                     "FROM feedback GROUP BY model_version, true_smiling, predicted_smiling"))))
    assert summary == counted
    store.close()
    FeedbackStore(db_url).close()  # opening again changes nothing
    assert _version_rows(db_url) == [migrate.head()]


def test_first_revision_is_the_schema_written_before_migrations(legacy, db_url, request):
    old = legacy.FeedbackStore(db_url)
    before = _schema(old.engine)
    old.close()
    other = (f"sqlite:///{request.getfixturevalue('tmp_path') / 'fresh.db'}" if db_url.startswith("sqlite")
             else new_pg_database(request.getfixturevalue("postgres_server")))
    first = create_engine(other)
    migrate.upgrade(first, "0001")  # an empty database, built by the first revision alone
    assert _schema(first) == before
    first.dispose()
    assert len(before["triggers"]) >= 3
    fresh = FeedbackStore(other)  # and on to the newest revision
    with fresh.engine.connect() as conn:  # the tables the code queries agree with what the migrations built
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    fresh.close()


def test_stores_opening_one_new_database_at_once_migrate_it_once(db_url):
    errors, stores = [], []

    def open_store():
        try:
            stores.append(FeedbackStore(db_url))
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(stores) == 4
    assert _version_rows(db_url) == [migrate.head()]
    for store in stores:
        store.close()


def test_a_read_only_database_written_before_migrations_is_still_read(legacy, tmp_path):
    path = tmp_path / "feedback.db"
    old = legacy.FeedbackStore(f"sqlite:///{path}")
    _fill(old)
    stats = old.stats()
    old.close()
    store = FeedbackStore(f"sqlite:///file:{path}?mode=ro&uri=true")  # cannot be upgraded: read as it is
    assert store.stats() == stats
    assert store.calibration_for("v0") is None and len(store.verdicts_of("v0")[0]) == 3  # no calibration table there
    store.close()
    assert "alembic_version" not in inspect(create_engine(f"sqlite:///{path}")).get_table_names()


def test_opening_an_up_to_date_database_does_not_load_alembic(tmp_path):
    """App kernels open a database that is already migrated: they skip Alembic's import (about 0.2 s)."""
    url = f"sqlite:///{tmp_path / 'feedback.db'}"
    FeedbackStore(url).close()
    check = "import sys; from smilekit.store.feedback import FeedbackStore; FeedbackStore(sys.argv[1]).close(); print('alembic' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", check, url], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr


def test_a_store_opening_a_database_another_writer_holds_waits_for_it(tmp_path):
    """As when another app kernel is upgrading it: the store waits for the lock instead of failing after the short
    busy timeout a click has (SQLITE_BUSY_TIMEOUT_MS)."""
    import sqlite3

    from smilekit.store.feedback import SQLITE_BUSY_TIMEOUT_MS

    path = tmp_path / "held.db"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    release = threading.Timer(3 * SQLITE_BUSY_TIMEOUT_MS / 1000, holder.rollback)
    release.start()
    try:
        store = FeedbackStore(f"sqlite:///{path}")
    finally:
        release.join()
        holder.close()
    store.close()
    assert _version_rows(f"sqlite:///{path}") == [migrate.head()]
