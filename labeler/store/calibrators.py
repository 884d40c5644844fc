"""Store functions for p_accept's calibrators: which one scores a model's drafts, and rescoring.

A model's calibrators are numbered versions (`calibrators`): the checkpoint's own (fitted on its
validation split, for any decoding settings) is registered with the model, and `labeler
calibrate` adds one fitted on the reviews of one decoding settings. The one that scores a draft
is the newest fitted for the draft's settings, else the newest for any settings; with none,
`confidence` stands in for p_accept and `calibrator_id` stays NULL.

A draft's p_accept is written with it and names its calibrator, so a refit must rescore every
draft of its model and settings in the same transaction, and a caption batch must not write
with a calibrator that a refit has just replaced. On PostgreSQL both sides lock the model's row
(a refit exclusively, the caption job's writes shared) before they read which calibrator is
current; SQLite's writers are serialised anyway.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import numpy as np
import orjson
from sqlalchemy import Float, Integer, Text, bindparam, cast, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session
from sqlalchemy.sql import operators
from sqlalchemy.sql.elements import UnaryExpression

from labeler.calibration import Calibrator, draft_signals
from labeler.store.models import Caption, Model, StoredCalibrator, utcnow

CHUNK = 2000  # drafts read and rescored at a time

# The stored fields a draft's signals come from, in draft_signals' order.
SIGNAL_FIELDS = (
    "log_likelihood", "num_tokens", "token_logprobs", "margin", "finished", "repeated_ngram",
    "has_unknown",
)  # fmt: skip


_SIGNAL_FIELDS_OF = itemgetter(*SIGNAL_FIELDS)


def signal_rows(drafts: Sequence[Mapping[str, Any]]) -> list[list[float]]:
    """The signals of each draft, given as its stored fields (a row of `captions`)."""
    return [draft_signals(*_SIGNAL_FIELDS_OF(d)) for d in drafts]


@dataclass(frozen=True)
class Scoring:
    """The calibrator that scores drafts now; (None, None): confidence stands in."""

    calibrator_id: int | None = None
    calibrator: Calibrator | None = None

    def score(self, drafts: Sequence[dict[str, Any]]) -> None:
        """Set `p_accept` and `calibrator_id` of each draft row, with one prediction for all."""
        if self.calibrator is None:
            for draft in drafts:
                draft["p_accept"], draft["calibrator_id"] = draft["confidence"], None
            return
        if not drafts:
            return
        p = self.calibrator.predict(signal_rows(drafts))
        if not np.isfinite(p).all():  # an infinite signal (a -inf log-likelihood): no opinion
            p = np.where(np.isfinite(p), p, [d["confidence"] for d in drafts])
        for draft, value in zip(drafts, p.tolist(), strict=True):
            draft["p_accept"], draft["calibrator_id"] = value, self.calibrator_id


def lock_model(session: Session, model_id: int, *, exclusive: bool) -> None:
    """On PostgreSQL, lock the model's row until the transaction ends: shared by caption
    writes, exclusive by a refit (module docstring). Nothing to do on SQLite."""
    if session.get_bind().dialect.name != "postgresql":
        return
    query = select(Model.id).where(Model.id == model_id)
    query = query.with_for_update(key_share=True) if exclusive else query.with_for_update(read=True)
    session.execute(query)


def current(
    session: Session, *, model_id: int, settings_key: str, known: Scoring | None = None
) -> Scoring:
    """The calibrator for this model's drafts with these settings: fitted for them, else for
    any settings, newest first. `known` is returned as is when it is still the one."""
    found = session.execute(
        select(StoredCalibrator.id)
        .where(StoredCalibrator.model_id == model_id)
        .where(
            (StoredCalibrator.settings_key == settings_key)
            | StoredCalibrator.settings_key.is_(None)
        )
        .order_by(StoredCalibrator.settings_key.is_(None), StoredCalibrator.version.desc())
        .limit(1)
    ).scalar()
    if found is None:
        return Scoring()
    if known is not None and known.calibrator_id == found:
        return known
    params = session.scalar(select(StoredCalibrator.params).where(StoredCalibrator.id == found))
    return Scoring(found, Calibrator.from_dict(params))


def register_validation(session: Session, *, model_id: int, calibrator: Calibrator) -> None:
    """Keep the checkpoint's calibrator as the model's version 1 (the next free version in a
    store that had calibrated the model before it kept checkpoints' calibrators). Idempotent
    and safe when several workers register the model at once."""
    already = session.scalar(
        select(func.count())
        .select_from(StoredCalibrator)
        .where(StoredCalibrator.model_id == model_id, StoredCalibrator.source == "validation")
        .where(StoredCalibrator.settings_key.is_(None))
    )
    if already:
        return
    connection = session.connection()
    insert = postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert
    values = _values(model_id, calibrator, settings_key=None)
    values.update(source="validation", version=_next_version(session, model_id))
    connection.execute(
        insert(StoredCalibrator.__table__)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["model_id", "version"])
    )


def add(session: Session, *, model_id: int, calibrator: Calibrator) -> StoredCalibrator:
    """Store a newly fitted calibrator as the model's next version (under lock_model)."""
    row = StoredCalibrator(
        **_values(model_id, calibrator, settings_key=calibrator.settings_key),
        version=_next_version(session, model_id),
    )
    session.add(row)
    session.flush()
    return row


def _next_version(session: Session, model_id: int) -> int:
    latest = session.scalar(
        select(func.max(StoredCalibrator.version)).where(StoredCalibrator.model_id == model_id)
    )
    return (latest or 0) + 1


def _values(model_id: int, calibrator: Calibrator, *, settings_key: str | None) -> dict[str, Any]:
    return {
        "model_id": model_id, "settings_key": settings_key, "source": calibrator.source,
        "params": calibrator.to_dict(), "auroc": calibrator.auroc, "ece": calibrator.ece,
        "examples": calibrator.examples, "created_at": utcnow(),
    }  # fmt: skip


def _draft_chunks(
    session: Session, model_id: int, settings_key: str
) -> Iterator[list[dict[str, Any]]]:
    """Every draft of the model and settings (all ranks, stale ones too), CHUNK at a time, with
    the fields its signals come from, as plain rows (orjson parses the log-probabilities)."""
    table = Caption.__table__
    columns = [table.c.id, table.c.confidence, *(table.c[n] for n in SIGNAL_FIELDS)]
    columns = [cast(c, Text).label(c.key) if c.key == "token_logprobs" else c for c in columns]
    names = ["id", "confidence", *SIGNAL_FIELDS]
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        # One server-side cursor: it reads the snapshot taken when it opened, so the updates
        # made between its fetches change nothing it returns.
        query = select(*columns).where(table.c.model_id == model_id)
        query = query.where(table.c.settings_key == settings_key)
        result = connection.execute(query.execution_options(stream_results=True))
        batches: Iterator[Sequence[Any]] = result.partitions(CHUNK)
    else:
        batches = _by_id(connection, columns, model_id, settings_key)
    for rows in batches:
        drafts = [dict(zip(names, row, strict=True)) for row in rows]
        for draft in drafts:
            draft["token_logprobs"] = _logprobs(draft["token_logprobs"])
        yield drafts


def _by_id(connection, columns, model_id: int, settings_key: str) -> Iterator[Sequence[Any]]:  # type: ignore[no-untyped-def]
    """SQLite: CHUNK rows at a time in id order, each query walking the ids from the last (the
    model's column out of the planner's reach with unary +, or it would sort them all each
    time); a cursor left open across the updates would see them."""
    table = Caption.__table__
    model = UnaryExpression(table.c.model_id, operator=operators.custom_op("+"), type_=Integer())
    query = (
        select(*columns)
        .where(model == model_id, table.c.settings_key == settings_key)
        .where(table.c.id > bindparam("after"))
        .order_by(table.c.id)
        .limit(CHUNK)
    )
    after = 0
    while rows := connection.execute(query, {"after": after}).all():
        after = rows[-1][0]
        yield rows


def _logprobs(text: str | list[float]) -> list[float]:
    try:
        return orjson.loads(text)
    except (orjson.JSONDecodeError, TypeError):  # NaN or Infinity (json's extensions), parsed
        return json.loads(text) if isinstance(text, str | bytes) else text


def rescore(session: Session, *, model_id: int, settings_key: str, scoring: Scoring) -> int:
    """Recompute p_accept and calibrator_id of every draft of this model and settings, a chunk
    at a time, inside the caller's transaction; returns how many drafts."""
    count = 0
    write = _write_pg if session.get_bind().dialect.name == "postgresql" else _write_sqlite
    for drafts in _draft_chunks(session, model_id, settings_key):
        scoring.score(drafts)
        write(session, drafts, scoring.calibrator_id)
        count += len(drafts)
    return count


def _write_sqlite(
    session: Session, drafts: list[dict[str, Any]], calibrator_id: int | None
) -> None:
    """One UPDATE per draft, by id: sqlite3's executemany runs them at C speed."""
    table = Caption.__table__
    statement = (
        update(table)
        .where(table.c.id == bindparam("draft_id"))
        .values(p_accept=bindparam("new_p"), calibrator_id=calibrator_id)
    )
    params = [{"draft_id": d["id"], "new_p": d["p_accept"]} for d in drafts]
    session.connection().execute(statement, params)


def _write_pg(session: Session, drafts: list[dict[str, Any]], calibrator_id: int | None) -> None:
    """One UPDATE for the chunk, its ids and scores as two arrays: an UPDATE per draft costs
    PostgreSQL a round trip each, eight times slower."""
    table = Caption.__table__
    new = (
        func.unnest(bindparam("ids", type_=ARRAY(Integer)), bindparam("scores", type_=ARRAY(Float)))
        .table_valued("id", "p")
        .render_derived()
    )
    statement = (
        update(table)
        .where(table.c.id == new.c.id)
        .values(p_accept=new.c.p, calibrator_id=calibrator_id)
    )
    params = {"ids": [d["id"] for d in drafts], "scores": [d["p_accept"] for d in drafts]}
    session.connection().execute(statement, params)


@dataclass(frozen=True)
class Usage:
    """How many current best drafts one calibrator scored (version None: confidence stood in)."""

    drafts: int
    version: int | None = None
    source: str | None = None
    settings_key: str | None = None
    examples: int | None = None
    auroc: float | None = None
    ece: float | None = None


def usage(session: Session, *, model_id: int, settings_key: str) -> list[Usage]:
    """Which calibrators scored this model's current best drafts with these settings."""
    fields = (
        StoredCalibrator.version, StoredCalibrator.source, StoredCalibrator.settings_key,
        StoredCalibrator.examples, StoredCalibrator.auroc, StoredCalibrator.ece,
    )  # fmt: skip
    rows = session.execute(
        select(func.count(Caption.id), *fields)
        .select_from(Caption)
        .outerjoin(StoredCalibrator, StoredCalibrator.id == Caption.calibrator_id)
        .where(Caption.model_id == model_id, Caption.settings_key == settings_key)
        .where(Caption.rank == 0, Caption.stale.is_(False))
        .group_by(StoredCalibrator.id, *fields)
    ).all()
    found = [Usage(*row) for row in rows]
    return sorted(found, key=lambda u: -1 if u.version is None else u.version)
