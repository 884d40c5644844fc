"""Streaming the drafts out of the store for exports, reports and stats.

One query selects the best draft of each image for one model and decoding settings, with its
image; filters and the sort order become SQL, so the database does the work and the rows arrive
already in order. A million rows must flow at tens of thousands a second, which decides the rest:
- The rows come straight from the driver's cursor, fetched a chunk at a time (a server-side
  cursor on PostgreSQL), as plain tuples: SQLAlchemy's result rows and type processing cost
  more than everything else together. They become `DraftChunk`s, column by column.
- The review that counts for each draft (`latest_review`: the newest review made on that draft
  or on the same text for the image), and for `n_best` > 1 the alternatives, come with one
  more query per chunk, the chunk's image ids bound as one parameter (a JSON array on SQLite,
  an array on PostgreSQL), not as a correlated subquery per row, which cost a third of the
  query (the review join is kept only to filter by review state); the chunk's reviews arrive
  newest first and each draft takes the first that counts for it.
- The log-probabilities are read as JSON text and parsed by orjson, six times faster than json.
- The default order is p_accept, worst first (the calibrated score; `confidence` where no
  calibrator scored the drafts); the raw confidence and margin orders stay available.
- A walk along the p_accept or confidence index visits the table in random order, a page read
  per row: reading it in storage order and sorting is nearly twice as fast for a whole dataset.
  SQLite is kept off those indexes with unary + (unless a limit or a bound asks for few rows);
  PostgreSQL is told that every row of the cursor will be read, and chooses the sort itself.
Memory stays flat whatever the number of rows.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import repeat
from operator import add
from typing import Any

import orjson
from sqlalchemy import (
    ColumnElement,
    Integer,
    Select,
    Text,
    and_,
    any_,
    bindparam,
    cast,
    column,
    desc,
    func,
    or_,
    select,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session, aliased
from sqlalchemy.sql import operators
from sqlalchemy.sql.elements import UnaryExpression

from labeler.errors import InputError
from labeler.records import CHUNK_SIZE, Alternative, DraftChunk, ExportRow
from labeler.store.images import dataset_ids
from labeler.store.models import Caption, CaptionRun, Dataset, Image, Model, Review

REVIEW_STATES = ("unreviewed", "reviewed", "accepted", "edited", "rejected", "skipped")
DEFAULT_SORT = "p_accept"
SORTS = {
    "p_accept": (Caption.p_accept, Image.id),
    "-p_accept": (desc(Caption.p_accept), Image.id),
    "confidence": (Caption.confidence, Image.id),
    "-confidence": (desc(Caption.confidence), Image.id),
    "margin": (Caption.margin, Image.id),
    "path": (Dataset.name, Image.path),
    "id": (Image.id,),
}


def _unindexed(column):  # type: ignore[no-untyped-def]
    """SQLite's unary +: the same value, but no index can serve a term that uses it."""
    return UnaryExpression(column, operator=operators.custom_op("+"), type_=column.type)


# The same orders, with the caption columns out of the planner's reach (see the module docstring).
SCAN_SORTS = {
    "p_accept": (_unindexed(Caption.p_accept), Image.id),
    "-p_accept": (desc(_unindexed(Caption.p_accept)), Image.id),
    "confidence": (_unindexed(Caption.confidence), Image.id),
    "-confidence": (desc(_unindexed(Caption.confidence)), Image.id),
    "margin": (_unindexed(Caption.margin), Image.id),
    "path": SORTS["path"],
    "id": SORTS["id"],
}


