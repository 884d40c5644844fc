"""`labeler import`: reviewed captions back into the store, all or nothing, in flat memory.

The file is read twice, a chunk of records at a time (labeler/formats/reviews.py), so memory does
not grow with it. The first pass parses, checks and matches every record, and finds the repeats,
in a read session: a bad record stops the import, naming its line, before the store is written
or locked. The second pass, in one write transaction, reads the file again, matches again (the
store may have changed in between; a record that no longer matches still stops everything) and
writes each chunk. The file's hash is taken before and after: a file changed during the import
is refused, and nothing is stored.

Matching. A record's ids fit when its image id names an image in the datasets in scope, its
caption id (if given) is a draft of that image, and its path (if given) names that image. When
they do not fit (another store's export, a store rebuilt by a fresh scan), the record is matched
by its path relative to a dataset root (an absolute path counts inside the dataset root that
holds it; one leaving a dataset with '..' or outside every root is refused), then by content
hash (every image with that content, each reviewed). A path beats a disagreeing id, so a review
never lands on whatever image an old id names now. The reviewed draft is the caption id's when
the ids fit, else the image's newest best draft, unless the record gives the text of the draft
it judged (draft_caption) and that is another text: then the review keeps that text and no
caption id, so it never counts as a verdict on a draft its reviewer did not see. A record that
does not say accepted or edited is decided against the draft. A record that fits no way is an
error naming its line and what failed. The result counts the records matched each way.

Reviews. A review from Label Studio names its annotation (`external_id`): the store keeps one
review per annotation and image whichever file or format brought it; the same or an older
version counts as already stored, a newer one (its update time) replaces the stored review in
place. Any other review's fingerprint is the file's content hash and the record's place in it, so
importing the same file twice adds nothing, while a later file saying the same thing is a newer
review and supersedes whatever came between. A Label Studio review imported before annotations
were named is recognised by that fingerprint and given its name.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, desc, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from labeler.errors import FormatError, InputError
from labeler.formats.repeats import Repeats
from labeler.formats.reviews import ReviewFile
from labeler.records import ReviewRecord, check_text, normalise_text
from labeler.store import Store
from labeler.store.models import Caption, Dataset, Image, Review, utcnow

CHUNK = 2000  # values per IN list (SQLite allows 32766 parameters, PostgreSQL 65535)
RECORDS = 2000  # records matched (and written) at a time
WAYS = ("id", "path", "content_hash")
REVIEWER_LENGTH: int = Review.__table__.c.reviewer.type.length  # type: ignore[attr-defined]
"""The longest reviewer name the store holds (PostgreSQL enforces it). A longer one is refused,
not cut short: two names that differ only past the limit would silently become one reviewer."""
REVIEWS = Review.__table__
REPLACED = ("caption_id", "draft_text", "text", "outcome", "reviewer", "reviewed_at", "source",
            "external_updated_at", "imported_at")  # fmt: skip


@dataclass
class ImportResult:
    source: str
    records: int = 0  # reviewed records in the file (an exact repeat counts once)
    added: int = 0  # reviews stored now
    updated: int = 0  # stored reviews that a newer version of their annotation replaced
    already: int = 0  # reviews stored before (this file, or the same annotation, not newer)
    by_outcome: Counter[str] = field(default_factory=Counter)
    matched_by: dict[str, int] = field(default_factory=lambda: dict.fromkeys(WAYS, 0))


@dataclass(frozen=True)
class _Match:
    way: str  # one of WAYS
    drafts: tuple[tuple[int, int | None, str | None], ...]  # (image, caption id, text) each


@dataclass(frozen=True)
class _Stamp:
    """What every review of this import shares."""

    path: Path
    digest: str
    reviewer: str | None
    saved_at: dt.datetime  # the file's time: the review time when a record gives none
    imported_at: dt.datetime


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
    if reviewer is not None:
        check_text(reviewer, "the reviewer given", "the name", limit=REVIEWER_LENGTH)
    source = ReviewFile(path, fmt=fmt)
    digest = _digest(path)
    saved_at = dt.datetime.fromtimestamp(path.stat().st_mtime, tz=dt.timezone.utc)
    stamp = _Stamp(path, digest, reviewer, saved_at, utcnow())
    repeats = Repeats(source.name)
    with store.session() as session:
        _check(session, source, _scope(session, datasets), repeats)
    result = ImportResult(source=str(path))
    with store.write() as session:
        _write(session, source, _scope(session, datasets), stamp, repeats, result)
        if _digest(path) != digest:
            raise InputError(f"{path} changed while it was imported; nothing was stored")
    return result


def _check(session, source: ReviewFile, scope, repeats: Repeats) -> None:  # type: ignore[no-untyped-def]
    """Pass 1: every record read, checked and matched; nothing written."""
    matcher = _Matcher(session, scope)
    for chunk in _chunks(source.records()):
        for record, match in zip(chunk, matcher.match(chunk), strict=True):
            for _, _, draft in match.drafts:
                _verdict(record, draft)
            if source.refuses_repeats:
                repeats.add(record)
    repeats.finish(lambda number: next(islice(source.records(), number, None)))


def _write(session, source, scope, stamp, repeats: Repeats, result: ImportResult) -> None:  # type: ignore[no-untyped-def]
    """Pass 2: the file read, matched and written again, a chunk at a time."""
    matcher = _Matcher(session, scope)
    for chunk in _chunks(repeats.kept(source.records())):
        rows = matcher.reviews(chunk, stamp, result.records, result.matched_by)
        result.records += len(chunk)
        result.by_outcome.update(row["outcome"] for row in rows)
        _store(session, rows, result)


def _chunks(records: Iterable[ReviewRecord]) -> Iterator[list[ReviewRecord]]:
    iterator = iter(records)
    while chunk := list(islice(iterator, RECORDS)):
        for record in chunk:
            if record.reviewer is not None:  # Label Studio's user id or e-mail, taken as is
                check_text(record.reviewer, record.where, "reviewer", limit=REVIEWER_LENGTH)
        yield chunk


def _digest(path: Path) -> str:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


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


# --- matching ---------------------------------------------------------------------------------


class _Matcher:
    """Records to images and drafts, a chunk at a time (the rule in the module docstring)."""

    def __init__(self, session: Session, scope: dict[int, bytes]) -> None:
        self.session, self.scope = session, scope

    def reviews(
        self,
        records: list[ReviewRecord],
        stamp: _Stamp,
        first: int,
        ways: dict[str, int] | None = None,
    ) -> list[dict[str, Any]]:
        """The review rows of `records`, the first being record number `first` of the file;
        `ways` counts how they matched."""
        rows = []
        matches = zip(records, self.match(records), strict=True)
        for number, (record, match) in enumerate(matches, first):
            rows.extend(_reviews(record, match, stamp, f"{stamp.digest}:{number}"))
            if ways is not None:
                ways[match.way] += 1
        return rows

    def match(self, records: list[ReviewRecord]) -> list[_Match]:
        places = [_places(r, self.scope) if r.path else [] for r in records]
        images = self._images({r.image_id for r in records if r.image_id is not None})
        captions = self._captions({r.caption_id for r in records if r.caption_id is not None})
        misfits = [
            self._misfit(record, where, images, captions)
            for record, where in zip(records, places, strict=True)
        ]
        by_path = self._by_path(
            {rel for where, misfit in zip(places, misfits, strict=True)
             if misfit is not None for _, rel in where}
        )  # fmt: skip
        found = [
            ("id", (r.image_id,)) if misfit is None else ("path", _at(r, where, by_path))
            for r, where, misfit in zip(records, places, misfits, strict=True)
        ]
        unfound = [i for i, (_, ids) in enumerate(found) if not ids]
        by_hash = self._by_hash({h for i in unfound if (h := records[i].content_hash)})
        for i in unfound:
            record = records[i]
            ids = tuple(by_hash.get(record.content_hash or "", ()))
            if not ids:
                reasons = [misfits[i], *_tried(record)]
                raise FormatError(f"{record.where}: {'; '.join(r for r in reasons if r)}")
            found[i] = ("content_hash", ids)
        newest = self._newest(
            {i for r, (way, ids) in zip(records, found, strict=True)
             if way != "id" or r.caption_id is None for i in ids}
        )  # fmt: skip
        return [
            _Match(way, ((ids[0], r.caption_id, captions[r.caption_id][1]),))
            if way == "id" and r.caption_id is not None
            else _Match(way, tuple((i, *_judged(r, newest.get(i))) for i in ids))
            for r, (way, ids) in zip(records, found, strict=True)
        ]

    def _misfit(self, record, places, images, captions) -> str | None:  # type: ignore[no-untyped-def]
        """Why the record's ids do not name its image; None when they do."""
        if record.image_id is None:
            return ""
        dataset, path_raw = images.get(record.image_id, (None, None))
        if dataset not in self.scope:
            return f"no image with id {record.image_id} in the store"
        caption = captions.get(record.caption_id, (None, None))[0]
        if record.caption_id is not None and caption != record.image_id:
            return f"caption {record.caption_id} is not a draft of image {record.image_id}"
        if places and not any(rel == path_raw and d in (None, dataset) for d, rel in places):
            return f"image {record.image_id} is not at path {record.path!r}"
        return None

    def _images(self, ids: set[int]) -> dict[int, tuple[int, bytes]]:
        """image id -> (dataset id, path) for the given ids."""
        query = select(Image.id, Image.dataset_id, Image.path_raw)
        return {i: (d, bytes(p)) for i, d, p in self._each(query, Image.id, ids)}

    def _captions(self, ids: set[int]) -> dict[int, tuple[int, str]]:
        query = select(Caption.id, Caption.image_id, Caption.text)
        return {i: (image, text) for i, image, text in self._each(query, Caption.id, ids)}

    def _by_path(self, paths: set[bytes]) -> dict[bytes, list[tuple[int, int]]]:
        """path (raw) -> [(image id, dataset id)] in the datasets in scope."""
        query = select(Image.path_raw, Image.id, Image.dataset_id).where(
            Image.dataset_id.in_(list(self.scope))
        )
        found: dict[bytes, list[tuple[int, int]]] = {}
        for raw, image_id, dataset_id in self._each(query, Image.path_raw, paths):
            found.setdefault(bytes(raw), []).append((image_id, dataset_id))
        return found

    def _by_hash(self, hashes: set[str]) -> dict[str, list[int]]:
        # The scope is checked here, not in SQL, so the planner cannot pick the dataset index
        # over the content-hash one and scan a whole dataset per chunk.
        found: dict[str, list[int]] = {}
        query = select(Image.content_hash, Image.id, Image.dataset_id)
        for content_hash, image_id, dataset_id in self._each(query, Image.content_hash, hashes):
            if dataset_id in self.scope:
                found.setdefault(content_hash, []).append(image_id)
        return found

    def _newest(self, image_ids: set[int]) -> dict[int, tuple[int, str]]:
        """image id -> (caption id, text) of its newest best draft."""
        query = (
            select(Caption.image_id, Caption.id, Caption.text)
            .where(Caption.rank == 0)
            .order_by(Caption.stale, desc(Caption.created_at), desc(Caption.id))
        )
        found: dict[int, tuple[int, str]] = {}
        for image_id, caption_id, text in self._each(query, Caption.image_id, image_ids):
            found.setdefault(image_id, (caption_id, text))
        return found

    def _each(self, query, column, values: set[Any]) -> Iterator[Any]:  # type: ignore[no-untyped-def]
        """The rows of `query` where `column` is one of `values`, CHUNK values at a time."""
        yield from _each(self.session, query, column, values)


