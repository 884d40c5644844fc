"""Store functions for the caption job: models, runs, claims on work, and drafts.

The unit of work is a content hash, not an image: identical files are captioned once and every
image with that content gets the same drafts. Workers find pending work by walking image ids
upwards from a cursor (each query touches one batch, whatever the store's size), claim it with
one `INSERT ... ON CONFLICT DO UPDATE ... WHERE expires_at <= now RETURNING`, which succeeds for a
hash nobody holds or whose lease ran out, and write a batch's drafts and drop its claims in one
transaction. A claim records its holder (host, pid, process start time; holders.py): the caption
job deletes the claims of holders it finds gone (`free_claims`, by worker, only those it checked)
in the write transaction that then claims, so a dead worker's work is free at once, not when its
lease runs out. A draft is replaced, never duplicated: the unique constraint on (image, model,
settings, rank) backs that up. Every draft is written with its p_accept, scored by the calibrator
current when it is written (store/calibrators.py), copies included.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, delete, exists, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from labeler.calibration import Calibrator
from labeler.store import calibrators
from labeler.store.models import (
    Caption,
    CaptionClaim,
    CaptionRun,
    Dataset,
    Image,
    Model,
    utcnow,
)  # fmt: skip

CHUNK = 500
# What a draft brings to its row (save_drafts): the model's raw values and the signals derived
# from them, and the content's margin over its runner-up; the store adds the rest.
DRAFT_COLUMNS = (
    "text", "log_likelihood", "num_tokens", "confidence", "score", "token_logprobs", "margin",
    "finished", "repeated_ngram", "has_unknown",
)  # fmt: skip


@dataclass(frozen=True)
class Holder:
    """Who holds a run and its claims: a process on a host (caption/holders.py tells whether it
    is gone)."""

    host: str
    pid: int
    started: float  # the process's start time, seconds since the epoch


@dataclass(frozen=True)
class Work:
    """One content hash to caption and the images that carry it (first is tried first)."""

    content_hash: str
    image_ids: tuple[int, ...]
    paths: tuple[bytes, ...]  # absolute, raw bytes


def register_model(
    session: Session, *, content_hash: str, name: str, family: str, source: str | None,
    info: dict[str, Any] | None, calibrator: Calibrator | None = None,
) -> int:  # fmt: skip
    """The model's id, registering it (and its checkpoint's calibrator) first; safe when
    several workers start at once (the insert waits for a concurrent one and then does
    nothing)."""
    connection = session.connection()
    insert = postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert
    connection.execute(
        insert(Model.__table__)
        .values(content_hash=content_hash, name=name, family=family, source=source, info=info,
                registered_at=utcnow())
        .on_conflict_do_nothing(index_elements=["content_hash"])
    )  # fmt: skip
    model_id = session.scalar(select(Model.id).where(Model.content_hash == content_hash))
    if calibrator is not None:
        calibrators.register_validation(session, model_id=model_id, calibrator=calibrator)
    return model_id


def start_run(
    session: Session, *, model_id: int, settings_key: str, settings: dict[str, Any],
    holder: Holder,
) -> int:  # fmt: skip
    run = CaptionRun(
        model_id=model_id, settings_key=settings_key, settings=settings, status="running",
        host=holder.host, pid=holder.pid, process_started=holder.started,
    )  # fmt: skip
    session.add(run)
    session.flush()
    return run.id


def finish_run(
    session: Session, run_id: int, *, status: str, counts: dict[str, Any],
    timings: dict[str, float], error: str | None = None, now: dt.datetime,
) -> None:  # fmt: skip
    session.execute(
        update(CaptionRun)
        .where(CaptionRun.id == run_id)
        .values(status=status, counts=counts, timings=timings, error=error, finished_at=now)
    )


def _fresh_draft(model_id: int, settings_key: str):  # type: ignore[no-untyped-def]
    return exists().where(
        Caption.image_id == Image.id,
        Caption.model_id == model_id,
        Caption.settings_key == settings_key,
        Caption.rank == 0,
        Caption.stale.is_(False),
    )


def _scope(datasets: Sequence[int] | None):  # type: ignore[no-untyped-def]
    return [Image.dataset_id.in_(list(datasets))] if datasets else []


def mark_all_stale(
    session: Session, *, model_id: int, settings_key: str, datasets: Sequence[int] | None
) -> int:
    """For --recaption: every draft of this model and settings (in scope) is to be redone."""
    stmt = update(Caption).where(
        Caption.model_id == model_id, Caption.settings_key == settings_key,
        Caption.stale.is_(False),
    )  # fmt: skip
    if datasets:
        in_scope = select(Image.id).where(*_scope(datasets))
        stmt = stmt.where(Caption.image_id.in_(in_scope))
    return session.execute(stmt.values(stale=True)).rowcount or 0


def pending(
    session: Session, *, model_id: int, settings_key: str, datasets: Sequence[int] | None,
    after_id: int, limit: int, now: dt.datetime,
) -> list[tuple[int, str]]:  # fmt: skip
    """(image id, content hash) of readable images above `after_id` that need drafts and that
    no live lease covers, in id order."""
    leased = exists().where(
        CaptionClaim.model_id == model_id,
        CaptionClaim.settings_key == settings_key,
        CaptionClaim.content_hash == Image.content_hash,
        CaptionClaim.expires_at > now,
    )
    query = (
        select(Image.id, Image.content_hash)
        .where(Image.status == "ok", Image.id > after_id, *_scope(datasets))
        .where(~_fresh_draft(model_id, settings_key), ~leased)
        .order_by(Image.id)
        .limit(limit)
    )
    return [(i, h) for i, h in session.execute(query)]


def count_pending(
    session: Session, *, model_id: int, settings_key: str, datasets: Sequence[int] | None
) -> tuple[int, int]:
    """Images that need drafts, and how many distinct contents they hold."""
    query = select(func.count(), func.count(func.distinct(Image.content_hash))).where(
        Image.status == "ok", *_scope(datasets), ~_fresh_draft(model_id, settings_key)
    )
    images, contents = session.execute(query).one()
    return int(images), int(contents)


def claim(
    session: Session, *, model_id: int, settings_key: str, hashes: Iterable[str], worker: str,
    holder: Holder, run_id: int, now: dt.datetime, lease: dt.timedelta,
) -> list[str]:  # fmt: skip
    """Claim these hashes; returns the ones this worker now holds."""
    mine = {"worker": worker, "host": holder.host, "pid": holder.pid,
            "process_started": holder.started, "run_id": run_id, "claimed_at": now,
            "expires_at": now + lease}  # fmt: skip
    rows = [
        {"model_id": model_id, "settings_key": settings_key, "content_hash": h, **mine}
        for h in dict.fromkeys(hashes)
    ]
    if not rows:
        return []
    connection = session.connection()
    insert = postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert
    table = CaptionClaim.__table__
    stmt = insert(table)
    stmt = stmt.on_conflict_do_update(
        index_elements=["model_id", "settings_key", "content_hash"],
        set_={c: stmt.excluded[c] for c in mine},
        where=table.c.expires_at <= now,
    ).returning(table.c.content_hash)
    return list(connection.execute(stmt.values(rows)).scalars())


def renew_all(session: Session, *, worker: str, until: dt.datetime) -> None:
    """Extend every claim this worker holds (its heartbeat)."""
    session.execute(
        update(CaptionClaim).where(CaptionClaim.worker == worker).values(expires_at=until)
    )


def release(
    session: Session, *, hashes: Sequence[str], worker: str, model_id: int, settings_key: str
) -> None:
    for start in range(0, len(hashes), CHUNK):
        session.execute(
            delete(CaptionClaim).where(
                _mine(hashes[start : start + CHUNK], worker, model_id, settings_key)
            )
        )


def release_all(session: Session, *, worker: str) -> None:
    session.execute(delete(CaptionClaim).where(CaptionClaim.worker == worker))


def _mine(hashes, worker, model_id, settings_key):  # type: ignore[no-untyped-def]
    return and_(
        CaptionClaim.content_hash.in_(list(hashes)), CaptionClaim.worker == worker,
        CaptionClaim.model_id == model_id, CaptionClaim.settings_key == settings_key,
    )  # fmt: skip


@dataclass(frozen=True)
class ClaimHolder:
    """Another worker's unexpired claims: who holds them, how many, and until when."""

    worker: str
    run_id: int | None
    host: str | None  # None on claims older than the holder columns
    pid: int | None
    started: float | None
    contents: int
    until: dt.datetime  # when the first of them runs out unless its holder renews it

    def describe(self) -> str:
        run = f"run {self.run_id}" if self.run_id is not None else "a run"
        return f"{run} ({self.host} pid {self.pid})" if self.host else f"{run} ({self.worker})"


