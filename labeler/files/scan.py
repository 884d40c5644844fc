"""`labeler scan`: register every file under some folders, with what it is and whether it reads.

The walk streams paths; each batch of paths is looked up in the store, and only files that are
new, changed (size or mtime) or not yet readable are read again. Reading (hashing and verifying
the image) runs in a bounded process pool, a few small tasks in flight per worker, so memory stays
flat whatever the tree's size. Results are written in transactions of a few hundred rows, so an
interrupted scan keeps what it wrote and the next one picks up the rest.

A file that vanished is marked `missing` only when the walk over its folder completed, by
ticking every existing row the walk saw in a bytearray indexed by image id (a megabyte per
million images) and looking for the ones left unticked.
"""

from __future__ import annotations

import os
import shlex
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from typing import Any

from labeler.errors import InputError, LabelerError
from labeler.files import decode
from labeler.files import probe as probing
from labeler.files.walk import Found, WalkStats, display, walk
from labeler.pools import worker_pool
from labeler.store import Store
from labeler.store import images as image_store
from labeler.store.models import utcnow

LOOKUP_BATCH = 512  # paths looked up in the store at once
TASK_SIZE = 64  # files per task sent to a worker
WRITE_BATCH = 500  # rows per write transaction
UNCHANGED_OK = ("ok", "unsupported")  # statuses that re-reading identical bytes cannot change


@dataclass
class ScanProgress:
    files: int  # found by the walk so far
    read: int  # of which read and probed
    unchanged: int  # of which skipped because size and mtime are unchanged


@dataclass
class ScanResult:
    datasets: list[str]
    files: int = 0
    new: int = 0
    changed: int = 0  # content differs from what the store had
    unchanged: int = 0
    missing: int = 0  # newly marked missing
    stale_drafts: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)  # what the walk passed over
    duplicates: int = 0  # readable files whose content another file has too
    duplicate_examples: list[list[str]] = field(default_factory=list)
    elapsed_s: float = 0.0


@dataclass(frozen=True)
class _Target:
    """One path given on the command line, and the dataset it goes into."""

    dataset_id: int
    dataset: str
    path: bytes
    prefix: bytes  # where `path` lies inside the dataset root


@dataclass
class _Pending:
    dataset_id: int
    found: Found
    known: image_store.KnownImage | None


def scan(
    store: Store,
    paths: Sequence[str | os.PathLike[str]],
    *,
    dataset: str | None = None,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    hidden: bool = False,
    follow_symlinks: bool = False,
    max_pixels: int = decode.DEFAULT_MAX_PIXELS,
    workers: int | None = None,
    progress: Callable[[ScanProgress], None] | None = None,
) -> ScanResult:
    """Scan `paths` into the store and return what changed."""
    started = time.perf_counter()
    scan_start = utcnow()
    targets = _plan(store, paths, dataset)
    result = ScanResult(datasets=sorted({t.dataset for t in targets}))
    stats = WalkStats()
    with store.session() as session:
        up_to_id = image_store.max_image_id(session)
        empty = image_store.empty_datasets(session, sorted({t.dataset_id for t in targets}))
    seen = bytearray(up_to_id + 1)
    job = _Job(store, result, seen, max_pixels, progress, empty)
    found = _found(targets, include, exclude, hidden, follow_symlinks, stats)
    try:
        job.run(found, workers)
    except KeyboardInterrupt:
        raise LabelerError(
            f"scan interrupted: {result.new + result.changed} files recorded; "
            "run the same command again to finish"
        ) from None
    result.skipped = stats.skipped
    _finish(store, targets, result, seen, up_to_id, scan_start)
    result.elapsed_s = time.perf_counter() - started
    return result


def _found(targets, include, exclude, hidden, follow, stats) -> Iterator[tuple[int, Found]]:  # type: ignore[no-untyped-def]
    for target in targets:
        for item in walk(
            target.path, include=include, exclude=exclude, hidden=hidden,
            follow_symlinks=follow, prefix=target.prefix, stats=stats,
        ):  # fmt: skip
            yield target.dataset_id, item


