"""The feedback store on SQLite and on a real PostgreSQL server."""
from __future__ import annotations

import io
import random
import threading

import pytest
from PIL import Image

from smilekit.store.feedback import WRITE_DEADLINE_S, FeedbackStore, photo_hash


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """A fresh, empty feedback database of each kind."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'sub' / 'feedback.db'}"
        return
    url = request.getfixturevalue("postgres_server")
    store = FeedbackStore(url)
    with store.engine.begin() as conn:
        conn.exec_driver_sql("TRUNCATE feedback RESTART IDENTITY")
    store.close()
    yield url


@pytest.fixture
def store(db_url):
    s = FeedbackStore(db_url)
    yield s
    s.close()


def _crop_png(value: int = 128) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (64, 64), value).save(buf, format="PNG")
    return buf.getvalue()


def _record(store, *, session="s1", photo="p" * 64, face=0, probability=0.9, version="v1", correct=True, crop=None):
    return store.record(session_id=session, photo_sha256=photo, face_index=face, box=(10, 20, 30, 40),
                        probability=probability, model_version=version, correct=correct, crop_png=crop)


def test_photo_hash_is_sha256():
    assert photo_hash(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_default_url_from_environment(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'env' / 'fb.db'}"
    monkeypatch.setenv("SMILEKIT_DB_URL", url)
    store = FeedbackStore()
    assert store.url == url
    assert (tmp_path / "env" / "fb.db").exists()
    store.close()


def test_sqlite_uses_wal(tmp_path):
    store = FeedbackStore(f"sqlite:///{tmp_path / 'fb.db'}")
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert 0 < conn.exec_driver_sql("PRAGMA busy_timeout").scalar() < WRITE_DEADLINE_S * 1000  # retries fit in the deadline
        assert conn.exec_driver_sql("PRAGMA secure_delete").scalar() == 1  # deleted crops are overwritten
    store.close()


def test_record_and_read_back(store):
    row_id = _record(store, probability=0.8, correct=True)
    (row,) = store.rows()
    assert row["id"] == row_id
    assert row["box"] == (10, 20, 30, 40)
    assert row["predicted_smiling"] is True and row["true_smiling"] is True
    assert row["verdict"] == "correct"
    assert row["probability"] == pytest.approx(0.8)
    assert row["model_version"] == "v1"
    assert row["created_at"].tzinfo is not None


def test_incorrect_records_the_opposite_label(store):
    _record(store, face=0, probability=0.2, correct=False)  # predicted not smiling, truly smiling
    _record(store, face=1, probability=0.7, correct=False)  # predicted smiling, truly not
    rows = store.rows()
    assert [(r["predicted_smiling"], r["true_smiling"], r["verdict"]) for r in rows] == [
        (False, True, "incorrect"), (True, False, "incorrect")]


def test_clicking_again_updates_the_same_row(store):
    first = _record(store, correct=True)
    second = _record(store, correct=False)
    assert first == second
    (row,) = store.rows()
    assert row["verdict"] == "incorrect" and row["true_smiling"] is False
    assert row["updated_at"] >= row["created_at"]
    # another face, session or model version is a new row
    _record(store, face=1)
    _record(store, session="s2")
    _record(store, version="v2")
    assert len(store.rows()) == 4


def test_no_pixels_without_consent(store):
    _record(store, face=0, crop=None)
    _record(store, face=1, crop=_crop_png(200), probability=0.1, correct=True)
    rows = store.rows()
    assert rows[0]["crop_png"] is None
    assert rows[1]["crop_png"] is not None
    crops = store.consented_crops()
    assert len(crops) == 1
    image, label = crops[0]
    assert image.size == (64, 64) and image.mode == "L" and label == 0
    assert image.getpixel((5, 5)) == 200


def test_withdrawing_consent_removes_the_crop(store):
    _record(store, crop=_crop_png())
    _record(store, crop=None)
    assert store.rows()[0]["crop_png"] is None
    assert store.consented_crops() == []


def test_forget_crops_of_one_session(store):
    _record(store, session="s1", face=0, crop=_crop_png())
    _record(store, session="s1", face=1, crop=_crop_png())
    _record(store, session="s2", face=0, crop=_crop_png())
    assert store.forget_crops("s1") == 2
    assert [(r["session_id"], r["crop_png"] is None) for r in store.rows()] == [("s1", True), ("s1", True), ("s2", False)]


def test_stats_empty(store):
    stats = store.stats()
    assert stats["count"] == 0 and stats["agreement"] is None and stats["agreement_last"] is None
    assert stats["per_version"] == {} and stats["confusion"] == [[0, 0], [0, 0]]


def test_stats(store):
    # v1: 3 faces, 2 right; v2: 1 face, wrong
    _record(store, face=0, probability=0.9, correct=True)    # tp
    _record(store, face=1, probability=0.1, correct=True)    # tn
    _record(store, face=2, probability=0.9, correct=False)   # fp
    _record(store, face=3, probability=0.3, correct=False, version="v2")  # fn
    stats = store.stats(last=2)
    assert stats["count"] == 4
    assert stats["agreement"] == pytest.approx(0.5)
    assert stats["agreement_last"] == pytest.approx(0.0)  # the two most recent were both wrong
    assert stats["per_version"] == {"v1": {"count": 3, "agreement": pytest.approx(2 / 3)}, "v2": {"count": 1, "agreement": 0.0}}
    assert stats["confusion"] == [[1, 1], [1, 1]]
    _record(store, face=2, probability=0.9, correct=True)    # changed mind: now tp
    stats = store.stats()
    assert stats["count"] == 4 and stats["confusion"] == [[1, 0], [1, 2]]


def test_concurrent_sessions_lose_nothing(db_url):
    """Eight sessions (each with its own store, as separate kernels have) write at once."""
    sessions, faces_each = 8, 15
    barrier = threading.Barrier(sessions)
    errors: list[BaseException] = []

    def session(n: int) -> None:
        try:
            store = FeedbackStore(db_url)
            barrier.wait()
            for face in range(faces_each):
                _record(store, session=f"s{n}", face=face, probability=0.9, correct=True, crop=_crop_png(n))
                _record(store, session=f"s{n}", face=face, probability=0.9, correct=(face % 2 == 0))  # change of mind
                _record(store, session="shared", face=face, probability=0.9, correct=(n % 2 == 0))  # same key from everyone
            store.close()
        except BaseException as err:  # noqa: BLE001 - reported by the main thread
            errors.append(err)

    threads = [threading.Thread(target=session, args=(n,)) for n in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    store = FeedbackStore(db_url)
    rows = store.rows()
    store.close()
    own = [r for r in rows if r["session_id"] != "shared"]
    shared = [r for r in rows if r["session_id"] == "shared"]
    assert len(own) == sessions * faces_each
    assert len(shared) == faces_each
    assert len({r["id"] for r in rows}) == len(rows)
    for r in own:
        assert r["verdict"] == ("correct" if r["face_index"] % 2 == 0 else "incorrect")
        assert r["crop_png"] is None
    assert all(r["verdict"] in ("correct", "incorrect") for r in shared)


def test_one_store_shared_by_threads(store):
    """One store (one engine and pool) used from several threads at once."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def worker(n: int) -> None:
        try:
            barrier.wait()
            for face in range(20):
                _record(store, session=f"t{n}", face=face, correct=bool(face % 3))
        except BaseException as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(store.rows()) == 6 * 20
    assert store.stats()["count"] == 6 * 20


