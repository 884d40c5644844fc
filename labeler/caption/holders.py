"""Who holds a caption run's claims, whether it is still there, and what follows from that:
a live worker's heartbeat keeps its claims, a dead one's are freed and its run marked
`abandoned` (caption.py says when).

A run and each of its claims record their holder: the host's name, the process id and the
process's start time as the OS reports it (psutil's `create_time`). On the same host that tells
exactly whether the holder is gone: no such process, a zombie, or a process with that id that
started at another time (the id was reused). Another host's processes cannot be looked at; there
the store tells. On PostgreSQL each run holds a session-level advisory lock, keyed by its schema
and id, on a connection of its own from before its row is visible until after its last write
(`RunSession`): the lock ends with the session, so a worker killed, or its machine gone, frees it
as soon as the server sees the connection drop, and anyone can test it (`session_gone`). On
SQLite, whose WAL mode needs every process on one host anyway, the claims' lease is the fallback.

Hosts are told apart by name (socket.gethostname()): machines or containers with process tables
of their own that share one store must have different names, or a live worker in one would look
gone to the others. PostgreSQL needs sessions of its own per client for the lock (a pooler in
transaction mode would share them).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import socket
import threading
import time
from dataclasses import dataclass

import psutil
from sqlalchemy import Connection, Engine, text

from labeler.errors import StoreError
from labeler.store import captions as caption_store
from labeler.store.models import utcnow

# Start times are compared within this: psutil derives them from the boot time, which clock
# adjustments can move by a fraction of a second between two readings; a pid reused within a
# second of the first process's start would need the whole pid range to wrap in that second.
START_TOLERANCE_S = 1.0


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    started: float  # the process's start time, seconds since the epoch


def me() -> Holder:
    """This process."""
    return Holder(socket.gethostname(), os.getpid(), psutil.Process().create_time())


def process_gone(host: str | None, pid: int | None, started: float | None) -> bool:
    """Whether the holder's process is certainly gone: only on this host (elsewhere, or without
    a pid, nobody here can tell). Without a start time (a row older than the column) only a
    pid that no process has counts."""
    if pid is None or host != socket.gethostname():
        return False
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:  # dead, its parent has not reaped it yet
            return True
        return started is not None and abs(process.create_time() - started) > START_TOLERANCE_S
    except psutil.NoSuchProcess:
        return True
    except psutil.AccessDenied:  # someone else's process that we may not look at: it is there
        return False


def run_key(schema: str, run_id: int) -> int:
    """The advisory lock key of a run: stores in other schemas of one database have runs with
    the same ids, so the schema is part of it (a 64-bit hash; a collision only makes a dead run
    look alive until its lease ends)."""
    digest = hashlib.blake2b(f"labeler caption run {schema} {run_id}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big", signed=True)


def session_gone(connection: Connection, run_id: int) -> bool:
    """On PostgreSQL, whether the session that held run `run_id`'s lock has ended (the lock is
    free); taken and let go in one statement, so no error leaves it held. False elsewhere."""
    if connection.dialect.name != "postgresql":
        return False
    schema = connection.scalar(text("SELECT current_schema()"))
    return bool(
        connection.scalar(
            text(
                "SELECT CASE WHEN pg_try_advisory_lock(:key) THEN pg_advisory_unlock(:key) "
                "ELSE false END"
            ),
            {"key": run_key(schema, run_id)},
        )
    )


class RunSession:
    """A run's advisory lock on a connection of its own, on PostgreSQL (nothing elsewhere).

    `hold` is called in the transaction that creates the run, before it commits: nobody can see
    the run before its lock is held. The connection is in autocommit, so it is never left idle in
    a transaction for the run's whole life. `ping` raises when the session is gone (the server
    or the network dropped it): the run's claims are then free for others to take."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._connection: Connection | None = None
        self._key = 0

    def hold(self, run_id: int) -> None:
        if self.engine.dialect.name != "postgresql":
            return
        connection = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        self._connection = connection
        self._key = run_key(connection.scalar(text("SELECT current_schema()")), run_id)
        connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": self._key})

    def ping(self) -> None:
        if self._connection is not None:
            self._connection.execute(text("SELECT 1"))

    def close(self) -> None:
        """Let the lock go; a connection that cannot say so is closed outright, which ends its
        session and the lock with it (it never goes back to the pool holding the lock)."""
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": self._key})
        except Exception:
            connection.invalidate()
        finally:
            connection.close()


