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

from labeler.errors import FormatError, InputError
from labeler.formats.repeats import Repeats
from labeler.formats.reviews import ReviewFile
from labeler.records import ReviewRecord, check_text, normalise_text
from labeler.store import Store
from labeler.store import images as image_store
from labeler.store import reviews as review_store
from labeler.store.models import utcnow

RECORDS = 2000  # records matched (and written) at a time
WAYS = ("id", "path", "content_hash")
REVIEWER_LENGTH = review_store.REVIEWER_LENGTH
"""The longest reviewer name the store holds (PostgreSQL enforces it). A longer one is refused,
not cut short: two names that differ only past the limit would silently become one reviewer."""
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

    source: str  # the file's path, or where the records came from
    digest: str
    reviewer: str | None
    saved_at: dt.datetime  # the file's time: the review time when a record gives none
    imported_at: dt.datetime
    # the outcome of a caption written where there is no draft to compare it with (the
    # webhook: the annotator's own caption, edited); None: an error naming the record
    undrafted: str | None = None


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
    stamp = _Stamp(str(path), digest, reviewer, saved_at, utcnow())
    repeats = Repeats(source.name)
    with store.session() as session:
        scope = image_store.dataset_roots(session, datasets)
        _check(session, source, scope, repeats)
    result = ImportResult(source=str(path))
    with store.write() as session:
        scope = image_store.dataset_roots(session, datasets)
        _write(session, source, scope, stamp, repeats, result)
        if _digest(path) != digest:
            raise InputError(f"{path} changed while it was imported; nothing was stored")
    return result


def import_records(
    store: Store, records: Sequence[ReviewRecord], *, source: str, digest: str,
    datasets: Sequence[str] | None = None,
) -> ImportResult:  # fmt: skip
    """Store reviews that arrive on their own (`labeler serve`'s webhook) as an import stores a
    file's, in one transaction: matched the same way, one review per annotation and image, a
    newer version replacing the stored one in place. `digest` names the delivery (a hash of its
    body); a FormatError when a record matches no image, and nothing is stored."""
    now = utcnow()
    stamp = _Stamp(source, digest, None, now, now, undrafted="edited")
    result = ImportResult(source=source)
    with store.write() as session:
        matcher = _Matcher(session, image_store.dataset_roots(session, datasets))
        for chunk in _chunks(records):
            rows = matcher.reviews(chunk, stamp, result.records, result.matched_by)
            result.records += len(chunk)
            result.by_outcome.update(row["outcome"] for row in rows)
            _store(session, rows, result)
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


# --- matching ---------------------------------------------------------------------------------


