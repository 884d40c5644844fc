"""Streaming the drafts out of the store for exports, reports and stats.

One Core query (no ORM objects: a million rows must flow at tens of thousands a second) selects
the best draft of each image for one model and decoding settings, with the image, its dataset and
its newest review; filters and the sort order become SQL, so the database does the work and the
rows arrive already in order. Rows are fetched in chunks (a server-side cursor on PostgreSQL);
for `n_best` > 1 the alternatives of a chunk are fetched with one more query per chunk. Memory
stays flat whatever the number of rows.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from sqlalchemy import Select, and_, desc, func, or_, select
from sqlalchemy.orm import Session, aliased

from labeler.errors import InputError
from labeler.formats.rows import Alternative, ExportRow
from labeler.store.models import Caption, CaptionRun, Dataset, Image, Model, Review

CHUNK = 2000
REVIEW_STATES = ("unreviewed", "reviewed", "accepted", "edited", "rejected", "skipped")
SORTS = {
    "confidence": (Caption.confidence, Image.id),
    "-confidence": (desc(Caption.confidence), Image.id),
    "margin": (Caption.margin, Image.id),
    "path": (Dataset.name, Image.path),
    "id": (Image.id,),
}


@dataclass(frozen=True)
class DraftFilter:
    """Which drafts to take; every field narrows, None means no restriction."""

    datasets: Sequence[str] | None = None
    model: str | None = None  # a model name or a prefix of its content hash; None: newest run's
    settings_key: str | None = None  # None: the newest run's settings for that model
    min_confidence: float | None = None
    max_confidence: float | None = None
    review: Sequence[str] | None = None  # of REVIEW_STATES
    flagged: bool | None = None  # True: only degenerate drafts; False: only the others
    path_glob: str | None = None  # matched against the path relative to the dataset root
    include_stale: bool = False
    limit: int | None = None


@dataclass(frozen=True)
class Selection:
    """The model and settings a filter resolved to."""

    model_id: int
    model_name: str
    model_hash: str
    settings_key: str


def resolve(session: Session, spec: DraftFilter) -> Selection:
    """The model and settings to export: as named, or those of the newest caption run."""
    query = select(Model.id, Model.name, Model.content_hash, CaptionRun.settings_key).join(
        CaptionRun, CaptionRun.model_id == Model.id
    )
    if spec.model:
        query = query.where(
            or_(Model.name == spec.model, Model.content_hash.startswith(spec.model.lower()))
        )
    if spec.settings_key:
        query = query.where(CaptionRun.settings_key == spec.settings_key)
    found = session.execute(query.order_by(desc(CaptionRun.id)).limit(1)).first()
    if found is None:
        wanted = f" from model {spec.model}" if spec.model else ""
        raise InputError(f"no drafts{wanted} in the store; run `labeler caption` first")
    return Selection(*found)


def latest_review(name: str = "latest_review"):  # type: ignore[no-untyped-def]
    """An alias of the reviews table and the scalar subquery picking each image's newest review
    (by review time, else import time, then id): the one definition of "the review that counts"."""
    newest = (
        select(Review.id)
        .where(Review.image_id == Image.id)
        .order_by(desc(func.coalesce(Review.reviewed_at, Review.imported_at)), desc(Review.id))
        .limit(1)
        .scalar_subquery()
    )
    return aliased(Review, name=name), newest


def draft_query(session: Session, spec: DraftFilter, chosen: Selection, sort: str) -> Select:
    if sort not in SORTS:
        raise InputError(f"unknown sort {sort!r}; use one of {', '.join(SORTS)}")
    review, newest = latest_review()
    query = (
        select(
            Caption.id,
            Caption.text,
            Caption.log_likelihood,
            Caption.num_tokens,
            Caption.confidence,
            Caption.token_logprobs,
            Caption.margin,
            Caption.finished,
            Caption.repeated_ngram,
            Caption.has_unknown,
            Image.id,
            Image.path,
            Image.path_raw,
            Image.content_hash,
            Image.width,
            Image.height,
            Dataset.name,
            Dataset.root_raw,
            review.text,
            review.outcome,
            review.reviewer,
            review.reviewed_at,
        )  # fmt: skip
        .join(Image, Image.id == Caption.image_id)
        .join(Dataset, Dataset.id == Image.dataset_id)
        .outerjoin(review, review.id == newest)
        .where(Caption.model_id == chosen.model_id, Caption.settings_key == chosen.settings_key)
        .where(Caption.rank == 0)
    )
    query = query.where(*_conditions(session, spec, review)).order_by(*SORTS[sort])
    return query.limit(spec.limit) if spec.limit is not None else query


def _conditions(session: Session, spec: DraftFilter, review) -> list:  # type: ignore[no-untyped-def, type-arg]
    conditions = []
    if spec.datasets:
        known = dict(session.execute(select(Dataset.name, Dataset.id)).all())
        unknown = [d for d in spec.datasets if d not in known]
        if unknown:
            raise InputError(f"no dataset named {', '.join(unknown)}; see `labeler datasets`")
        conditions.append(Image.dataset_id.in_([known[d] for d in spec.datasets]))
    if not spec.include_stale:
        conditions.append(Caption.stale.is_(False))
    if spec.min_confidence is not None:
        conditions.append(Caption.confidence >= spec.min_confidence)
    if spec.max_confidence is not None:
        conditions.append(Caption.confidence <= spec.max_confidence)
    if spec.flagged is not None:
        degenerate = or_(
            Caption.finished.is_(False), Caption.repeated_ngram.is_(True),
            Caption.has_unknown.is_(True),
        )  # fmt: skip
        conditions.append(degenerate if spec.flagged else ~degenerate)
    if spec.path_glob:
        conditions.append(Image.path.like(_glob_to_like(spec.path_glob), escape="\\"))
    if spec.review:
        conditions.append(_review_condition(spec.review, review))
    return conditions


def _review_condition(states: Sequence[str], review):  # type: ignore[no-untyped-def]
    unknown = [s for s in states if s not in REVIEW_STATES]
    if unknown:
        raise InputError(f"unknown review state {unknown[0]!r}; use {', '.join(REVIEW_STATES)}")
    parts = []
    for state in states:
        if state == "unreviewed":
            parts.append(review.id.is_(None))
        elif state == "reviewed":
            parts.append(review.id.is_not(None))
        else:
            parts.append(review.outcome == state)
    return or_(*parts)


def _glob_to_like(pattern: str) -> str:
    """fnmatch's * and ? as SQL LIKE's % and _, everything else literal."""
    if any(c in pattern for c in "[]"):
        raise InputError(f"path patterns support * and ? only: {pattern!r}")
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def iter_drafts(
    session: Session, spec: DraftFilter, *, sort: str = "confidence", n_best: int = 1
) -> Iterator[ExportRow]:
    """Every draft the filter selects, as ExportRows in the sort order, streamed."""
    chosen = resolve(session, spec)
    query = draft_query(session, spec, chosen, sort)
    result = session.execute(query.execution_options(yield_per=CHUNK, stream_results=True))
    for chunk in result.partitions(CHUNK):
        alternatives = _alternatives(session, chosen, [r[10] for r in chunk], n_best)
        for values in chunk:
            yield _row(values, chosen, alternatives.get(values[10], ()))


def _alternatives(
    session: Session, chosen: Selection, image_ids: list[int], n_best: int
) -> dict[int, tuple[Alternative, ...]]:
    if n_best <= 1 or not image_ids:
        return {}
    rows = session.execute(
        select(Caption.image_id, Caption.rank, Caption.text, Caption.log_likelihood,
               Caption.num_tokens, Caption.confidence)
        .where(Caption.image_id.in_(image_ids), Caption.model_id == chosen.model_id)
        .where(Caption.settings_key == chosen.settings_key)
        .where(and_(Caption.rank > 0, Caption.rank < n_best))
        .order_by(Caption.image_id, Caption.rank)
    )  # fmt: skip
    found: dict[int, list[Alternative]] = {}
    for image_id, *fields in rows:
        found.setdefault(image_id, []).append(Alternative(*fields))
    return {k: tuple(v) for k, v in found.items()}


def _row(values, chosen: Selection, alternatives) -> ExportRow:  # type: ignore[no-untyped-def]
    (caption_id, text, log_likelihood, num_tokens, confidence, logprobs, margin, finished,
     repeated, unknown, image_id, path, path_raw, content_hash, width, height, dataset, root,
     review_text, outcome, reviewer, reviewed_at) = values  # fmt: skip
    return ExportRow(
        image_id=image_id, dataset=dataset, path=path,
        abs_path=os.fsdecode(os.path.join(bytes(root), bytes(path_raw))),
        content_hash=content_hash or "", width=width, height=height,
        model_name=chosen.model_name, model_hash=chosen.model_hash,
        settings_key=chosen.settings_key, caption_id=caption_id, text=text,
        log_likelihood=log_likelihood, num_tokens=num_tokens, confidence=confidence,
        token_logprobs=json.loads(logprobs) if isinstance(logprobs, str) else logprobs,
        margin=margin, finished=finished, repeated_ngram=repeated, has_unknown=unknown,
        alternatives=alternatives, review_text=review_text, review_outcome=outcome,
        reviewer=reviewer, reviewed_at=reviewed_at,
    )  # fmt: skip