@dataclass(frozen=True)
class DraftFilter:
    """Which drafts to take; every field narrows, None means no restriction."""

    datasets: Sequence[str] | None = None
    model: str | None = None  # a model name or a prefix of its content hash; None: newest run's
    settings_key: str | None = None  # None: the newest run's settings for that model
    min_confidence: float | None = None
    max_confidence: float | None = None
    min_p_accept: float | None = None  # in [0, 1]
    max_p_accept: float | None = None
    review: Sequence[str] | None = None  # of REVIEW_STATES
    flagged: bool | None = None  # True: only degenerate drafts; False: only the others
    path_glob: str | None = None  # matched against the path relative to the dataset root
    include_stale: bool = False
    limit: int | None = None

    def __post_init__(self) -> None:
        for name in ("min_p_accept", "max_p_accept"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:  # NaN fails too
                option = "--" + name.replace("_", "-")
                raise InputError(f"{option} must be between 0 and 1, got {value}")

    @property
    def bounded(self) -> bool:
        """Whether a score bound may leave few rows (worth walking an index for)."""
        bounds = (self.min_confidence, self.max_confidence, self.min_p_accept, self.max_p_accept)
        return any(bound is not None for bound in bounds)


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


# Reviews newest first: by review time, else import time, then id.
NEWEST_REVIEW_FIRST = (desc(func.coalesce(Review.reviewed_at, Review.imported_at)), desc(Review.id))


def counts_for(review: Any, draft: Any) -> ColumnElement[bool]:
    """Whether `review` (the reviews table or an alias) counts for `draft` (captions or an alias).

    A review judges the draft it was made on (`caption_id`, while that draft exists) and, since
    the reviewer judged that text for that image, any draft of the image with exactly the same
    text (`draft_text`), whatever its model or settings. A draft with other text, as after
    `labeler caption` with other settings, is unreviewed whatever the image's reviews said.
    `_counting` is the same rule in Python; the two must agree."""
    return and_(
        review.image_id == draft.image_id,
        or_(review.caption_id == draft.id, review.draft_text == draft.text),
    )


def latest_review(draft: Any = Caption, name: str = "latest_review"):  # type: ignore[no-untyped-def]
    """An alias of the reviews table, and the scalar subquery picking the review that counts
    for `draft` (captions or an alias of it, in the enclosing query): the newest
    (NEWEST_REVIEW_FIRST) of those `counts_for` accepts. The one definition of "the review that
    counts", used by exports and their review filter, and so by stats, calibrate and reports."""
    newest = (
        select(Review.id)
        .where(counts_for(Review, draft))
        .order_by(*NEWEST_REVIEW_FIRST)
        .limit(1)
        .scalar_subquery()
    )
    return aliased(Review, name=name), newest


def latest_image_review(name: str = "latest_image_review"):  # type: ignore[no-untyped-def]
    """An alias of the reviews table, and the scalar subquery picking each image's newest review
    whatever draft it judged (Image in the enclosing query). Only for what a review says about
    the image itself: the caption it kept is a human caption of the image (training data,
    store/reviews.py's `reviewed_captions`); whether a draft was accepted is `latest_review`'s."""
    newest = (
        select(Review.id)
        .where(Review.image_id == Image.id)
        .order_by(*NEWEST_REVIEW_FIRST)
        .limit(1)
        .scalar_subquery()
    )
    return aliased(Review, name=name), newest


# The columns of a draft query's rows, in order (DraftStream turns them into DraftChunks).
DRAFT_COLUMNS = (
    Caption.id, Caption.text, Caption.log_likelihood, Caption.num_tokens, Caption.confidence,
    Caption.p_accept, cast(Caption.token_logprobs, Text),  # the JSON text, for orjson to parse
    Caption.margin, Caption.finished, Caption.repeated_ngram, Caption.has_unknown,
    Image.id, Image.path, Image.path_raw, Image.content_hash, Image.width, Image.height,
    Image.dataset_id,
)  # fmt: skip


def draft_query(
    session: Session, spec: DraftFilter, chosen: Selection, sort: str, *, scan: bool = False
) -> Select:
    """The drafts' query (DRAFT_COLUMNS); `scan`: keep SQLite off the score indexes."""
    if sort not in SORTS:
        raise InputError(f"unknown sort {sort!r}; use one of {', '.join(SORTS)}")
    model_id = _unindexed(Caption.model_id) if scan else Caption.model_id
    query = (
        select(*DRAFT_COLUMNS)
        .join(Image, Image.id == Caption.image_id)
        .join(Dataset, Dataset.id == Image.dataset_id)
        .where(model_id == chosen.model_id, Caption.settings_key == chosen.settings_key)
        .where(Caption.rank == 0)
    )
    review = None
    if spec.review:  # only a filter needs the review that counts inside the query
        review, newest = latest_review(Caption)
        query = query.outerjoin(review, review.id == newest)
    query = query.where(*_conditions(session, spec, review))
    query = query.order_by(*(SCAN_SORTS if scan else SORTS)[sort])
    return query.limit(spec.limit) if spec.limit is not None else query


def count_best_drafts(
    session: Session, chosen: Selection, *, datasets: Sequence[str] | None = None
) -> int:
    """How many best drafts the model and settings hold (on the drafts index), in these datasets
    (every one when None), whatever the other filters; InputError for an unknown dataset."""
    query = (
        select(func.count())
        .select_from(Caption)
        .where(Caption.model_id == chosen.model_id, Caption.settings_key == chosen.settings_key)
        .where(Caption.rank == 0)
    )
    if datasets:
        ids = list(dataset_ids(session, datasets).values())
        query = query.join(Image, Image.id == Caption.image_id).where(Image.dataset_id.in_(ids))
    return session.scalar(query) or 0


def _conditions(session: Session, spec: DraftFilter, review) -> list:  # type: ignore[no-untyped-def, type-arg]
    conditions = []
    if spec.datasets:
        conditions.append(Image.dataset_id.in_(list(dataset_ids(session, spec.datasets).values())))
    if not spec.include_stale:
        conditions.append(Caption.stale.is_(False))
    if spec.min_confidence is not None:
        conditions.append(Caption.confidence >= spec.min_confidence)
    if spec.max_confidence is not None:
        conditions.append(Caption.confidence <= spec.max_confidence)
    if spec.min_p_accept is not None:
        conditions.append(Caption.p_accept >= spec.min_p_accept)
    if spec.max_p_accept is not None:
        conditions.append(Caption.p_accept <= spec.max_p_accept)
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
    session: Session, spec: DraftFilter, *, sort: str = DEFAULT_SORT, n_best: int = 1
) -> DraftStream:
    """Every draft the filter selects, as ExportRows in the sort order, streamed.

    The stream is iterable (ExportRows) and has `chunks()` (DraftChunks, what the CSV and
    JSON writers read). Nothing is queried until it is iterated."""
    return DraftStream(session, spec, sort, n_best)


