"""Store functions for datasets and images: look-ups by raw path, upserts from probes, counts.

Each function takes an explicit session and leaves the transaction to its caller. Writes from a
scan are upserts keyed on (dataset, raw path), so two scans racing on one folder cannot fail on
the unique constraint; a new content hash marks that image's existing drafts stale.
"""

from __future__ import annotations

import datetime as dt
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from labeler.store.models import Caption, Dataset, Image

# Columns a probe fills in; everything else about an image row is bookkeeping.
PROBE_COLUMNS = (
    "size", "mtime_ns", "content_hash", "format", "width", "height", "mode", "frames",
    "status", "reason",
)  # fmt: skip
LOOKUP_CHUNK = 500  # bound on IN (...) lists: well under SQLite's variable limit


@dataclass(frozen=True)
class KnownImage:
    """What the store knows of a path already, enough to decide whether to read it again."""

    id: int
    size: int | None
    mtime_ns: int | None
    content_hash: str | None
    status: str


def find_dataset(session: Session, name: str) -> Dataset | None:
    return session.scalar(select(Dataset).where(Dataset.name == name))


def create_dataset(session: Session, name: str, root: str, root_raw: bytes) -> Dataset:
    dataset = Dataset(name=name, root=root, root_raw=root_raw)
    session.add(dataset)
    session.flush()
    return dataset


def known_images(
    session: Session, dataset_id: int, rels: Sequence[bytes]
) -> dict[bytes, KnownImage]:
    """The stored state of these raw relative paths, for those the store has."""
    known: dict[bytes, KnownImage] = {}
    for start in range(0, len(rels), LOOKUP_CHUNK):
        chunk = list(rels[start : start + LOOKUP_CHUNK])
        rows = session.execute(
            select(
                Image.path_raw, Image.id, Image.size, Image.mtime_ns, Image.content_hash,
                Image.status,
            ).where(Image.dataset_id == dataset_id, Image.path_raw.in_(chunk))
        )  # fmt: skip
        for raw, *state in rows:
            known[bytes(raw)] = KnownImage(*state)
    return known


def upsert_images(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Insert or update image rows (each has dataset_id, path, path_raw and the probe columns)."""
    if not rows:
        return
    connection = session.connection()  # Core, not the ORM's bulk path: a third of the cost
    insert = postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert
    stmt = insert(Image.__table__)
    refreshed = {name: stmt.excluded[name] for name in (*PROBE_COLUMNS, "path", "scanned_at")}
    stmt = stmt.on_conflict_do_update(index_elements=["dataset_id", "path_raw"], set_=refreshed)
    connection.execute(stmt, list(rows))


def mark_stale(session: Session, image_ids: Iterable[int]) -> int:
    """Mark the drafts of images whose content changed; they will be captioned again."""
    ids = list(image_ids)
    marked = 0
    for start in range(0, len(ids), LOOKUP_CHUNK):
        result = session.execute(
            update(Caption)
            .where(Caption.image_id.in_(ids[start : start + LOOKUP_CHUNK]))
            .where(Caption.stale.is_(False))
            .values(stale=True)
        )
        marked += result.rowcount or 0
    return marked


def max_image_id(session: Session) -> int:
    return session.scalar(select(func.max(Image.id))) or 0


def unseen_images(
    session: Session, dataset_id: int, *, seen: bytearray, up_to_id: int, under: Sequence[bytes]
) -> list[int]:
    """Images present before the scan (id <= up_to_id) under these prefixes that it did not see."""
    query = (
        select(Image.id, Image.path_raw)
        .where(Image.dataset_id == dataset_id, Image.status != "missing", Image.id <= up_to_id)
        .execution_options(yield_per=5000)
    )
    prefixes = tuple(under)  # b"" is the whole dataset
    unseen = []
    for image_id, raw in session.execute(query):
        if not seen[image_id] and bytes(raw).startswith(prefixes):
            unseen.append(image_id)
    return unseen


def mark_missing(session: Session, image_ids: Sequence[int], now: dt.datetime) -> int:
    if not image_ids:
        return 0
    stmt = (
        update(Image)
        .where(Image.id == bindparam("image_id"))
        .values(status="missing", reason="not found by the last scan", scanned_at=now)
    )
    session.connection().execute(stmt, [{"image_id": i} for i in image_ids])
    return len(image_ids)


def duplicate_groups(
    session: Session, dataset_ids: Sequence[int], *, examples: int = 5
) -> tuple[int, list[list[str]]]:
    """Readable images that share their content with another: how many extra copies, examples."""
    scope = (Image.dataset_id.in_(dataset_ids), Image.status == "ok")
    groups = (
        select(Image.content_hash, func.count().label("n"))
        .where(*scope)
        .group_by(Image.content_hash)
        .having(func.count() > 1)
        .subquery()
    )
    extra = session.scalar(select(func.coalesce(func.sum(groups.c.n - 1), 0))) or 0
    sample = []
    for (content_hash,) in session.execute(select(groups.c.content_hash).limit(examples)):
        paths = session.scalars(
            select(Image.path).where(*scope, Image.content_hash == content_hash).order_by(Image.id)
        )
        sample.append(list(paths))
    return int(extra), sample


def status_counts(session: Session) -> dict[str, Counter[str]]:
    """Counts of images by status, per dataset name (datasets without images included)."""
    counts: dict[str, Counter[str]] = {
        name: Counter() for name in session.scalars(select(Dataset.name).order_by(Dataset.name))
    }
    rows = session.execute(
        select(Dataset.name, Image.status, func.count())
        .join(Image, Image.dataset_id == Dataset.id)
        .group_by(Dataset.name, Image.status)
    )
    for name, status, n in rows:
        counts[name][status] = n
    return counts


def find_image(session: Session, dataset_id: int, path: str | bytes) -> Image | None:
    """An image by its path relative to the dataset root, as text or as raw bytes."""
    raw = path if isinstance(path, bytes) else os.fsencode(path)
    return session.scalar(
        select(Image).where(Image.dataset_id == dataset_id, Image.path_raw == raw)
    )