def _plan(
    store: Store, paths: Sequence[str | os.PathLike[str]], dataset: str | None
) -> list[_Target]:
    """Check every path before any work, and find or create each one's dataset."""
    if not paths:
        raise InputError("give at least one folder or file to scan")
    raws = []
    for path in paths:
        raw = os.path.abspath(os.fsencode(path))
        if not os.path.exists(raw):
            raise InputError(f"{os.fsdecode(path)}: no such file or folder")
        raws.append(raw)
    folders = [raw if os.path.isdir(raw) else os.path.dirname(raw) for raw in raws]
    with store.write() as session:
        if dataset is not None:
            root = folders[0] if len(folders) == 1 else os.path.commonpath(folders)
            ds = _dataset(session, dataset, root)
            return [_target(ds, raw) for raw in raws]
        targets = []
        for raw, folder in zip(raws, folders, strict=True):
            name = display(os.path.basename(folder)) or display(folder)
            targets.append(_target(_dataset(session, name, folder), raw))
        return targets


def _dataset(session, name: str, root: bytes):  # type: ignore[no-untyped-def]
    return image_store.ensure_dataset(session, name, display(root), root)


def _target(ds, raw: bytes) -> _Target:  # type: ignore[no-untyped-def]
    root = bytes(ds.root_raw)
    folder = raw if os.path.isdir(raw) else os.path.dirname(raw)
    if os.path.commonpath([root, folder]) != root:
        # A root that is gone most likely moved: point to the command that follows it.
        gone = "" if os.path.isdir(root) else ", which no longer exists"
        raise InputError(
            f"{display(raw)} is outside dataset '{ds.name}' (root {ds.root}{gone}); "
            "name another dataset with --dataset, or if the dataset moved there, run "
            f"labeler datasets move {shlex.quote(ds.name)} {shlex.quote(display(folder))}"
        )
    rel = os.path.relpath(folder, root)
    prefix = b"" if rel == b"." else rel + b"/"
    return _Target(ds.id, ds.name, raw, prefix)


class _Job:
    """The streaming part of a scan: look-ups, the worker pool and the writes."""

    def __init__(self, store, result, seen, max_pixels, progress, empty) -> None:  # type: ignore[no-untyped-def]
        self.store = store
        self.empty = empty  # datasets with no images when the scan began: nothing to look up
        self.result = result
        self.seen = seen
        self.max_pixels = max_pixels
        self.progress = progress
        self.rows: list[tuple[Any, ...]] = []  # in image_store.image_row_columns() order
        self.changed_ids: list[int] = []
        self.read = 0
        self.dialect = store.engine.dialect.name
        self.now = image_store.driver_time(self.dialect, utcnow())  # renewed at each flush

    def run(self, found: Iterator[tuple[int, Found]], workers: int | None) -> None:
        workers = min(os.cpu_count() or 1, 8) if workers is None else workers
        in_flight: dict[Future[list[probing.Probe]], list[_Pending]] = {}
        with worker_pool(workers, preload=["labeler.files.probe"]) as pool:
            try:
                for batch in _batches(found, LOOKUP_BATCH):
                    for task in _chunks(self._lookup(batch), TASK_SIZE):
                        paths = [p.found.path for p in task]
                        in_flight[pool.submit(_probe_many, paths, self.max_pixels)] = task
                        while len(in_flight) >= 4 * max(workers, 1):
                            self._collect(in_flight, FIRST_COMPLETED)
                while in_flight:
                    self._collect(in_flight, FIRST_COMPLETED)
            finally:
                self._flush()

    def _lookup(self, batch: list[tuple[int, Found]]) -> list[_Pending]:
        """Tick unchanged files as seen; return the ones to read."""
        by_dataset: dict[int, list[Found]] = {}
        for dataset_id, item in batch:
            by_dataset.setdefault(dataset_id, []).append(item)
        to_read = []
        with self.store.session() as session:
            for dataset_id, items in by_dataset.items():
                if dataset_id in self.empty:
                    to_read += [_Pending(dataset_id, item, None) for item in items]
                    continue
                known = image_store.known_images(session, dataset_id, [i.rel for i in items])
                for item in items:
                    state = known.get(item.rel)
                    if state is not None and self._unchanged(item, state):
                        continue
                    to_read.append(_Pending(dataset_id, item, state))
        self.result.files += len(batch)
        self._report()
        return to_read

    def _unchanged(self, item: Found, state: image_store.KnownImage) -> bool:
        if state.id < len(self.seen):
            self.seen[state.id] = 1
        same = (item.size, item.mtime_ns) == (state.size, state.mtime_ns)
        if same and state.status in UNCHANGED_OK and item.size is not None:
            self.result.unchanged += 1
            self.result.by_status[state.status] += 1
            return True
        return False

    def _collect(self, in_flight, how) -> None:  # type: ignore[no-untyped-def]
        done, _ = wait(list(in_flight), return_when=how)
        for future in done:
            task = in_flight.pop(future)
            for pending, probe in zip(task, future.result(), strict=True):
                self._record(pending, probe)
        if len(self.rows) >= WRITE_BATCH:
            self._flush()
        self._report()

    def _record(self, pending: _Pending, probe: probing.Probe) -> None:
        self.read += 1
        self.result.by_status[probe.status] += 1
        known = pending.known
        if known is None:
            self.result.new += 1
        elif known.content_hash != probe.sha256 or known.status != probe.status:
            self.result.changed += 1
            if known.content_hash is not None and known.content_hash != probe.sha256:
                self.changed_ids.append(known.id)
        else:
            self.result.unchanged += 1
        self.rows.append(_row(pending.dataset_id, pending.found.rel, probe, self.now))

    def _flush(self) -> None:
        if not self.rows:
            return
        with self.store.write() as session:
            image_store.upsert_images(session, self.rows)
            self.result.stale_drafts += image_store.mark_stale(session, self.changed_ids)
        self.rows, self.changed_ids = [], []
        self.now = image_store.driver_time(self.dialect, utcnow())

    def _report(self) -> None:
        if self.progress is not None:
            self.progress(ScanProgress(self.result.files, self.read, self.result.unchanged))