@dataclass
class DraftStream:
    """The drafts of `iter_drafts`: ExportRows when iterated, or DraftChunks from `chunks`.

    The chunks come from one read of the store; on PostgreSQL each chunk's reviews and
    alternatives are those committed when that chunk was read."""

    session: Session
    spec: DraftFilter
    sort: str = DEFAULT_SORT
    n_best: int = 1

    def __iter__(self) -> Iterator[ExportRow]:
        for chunk in self.chunks():
            yield from chunk.rows()

    def chunks(self) -> Iterator[DraftChunk]:
        session, spec = self.session, self.spec
        chosen = resolve(session, spec)
        scan = session.get_bind().dialect.name == "sqlite" and spec.limit is None
        scan = scan and not spec.bounded
        query = draft_query(session, spec, chosen, self.sort, scan=scan)
        found = session.execute(select(Dataset.id, Dataset.name, Dataset.root_raw))
        datasets = {id_: (name, os.path.join(bytes(root), b"")) for id_, name, root in found}
        with _cursor(session, query) as cursor:
            while rows := cursor.fetchmany(CHUNK_SIZE):
                yield _chunk(session, chosen, rows, datasets, self.n_best)


@contextmanager
def _cursor(session: Session, query: Select) -> Iterator[Any]:
    """The driver's own cursor on the query's rows; on PostgreSQL a server-side one."""
    connection = session.connection()
    dialect = connection.dialect
    compiled = query.compile(dialect=dialect, compile_kwargs={"render_postcompile": True})
    params: Any = compiled.params
    if dialect.positional:
        params = tuple(params[name] for name in compiled.positiontup or ())
    dbapi_connection = connection.connection.dbapi_connection
    assert dbapi_connection is not None
    if dialect.name == "postgresql":
        # Every row will be read: plan for all of them, not for the first tenth (the default
        # for cursors, which walks the confidence index in random order instead of sorting).
        dbapi_connection.execute("SET LOCAL cursor_tuple_fraction = 1.0")
        cursor = dbapi_connection.cursor(name=f"labeler_drafts_{secrets.token_hex(4)}")
    else:
        # The sort may use helper threads: a million rows' sort takes 40% less with two.
        dbapi_connection.execute(f"PRAGMA threads = {min(4, os.cpu_count() or 1)}")
        cursor = dbapi_connection.cursor()
    try:
        cursor.execute(str(compiled), params)
        yield cursor
    finally:
        cursor.close()


def _chunk(  # type: ignore[type-arg]
    session: Session, chosen: Selection, rows: list, datasets: dict, n_best: int
) -> DraftChunk:
    (caption_id, text, log_likelihood, num_tokens, confidence, p_accept, logprobs, margin,
     finished, repeated, unknown, image_id, path, path_raw, content_hash, width, height,
     dataset_id) = zip(*rows, strict=True)  # fmt: skip
    n = len(rows)
    reviews = _reviews(session, image_id, caption_id, text)
    # No review yet is the common case before the first review round: empty columns, no zip.
    empty = [[None] * n for _ in range(4)]
    review_columns = zip(*reviews, strict=True) if reviews else iter(empty)
    alternatives = _alternatives(session, chosen, image_id, n_best)
    return DraftChunk(
        image_id=image_id, dataset=[datasets[i][0] for i in dataset_id], path=path,
        abs_path=_abs_paths([datasets[i][1] for i in dataset_id], path_raw),
        content_hash=[h or "" for h in content_hash] if None in content_hash else content_hash,
        width=width, height=height, model_name=[chosen.model_name] * n,
        model_hash=[chosen.model_hash] * n, settings_key=[chosen.settings_key] * n,
        caption_id=caption_id, text=text, log_likelihood=log_likelihood, num_tokens=num_tokens,
        confidence=confidence, p_accept=p_accept, token_logprobs=_parse_logprobs(logprobs),
        margin=margin,
        finished=list(map(bool, finished)), repeated_ngram=list(map(bool, repeated)),
        has_unknown=list(map(bool, unknown)),
        alternatives=[alternatives.get(i, ()) for i in image_id] if alternatives else [()] * n,
        review_text=next(review_columns), review_outcome=next(review_columns),
        reviewer=next(review_columns), reviewed_at=next(review_columns),
    )  # fmt: skip


