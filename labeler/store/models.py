"""The store's tables as SQLAlchemy 2.x typed models.

The migrations in the top-level `migrations/` folder are the source of truth for the schema; these
models must always match them (a test compares the two with Alembic's autogenerate). Constraints
are named through a naming convention so that SQLite's batch mode can alter them later.

Design choices a reader would otherwise have to reverse-engineer:
- An image's path is kept twice: `path_raw` holds the exact bytes the file system gave (names that
  are not valid UTF-8 survive a round trip), `path` holds a readable text form for display and
  exports. Uniqueness and look-ups go through `path_raw`.
- A draft is identified by (image, model, decoding settings, n-best rank). The model is identified
  by its checkpoint's content hash, the settings by a short hash of their values (`settings_key`);
  `caption_runs` records each execution of the caption job with its settings, counts and timings.
- Confidence fields are stored raw (`log_likelihood`, `num_tokens`) next to the derived
  `confidence`, so any other score can be recomputed without decoding again.
- `p_accept` is the calibrated score every ranking uses, written with the draft by the calibrator
  `calibrator_id` names (`calibrators`: versions per model, fitted on the checkpoint's validation
  split or on the store's reviews); NULL there means `confidence` stood in. A writer that leaves
  p_accept out gets that stand-in (the column's default copies `confidence`).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

IMAGE_STATUSES = ("ok", "unreadable", "unsupported", "too_large", "missing")
RUN_STATUSES = ("running", "completed", "interrupted", "failed", "abandoned")
REVIEW_OUTCOMES = ("accepted", "edited", "rejected", "skipped")
CALIBRATOR_SOURCES = ("validation", "reviews")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A moment in time, stored and read back as UTC on every backend. SQLite keeps no offset, so
    an aware value is turned into UTC before it is stored (it kept its local wall time before),
    a naive one is taken as UTC, and what comes back is aware UTC, as on PostgreSQL: the same
    store gives the same `reviewed_at` in an export whichever database holds it."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        return _as_utc(value)

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        return _as_utc(value)


def _as_utc(value: dt.datetime | None) -> dt.datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Dataset(Base):
    __tablename__ = "datasets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    root: Mapped[str] = mapped_column(Text)  # absolute folder, readable form
    root_raw: Mapped[bytes] = mapped_column(LargeBinary)  # absolute folder, exact bytes
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Image(Base):
    __tablename__ = "images"
    __table_args__ = (
        UniqueConstraint("dataset_id", "path_raw"),
        Index(None, "content_hash"),
        Index(None, "dataset_id", "status"),
        CheckConstraint(_in("status", IMAGE_STATUSES), name="status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    path: Mapped[str] = mapped_column(Text)  # relative to the dataset root, '/'-separated
    path_raw: Mapped[bytes] = mapped_column(LargeBinary)  # the same, as exact bytes
    size: Mapped[int | None] = mapped_column(BigInteger)
    mtime_ns: Mapped[int | None] = mapped_column(BigInteger)
    content_hash: Mapped[str | None] = mapped_column(String(64))  # sha256 hex of the bytes
    format: Mapped[str | None] = mapped_column(String(16))
    width: Mapped[int | None] = mapped_column(Integer)  # as displayed, after EXIF orientation
    height: Mapped[int | None] = mapped_column(Integer)
    mode: Mapped[str | None] = mapped_column(String(16))
    frames: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    first_seen_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    scanned_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Model(Base):
    __tablename__ = "models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    content_hash: Mapped[str] = mapped_column(String(64), unique=True)  # the checkpoint's sha256
    name: Mapped[str] = mapped_column(String(200))
    family: Mapped[str] = mapped_column(String(50))  # e.g. "show-tell"
    source: Mapped[str | None] = mapped_column(Text)  # where the checkpoint was loaded from
    info: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # config and training metadata
    registered_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class CaptionRun(Base):
    __tablename__ = "caption_runs"
    __table_args__ = (CheckConstraint(_in("status", RUN_STATUSES), name="status"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    settings_key: Mapped[str] = mapped_column(String(32))
    settings: Mapped[dict[str, Any]] = mapped_column(JSON)  # decoding settings, in full
    status: Mapped[str] = mapped_column(String(16))
    host: Mapped[str | None] = mapped_column(String(255))
    pid: Mapped[int | None] = mapped_column(Integer)
    # The worker process's start time (seconds since the epoch, as the OS reports it): with host
    # and pid it tells a dead worker from a live one that reused the pid.
    process_started: Mapped[float | None] = mapped_column(Float)
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    counts: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # captioned, failed by reason...
    timings: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # seconds per stage
    error: Mapped[str | None] = mapped_column(Text)


def _confidence_stands_in(context: Any) -> float:
    """p_accept's default: the draft's own confidence (no calibrator)."""
    return context.get_current_parameters()["confidence"]


class StoredCalibrator(Base):
    """A calibrator (labeler.calibration.Calibrator) kept for a model: version 1 is usually the
    checkpoint's (any settings), later ones fitted on reviews of one decoding settings."""

    __tablename__ = "calibrators"
    __table_args__ = (
        UniqueConstraint("model_id", "version"),
        CheckConstraint(_in("source", CALIBRATOR_SOURCES), name="source"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    settings_key: Mapped[str | None] = mapped_column(String(32))  # None: fitted for any settings
    version: Mapped[int] = mapped_column(Integer)  # 1, 2, ... per model
    source: Mapped[str] = mapped_column(String(16))
    params: Mapped[dict[str, Any]] = mapped_column(JSON)  # Calibrator.to_dict()
    auroc: Mapped[float | None] = mapped_column(Float)  # out of fold, for acceptance/rightness
    ece: Mapped[float | None] = mapped_column(Float)
    examples: Mapped[int] = mapped_column(Integer)  # judged drafts it was fitted on
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Caption(Base):
    __tablename__ = "captions"
    __table_args__ = (
        UniqueConstraint("image_id", "model_id", "settings_key", "rank"),
        Index(None, "confidence"),
        Index(None, "model_id", "settings_key", "rank", "confidence"),
        Index(None, "model_id", "settings_key", "rank", "p_accept"),
        CheckConstraint("rank >= 0", name="rank"),
        CheckConstraint("num_tokens >= 0", name="num_tokens"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    settings_key: Mapped[str] = mapped_column(String(32))
    run_id: Mapped[int | None] = mapped_column(ForeignKey("caption_runs.id", ondelete="SET NULL"))
    rank: Mapped[int] = mapped_column(Integer)  # 0 is the best draft, 1.. the n-best alternatives
    text: Mapped[str] = mapped_column(Text)
    # Sum over the words and the end token of ln p(word | image, previous words).
    log_likelihood: Mapped[float] = mapped_column(Float)
    num_tokens: Mapped[int] = mapped_column(Integer)  # words, plus the end token when finished
    confidence: Mapped[float] = mapped_column(Float)  # exp(log_likelihood / num_tokens)
    # P(a reviewer accepts the draft unchanged), from the calibrator below; confidence without one.
    p_accept: Mapped[float] = mapped_column(Float, default=_confidence_stands_in)
    calibrator_id: Mapped[int | None] = mapped_column(
        ForeignKey("calibrators.id", ondelete="SET NULL")
    )
    score: Mapped[float] = mapped_column(Float)  # the beam's ranking score (length penalty)
    token_logprobs: Mapped[list[float]] = mapped_column(JSON)
    margin: Mapped[float | None] = mapped_column(Float)  # best against second, same per image
    finished: Mapped[bool] = mapped_column(Boolean)  # False: hit the maximum length
    repeated_ngram: Mapped[bool] = mapped_column(Boolean)
    has_unknown: Mapped[bool] = mapped_column(Boolean)
    stale: Mapped[bool] = mapped_column(Boolean, default=False)  # the file changed since
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Review(Base):
    __tablename__ = "reviews"
    __table_args__ = (
        Index(None, "image_id", "reviewed_at"),
        Index(None, "external_id", unique=True),
        CheckConstraint(_in("outcome", REVIEW_OUTCOMES), name="outcome"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    caption_id: Mapped[int | None] = mapped_column(ForeignKey("captions.id", ondelete="SET NULL"))
    text: Mapped[str | None] = mapped_column(Text)  # the caption the reviewer kept or wrote
    outcome: Mapped[str] = mapped_column(String(16))
    reviewer: Mapped[str | None] = mapped_column(String(200))
    reviewed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    source: Mapped[str | None] = mapped_column(Text)  # the imported file
    # The text of the draft the review judged: it counts for that draft, and for any draft of the
    # image with the same text (caption_id is lost when the draft is re-made; this is not).
    draft_text: Mapped[str | None] = mapped_column(Text)
    # The review tool's own identity of the review (e.g. a Label Studio annotation) and when the
    # tool last changed it: the same annotation from any file is one review; a newer one replaces it
    external_id: Mapped[str | None] = mapped_column(String(200))
    external_updated_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    # Hash of what the review says; importing the same file twice adds nothing.
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    imported_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class CaptionClaim(Base):
    """A worker's lease on one content hash for one model and settings (the caption job)."""

    __tablename__ = "caption_claims"
    __table_args__ = (
        UniqueConstraint("model_id", "settings_key", "content_hash"),
        Index(None, "expires_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    settings_key: Mapped[str] = mapped_column(String(32))
    content_hash: Mapped[str] = mapped_column(String(64))
    worker: Mapped[str] = mapped_column(String(200))  # host, pid and a random suffix
    # Who holds the claim: on the same host a claim whose process is gone is free at once.
    host: Mapped[str | None] = mapped_column(String(255))
    pid: Mapped[int | None] = mapped_column(Integer)
    process_started: Mapped[float | None] = mapped_column(Float)  # as in caption_runs
    run_id: Mapped[int | None] = mapped_column(ForeignKey("caption_runs.id", ondelete="SET NULL"))
    claimed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
