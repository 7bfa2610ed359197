"""The feedback store when things go wrong: locks, read-only databases, withdrawn consent, killed writers.

Times are bounds for a loaded 2-core machine, not benchmarks.
"""
from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import make_url

from conftest import new_pg_database
from smilekit.store.feedback import WRITE_DEADLINE_S, DatabaseBusy, DatabaseReadOnly, FeedbackStore, FeedbackWriteError

ROOT = Path(__file__).resolve().parent.parent
#: a write must give up within the deadline; this much more is allowed for a loaded machine
SLACK_S = 1.0


def _record(store, *, session="s1", face=0, crop=None):
    return store.record(session_id=session, photo_sha256="p" * 64, face_index=face, box=(1, 2, 3, 4), probability=0.9,
                        model_version="v1", correct=True, crop_png=crop)


def _noise_png(seed: int) -> bytes:
    """A 64x64 PNG of random noise: its bytes appear nowhere else (and do not compress)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (64, 64), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, "L").save(buf, format="PNG")
    return buf.getvalue()


def _psycopg2(db_url: str):
    import psycopg2

    url = make_url(db_url)
    return psycopg2.connect(host=url.host, port=url.port, user=url.username, dbname=url.database)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """A fresh feedback database of each kind (PostgreSQL: a new database on the test server)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'feedback.db'}"
    return new_pg_database(request.getfixturevalue("postgres_server"))


class WriteLock:
    """Another connection holding the feedback table's write lock for ``seconds`` (or until ``release()``).

    The lock always ends, so a write that ignores the deadline shows up as too slow instead of hanging the run.
    """

    def __init__(self, db_url: str, seconds: float = 10.0):
        url = make_url(db_url)
        if url.get_backend_name() == "sqlite":
            self.conn = sqlite3.connect(url.database, isolation_level=None, check_same_thread=False)
            self.conn.execute("BEGIN IMMEDIATE")
        else:
            self.conn = _psycopg2(db_url)
            self.conn.cursor().execute("LOCK TABLE feedback IN EXCLUSIVE MODE")
        self._timer = threading.Timer(seconds, self.release)
        self._timer.start()
        self._released = threading.Lock()

    def release(self) -> None:
        self._timer.cancel()
        if self._released.acquire(blocking=False):
            self.conn.rollback()
            self.conn.close()


# -- locks -----------------------------------------------------------------------


def test_lock_held_past_the_deadline_fails_fast(db_url):
    store = FeedbackStore(db_url)
    _record(store, face=0, crop=_noise_png(0))
    lock = WriteLock(db_url)
    try:
        for action in (lambda: _record(store, face=1), lambda: store.forget_crops("s1")):
            start = time.monotonic()
            with pytest.raises(DatabaseBusy) as caught:
                action()
            elapsed = time.monotonic() - start
            print(f"{make_url(db_url).get_backend_name()}: locked -> message in {elapsed:.2f} s: {caught.value}")
            assert elapsed < WRITE_DEADLINE_S + SLACK_S
            assert "busy" in str(caught.value) and "not" in str(caught.value)
            assert caught.value.__cause__ is not None  # the database's own error stays attached for the log
    finally:
        lock.release()
    _record(store, face=1)  # the lock is gone: writing works again
    assert len(store.rows()) == 2
    store.close()


def test_lock_released_within_the_deadline_lets_the_write_through(db_url):
    store = FeedbackStore(db_url)
    _record(store, face=0)
    WriteLock(db_url, seconds=1.0)
    start = time.monotonic()
    _record(store, face=1)
    elapsed = time.monotonic() - start
    assert 0.8 < elapsed < WRITE_DEADLINE_S  # it did wait for the lock, and then it wrote
    assert len(store.rows()) == 2
    store.close()


def test_a_database_that_does_not_answer_fails_fast():
    pytest.importorskip("psycopg2")
    from conftest import free_port

    store = FeedbackStore("sqlite:///:memory:")
    store.engine = FeedbackStore._engine(f"postgresql+psycopg2://nobody@127.0.0.1:{free_port()}/nothing")  # nothing listens
    start = time.monotonic()
    with pytest.raises(DatabaseBusy, match="not answering") as caught:
        _record(store)
    elapsed = time.monotonic() - start
    print(f"no server -> message in {elapsed:.2f} s: {caught.value}")
    assert elapsed < WRITE_DEADLINE_S + SLACK_S
    assert caught.value.__cause__ is not None


# -- read-only databases -----------------------------------------------------------


def _assert_read_only(store) -> None:
    assert store.stats()["count"] == 1  # reading still works
    for action in (lambda: _record(store, face=1), lambda: store.forget_crops("s1")):
        start = time.monotonic()
        with pytest.raises(DatabaseReadOnly, match="read-only") as caught:
            action()
        elapsed = time.monotonic() - start
        print(f"read-only -> message in {elapsed:.2f} s: {caught.value}")
        assert elapsed < 1.0  # no retrying: it cannot help