def _recount(rows: list[dict]) -> dict:
    """The stats figures counted the slow way, from every row."""
    confusion = [[0, 0], [0, 0]]
    per_version: dict[str, list[int]] = {}
    for r in rows:
        confusion[int(r["true_smiling"])][int(r["predicted_smiling"])] += 1
        counts = per_version.setdefault(r["model_version"], [0, 0])
        counts[0] += 1
        counts[1] += r["verdict"] == "correct"
    return {"count": len(rows), "confusion": confusion,
            "per_version": {v: {"count": n, "agreement": pytest.approx(a / n)} for v, (n, a) in per_version.items()}}


def test_summary_follows_inserts_changes_and_deletes(store):
    rng = random.Random(0)
    for _ in range(300):
        _record(store, session=f"s{rng.randrange(5)}", face=rng.randrange(12), version=rng.choice(["v1", "v2"]),
                probability=rng.random(), correct=rng.random() < 0.7)
    with store.engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM feedback WHERE face_index = 3")
        conn.exec_driver_sql("UPDATE feedback SET model_version = 'v3' WHERE face_index = 4 AND model_version = 'v1'")
    stats = store.stats()
    expected = _recount(store.rows())
    assert {k: stats[k] for k in expected} == expected
    assert set(stats["per_version"]) == {"v1", "v2", "v3"}


def test_a_database_from_before_the_summary_is_counted_once(db_url):
    store = FeedbackStore(db_url)
    for face in range(7):
        _record(store, face=face, correct=face % 3 != 0, version="v1" if face < 5 else "v2")
    with store.engine.begin() as conn:  # as a database made by an earlier version: no summary, no triggers
        if store.engine.dialect.name == "postgresql":
            conn.exec_driver_sql("DROP TABLE feedback_summary; DROP FUNCTION feedback_summary_apply CASCADE; "
                                 "DROP FUNCTION feedback_summary_clear CASCADE")
        else:
            for name in ("insert", "delete", "update"):
                conn.exec_driver_sql(f"DROP TRIGGER feedback_summary_{name}")
            conn.exec_driver_sql("DROP TABLE feedback_summary")
    store.close()
    store = FeedbackStore(db_url)  # fills the summary from the rows there
    _record(store, face=7, correct=True, version="v2")
    stats = store.stats()
    expected = _recount(store.rows())
    store.close()
    assert {k: stats[k] for k in expected} == expected and stats["count"] == 8


def test_sessions_disagreeing_with_a_confident_model_are_flagged(tmp_path):
    from smilekit.store.feedback import disagreeing_sessions

    store = FeedbackStore(f"sqlite:///{tmp_path / 'fb.db'}")
    faces = iter(range(1000))
    for session, count, wrong in [("careful1", 40, 1), ("careful2", 40, 2), ("abuser", 20, 12), ("unlucky", 5, 4)]:
        for i in range(count):
            _record(store, session=session, photo=f"{next(faces):064x}", probability=0.97 if i % 2 else 0.02, correct=i >= wrong)
    for i in range(30):  # faces the model was unsure about do not count, whatever the clicks say
        _record(store, session="careful1", photo=f"{next(faces):064x}", probability=0.55, correct=False)
    flagged = disagreeing_sessions(store.rows())
    store.close()
    assert [f["session_id"] for f in flagged] == ["abuser"]  # "unlucky" has too few clicks to judge
    (abuser,) = flagged
    assert abuser["clicks"] == 20 and abuser["disagreement"] == pytest.approx(12 / 20)
    assert abuser["others"] == pytest.approx((1 + 2 + 4) / 85)
    assert disagreeing_sessions([]) == []
