"""Store functions for datasets and images: the one dataset look-up, look-ups by raw path,
upserts from probes, counts.

Each function takes an explicit session and leaves the transaction to its caller. Writes from a
scan are upserts keyed on (dataset, raw path), so two scans racing on one folder cannot fail on
the unique constraint; a new content hash marks that image's existing drafts stale.
"""

from __future__ import annotations

import datetime as dt
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from labeler.errors import InputError
from labeler.store.models import Caption, Dataset, Image

# Columns a probe fills in; everything else about an image row is bookkeeping.
PROBE_COLUMNS = (
    "size", "mtime_ns", "content_hash", "format", "width", "height", "mode", "frames",
    "status", "reason",
)  # fmt: skip
LOOKUP_CHUNK = 500  # bound on IN (...) lists: well under SQLite's variable limit


class KnownImage(NamedTuple):
    """What the store knows of a path already, enough to decide whether to read it again.
    (A named tuple: a scan builds one per file, and they cost a tenth of a frozen dataclass.)"""

    id: int
    size: int | None
    mtime_ns: int | None
    content_hash: str | None
    status: str


def find_dataset(session: Session, name: str) -> Dataset | None:
    return session.scalar(select(Dataset).where(Dataset.name == name))


# Every dataset name a user gives (--dataset, `datasets move NAME`) is resolved here, so every
# command refuses an unknown one with the same line.


def named_dataset(session: Session, name: str) -> Dataset:
    """The dataset of this name; InputError when there is none."""
    dataset = find_dataset(session, name)
    if dataset is None:
        raise _unknown([name])
    return dataset


def dataset_ids(session: Session, names: Sequence[str]) -> dict[str, int]:
    """Name -> id of these datasets, in the order given; InputError naming every unknown one."""
    return {name: dataset_id for name, (dataset_id, _) in _named(session, names).items()}


def dataset_roots(session: Session, names: Sequence[str] | None = None) -> dict[int, bytes]:
    """Dataset id -> raw root of these datasets (every dataset when no names are given);
    InputError naming every unknown one."""
    if names:
        return dict(_named(session, names).values())
    return {i: bytes(root) for i, root in session.execute(select(Dataset.id, Dataset.root_raw))}


def dataset_list(session: Session) -> list[tuple[str, str]]:
    """(name, root as text) of every dataset, by name."""
    return [
        tuple(row)
        for row in session.execute(select(Dataset.name, Dataset.root).order_by(Dataset.name))
    ]


def _named(session: Session, names: Sequence[str]) -> dict[str, tuple[int, bytes]]:
    query = select(Dataset.name, Dataset.id, Dataset.root_raw).where(Dataset.name.in_(set(names)))
    found = {name: (i, bytes(root)) for name, i, root in session.execute(query)}
    unknown = [name for name in names if name not in found]
    if unknown:
        raise _unknown(unknown)
    return {name: found[name] for name in names}


def _unknown(names: Sequence[str]) -> InputError:
    return InputError(f"no dataset named {', '.join(names)}; see `labeler datasets`")


def ensure_dataset(session: Session, name: str, root: str, root_raw: bytes) -> Dataset:
    """The dataset of this name, created with this root if there is none; safe when two scans
    create it at once (the insert waits for the other and then does nothing)."""
    connection = session.connection()
    insert = postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert
    connection.execute(
        insert(Dataset.__table__)
        .values(
            name=name, root=root, root_raw=root_raw, created_at=dt.datetime.now(dt.timezone.utc)
        )
        .on_conflict_do_nothing(index_elements=["name"])
    )
    return session.scalar(select(Dataset).where(Dataset.name == name))


# The two statements a scan runs per file go straight to the driver: SQLAlchemy's per-row
# parameter and type processing cost more than SQLite's own work (half of a first scan's main
# process, profiled). Both statements are plain SQL that SQLite (3.24+) and PostgreSQL share.
_COLUMNS = ("dataset_id", "path", "path_raw", *PROBE_COLUMNS, "first_seen_at", "scanned_at")
_UPSERT = (
    f"INSERT INTO images ({', '.join(_COLUMNS)}) VALUES ({{marks}}) "
    "ON CONFLICT (dataset_id, path_raw) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in (*PROBE_COLUMNS, "path", "scanned_at"))
)
_KNOWN = (
    "SELECT path_raw, id, size, mtime_ns, content_hash, status FROM images "
    "WHERE dataset_id = {mark} AND path_raw IN ({marks})"
)


def _mark(connection) -> str:  # type: ignore[no-untyped-def]
    return "?" if connection.dialect.paramstyle == "qmark" else "%s"


def driver_time(dialect: str, value: dt.datetime):  # type: ignore[no-untyped-def]
    """A time as the driver takes it: the text SQLAlchemy itself stores in SQLite."""
    if dialect == "sqlite":
        return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")
    return value