def _each(session: Session, query, column, values: set[Any]) -> Iterator[Any]:  # type: ignore[no-untyped-def]
    """The rows of `query` where `column` is one of `values`, CHUNK values at a time (one
    expanding parameter: building a bound literal per value cost more than the query)."""
    items = sorted(values)
    query = query.where(column.in_(bindparam("values", expanding=True)))
    for start in range(0, len(items), CHUNK):
        yield from session.execute(query, {"values": items[start : start + CHUNK]})


def _places(record: ReviewRecord, scope: dict[int, bytes]) -> list[tuple[int | None, bytes]]:
    """(dataset id, or None for any, relative path) that the record's path may name; a path that
    leaves the dataset (absolute outside every root, or climbing with '..') is refused."""
    raw = os.fsencode(record.path or "")
    if os.path.isabs(raw):
        inside = [(d, os.path.relpath(raw, root)) for d, root in scope.items()
                  if os.path.commonpath([raw, root]) == root]  # fmt: skip
        if not inside:
            raise FormatError(f"{record.where}: path {record.path!r} is outside every dataset")
        return inside
    parts = raw.replace(b"\\", b"/").split(b"/")
    if b".." in parts:
        raise FormatError(f"{record.where}: path {record.path!r} leaves the dataset ('..')")
    return [(None, b"/".join(p for p in parts if p not in (b"", b".")))]


