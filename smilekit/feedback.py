"""Where feedback is written: one row per face verdict, in SQLite or PostgreSQL.

The engine comes from a URL (argument, else ``SMILEKIT_DB_URL``, else the SQLite
file ``outputs/feedback.db``); the schema is declared once below. Each click is an
upsert keyed on (session, photo, face, model version), so clicking again changes
the verdict instead of adding a row. Face pixels are stored only with consent;
the full photo never is.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import time
from datetime import datetime, timezone
from pathlib import Path

from PIL import Image
from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
    case,
    create_engine,
    event,
    func,
    select,
    update,
)
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DB = ROOT / "outputs" / "feedback.db"
#: how long an SQLite writer waits for another writer's lock, in milliseconds
SQLITE_BUSY_TIMEOUT_MS = 30_000


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
    __table_args__ = (UniqueConstraint("session_id", "photo_sha256", "face_index", "model_version", name="uq_feedback_face"),)

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


COLUMNS = ("id", "created_at", "updated_at", "session_id", "photo_sha256", "face_index", "box", "predicted_smiling",
           "probability", "model_version", "verdict", "true_smiling", "crop_png")


def _as_utc(value: datetime) -> datetime:
    """SQLite returns naive datetimes; everything stored is UTC."""
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _sqlite_pragmas(dbapi_connection, _record):
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def default_url() -> str:
    """``SMILEKIT_DB_URL``, else the SQLite file ``outputs/feedback.db`` in the project."""
    return os.environ.get("SMILEKIT_DB_URL") or f"sqlite:///{DEFAULT_DB}"


class FeedbackStore:
    """Records verdicts and answers questions about them."""

    def __init__(self, url: str | None = None):
        self.url = url or default_url()
        self.engine = create_engine(self.url, pool_pre_ping=True)
        if self.engine.dialect.name == "sqlite":
            database = self.engine.url.database
            if database and database != ":memory:" and not database.startswith("file:"):
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._create_schema()

    def _create_schema(self) -> None:
        try:
            Base.metadata.create_all(self.engine)
        except DBAPIError:
            # another store created it at the same moment ("already exists"); now it is there
            Base.metadata.create_all(self.engine)

    # -- writing ---------------------------------------------------------------

    def record(self, *, session_id: str, photo_sha256: str, face_index: int, box: tuple[int, int, int, int],
               probability: float, model_version: str, correct: bool, crop_png: bytes | None = None) -> int:
        """Save (or change) the verdict on one face; returns the row id.

        ``correct`` says whether the model's answer was right; the true label is
        derived from it. ``crop_png`` (the 64x64 face crop) only with consent.
        """
        predicted = float(probability) >= 0.5
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
        )
        for attempt in range(5):
            try:
                return self._upsert(key, changes, now)
            except OperationalError as err:  # SQLite lock held past the busy timeout, dropped connection
                if attempt == 4:
                    raise
                log.warning("feedback write failed (%s); retrying", err.orig)
                time.sleep(0.1 * (attempt + 1))
        raise AssertionError("unreachable")

    def _upsert(self, key: dict, changes: dict, now: datetime) -> int:
        dialect = self.engine.dialect.name
        with Session(self.engine) as session, session.begin():
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
        """Remove the stored face crops of one session (consent withdrawn); returns how many."""
        with Session(self.engine) as session, session.begin():
            result = session.execute(
                update(Verdict).where(Verdict.session_id == session_id, Verdict.crop_png.is_not(None)).values(crop_png=None)
            )
            return result.rowcount

    # -- reading ---------------------------------------------------------------

    def rows(self) -> list[dict]:
        """Every verdict as a dict (see ``COLUMNS``), oldest first."""
        with Session(self.engine) as session:
            found = session.execute(select(Verdict).order_by(Verdict.created_at, Verdict.id)).scalars().all()
            return [self._as_dict(v) for v in found]

    @staticmethod
    def _as_dict(v: Verdict) -> dict:
        return {
            "id": v.id, "created_at": _as_utc(v.created_at), "updated_at": _as_utc(v.updated_at),
            "session_id": v.session_id, "photo_sha256": v.photo_sha256, "face_index": v.face_index,
            "box": (v.box_x, v.box_y, v.box_w, v.box_h), "predicted_smiling": bool(v.predicted_smiling),
            "probability": v.probability, "model_version": v.model_version, "verdict": v.verdict,
            "true_smiling": bool(v.true_smiling), "crop_png": v.crop_png,
        }

    def stats(self, last: int = 100) -> dict:
        """Counts, agreement rates and the confusion table of all feedback.

        ``agreement`` is the share of verdicts saying the model was right (None when
        there are none); ``agreement_last`` the same over the ``last`` most recent;
        ``confusion`` is ``[[tn, fp], [fn, tp]]``: rows the true label, columns the
        predicted one.
        """
        agreed = func.sum(case((Verdict.verdict == "correct", 1), else_=0))
        with Session(self.engine) as session:
            count, agree = session.execute(select(func.count(Verdict.id), agreed)).one()
            recent = (select(Verdict.verdict).order_by(Verdict.updated_at.desc(), Verdict.id.desc()).limit(last).subquery())
            last_count, last_agree = session.execute(
                select(func.count(), func.sum(case((recent.c.verdict == "correct", 1), else_=0)))
            ).one()
            per_version = {
                version: {"count": n, "agreement": (a or 0) / n}
                for version, n, a in session.execute(
                    select(Verdict.model_version, func.count(Verdict.id), agreed).group_by(Verdict.model_version)
                )
            }
            confusion = [[0, 0], [0, 0]]
            for truth, predicted, n in session.execute(
                select(Verdict.true_smiling, Verdict.predicted_smiling, func.count(Verdict.id))
                .group_by(Verdict.true_smiling, Verdict.predicted_smiling)
            ):
                confusion[int(bool(truth))][int(bool(predicted))] += n
        return {
            "count": count,
            "agreement": (agree or 0) / count if count else None,
            "agreement_last": (last_agree or 0) / last_count if last_count else None,
            "per_version": per_version,
            "confusion": confusion,
        }

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

    def close(self) -> None:
        self.engine.dispose()