def _finish(store, targets, result, seen, up_to_id, scan_start) -> None:  # type: ignore[no-untyped-def]
    """Mark what vanished under the folders walked, and count duplicates."""
    folders: dict[int, list[bytes]] = {}
    for target in targets:
        if os.path.isdir(target.path):  # a file given by name was found; nothing to miss
            folders.setdefault(target.dataset_id, []).append(target.prefix)
    with store.write() as session:
        for dataset_id, prefixes in folders.items():
            unseen = image_store.unseen_images(
                session, dataset_id, seen=seen, up_to_id=up_to_id, under=prefixes
            )
            result.missing += image_store.mark_missing(session, unseen, scan_start)
        if result.missing:
            result.by_status["missing"] += result.missing
        dataset_ids = sorted({t.dataset_id for t in targets})
        result.duplicates, result.duplicate_examples = image_store.duplicate_groups(
            session, dataset_ids
        )


def _row(dataset_id: int, rel: bytes, probe: probing.Probe, now: Any) -> tuple[Any, ...]:
    """An image row in image_store.image_row_columns() order."""
    return (dataset_id, display(rel), rel, probe.size, probe.mtime_ns, probe.sha256, probe.format,
            probe.width, probe.height, probe.mode, probe.frames, probe.status,
            probe.reason or None, now, now)  # fmt: skip


def record_files(
    store: Store, dataset_id: int, root: bytes, rels: Sequence[bytes], *,
    max_pixels: int = decode.DEFAULT_MAX_PIXELS,
) -> dict[bytes, tuple[image_store.KnownImage, str]]:  # fmt: skip
    """Register these files of one dataset now, as a scan does (a file is read only when new
    or changed since its row was written, outside any transaction; a changed content's drafts
    go stale): the stored state of each afterwards, with the reason a file read now is not ok
    ("" otherwise)."""
    with store.session() as session:
        known = image_store.known_images(session, dataset_id, rels)
    now = image_store.driver_time(store.engine.dialect.name, utcnow())
    rows, changed, reasons = [], [], {}
    for rel in dict.fromkeys(rels):
        state = known.get(rel)
        try:
            st = os.stat(os.path.join(root, rel))
        except OSError:
            st = None
        unchanged = st is not None and state is not None and state.status in UNCHANGED_OK
        if unchanged and (st.st_size, st.st_mtime_ns) == (state.size, state.mtime_ns):
            continue
        probe = probing.probe(os.path.join(root, rel), max_pixels=max_pixels)
        reasons[rel] = probe.reason
        if state is not None and state.content_hash not in (None, probe.sha256):
            changed.append(state.id)
        rows.append(_row(dataset_id, rel, probe, now))
    with store.write() as session:
        image_store.upsert_images(session, rows)
        image_store.mark_stale(session, changed)
        stored = image_store.known_images(session, dataset_id, rels)
    return {rel: (state, reasons.get(rel, "")) for rel, state in stored.items()}


def _probe_many(paths: list[bytes], max_pixels: int) -> list[probing.Probe]:
    return [probing.probe(path, max_pixels=max_pixels) for path in paths]


def _batches(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
