"""Where feedback is written: one row per face verdict, in SQLite or PostgreSQL.

The engine comes from a URL (argument, else ``SMILEKIT_DB_URL``, else the SQLite
file ``outputs/feedback.db``); the tables are declared below for queries, and created or changed
only by migrations (``smilekit.store.migrate``, run on open; a test checks they agree). Each click is an
upsert keyed on (session, photo, face, model version), so clicking again changes
the verdict instead of adding a row. Face pixels are stored only with consent;
the full photo never is.

Writes (``record``, ``forget_crops``) give up within ``WRITE_DEADLINE_S`` with a
``FeedbackWriteError`` whose text can be shown to the person as it is.

The live panel asks for ``stats`` after every click, so its cost must not grow with the
table: database triggers keep ``feedback_summary`` (verdicts per model version, true and
predicted label) up to date in the same transaction as each write, and the most recent
verdicts are read through an index.
"""
from __future__ import annotations

import hashlib
import io
import logging
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, TypeVar
from urllib.parse import quote

import numpy as np
from PIL import Image
from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
    case,
    create_engine,
    event,
    func,
    inspect,
    make_url,
    select,
    update,
)
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, defer, mapped_column

from .. import calibration, settings
from . import migrate

log = logging.getLogger(__name__)

#: the longest ``record`` or ``forget_crops`` takes before it gives up with a ``FeedbackWriteError``, in seconds
WRITE_DEADLINE_S = 3.0
#: how long one SQLite write attempt waits for another writer's lock, in milliseconds (then it retries)
SQLITE_BUSY_TIMEOUT_MS = 500
#: opening a database waits this long for another store's schema upgrade (several app kernels opening a new
#: database at once; on a loaded machine one upgrade took longer than a click's busy timeout, and the others failed)
UPGRADE_WAIT_S = 30
#: how long PostgreSQL connecting may take, in seconds (libpq's smallest limit is 2)
PG_CONNECT_TIMEOUT_S = 2
#: PostgreSQL error codes: a read-only transaction, no permission to write
_PG_READ_ONLY = {"25006", "42501"}
#: PostgreSQL error codes: lock timeout, statement timeout, deadlock, serialization failure
_PG_BUSY = {"55P03", "57014", "40P01", "40001"}

T = TypeVar("T")


class FeedbackWriteError(RuntimeError):
    """A verdict could not be saved; ``str(err)`` is a message for the person."""


class DatabaseBusy(FeedbackWriteError):
    """The database was locked, busy or not answering until the deadline: trying again later may work."""


class DatabaseReadOnly(FeedbackWriteError):
    """The database accepts no writes (read-only file, folder, transaction or user): trying again will not help."""


def _is_read_only(err: DBAPIError) -> bool:
    orig = err.orig
    return getattr(orig, "pgcode", None) in _PG_READ_ONLY or "readonly" in str(orig).lower()


def _is_busy(err: DBAPIError) -> bool:
    orig = err.orig
    return getattr(orig, "pgcode", None) in _PG_BUSY or "locked" in str(orig).lower()


def _write_error(err: SQLAlchemyError, unsaved: str) -> FeedbackWriteError:
    """The message for the person when a write failed for good (``unsaved`` says what was lost)."""
    if isinstance(err, DBAPIError) and _is_read_only(err):
        return DatabaseReadOnly(f"The feedback database is read-only, so {unsaved}. "
                                "Trying again will not help; please tell whoever runs this app.")
    if isinstance(err, DBAPIError) and _is_busy(err):
        return DatabaseBusy(f"The feedback database is busy; {unsaved} yet. Click again in a moment.")
    return DatabaseBusy(f"The feedback database is not answering; {unsaved}. Try again in a moment.")


