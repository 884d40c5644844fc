"""An export's drafts read in a child process while this one formats and writes them.

A large export is two jobs of about equal cost: the store's rows turned into Python values
(SQLite's sort, the driver's conversion, each chunk's reviews and alternatives) and those values
formatted and written. In one process they add up; here a child reads and sends each DraftChunk,
pickled, through a pipe (a sender thread writes while the child reads the next few chunks:
memory stays flat) while the parent formats the one before. There is still one reader in one
transaction, reading the model and run the parent resolved, so the export is the same
consistent snapshot it is when read in process, and the output is byte for byte the same.

A child takes about half a second to start, so only when the model holds at least `MIN_ROWS`
best drafts in the datasets asked for (counted before the other filters, in milliseconds), and
only for a store a second process can open (a file or a server; not in-memory SQLite) and a
caller allowed to start processes (not a pool's daemonic worker). The pipe's only write end is
the child's: if the child dies, the parent's next read ends the export with a message instead
of waiting; if the parent dies, the child's next write fails and it exits rather than hold its
read transaction open. The child ignores Ctrl-C. A child that cannot start at all leaves the
reading to the parent, as for a small export: multiprocessing re-imports the parent's main
script in the child, which a script read from stdin does not allow (and a script without an
`if __name__ == "__main__":` guard runs its top level again there).
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import queue
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from labeler.errors import LabelerError
from labeler.pools import process_context
from labeler.records import DraftChunk, ExportRow, collector_paused
from labeler.store import Store
from labeler.store.drafts import DraftFilter, DraftStream, count_best_drafts, iter_drafts, resolve
from labeler.store.engine import sqlite_file
from labeler.store.opening import open_store

MIN_ROWS = 20_000  # drafts below which the child's start costs more than it saves
QUEUE_CHUNKS = 3  # chunks the child may have read ahead of the one being sent
_READY, _END = b"ready", b""  # the child's first and last messages; between them, pickles
# of chunks, or of ("error", exception)


def worthwhile(store: Store, session, spec: DraftFilter) -> bool:  # type: ignore[no-untyped-def]
    """Whether this export is large enough, and its store shareable, to read in a child: the
    model's best drafts are counted (on the drafts index), in the datasets asked for, before
    the other filters. An unknown model or dataset raises here, as the stream would."""
    if spec.limit is not None and spec.limit < MIN_ROWS:
        return False
    if store.is_sqlite and sqlite_file(store.url) is None:  # in-memory: a child cannot see it
        return False
    if multiprocessing.current_process().daemon:  # a pool worker may not start processes
        return False
    chosen = resolve(session, spec)  # raises here, not in the child, for an unknown model
    # The datasets are the one filter that often takes a few rows out of many.
    return count_best_drafts(session, chosen, datasets=spec.datasets) >= MIN_ROWS


@dataclass
class ReadAhead:
    """The drafts of `stream` (iter_drafts in this process) read instead by a child process from
    the store at `url`; iterable like the stream, which stays the fallback."""

    url: str
    stream: DraftStream
    prepare: Callable[[DraftChunk], None] | None = None  # run on each chunk in the child

    def __iter__(self) -> Iterator[ExportRow]:
        for chunk in self.chunks():
            yield from chunk.rows()

    def chunks(self) -> Iterator[DraftChunk]:
        stream = self.stream
        chosen = resolve(stream.session, stream.spec)  # the child reads this very model and run
        spec = replace(stream.spec, model=chosen.model_hash, settings_key=chosen.settings_key)
        context = process_context(preload=["labeler.review.readahead"])
        # A pipe whose only write end is the child's: when the child ends, however it ends, a
        # read here gets an end of file instead of waiting; when this process ends, the child's
        # next write fails and it exits instead of holding its read transaction open.
        receive, send = context.Pipe(duplex=False)
        child = context.Process(
            target=_read, args=(self.url, spec, stream.sort, stream.n_best, self.prepare, send),
            name="labeler-export-reader", daemon=True,
        )  # fmt: skip
        try:
            try:
                child.start()
            finally:
                send.close()
            ready = receive.recv_bytes()
        except (OSError, EOFError):  # it could not start (say, a __main__ it cannot re-import)
            receive.close()
            _stop(child)
            yield from stream.chunks()
            return
        try:
            if ready != _READY:
                raise pickle.loads(ready)[1]  # it could not open the store
            while (payload := _receive(receive, child)) != _END:
                message = pickle.loads(payload)
                if isinstance(message, tuple):  # ("error", exception) from the child
                    raise message[1]
                yield message
        finally:
            receive.close()  # a child still writing gets a broken pipe and exits
            _stop(child)


def _receive(receive: Any, child: Any) -> bytes:
    try:
        return receive.recv_bytes()
    except (OSError, EOFError):
        child.join()
        raise LabelerError(
            f"the export's reader process stopped (exit code {child.exitcode}) before sending "
            "every draft; the export is incomplete and was not finished"
        ) from None


def _stop(child: Any) -> None:
    if child.is_alive():
        child.terminate()
    if child.pid is not None:
        child.join()


def _read(url: str, spec: DraftFilter, sort: str, n_best: int, prepare, send) -> None:  # type: ignore[no-untyped-def]
    """In the child: every chunk, prepared and pickled here so that the parent only unpickles.
    A sender thread writes to the pipe while this thread reads the next chunks."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    try:
        store = open_store(url, upgrade=False)
    except BaseException as exc:
        _send(send, _failure(exc))
        return
    _send(send, _READY)
    outbox: queue.Queue[tuple[bytes, bool]] = queue.Queue(QUEUE_CHUNKS)
    sender = threading.Thread(target=_send_all, args=(outbox, send), daemon=True)
    sender.start()
    try:
        with store.session() as session, collector_paused():
            for chunk in iter_drafts(session, spec, sort=sort, n_best=n_best).chunks():
                if prepare is not None:
                    prepare(chunk)
                outbox.put((pickle.dumps(chunk, protocol=pickle.HIGHEST_PROTOCOL), False))
        outbox.put((_END, True))
    except BaseException as exc:  # handed to the parent, which raises it
        outbox.put((_failure(exc), True))
    finally:
        store.dispose()
    sender.join()


def _send_all(outbox: queue.Queue[tuple[bytes, bool]], send: Any) -> None:
    last = False
    while not last:
        payload, last = outbox.get()
        _send(send, payload)


def _send(send: Any, payload: bytes) -> None:
    try:
        send.send_bytes(payload)
    except OSError:  # the parent is gone (or stopped reading): nobody wants the rest
        os._exit(0)


def _failure(exc: BaseException) -> bytes:
    """("error", exc) pickled, or its message in a LabelerError if it cannot make the trip."""
    try:
        payload = pickle.dumps(("error", exc))
        pickle.loads(payload)
    except Exception:
        payload = pickle.dumps(("error", LabelerError(f"{type(exc).__name__}: {exc}")))
    return payload
