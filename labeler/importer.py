"""`labeler import`: reviewed captions back into the store, all or nothing.

The file is parsed whole (labeler/formats/reviews.py), then every record is matched to an image:
by its id, else by its path relative to a dataset root, else by content hash (every image with
that content). The reviewed draft is the record's caption id when it names one, else the image's
newest best draft; a record that does not say accepted or edited is decided against that draft.
Any record that does not match stops the import before anything is written, with the record's
line named. Then all reviews go in one transaction.

A review's fingerprint is the file's content hash and the record's place in it, so importing the
same file twice adds nothing, while a later file saying the same thing is a newer review and
supersedes whatever came between.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import desc, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from labeler.errors import FormatError, InputError
from labeler.formats.reviews import read_reviews
from labeler.formats.rows import ReviewRecord, check_text, normalise_text
from labeler.store import Store
from labeler.store.models import Caption, Dataset, Image, Review, utcnow

CHUNK = 500
REVIEWER_LENGTH: int = Review.__table__.c.reviewer.type.length  # type: ignore[attr-defined]
"""The longest reviewer name the store holds (PostgreSQL enforces it). A longer one is refused,
not cut short: two names that differ only past the limit would silently become one reviewer."""


@dataclass
class ImportResult:
    source: str
    records: int = 0  # reviewed records in the file
    added: int = 0  # reviews stored now
    already: int = 0  # reviews this file had already given
    by_outcome: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True)
class _Match:
    image_ids: tuple[int, ...]
    caption_id: int | None
    draft: str | None


def import_reviews(
    store: Store,
    path: Path,
    *,
    fmt: str | None = None,
    reviewer: str | None = None,
    datasets: Sequence[str] | None = None,
) -> ImportResult:
    """Store the reviews in `path`; nothing is stored unless every record matches an image."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a folder; name the reviewed file inside it")
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    records = read_reviews(path, fmt=fmt)
    _check_reviewers(records, reviewer)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    result = ImportResult(source=str(path), records=len(records))
    with store.write() as session:
        scope = _scope(session, datasets)
        matches = _match_all(session, records, scope)
        rows = []
        for index, (record, match) in enumerate(zip(records, matches, strict=True)):
            rows.extend(_reviews(record, match, reviewer, path, f"{digest}:{index}"))
        for row in rows:
            result.by_outcome[row["outcome"]] += 1
        result.added = _insert(session, rows)
        result.already = len(rows) - result.added
    return result


def _check_reviewers(records: list[ReviewRecord], reviewer: str | None) -> None:
    """Refuse reviewer names the store cannot hold, before it is touched. Text fields were
    checked when read, but Label Studio's reviewer is a user id or email taken as is."""
    if reviewer is not None:
        check_text(reviewer, "the reviewer given", "the name", limit=REVIEWER_LENGTH)
    for record in records:
        if record.reviewer is not None:
            check_text(record.reviewer, record.where, "reviewer", limit=REVIEWER_LENGTH)


def _scope(session: Session, datasets: Sequence[str] | None) -> dict[int, bytes]:
    """Dataset id -> root (raw) of the datasets a path may name."""
    query = select(Dataset.id, Dataset.name, Dataset.root_raw)
    found = {name: (i, bytes(root)) for i, name, root in session.execute(query)}
    if datasets:
        unknown = [d for d in datasets if d not in found]
        if unknown:
            raise InputError(f"no dataset named {', '.join(unknown)}; see `labeler datasets`")
        return {found[d][0]: found[d][1] for d in datasets}
    return dict(found.values())


def _match_all(
    session: Session, records: list[ReviewRecord], scope: dict[int, bytes]
) -> list[_Match]:
    by_id = _chunked(session, Image.id, {r.image_id for r in records if r.image_id is not None})
    # A hash is the last resort: looked up only for records that name neither id nor path.
    hashes = {r.content_hash for r in records if r.content_hash and not (r.image_id or r.path)}
    by_hash = _images_by_hash(session, hashes, scope)
    by_path = _images_by_path(session, records, scope)
    images = {}
    for record in records:
        images[record.where] = _image_ids(record, by_id, by_path, by_hash, scope)
    drafts = _drafts(session, records, images)
    return [_Match(images[r.where], *drafts[r.where]) for r in records]


def _image_ids(record, by_id, by_path, by_hash, scope) -> tuple[int, ...]:  # type: ignore[no-untyped-def]
    if record.image_id is not None:
        if record.image_id not in by_id or by_id[record.image_id] not in scope:
            raise FormatError(f"{record.where}: no image with id {record.image_id} in the store")
        return (record.image_id,)
    if record.path:
        found = by_path.get(record.path)
        if not found:
            raise FormatError(f"{record.where}: no image at path {record.path!r} in the store")
        if len(found) > 1:
            raise FormatError(
                f"{record.where}: path {record.path!r} is in several datasets; "
                "name one with --dataset"
            )
        return tuple(found)
    found = by_hash.get(record.content_hash or "")
    if not found:
        raise FormatError(f"{record.where}: no image with content hash {record.content_hash}")
    return tuple(found)


def _chunked(session: Session, column, values: set[Any]) -> dict[int, int]:  # type: ignore[no-untyped-def]
    """image id -> dataset id for the given ids."""
    found: dict[int, int] = {}
    items = sorted(values)
    for start in range(0, len(items), CHUNK):
        query = select(Image.id, Image.dataset_id).where(column.in_(items[start : start + CHUNK]))
        found.update((i, d) for i, d in session.execute(query))
    return found


