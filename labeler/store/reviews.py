"""Store functions for reviews in and out: the import's matching and writing, and the reviewed
captions that training takes.

The import (labeler/review/importer.py) matches and writes a chunk of records at a time, so every
look-up here takes a set of values and answers for all of them, CHUNK values per query: the
values go in as one expanding parameter, since building a bound literal per value cost more than
the query. Answers are plain dicts of tuples, keyed by the value looked up. Each function takes an
explicit session and leaves the transaction to its caller.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

from sqlalchemy import bindparam, case, desc, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, aliased

from labeler.store.drafts import latest_image_review
from labeler.store.images import dataset_ids
from labeler.store.models import Caption, Dataset, Image, Review

CHUNK = 2000  # values per IN list (SQLite allows 32766 parameters, PostgreSQL 65535)
REVIEWER_LENGTH: int = Review.__table__.c.reviewer.type.length  # type: ignore[attr-defined]
"""The longest reviewer name the store holds (PostgreSQL enforces it)."""
REVIEWS = Review.__table__


def _each(session: Session, query, column, values: Iterable[Any]) -> Iterator[Any]:  # type: ignore[no-untyped-def]
    """The rows of `query` where `column` is one of `values`, CHUNK values at a time."""
    items = sorted(values)
    query = query.where(column.in_(bindparam("values", expanding=True)))
    for start in range(0, len(items), CHUNK):
        yield from session.execute(query, {"values": items[start : start + CHUNK]})


# --- matching an import's records -------------------------------------------------------------


def image_places(session: Session, image_ids: Iterable[int]) -> dict[int, tuple[int, bytes]]:
    """Image id -> (dataset id, raw path) of those of these images the store holds."""
    query = select(Image.id, Image.dataset_id, Image.path_raw)
    return {i: (d, bytes(p)) for i, d, p in _each(session, query, Image.id, image_ids)}


def draft_images(session: Session, caption_ids: Iterable[int]) -> dict[int, tuple[int, str]]:
    """Caption id -> (image id, text) of those of these drafts the store holds."""
    query = select(Caption.id, Caption.image_id, Caption.text)
    return {i: (image, text) for i, image, text in _each(session, query, Caption.id, caption_ids)}


def images_at(
    session: Session, paths: Iterable[bytes], *, datasets: Collection[int]
) -> dict[bytes, list[tuple[int, int]]]:
    """Raw relative path -> [(image id, dataset id)] of the images at these paths in these
    datasets."""
    query = select(Image.path_raw, Image.id, Image.dataset_id).where(
        Image.dataset_id.in_(list(datasets))
    )
    found: dict[bytes, list[tuple[int, int]]] = {}
    for raw, image_id, dataset_id in _each(session, query, Image.path_raw, paths):
        found.setdefault(bytes(raw), []).append((image_id, dataset_id))
    return found


def images_with_content(
    session: Session, hashes: Iterable[str], *, datasets: Collection[int]
) -> dict[str, list[int]]:
    """Content hash -> ids of the images in these datasets with that content."""
    # The datasets are checked here, not in SQL, so the planner cannot pick the dataset index
    # over the content-hash one and scan a whole dataset per chunk.
    found: dict[str, list[int]] = {}
    query = select(Image.content_hash, Image.id, Image.dataset_id)
    for content_hash, image_id, dataset_id in _each(session, query, Image.content_hash, hashes):
        if dataset_id in datasets:
            found.setdefault(content_hash, []).append(image_id)
    return found


def newest_best_drafts(session: Session, image_ids: Iterable[int]) -> dict[int, tuple[int, str]]:
    """Image id -> (caption id, text) of its newest best draft (a fresh one before a stale one),
    for those of these images that have one."""
    query = (
        select(Caption.image_id, Caption.id, Caption.text)
        .where(Caption.rank == 0)
        .order_by(Caption.stale, desc(Caption.created_at), desc(Caption.id))
    )
    found: dict[int, tuple[int, str]] = {}
    for image_id, caption_id, text in _each(session, query, Caption.image_id, image_ids):
        found.setdefault(image_id, (caption_id, text))
    return found


# --- writing an import's reviews ----------------------------------------------------------------


class StoredReview(NamedTuple):
    """What the import needs of a stored review: which one, and which version it holds."""

    id: int
    external_updated_at: dt.datetime | None


def reviews_by_fingerprint(
    session: Session, fingerprints: Iterable[str], *, unnamed: bool = False
) -> dict[str, StoredReview]:
    """Fingerprint -> the stored review with it (`unnamed`: only reviews without an external
    id), for those of these fingerprints the store holds."""
    return _stored(session, REVIEWS.c.fingerprint, fingerprints, unnamed=unnamed)


def reviews_by_external_id(
    session: Session, external_ids: Iterable[str]
) -> dict[str, StoredReview]:
    """External id -> the stored review with it, for those of these ids the store holds."""
    return _stored(session, REVIEWS.c.external_id, external_ids)


def _stored(session: Session, column, values: Iterable[str], *, unnamed: bool = False):  # type: ignore[no-untyped-def]
    query = select(column, REVIEWS.c.id, REVIEWS.c.external_updated_at)
    if unnamed:
        query = query.where(REVIEWS.c.external_id.is_(None))
    return {value: StoredReview(i, t) for value, i, t in _each(session, query, column, values)}


def insert_reviews(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Insert review rows (dicts of the reviews table's columns, the same keys in each); a row
    whose fingerprint or external id is stored already is left out."""
    if not rows:
        return
    connection = session.connection()
    insert = postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert
    # Another import of the same file or annotation at once: its rows stand.
    connection.execute(insert(REVIEWS).on_conflict_do_nothing(), list(rows))