def claim_holders(
    session: Session, *, worker: str, now: dt.datetime, model_id: int | None = None,
    settings_key: str | None = None,
) -> list[ClaimHolder]:  # fmt: skip
    """The other workers holding unexpired claims (on this model and settings, when given)."""
    c = CaptionClaim
    query = (
        select(c.worker, c.run_id, c.host, c.pid, c.process_started, func.count(),
               func.min(c.expires_at))
        .where(c.worker != worker, c.expires_at > now)
        .group_by(c.worker, c.run_id, c.host, c.pid, c.process_started)
        .order_by(c.worker)
    )  # fmt: skip
    if model_id is not None:
        query = query.where(c.model_id == model_id, c.settings_key == settings_key)
    return [ClaimHolder(*row) for row in session.execute(query)]


def free_claims(session: Session, *, workers: Sequence[str]) -> int:
    """Delete every claim of these workers (found gone); returns how many."""
    if not workers:
        return 0
    stmt = delete(CaptionClaim).where(CaptionClaim.worker.in_(list(workers)))
    return session.execute(stmt).rowcount or 0


def running_runs(session: Session, *, other_than: int | None = None) -> list[CaptionRun]:
    query = select(CaptionRun).where(CaptionRun.status == "running").order_by(CaptionRun.id)
    if other_than is not None:
        query = query.where(CaptionRun.id != other_than)
    return list(session.scalars(query))


