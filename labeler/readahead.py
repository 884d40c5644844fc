"""An export's drafts read in a child process while this one formats and writes them.

A large export is two jobs of about equal cost: the store's rows turned into Python values
(SQLite's sort, the driver's conversion, each chunk's reviews and alternatives) and those values
formatted and written. In one process they add up; here a child reads and sends each DraftChunk,
pickled, through a bounded queue (a few chunks: memory stays flat) while the parent formats the
one before. There is still one reader in one transaction, so the export is the same consistent
snapshot it is when read in process, and the output is byte for byte the same.

A child takes about half a second to start, so only a selection of at least `MIN_ROWS` drafts
(counted up front on the drafts index, a few milliseconds) goes this way, and only for a store
a second process can open (a file or a server; not in-memory SQLite). The child ignores Ctrl-C
and is stopped with the export however it ends; if it dies, the export fails with a message
instead of waiting for it. A child that cannot start at all (multiprocessing re-imports the
parent's main script, which a script read from stdin does not allow) leaves the reading to the
parent, as for a small export.
"""

from __future__ import annotations

import pickle
import queue as queues
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from labeler.errors import LabelerError
from labeler.formats.rows import DraftChunk, ExportRow, collector_paused
from labeler.pools import process_context
from labeler.store import Store
from labeler.store.engine import sqlite_file
from labeler.store.exports import DraftFilter, iter_drafts, resolve
from labeler.store.migrate import open_store
from labeler.store.models import Caption

MIN_ROWS = 20_000  # drafts below which the child's start costs more than it saves
QUEUE_CHUNKS = 4  # chunks the child may read ahead of the writer
POLL_S = 1.0  # how often a waiting parent checks that the child is still alive
_READY, _END = b"ready", b""  # the child's first and last messages; between them, pickles
# of chunks, or of ("error", exception)


def worthwhile(store: Store, session: Session, spec: DraftFilter) -> bool:
    """Whether this export is large enough, and its store shareable, to read in a child."""
    if spec.limit is not None and spec.limit < MIN_ROWS:
        return False
    if store.is_sqlite and sqlite_file(store.url) is None:  # in-memory: a child cannot see it
        return False
    chosen = resolve(session, spec)  # raises here, not in the child, for an unknown model
    drafts = session.scalar(
        select(func.count())
        .select_from(Caption)
        .where(Caption.model_id == chosen.model_id, Caption.settings_key == chosen.settings_key)
        .where(Caption.rank == 0)
    )  # an upper bound on the rows: the filters can only take some away
    return (drafts or 0) >= MIN_ROWS


@dataclass
class ReadAhead:
    """`iter_drafts(...)` of the store at `url`, read in a child process; iterable like it."""

    url: str
    spec: DraftFilter
    sort: str = "confidence"
    n_best: int = 1
    prepare: Callable[[DraftChunk], None] | None = None  # run on each chunk in the child

    def __iter__(self) -> Iterator[ExportRow]:
        for chunk in self.chunks():
            yield from chunk.rows()

    def chunks(self) -> Iterator[DraftChunk]:
        context = process_context(preload=["labeler.readahead"])
        channel = context.Queue(QUEUE_CHUNKS)
        child = context.Process(
            target=_read,
            args=(self.url, self.spec, self.sort, self.n_best, self.prepare, channel),
            name="labeler-export-reader", daemon=True,
        )  # fmt: skip
        child.start()
        try:
            try:
                ready = _receive(channel, child)
            except ChildGone:  # it could not even start (say, a __main__ it cannot import)
                yield from self._in_process()
                return
            if ready != _READY:
                raise pickle.loads(ready)[1]  # it could not open the store
            while (payload := _receive(channel, child)) != _END:
                message = pickle.loads(payload)
                if isinstance(message, tuple):  # ("error", exception) from the child
                    raise message[1]
                yield message
            child.join()
        finally:
            if child.is_alive():  # the writer stopped early: the reader's work is not needed
                child.terminate()
                child.join()
            channel.close()
            channel.join_thread()

    def _in_process(self) -> Iterator[DraftChunk]:
        store = open_store(self.url, upgrade=False)
        try:
            with store.session() as session:
                yield from iter_drafts(
                    session, self.spec, sort=self.sort, n_best=self.n_best
                ).chunks()
        finally:
            store.dispose()


class ChildGone(LabelerError):
    """The reader process ended without its last message."""


def _receive(channel: Any, child: Any) -> bytes:
    while True:
        try:
            return channel.get(timeout=POLL_S)
        except queues.Empty:
            if not child.is_alive():
                raise ChildGone(
                    f"the export's reader process stopped (exit code {child.exitcode}) before "
                    "sending every draft; nothing was written"
                ) from None


def _read(url: str, spec: DraftFilter, sort: str, n_best: int, prepare, channel) -> None:  # type: ignore[no-untyped-def]
    """In the child: every chunk, prepared and pickled here so that the parent only unpickles."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    try:
        store = open_store(url, upgrade=False)
        channel.put(_READY)
        try:
            with store.session() as session, collector_paused():
                stream = iter_drafts(session, spec, sort=sort, n_best=n_best)
                for chunk in stream.chunks():
                    if prepare is not None:
                        prepare(chunk)
                    channel.put(pickle.dumps(chunk, protocol=pickle.HIGHEST_PROTOCOL))
        finally:
            store.dispose()
    except BaseException as exc:  # handed to the parent, which raises it
        try:
            payload = pickle.dumps(("error", exc))
        except Exception:  # an exception that cannot travel: its message can
            payload = pickle.dumps(("error", LabelerError(f"{type(exc).__name__}: {exc}")))
        channel.put(payload)
    channel.put(_END)
    channel.close()
    channel.join_thread()