def known_images(
    session: Session, dataset_id: int, rels: Sequence[bytes]
) -> dict[bytes, KnownImage]:
    """The stored state of these raw relative paths, for those the store has."""
    connection = session.connection()
    mark = _mark(connection)
    known: dict[bytes, KnownImage] = {}
    # The driver's own cursor: SQLAlchemy's result rows cost a re-scan a fifth of its time.
    cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        for start in range(0, len(rels), LOOKUP_CHUNK):
            chunk = list(rels[start : start + LOOKUP_CHUNK])
            sql = _KNOWN.format(mark=mark, marks=", ".join([mark] * len(chunk)))
            cursor.execute(sql, (dataset_id, *chunk))
            for raw, *state in cursor.fetchall():
                known[bytes(raw)] = KnownImage(*state)
    finally:
        cursor.close()
    return known


def empty_datasets(session: Session, dataset_ids: Sequence[int]) -> set[int]:
    """Those of these datasets that hold no image yet (a first scan has nothing to look up)."""
    return {
        dataset_id
        for dataset_id in dataset_ids
        if session.scalar(select(Image.id).where(Image.dataset_id == dataset_id).limit(1)) is None
    }


def upsert_images(session: Session, rows: Sequence[tuple[Any, ...]]) -> None:
    """Insert or update image rows, as tuples in `image_row_columns()` order."""
    if not rows:
        return
    connection = session.connection()
    sql = _UPSERT.format(marks=", ".join([_mark(connection)] * len(_COLUMNS)))
    connection.exec_driver_sql(sql, list(rows))


def image_row_columns() -> tuple[str, ...]:
    return _COLUMNS


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


# Moving a dataset's root (labeler.files.relocate) -------------------------------------------------


class StoredFile(NamedTuple):
    """What a move checks an image's file against."""

    id: int
    path_raw: bytes
    size: int | None
    mtime_ns: int | None
    content_hash: str


def _verifiable(dataset_id: int) -> tuple[Any, ...]:
    """Images whose content the store knows: not missing, and read at least once."""
    return (
        Image.dataset_id == dataset_id,
        Image.status != "missing",
        Image.content_hash.is_not(None),
    )


def count_verifiable(session: Session, dataset_id: int) -> tuple[int, int]:
    """(images a move can check by content, the dataset's other images)."""
    total = session.scalar(select(func.count()).where(Image.dataset_id == dataset_id)) or 0
    verifiable = session.scalar(select(func.count()).where(*_verifiable(dataset_id))) or 0
    return verifiable, total - verifiable


def verifiable_files(
    session: Session, dataset_id: int, *, after_id: int, limit: int
) -> list[StoredFile]:
    """The next `limit` checkable images by id after `after_id` (keyset pages, short reads)."""
    rows = session.execute(
        select(Image.id, Image.path_raw, Image.size, Image.mtime_ns, Image.content_hash)
        .where(*_verifiable(dataset_id), Image.id > after_id)
        .order_by(Image.id)
        .limit(limit)
    )
    return [StoredFile(i, bytes(raw), size, mtime, h) for i, raw, size, mtime, h in rows]


def datasets_at_root(session: Session, root_raw: bytes) -> list[str]:
    """Names of the datasets whose root is exactly this folder."""
    return list(
        session.scalars(
            select(Dataset.name).where(Dataset.root_raw == root_raw).order_by(Dataset.name)
        )
    )


def set_root(session: Session, dataset_id: int, *, was: bytes, root: str, root_raw: bytes) -> bool:
    """Point a dataset at another folder, if its root is still `was`; False when it is not (another
    process moved it meanwhile). Image rows, their ids, drafts and reviews are untouched."""
    result = session.execute(
        update(Dataset)
        .where(Dataset.id == dataset_id, Dataset.root_raw == was)
        .values(root=root, root_raw=root_raw)
    )
    return result.rowcount == 1


def set_mtimes(session: Session, mtimes: Iterable[tuple[int, int | None]]) -> int:
    """Set images' recorded modification times, as (image id, mtime_ns or None) pairs. None makes
    the next scan read the file again, whatever its size and time."""
    stmt = update(Image).where(Image.id == bindparam("image_id")).values(mtime_ns=bindparam("m"))
    connection = session.connection()
    batch: list[dict[str, int | None]] = []
    done = 0
    for image_id, mtime_ns in mtimes:
        batch.append({"image_id": image_id, "m": mtime_ns})
        if len(batch) >= LOOKUP_CHUNK:
            connection.execute(stmt, batch)
            done, batch = done + len(batch), []
    if batch:
        connection.execute(stmt, batch)
    return done + len(batch)


def dataset_of_image(session: Session, image_id: int) -> str:
    """The name of the dataset an image belongs to."""
    return session.scalar(
        select(Dataset.name).join(Image, Image.dataset_id == Dataset.id).where(Image.id == image_id)
    )