_FS_ENCODING = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()


def _abs_paths(roots: Sequence[bytes], paths_raw: Sequence[bytes]) -> list[str]:
    """os.fsdecode(os.path.join(root, path)) for each pair, the roots ending in a separator
    already; a column at a time, a fifth of the cost of calling both for every row."""
    if any(map(bytes.startswith, paths_raw, repeat(b"/"))):  # absolute: join keeps the path
        roots = [
            b"" if raw.startswith(b"/") else root
            for root, raw in zip(roots, paths_raw, strict=True)
        ]
    return list(map(bytes.decode, map(add, roots, paths_raw), *map(repeat, _FS_ENCODING)))


def _parse_logprobs(texts: Sequence[Any]) -> list[list[float]]:
    try:
        return list(map(orjson.loads, texts))
    except (orjson.JSONDecodeError, TypeError):  # NaN or Infinity (json's extensions), or parsed
        return [json.loads(t) if isinstance(t, str | bytes) else t for t in texts]


_NO_REVIEW = (None, None, None, None)


def _among_ids(session: Session, column_: Any, ids: Sequence[int]) -> tuple[ColumnElement, dict]:  # type: ignore[type-arg]
    """`column_ IN ids` with the ids as one parameter, and that parameter.

    An IN list of 2000 parameters cost SQLAlchemy (and psycopg) more per row than the query:
    one array parameter on PostgreSQL, one JSON array read by json_each on SQLite."""
    if session.get_bind().dialect.name == "postgresql":
        return column_ == any_(bindparam("ids", type_=ARRAY(Integer))), {"ids": list(ids)}
    listed = select(column("value")).select_from(func.json_each(bindparam("ids")))
    return column_.in_(listed), {"ids": orjson.dumps(list(ids)).decode()}


def _reviews(
    session: Session, image_ids: Sequence[int], caption_ids: Sequence[int], texts: Sequence[str]
) -> list[tuple[Any, ...]] | None:
    """The review that counts for each draft (latest_review's rule, picked here in Python):
    (text, outcome, reviewer, reviewed_at), or _NO_REVIEW; None when no image has a review.

    One query fetches every review of the chunk's images, newest first, with what binds it to a
    draft; an image has a few, so walking them per draft costs less than a subquery per row."""
    among, params = _among_ids(session, Review.image_id, image_ids)
    rows = session.execute(
        select(Review.image_id, Review.caption_id, Review.draft_text, Review.text,
               Review.outcome, Review.reviewer, Review.reviewed_at)
        .where(among)
        .order_by(Review.image_id, *NEWEST_REVIEW_FIRST),
        params,
    )  # fmt: skip
    by_image: dict[int, list[tuple[Any, ...]]] = {}
    for image_id, *fields in rows:
        by_image.setdefault(image_id, []).append(tuple(fields))
    if not by_image:
        return None
    return [
        _counting(by_image[image_id], caption_id, text) if image_id in by_image else _NO_REVIEW
        for image_id, caption_id, text in zip(image_ids, caption_ids, texts, strict=True)
    ]


def _counting(reviews: list[tuple[Any, ...]], caption_id: int, text: str) -> tuple[Any, ...]:
    """Of one image's reviews (caption_id, draft_text, *fields), newest first, the fields of the
    first that counts for the draft (caption_id, text): counts_for, in Python."""
    for judged_id, judged_text, *fields in reviews:
        if judged_id == caption_id or judged_text == text:
            return tuple(fields)
    return _NO_REVIEW


def _alternatives(
    session: Session, chosen: Selection, image_ids: Sequence[int], n_best: int
) -> dict[int, tuple[Alternative, ...]]:
    if n_best <= 1 or not image_ids:
        return {}
    among, params = _among_ids(session, Caption.image_id, image_ids)
    rows = session.execute(
        select(Caption.image_id, Caption.rank, Caption.text, Caption.log_likelihood,
               Caption.num_tokens, Caption.confidence, Caption.p_accept)
        .where(among, Caption.model_id == chosen.model_id)
        .where(Caption.settings_key == chosen.settings_key)
        .where(and_(Caption.rank > 0, Caption.rank < n_best))
        .order_by(Caption.image_id, Caption.rank),
        params,
    )  # fmt: skip
    found: dict[int, list[Alternative]] = {}
    for image_id, *fields in rows:
        found.setdefault(image_id, []).append(Alternative(*fields))
    return {k: tuple(v) for k, v in found.items()}
