"""Who holds a caption run's claims, whether it is still there, and what follows from that:
a live worker's heartbeat keeps its claims, a dead one's are freed and its run marked
`abandoned` (job.py says when).

A run and each of its claims record their holder: the host's name, the process id and the
process's start time as the OS reports it (psutil's `create_time`). On the same host that tells
exactly whether the holder is gone: no such process, a zombie, or a process with that id that
started at another time (the id was reused). Another host's processes cannot be looked at; there
the store tells: on PostgreSQL each run holds a session-level lock from before its row is visible
until after its last write, which ends with its session (store/locks.py), so a worker killed, or
its machine gone, is seen as soon as the server sees its connection drop. On SQLite, whose WAL
mode needs every process on one host anyway, the claims' lease is the fallback.

Hosts are told apart by name (socket.gethostname()): machines or containers with process tables
of their own that share one store must have different names, or a live worker in one would look
gone to the others.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import threading
import time

import psutil

from labeler.errors import StoreError
from labeler.store import captions as caption_store
from labeler.store import locks
from labeler.store.captions import Holder
from labeler.store.models import utcnow

# Start times are compared within this: psutil derives them from the boot time, which clock
# adjustments can move by a fraction of a second between two readings; a pid reused within a
# second of the first process's start would need the whole pid range to wrap in that second.
START_TOLERANCE_S = 1.0


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


class Heartbeat:
    """Renews this worker's claims every quarter of the lease from a thread of its own, whatever
    the model is doing (a batch may take longer than a lease), and on PostgreSQL checks that the
    session holding the run's lock is still there. Failures are the main thread's to raise
    (`check`, at each progress report): a lost session at once, since others may now take the
    claims; renewals failing for half a lease, before the claims can run out."""

    def __init__(self, store, worker: str, lease: dt.timedelta,  # type: ignore[no-untyped-def]
                 lock: locks.RunSession) -> None:  # fmt: skip
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
    if run_id is not None and started is not None and locks.session_gone(session, run_id):
        return (f"abandoned: the database session of its worker ({host} pid {pid}) ended "
                f"without finishing the run")  # fmt: skip
    return None
