"""`labeler datasets move`: point a dataset at the folder its images now live in.

A dataset's images are stored relative to its root, so a folder copied to another machine or
moved on disk is the same dataset under another root. Moving it rewrites only the root (text and
raw bytes), so image ids, drafts and reviews stay as they are; nothing is renamed or deleted.

Before the move every image whose content the store knows (status other than `missing`, read at
least once) is checked at NEW_ROOT/relative path: a regular file of the stored size and sha256 is
`matched`; another size or content is `changed`; no file is `missing`; a file that cannot be read
(permission, not a regular file) is `unreadable`. Every file of the right size is hashed in full,
streaming, in a worker pool like the scan's: size and time alone cannot tell a copy from another
file, and a copy's modification time is usually new. Hashing runs at the disk's speed, or about
1 GB/s per worker on files the OS has cached (sha256, measured); the report gives the rate.

Mismatched images are reported (counts and a few examples), never repaired: their rows stay, and
the next `labeler scan NAME NEW_ROOT` judges them by its usual rules (changed content marks the
drafts stale, absent files become `missing`). To make sure that scan reads them, their recorded
modification time is cleared; a matched image gets its new file's time, so the scan does not read
it again. Files moved to another relative path are not looked for (v1): they show as `missing`,
and a scan registers them as new images.

Refused, with nothing changed: an unknown dataset, a NEW_ROOT that is not a folder or is already
the root of a dataset (scan allows overlapping datasets, so only the exact folder is refused), and
a folder where no checked image matches (probably the wrong one) unless `force`. The checks read
the store in short pages, then one transaction moves the root and writes the times, only if the
root is still the one the checks began from.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from array import array
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from typing import NamedTuple

from labeler.errors import InputError, LabelerError
from labeler.files.walk import display
from labeler.pools import worker_pool
from labeler.store import Store
from labeler.store import images as image_store

OUTCOMES = ("matched", "changed", "missing", "unreadable")
PAGE = 2048  # images read from the store at once
TASK_SIZE = 64  # files per task sent to a worker
EXAMPLES = 5  # paths kept per outcome for the report
POOL_FROM = 2 * TASK_SIZE  # fewer files than this are hashed in the calling process


class Mismatch(NamedTuple):
    path: str
    reason: str


@dataclass
class MoveResult:
    dataset: str
    old_root: str
    new_root: str
    moved: bool = False  # False after a dry run, or when no file matched
    checked: int = 0  # images checked by content
    matched: int = 0
    changed: int = 0
    missing: int = 0
    unreadable: int = 0
    unchecked: int = 0  # images the store holds no content for (missing, never read)
    bytes_hashed: int = 0
    examples: dict[str, list[Mismatch]] = field(default_factory=dict)  # per outcome but matched
    elapsed_s: float = 0.0


class _Check(NamedTuple):
    """One file's outcome, as a worker returns it."""

    outcome: str
    mtime_ns: int | None  # the file's, when matched
    hashed: int  # bytes read
    reason: str