def photo_hash(data: bytes) -> str:
    """SHA-256 of the uploaded file's bytes (identifies a photo without keeping it)."""
    return hashlib.sha256(data).hexdigest()


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class Verdict(Base):
    """A person's verdict on the model's answer for one face."""

    __tablename__ = "feedback"
    __table_args__ = (UniqueConstraint("session_id", "photo_sha256", "face_index", "model_version", name="uq_feedback_face"),
                      Index("ix_feedback_recent", "updated_at", "id"))  # the most recent verdicts, without a scan

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_utcnow)
    session_id: Mapped[str] = mapped_column(String(64))
    photo_sha256: Mapped[str] = mapped_column(String(64))
    face_index: Mapped[int] = mapped_column(Integer)
    box_x: Mapped[int] = mapped_column(Integer)
    box_y: Mapped[int] = mapped_column(Integer)
    box_w: Mapped[int] = mapped_column(Integer)
    box_h: Mapped[int] = mapped_column(Integer)
    predicted_smiling: Mapped[bool] = mapped_column(Boolean)
    probability: Mapped[float] = mapped_column(Float)
    model_version: Mapped[str] = mapped_column(String(128))
    verdict: Mapped[str] = mapped_column(String(16))  # 'correct' or 'incorrect'
    true_smiling: Mapped[bool] = mapped_column(Boolean)
    crop_png: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    source: Mapped[str | None] = mapped_column(String(16), nullable=True, default="upload")  # 'upload' or 'camera'
    # the photo's own size, in whose pixels box_* are (NULL: rows from before migration 0004, whose boxes are in
    # the pixels of the reduced working copy)
    photo_width: Mapped[int | None] = mapped_column(Integer, nullable=True)
    photo_height: Mapped[int | None] = mapped_column(Integer, nullable=True)


class VerdictCount(Base):
    """How many verdicts there are per model version, true label and predicted label (kept by triggers)."""

    __tablename__ = "feedback_summary"

    model_version: Mapped[str] = mapped_column(String(128), primary_key=True)
    true_smiling: Mapped[bool] = mapped_column(Boolean, primary_key=True)
    predicted_smiling: Mapped[bool] = mapped_column(Boolean, primary_key=True)
    verdicts: Mapped[int] = mapped_column(BigInteger, default=0)