class Heartbeat:
    """Renews this worker's claims every quarter of the lease from a thread of its own, whatever
    the model is doing (a batch may take longer than a lease), and on PostgreSQL checks that the
    session holding the run's lock is still there. Failures are the main thread's to raise
    (`check`, at each progress report): a lost session at once, since others may now take the
    claims; renewals failing for half a lease, before the claims can run out."""

    def __init__(self, store, worker: str, lease: dt.timedelta, lock) -> None:  # type: ignore[no-untyped-def]
        self.store, self.worker, self.lease, self.lock = store, worker, lease, lock
        self.interval = lease.total_seconds() / 4
        self.last_renewed = time.monotonic()
        self.failure: Exception | None = None
        self.session_lost: Exception | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="claims-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)  # a renewal stuck on a busy store only renews nothing later

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.lock.ping()
            except Exception as exc:  # the session and its lock are gone
                self.session_lost = exc
                return
            try:
                with self.store.write() as session:
                    until = utcnow() + self.lease
                    caption_store.renew_all(session, worker=self.worker, until=until)
                self.last_renewed, self.failure = time.monotonic(), None
            except Exception as exc:  # tried again next beat; `check` decides when it is fatal
                self.failure = exc

    def check(self) -> None:
        if self.session_lost is not None:
            raise StoreError(f"lost the database session that holds this run's claims: "
                             f"{self.session_lost}") from self.session_lost  # fmt: skip
        failure = self.failure
        if failure is not None and time.monotonic() - self.last_renewed > self.interval * 2:
            raise StoreError(f"could not renew this run's claims: {failure}") from failure


def free_dead(session, worker: str, now: dt.datetime) -> None:  # type: ignore[no-untyped-def]
    """Free the claims of every other holder found gone and mark its run `abandoned`. Only the
    holders checked here lose their claims (deleted by worker, a name no live process takes, in
    this write transaction); any other keeps them until it lets them go or its lease runs out."""
    dead: dict[str, tuple[int | None, str]] = {}
    for other in caption_store.claim_holders(session, worker=worker, now=now):
        why = _gone(session, other.run_id, other.host, other.pid, other.started)
        if why is not None:
            dead[other.worker] = (other.run_id, why)
    caption_store.free_claims(session, workers=list(dead))
    reasons = {run_id: why for run_id, why in dead.values() if run_id is not None}
    caption_store.abandon_runs(session, reasons, now)


def abandon_dead_runs(session, now: dt.datetime) -> None:  # type: ignore[no-untyped-def]
    """Mark every `running` run whose worker is found gone `abandoned` (its claims are freed
    when a worker next looks for work)."""
    reasons = {}
    for run in caption_store.running_runs(session):
        why = _gone(session, run.id, run.host, run.pid, run.process_started)
        if why is not None:
            reasons[run.id] = why
    caption_store.abandon_runs(session, reasons, now)


def _gone(session, run_id, host, pid, started) -> str | None:  # type: ignore[no-untyped-def]
    """Why a run's worker is certainly gone, or None while it may be alive: its process is no
    longer there (this host only), or, on PostgreSQL, its session lock is free (a run that
    recorded its process's start time holds one; older ones never did)."""
    if process_gone(host, pid, started):
        return f"abandoned: its worker ({host} pid {pid}) ended without finishing the run"
    if run_id is not None and started is not None and session_gone(session.connection(), run_id):
        return (f"abandoned: the database session of its worker ({host} pid {pid}) ended "
                f"without finishing the run")  # fmt: skip
    return None