def move_dataset(
    store: Store,
    name: str,
    new_root: str | os.PathLike[str],
    *,
    dry_run: bool = False,
    force: bool = False,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> MoveResult:
    """Check the dataset's images under `new_root` and, unless `dry_run`, make it the root."""
    started = time.perf_counter()
    root_raw = os.path.abspath(os.fsencode(new_root))
    if not os.path.isdir(root_raw):
        what = "not a folder" if os.path.exists(root_raw) else "no such folder"
        raise InputError(f"{display(root_raw)}: {what}")
    with store.session() as session:
        dataset = image_store.named_dataset(session, name)
        dataset_id, old_raw, old_root = dataset.id, bytes(dataset.root_raw), dataset.root
        _refuse_taken(session, root_raw)
        total, unchecked = image_store.count_verifiable(session, dataset_id)
    result = MoveResult(name, old_root, display(root_raw), unchecked=unchecked)
    mtimes = _Times()
    try:
        _check_all(store, dataset_id, root_raw, result, mtimes, workers, progress, total)
    except KeyboardInterrupt:
        raise LabelerError("move interrupted while checking the files; nothing changed") from None
    if result.checked and not result.matched and not force and not dry_run:
        raise InputError(
            f"none of the {result.checked} images of '{name}' is in {result.new_root} with the "
            "same content; is it the right folder? (--force moves anyway)"
        )
    if not dry_run:
        _commit(store, dataset_id, old_raw, root_raw, mtimes)
        result.moved = True
    result.elapsed_s = time.perf_counter() - started
    return result


def _refuse_taken(session, root_raw: bytes) -> None:  # type: ignore[no-untyped-def]
    taken = image_store.datasets_at_root(session, root_raw)
    if taken:
        raise InputError(f"{display(root_raw)} is already the root of dataset '{taken[0]}'")


class _Times:
    """The modification times to record, kept compact: two machine integers per image."""

    def __init__(self) -> None:
        self.ids = array("q")
        self.mtimes = array("q")
        self.cleared = array("q")  # ids whose time is cleared, so the next scan reads them

    def pairs(self) -> Iterator[tuple[int, int | None]]:
        yield from zip(self.ids, self.mtimes, strict=True)
        for image_id in self.cleared:
            yield image_id, None


def _check_all(store, dataset_id, root_raw, result, mtimes, workers, progress, total) -> None:  # type: ignore[no-untyped-def]
    """Check every page of images, a bounded number of tasks in flight."""
    workers = min(os.cpu_count() or 1, 8) if workers is None else workers
    workers = workers if total >= POOL_FROM else 0
    in_flight: dict[Future[list[_Check]], list[image_store.StoredFile]] = {}

    def collect() -> None:
        done, _ = wait(list(in_flight), return_when=FIRST_COMPLETED)
        for future in done:
            files = in_flight.pop(future)
            for stored, check in zip(files, future.result(), strict=True):
                _record(result, mtimes, stored, check)
        if progress is not None:
            progress(result.checked, total)

    with worker_pool(workers, preload=["labeler.files.relocate"]) as pool:
        for page in _pages(store, dataset_id):
            for start in range(0, len(page), TASK_SIZE):
                files = page[start : start + TASK_SIZE]
                tasks = [
                    (os.path.join(root_raw, f.path_raw), f.size, f.content_hash) for f in files
                ]
                in_flight[pool.submit(_check_many, tasks)] = files
                while len(in_flight) >= 4 * max(workers, 1):
                    collect()
        while in_flight:
            collect()


def _pages(store: Store, dataset_id: int) -> Iterator[list[image_store.StoredFile]]:
    after = 0
    while True:
        with store.session() as session:
            page = image_store.verifiable_files(session, dataset_id, after_id=after, limit=PAGE)
        if not page:
            return
        yield page
        after = page[-1].id


def _record(result: MoveResult, mtimes: _Times, stored, check: _Check) -> None:  # type: ignore[no-untyped-def]
    result.checked += 1
    result.bytes_hashed += check.hashed
    setattr(result, check.outcome, getattr(result, check.outcome) + 1)
    if check.outcome == "matched":
        if check.mtime_ns != stored.mtime_ns:
            mtimes.ids.append(stored.id)
            mtimes.mtimes.append(check.mtime_ns)
        return
    if check.outcome != "missing":
        mtimes.cleared.append(stored.id)
    examples = result.examples.setdefault(check.outcome, [])
    if len(examples) < EXAMPLES:
        examples.append(Mismatch(display(stored.path_raw), check.reason))


def _commit(store: Store, dataset_id: int, old_raw: bytes, root_raw: bytes, mtimes: _Times) -> None:
    with store.write() as session:
        _refuse_taken(session, root_raw)
        moved = image_store.set_root(
            session, dataset_id, was=old_raw, root=display(root_raw), root_raw=root_raw
        )
        if not moved:
            raise LabelerError("the dataset was changed by another process meanwhile; run again")
        image_store.set_mtimes(session, mtimes.pairs())


def _check_many(tasks: list[tuple[bytes, int | None, str]]) -> list[_Check]:
    return [_check(path, size, content_hash) for path, size, content_hash in tasks]


def _check(path: bytes, size: int | None, content_hash: str) -> _Check:
    """Whether the file at `path` holds the stored content. Opened without blocking (a FIFO in
    its place must not hang the move), then checked to be a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except (FileNotFoundError, NotADirectoryError):
        return _Check("missing", None, 0, "no such file")
    except OSError as err:
        return _Check("unreadable", None, 0, err.strerror or str(err))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return _Check("unreadable", None, 0, "not a regular file")
        if st.st_size != size:
            return _Check("changed", None, 0, f"{st.st_size} bytes, was {size}")
        with open(fd, "rb", closefd=False) as file:
            digest = hashlib.file_digest(file, "sha256").hexdigest()
    except OSError as err:
        return _Check("unreadable", None, 0, err.strerror or str(err))
    finally:
        os.close(fd)
    if digest != content_hash:
        return _Check("changed", None, st.st_size, "same size, different content")
    return _Check("matched", st.st_mtime_ns, st.st_size, "")