def _at(record: ReviewRecord, places, by_path) -> tuple[int, ...]:  # type: ignore[no-untyped-def]
    """The image at the record's path; () when there is none."""
    ids = {i for d, rel in places for i, ds in by_path.get(rel, ()) if d in (None, ds)}
    if len(ids) > 1:
        raise FormatError(
            f"{record.where}: path {record.path!r} is in several datasets; name one with --dataset"
        )
    return tuple(ids)


def _judged(record: ReviewRecord, newest: tuple[int, str] | None) -> tuple[int | None, str | None]:
    """(caption id, text) of the draft a record matched without its caption id judged: the
    image's newest best draft, unless the record names another text (the draft its reviewer saw,
    made by another model or run): then that text, and no caption."""
    caption_id, text = newest or (None, None)
    seen = record.draft_text
    if seen is not None and (text is None or normalise_text(seen) != normalise_text(text)):
        return None, seen
    return caption_id, text


def _tried(record: ReviewRecord) -> list[str]:
    reasons = []
    if record.path:
        reasons.append(f"no image at path {record.path!r} in the store")
    if record.content_hash:
        reasons.append(f"no image with content hash {record.content_hash}")
    return reasons


# --- writing ------------------------------------------------------------------------------------


def _reviews(record: ReviewRecord, match: _Match, stamp: _Stamp, key: str) -> list[dict[str, Any]]:
    rows = []
    for image_id, caption_id, draft in match.drafts:
        text, outcome = _verdict(record, draft)
        external = record.external_id and f"{record.external_id}:image:{image_id}"
        rows.append({
            "image_id": image_id, "caption_id": caption_id, "draft_text": draft, "text": text,
            "outcome": outcome, "reviewer": record.reviewer or stamp.reviewer,
            "reviewed_at": record.reviewed_at or stamp.saved_at, "source": str(stamp.path),
            "external_id": external, "external_updated_at": _utc(record.external_updated_at),
            "fingerprint": hashlib.sha256(f"{key}:{image_id}".encode()).hexdigest(),
            "imported_at": stamp.imported_at,
        })  # fmt: skip
    return rows