class _Matcher:
    """Records to images and drafts, a chunk at a time (the rule in the module docstring);
    `scope` maps the id of each dataset a path may name to its raw root."""

    def __init__(self, session, scope: dict[int, bytes]) -> None:  # type: ignore[no-untyped-def]
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
        session = self.session
        image_ids = {r.image_id for r in records if r.image_id is not None}
        caption_ids = {r.caption_id for r in records if r.caption_id is not None}
        images = review_store.image_places(session, image_ids)
        captions = review_store.draft_images(session, caption_ids)
        misfits = [
            self._misfit(record, where, images, captions)
            for record, where in zip(records, places, strict=True)
        ]
        by_path = review_store.images_at(
            session, {rel for where, misfit in zip(places, misfits, strict=True)
                      if misfit is not None for _, rel in where}, datasets=self.scope,
        )  # fmt: skip
        found = [
            ("id", (r.image_id,)) if misfit is None else ("path", _at(r, where, by_path))
            for r, where, misfit in zip(records, places, misfits, strict=True)
        ]
        unfound = [i for i, (_, ids) in enumerate(found) if not ids]
        by_hash = review_store.images_with_content(
            session, {h for i in unfound if (h := records[i].content_hash)}, datasets=self.scope
        )
        for i in unfound:
            record = records[i]
            ids = tuple(by_hash.get(record.content_hash or "", ()))
            if not ids:
                reasons = [misfits[i], *_tried(record)]
                raise FormatError(f"{record.where}: {'; '.join(r for r in reasons if r)}")
            found[i] = ("content_hash", ids)
        newest = review_store.newest_best_drafts(
            session, {i for r, (way, ids) in zip(records, found, strict=True)
                      if way != "id" or r.caption_id is None for i in ids},
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
        text, outcome = _verdict(record, draft, stamp.undrafted)
        external = record.external_id and f"{record.external_id}:image:{image_id}"
        rows.append({
            "image_id": image_id, "caption_id": caption_id, "draft_text": draft, "text": text,
            "outcome": outcome, "reviewer": record.reviewer or stamp.reviewer,
            "reviewed_at": record.reviewed_at or stamp.saved_at, "source": stamp.source,
            "external_id": external, "external_updated_at": record.external_updated_at,
            "fingerprint": hashlib.sha256(f"{key}:{image_id}".encode()).hexdigest(),
            "imported_at": stamp.imported_at,
        })  # fmt: skip
    return rows


def _verdict(
    record: ReviewRecord, draft: str | None, undrafted: str | None = None
) -> tuple[str | None, str]:
    """(text, outcome) of the record's review of `draft`, deciding the outcome when the file
    did not (`undrafted` where there is no draft); accepted without a text keeps the draft's."""
    text, outcome = record.reviewed_text, record.outcome
    if outcome is None and draft is None:
        if undrafted is None:
            raise FormatError(
                f"{record.where}: no draft to compare the reviewed caption with; "
                "fill in the outcome column"
            )
        outcome = undrafted
    elif outcome is None:
        outcome = "accepted" if normalise_text(text or "") == normalise_text(draft) else "edited"
    return (draft if outcome == "accepted" and not text else text), outcome


def _newer(moment: dt.datetime | None, than: dt.datetime | None) -> bool:
    """Both are aware: the file's times carry a zone (or are taken as UTC), the store's are UTC."""
    return moment is not None and (than is None or moment > than)


def _store(session, rows: list[dict[str, Any]], result: ImportResult) -> None:  # type: ignore[no-untyped-def]
    plain = [r for r in rows if r["external_id"] is None]
    stored = review_store.reviews_by_fingerprint(session, {r["fingerprint"] for r in plain})
    new = [r for r in plain if r["fingerprint"] not in stored]
    review_store.insert_reviews(session, new)
    result.added += len(new)
    result.already += len(plain) - len(new)
    _store_named(session, [r for r in rows if r["external_id"] is not None], result)


def _store_named(session, rows: list[dict[str, Any]], result: ImportResult) -> None:  # type: ignore[no-untyped-def]
    """Reviews that name their annotation: one per name, a newer one replacing it in place."""
    latest: dict[str, dict[str, Any]] = {}
    for row in rows:
        kept = latest.get(row["external_id"])
        if kept is None or _newer(row["external_updated_at"], kept["external_updated_at"]):
            latest[row["external_id"]] = row
    stored = review_store.reviews_by_external_id(session, set(latest))
    fresh = [r for name, r in latest.items() if name not in stored]
    legacy = review_store.reviews_by_fingerprint(
        session, {r["fingerprint"] for r in fresh}, unnamed=True
    )
    new = [r for r in fresh if r["fingerprint"] not in legacy]
    named = [(legacy[r["fingerprint"]].id, {"external_id": r["external_id"],
                                            "external_updated_at": r["external_updated_at"]})
             for r in fresh if r["fingerprint"] in legacy]  # fmt: skip
    newer = [(stored[name].id, {c: r[c] for c in REPLACED})
             for name, r in latest.items()
             if name in stored
             and _newer(r["external_updated_at"], stored[name].external_updated_at)]  # fmt: skip
    review_store.insert_reviews(session, new)
    for changes in (named, newer):
        review_store.update_reviews(session, changes)
    result.added += len(new)
    result.updated += len(newer)
    result.already += len(rows) - len(new) - len(newer)