def abandon_runs(session: Session, reasons: dict[int, str], now: dt.datetime) -> None:
    """Mark these runs `abandoned`, each with its reason, if they still say `running`."""
    for run_id, reason in reasons.items():
        session.execute(
            update(CaptionRun)
            .where(CaptionRun.id == run_id, CaptionRun.status == "running")
            .values(status="abandoned", error=reason, finished_at=now)
        )


def work_for(
    session: Session, *, model_id: int, settings_key: str, hashes: Sequence[str],
    datasets: Sequence[int] | None,
) -> list[Work]:  # fmt: skip
    """The images in scope that still need drafts for these hashes, grouped by hash."""
    grouped: dict[str, list[tuple[int, bytes]]] = {h: [] for h in hashes}
    for start in range(0, len(hashes), CHUNK):
        rows = session.execute(
            select(Image.id, Image.content_hash, Dataset.root_raw, Image.path_raw)
            .join(Dataset, Dataset.id == Image.dataset_id)
            .where(Image.content_hash.in_(list(hashes[start : start + CHUNK])))
            .where(Image.status == "ok", *_scope(datasets), ~_fresh_draft(model_id, settings_key))
            .order_by(Image.id)
        )
        for image_id, content_hash, root, rel in rows:
            grouped[content_hash].append((image_id, os.path.join(bytes(root), bytes(rel))))
    return [
        Work(h, tuple(i for i, _ in items), tuple(p for _, p in items))
        for h, items in grouped.items()
        if items
    ]


def copy_known_drafts(
    session: Session, *, model_id: int, settings_key: str, work: Sequence[Work], run_id: int,
    scoring: calibrators.Scoring,
) -> set[str]:  # fmt: skip
    """Give images the drafts another image with the same content already has, scored anew;
    returns the hashes so served, which need no model call."""
    served = set()
    image_ids: list[int] = []
    rows: list[dict[str, Any]] = []
    for item in work:
        donor = session.scalar(
            select(Caption.image_id)
            .join(Image, Image.id == Caption.image_id)
            .where(Image.content_hash == item.content_hash, Caption.model_id == model_id)
            .where(Caption.settings_key == settings_key, Caption.rank == 0)
            .where(Caption.stale.is_(False))
            .limit(1)
        )
        if donor is None:
            continue
        drafts = session.scalars(
            select(Caption)
            .where(Caption.image_id == donor, Caption.model_id == model_id)
            .where(Caption.settings_key == settings_key)
            .order_by(Caption.rank)
        ).all()
        rows += [_copy(d, image_id, run_id) for image_id in item.image_ids for d in drafts]
        image_ids += item.image_ids
        served.add(item.content_hash)
    scoring.score(rows)
    _replace(session, model_id, settings_key, image_ids, rows)
    return served