def test_read_only_sqlite_uri(tmp_path):
    """SQLite opened read-only (``mode=ro``): the open flag SQLite itself falls back to for a file it cannot write."""
    path = tmp_path / "feedback.db"
    writable = FeedbackStore(f"sqlite:///{path}")
    _record(writable, crop=_noise_png(1))
    writable.close()
    store = FeedbackStore(f"sqlite:///file:{path}?mode=ro&uri=true")
    _assert_read_only(store)
    store.close()


READ_ONLY_CHECK = """
import json, sys, time
from smilekit.store.feedback import FeedbackStore, FeedbackWriteError
store = FeedbackStore(sys.argv[1])
out = {"count": store.stats()["count"]}
for name, action in (("record", lambda: store.record(session_id="s1", photo_sha256="p" * 64, face_index=1, box=(1, 2, 3, 4),
                                                      probability=0.9, model_version="v1", correct=True)),
                     ("forget", lambda: store.forget_crops("s1"))):
    start = time.monotonic()
    try:
        action()
        out[name] = ["saved", ""]
    except FeedbackWriteError as err:
        out[name] = [type(err).__name__, str(err), time.monotonic() - start]
print(json.dumps(out))
"""


@pytest.mark.parametrize("folder_writable", [False, True], ids=["file-and-folder", "file-only"])
def test_read_only_sqlite_file(tmp_path, folder_writable):
    """Real file permissions (0444 file, 0555 folder); as root the check runs without the capability to override them.

    Root ignores file modes, so ``chmod`` alone would test nothing: the check runs in a
    process whose capability bounding set lacks DAC override, as an ordinary user would.
    """
    folder = tmp_path / "db"
    store = FeedbackStore(f"sqlite:///{folder / 'feedback.db'}")
    _record(store, crop=_noise_png(2))
    store.close()
    (folder / "feedback.db").chmod(0o444)
    folder.chmod(0o755 if folder_writable else 0o555)
    cmd = [sys.executable, "-c", READ_ONLY_CHECK, f"sqlite:///{folder / 'feedback.db'}"]
    if os.geteuid() == 0:
        cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--", *cmd]
    try:
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    finally:
        folder.chmod(0o755)
        (folder / "feedback.db").chmod(0o644)
    if done.returncode and "setpriv" in done.stderr:
        pytest.skip(f"cannot drop root's file capabilities here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    print(out)
    assert out["count"] == 1  # the app starts and shows its stats
    for name in ("record", "forget"):
        kind, message, elapsed = out[name]
        assert kind == "DatabaseReadOnly" and "read-only" in message
        assert elapsed < 1.0


@pytest.mark.parametrize("how", ["read-only-database", "select-only-user"])
def test_read_only_postgresql(postgres_server, how):
    url = new_pg_database(postgres_server)
    store = FeedbackStore(url)
    _record(store, crop=_noise_png(3))
    store.close()
    admin = _psycopg2(url)
    admin.autocommit = True
    with admin.cursor() as cur:
        if how == "read-only-database":
            cur.execute(f"ALTER DATABASE {make_url(url).database} SET default_transaction_read_only = on")
        else:
            reader = f"reader_{uuid.uuid4().hex[:8]}"
            cur.execute(f"CREATE ROLE {reader} LOGIN")
            cur.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {reader}")  # the feedback table and its summary
            url = make_url(url).set(username=reader).render_as_string(hide_password=False)
    admin.close()
    store = FeedbackStore(url)
    _assert_read_only(store)
    store.close()


def test_store_errors_are_feedback_write_errors():
    assert issubclass(DatabaseBusy, FeedbackWriteError) and issubclass(DatabaseReadOnly, FeedbackWriteError)
    assert issubclass(FeedbackWriteError, RuntimeError)


# -- withdrawn consent leaves no bytes behind ------------------------------------------


def _files_holding(files, needle: bytes) -> list[str]:
    return [str(f) for f in files if f.is_file() and needle in f.read_bytes()]


def test_forgotten_crops_leave_no_bytes_in_sqlite_files(tmp_path):
    store = FeedbackStore(f"sqlite:///{tmp_path / 'feedback.db'}")
    crops = [_noise_png(10 + face) for face in range(3)]
    for face, crop in enumerate(crops):
        _record(store, face=face, crop=crop)
    _record(store, session="s2", crop=_noise_png(20))
    needles = [crop[len(crop) // 2:len(crop) // 2 + 48] for crop in crops]
    files = lambda: sorted(tmp_path.glob("feedback.db*"))  # noqa: E731 - the .db, -wal and -shm files
    assert all(_files_holding(files(), needle) for needle in needles)  # the search does find stored crops
    assert store.forget_crops("s1") == 3
    assert [_files_holding(files(), needle) for needle in needles] == [[], [], []]
    assert store.consented_crops() and len(store.rows()) == 4  # the other session's crop and every verdict stay
    store.close()


def test_forgetting_while_someone_reads_wipes_at_the_next_chance(tmp_path, caplog):
    """A reader's snapshot keeps the crop in SQLite's write-ahead log: the wipe waits briefly, logs, and the next one completes."""
    path = tmp_path / "feedback.db"
    store = FeedbackStore(f"sqlite:///{path}")
    crop = _noise_png(50)
    _record(store, crop=crop)
    needle = crop[len(crop) // 2:len(crop) // 2 + 48]
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM feedback").fetchall()  # a snapshot from before the crop is forgotten
    start = time.monotonic()
    assert store.forget_crops("s1") == 1
    assert time.monotonic() - start < WRITE_DEADLINE_S + SLACK_S
    assert "write-ahead log" in caplog.text
    assert store.consented_crops() == []  # forgotten for the app at once
    reader.execute("COMMIT")
    reader.close()
    assert store.forget_crops("s1") == 0  # nothing left to forget, but the wipe runs again
    assert _files_holding(tmp_path.glob("feedback.db*"), needle) == []
    store.close()


def test_forgotten_crops_leave_no_bytes_in_postgresql_files(postgres_server):
    """Searches every file of the test database's folder (table, TOAST table, indexes), not the server's WAL."""
    url = new_pg_database(postgres_server)
    store = FeedbackStore(url)
    crops = [_noise_png(30 + face) for face in range(3)]
    for face, crop in enumerate(crops):
        _record(store, face=face, crop=crop)
    _record(store, session="s2", crop=_noise_png(40))
    needles = [crop[len(crop) // 2:len(crop) // 2 + 48] for crop in crops]
    admin = _psycopg2(url)
    admin.autocommit = True

    def files() -> list[Path]:
        with admin.cursor() as cur:
            cur.execute("CHECKPOINT")  # written-back pages, so the files hold what the server holds
            cur.execute("SHOW data_directory")
            data = Path(cur.fetchone()[0])
            cur.execute("SELECT pg_relation_filepath('feedback'), "
                        "pg_relation_filepath((SELECT reltoastrelid FROM pg_class WHERE relname = 'feedback'))")
            heap, toast = cur.fetchone()
        assert (data / heap).parent == (data / toast).parent
        return sorted((data / heap).parent.iterdir())

    assert all(_files_holding(files(), needle) for needle in needles)
    assert store.forget_crops("s1") == 3
    assert [_files_holding(files(), needle) for needle in needles] == [[], [], []]
    assert store.consented_crops() and len(store.rows()) == 4
    admin.close()
    store.close()


# -- writers killed with SIGKILL -------------------------------------------------------

WRITER = """
import sys
from smilekit.store.feedback import FeedbackStore, FeedbackWriteError
store, n = FeedbackStore(sys.argv[1]), sys.argv[2]
for face in range(10**9):
    try:
        store.record(session_id=f"w{n}", photo_sha256="p" * 64, face_index=face, box=(1, 2, 3, 4), probability=0.9,
                     model_version="v1", correct=bool(face % 2), crop_png=bytes(300))
    except FeedbackWriteError as err:
        print(err, file=sys.stderr, flush=True)
        continue
    print(n, face, flush=True)
"""


def test_killed_writers_lose_no_acknowledged_row(db_url):
    """Six writers are killed with SIGKILL mid-stream; every row they reported saved is there."""
    FeedbackStore(db_url).close()  # the schema, before the writers race to create it
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, db_url, str(n)], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True) for n in range(6)]
    acked: list[list[str]] = [[] for _ in writers]
    readers = [threading.Thread(target=lambda p=p, out=out: out.extend(p.stdout)) for p, out in zip(writers, acked)]
    for r in readers:
        r.start()
    deadline = time.monotonic() + 30
    while not all(acked) and time.monotonic() < deadline:  # every writer is writing
        time.sleep(0.05)
    time.sleep(2)
    for p in writers:
        p.send_signal(signal.SIGKILL)
    for p, r in zip(writers, readers):
        p.wait()
        r.join()
    saved = {tuple(line.split()) for out in acked for line in out if line.endswith("\n")}
    assert all(acked) and len(saved) >= 6
    store = FeedbackStore(db_url)
    stored = {(r["session_id"][1:], str(r["face_index"])) for r in store.rows()}
    print(f"{len(saved)} rows acknowledged, {len(stored)} stored")
    assert saved - stored == set()
    if store.engine.dialect.name == "sqlite":
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
    store.close()