def _images_by_hash(
    session: Session, hashes: set[str], scope: dict[int, bytes]
) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    items = sorted(hashes)
    for start in range(0, len(items), CHUNK):
        # The scope is checked here, not in SQL, so the planner cannot pick the dataset index
        # over the content-hash one and scan a whole dataset per chunk.
        query = select(Image.content_hash, Image.id, Image.dataset_id).where(
            Image.content_hash.in_(items[start : start + CHUNK])
        )
        for content_hash, image_id, dataset_id in session.execute(query):
            if dataset_id in scope:
                found.setdefault(content_hash, []).append(image_id)
    return found


def _images_by_path(
    session: Session, records: list[ReviewRecord], scope: dict[int, bytes]
) -> dict[str, list[int]]:
    """Paths as written in the file -> matching image ids; a path that leaves the dataset
    (absolute outside every root, or climbing with '..') is refused."""
    wanted: dict[bytes, list[str]] = {}
    for record in records:
        if record.image_id is None and record.path:
            for rel in _relative(record, scope):
                wanted.setdefault(rel, []).append(record.path)
    found: dict[str, list[int]] = {}
    items = sorted(wanted)
    for start in range(0, len(items), CHUNK):
        query = select(Image.path_raw, Image.id).where(
            Image.path_raw.in_(items[start : start + CHUNK]), Image.dataset_id.in_(list(scope))
        )
        for raw, image_id in session.execute(query):
            for text in wanted[bytes(raw)]:
                found.setdefault(text, []).append(image_id)
    return found


def _relative(record: ReviewRecord, scope: dict[int, bytes]) -> list[bytes]:
    raw = os.fsencode(record.path or "")
    if os.path.isabs(raw):
        inside = [os.path.relpath(raw, root) for root in scope.values()
                  if os.path.commonpath([raw, root]) == root]  # fmt: skip
        if not inside:
            raise FormatError(f"{record.where}: path {record.path!r} is outside every dataset")
        return inside
    parts = raw.replace(b"\\", b"/").split(b"/")
    if b".." in parts:
        raise FormatError(f"{record.where}: path {record.path!r} leaves the dataset ('..')")
    return [b"/".join(p for p in parts if p not in (b"", b"."))]


def _drafts(session: Session, records: list[ReviewRecord], images: dict[str, tuple[int, ...]]):  # type: ignore[no-untyped-def]
    """record -> (caption id, draft text) of the draft it reviews, or (None, None)."""
    named = {r.caption_id for r in records if r.caption_id is not None}
    by_caption: dict[int, tuple[int, str]] = {}
    items = sorted(named)
    for start in range(0, len(items), CHUNK):
        query = select(Caption.id, Caption.image_id, Caption.text).where(
            Caption.id.in_(items[start : start + CHUNK])
        )
        by_caption.update({i: (image, text) for i, image, text in session.execute(query)})
    newest = _newest_drafts(session, {i for ids in images.values() for i in ids})
    out = {}
    for record in records:
        first = images[record.where][0]
        if record.caption_id is not None:
            image, text = by_caption.get(record.caption_id, (None, None))
            if image != first:
                raise FormatError(
                    f"{record.where}: caption {record.caption_id} is not a draft of image {first}"
                )
            out[record.where] = (record.caption_id, text)
        else:
            out[record.where] = newest.get(first, (None, None))
    return out


def _newest_drafts(session: Session, image_ids: set[int]) -> dict[int, tuple[int, str]]:
    found: dict[int, tuple[int, str]] = {}
    items = sorted(image_ids)
    for start in range(0, len(items), CHUNK):
        query = (
            select(Caption.image_id, Caption.id, Caption.text)
            .where(Caption.image_id.in_(items[start : start + CHUNK]), Caption.rank == 0)
            .order_by(Caption.stale, desc(Caption.created_at), desc(Caption.id))
        )
        for image_id, caption_id, text in session.execute(query):
            found.setdefault(image_id, (caption_id, text))
    return found


def _reviews(record, match: _Match, reviewer, path: Path, key: str) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    text, outcome = record.reviewed_text, record.outcome
    if outcome is None:
        if match.draft is None:
            raise FormatError(
                f"{record.where}: no draft to compare the reviewed caption with; "
                "fill in the outcome column"
            )
        outcome = (
            "accepted" if normalise_text(text or "") == normalise_text(match.draft) else "edited"
        )
    if outcome == "accepted" and not text:
        text = match.draft
    now = utcnow()
    rows = []
    for image_id in match.image_ids:
        fingerprint = hashlib.sha256(f"{key}:{image_id}".encode()).hexdigest()
        rows.append({
            "image_id": image_id, "caption_id": match.caption_id, "text": text,
            "outcome": outcome, "reviewer": record.reviewer or reviewer,
            "reviewed_at": record.reviewed_at or _file_time(path), "source": str(path),
            "fingerprint": fingerprint, "imported_at": now,
        })  # fmt: skip
    return rows


def _file_time(path: Path) -> dt.datetime:
    """When the reviewer saved the file: the review time when the file does not give one."""
    return dt.datetime.fromtimestamp(path.stat().st_mtime, tz=dt.timezone.utc)


def _insert(session: Session, rows: list[dict[str, Any]]) -> int:
    """Insert the reviews not stored yet (by fingerprint); returns how many were new."""
    connection = session.connection()
    insert = postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert
    added = 0
    for start in range(0, len(rows), CHUNK):
        chunk = rows[start : start + CHUNK]
        stored = set(
            session.scalars(
                select(Review.fingerprint).where(
                    Review.fingerprint.in_([r["fingerprint"] for r in chunk])
                )
            )
        )
        new = [r for r in chunk if r["fingerprint"] not in stored]
        if new:
            stmt = insert(Review.__table__).on_conflict_do_nothing(index_elements=["fingerprint"])
            connection.execute(stmt, new)
        added += len(new)
    return added