class CalibrationRow(Base):
    """A calibration fitted on one model version's verdicts (:mod:`smilekit.calibration`); the newest is in force."""

    __tablename__ = "calibration"
    __table_args__ = (Index("ix_calibration_model", "model_version", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_utcnow)
    model_version: Mapped[str] = mapped_column(String(128))
    slope: Mapped[float] = mapped_column(Float)
    offset: Mapped[float] = mapped_column(Float)
    verdicts: Mapped[int] = mapped_column(Integer)
    accuracy_before: Mapped[float] = mapped_column(Float)  # cross-validated on the verdicts, without and with it
    accuracy_after: Mapped[float] = mapped_column(Float)

    def as_calibration(self) -> calibration.Calibration:
        return calibration.Calibration(self.slope, self.offset, self.id)


COLUMNS = ("id", "created_at", "updated_at", "session_id", "photo_sha256", "face_index", "box", "predicted_smiling",
           "probability", "model_version", "verdict", "true_smiling", "crop_png", "source", "photo_size")


def _as_utc(value: datetime) -> datetime:
    """SQLite returns naive datetimes; everything stored is UTC."""
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _sqlite_pragmas(dbapi_connection, _record):
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA secure_delete=ON")  # deleted content is overwritten with zeros
    cursor.close()


def _sqlite_file(url) -> Path | None:
    """The file of an SQLite URL given as a plain path (not ``:memory:``, not a ``file:`` URI)."""
    database = url.database
    return Path(database) if database and database != ":memory:" and not database.startswith("file:") else None


class FeedbackStore:
    """Records verdicts and answers questions about them."""

    def __init__(self, url: str | None = None):
        self.url = url or settings.db_url()
        self.engine = self._engine(self.url)
        try:
            self._create_schema()
        except DBAPIError as err:
            if not _is_read_only(err):
                raise
            # an SQLite file in a folder we cannot write: WAL needs its lock files there, so read it as immutable
            if (fallback := self._immutable_url()) is not None:
                log.warning("the feedback database %s and its folder cannot be written; opened for reading only", self.url)
                self.engine.dispose()
                self.engine = self._engine(fallback)
            self._create_schema(read_only=True)

    @staticmethod
    def _engine(url):
        url = make_url(url)
        connect_args = {}
        if url.get_driver_name() in ("psycopg2", "psycopg") and "connect_timeout" not in url.query:
            connect_args["connect_timeout"] = PG_CONNECT_TIMEOUT_S  # a server that does not answer fails fast
        engine = create_engine(url, pool_pre_ping=True, connect_args=connect_args)
        if engine.dialect.name == "sqlite":
            if (path := _sqlite_file(engine.url)) is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
            event.listen(engine, "connect", _sqlite_pragmas)
        return engine

    def _immutable_url(self):
        """The same SQLite file opened as an immutable URI, or None when not a plain SQLite file."""
        path = _sqlite_file(self.engine.url) if self.engine.dialect.name == "sqlite" else None
        if path is None:
            return None
        return self.engine.url.set(database=f"file:{quote(str(path.resolve()))}",
                                   query={**self.engine.url.query, "immutable": "1", "uri": "true"})

    def _create_schema(self, read_only: bool = False) -> None:
        """Bring the schema to the newest migration (``smilekit.store.migrate``); a database that cannot be written
        (``read_only``: opened as such after a first try) is read as it is if it has the feedback table."""
        try:
            self._upgrade()
        except DBAPIError as err:
            if not (read_only and _is_read_only(err) and Verdict.__tablename__ in inspect(self.engine).get_table_names()):
                raise
            log.warning("the feedback database %s cannot be upgraded (read-only); reading it as it is", self.url)
        tables = inspect(self.engine).get_table_names()
        self.summarised = VerdictCount.__tablename__ in tables
        self.calibrates = CalibrationRow.__tablename__ in tables  # not in a read-only database from before calibration
        # a read-only database from an older schema is read without the columns it lacks (source: all uploads)
        present = {c["name"] for c in inspect(self.engine).get_columns(Verdict.__tablename__)}
        self.missing_columns = [c for c in Verdict.__table__.columns if c.name not in present]

    def _upgrade(self) -> None:
        """``migrate.upgrade``, tried again while the database is locked by another store's upgrade, for up to
        UPGRADE_WAIT_S."""
        deadline = time.monotonic() + UPGRADE_WAIT_S
        while True:
            try:
                return migrate.upgrade(self.engine)
            except DBAPIError as err:
                if not _is_busy(err) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    # -- writing ---------------------------------------------------------------

    def _write(self, work: Callable[[Session], T], unsaved: str, deadline: float) -> T:
        """Run ``work`` in one transaction, retrying briefly while the database is locked or unreachable.

        Gives up before ``deadline`` (a ``time.monotonic()`` value) with a ``FeedbackWriteError`` that
        says ``unsaved`` (what the person lost); the database's own error is chained.
        """
        dialect = self.engine.dialect.name
        attempt_s = SQLITE_BUSY_TIMEOUT_MS / 1000 if dialect == "sqlite" else 0.1
        pause = 0.05
        while True:
            try:
                with Session(self.engine) as session, session.begin():
                    if dialect == "postgresql":  # a locked row fails at the deadline too
                        self._pg_timeouts(session, deadline, local=True)
                    return work(session)
            except SQLAlchemyError as err:
                retry = isinstance(err, OperationalError) and not _is_read_only(err)
                if not retry or time.monotonic() + pause + attempt_s > deadline:
                    raise _write_error(err, unsaved) from err
                log.warning("feedback write failed (%s); retrying", getattr(err, "orig", err))
                time.sleep(pause)
                pause = min(2 * pause, 0.4)

    @staticmethod
    def _pg_timeouts(connection, deadline: float, local: bool) -> None:
        """PostgreSQL gives up waiting for locks and statements at ``deadline``."""
        limit = f"{max(100, int((deadline - time.monotonic()) * 1000))}ms"
        connection.execute(select(func.set_config("lock_timeout", limit, local),
                                  func.set_config("statement_timeout", limit, local)))

    def record(self, *, session_id: str, photo_sha256: str, face_index: int, box: tuple[int, int, int, int],
               probability: float, model_version: str, correct: bool, crop_png: bytes | None = None,
               threshold: float = settings.DEFAULT_THRESHOLD, source: str = "upload",
               photo_size: tuple[int, int] | None = None) -> int:
        """Save (or change) the verdict on one face; returns the row id.

        ``correct`` says whether the model's answer was right; the true label is
        derived from it and the model's answer (``probability`` >= its ``threshold``).
        ``crop_png`` (the 64x64 face crop) only with consent. ``source`` says where
        the photo came from: ``"upload"`` or ``"camera"``. ``box`` is in the pixels of the photo, whose
        (width, height) ``photo_size`` gives.
        Raises ``DatabaseBusy`` or ``DatabaseReadOnly`` within ``WRITE_DEADLINE_S``.
        """
        predicted = float(probability) >= threshold
        now = _utcnow()
        key = dict(session_id=session_id, photo_sha256=photo_sha256, face_index=int(face_index), model_version=model_version)
        changes = dict(
            updated_at=now,
            box_x=int(box[0]), box_y=int(box[1]), box_w=int(box[2]), box_h=int(box[3]),
            predicted_smiling=predicted,
            probability=float(probability),
            verdict="correct" if correct else "incorrect",
            true_smiling=predicted if correct else not predicted,
            crop_png=crop_png,
            source=source,
            photo_width=None if photo_size is None else int(photo_size[0]),
            photo_height=None if photo_size is None else int(photo_size[1]),
        )
        return self._write(lambda session: self._upsert(session, key, changes, now), "your verdict was not saved",
                           time.monotonic() + WRITE_DEADLINE_S)

    def _upsert(self, session: Session, key: dict, changes: dict, now: datetime) -> int:
        dialect = self.engine.dialect.name
        if dialect in ("sqlite", "postgresql"):
            if dialect == "sqlite":
                from sqlalchemy.dialects.sqlite import insert
            else:
                from sqlalchemy.dialects.postgresql import insert
            stmt = insert(Verdict).values(**key, **changes, created_at=now)
            stmt = stmt.on_conflict_do_update(index_elements=list(key), set_=changes).returning(Verdict.id)
            return int(session.execute(stmt).scalar_one())
        # other databases: read, then update or insert (the unique constraint still guards duplicates)
        row = session.execute(select(Verdict).filter_by(**key).with_for_update()).scalar_one_or_none()
        if row is None:
            row = Verdict(**key, **changes, created_at=now)
            session.add(row)
        else:
            for name, value in changes.items():
                setattr(row, name, value)
        session.flush()
        return int(row.id)

    def forget_crops(self, session_id: str) -> int:
        """Remove the stored face crops of one session (consent withdrawn); returns how many.

        The freed space is then wiped so the PNG bytes are gone from the database's files:
        SQLite zeroes deleted content (``secure_delete``) and empties its write-ahead log
        (``wal_checkpoint(TRUNCATE)``); PostgreSQL rewrites the table (``VACUUM FULL``, which
        needs the table's owner and locks the table while it runs). A wipe that cannot finish
        by the deadline (readers in the way) is logged; the next one catches up. Out of reach:
        PostgreSQL's write-ahead log segments until recycled, backups, replicas, and disk blocks
        the file system freed. Raises ``DatabaseBusy`` or ``DatabaseReadOnly`` within
        ``WRITE_DEADLINE_S`` when the crops could not be removed.
        """
        deadline = time.monotonic() + WRITE_DEADLINE_S
        stmt = update(Verdict).where(Verdict.session_id == session_id, Verdict.crop_png.is_not(None)).values(crop_png=None)
        count = self._write(lambda session: session.execute(stmt).rowcount, "your face pictures were not removed", deadline)
        self._wipe_freed_space(deadline)
        return count

    def _wipe_freed_space(self, deadline: float) -> None:
        """Push deleted bytes out of the database's files (see ``forget_crops``); failures are only logged."""
        dialect = self.engine.dialect.name
        try:
            if dialect == "sqlite":
                while True:
                    with self.engine.connect() as conn:
                        busy, _, _ = conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").one()
                    if not busy:
                        return
                    if time.monotonic() + 0.05 + SQLITE_BUSY_TIMEOUT_MS / 1000 > deadline:
                        log.warning("forgotten crops may stay in the SQLite write-ahead log until the next checkpoint: "
                                    "other connections are reading")
                        return
                    time.sleep(0.05)
            elif dialect == "postgresql":
                with self.engine.connect() as conn:
                    conn.execution_options(isolation_level="AUTOCOMMIT")
                    self._pg_timeouts(conn, deadline, local=False)
                    try:
                        conn.exec_driver_sql(f"VACUUM (FULL) {Verdict.__tablename__}")
                    finally:
                        conn.exec_driver_sql("RESET lock_timeout; RESET statement_timeout")
                    notices = getattr(conn.connection.dbapi_connection, "notices", [])  # psycopg2's server notices
                    if any("skipping" in notice for notice in notices):
                        log.warning("forgotten crops stay in PostgreSQL's files: %s", notices[-1].strip())
                    del notices[:]
        except SQLAlchemyError as err:
            log.warning("forgotten crops may stay in the database files until the next wipe: %s", getattr(err, "orig", err))

    # -- reading ---------------------------------------------------------------

    def rows(self) -> list[dict]:
        """Every verdict as a dict (see ``COLUMNS``), oldest first."""
        with Session(self.engine) as session:
            query = select(Verdict).order_by(Verdict.created_at, Verdict.id)
            missing = {c.name for c in self.missing_columns}
            query = query.options(*(defer(getattr(Verdict, name), raiseload=True) for name in missing))
            found = session.execute(query).scalars().all()
            return [self._as_dict(v, missing) for v in found]

    @staticmethod
    def _as_dict(v: Verdict, missing: set = frozenset()) -> dict:
        return {
            "id": v.id, "created_at": _as_utc(v.created_at), "updated_at": _as_utc(v.updated_at),
            "session_id": v.session_id, "photo_sha256": v.photo_sha256, "face_index": v.face_index,
            "box": (v.box_x, v.box_y, v.box_w, v.box_h), "predicted_smiling": bool(v.predicted_smiling),
            "probability": v.probability, "model_version": v.model_version, "verdict": v.verdict,
            "true_smiling": bool(v.true_smiling), "crop_png": v.crop_png,
            "source": (v.source if "source" not in missing else None) or "upload",
            "photo_size": None if "photo_width" in missing or v.photo_width is None else (v.photo_width, v.photo_height),
        }

    def stats(self, last: int = 100) -> dict:
        """Counts, agreement rates and the confusion table of all feedback.

        ``agreement`` is the share of verdicts saying the model was right (None when
        there are none); ``agreement_last`` the same over the ``last`` most recent;
        ``confusion`` is ``[[tn, fp], [fn, tp]]``: rows the true label, columns the
        predicted one. Reads the summary and ``last`` rows, whatever the table's size.
        """
        with Session(self.engine) as session:
            recent = (select(Verdict.verdict).order_by(Verdict.updated_at.desc(), Verdict.id.desc()).limit(last).subquery())
            last_count, last_agree = session.execute(
                select(func.count(), func.sum(case((recent.c.verdict == "correct", 1), else_=0)))
            ).one()
            counts = session.execute(self._counts_query()).all()
        per_version: dict[str, dict] = {}
        confusion = [[0, 0], [0, 0]]
        for version, truth, predicted, n in counts:
            if not n:
                continue
            confusion[int(bool(truth))][int(bool(predicted))] += n
            entry = per_version.setdefault(version, {"count": 0, "agreed": 0})
            entry["count"] += n
            entry["agreed"] += n if bool(truth) == bool(predicted) else 0
        count = sum(v["count"] for v in per_version.values())
        agree = sum(v["agreed"] for v in per_version.values())
        return {
            "count": count,
            "agreement": agree / count if count else None,
            "agreement_last": (last_agree or 0) / last_count if last_count else None,
            "per_version": {k: {"count": v["count"], "agreement": v["agreed"] / v["count"]} for k, v in sorted(per_version.items())},
            "confusion": confusion,
        }

    def _counts_query(self):
        """(model version, true label, predicted label, verdicts): from the summary, or counted where there is none
        (a read-only database made before the summary existed)."""
        if self.summarised:
            return select(VerdictCount.model_version, VerdictCount.true_smiling, VerdictCount.predicted_smiling,
                          VerdictCount.verdicts)
        return (select(Verdict.model_version, Verdict.true_smiling, Verdict.predicted_smiling, func.count(Verdict.id))
                .group_by(Verdict.model_version, Verdict.true_smiling, Verdict.predicted_smiling))

    def consented_crops(self) -> list[tuple[Image.Image, int]]:
        """(64x64 greyscale crop, true label 0/1) for every verdict stored with its crop."""
        with Session(self.engine) as session:
            found = session.execute(
                select(Verdict.crop_png, Verdict.true_smiling).where(Verdict.crop_png.is_not(None)).order_by(Verdict.id)
            ).all()
        out = []
        for png, truth in found:
            try:
                out.append((Image.open(io.BytesIO(png)).convert("L"), int(bool(truth))))
            except OSError:
                log.warning("skipping an unreadable stored crop")
        return out

    # -- calibration ---------------------------------------------------------------

    def verdicts_of(self, model_version: str) -> tuple[np.ndarray, np.ndarray, list[dict]]:
        """The model's own probability and the true label of every verdict on ``model_version``'s answers, as it
        served them calibrated or not, and the rows (session, verdict, probability shown) for checks."""
        prefix = model_version + calibration.SEPARATOR
        with Session(self.engine) as session:
            found = session.execute(
                select(Verdict.model_version, Verdict.probability, Verdict.true_smiling, Verdict.session_id,
                       Verdict.verdict, Verdict.predicted_smiling)
                .where((Verdict.model_version == model_version) | Verdict.model_version.startswith(prefix, autoescape=True))
                .order_by(Verdict.id)).all()
            used = {row.id: row.as_calibration() for row in session.execute(select(CalibrationRow).where(CalibrationRow.model_version == model_version)).scalars()
                    } if self.calibrates else {}
        probs, labels, rows = [], [], []
        for served, probability, truth, session_id, verdict, predicted in found:
            cal_id = calibration.split_version(served)[1]
            if cal_id is not None and cal_id not in used:
                continue  # a calibration of another database's: its answers cannot be undone
            probs.append(used[cal_id].undo(probability) if cal_id is not None else probability)
            labels.append(int(bool(truth)))
            rows.append({"session_id": session_id, "verdict": verdict, "probability": probability, "predicted_smiling": bool(predicted)})
        return np.array(probs, dtype=float), np.array(labels, dtype=int), rows

    def save_calibration(self, model_version: str, fitted: "calibration.Calibration", verdicts: int, scores: dict) -> int:
        """Store a calibration for ``model_version``; it is in force from the app's next upload. Returns its id."""
        row = CalibrationRow(model_version=model_version, slope=fitted.slope, offset=fitted.offset, verdicts=verdicts,
                             accuracy_before=scores["accuracy_before"], accuracy_after=scores["accuracy_after"])
        with Session(self.engine) as session, session.begin():
            session.add(row)
            session.flush()
            return row.id

    def calibration_for(self, model_version: str) -> "calibration.Calibration | None":
        """The calibration in force for ``model_version`` (the newest stored), else None."""
        if not self.calibrates:
            return None
        with Session(self.engine) as session:
            row = session.execute(select(CalibrationRow).where(CalibrationRow.model_version == model_version)
                                  .order_by(CalibrationRow.id.desc()).limit(1)).scalar_one_or_none()
        return None if row is None else row.as_calibration()

    def close(self) -> None:
        self.engine.dispose()


def stored_calibration(url: str, model_version: str) -> "calibration.Calibration | None":
    """The calibration in force for ``model_version`` in the database at ``url``, without creating one: None when
    the URL names an SQLite file that does not exist yet. Errors of a database that does not answer propagate."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and (path := _sqlite_file(parsed)) is not None and not path.is_file():
        return None
    store = FeedbackStore(url)
    try:
        return store.calibration_for(model_version)
    finally:
        store.close()


def disagreeing_sessions(rows: list[dict], confident: float = 0.9, factor: float = 3.0, min_share: float = 0.2,
                         min_clicks: int = 10) -> list[dict]:
    """Sessions whose clicks disagree with a confident model far more than the others' do (mistakes or abuse).

    Only verdicts on faces the model gave ``confident`` or more count. A session with at least ``min_clicks``
    of them is flagged when it says "Incorrect" on at least ``min_share`` of them and ``factor`` times as
    often as all other sessions together. Returns [{session_id, clicks, disagreement, others}], worst first.
    """
    sure = [r for r in rows if (r["probability"] if r["predicted_smiling"] else 1 - r["probability"]) >= confident]
    clicks: dict[str, int] = {}
    wrong: dict[str, int] = {}
    for r in sure:
        clicks[r["session_id"]] = clicks.get(r["session_id"], 0) + 1
        wrong[r["session_id"]] = wrong.get(r["session_id"], 0) + (r["verdict"] == "incorrect")
    total_clicks, total_wrong = len(sure), sum(wrong.values())
    flagged = []
    for session, n in clicks.items():
        rest = total_clicks - n
        others = (total_wrong - wrong[session]) / rest if rest else 0.0
        share = wrong[session] / n
        if n >= min_clicks and share >= min_share and share >= factor * others:
            flagged.append({"session_id": session, "clicks": n, "disagreement": share, "others": others})
    return sorted(flagged, key=lambda f: -f["disagreement"])