def _copy(draft: Caption, image_id: int, run_id: int) -> dict[str, Any]:
    columns = [c.key for c in Caption.__table__.columns if c.key not in ("id", "created_at")]
    row = {key: getattr(draft, key) for key in columns}
    return {**row, "image_id": image_id, "run_id": run_id, "stale": False}


def save_drafts(
    session: Session, *, model_id: int, settings_key: str, run_id: int,
    results: Sequence[tuple[Work, Sequence[dict[str, Any]]]], now: dt.datetime,
    scoring: calibrators.Scoring,
) -> list[float]:  # fmt: skip
    """Write the n-best drafts of each hash, scored, to every image that carries it; returns
    the p_accept of each result's best draft. Each result pairs a hash's work with its drafts,
    best first, each the values of the DRAFT_COLUMNS (the caption job turns the model's drafts
    into these); the rank, the ids and the times are added here."""
    ours = {"image_id": None, "model_id": model_id, "settings_key": settings_key,
            "run_id": run_id, "stale": False, "created_at": now}  # fmt: skip
    scored = [{**{c: draft[c] for c in DRAFT_COLUMNS}, **ours, "rank": rank}
              for _, drafts in results for rank, draft in enumerate(drafts)]  # fmt: skip
    scoring.score(scored)  # once per content: its images get copies of these rows
    rows: list[dict[str, Any]] = []
    image_ids: list[int] = []
    best: list[float] = []
    start = 0
    for item, drafts in results:
        mine = scored[start : start + len(drafts)]
        start += len(drafts)
        best.append(mine[0]["p_accept"])
        image_ids.extend(item.image_ids)
        rows += [{**row, "image_id": image_id} for image_id in item.image_ids for row in mine]
    _replace(session, model_id, settings_key, image_ids, rows)
    return best


def _replace(session, model_id, settings_key, image_ids, rows) -> None:  # type: ignore[no-untyped-def]
    connection = session.connection()
    for start in range(0, len(image_ids), CHUNK):
        connection.execute(
            delete(Caption).where(
                Caption.image_id.in_(list(image_ids[start : start + CHUNK])),
                Caption.model_id == model_id, Caption.settings_key == settings_key,
            )
        )  # fmt: skip
    if rows:
        connection.execute(Caption.__table__.insert(), rows)


def fail_images(
    session: Session, failures: Sequence[tuple[int, str, str]], now: dt.datetime
) -> None:
    """Images that could not be decoded now: their status and reason say why (a re-scan looks
    at them again)."""
    for image_id, status, reason in failures:
        session.execute(
            update(Image)
            .where(Image.id == image_id)
            .values(status=status, reason=f"caption: {reason}", scanned_at=now)
        )


def best_drafts(
    session: Session, *, model_id: int, settings_key: str, image_ids: Iterable[int]
) -> dict[int, tuple[int, str, float]]:
    """Image id -> (caption id, text, p_accept) of its fresh best draft from this model and
    settings, for those of these images that have one."""
    ids = list(dict.fromkeys(image_ids))
    found: dict[int, tuple[int, str, float]] = {}
    for start in range(0, len(ids), CHUNK):
        rows = session.execute(
            select(Caption.image_id, Caption.id, Caption.text, Caption.p_accept)
            .where(Caption.image_id.in_(ids[start : start + CHUNK]))
            .where(Caption.model_id == model_id, Caption.settings_key == settings_key)
            .where(Caption.rank == 0, Caption.stale.is_(False))
        )
        found.update((image_id, (cid, text, p)) for image_id, cid, text, p in rows)
    return found