def _verdict(record: ReviewRecord, draft: str | None) -> tuple[str | None, str]:
    """(text, outcome) of the record's review of `draft`, deciding the outcome when the file
    did not; accepted without a text keeps the draft's."""
    text, outcome = record.reviewed_text, record.outcome
    if outcome is None:
        if draft is None:
            raise FormatError(
                f"{record.where}: no draft to compare the reviewed caption with; "
                "fill in the outcome column"
            )
        outcome = "accepted" if normalise_text(text or "") == normalise_text(draft) else "edited"
    return (draft if outcome == "accepted" and not text else text), outcome


def _utc(moment: dt.datetime | None) -> dt.datetime | None:
    """In UTC, as SQLite keeps it (it drops the offset); a time without one is UTC."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=dt.timezone.utc)
    return moment.astimezone(dt.timezone.utc)


def _newer(moment: dt.datetime | None, than: dt.datetime | None) -> bool:
    return moment is not None and (than is None or _utc(moment) > _utc(than))  # type: ignore[operator]


def _store(session: Session, rows: list[dict[str, Any]], result: ImportResult) -> None:
    plain = [r for r in rows if r["external_id"] is None]
    stored = _stored(session, REVIEWS.c.fingerprint, {r["fingerprint"] for r in plain})
    new = [r for r in plain if r["fingerprint"] not in stored]
    _insert(session, new)
    result.added += len(new)
    result.already += len(plain) - len(new)
    _store_named(session, [r for r in rows if r["external_id"] is not None], result)


def _store_named(session: Session, rows: list[dict[str, Any]], result: ImportResult) -> None:
    """Reviews that name their annotation: one per name, a newer one replacing it in place."""
    latest: dict[str, dict[str, Any]] = {}
    for row in rows:
        kept = latest.get(row["external_id"])
        if kept is None or _newer(row["external_updated_at"], kept["external_updated_at"]):
            latest[row["external_id"]] = row
    stored = _stored(session, REVIEWS.c.external_id, set(latest))
    fresh = [r for name, r in latest.items() if name not in stored]
    legacy = _stored(session, REVIEWS.c.fingerprint, {r["fingerprint"] for r in fresh},
                     unnamed=True)  # fmt: skip
    new = [r for r in fresh if r["fingerprint"] not in legacy]
    named = [{"rid": legacy[r["fingerprint"]][0], "external_id": r["external_id"],
              "external_updated_at": r["external_updated_at"]}
             for r in fresh if r["fingerprint"] in legacy]  # fmt: skip
    newer = [{"rid": stored[name][0], **{c: r[c] for c in REPLACED}}
             for name, r in latest.items()
             if name in stored and _newer(r["external_updated_at"], stored[name][1])]  # fmt: skip
    _insert(session, new)
    for changes in (named, newer):
        if changes:
            session.connection().execute(
                REVIEWS.update().where(REVIEWS.c.id == bindparam("rid")), changes
            )
    result.added += len(new)
    result.updated += len(newer)
    result.already += len(rows) - len(new) - len(newer)


def _stored(session: Session, column, values: set[str], *, unnamed: bool = False):  # type: ignore[no-untyped-def]
    """value -> (review id, external update time) of the stored reviews with those values in
    `column` (`unnamed`: only reviews without an external id)."""
    query = select(column, REVIEWS.c.id, REVIEWS.c.external_updated_at)
    if unnamed:
        query = query.where(REVIEWS.c.external_id.is_(None))
    return {value: (i, t) for value, i, t in _each(session, query, column, values)}


def _insert(session: Session, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    connection = session.connection()
    insert = postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert
    # Another import of the same file or annotation at once: its rows stand.
    connection.execute(insert(REVIEWS).on_conflict_do_nothing(), rows)