def update_reviews(session: Session, changes: Sequence[tuple[int, dict[str, Any]]]) -> None:
    """Set columns of stored reviews, as (review id, {column: value}) pairs, the same columns in
    each."""
    if not changes:
        return
    session.connection().execute(
        REVIEWS.update().where(REVIEWS.c.id == bindparam("rid")),
        [{"rid": review_id, **values} for review_id, values in changes],
    )


# --- reviewed captions as training data -------------------------------------------------------


class ReviewedCaption(NamedTuple):
    """An image's newest review and the caption it kept (None when it kept none)."""

    dataset: str
    root_raw: bytes
    path: str
    path_raw: bytes
    outcome: str
    text: str | None


def reviewed_captions(
    session: Session, *, datasets: Sequence[str] | None = None
) -> list[ReviewedCaption]:
    """Every reviewed image's newest review (latest_image_review) in these datasets (all when
    None), by dataset name and path, with the caption it kept: an edit's text; for an
    acceptance the review's own text, else the judged draft's text it keeps (`draft_text`),
    else that of its `caption_id` draft while it exists. InputError for an unknown dataset."""
    review, newest = latest_image_review("newest_review")
    judged = aliased(Caption, name="judged")  # the draft the review was made on, if it exists
    accepted = func.coalesce(review.text, review.draft_text, judged.text)
    query = (
        select(Dataset.name, Dataset.root_raw, Image.path, Image.path_raw, review.outcome,
               case((review.outcome == "accepted", accepted), else_=review.text))
        .join(Image, Image.dataset_id == Dataset.id)
        .join(review, review.id == newest)
        .outerjoin(judged, judged.id == review.caption_id)
        .order_by(Dataset.name, Image.path)
    )  # fmt: skip
    if datasets:
        query = query.where(Dataset.id.in_(list(dataset_ids(session, datasets).values())))
    return [
        ReviewedCaption(name, bytes(root), path, bytes(raw), outcome, text)
        for name, root, path, raw, outcome, text in session.execute(query)
    ]


def withdraw_reviews(session: Session, external_prefixes: Iterable[str]) -> int:
    """Delete the reviews whose external id starts with one of these (an annotation's reviews,
    one per image it judged); how many went."""
    gone = 0
    for prefix in dict.fromkeys(external_prefixes):
        result = session.execute(
            REVIEWS.delete().where(REVIEWS.c.external_id.startswith(prefix, autoescape=True))
        )
        gone += result.rowcount or 0
    return gone
